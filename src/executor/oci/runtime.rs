//! The container runtime layer under the `docker` engine: one [`ContainerSpec`] in, one [`ContainerExit`]
//! out, through youki's libcontainer running in a single-threaded helper process per container.
//!
//! # Layout
//! - this file: the API ([`ContainerRuntime::run`], [`ContainerRuntime::sweep`]) and the node side of the
//!   helper protocol (spawn, kill, reap, clean up).
//! - `spec`: the OCI runtime spec (Docker's defaults for an unprivileged container, in a user namespace).
//! - `seccomp`: Docker's default seccomp profile, as data.
//! - `bpf`: that profile compiled once per node, and installed by the container's init.
//! - `helper`: the helper process body (`cod __oci-shim`), the only code that calls libcontainer.
//! - `cgroup`: cgroup paths, the OOM counter, last-resort removal.
//! - `sweep`: the start-up sweep of a crash's leftovers.
//!
//! # The container
//! New pid, mount, ipc, uts and user namespaces (uid/gid 0 maps to [`IdMap::host_base`]); a network
//! namespace with only `lo` unless [`ContainerNetwork`] says otherwise. Docker's capability set, no new
//! privileges, Docker's default seccomp profile, masked and read-only `/proc` paths. Read-only root; `/tmp`,
//! `/dev/shm` tmpfs; bind mounts `nosuid,nodev`. cgroups at `/<cgroup_root>/<id>` in every hierarchy:
//! memory (swap included, so it cannot swap around the limit), CPU quota, pids (1024 unless set).
//!
//! Extra device nodes ([`DeviceNode`], a GPU's) are host nodes bound into `/dev` without `nodev` (the user
//! namespace forbids `mknod`), each allowed by the v1 device cgroup for its own numbers only.
//!
//! On cgroup v2, device rules would need libcontainer's eBPF support (`cgroupsv2_devices`, off: it needs
//! libbpf); the user namespace already forbids creating device nodes, so a container reaches only the
//! standard devices and the [`DeviceNode`]s bound into its `/dev`.
//!
//! # Process model
//! `run` writes `config.json` and `seccomp.bpf` (the compiled profile, see `bpf`) into the bundle and a
//! request to `<state_root>/<id>.request.json`, then
//! starts `cod __oci-shim run <request>` (see `helper`), which reports `Started` and `Finished` (or
//! `Failed`) as JSON lines on its stdout. A byte or EOF on the helper's stdin makes it SIGKILL the
//! container's init (the pid namespace takes every other process with it): that is how timeout and cancel
//! stop a container, and why a node that dies takes its containers along. If the helper itself dies or
//! hangs, `run` kills it and a fresh `cod __oci-shim delete` removes the leftovers (the helper's blocked
//! clones, found by the request in their command line; the container; its cgroups and state). OOM is the
//! cgroup's own `oom_kill` counter, read before the delete.
//!
//! # Never
//! Calls libcontainer in this (multi-threaded) process: it clones its caller without exec, which deadlocks
//! when another thread holds a lock (youki-dev/youki#3011). Leaves a container, a cgroup, a state dir or a
//! zombie behind when `run` returns, whatever the outcome; a crash's leftovers are the sweep's.

mod bpf;
mod cgroup;
mod helper;
mod seccomp;
mod spec;
mod sweep;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::helper::{DeleteRequest, Event, InitEnd, RunRequest, SweepRequest};

/// The hidden first argument that turns `cod` into the container helper (see [`helper_main`]).
pub const HELPER_ARG: &str = "__oci-shim";

/// How long a container may take to die after the node asked for it before the helper itself is killed
/// and the container removed from outside (a container normally dies within milliseconds of SIGKILL).
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// Default `tracing` filter of the helper's log file: libcontainer's errors and warnings (its real causes),
/// without per-container chatter, which would wear SD cards (libcgroups' v1 manager warns at every
/// container about each controller the host lacks).
pub const DEFAULT_HELPER_LOG_FILTER: &str = "warn,libcgroups::v1::manager=error";

/// The helper's log, in the bundle dir. Read it when a container fails to start.
pub const HELPER_LOG: &str = "helper.log";

/// The container's seccomp program (raw BPF), in the bundle dir.
pub const SECCOMP_BPF: &str = "seccomp.bpf";

/// The seccomp profile every container runs under (Docker's default for Docker's capabilities), as an OCI
/// `linux.seccomp` section. The bundle's `config.json` does not hold it: the node compiles it once and the
/// container's init installs the program from [`SECCOMP_BPF`]. Another runtime given the bundle needs it
/// added to `config.json` to run the same container.
pub fn seccomp_profile() -> oci_spec::runtime::LinuxSeccomp {
    spec::seccomp_profile()
}

/// How long to wait for the rest of a dead helper's output (it is in the pipe already, or never comes).
const DRAIN: Duration = Duration::from_secs(1);

/// The event in one line of helper output, if it is a final one (`Started` is logged, garbage warned of).
fn final_event(id: &str, line: &str) -> Option<Event> {
    match serde_json::from_str::<Event>(line) {
        Ok(Event::Started { pid }) => {
            tracing::debug!(container = %id, pid, "container started");
            None
        }
        Ok(event) => Some(event),
        Err(e) => {
            tracing::warn!(container = %id, %line, error = %e, "unexpected helper output");
            None
        }
    }
}

/// Smallest memory limit we accept: below it even a shell cannot start (Docker's minimum is 6 MB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Runs the helper when `args` (the process arguments after the program name) start with [`HELPER_ARG`].
/// Call first thing in `main`, before any thread, runtime or logging exists; returns `None` otherwise.
pub fn helper_main(args: &[OsString]) -> Option<ExitCode> {
    match args.split_first() {
        Some((first, rest)) if first == HELPER_ARG => Some(helper::main(rest)),
        _ => None,
    }
}

/// One container to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique among live containers of a runtime: `[a-z0-9-]`, 1 to 64 characters, starting with a letter
    /// or digit. Names the state dir, the cgroup and the hostname.
    pub id: String,
    /// The root filesystem, prepared by the caller, owned by the mapped uids (see [`IdMap`]); every
    /// directory above it must let the mapped root through (`o+x`). Mounted read-only.
    pub rootfs: PathBuf,
    /// A per-run directory for `config.json` and the helper's log ([`HELPER_LOG`]). Created if
    /// missing; left in place (the caller removes it).
    pub bundle_dir: PathBuf,
    /// The command and its arguments (`args[0]` is looked up in the container's `PATH`).
    pub args: Vec<String>,
    /// Environment, `KEY=value`. Docker's default `PATH` is added if absent.
    pub env: Vec<String>,
    /// Working directory inside the container (absolute).
    pub cwd: String,
    /// uid and gid inside the container; `None` is root (0:0). A non-root user gets no capabilities.
    pub user: Option<(u32, u32)>,
    /// Bind mounts, always `nosuid,nodev`.
    pub mounts: Vec<BindMount>,
    /// Host device nodes to make usable (GPUs); empty for most containers.
    pub devices: Vec<DeviceNode>,
    /// Paths hidden from the container besides Docker's list (other GPUs' `/proc/driver/nvidia` entries).
    pub masked_paths: Vec<String>,
    /// File receiving the container's stdout (created if missing, appended to).
    pub stdout: PathBuf,
    /// File receiving the container's stderr (created if missing, appended to).
    pub stderr: PathBuf,
    /// Memory limit in bytes (swap included); `None` is unlimited.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core (1000 = one core); `None` is unlimited.
    pub cpu_millis: Option<u64>,
    /// Limit on processes and threads; `None` is 1024.
    pub pids_limit: Option<u64>,
    /// Network.
    pub network: ContainerNetwork,
    /// Where the container's uids and gids live on the host.
    pub id_map: IdMap,
}

/// A host path mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host file or directory (absolute).
    pub source: PathBuf,
    /// Where it appears inside the container (absolute).
    pub target: String,
    /// Whether the container may only read it.
    pub read_only: bool,
}

/// A host device node made usable in the container: bound (a user namespace may not `mknod`) without
/// `nodev`, and allowed (`rwm`) by the device cgroup for exactly its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// The host's node (absolute).
    pub source: PathBuf,
    /// Where it appears inside the container: under `/dev/`.
    pub target: String,
    /// Character or block device.
    pub kind: DeviceKind,
    /// Major number, as the host node has it.
    pub major: u64,
    /// Minor number, as the host node has it.
    pub minor: u64,
}

/// The kind of a [`DeviceNode`] (the device cgroup tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character device (`c`).
    Char,
    /// Block device (`b`).
    Block,
}

/// The container's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerNetwork {
    /// Its own network namespace with only `lo` (Bacalhau's `None`).
    None,
    /// The node's network namespace (Bacalhau's `Host`).
    Host,
    /// An existing network namespace, e.g. `/run/netns/<name>`, prepared by the caller (for an allow-listed
    /// HTTP proxy, say). `/sys` is the node's, read-only, as with `Host`.
    Join(PathBuf),
}

/// The container's uids and gids: 0..`size` inside are `host_base`..`host_base + size` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First host uid/gid (container root). Never 0: that would make container root the host's.
    pub host_base: u32,
    /// How many ids are mapped (65536 covers every id a distribution image uses).
    pub size: u32,
}

impl Default for IdMap {
    /// 100000 + 65536: the range Docker's `userns-remap` and `/etc/subuid` conventions use.
    fn default() -> Self {
        IdMap {
            host_base: 100_000,
            size: 65_536,
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerExit {
    /// Its init exited with `code`.
    Exited {
        /// The exit status.
        code: i32,
    },
    /// Its init was killed by `signal` (not by us).
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// The kernel killed one of its processes at the memory limit (whatever the init's status then was,
    /// as Docker's `OOMKilled`).
    OutOfMemory,
    /// The timeout passed; we killed it.
    TimedOut,
    /// The cancellation token fired; we killed it.
    Cancelled,
}

impl fmt::Display for ContainerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerExit::Exited { code } => write!(f, "exited with code {code}"),
            ContainerExit::Signaled { signal } => write!(f, "killed by signal {signal}"),
            ContainerExit::OutOfMemory => f.write_str("killed at its memory limit"),
            ContainerExit::TimedOut => f.write_str("stopped at its timeout"),
            ContainerExit::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Why a container could not be run. A container that ran and failed is a [`ContainerExit`], not this.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec is unusable; every problem is listed.
    #[error("container {id}: invalid spec: {}", problems.join("; "))]
    InvalidSpec {
        /// The container.
        id: String,
        /// What is wrong, one entry per problem.
        problems: Vec<String>,
    },
    /// The runtime's own settings are unusable.
    #[error("invalid container runtime settings: {0}")]
    InvalidConfig(String),
    /// A container with this id already has state under the state root.
    #[error("container {id} already exists ({}): ids must be unique, or run the sweep after a crash", path.display())]
    Exists {
        /// The container.
        id: String,
        /// Its state dir or helper request.
        path: PathBuf,
    },
    /// The mapped root user cannot reach a path the container needs.
    #[error(
        "container {id}: {} is not reachable by the container's root (host uid {uid}): {} is mode {mode:o} \
         and not owned by it; allow others to traverse it (chmod o+x)",
        path.display(), blocker.display()
    )]
    Unreachable {
        /// The container.
        id: String,
        /// The path the container needs.
        path: PathBuf,
        /// The directory that blocks it.
        blocker: PathBuf,
        /// That directory's mode.
        mode: u32,
        /// The mapped root's host uid.
        uid: u32,
    },
    /// Preparing the bundle failed.
    #[error("container {id}: cannot prepare {}", path.display())]
    Prepare {
        /// The container.
        id: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The seccomp profile could not be compiled (a libseccomp or host problem: the helper log has nothing).
    #[error("container {id}: cannot compile the seccomp profile: {error}")]
    Seccomp {
        /// The container.
        id: String,
        /// Why.
        error: String,
    },
    /// The OCI spec could not be built.
    #[error("container {id}: cannot build the OCI spec")]
    Spec {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The helper process could not be started.
    #[error("cannot start the container helper {}", helper.display())]
    Spawn {
        /// The helper executable.
        helper: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// libcontainer could not create or start the container (a bad image or spec, or a host problem).
    #[error("container {id}: {stage} failed: {error}{}", details(log))]
    Start {
        /// The container.
        id: String,
        /// What failed (`create`, `start`, `join netns`...).
        stage: String,
        /// libcontainer's error.
        error: String,
        /// The error lines of the helper's log, where libcontainer's real cause is.
        log: String,
    },
    /// The helper ended without reporting a result (crashed or killed).
    #[error(
        "container {id}: the helper ended without a result ({status}){}",
        details(log)
    )]
    HelperDied {
        /// The container.
        id: String,
        /// How the helper ended.
        status: String,
        /// The end of the helper's log.
        log: String,
    },
    /// Talking to the helper failed.
    #[error("container {id}: lost contact with the helper")]
    Helper {
        /// The container.
        id: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The sweep failed; leftovers remain.
    #[error("sweeping {}: {message}", state_root.display())]
    Sweep {
        /// The state root.
        state_root: PathBuf,
        /// What failed.
        message: String,
    },
}

fn details(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (helper log: {log})")
    }
}

/// Runs containers (see the module docs). Cheap to clone; holds no resources.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    /// The `cod` binary re-executed as the helper (the running one by default; tests point at the built one).
    helper_exe: PathBuf,
    /// libcontainer's state dirs and our helper requests (`<id>.request.json`), one each per live
    /// container; swept at start-up.
    state_root: PathBuf,
    /// Parent cgroup of every container (`/<cgroup_root>/<id>` in each hierarchy); swept at start-up.
    cgroup_root: String,
    /// See [`DEFAULT_KILL_GRACE`].
    kill_grace: Duration,
    /// See [`DEFAULT_HELPER_LOG_FILTER`].
    log_filter: String,
}

// === impl ContainerRuntime ===

impl ContainerRuntime {
    /// A runtime keeping state under `state_root` (e.g. `/run/cod/containers`) and cgroups under
    /// `cgroup_root` (e.g. `cod`: one or more `[A-Za-z0-9_.-]` segments joined by `/`). The helper is the
    /// running executable.
    pub fn new(
        state_root: impl Into<PathBuf>,
        cgroup_root: impl Into<String>,
    ) -> Result<Self, RuntimeError> {
        let helper_exe = std::env::current_exe().map_err(|e| {
            RuntimeError::InvalidConfig(format!("cannot find the running executable: {e}"))
        })?;
        let state_root = state_root.into();
        let cgroup_root = cgroup_root.into();
        if !state_root.is_absolute() {
            return Err(RuntimeError::InvalidConfig(format!(
                "state root {} must be absolute",
                state_root.display()
            )));
        }
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        if !cgroup_root.split('/').all(segment_ok) {
            return Err(RuntimeError::InvalidConfig(format!(
                "cgroup root {cgroup_root:?} must be names of [A-Za-z0-9_.-] joined by '/'"
            )));
        }
        Ok(ContainerRuntime {
            helper_exe,
            state_root,
            cgroup_root,
            kill_grace: DEFAULT_KILL_GRACE,
            log_filter: DEFAULT_HELPER_LOG_FILTER.to_owned(),
        })
    }

    /// Uses `exe` as the helper (it must dispatch [`HELPER_ARG`] to [`helper_main`]).
    pub fn with_helper_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.helper_exe = exe.into();
        self
    }

    /// Sets how long a killed container may take to die (see [`DEFAULT_KILL_GRACE`]).
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets the `tracing` filter of the helper's log (e.g. `debug` to see libcontainer's every step).
    pub fn with_helper_log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// The state root.
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// The cgroup root.
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The `cgroupsPath` of container `id`.
    fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_root)
    }

    /// Runs `spec` to its end: until its init exits, `timeout` passes (counted from now) or `cancel` fires.
    /// The container, its cgroups and its state are gone when this returns, whatever the outcome.
    ///
    /// Cancel-safety: dropping the future closes the helper's kill pipe, so the helper kills the container
    /// and deletes it on its own, and tokio reaps the helper; nothing is left, but nothing is reported.
    pub async fn run(
        &self,
        spec: ContainerSpec,
        timeout: Option<Duration>,
        cancel: CancellationToken,
    ) -> Result<ContainerExit, RuntimeError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: spec.id.clone(),
                problems,
            });
        }
        if cancel.is_cancelled() {
            return Ok(ContainerExit::Cancelled);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let id = spec.id.clone();
        let request = {
            let runtime = self.clone();
            tokio::task::spawn_blocking(move || runtime.prepare(&spec))
                .await
                .map_err(|e| RuntimeError::Helper {
                    id: id.clone(),
                    source: io::Error::other(e),
                })??
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&request.log)
            .map_err(|source| RuntimeError::Prepare {
                id: id.clone(),
                path: request.log.clone(),
                source,
            })?;
        let request_path = helper::request_path(&self.state_root, &id);
        let mut child = Command::new(&self.helper_exe)
            .arg(HELPER_ARG)
            .arg("run")
            .arg(&request_path)
            .env_clear()
            // Its own process group: a Ctrl-C meant for the node must not kill the helper before the node
            // has stopped the container.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Panics and anything else on stderr land in the helper's log too.
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                helper: self.helper_exe.clone(),
                source,
            })?;
        let outcome = self.supervise(&id, &mut child, deadline, &cancel).await;
        if outcome.is_err() {
            // We can no longer tell the helper anything: stop it, so that waiting for it cannot hang.
            let _ = child.start_kill();
        }
        // Always reaped, whatever happened: no zombie outlives `run`.
        let status = child.wait().await;
        // The helper is gone: its request is not needed any more (a delete below removes it too).
        if let Err(e) = tokio::fs::remove_file(&request_path).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(container = %id, file = %request_path.display(), error = %e, "cannot remove the helper request");
        }
        let (stop, end) = match outcome {
            Ok(x) => x,
            Err(e) => {
                self.remove_leftovers(&id).await;
                return Err(e);
            }
        };
        match (end, stop) {
            (
                Some(Event::Finished {
                    end,
                    oom_kills,
                    killed,
                    cleanup_error,
                }),
                stop,
            ) => {
                if let Some(error) = cleanup_error {
                    tracing::warn!(container = %id, %error, "helper could not delete the container; retrying");
                    self.remove_leftovers(&id).await;
                }
                Ok(match (stop, end) {
                    // Killed on our request: the init's status is our SIGKILL.
                    (Some(stop), _) if killed => stop,
                    _ if oom_kills > 0 => ContainerExit::OutOfMemory,
                    (_, InitEnd::Code(code)) => ContainerExit::Exited { code },
                    (_, InitEnd::Signal(signal)) => ContainerExit::Signaled { signal },
                })
            }
            // Create or start failed after we had asked for a stop (our kill may be why): the stop is the
            // outcome. The helper cleaned up either way.
            (Some(Event::Failed { .. }), Some(stop)) => Ok(stop),
            (Some(Event::Failed { stage, error }), None) => Err(RuntimeError::Start {
                id,
                stage,
                error,
                log: log_excerpt(&request.log, true),
            }),
            // The helper vanished (crashed, killed, or killed by us after the grace).
            (_, stop) => {
                self.remove_leftovers(&id).await;
                stop.ok_or_else(|| RuntimeError::HelperDied {
                    id,
                    status: describe(status),
                    log: log_excerpt(&request.log, false),
                })
            }
        }
    }

    /// Follows the helper's events until its final one, asking it to kill the container at the deadline or
    /// on cancellation, and killing the helper itself if the container is not gone `kill_grace` later.
    /// Returns why we stopped the container (if we did) and the final event (`None`: the helper died
    /// without one, or we killed it).
    async fn supervise(
        &self,
        id: &str,
        child: &mut Child,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<(Option<ContainerExit>, Option<Event>), RuntimeError> {
        /// What woke the loop up.
        enum Step {
            Line(io::Result<Option<String>>),
            HelperExited,
            Stop(ContainerExit),
            GiveUp,
        }
        let helper_err = |source: io::Error| RuntimeError::Helper {
            id: id.to_owned(),
            source,
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| helper_err(io::Error::other("helper stdout not captured")))?;
        // Taken out of `child`, so that `child.wait()` does not close it (which would mean "kill").
        let mut stdin = child.stdin.take();
        let mut lines = BufReader::new(stdout).lines();
        let mut stop: Option<ContainerExit> = None;
        let mut give_up: Option<Instant> = None;
        // A deadline that never comes, for disabled select branches (their futures are still built).
        let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        loop {
            // All branches are cancel-safe (`next_line`, `Child::wait`, timers, `cancelled`).
            let step = tokio::select! {
                line = lines.next_line() => Step::Line(line),
                // Not only EOF: a clone of a dead helper, blocked inside libcontainer, keeps the pipe open.
                _ = child.wait() => Step::HelperExited,
                () = tokio::time::sleep_until(deadline.unwrap_or(never)), if stop.is_none() && deadline.is_some() => {
                    Step::Stop(ContainerExit::TimedOut)
                }
                () = cancel.cancelled(), if stop.is_none() => Step::Stop(ContainerExit::Cancelled),
                () = tokio::time::sleep_until(give_up.unwrap_or(never)), if give_up.is_some() => Step::GiveUp,
            };
            match step {
                Step::Line(line) => match line.map_err(helper_err)? {
                    None => return Ok((stop, None)),
                    Some(line) => {
                        if let Some(event) = final_event(id, &line) {
                            return Ok((stop, Some(event)));
                        }
                    }
                },
                Step::HelperExited => {
                    // Its last words, if any, are already in the pipe: read what is there, without waiting
                    // for an EOF that a leftover clone may withhold.
                    while let Ok(Ok(Some(line))) =
                        tokio::time::timeout(DRAIN, lines.next_line()).await
                    {
                        if let Some(event) = final_event(id, &line) {
                            return Ok((stop, Some(event)));
                        }
                    }
                    return Ok((stop, None));
                }
                Step::Stop(reason) => {
                    tracing::debug!(container = %id, %reason, "stopping the container");
                    stop = Some(reason);
                    give_up = Some(Instant::now() + self.kill_grace);
                    if let Some(mut pipe) = stdin.take() {
                        // EPIPE means the helper is already on its way out, which is what we want; dropping
                        // the pipe afterwards closes it, which the helper reads as the same request.
                        let _ = pipe.write_all(b"kill\n").await;
                    }
                }
                Step::GiveUp => {
                    tracing::error!(container = %id, grace = ?self.kill_grace, "container did not die; killing its helper");
                    let _ = child.start_kill();
                    return Ok((stop, None));
                }
            }
        }
    }

    /// Force-deletes container `id` from a fresh helper, after its own helper failed to. Logged, not
    /// returned: the run's outcome is already decided and the next sweep retries.
    async fn remove_leftovers(&self, id: &str) {
        let request = DeleteRequest {
            id: id.to_owned(),
            state_root: self.state_root.clone(),
            cgroups_path: self.cgroups_path(id),
        };
        match self.call_helper("delete", &request).await {
            Ok((Some(Event::Deleted), _)) => {}
            Ok((_, stderr)) | Err(stderr) => {
                tracing::error!(container = %id, helper_output = %stderr, "cannot delete a container: the next sweep will retry");
            }
        }
    }

    /// Removes every container and cgroup a crash left under this runtime's state and cgroup roots; returns
    /// how many containers it found. Call at node start, before the first `run` (it would kill that too).
    pub async fn sweep(&self) -> Result<usize, RuntimeError> {
        let request = SweepRequest {
            state_root: self.state_root.clone(),
            cgroup_root: self.cgroup_root.clone(),
        };
        let sweep_err = |message: String| RuntimeError::Sweep {
            state_root: self.state_root.clone(),
            message,
        };
        match self
            .call_helper("sweep", &request)
            .await
            .map_err(sweep_err)?
        {
            (Some(Event::Swept { count }), _) => Ok(count),
            (Some(Event::Failed { error, .. }), stderr) => {
                Err(sweep_err(format!("{error}{}", details(&stderr))))
            }
            (_, stderr) => Err(sweep_err(format!(
                "the helper gave no result{}",
                details(&stderr)
            ))),
        }
    }

    /// Runs a short helper command (`delete`, `sweep`) and returns its last event and its stderr (the log).
    async fn call_helper<T: serde::Serialize>(
        &self,
        command: &str,
        request: &T,
    ) -> Result<(Option<Event>, String), String> {
        let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
        let child = Command::new(&self.helper_exe)
            .arg(HELPER_ARG)
            .arg(command)
            .arg(json)
            .env_clear()
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.helper_exe.display()))?;
        // Both commands are bounded by libcontainer's own retries; the grace is a backstop against a hang.
        let output = tokio::time::timeout(self.kill_grace * 3, child.wait_with_output())
            .await
            .map_err(|_| format!("`{HELPER_ARG} {command}` hung"))?
            .map_err(|e| format!("`{HELPER_ARG} {command}`: {e}"))?;
        let stderr = tail(&String::from_utf8_lossy(&output.stderr), 4096);
        let event = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
            .next_back();
        Ok((event, stderr))
    }

    /// Writes the bundle (`config.json`, the helper request) for `spec`. Blocking: file I/O.
    fn prepare(&self, spec: &ContainerSpec) -> Result<RunRequest, RuntimeError> {
        let id = &spec.id;
        let prepare_err = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Prepare {
                id: id.clone(),
                path,
                source,
            }
        };
        for leftover in [
            self.state_root.join(id),
            helper::request_path(&self.state_root, id),
        ] {
            if leftover.exists() {
                return Err(RuntimeError::Exists {
                    id: id.clone(),
                    path: leftover,
                });
            }
        }
        std::fs::create_dir_all(&self.state_root).map_err(prepare_err(&self.state_root))?;
        std::fs::create_dir_all(&spec.bundle_dir).map_err(prepare_err(&spec.bundle_dir))?;
        check_reachable(id, &spec.rootfs, spec.id_map.host_base)?;
        for source in spec
            .mounts
            .iter()
            .map(|m| &m.source)
            .chain(spec.devices.iter().map(|d| &d.source))
        {
            check_reachable(id, source, spec.id_map.host_base)?;
        }

        let layout = cgroup::Layout::detect().map_err(prepare_err(Path::new("/sys/fs/cgroup")))?;
        let (_, nofile_hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(|e| prepare_err(Path::new("RLIMIT_NOFILE"))(io::Error::from(e)))?;
        let host = spec::Host {
            swap_accounting: layout.swap_accounting(),
            cgroup_v2: layout.is_unified(),
            nofile_hard,
        };
        let cgroups_path = self.cgroups_path(id);
        let oci = spec::build(spec, &cgroups_path, &host).map_err(|source| RuntimeError::Spec {
            id: id.clone(),
            source,
        })?;
        let config = spec.bundle_dir.join("config.json");
        oci.save(&config)
            .map_err(|e| prepare_err(&config)(io::Error::other(e)))?;
        let program = bpf::program().map_err(|e| RuntimeError::Seccomp {
            id: id.clone(),
            error: crate::errors::chain(&e),
        })?;
        let seccomp = spec.bundle_dir.join(SECCOMP_BPF);
        std::fs::write(&seccomp, &program).map_err(prepare_err(&seccomp))?;

        let request = RunRequest {
            id: id.clone(),
            state_root: self.state_root.clone(),
            bundle: spec.bundle_dir.clone(),
            stdout: spec.stdout.clone(),
            stderr: spec.stderr.clone(),
            log: spec.bundle_dir.join(HELPER_LOG),
            log_filter: self.log_filter.clone(),
            seccomp,
            cgroups_path,
            loopback_up: spec.network == ContainerNetwork::None,
            netns: match &spec.network {
                ContainerNetwork::Join(path) => Some(path.clone()),
                ContainerNetwork::None | ContainerNetwork::Host => None,
            },
        };
        let path = helper::request_path(&self.state_root, id);
        let json = serde_json::to_vec_pretty(&request)
            .map_err(|e| prepare_err(&path)(io::Error::other(e)))?;
        std::fs::write(&path, json).map_err(prepare_err(&path))?;
        Ok(request)
    }
}

// === impl ContainerSpec ===

impl ContainerSpec {
    /// Everything wrong with this spec (empty: usable).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && !self.id.starts_with('-')
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !id_ok {
            p.push(format!(
                "id {:?} must be 1 to 64 of [a-z0-9-], not starting with '-'",
                self.id
            ));
        }
        if !self.rootfs.is_absolute() {
            p.push(format!(
                "rootfs {} must be an absolute path",
                self.rootfs.display()
            ));
        }
        if !self.bundle_dir.is_absolute() {
            p.push(format!(
                "bundle dir {} must be an absolute path",
                self.bundle_dir.display()
            ));
        }
        if self.args.is_empty() || self.args[0].is_empty() {
            p.push("args must name a command".to_owned());
        }
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                p.push(format!("environment entry {e:?} must be KEY=value"));
            }
        }
        if !self.cwd.starts_with('/') {
            p.push(format!("cwd {:?} must be absolute", self.cwd));
        }
        for m in &self.mounts {
            if !m.source.is_absolute() {
                p.push(format!(
                    "mount source {} must be absolute",
                    m.source.display()
                ));
            }
            if !m.target.starts_with('/') || m.target.split('/').any(|s| s == "..") {
                p.push(format!(
                    "mount target {:?} must be absolute, without '..'",
                    m.target
                ));
            }
        }
        for d in &self.devices {
            if !d.source.is_absolute() {
                p.push(format!(
                    "device source {} must be absolute",
                    d.source.display()
                ));
            }
            // Only under /dev: a device node anywhere else would be a way around the read-only root.
            if !d.target.starts_with("/dev/") || d.target.split('/').any(|s| s == "..") {
                p.push(format!(
                    "device target {:?} must be under /dev/, without '..'",
                    d.target
                ));
            }
        }
        for m in &self.masked_paths {
            if !m.starts_with('/') || m.split('/').any(|s| s == "..") {
                p.push(format!("masked path {m:?} must be absolute, without '..'"));
            }
        }
        for (what, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !path.is_absolute() {
                p.push(format!(
                    "{what} file {} must be an absolute path",
                    path.display()
                ));
            }
        }
        if self.memory_bytes.is_some_and(|m| m < MIN_MEMORY_BYTES) {
            p.push(format!(
                "memory limit must be at least {MIN_MEMORY_BYTES} bytes"
            ));
        }
        // The kernel's smallest CFS quota is 1 ms per 100 ms period.
        if self.cpu_millis.is_some_and(|c| c < 10) {
            p.push("cpu limit must be at least 10 millicores".to_owned());
        }
        if self.pids_limit == Some(0) {
            p.push("pids limit must be at least 1".to_owned());
        }
        if self.id_map.host_base == 0 {
            p.push(
                "id map must not start at host uid 0 (container root would be host root)"
                    .to_owned(),
            );
        }
        if self.id_map.size == 0
            || self
                .id_map
                .host_base
                .checked_add(self.id_map.size)
                .is_none()
        {
            p.push("id map size must be at least 1 and stay within 32-bit ids".to_owned());
        }
        if let Some((uid, gid)) = self.user
            && (uid >= self.id_map.size || gid >= self.id_map.size)
        {
            p.push(format!(
                "user {uid}:{gid} is outside the id map (size {})",
                self.id_map.size
            ));
        }
        if let ContainerNetwork::Join(path) = &self.network
            && !path.is_absolute()
        {
            p.push(format!(
                "network namespace {} must be an absolute path",
                path.display()
            ));
        }
        p
    }
}

/// Checks that the container's root (host uid/gid `uid`) can traverse every directory above `path`: it
/// resolves mounts from inside its user namespace, where root-owned `0700` directories (tempdirs!) are
/// closed to it, and libcontainer would only say "permission denied" from a cloned process.
fn check_reachable(id: &str, path: &Path, uid: u32) -> Result<(), RuntimeError> {
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|source| RuntimeError::Prepare {
            id: id.to_owned(),
            path: dir.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode();
        let exec = if meta.uid() == uid {
            mode & 0o100
        } else if meta.gid() == uid {
            mode & 0o010
        } else {
            mode & 0o001
        };
        if exec == 0 {
            return Err(RuntimeError::Unreachable {
                id: id.to_owned(),
                path: path.to_owned(),
                blocker: dir.to_owned(),
                mode: mode & 0o7777,
                uid,
            });
        }
    }
    Ok(())
}

/// The helper log's error lines (or, without any, its last lines), at most 4 KiB, for an error message.
fn log_excerpt(path: &Path, errors_only: bool) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
    let lines: Vec<&str> = if errors.is_empty() || !errors_only {
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(10)..].to_vec()
    } else {
        errors[errors.len().saturating_sub(10)..].to_vec()
    };
    tail(&lines.join(" | "), 4096)
}

/// The last `max` bytes of `text` (on a character boundary).
fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn describe(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "job-1".to_owned(),
            rootfs: PathBuf::from("/r"),
            bundle_dir: PathBuf::from("/b"),
            args: vec!["true".to_owned()],
            env: vec![],
            cwd: "/".to_owned(),
            user: None,
            mounts: vec![],
            devices: vec![],
            masked_paths: vec![],
            stdout: PathBuf::from("/o"),
            stderr: PathBuf::from("/e"),
            memory_bytes: None,
            cpu_millis: None,
            pids_limit: None,
            network: ContainerNetwork::None,
            id_map: IdMap::default(),
        }
    }

    #[test]
    fn a_sane_spec_has_no_problems() {
        assert!(spec().problems().is_empty());
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut s = spec();
        s.id = "Bad_ID".to_owned();
        s.args = vec![];
        s.env = vec!["NOEQUALS".to_owned()];
        s.cwd = "rel".to_owned();
        s.memory_bytes = Some(1024);
        s.id_map.host_base = 0;
        s.mounts = vec![BindMount {
            source: PathBuf::from("rel"),
            target: "/a/../b".to_owned(),
            read_only: true,
        }];
        s.devices = vec![DeviceNode {
            source: PathBuf::from("dev/nvidia0"),
            target: "/usr/nvidia0".to_owned(),
            kind: DeviceKind::Char,
            major: 195,
            minor: 0,
        }];
        assert_eq!(s.problems().len(), 10, "{:?}", s.problems());
    }

    #[test]
    fn user_must_be_inside_the_id_map() {
        let mut s = spec();
        s.user = Some((70_000, 0));
        assert_eq!(s.problems().len(), 1);
    }

    #[test]
    fn cgroup_root_must_be_plain_names() {
        assert!(ContainerRuntime::new("/run/cod", "cod/jobs").is_ok());
        for bad in ["", "/cod", "cod/../x", "a b"] {
            assert!(ContainerRuntime::new("/run/cod", bad).is_err(), "{bad:?}");
        }
        assert!(ContainerRuntime::new("run/cod", "cod").is_err());
    }

    #[test]
    fn helper_main_ignores_other_commands() {
        assert!(helper_main(&[OsString::from("serve")]).is_none());
        assert!(helper_main(&[]).is_none());
    }

    #[test]
    fn a_0700_directory_not_owned_by_the_mapped_root_blocks_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = dir.path().join("rootfs");
        std::fs::create_dir(&inner).expect("mkdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let err = check_reachable("x", &inner, 100_000).expect_err("blocked");
        assert!(
            matches!(err, RuntimeError::Unreachable { mode: 0o700, .. }),
            "{err}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        check_reachable("x", &inner, 100_000).expect("reachable");
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
    }
}
