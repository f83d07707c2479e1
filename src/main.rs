//! The `cod` binary: parse the command line, set up TLS, logging and the runtime, run, map the exit code.
//! Everything else lives in the library ([`cod::cli`] for the commands).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use cod::cli::{Cli, Outcome, Runtime, UsageError};

/// The process exit codes, in one place.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Everything worked, or stdout was closed early (`cod job list | head`).
    Ok = 0,
    /// The command failed.
    Error = 1,
    /// The command worked, but the job it waited for failed or was stopped.
    JobFailed = 2,
    /// The command line makes no sense (EX_USAGE, as linkerd uses for bad config).
    Usage = 64,
}

fn main() -> ExitCode {
    // The container helper (`cod __oci-shim ...`) must run before any thread, runtime or logging exists:
    // libcontainer clones its caller, which is only safe single-threaded.
    #[cfg(feature = "executor-oci")]
    if let Some(code) =
        cod::executor::oci::runtime::helper_main(&std::env::args_os().skip(1).collect::<Vec<_>>())
    {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Usage lines say `cod`, not the install path.
    let cli = match Cli::parse(&args) {
        Ok(cli) => cli,
        Err(early) => {
            // `--help` is an early exit too: to stdout with success.
            return if early.status.is_ok() {
                let _ = writeln!(std::io::stdout(), "{}", early.output);
                ExitCode::from(Exit::Ok as u8)
            } else {
                let _ = writeln!(std::io::stderr(), "{}", early.output);
                ExitCode::from(Exit::Usage as u8)
            };
        }
    };
    // reqwest is built without a bundled crypto provider; install ring before any client exists. An error means
    // one is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cod::telemetry::init(if cli.is_serve() { "info" } else { "warn" });

    let run = cli.prepare().and_then(|prepared| {
        let rt = build_runtime(prepared.runtime())?;
        rt.block_on(prepared.run())
    });
    let exit = match run {
        Ok(Outcome::Success) => Exit::Ok,
        Ok(Outcome::JobFailed) => Exit::JobFailed,
        Err(e) if is_broken_pipe(&e) => Exit::Ok,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if e.chain().any(|c| c.is::<UsageError>()) {
                Exit::Usage
            } else {
                Exit::Error
            }
        }
    };
    ExitCode::from(exit as u8)
}

/// Builds the runtime the command asked for (see [`Runtime`]).
fn build_runtime(runtime: Runtime) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match runtime {
        Runtime::MultiThread { workers } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            // Blocking threads carry LMDB transactions and file I/O; tokio's default of 512 would let a burst
            // reserve far more stacks than a 512 MiB board can spare.
            b.max_blocking_threads(32).thread_name("cod-worker");
            if let Some(n) = workers {
                b.worker_threads(n);
            }
            b
        }
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// True when the failure is stdout closing under us, which is how `| head` ends a command: not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
