//! Bounds what a running execution writes to the node's disk through its result paths: they are host
//! directories the task writes into directly (a container's bind mounts, a WASM guest's writable mounts), so
//! without a bound while it runs one job can fill the disk the node's LMDB lives on. (stdout and stderr are
//! capped where they are written, by each executor, at `Compute.MaxOutput`.)
//!
//! The guard measures the result folders every [`POLL`] (less often for huge trees, see [`BACKOFF`]) and
//! stops the run (through its cancellation token) once together they pass `Compute.MaxOutputSize`; the last
//! measurement, after the run, catches what was written between two polls. So the disk holds at most the
//! limit plus what the task writes in one interval.
//!
//! Must never follow a symlink (the task controls them all) nor fail the run because a path vanished.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a running execution's files are measured: a writer at 1 GB/s overshoots by about this times
/// that rate, and a tree of 10,000 entries takes a few milliseconds to walk.
const POLL: Duration = Duration::from_millis(100);

/// A walk that takes long (a tree of millions of files, or a folder the task is busy filling) waits this many
/// times its own length before the next one, so that measuring takes at most a fifth of a core...
const BACKOFF: u32 = 4;

/// ...but never longer than this between two walks: the overshoot past the limit grows with the pause.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// What every file, folder or link costs at least, whatever its length: its inode and first block. Without
/// it, millions of empty files would pass any byte limit and exhaust the file system's inodes.
pub(super) const ENTRY_COST: u64 = 4096;

/// The limits one execution runs under.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    /// The host folders behind the task's result paths.
    pub result_dirs: Vec<PathBuf>,
    /// Cap on their total size (`Compute.MaxOutputSize`).
    pub max_result_bytes: u64,
}

/// The result folders grew past `Compute.MaxOutputSize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Overrun {
    /// The limit, in bytes.
    pub limit: u64,
}

impl fmt::Display for Overrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "execution stopped: its result paths grew past the output size limit of {} bytes \
             (Compute.MaxOutputSize on the node; each file counts at least {ENTRY_COST} bytes)",
            self.limit
        )
    }
}

/// A running guard; [`Guard::finish`] ends it.
#[derive(Debug)]
pub(super) struct Guard(Option<Polling>);

/// The guard of an execution with result paths.
#[derive(Debug)]
struct Polling {
    /// The polling task; answers the first overrun it saw.
    task: JoinHandle<Option<Overrun>>,
    /// Ends the polling once the run is over.
    done: CancellationToken,
    /// What is measured, for the last check.
    watched: Watched,
}

// === impl Guard ===

impl Guard {
    /// Starts measuring `watched`; `stop` is cancelled at the first overrun (the run's own token). An
    /// execution without result paths writes nothing the guard measures: it gets no task, no timer and no
    /// last measurement (each would be a thread hand-off on a tiny job's path).
    pub(super) fn start(watched: Watched, stop: CancellationToken) -> Guard {
        if watched.result_dirs.is_empty() {
            return Guard(None);
        }
        let done = CancellationToken::new();
        let task = tokio::spawn({
            let (watched, done) = (watched.clone(), done.clone());
            async move {
                let mut pause = POLL;
                loop {
                    tokio::select! {
                        _ = done.cancelled() => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    let w = watched.clone();
                    let started = tokio::time::Instant::now();
                    if let Ok(Some(over)) = tokio::task::spawn_blocking(move || check(&w)).await {
                        stop.cancel();
                        return Some(over);
                    }
                    pause = (started.elapsed() * BACKOFF).clamp(POLL, MAX_PAUSE);
                }
            }
        });
        Guard(Some(Polling {
            task,
            done,
            watched,
        }))
    }

    /// Ends the guard after the run: the overrun it stopped the run for, else one found by a last measurement.
    pub(super) async fn finish(self) -> Option<Overrun> {
        let Polling {
            task,
            done,
            watched: w,
        } = self.0?;
        done.cancel();
        if let Ok(Some(over)) = task.await {
            return Some(over);
        }
        tokio::task::spawn_blocking(move || check(&w))
            .await
            .ok()
            .flatten()
    }
}

/// One measurement. Blocking.
pub(super) fn check(w: &Watched) -> Option<Overrun> {
    let mut total = 0u64;
    for dir in &w.result_dirs {
        // Stops counting early: past the limit, the exact size does not matter.
        total = total.saturating_add(tree_size(dir, w.max_result_bytes.saturating_sub(total)));
        if total > w.max_result_bytes {
            return Some(Overrun {
                limit: w.max_result_bytes,
            });
        }
    }
    None
}

/// The size of the tree at `root` as [`check`] counts it, or something over `budget` once it is known to be.
/// Iterative (a deep tree cannot overflow the stack); entries that vanish while it walks count nothing.
pub(super) fn tree_size(root: &Path, budget: u64) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        // A folder the task removed (or made unreadable) between two polls holds nothing to count.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            // A sparse file counts its apparent length: that is what the publisher packs and a download unpacks.
            total = total.saturating_add(meta.len().max(ENTRY_COST));
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if total > budget {
                return total;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(root: &Path, max_result_bytes: u64) -> Watched {
        Watched {
            result_dirs: vec![root.join("outputs")],
            max_result_bytes,
        }
    }

    #[test]
    fn counts_files_and_entries_without_following_links() {
        let root = tempfile::tempdir().expect("tmp");
        let out = root.path().join("outputs");
        std::fs::create_dir_all(out.join("sub")).expect("dirs");
        std::fs::write(out.join("sub/big"), vec![0u8; 10_000]).expect("write");
        std::fs::write(out.join("small"), "x").expect("write");
        // A link to something huge counts as a link.
        std::os::unix::fs::symlink("/proc/kcore", out.join("link")).expect("link");
        assert_eq!(tree_size(&out, u64::MAX), 10_000 + 3 * ENTRY_COST);
    }

    #[test]
    fn names_the_limit_that_was_passed() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("outputs")).expect("dir");
        std::fs::write(root.path().join("outputs/f"), vec![0u8; 50_000]).expect("write");
        assert_eq!(check(&watched(root.path(), 100_000)), None);
        let over = check(&watched(root.path(), 40_000)).expect("over");
        assert_eq!(over, Overrun { limit: 40_000 });
        assert!(over.to_string().contains("Compute.MaxOutputSize"), "{over}");
    }

    #[test]
    fn a_sparse_file_counts_its_length() {
        let root = tempfile::tempdir().expect("tmp");
        let out = root.path().join("outputs");
        std::fs::create_dir_all(&out).expect("dir");
        let f = std::fs::File::create(out.join("sparse")).expect("create");
        f.set_len(1 << 40).expect("set_len");
        assert!(check(&watched(root.path(), 1 << 30)).is_some());
    }

    #[tokio::test]
    async fn stops_a_run_that_writes_too_much() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("outputs")).expect("dir");
        let stop = CancellationToken::new();
        let guard = Guard::start(watched(root.path(), 1 << 20), stop.clone());
        std::fs::write(root.path().join("outputs/f"), vec![0u8; 2 << 20]).expect("write");
        tokio::time::timeout(Duration::from_secs(10), stop.cancelled())
            .await
            .expect("the guard stops the run");
        assert_eq!(guard.finish().await, Some(Overrun { limit: 1 << 20 }));
    }

    #[tokio::test]
    async fn nothing_to_watch_starts_nothing() {
        let guard = Guard::start(
            Watched {
                result_dirs: Vec::new(),
                max_result_bytes: 0,
            },
            CancellationToken::new(),
        );
        assert!(guard.0.is_none(), "no polling task for no result paths");
        assert_eq!(guard.finish().await, None);
    }
}
