//! Execution folders, recycled.
//!
//! Every execution works in a folder of its own under the work dir: `result/` (the `stdout`, `stderr` and
//! `exitCode` files and the result paths' folders), `inputs/<i>/` (an input's scratch) and whatever the
//! executor adds. Making and deleting that tree costs about seven inode allocations and frees per execution,
//! and on ext4 without a journal each allocation scans past every inode freed in the last 30 seconds: at a
//! few hundred tiny jobs a second that scan was a third of a compute node's CPU. On any file system it is
//! metadata written to the board's flash for every job.
//!
//! So the folders are slots, `<work dir>/<n>/`, that outlive their executions. A finished execution's slot is
//! stripped to its skeleton (the `result/` and `inputs/<i>/` folders and the three stream files, emptied) and
//! kept for the next execution, which makes only the folders the skeleton lacks. Nothing a job left survives
//! the strip: every other entry is removed, and the kept files are truncated. What the skeleton keeps is
//! decided by name and type (symbolic links are removed, never followed).
//!
//! Slots are named by number, not by execution, so that reusing one renames nothing: the rename into an
//! execution's name and back (a directory moving between parents, each updating `..` and both link counts)
//! and the probe for a folder left at that name were over a quarter of the cost of recycling. Which
//! execution holds which slot is known in memory only ([`WorkDirs::path`]); a restart runs its executions
//! again from clean folders, so nothing under the work dir outlives the process that made it.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::cache::remove_any;

/// The files every execution's `result/` has; a spare keeps them, empty.
const STREAMS: [&str; 3] = ["stdout", "stderr", "exitCode"];

/// The most spares kept: more than a node runs executions at once, so a burst's folders are all reused (a
/// 2-core all-in-one node runs over 100 tiny WASM jobs at once). Only as many exist as ran at once, and each
/// is five empty inodes and two folder blocks: 128 of them are about 1 MiB of disk.
const MAX_SPARES: usize = 128;

/// The execution folders under one work dir. Its methods do file I/O: call them on a blocking thread.
#[derive(Debug)]
pub(crate) struct WorkDirs {
    root: PathBuf,
    slots: Mutex<Slots>,
}

/// Which slot each execution holds, and the stripped ones waiting.
#[derive(Debug, Default)]
struct Slots {
    held: HashMap<String, u64>,
    spares: Vec<Spare>,
    /// The number of the next new slot.
    next: u64,
}

/// A stripped slot and the folders its skeleton still has (relative to the slot: `result`, `inputs/0`).
#[derive(Debug)]
struct Spare {
    slot: u64,
    folders: BTreeSet<PathBuf>,
}

impl WorkDirs {
    /// The folders under `root`, which is created. What an earlier run left there is removed rather than
    /// trusted: its executions start again from clean folders, and a crash may have stopped a strip
    /// half-way. (The container engine has unmounted whatever its executions left mounted below `root`
    /// before this runs.)
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        for entry in fs::read_dir(root)? {
            remove_any(&entry?.path())?;
        }
        Ok(Self {
            root: root.to_owned(),
            slots: Mutex::default(),
        })
    }

    /// The folder execution `id` works in, from its [`WorkDirs::prepare`] until its [`WorkDirs::recycle`].
    pub(crate) fn path(&self, id: &str) -> Option<PathBuf> {
        self.lock().held.get(id).map(|&slot| self.slot_path(slot))
    }

    /// A clean folder for execution `id`, with each of `folders` (paths relative to it) in it; its path. An
    /// execution that already holds one (its run preparing again after a batch failed to) gets it cleaned.
    pub(crate) fn prepare(
        &self,
        id: &str,
        folders: &[PathBuf],
    ) -> Result<PathBuf, (PathBuf, io::Error)> {
        let (slot, reused) = {
            let mut slots = self.lock();
            match slots.held.get(id).copied() {
                Some(slot) => (slot, None),
                None => {
                    let (slot, reused) = match slots.spares.pop() {
                        Some(spare) => (spare.slot, Some(spare.folders)),
                        None => {
                            slots.next += 1;
                            (slots.next - 1, None)
                        }
                    };
                    slots.held.insert(id.to_owned(), slot);
                    (slot, reused)
                }
            }
        };
        let dir = self.slot_path(slot);
        let has = match reused {
            Some(folders) => folders,
            // A slot this process has not stripped: held before (clean it) or new (a folder of an earlier
            // run's may still be at its name only if that removal failed at start-up).
            None => {
                remove_any(&dir).map_err(|e| (dir.clone(), e))?;
                fs::create_dir(&dir).map_err(|e| (dir.clone(), e))?;
                BTreeSet::new()
            }
        };
        for folder in folders.iter().filter(|f| !has.contains(f.as_path())) {
            let path = dir.join(folder);
            fs::create_dir_all(&path).map_err(|e| (path, e))?;
        }
        Ok(dir)
    }

    /// Done with execution `id`'s folder: stripped and kept as a spare, or removed when there are enough
    /// spares or the strip fails.
    pub(crate) fn recycle(&self, id: &str) {
        let (slot, room) = {
            let mut slots = self.lock();
            let Some(slot) = slots.held.remove(id) else {
                return;
            };
            (slot, slots.spares.len() < MAX_SPARES)
        };
        let dir = self.slot_path(slot);
        if room && let Ok(folders) = strip(&dir) {
            // Checked again under the one lock: concurrent recycles all passed the first look.
            let mut slots = self.lock();
            if slots.spares.len() < MAX_SPARES {
                slots.spares.push(Spare { slot, folders });
                return;
            }
        }
        // Not kept: the next prepare of this number finds no folder. Its number is not reused meanwhile
        // (new slots count up), so nothing races this removal.
        let _ = fs::remove_dir_all(&dir);
    }

    fn slot_path(&self, slot: u64) -> PathBuf {
        self.root.join(slot.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Plain maps and lists: whatever a panicking holder did, they are still maps and lists.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn spare_count(&self) -> usize {
        self.lock().spares.len()
    }
}

/// Empties an execution's folder down to its skeleton: `result/` with its stream files (truncated) and
/// `inputs/` with its numbered folders (emptied). Everything else goes. Returns the folders kept.
fn strip(dir: &Path) -> io::Result<BTreeSet<PathBuf>> {
    let mut kept = BTreeSet::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // `file_type` does not follow symbolic links: a link named `result` is removed, not entered.
        let is_dir = entry.file_type()?.is_dir();
        match entry.file_name().to_str() {
            Some("result") if is_dir => {
                strip_result(&path)?;
                kept.insert(PathBuf::from("result"));
            }
            Some("inputs") if is_dir => {
                kept.insert(PathBuf::from("inputs"));
                strip_inputs(&path, &mut kept)?;
            }
            _ => remove_any(&path)?,
        }
    }
    Ok(kept)
}

fn strip_result(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        let stream = entry
            .file_name()
            .to_str()
            .is_some_and(|n| STREAMS.contains(&n));
        if stream && kind.is_file() {
            // Nothing can swap a link in between the look and the open: no process of the execution is left
            // when its folder is recycled, and the job never saw `result/` itself, only its result paths.
            // An empty one is left alone: truncating it costs three calls and, on ext4, a flush of the next
            // run's output at close (see `executor::open_stream`).
            if entry.metadata()?.len() > 0 {
                fs::OpenOptions::new().write(true).open(&path)?.set_len(0)?;
            }
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Empties `dir` (an `inputs/` folder) down to its numbered folders, each added to `kept` as `inputs/<i>`.
fn strip_inputs(dir: &Path, kept: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        let numbered = entry
            .file_name()
            .to_str()
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned);
        match numbered {
            Some(name) if is_dir => {
                for inner in fs::read_dir(&path)? {
                    remove_any(&inner?.path())?;
                }
                kept.insert(Path::new("inputs").join(name));
            }
            _ => remove_any(&path)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    /// The folders an execution with one input and an `outputs` result path asks for.
    fn folders() -> Vec<PathBuf> {
        ["result/outputs", "result", "inputs/0"]
            .map(PathBuf::from)
            .to_vec()
    }

    /// Runs a pretend execution `id` in its folder: its streams, an output, an input's scratch and a scratch
    /// folder of the executor's.
    fn run(dirs: &WorkDirs, id: &str) -> PathBuf {
        let dir = dirs.prepare(id, &folders()).expect("prepare");
        assert_eq!(dirs.path(id).as_deref(), Some(dir.as_path()));
        fs::write(dir.join("result/stdout"), format!("{id} says hi")).expect("stdout");
        fs::write(dir.join("result/stderr"), "oops").expect("stderr");
        fs::write(dir.join("result/exitCode"), "0").expect("exitCode");
        fs::write(dir.join("result/outputs/secret.txt"), id).expect("output");
        fs::write(dir.join("inputs/0/data.csv"), "1,2").expect("input");
        fs::create_dir_all(dir.join("scratch/bundle")).expect("scratch");
        dir
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read_dir") {
                let e = e.expect("entry");
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("under")
                    .display()
                    .to_string();
                let meta = fs::symlink_metadata(e.path()).expect("meta");
                if meta.is_dir() {
                    stack.push(e.path());
                    out.push(format!("{rel}/"));
                } else {
                    out.push(format!("{rel} {}", meta.len()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_recycled_folder_comes_back_clean_and_reuses_its_inodes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = WorkDirs::open(tmp.path()).expect("open");
        let first = run(&dirs, "e-1");
        let inode = |dir: &Path| {
            fs::metadata(dir.join("result/stdout"))
                .expect("stdout")
                .ino()
        };
        let stdout = inode(&first);
        dirs.recycle("e-1");
        assert_eq!(
            dirs.path("e-1"),
            None,
            "the execution no longer holds a folder"
        );
        assert_eq!(dirs.spare_count(), 1);

        let second = dirs
            .prepare("e-2", &["result", "inputs/0"].map(PathBuf::from))
            .expect("prepare");
        assert_eq!(second, first, "the same slot, taken without a rename");
        assert_eq!(
            tree(&second),
            [
                "inputs/",
                "inputs/0/",
                "result/",
                "result/exitCode 0",
                "result/stderr 0",
                "result/stdout 0",
            ],
            "only the skeleton, emptied: no output, input or scratch of the first execution"
        );
        assert_eq!(
            inode(&second),
            stdout,
            "the stream file is the same inode: nothing was allocated"
        );
        assert_eq!(dirs.spare_count(), 0);
    }

    #[test]
    fn a_spare_gets_only_the_folders_its_skeleton_lacks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = WorkDirs::open(tmp.path()).expect("open");
        let first = run(&dirs, "e-1");
        let input = fs::metadata(first.join("inputs/0")).expect("input").ino();
        dirs.recycle("e-1");
        let wanted = ["result/logs", "result", "inputs/0", "inputs/1"].map(PathBuf::from);
        let second = dirs.prepare("e-2", &wanted).expect("prepare");
        assert_eq!(
            tree(&second),
            [
                "inputs/",
                "inputs/0/",
                "inputs/1/",
                "result/",
                "result/exitCode 0",
                "result/logs/",
                "result/stderr 0",
                "result/stdout 0",
            ]
        );
        assert_eq!(
            fs::metadata(second.join("inputs/0")).expect("input").ino(),
            input,
            "the skeleton's folder was kept, not made again"
        );
        // Two executions at once hold two slots.
        let third = dirs.prepare("e-3", &folders()).expect("prepare");
        assert_ne!(third, second);
        assert_eq!(dirs.path("e-2"), Some(second));
        assert_eq!(dirs.path("e-3"), Some(third));
    }

    #[test]
    fn links_in_a_folder_are_removed_never_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = WorkDirs::open(&tmp.path().join("work")).expect("open");
        let outside = tmp.path().join("precious");
        fs::write(&outside, "keep me").expect("outside");
        let dir = dirs
            .prepare("e-1", &["result", "inputs/0"].map(PathBuf::from))
            .expect("prepare");
        std::os::unix::fs::symlink(&outside, dir.join("result/stdout")).expect("link");
        std::os::unix::fs::symlink(tmp.path(), dir.join("inputs/0/up")).expect("link");
        std::os::unix::fs::symlink(tmp.path(), dir.join("inputs/1")).expect("link");
        dirs.recycle("e-1");
        assert_eq!(fs::read_to_string(&outside).expect("outside"), "keep me");
        let next = dirs
            .prepare("e-2", &[PathBuf::from("result")])
            .expect("prepare");
        assert_eq!(tree(&next), ["inputs/", "inputs/0/", "result/"]);
    }

    #[test]
    fn preparing_again_cleans_the_folder_and_spares_are_bounded() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = WorkDirs::open(tmp.path()).expect("open");
        // An execution that prepares again (its batch's prepare failed half-way) starts from a clean folder.
        let dir = run(&dirs, "e-1");
        let again = dirs
            .prepare("e-1", &[PathBuf::from("result")])
            .expect("prepare again");
        assert_eq!(again, dir);
        assert_eq!(tree(&dir), ["result/"]);
        dirs.recycle("e-1");
        dirs.recycle("e-1");
        assert_eq!(
            dirs.spare_count(),
            1,
            "a second recycle finds nothing to do"
        );
        let many: Vec<String> = (0..MAX_SPARES + 3).map(|i| format!("e-m{i}")).collect();
        for id in &many {
            run(&dirs, id);
        }
        for id in &many {
            dirs.recycle(id);
        }
        assert_eq!(dirs.spare_count(), MAX_SPARES);
        assert_eq!(
            fs::read_dir(tmp.path()).expect("slots").count(),
            MAX_SPARES,
            "the folders beyond the bound were removed"
        );
        // A new start removes what the last one left: its spares and any execution's folder.
        run(&dirs, "e-left");
        fs::write(tmp.path().join("stray"), "x").expect("stray");
        drop(dirs);
        let dirs = WorkDirs::open(tmp.path()).expect("reopen");
        assert_eq!(dirs.spare_count(), 0);
        assert_eq!(fs::read_dir(tmp.path()).expect("slots").count(), 0);
        assert_eq!(dirs.path("e-left"), None);
    }
}
