//! The wasm executor: WASI preview 1 modules in wasmi, on dedicated threads, with Bacalhau's
//! semantics (`pkg/executor/wasm`).
//!
//! # Layout
//! - this file: [`WasmConfig`] and [`WasmExecutor`], the async face (`validate`, `run`).
//! - `worker`: the `cod-wasm-N` threads; one run from context to outcome; fuel slices.
//! - `queue`: the runs waiting for a worker (many workers, one queue, one wake-up per run).
//! - `link`: module lookup in the mount table, compilation, import linking.
//! - `compiled`: modules compiled for earlier runs, reused when the bytes are the same.
//! - `fs`: the guest filesystem (the mount table preopened at `/`).
//! - `wasi`: Cod's own WASI preview 1 (`wasi_snapshot_preview1`) on top of it.
//! - `stdio`: capped stdout/stderr files.
//! - `interrupt`: the stop signal, and WASI sleeps that honour it.
//!
//! # Semantics
//! - argv is `["", Parameters…]`, the environment is the context's (sorted), stdin is empty;
//!   clocks and random are available, sockets are not.
//! - Inputs are mounted at their `Target` (read-only unless a writable `local` input), result
//!   folders writable at `/<Name>`, all under the single preopen `/`; see `fs`.
//! - Exit code: `proc_exit(n)` gives `n`; a trap gives 1. An entry point that returns without
//!   calling `proc_exit` gives 0: Bacalhau reports -1 there, but wasi-libc, Rust and Go always
//!   call `proc_exit` after `main`, so only hand-written modules see the difference, and a clean
//!   return is what they mean by success.
//! - Memory: the limit is rounded up to 64 KiB pages (at most 4 GiB). A `memory.grow` past it
//!   returns -1 to the guest, as on wazero; if the run then traps or exits non-zero, the outcome
//!   is [`FailureReason::OutOfMemory`].
//! - Timeout: counted from when a worker takes the run, not from when it was queued.
//!
//! # Never
//! Runs wasm (or compiles it) on the async runtime, or lets a run outlive its cancellation or its
//! dropped `run()` future by more than one fuel slice (a start function, which wasmi cannot run
//! in slices, is bounded by its own fuel budget instead; WASI programs have none).

mod compiled;
mod fs;
mod interrupt;
mod link;
mod queue;
mod stdio;
mod wasi;
mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use self::interrupt::{Interrupt, TriggerOnDrop};
use self::queue::Queue;
use self::worker::Job;
use super::{Executor, ExecutorError, FailureReason, RunContext, RunOutcome};
use crate::model::{EngineKind, EngineSpec, NetworkType, Task, resources};

/// Fuel per slice when not configured: about a million wasm instructions, a few milliseconds on
/// the boards we target, so a deadline or cancel is noticed within that.
pub const DEFAULT_FUEL_SLICE: u64 = 1_000_000;

/// Settings of the wasm executor.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Worker threads, i.e. wasm runs at once (0 counts as 1). Runs beyond it wait in `run()`.
    pub slots: usize,
    /// Fuel (about one unit per wasm instruction) a guest runs between two looks at its deadline
    /// and cancellation. Smaller stops sooner, at a small cost per slice; 0 counts as 1.
    pub fuel_slice: u64,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            slots: 1,
            fuel_slice: DEFAULT_FUEL_SLICE,
        }
    }
}

/// Runs WASI preview 1 modules in wasmi on dedicated threads.
#[derive(Debug)]
pub struct WasmExecutor {
    /// Feeds the workers. Bounded by the number of workers: a caller past that waits (async) in
    /// `run()` instead of piling contexts up in memory. Closed on drop, which ends the workers.
    jobs: Arc<Queue<Job>>,
}

impl Drop for WasmExecutor {
    fn drop(&mut self) {
        self.jobs.close();
    }
}

// === impl WasmExecutor ===

impl WasmExecutor {
    /// Starts the worker threads. A thread that cannot start is logged; with none at all, every
    /// `run()` fails with [`ExecutorError::ShutDown`].
    pub fn new(config: WasmConfig) -> Self {
        let mut engine_config = wasmi::Config::default();
        engine_config.consume_fuel(true);
        // Lazy translation charges a function's compilation to the fuel of the call that first
        // reaches it, and when that passes a slice boundary wasmi 2.0 reports a plain error, not
        // a resumable out-of-fuel: a real program (Rust std, 110 KB) then "trapped" at random.
        // Translating at load avoids it, and reports invalid code before the run starts.
        engine_config.compilation_mode(wasmi::CompilationMode::Eager);
        let engine = wasmi::Engine::new(&engine_config);
        let slots = config.slots.max(1);
        let fuel_slice = config.fuel_slice.max(1);
        let jobs = Arc::new(Queue::new(slots));
        let compiled = Arc::new(compiled::CompiledModules::default());
        let mut started = 0;
        for index in 0..slots {
            let shared = worker::Shared {
                engine: engine.clone(),
                compiled: Arc::clone(&compiled),
            };
            match worker::spawn(index, shared, fuel_slice, Arc::clone(&jobs)) {
                Ok(()) => started += 1,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start wasm worker thread");
                }
            }
        }
        if started == 0 {
            // Nobody would ever take a run: every `run()` fails at once instead of waiting forever.
            jobs.close();
        }
        WasmExecutor { jobs }
    }
}

#[async_trait]
impl Executor for WasmExecutor {
    fn engine(&self) -> EngineKind {
        EngineKind::Wasm
    }

    fn validate(&self, task: &Task) -> Result<(), ExecutorError> {
        let unsupported = |reason: String| ExecutorError::Unsupported {
            engine: "wasm",
            reason,
        };
        match EngineSpec::parse(&task.engine, "Engine") {
            Ok(EngineSpec::Wasm(params)) if params.entry_module.trim().is_empty() => {
                return Err(unsupported(
                    "wasm jobs need Engine.Params.EntryModule (the module to run)".to_owned(),
                ));
            }
            Ok(EngineSpec::Wasm(_)) => {}
            Ok(_) => {
                return Err(unsupported(format!(
                    "engine {:?} is not wasm",
                    task.engine.kind
                )));
            }
            Err(e) => return Err(unsupported(e.to_string())),
        }
        // Said at bid time, so the orchestrator's "no node can run this" names the reason.
        if let Ok(n @ 1..) = resources::parse_gpu(&task.resources.gpu) {
            return Err(unsupported(format!(
                "the wasm engine cannot use GPUs (the task asks for {n}): run GPU work with the docker \
                 engine, or drop Resources.GPU"
            )));
        }
        match &task.network.kind {
            NetworkType::Default | NetworkType::None => Ok(()),
            other => Err(unsupported(format!(
                "wasm jobs cannot use network type {} on this node (use None)",
                other.as_str()
            ))),
        }
    }

    /// Cancel-safe: dropping the future stops the guest within one fuel slice.
    async fn run(
        &self,
        ctx: RunContext,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        let interrupt = Arc::new(Interrupt::default());
        // Dropped when this future ends or is dropped; stops the guest if it still runs.
        let _stop_guest = TriggerOnDrop(Arc::clone(&interrupt));
        let (reply, mut outcome) = oneshot::channel();
        let job = Job {
            ctx,
            interrupt: Arc::clone(&interrupt),
            reply,
            span: tracing::Span::current(),
        };
        let shut_down = || ExecutorError::ShutDown { engine: "wasm" };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(RunOutcome::Failed(FailureReason::Cancelled)),
            sent = self.jobs.push(job) => sent.map_err(|_| shut_down())?,
        }
        tokio::select! {
            biased;
            done = &mut outcome => done.map_err(|_| shut_down()),
            () = cancel.cancelled() => {
                // The worker notices within a slice (or wakes from a WASI sleep) and replies.
                interrupt.trigger();
                outcome.await.map_err(|_| shut_down())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::executor::{Limits, OutputDir, PreparedInput};
    use crate::model::{ExecutionId, JobId, NetworkConfig, SpecConfig, WasmParams};

    const HELLO: &str = include_str!("testdata/hello.wat");
    const EXIT3: &str = include_str!("testdata/exit3.wat");
    const TRAP: &str = include_str!("testdata/trap.wat");
    const SPIN: &str = include_str!("testdata/spin.wat");
    const SLEEP: &str = include_str!("testdata/sleep.wat");
    const MEMBOMB: &str = include_str!("testdata/membomb.wat");
    const CHATTY: &str = include_str!("testdata/chatty.wat");
    const FSPROBE: &str = include_str!("testdata/fsprobe.wat");
    const LIB: &str = include_str!("testdata/lib.wat");
    const USES_LIB: &str = include_str!("testdata/uses_lib.wat");
    const ALL_WASI: &str = include_str!("testdata/allwasi.wat");

    /// errno values as a probe's exit code.
    const ENOENT: i32 = 44;
    const EROFS: i32 = 69;

    /// Small slices: debug builds of wasmi are far slower than release, and the timing tests
    /// should not depend on the build profile.
    fn executor(slots: usize) -> WasmExecutor {
        WasmExecutor::new(WasmConfig {
            slots,
            fuel_slice: 100_000,
        })
    }

    /// One run's context and files, in a temp dir of its own.
    struct Job {
        dir: tempfile::TempDir,
        ctx: RunContext,
    }

    impl Job {
        /// Runs `wat`, mounted as the file input `/main.wasm`, with `args` as Parameters.
        fn new(wat: &str, args: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ctx = RunContext {
                execution_id: ExecutionId::generate(),
                job_id: JobId::generate(),
                engine: EngineSpec::Wasm(WasmParams {
                    entry_module: "/main.wasm".into(),
                    parameters: args.iter().map(|a| a.to_string()).collect(),
                    ..WasmParams::default()
                }),
                env: BTreeMap::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                stdout_path: dir.path().join("stdout"),
                stderr_path: dir.path().join("stderr"),
                scratch_dir: dir.path().to_owned(),
                limits: Limits {
                    memory_bytes: None,
                    cpu_millis: None,
                    timeout: None,
                    max_output_bytes: 1 << 20,
                },
                network: NetworkConfig {
                    kind: NetworkType::None,
                    domains: Vec::new(),
                },
                progress: crate::executor::Progress::default(),
                gpus: vec![],
            };
            let mut job = Job { dir, ctx };
            job.module("/main.wasm", &wat::parse_str(wat).unwrap());
            job
        }

        fn params(&mut self) -> &mut WasmParams {
            match &mut self.ctx.engine {
                EngineSpec::Wasm(p) => p,
                other => panic!("not wasm: {other:?}"),
            }
        }

        /// Mounts `bytes` as the read-only file input at `target`.
        fn module(&mut self, target: &str, bytes: &[u8]) -> PathBuf {
            let host = self
                .dir
                .path()
                .join("files")
                .join(target.trim_start_matches('/'));
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(&host, bytes).unwrap();
            self.ctx.inputs.push(PreparedInput {
                target: target.into(),
                host_path: host.clone(),
                read_only: true,
            });
            host
        }

        /// Mounts a new host directory holding `files` at `target`.
        fn input_dir(&mut self, target: &str, files: &[(&str, &str)], read_only: bool) -> PathBuf {
            let host = self
                .dir
                .path()
                .join("dirs")
                .join(target.trim_start_matches('/'));
            std::fs::create_dir_all(&host).unwrap();
            for (name, text) in files {
                std::fs::write(host.join(name), text).unwrap();
            }
            self.ctx.inputs.push(PreparedInput {
                target: target.into(),
                host_path: host.clone(),
                read_only,
            });
            host
        }

        /// Adds a result folder named `name`, and returns its host directory.
        fn output(&mut self, name: &str, path: &str) -> PathBuf {
            let host = self.dir.path().join("results").join(name);
            std::fs::create_dir_all(&host).unwrap();
            self.ctx.outputs.push(OutputDir {
                name: name.into(),
                path: path.into(),
                host_dir: host.clone(),
            });
            host
        }

        fn stdout(&self) -> String {
            String::from_utf8(std::fs::read(&self.ctx.stdout_path).unwrap()).unwrap()
        }

        /// The outcome without the streams' heads (see `heads_are_the_files_first_bytes`).
        async fn run(&self, exec: &WasmExecutor) -> RunOutcome {
            match self.run_with_heads(exec).await {
                RunOutcome::Exited {
                    code,
                    output_truncated,
                    ..
                } => RunOutcome::Exited {
                    code,
                    output_truncated,
                    heads: None,
                },
                other => other,
            }
        }

        async fn run_with_heads(&self, exec: &WasmExecutor) -> RunOutcome {
            exec.run(self.ctx.clone(), CancellationToken::new())
                .await
                .unwrap()
        }
    }

    fn exited(code: i32) -> RunOutcome {
        RunOutcome::Exited {
            code,
            output_truncated: false,
            heads: None,
        }
    }

    /// The heads an outcome carries are the first bytes of the stream files, cut at the cap like the files
    /// and at [`STREAM_HEAD_BYTES`](crate::executor::STREAM_HEAD_BYTES) when the stream is longer.
    #[tokio::test]
    async fn heads_are_the_files_first_bytes() {
        // 300 × "0123456789" on stdout, "oops" on stderr.
        const LONG: &str = r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "\10\00\00\00\0a\00\00\00")
          (data (i32.const 32) "\40\00\00\00\04\00\00\00")
          (data (i32.const 16) "0123456789")
          (data (i32.const 64) "oops")
          (func (export "_start") (local $i i32)
            (drop (call $w (i32.const 2) (i32.const 32) (i32.const 1) (i32.const 8)))
            (loop $again
              (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const 300))))))"#;
        let heads = |outcome: RunOutcome| match outcome {
            RunOutcome::Exited { heads: Some(h), .. } => *h,
            other => panic!("expected an exit with heads, got {other:?}"),
        };
        let job = Job::new(LONG, &[]);
        let h = heads(job.run_with_heads(&executor(1)).await);
        let stdout = std::fs::read(&job.ctx.stdout_path).unwrap();
        assert_eq!(stdout.len(), 3000);
        assert_eq!(h.stdout, stdout[..crate::executor::STREAM_HEAD_BYTES]);
        assert_eq!(h.stderr, b"oops");

        let mut job = Job::new(CHATTY, &[]);
        job.ctx.limits.max_output_bytes = 25;
        let h = heads(job.run_with_heads(&executor(1)).await);
        assert_eq!(h.stdout, b"0123456789012345678901234");
        assert_eq!(h.stdout, std::fs::read(&job.ctx.stdout_path).unwrap());
    }

    fn invalid_program(outcome: &RunOutcome) -> &str {
        match outcome {
            RunOutcome::Failed(FailureReason::InvalidProgram(m)) => m,
            other => panic!("expected InvalidProgram, got {other:?}"),
        }
    }

    fn setup_failure(outcome: &RunOutcome) -> &str {
        match outcome {
            RunOutcome::Failed(FailureReason::Setup(m)) => m,
            other => panic!("expected Setup, got {other:?}"),
        }
    }

    /// The second run of a module reuses its compilation (see `compiled.rs`) but nothing of the first run's
    /// instance: globals and memory start as the module declares them.
    #[tokio::test]
    async fn a_module_run_again_starts_from_its_declared_state() {
        const COUNTER: &str = r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (global $runs (mut i32) (i32.const 0))
          (func (export "_start")
            (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
            (i32.store8 (i32.const 0) (i32.add (i32.load8_u (i32.const 0)) (i32.const 1)))
            (call $exit (i32.add (global.get $runs) (i32.mul (i32.load8_u (i32.const 0)) (i32.const 10))))))"#;
        let exec = executor(1);
        for run in 0..3 {
            let job = Job::new(COUNTER, &[]);
            assert_eq!(job.run(&exec).await, exited(11), "run {run}");
        }
    }

    #[tokio::test]
    async fn hello_sees_args_and_sorted_env_and_returning_is_exit_0() {
        let exec = executor(1);
        let mut job = Job::new(HELLO, &["one", "two words"]);
        job.ctx.env.insert("ZED".into(), "last".into());
        job.ctx.env.insert("ALPHA".into(), "first".into());
        assert_eq!(job.run(&exec).await, exited(0));
        let out = job.stdout();
        println!("{}", out.replace('\0', "␀"));
        assert_eq!(
            out, "hello\n\0one\0two words\0ALPHA=first\0ZED=last\0",
            "argv is [\"\", Parameters…] and env is sorted"
        );
    }

    #[tokio::test]
    async fn every_preview_1_function_links_and_answers_as_wasi_common_did() {
        assert_eq!(Job::new(ALL_WASI, &[]).run(&executor(1)).await, exited(0));
    }

    /// A real wasi-libc program (Rust std, `testdata/rustguest.rs`, built with
    /// `cargo build --release --target wasm32-wasip1`): files, directories, seek, append,
    /// rename, a 300-entry listing, links, sleep, clocks, env and an escape attempt.
    #[tokio::test]
    async fn a_rust_std_program_sees_the_mounts_as_on_bacalhau() {
        let mut job = Job::new(EXIT3, &["one", "two"]);
        let entry = job.dir.path().join("files/main.wasm");
        std::fs::write(entry, include_bytes!("testdata/rustguest.wasm")).unwrap();
        job.ctx.env.insert("GREETING".into(), "hi".into());
        job.input_dir("/inputs", &[("x.csv", "a,b\n")], true);
        let out = job.output("outputs", "/outputs");
        std::fs::write(job.dir.path().join("secret"), "host").unwrap();
        std::os::unix::fs::symlink("g.txt", out.join("link")).unwrap();
        std::os::unix::fs::symlink(job.dir.path().join("secret"), out.join("abs")).unwrap();
        let outcome = job.run(&executor(1)).await;
        let stdout = job.stdout();
        let stderr = std::fs::read_to_string(&job.ctx.stderr_path).unwrap();
        assert_eq!(outcome, exited(7), "stderr: {stderr}");
        let want = [
            r#"args=["one", "two"]"#,
            r#"root=["inputs", "main.wasm", "outputs"]"#,
            r#"input="a,b\n""#,
            "len=4 file=true",
            "ro=Some(69)",
            r#"seek-read="world""#,
            r#"after="hello world!""#,
            "listed=300",
            r#"via-link="hello world!""#,
            r#"readlink="g.txt""#,
            "abs-link=Err(Some(63))",
            "slept>=20ms=true",
            "realtime-sane=true",
            r#"env=Ok("hi")"#,
            "escape=Err(NotFound)",
        ];
        assert_eq!(stdout.lines().collect::<Vec<_>>(), want, "stderr: {stderr}");
        assert_eq!(
            std::fs::read_to_string(out.join("g.txt")).unwrap(),
            "hello world!"
        );
    }

    #[tokio::test]
    async fn exit_codes_from_126_on_are_a_trap_as_in_wasi_common() {
        let wat = |code: u32| {
            format!(
                r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                   (memory (export "memory") 1)
                   (func (export "_start") (call $exit (i32.const {code}))))"#
            )
        };
        let exec = executor(1);
        assert_eq!(Job::new(&wat(125), &[]).run(&exec).await, exited(125));
        assert_eq!(Job::new(&wat(126), &[]).run(&exec).await, exited(1));
    }

    #[tokio::test]
    async fn proc_exit_sets_the_exit_code() {
        assert_eq!(Job::new(EXIT3, &[]).run(&executor(1)).await, exited(3));
    }

    #[tokio::test]
    async fn a_trap_exits_with_code_1() {
        assert_eq!(Job::new(TRAP, &[]).run(&executor(1)).await, exited(1));
    }

    #[tokio::test]
    async fn reads_an_input_by_absolute_and_relative_path() {
        let exec = executor(1);
        for path in [
            "/inputs/x.csv",
            "inputs/x.csv",
            "./inputs/x.csv",
            "inputs/../inputs/x.csv",
        ] {
            let mut job = Job::new(FSPROBE, &["c", path]);
            job.input_dir("/inputs", &[("x.csv", "a,b\n1,2\n")], true);
            assert_eq!(job.run(&exec).await, exited(0), "{path}");
            assert_eq!(job.stdout(), "a,b\n1,2\n", "{path}");
        }
        let mut job = Job::new(FSPROBE, &["c", "/inputs/nope.csv"]);
        job.input_dir("/inputs", &[("x.csv", "")], true);
        assert_eq!(job.run(&exec).await, exited(ENOENT));
    }

    #[tokio::test]
    async fn the_mount_table_is_the_one_preopen_and_lists_the_mounts() {
        let exec = executor(1);
        let mut job = Job::new(FSPROBE, &["p", "/"]);
        assert_eq!(job.run(&exec).await, exited(0));
        assert_eq!(
            job.stdout(),
            "/\n",
            "wasi-libc resolves both /x and x against it"
        );

        job.ctx.engine = EngineSpec::Wasm(WasmParams {
            entry_module: "/main.wasm".into(),
            parameters: vec!["l".into(), "/".into()],
            ..WasmParams::default()
        });
        job.input_dir("/inputs", &[], true);
        job.input_dir("/data/nested", &[], true);
        job.output("outputs", "/outputs");
        assert_eq!(job.run(&exec).await, exited(0));
        assert_eq!(job.stdout(), ".\n..\ndata\ninputs\nmain.wasm\noutputs\n");

        job.params().parameters = vec!["l".into(), "data".into()];
        assert_eq!(job.run(&exec).await, exited(0));
        assert_eq!(job.stdout(), ".\n..\nnested\n");
    }

    #[tokio::test]
    async fn a_file_input_is_that_file_alone_and_read_only() {
        let exec = executor(1);
        let mut job = Job::new(FSPROBE, &["c", "/data.txt"]);
        let host = job.module("/data.txt", b"just this");
        std::fs::write(host.with_file_name("sibling.txt"), "hidden").unwrap();
        assert_eq!(job.run(&exec).await, exited(0));
        assert_eq!(job.stdout(), "just this");

        job.params().parameters = vec!["c".into(), "/sibling.txt".into()];
        assert_eq!(job.run(&exec).await, exited(ENOENT));

        job.params().parameters = vec!["w".into(), "/data.txt".into(), "changed".into()];
        assert_eq!(job.run(&exec).await, exited(EROFS));
        assert_eq!(std::fs::read_to_string(&host).unwrap(), "just this");
    }

    #[tokio::test]
    async fn writes_to_an_output_land_in_its_host_dir() {
        let exec = executor(1);
        // Mounted at /<Name>, not at its Path, as on Bacalhau.
        let mut job = Job::new(FSPROBE, &["w", "/outputs/y.txt", "result"]);
        let host = job.output("outputs", "/somewhere/else");
        assert_eq!(job.run(&exec).await, exited(0));
        assert_eq!(
            std::fs::read_to_string(host.join("y.txt")).unwrap(),
            "result"
        );

        job.params().parameters = vec!["m".into(), "outputs/sub".into()];
        assert_eq!(job.run(&exec).await, exited(0));
        assert!(host.join("sub").is_dir());

        job.params().parameters = vec!["w".into(), "/somewhere/else/z.txt".into(), "x".into()];
        assert_eq!(job.run(&exec).await, exited(ENOENT));
    }

    #[tokio::test]
    async fn inputs_are_read_only() {
        let exec = executor(1);
        let attempts: [&[&str]; 6] = [
            &["w", "/inputs/x.csv", "overwritten"],
            &["w", "/inputs/new.txt", "created"],
            &["a", "/inputs/x.csv"],
            &["m", "/inputs/dir"],
            &["u", "/inputs/x.csv"],
            &["w", "/new-top-level.txt", "created"],
        ];
        for args in attempts {
            let mut job = Job::new(FSPROBE, args);
            let host = job.input_dir("/inputs", &[("x.csv", "original")], true);
            assert_eq!(job.run(&exec).await, exited(EROFS), "{args:?}");
            assert_eq!(
                std::fs::read_to_string(host.join("x.csv")).unwrap(),
                "original"
            );
            let names: Vec<_> = std::fs::read_dir(&host).unwrap().collect();
            assert_eq!(names.len(), 1, "{args:?} left {names:?}");
        }
    }

    #[tokio::test]
    async fn a_read_write_input_accepts_writes() {
        let mut job = Job::new(FSPROBE, &["w", "/shared/x.csv", "changed"]);
        let host = job.input_dir("/shared", &[("x.csv", "original")], false);
        assert_eq!(job.run(&executor(1)).await, exited(0));
        assert_eq!(
            std::fs::read_to_string(host.join("x.csv")).unwrap(),
            "changed"
        );
    }

    #[tokio::test]
    async fn an_endless_loop_times_out_promptly() {
        let mut job = Job::new(SPIN, &[]);
        let limit = Duration::from_millis(200);
        job.ctx.limits.timeout = Some(limit);
        let started = Instant::now();
        let outcome = job.run(&executor(1)).await;
        let elapsed = started.elapsed();
        println!("200 ms deadline: run() returned after {elapsed:?}");
        assert_eq!(outcome, RunOutcome::Failed(FailureReason::Timeout(limit)));
        assert!(elapsed >= limit);
        // Generous: this shares two cores with other builds. Release runs stop within ~1 ms.
        assert!(elapsed < limit + Duration::from_millis(300), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_sleeping_guest_times_out() {
        let mut job = Job::new(SLEEP, &[]);
        let limit = Duration::from_millis(200);
        job.ctx.limits.timeout = Some(limit);
        let started = Instant::now();
        let outcome = job.run(&executor(1)).await;
        println!("sleeping guest, 200 ms deadline: {:?}", started.elapsed());
        assert_eq!(outcome, RunOutcome::Failed(FailureReason::Timeout(limit)));
        assert!(started.elapsed() < limit + Duration::from_millis(300));
    }

    /// A FIFO as stdout tells the test that the guest runs: it writes before spinning, and the
    /// read returns only then.
    fn start_signal(job: &mut Job) -> tokio::task::JoinHandle<std::fs::File> {
        use std::io::Read;
        let fifo = job.dir.path().join("stdout.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        job.ctx.stdout_path = fifo.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut first = [0u8; 9];
            f.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"spinning\n");
            f
        })
    }

    #[tokio::test]
    async fn cancel_stops_a_spinning_guest() {
        let exec = executor(1);
        let mut job = Job::new(SPIN, &[]);
        let running = start_signal(&mut job);
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let (ctx, cancel) = (job.ctx.clone(), cancel.clone());
            async move { exec.run(ctx, cancel).await }
        });
        let _reader = running.await.unwrap();
        let cancelled_at = Instant::now();
        cancel.cancel();
        let outcome = run.await.unwrap().unwrap();
        println!("cancel to outcome: {:?}", cancelled_at.elapsed());
        assert_eq!(outcome, RunOutcome::Failed(FailureReason::Cancelled));
    }

    #[tokio::test]
    async fn dropping_the_run_future_stops_the_guest() {
        let exec = Arc::new(executor(1));
        let mut job = Job::new(SPIN, &[]);
        let running = start_signal(&mut job);
        let run = tokio::spawn({
            let (exec, ctx) = (Arc::clone(&exec), job.ctx.clone());
            async move { exec.run(ctx, CancellationToken::new()).await }
        });
        let _reader = running.await.unwrap();
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        // The only worker takes the next run only once the spinning guest has stopped.
        let next = Job::new(EXIT3, &[]);
        let outcome = tokio::time::timeout(Duration::from_secs(30), next.run(&exec)).await;
        assert_eq!(outcome.expect("the worker is still busy"), exited(3));
    }

    #[tokio::test]
    async fn a_memory_bomb_is_out_of_memory() {
        let mut job = Job::new(MEMBOMB, &[]);
        job.ctx.limits.memory_bytes = Some(2 << 20);
        assert_eq!(
            job.run(&executor(1)).await,
            RunOutcome::Failed(FailureReason::OutOfMemory { limit: 2 << 20 })
        );
    }

    #[tokio::test]
    async fn initial_memory_over_the_limit_is_out_of_memory() {
        let mut job = Job::new("(module (memory 100) (func (export \"_start\")))", &[]);
        job.ctx.limits.memory_bytes = Some(1_000_000); // rounds up to 16 pages
        assert_eq!(
            job.run(&executor(1)).await,
            RunOutcome::Failed(FailureReason::OutOfMemory { limit: 1_000_000 })
        );
    }

    #[tokio::test]
    async fn memory_within_the_limit_is_fine_and_over_4_gib_is_refused() {
        let exec = executor(1);
        let mut job = Job::new("(module (memory 16) (func (export \"_start\")))", &[]);
        job.ctx.limits.memory_bytes = Some(1_000_000);
        assert_eq!(job.run(&exec).await, exited(0));
        job.ctx.limits.memory_bytes = Some((4 << 30) + 1);
        assert!(setup_failure(&job.run(&exec).await).contains("4 GiB"));
    }

    #[tokio::test]
    async fn garbage_is_an_invalid_program_naming_the_module() {
        let mut job = Job::new(EXIT3, &[]);
        job.ctx.inputs.clear();
        job.module("/main.wasm", b"#!/bin/sh\necho not wasm\n");
        let outcome = job.run(&executor(1)).await;
        let message = invalid_program(&outcome);
        println!("{message}");
        assert!(message.contains("entry module /main.wasm is not a WebAssembly module"));
    }

    #[tokio::test]
    async fn a_missing_entry_point_is_an_invalid_program() {
        let mut job = Job::new(EXIT3, &[]);
        job.params().entrypoint = "main".into();
        let outcome = job.run(&executor(1)).await;
        assert!(invalid_program(&outcome).contains("exports no function named \"main\""));
    }

    #[tokio::test]
    async fn an_entry_module_nobody_mounted_is_a_setup_failure() {
        let mut job = Job::new(EXIT3, &[]);
        job.params().entry_module = "/app/main.wasm".into();
        let outcome = job.run(&executor(1)).await;
        assert!(setup_failure(&outcome).contains("no input is mounted at /app/main.wasm"));
    }

    #[tokio::test]
    async fn a_directory_entry_module_is_its_single_wasm_file() {
        let exec = executor(1);
        let mut job = Job::new(EXIT3, &[]);
        job.ctx.inputs.clear();
        let app = job.input_dir("/app", &[("README", "docs")], true);
        std::fs::write(app.join("prog.wasm"), wat::parse_str(EXIT3).unwrap()).unwrap();
        job.params().entry_module = "/app".into();
        assert_eq!(job.run(&exec).await, exited(3));

        std::fs::write(app.join("other.wasm"), wat::parse_str(TRAP).unwrap()).unwrap();
        let outcome = job.run(&exec).await;
        assert!(invalid_program(&outcome).contains("(other.wasm, prog.wasm)"));
    }

    #[tokio::test]
    async fn an_output_named_like_an_input_is_a_setup_failure() {
        let mut job = Job::new(EXIT3, &[]);
        job.input_dir("/data", &[], true);
        job.output("data", "/data");
        let outcome = job.run(&executor(1)).await;
        assert!(setup_failure(&outcome).contains("/data is mounted twice"));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_and_flagged() {
        let mut job = Job::new(CHATTY, &[]);
        job.ctx.limits.max_output_bytes = 25;
        assert_eq!(
            job.run(&executor(1)).await,
            RunOutcome::Exited {
                code: 0,
                output_truncated: true,
                heads: None,
            }
        );
        assert_eq!(job.stdout(), "0123456789012345678901234");
    }

    #[tokio::test]
    async fn import_modules_resolve_as_paths_in_the_mount_table() {
        let exec = executor(1);
        let lib = wat::parse_str(LIB).unwrap();
        // Listed in ImportModules, and found by path alone.
        for listed in [vec!["/lib.wasm".to_string()], Vec::new()] {
            let mut job = Job::new(USES_LIB, &[]);
            job.module("/lib.wasm", &lib);
            job.params().import_modules = listed.clone();
            assert_eq!(job.run(&exec).await, exited(42), "{listed:?}");
        }
        let job = Job::new(USES_LIB, &[]);
        let outcome = job.run(&exec).await;
        let message = invalid_program(&outcome);
        println!("{message}");
        assert_eq!(
            message,
            "entry module /main.wasm imports \"lib.wasm\": no input is mounted at /lib.wasm"
        );
    }

    #[tokio::test]
    async fn an_import_cycle_is_an_invalid_program() {
        let main = r#"(module (import "b.wasm" "f" (func)) (func (export "_start")))"#;
        let b = r#"(module (import "main.wasm" "_start" (func)) (func (export "f")))"#;
        let mut job = Job::new(main, &[]);
        job.module("/b.wasm", &wat::parse_str(b).unwrap());
        let outcome = job.run(&executor(1)).await;
        let message = invalid_program(&outcome);
        assert!(
            message.ends_with("(cycle: /main.wasm -> /b.wasm -> /main.wasm)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn two_slots_run_two_jobs_at_once() {
        let exec = executor(2);
        // The first job sleeps until cancelled; it is queued first, so it holds a worker.
        let cancel = CancellationToken::new();
        let sleeper_job = Job::new(SLEEP, &[]);
        let mut sleeper = Box::pin(exec.run(sleeper_job.ctx.clone(), cancel.clone()));
        assert!(futures::poll!(sleeper.as_mut()).is_pending());
        // With one slot this would wait for the sleeper, i.e. forever.
        let second = Job::new(EXIT3, &[]);
        let outcome = tokio::time::timeout(Duration::from_secs(30), second.run(&exec)).await;
        assert_eq!(outcome.expect("the second job did not run"), exited(3));
        cancel.cancel();
        assert_eq!(
            sleeper.await.unwrap(),
            RunOutcome::Failed(FailureReason::Cancelled)
        );
    }

    #[tokio::test]
    async fn hello_latency() {
        let exec = executor(1);
        let job = Job::new(HELLO, &["a"]);
        let runs = 200;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            assert_eq!(job.run(&exec).await, exited(0));
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "hello world through run(): median {:?}, p10 {:?}, p90 {:?} ({runs} runs, {} build)",
            times[runs / 2],
            times[runs / 10],
            times[runs * 9 / 10],
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        );
    }

    fn task(yaml_engine: serde_json::Value, network: NetworkType) -> Task {
        let engine: SpecConfig = serde_json::from_value(yaml_engine).unwrap();
        Task {
            engine,
            network: NetworkConfig {
                kind: network,
                domains: Vec::new(),
            },
            ..Task::default()
        }
    }

    #[test]
    fn validate_accepts_wasm_with_an_entry_module_and_no_network() {
        let exec = executor(1);
        let wasm = serde_json::json!({"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}});
        for network in [NetworkType::Default, NetworkType::None] {
            exec.validate(&task(wasm.clone(), network)).unwrap();
        }
        let err = exec
            .validate(&task(wasm, NetworkType::Host))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wasm jobs cannot use network type Host on this node"),
            "{err}"
        );

        let no_entry = serde_json::json!({"Type": "wasm", "Params": {}});
        let err = exec
            .validate(&task(no_entry, NetworkType::None))
            .unwrap_err();
        assert!(err.to_string().contains("EntryModule"), "{err}");

        let docker = serde_json::json!({"Type": "docker", "Params": {"Image": "x"}});
        let err = exec.validate(&task(docker, NetworkType::None)).unwrap_err();
        assert!(err.to_string().contains("not wasm"), "{err}");
    }

    #[test]
    fn validate_declines_gpu_tasks() {
        let exec = executor(1);
        let wasm = serde_json::json!({"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}});
        let mut t = task(wasm, NetworkType::None);
        t.resources.gpu = "1".to_owned();
        let err = exec.validate(&t).unwrap_err().to_string();
        assert!(
            err.contains("the wasm engine cannot use GPUs (the task asks for 1)"),
            "{err}"
        );
        t.resources.gpu = "0".to_owned();
        exec.validate(&t).unwrap();
    }
}
