//! Execution folders, recycled.
//!
//! Every execution works in `<work dir>/<execution id>/`: `result/` (the `stdout`, `stderr` and `exitCode`
//! files and the result paths' folders), `inputs/<i>/` (an input's scratch) and whatever the executor adds.
//! Making and deleting that tree costs about seven inode allocations and frees per execution, and on ext4
//! without a journal each allocation scans past every inode freed in the last 30 seconds: at a few hundred
//! tiny jobs a second that scan was a third of a compute node's CPU. On any file system it is metadata
//! written to the board's flash for every job.
//!
//! So a finished execution's folder is stripped to its skeleton (the `result/` and `inputs/<i>/` folders and
//! the three stream files, emptied) and parked in `.spare/`; the next execution renames a spare into place.
//! Nothing a job left survives the strip: every other entry is removed, and the kept files are truncated.
//! What the skeleton keeps is decided by name and type (symbolic links are removed, never followed).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// `<root>/.spare`: stripped folders waiting for an execution.
    spare_dir: PathBuf,
    /// Stripped folders ready in `spare_dir`.
    spares: Mutex<Vec<PathBuf>>,
    /// Names spares uniquely.
    next: AtomicU64,
}

impl WorkDirs {
    /// The folders under `root`, which is created. Spares left by an earlier run are removed rather than
    /// trusted (a crash may have stopped a strip half-way).
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let spare_dir = root.join(".spare");
        match fs::remove_dir_all(&spare_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir_all(&spare_dir)?;
        Ok(Self {
            root: root.to_owned(),
            spare_dir,
            spares: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// The folder of execution `id` (an execution id: never `.spare`).
    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// A clean folder at `dir` (from [`WorkDirs::path`]) with each of `folders` (paths under it) in it. A
    /// folder already at `dir` (a retry after a restart) is removed first.
    pub(crate) fn prepare(
        &self,
        dir: &Path,
        folders: &[PathBuf],
    ) -> Result<(), (PathBuf, io::Error)> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((dir.to_owned(), e)),
            _ => {}
        }
        if let Some(spare) = self.take_spare()
            && let Err(e) = fs::rename(&spare, dir)
        {
            tracing::debug!(spare = %spare.display(), error = %e, "cannot reuse a spare execution folder");
            let _ = fs::remove_dir_all(&spare);
        }
        folders
            .iter()
            .try_for_each(|f| fs::create_dir_all(f).map_err(|e| (f.clone(), e)))
    }

    /// Done with `dir`: stripped and kept as a spare, or removed when there are enough spares or the strip
    /// fails.
    pub(crate) fn recycle(&self, dir: &Path) {
        if self.lock().len() < MAX_SPARES && strip(dir).is_ok() {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let spare = self.spare_dir.join(n.to_string());
            if fs::rename(dir, &spare).is_ok() {
                // Checked again under the one lock: concurrent recycles all passed the first look.
                let mut spares = self.lock();
                if spares.len() < MAX_SPARES {
                    spares.push(spare);
                    return;
                }
                drop(spares);
                let _ = fs::remove_dir_all(&spare);
                return;
            }
        }
        let _ = fs::remove_dir_all(dir);
    }

    fn take_spare(&self) -> Option<PathBuf> {
        self.lock().pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        // A list of paths: whatever a panicking holder did, it is still a list of paths.
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn spare_count(&self) -> usize {
        self.lock().len()
    }
}

/// Empties an execution's folder down to its skeleton: `result/` with its stream files (truncated) and
/// `inputs/` with its numbered folders (emptied). Everything else goes.
fn strip(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // `file_type` does not follow symbolic links: a link named `result` is removed, not entered.
        let is_dir = entry.file_type()?.is_dir();
        match entry.file_name().to_str() {
            Some("result") if is_dir => strip_result(&path)?,
            Some("inputs") if is_dir => strip_inputs(&path)?,
            _ => remove_any(&path)?,
        }
    }
    Ok(())
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

fn strip_inputs(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        let numbered = entry
            .file_name()
            .to_str()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && is_dir {
            for inner in fs::read_dir(&path)? {
                remove_any(&inner?.path())?;
            }
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    /// The folders an execution with one input and an `outputs` result path asks for.
    fn folders(dir: &Path) -> Vec<PathBuf> {
        vec![
            dir.join("result/outputs"),
            dir.join("result"),
            dir.join("inputs/0"),
        ]
    }

    /// Runs a pretend execution in `id`'s folder: its streams, an output, an input's scratch and a scratch
    /// folder of the executor's.
    fn run(dirs: &WorkDirs, id: &str) -> PathBuf {
        let dir = dirs.path(id);
        dirs.prepare(&dir, &folders(&dir)).expect("prepare");
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
        let inode = fs::metadata(first.join("result/stdout"))
            .expect("stdout")
            .ino();
        dirs.recycle(&first);
        assert!(!first.exists(), "the folder left its execution's path");
        assert_eq!(dirs.spare_count(), 1);

        let second = dirs.path("e-2");
        dirs.prepare(&second, &[second.join("result"), second.join("inputs/0")])
            .expect("prepare");
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
            fs::metadata(second.join("result/stdout"))
                .expect("stdout")
                .ino(),
            inode,
            "the stream file is the same inode: nothing was allocated"
        );
        assert_eq!(dirs.spare_count(), 0);
    }

    #[test]
    fn links_in_a_folder_are_removed_never_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = WorkDirs::open(&tmp.path().join("work")).expect("open");
        let outside = tmp.path().join("precious");
        fs::write(&outside, "keep me").expect("outside");
        let dir = dirs.path("e-1");
        dirs.prepare(&dir, &[dir.join("result"), dir.join("inputs/0")])
            .expect("prepare");
        std::os::unix::fs::symlink(&outside, dir.join("result/stdout")).expect("link");
        std::os::unix::fs::symlink(tmp.path(), dir.join("inputs/0/up")).expect("link");
        std::os::unix::fs::symlink(tmp.path(), dir.join("inputs/1")).expect("link");
        dirs.recycle(&dir);
        assert_eq!(fs::read_to_string(&outside).expect("outside"), "keep me");
        let next = dirs.path("e-2");
        dirs.prepare(&next, &[next.join("result")])
            .expect("prepare");
        assert_eq!(tree(&next), ["inputs/", "inputs/0/", "result/"]);
    }

    #[test]
    fn a_retry_starts_from_a_clean_folder_and_spares_are_bounded() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = WorkDirs::open(tmp.path()).expect("open");
        // A folder left by a run before a restart is removed, not built on.
        let dir = run(&dirs, "e-1");
        dirs.prepare(&dir, &[dir.join("result")])
            .expect("prepare again");
        assert_eq!(tree(&dir), ["result/"]);
        dirs.recycle(&dir);
        let many: Vec<PathBuf> = (0..MAX_SPARES + 3)
            .map(|i| run(&dirs, &format!("e-m{i}")))
            .collect();
        for dir in &many {
            dirs.recycle(dir);
            assert!(!dir.exists());
        }
        assert_eq!(dirs.spare_count(), MAX_SPARES);
        assert_eq!(
            fs::read_dir(tmp.path().join(".spare"))
                .expect("spares")
                .count(),
            MAX_SPARES,
            "the folders beyond the bound were removed"
        );
        // A new start drops the spares of the last one.
        drop(dirs);
        let dirs = WorkDirs::open(tmp.path()).expect("reopen");
        assert_eq!(dirs.spare_count(), 0);
        assert_eq!(
            fs::read_dir(tmp.path().join(".spare"))
                .expect("spares")
                .count(),
            0
        );
    }
}
