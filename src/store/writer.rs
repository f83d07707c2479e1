//! Group commit: one thread owns LMDB's write side and commits every waiting transition in one transaction.
//!
//! An fsync costs the same for one small transition as for a hundred, and LMDB serializes writers anyway, so
//! the writer takes every closure that is queued when it wakes (up to [`MAX_BATCH`]), runs each in its own
//! *nested* transaction (one closure's error or panic rolls back only its own changes), commits the parent
//! once, and only then answers the callers: when a caller hears `Ok`, its change is on disk. Closures run in
//! queue order, and a closure sees the changes of the closures before it in the batch, exactly as if each
//! had been committed alone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use heed::{Env, RwTxn, WithoutTls};

use super::{StoreError, WriteTxn};

/// The most closures one commit carries: bounds the dirty pages a transaction holds and the wait of the
/// first caller in a long queue.
const MAX_BATCH: usize = 256;

/// Answers one caller once the batch's commit outcome is known (`None` = committed).
type Completion = Box<dyn FnOnce(Option<&heed::Error>) + Send>;
/// One caller's closure, ready to run inside the batch's transaction.
type Job = Box<dyn FnOnce(&Env<WithoutTls>, &mut RwTxn<'_>) -> Completion + Send>;

/// Commits so far and the transitions they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// LMDB commits (each one fsync).
    pub commits: u64,
    /// Closures run (committed or rolled back).
    pub transitions: u64,
    /// Closures handed to the writer; `submitted - transitions` are waiting.
    pub submitted: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    transitions: AtomicU64,
    submitted: AtomicU64,
}

/// The writer thread and its queue. Dropping the last handle stops the thread and waits for it, so the
/// environment is closed when the [`super::Store`] is gone (a test may reopen the same dir at once).
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Writer {
    pub(super) fn start(env: Env<WithoutTls>) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let thread = std::thread::Builder::new()
            .name("cod-store-writer".into())
            .spawn({
                let counters = counters.clone();
                move || run(&env, &jobs, &counters)
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            counters,
        })
    }

    /// Queues `f`; `reply` gets its result after the commit that carries it.
    pub(super) fn submit<R, F>(
        &self,
        f: F,
        reply: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) where
        R: Send + 'static,
        F: FnOnce(&mut WriteTxn<'_, '_>) -> Result<R, StoreError> + Send + 'static,
    {
        let job: Job = Box::new(move |env, parent| {
            let result = run_nested(env, parent, f);
            Box::new(move |commit: Option<&heed::Error>| {
                reply(match commit {
                    // The closure's own error wins: it was rolled back whatever the commit did.
                    Some(e) => result.and_then(|_| Err(commit_failed(e))),
                    None => result,
                })
            })
        });
        // A send fails only if the writer thread is gone; the job (and its reply channel) is dropped then,
        // and the caller hears that its write was not done.
        if let Some(queue) = &self.queue {
            self.counters.submitted.fetch_add(1, Ordering::Relaxed);
            let _ = queue.send(job);
        }
    }

    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            transitions: self.counters.transitions.load(Ordering::Relaxed),
            submitted: self.counters.submitted.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // The last handle can be dropped by a closure running on the writer itself; joining there would
            // wait for ourselves. The thread then ends on its own when this batch is answered.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run(env: &Env<WithoutTls>, jobs: &mpsc::Receiver<Job>, counters: &Counters) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut done: Vec<Completion> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let transitions = batch.len() as u64;
        let outcome = match env.write_txn() {
            Ok(mut txn) => {
                done.extend(batch.drain(..).map(|job| job(env, &mut txn)));
                txn.commit()
            }
            Err(e) => {
                // Without a transaction nothing can run: dropping the jobs drops their reply channels, and
                // each caller hears that its write was not done.
                tracing::error!(error = %e, "cannot begin a state database write transaction");
                batch.clear();
                Err(e)
            }
        };
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .transitions
            .fetch_add(transitions, Ordering::Relaxed);
        for complete in done.drain(..) {
            complete(outcome.as_ref().err());
        }
    }
}

/// Runs `f` in a transaction nested in `parent`: committed into the parent on `Ok`, rolled back on an error
/// or a panic (which becomes this caller's error; the other closures of the batch are untouched). Release
/// builds use `panic = "abort"`, where a panic still ends the process, as it did before group commit.
fn run_nested<R>(
    env: &Env<WithoutTls>,
    parent: &mut RwTxn<'_>,
    f: impl FnOnce(&mut WriteTxn<'_, '_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let lmdb = |op, source| StoreError::Lmdb {
        op,
        table: "-",
        source,
    };
    let mut child = env
        .nested_write_txn(parent)
        .map_err(|e| lmdb("begin nested write", e))?;
    let out = catch_unwind(AssertUnwindSafe(|| f(&mut WriteTxn { txn: &mut child }))).map_err(
        |panic| StoreError::Task(format!("write closure panicked: {}", panic_text(&panic))),
    )??;
    child.commit().map_err(|e| lmdb("commit nested write", e))?;
    Ok(out)
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

fn commit_failed(e: &heed::Error) -> StoreError {
    StoreError::Lmdb {
        op: "commit",
        table: "-",
        source: clone_error(e),
    }
}

/// heed's error is not `Clone`, and every caller of a failed batch needs its own copy.
fn clone_error(e: &heed::Error) -> heed::Error {
    match e {
        heed::Error::Mdb(m) => heed::Error::Mdb(*m),
        heed::Error::Io(io) => heed::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => heed::Error::Io(std::io::Error::other(other.to_string())),
    }
}
