//! Executors: one per engine. An executor receives a fully prepared [`RunContext`] (inputs already on local
//! disk, output dirs created, limits resolved) and returns a [`RunOutcome`].
//!
//! A failed *job* (trap, non-zero exit, timeout, memory limit, invalid module) is an outcome, never an `Err`:
//! `Err` would mean the node itself is broken. Executors never touch the store or the transport, and never block
//! the async runtime: CPU-bound work runs on the executor's own threads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::model::{EngineKind, EngineSpec, Event, ExecutionId, JobId, NetworkConfig, Task};

#[cfg(feature = "executor-oci")]
pub mod oci;
#[cfg(feature = "executor-wasm")]
pub mod wasm;

/// A prepared input, as the task will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedInput {
    /// Path inside the task (`InputSource.Target`), absolute.
    pub target: String,
    /// Where the data is on the host: a file or a directory.
    pub host_path: PathBuf,
    /// Whether the task may modify it (only `local` inputs with `ReadWrite`).
    pub read_only: bool,
}

/// A result folder the task writes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDir {
    /// `ResultPath.Name`; wasm mounts the folder at `/<name>`, as Bacalhau does.
    pub name: String,
    /// `ResultPath.Path` (containers mount the folder there).
    pub path: String,
    /// The empty host directory collected into the result.
    pub host_dir: PathBuf,
}

/// Limits for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory cap in bytes (`Resources.Memory`), if any.
    pub memory_bytes: Option<u64>,
    /// CPU cap in thousandths of a core (`Resources.CPU`, or the node's default for the job), if any.
    /// Containers get it as a CFS quota; the WASM interpreter runs on one thread anyway.
    pub cpu_millis: Option<u64>,
    /// Wall-clock limit (`Timeouts.ExecutionTimeout`), if any.
    pub timeout: Option<Duration>,
    /// Cap on each of stdout and stderr; output past it is dropped and the run is flagged.
    pub max_output_bytes: u64,
}

/// Opens a stream file of the execution's (`stdout`, `stderr`, `exitCode`) to write it from the start:
/// created if absent, emptied only if it holds anything.
///
/// Not `O_TRUNC`: a recycled execution folder's stream files are already empty, and on ext4 truncating a
/// file to zero arms `auto_da_alloc`, so the next close writes the file's new data out at once (a block
/// allocated, written and, at the next strip, freed and discarded, for every stream of every job). Without
/// the truncate the few bytes of a tiny job stay in the page cache until the folder is stripped.
pub fn open_stream(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.len() > 0 {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Everything an executor needs for one run. `Debug` hides the env values: `env:` references are resolved
/// into them, and a context may end up in a log line.
#[derive(Clone)]
pub struct RunContext {
    /// The execution.
    pub execution_id: ExecutionId,
    /// Its job.
    pub job_id: JobId,
    /// The parsed engine spec.
    pub engine: EngineSpec,
    /// Environment: `Task.Env` plus the `BACALHAU_*` system variables.
    pub env: BTreeMap<String, String>,
    /// Inputs.
    pub inputs: Vec<PreparedInput>,
    /// Result folders.
    pub outputs: Vec<OutputDir>,
    /// File receiving stdout.
    pub stdout_path: PathBuf,
    /// File receiving stderr.
    pub stderr_path: PathBuf,
    /// A folder of the execution's own for the executor's files (not created: the executor makes it when it
    /// needs it; removed with the execution).
    pub scratch_dir: PathBuf,
    /// Limits.
    pub limits: Limits,
    /// Network mode requested.
    pub network: NetworkConfig,
    /// Where the executor reports milestones (an image pulled, say) for the job's history.
    pub progress: Progress,
    /// The GPUs this run holds (empty for most); an executor that cannot expose them declines the task.
    pub gpus: Vec<crate::gpu::Gpu>,
}

impl fmt::Debug for RunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("RunContext")
            .field("execution_id", &self.execution_id)
            .field("job_id", &self.job_id)
            .field("engine", &self.engine)
            .field("env", &env)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("stdout_path", &self.stdout_path)
            .field("stderr_path", &self.stderr_path)
            .field("scratch_dir", &self.scratch_dir)
            .field("limits", &self.limits)
            .field("network", &self.network)
            .field("gpus", &self.gpus)
            .finish_non_exhaustive()
    }
}

/// Milestones an executor reports while it works. The compute node forwards them to the orchestrator as
/// history events of the running execution; reporting never blocks the executor.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<ProgressInner>);

#[derive(Debug, Default)]
struct ProgressInner {
    events: Mutex<Vec<Event>>,
    changed: tokio::sync::Notify,
}

impl Progress {
    /// Records a milestone under `topic` (Bacalhau's history topics, e.g. `Exec`).
    pub fn report(&self, topic: &str, message: impl Into<String>) {
        let event = Event::new(topic, message);
        self.0
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        // A stored permit wakes the next `changed` even when nobody waits right now.
        self.0.changed.notify_one();
    }
    /// Takes the milestones not yet taken, oldest first.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
    /// Resolves when a milestone was reported since the last call.
    pub async fn changed(&self) {
        self.0.changed.notified().await;
    }
}

/// Why a run failed (as opposed to exiting with a code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// It ran past its execution timeout.
    Timeout(Duration),
    /// It was cancelled.
    Cancelled,
    /// It hit its memory limit.
    OutOfMemory {
        /// The limit in bytes.
        limit: u64,
    },
    /// The program is not runnable (not WASM, missing entry point, unresolved import, …).
    InvalidProgram(String),
    /// The engine could not set the run up (a mount missing, say).
    Setup(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "execution timed out after {}s", d.as_secs_f64()),
            Self::Cancelled => write!(f, "execution was cancelled"),
            Self::OutOfMemory { limit } => {
                write!(f, "execution ran out of memory (limit {limit} bytes)")
            }
            Self::InvalidProgram(m) => write!(f, "program cannot run: {m}"),
            Self::Setup(m) => write!(f, "execution could not be set up: {m}"),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The program ran and exited (any code; a trap without an exit status is code 1, as in Bacalhau).
    Exited {
        /// Exit code.
        code: i32,
        /// Whether stdout or stderr hit the output cap.
        output_truncated: bool,
        /// The streams' first bytes, when the executor saw them go by (so the report needs no read back).
        heads: Option<Box<StreamHeads>>,
    },
    /// The program could not run to an exit.
    Failed(FailureReason),
}

/// The first [`STREAM_HEAD_BYTES`] of each stream of a run, as its files hold them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamHeads {
    /// Of stdout.
    pub stdout: Vec<u8>,
    /// Of stderr.
    pub stderr: Vec<u8>,
}

/// How much of each stream a run's report carries ([`RunCommandResult`](crate::model::RunCommandResult)'s
/// `Stdout` and `Stderr`), plus one byte to tell whether there was more.
pub const RUN_OUTPUT_BYTES: usize = 2048;
/// The bytes of a stream kept for its head: [`RUN_OUTPUT_BYTES`] and one more.
pub const STREAM_HEAD_BYTES: usize = RUN_OUTPUT_BYTES + 1;

/// The node itself could not run anything (threads gone, say). Never used for job failures.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The task asks for something this executor cannot do; the message says what.
    #[error("{engine} executor cannot run this task: {reason}")]
    Unsupported {
        /// The engine.
        engine: &'static str,
        /// Why.
        reason: String,
    },
    /// The executor's workers are gone.
    #[error("{engine} executor is shut down")]
    ShutDown {
        /// The engine.
        engine: &'static str,
    },
}

/// An engine.
#[async_trait]
pub trait Executor: Send + Sync + fmt::Debug {
    /// The engine this executor runs.
    fn engine(&self) -> EngineKind;
    /// Cheap check used when bidding: can this executor run `task` at all?
    fn validate(&self, task: &Task) -> Result<(), ExecutorError>;
    /// Runs to completion, timeout or cancellation. Cancel-safe: dropping the future stops the run.
    async fn run(
        &self,
        ctx: RunContext,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty stream file is opened as it is (no truncate: its times do not move, the marker of a
    /// truncate that would arm ext4's flush at close); one with data is emptied; a missing one is created.
    #[test]
    fn open_stream_empties_only_what_holds_data() {
        let dir = tempfile::tempdir().expect("tmp");
        let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let empty = dir.path().join("stderr");
        std::fs::File::create(&empty)
            .and_then(|f| f.set_modified(past))
            .expect("empty file");
        let mut f = open_stream(&empty).expect("open empty");
        assert_eq!(
            std::fs::metadata(&empty).and_then(|m| m.modified()).ok(),
            Some(past),
            "an empty stream file was truncated"
        );
        std::io::Write::write_all(&mut f, b"ok").expect("write");
        assert_eq!(std::fs::read(&empty).expect("read"), b"ok");

        let full = dir.path().join("stdout");
        std::fs::write(&full, "the last run's output").expect("full file");
        std::io::Write::write_all(&mut open_stream(&full).expect("open full"), b"new")
            .expect("write");
        assert_eq!(std::fs::read(&full).expect("read"), b"new");

        let missing = dir.path().join("exitCode");
        open_stream(&missing).expect("create");
        assert_eq!(std::fs::metadata(&missing).map(|m| m.len()).ok(), Some(0));
    }

    #[test]
    fn run_context_debug_hides_env_values() {
        let ctx = RunContext {
            execution_id: ExecutionId::generate(),
            job_id: JobId::generate(),
            engine: EngineSpec::Unknown("x".into()),
            env: BTreeMap::from([("TOKEN".to_owned(), "resolved-secret".to_owned())]),
            inputs: vec![],
            outputs: vec![],
            stdout_path: PathBuf::from("/o"),
            stderr_path: PathBuf::from("/e"),
            scratch_dir: PathBuf::from("/s"),
            limits: Limits {
                memory_bytes: None,
                cpu_millis: None,
                timeout: None,
                max_output_bytes: 1,
            },
            network: NetworkConfig::default(),
            progress: Progress::default(),
            gpus: vec![],
        };
        let shown = format!("{ctx:?}");
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(!shown.contains("resolved-secret"), "{shown}");
    }
}
