//! The helper process: `cod __oci-shim <command> <argument>`, the only place libcontainer runs.
//!
//! libcontainer clones its caller without exec and runs Rust code in the child, which is only safe from a
//! single-threaded process (youki-dev/youki#3011), and it `chdir()`s the whole process: so each container
//! gets a fresh, single-threaded helper, started by [`super::ContainerRuntime`] through `tokio::process`.
//! `main.rs` dispatches here before anything else runs (no runtime, no logging set-up, no threads).
//!
//! Commands (one JSON event per line on stdout, see [`Event`]):
//! - `run <request.json>`: create and start the container, report `Started`, wait for its init, read the OOM
//!   counter, delete the container, report `Finished` (or `Failed`). Any byte or EOF on stdin means "kill":
//!   the node writes to it on timeout/cancel, and a node that dies closes it, so a container never outlives
//!   its node by more than the kill.
//! - `delete <json>`: force-delete one container, its cgroups and its helper's leftovers (after a helper
//!   died or hung).
//! - `sweep <json>`: delete every container under a state root and every cgroup under a cgroup root.
//!
//! The helper logs with `tracing` to the file named in the request (`run`) or to stderr: libcontainer's real
//! causes ("received unexpected message: OtherError(..)" hides them) are only there.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use super::bpf::SeccompExecutor;
use super::cgroup::Layout;
use super::sweep;
use crate::errors::chain;

/// What `run` needs; written by the node into the bundle dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunRequest {
    /// Container id (also the state dir's and the cgroup's name).
    pub id: String,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The bundle (holds `config.json`).
    pub bundle: PathBuf,
    /// Files receiving the container's stdout and stderr (created if missing, appended to).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The helper's log file.
    pub log: PathBuf,
    /// `tracing` filter for that log.
    pub log_filter: String,
    /// The container's seccomp program (see `bpf`). Required: a request without one is refused, never run
    /// unfiltered.
    pub seccomp: PathBuf,
    /// The spec's `cgroupsPath`.
    pub cgroups_path: String,
    /// A network namespace to enter before creating the container.
    pub netns: Option<PathBuf>,
    /// Whether the container gets a new network namespace whose `lo` must be brought up.
    pub loopback_up: bool,
}

/// What `delete` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DeleteRequest {
    pub id: String,
    pub state_root: PathBuf,
    pub cgroups_path: String,
}

/// What `sweep` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SweepRequest {
    pub state_root: PathBuf,
    pub cgroup_root: String,
}

/// How the container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum InitEnd {
    Code(i32),
    Signal(i32),
}

/// One line of the helper's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Event {
    /// The container runs; `pid` is its init on the host.
    Started { pid: i32 },
    /// The init ended and the container was deleted (unless `cleanup_error`).
    Finished {
        end: InitEnd,
        /// Processes the kernel killed for want of memory.
        oom_kills: u64,
        /// Whether the helper killed the init because the node asked (or went away).
        killed: bool,
        /// Why the container could not be deleted, if it could not.
        cleanup_error: Option<String>,
    },
    /// Nothing ran: `stage` failed with `error` (the cleanup was attempted).
    Failed { stage: String, error: String },
    /// `delete` is done.
    Deleted,
    /// `sweep` removed this many containers.
    Swept { count: usize },
}

/// Writes one event line. A node that stopped listening is not our problem here: the kill pipe tells us
/// what to do about it.
fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Entry point of the helper: `args` are the arguments after the hidden subcommand.
pub(super) fn main(args: &[OsString]) -> ExitCode {
    let command = args.first().and_then(|a| a.to_str());
    let argument = args.get(1);
    let result = match (command, argument) {
        (Some("run"), Some(path)) => run_command(Path::new(path)),
        (Some("delete"), Some(json)) => parse::<DeleteRequest>(json).map(|r| {
            log_to_stderr();
            delete(&r);
            emit(&Event::Deleted);
        }),
        (Some("sweep"), Some(json)) => parse::<SweepRequest>(json).map(|r| {
            log_to_stderr();
            match sweep::sweep(&r.state_root, &r.cgroup_root) {
                Ok(count) => emit(&Event::Swept { count }),
                Err(error) => emit(&Event::Failed {
                    stage: "sweep".to_owned(),
                    error,
                }),
            }
        }),
        _ => Err(
            "usage: cod __oci-shim run <request.json> | delete <json> | sweep <json>".to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "cod __oci-shim: {e}");
            ExitCode::from(64)
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(json: &OsString) -> Result<T, String> {
    let text = json.to_str().ok_or("request is not UTF-8")?;
    serde_json::from_str(text).map_err(|e| format!("invalid request {text}: {e}"))
}

fn log_to_stderr() {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_ansi(false),
        )
        .with(Targets::new().with_default(tracing::Level::WARN))
        .try_init();
}

fn run_command(path: &Path) -> Result<(), String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let req: RunRequest = serde_json::from_str(&text)
        .map_err(|e| format!("invalid request {}: {e}", path.display()))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&req.log)
        .map_err(|e| format!("opening log {}: {e}", req.log.display()))?;
    // An `Arc<File>` writer takes no lock, so a clone made by libcontainer can never inherit a held one.
    // `level` and `target=level` items (no regex engine in the binary); an unparsable filter means warnings.
    let filter = req
        .log_filter
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::WARN));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(Arc::new(log))
                .with_ansi(false),
        )
        .with(filter)
        .try_init();
    match run(&req) {
        Ok(event) => emit(&event),
        Err((stage, error)) => {
            // Warn, not error: the node reports it (and the error lines are what it quotes from this log).
            tracing::warn!(id = %req.id, stage, %error, "container failed");
            delete(&DeleteRequest {
                id: req.id.clone(),
                state_root: req.state_root.clone(),
                cgroups_path: req.cgroups_path.clone(),
            });
            emit(&Event::Failed {
                stage: stage.to_owned(),
                error,
            });
        }
    }
    Ok(())
}

type Stage = (&'static str, String);

fn at<E: std::error::Error>(stage: &'static str) -> impl FnOnce(E) -> Stage {
    move |e| (stage, chain(&e))
}

fn open_output(path: &Path) -> Result<File, Stage> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ("open output", format!("{}: {e}", path.display())))
}

/// Undoes, for the container, the `SIGPIPE` ignore that Rust's runtime set up in this process before
/// `main`: an ignored signal stays ignored across `exec` (`yes | head -1` would never end), a handled one
/// goes back to its default. So we handle it, through tokio's safe signal API, and the container's exec
/// resets it. The throwaway current-thread runtime starts no thread, and the handler stays installed after
/// it is dropped (signal handlers are never uninstalled). In this process, a write to a closed pipe still
/// fails with `EPIPE` instead of killing us.
fn handle_sigpipe() -> Result<(), Stage> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(at("sigpipe"))?;
    let stream = rt
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()) })
        .map_err(at("sigpipe"))?;
    // Only the stream goes; the process-wide handler it installed is what we wanted.
    drop(stream);
    Ok(())
}

/// libcontainer's clones are only safe if this process has exactly one thread: checked, not assumed.
fn assert_single_threaded() -> Result<(), Stage> {
    let status = fs::read_to_string("/proc/self/status").map_err(at("threads"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    match threads {
        Some("1") => Ok(()),
        other => Err((
            "threads",
            format!(
                "the helper must be single-threaded before libcontainer runs, it has {other:?}"
            ),
        )),
    }
}

/// Creates, starts, waits for and deletes the container of `req`.
fn run(req: &RunRequest) -> Result<Event, Stage> {
    handle_sigpipe()?;
    assert_single_threaded()?;
    let executor = SeccompExecutor::read(&req.seccomp).map_err(at("seccomp"))?;
    let stdin = File::open("/dev/null").map_err(at("open /dev/null"))?;
    let stdout = open_output(&req.stdout)?;
    let stderr = open_output(&req.stderr)?;
    if let Some(netns) = &req.netns {
        let ns =
            File::open(netns).map_err(|e| ("join netns", format!("{}: {e}", netns.display())))?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| ("join netns", format!("{}: {e}", netns.display())))?;
    }

    // The sweep created the parent at start-up; this covers its removal since (by an operator, or a sweep
    // that failed), at the cost of one mkdir that finds it there.
    // The same layout serves the OOM counter after the run.
    let layout = Layout::detect().map_err(at("cgroup layout"))?;
    let parent = Path::new(&req.cgroups_path)
        .parent()
        .unwrap_or(Path::new("/"));
    layout
        .create_parent(&parent.to_string_lossy())
        .map_err(at("cgroup parent"))?;
    let mut container = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_root_path(&req.state_root)
        .map_err(at("create"))?
        .with_executor(executor)
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(&req.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(at("create"))?;
    let pid = container
        .pid()
        .ok_or(("create", "libcontainer reported no init pid".to_owned()))?;
    if req.loopback_up {
        loopback_up(pid).map_err(|e| ("loopback", e))?;
    }
    container.start().map_err(at("start"))?;
    emit(&Event::Started { pid: pid.as_raw() });
    tracing::debug!(id = %req.id, %pid, "container started");

    let (end, killed) = wait_for_init(pid).map_err(at("wait"))?;
    let oom_kills = layout.oom_kills(&req.cgroups_path).unwrap_or_else(|e| {
        tracing::warn!(id = %req.id, error = %e, "cannot read the OOM counter");
        0
    });
    let cleanup_error = container.delete(true).err().map(|e| chain(&e));
    if let Some(error) = &cleanup_error {
        tracing::error!(id = %req.id, %error, "container delete failed");
    }
    Ok(Event::Finished {
        end,
        oom_kills,
        killed,
        cleanup_error,
    })
}

/// Brings `lo` up in the new network namespace of init `pid`, which still waits for its start signal.
/// libcontainer does not, so the helper enters the netns (it is root in the host's user namespace, which
/// owns all others) and does it there.
fn loopback_up(pid: Pid) -> Result<(), String> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering {path}: {e}"))?;
    crate::executor::oci::netns::loopback_up().map_err(|e| e.to_string())
}

/// Waits for the container's init (our child: libcontainer clones it with `CLONE_PARENT`) while watching
/// stdin, the node's kill pipe. Returns how the init ended and whether we killed it.
///
/// SIGCHLD and the termination signals are blocked and read through a signalfd only now, after the clone:
/// a blocked mask would be inherited by the container's processes.
fn wait_for_init(pid: Pid) -> nix::Result<(InitEnd, bool)> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let stdin = io::stdin();
    let mut killed = false;
    let stop = |killed: &mut bool| {
        if !*killed {
            // The init is our unreaped child, so its pid cannot have been reused. Killing a pid namespace's
            // init makes the kernel kill every other process in it.
            let _ = kill(pid, Signal::SIGKILL);
            *killed = true;
        }
    };
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok((InitEnd::Code(code), killed)),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok((InitEnd::Signal(signal as i32), killed));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if !killed {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let stdin_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if stdin_ready {
            // Whatever arrived (a kill request or EOF), the answer is the same.
            let mut buf = [0u8; 64];
            let _ = stdin.lock().read(&mut buf);
            stop(&mut killed);
        }
        while let Ok(Some(info)) = signals.read_signal() {
            if info.ssi_signo != Signal::SIGCHLD as u32 {
                stop(&mut killed);
            }
        }
    }
}

/// Where the node writes the `run` request of container `id`. It lives under the state root, not in the
/// bundle, so that the sweep can recognise this runtime's helpers by their command line.
pub(super) fn request_path(state_root: &Path, id: &str) -> PathBuf {
    state_root.join(format!("{id}.request.json"))
}

/// SIGKILLs every process still running `__oci-shim run <request>`: a dead helper's clones that libcontainer
/// left blocked before their exec (an intermediate waiting for its uid map forever, outside any cgroup
/// yet), or the helper itself. Exec'd container processes have another command line; the cgroup and the
/// pid namespace take care of those.
fn kill_helper_processes(request: &Path) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.len() >= 4
            && args[1] == super::HELPER_ARG.as_bytes()
            && args[2] == b"run"
            && args[3] == request.as_os_str().as_encoded_bytes();
        if ours && pid != me {
            tracing::info!(pid, request = %request.display(), "killing a leftover helper process");
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Force-deletes container `req.id`: its helper's leftover processes, then the container through
/// libcontainer if its state loads, then whatever is left of its cgroups, state dir and request. Failures
/// are logged: the next sweep retries.
pub(super) fn delete(req: &DeleteRequest) {
    let request = request_path(&req.state_root, &req.id);
    kill_helper_processes(&request);
    let dir = req.state_root.join(&req.id);
    if dir.exists() {
        match Container::load(dir.clone()) {
            Ok(mut container) => {
                if let Err(e) = container.delete(true) {
                    tracing::warn!(id = %req.id, error = %chain(&e), "libcontainer delete failed");
                }
            }
            Err(e) => {
                tracing::warn!(id = %req.id, error = %chain(&e), "cannot load container state")
            }
        }
    }
    match Layout::detect() {
        Ok(layout) => {
            if let Err(e) = layout.remove(&req.cgroups_path) {
                tracing::error!(id = %req.id, error = %e, "cannot remove the container's cgroups");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot find the cgroup hierarchies"),
    }
    if let Err(e) = fs::remove_dir_all(&dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::error!(id = %req.id, dir = %dir.display(), error = %e, "cannot remove the state dir");
    }
    if let Err(e) = fs::remove_file(&request)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::error!(id = %req.id, file = %request.display(), error = %e, "cannot remove the request");
    }
}
