//! The `cod-wasm-N` worker threads, and one run from its context to its outcome.
//!
//! Each worker owns a WASI-ready `Linker` (cloned per run, cheaper than defining the 46 WASI
//! functions again) and shares the executor's `Engine`. Everything of a run (store, instances,
//! open files) lives and dies on the worker's stack, so nothing of it reaches the async side.
//!
//! The guest runs in fuel slices through wasmi's resumable calls: between slices the worker looks
//! at the run's [`Interrupt`] and deadline, so a spinning guest stops within one slice of either.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wasmi::errors::ErrorKind;
use wasmi::{Engine, Func, Linker, ResourceLimiter, ResumableCall, Store, StoreLimits};
use wasmi_core::LimiterError;

use super::compiled::CompiledModules;
use super::fs::MountTable;
use super::interrupt::{Interrupt, Sleeper};
use super::link::{LoadError, Loader, Role};
use super::queue::Queue;
use super::stdio::{CappedOutput, Tap};
use super::wasi::{self, WasiCtx};
use crate::executor::{FailureReason, RunContext, RunOutcome};
use crate::model::{EngineSpec, WasmParams};

/// A start function may run this many fuel slices; it cannot be resumed, so the deadline is not
/// checked while it runs. WASI programs have no start function; this only bounds odd modules.
const START_SLICES: u64 = 1_000;

/// A wasm page, the unit of memory limits.
const PAGE: u64 = 64 * 1024;

/// wasm32 addresses at most this many pages (4 GiB).
const MAX_PAGES: u64 = 65_536;

/// One run, as sent to a worker.
pub(super) struct Job {
    /// What to run.
    pub(super) ctx: RunContext,
    /// Set by `run()` on cancellation or when its future is dropped.
    pub(super) interrupt: Arc<Interrupt>,
    /// Where the outcome goes; `run()` may have stopped listening.
    pub(super) reply: oneshot::Sender<RunOutcome>,
    /// The caller's span, entered on the worker so the run's logs carry the execution's fields.
    pub(super) span: tracing::Span,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("execution_id", &self.ctx.execution_id)
            .finish_non_exhaustive()
    }
}

/// The data of a run's store.
pub(super) struct Host {
    /// The WASI state: args, env, stdio, the mount table preopened at `/`.
    pub(super) wasi: WasiCtx,
    /// The memory limit, which also records whether it refused anything.
    pub(super) memory: MemoryCap,
}

/// The run's memory limit, as a wasmi resource limiter.
pub(super) struct MemoryCap {
    /// Bytes any one linear memory may reach; `None` for no limit.
    limit: Option<usize>,
    /// Whether a growth past `limit` was refused: an ending trap or non-zero exit is then
    /// reported as out of memory.
    denied: bool,
    /// wasmi's defaults for everything but memory (tables, instance counts).
    others: StoreLimits,
}

// === impl MemoryCap ===

impl MemoryCap {
    fn new(limit: Option<usize>) -> Self {
        MemoryCap {
            limit,
            denied: false,
            others: StoreLimits::default(),
        }
    }

    /// Whether a growth past the limit was refused.
    pub(super) fn denied(&self) -> bool {
        self.denied
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if self.limit.is_some_and(|limit| desired > limit) {
            // Refuse, not trap: `memory.grow` returns -1 and malloc can fail cleanly, as on wazero.
            self.denied = true;
            return Ok(false);
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        self.others.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

/// How a call into the guest ended.
#[derive(Debug)]
pub(super) enum CallEnd {
    /// The function returned.
    Returned,
    /// `proc_exit` with this status.
    Exit(i32),
    /// A trap or a failed host call.
    Trap(wasmi::Error),
    /// The run's deadline passed.
    Timeout,
    /// The run was interrupted.
    Cancelled,
}

/// Calls guest functions in fuel slices, stopping at the run's deadline or interrupt.
pub(super) struct Slicer<'a> {
    /// The run's stop signal.
    interrupt: &'a Interrupt,
    /// When the run times out, if it has a timeout.
    deadline: Option<Instant>,
    /// Fuel per slice.
    fuel_slice: u64,
}

// === impl Slicer ===

impl Slicer<'_> {
    /// Fuel for instantiation, which runs a module's start function in one go.
    pub(super) fn start_fuel(&self) -> u64 {
        self.fuel_slice.saturating_mul(START_SLICES)
    }

    /// Why the run must stop now, if it must.
    fn stop(&self) -> Option<CallEnd> {
        if self.interrupt.is_set() {
            Some(CallEnd::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(CallEnd::Timeout)
        } else {
            None
        }
    }

    /// Sorts an error out of the guest. An exit status wins (the guest did exit); otherwise a
    /// pending stop explains the error (the WASI scheduler traps when a sleep is interrupted).
    pub(super) fn classify(&self, error: wasmi::Error) -> CallEnd {
        if let Some(code) = error.i32_exit_status() {
            return CallEnd::Exit(code);
        }
        self.stop().unwrap_or(CallEnd::Trap(error))
    }

    /// Calls `func`, which takes and returns nothing, to its end.
    pub(super) fn call(&self, store: &mut Store<Host>, func: Func) -> CallEnd {
        if let Some(stop) = self.stop() {
            return stop;
        }
        if let Err(e) = store.set_fuel(self.fuel_slice) {
            return CallEnd::Trap(e);
        }
        let mut state = func.call_resumable(&mut *store, &[], &mut []);
        loop {
            match state {
                Ok(ResumableCall::Finished) => return CallEnd::Returned,
                Ok(ResumableCall::OutOfFuel(call)) => {
                    if let Some(stop) = self.stop() {
                        return stop;
                    }
                    // One instruction may cost more than a slice (bulk memory ops cost per byte).
                    if let Err(e) = store.set_fuel(self.fuel_slice.max(call.required_fuel())) {
                        return CallEnd::Trap(e);
                    }
                    state = call.resume(&mut *store, &mut []);
                }
                Ok(ResumableCall::HostTrap(call)) => return self.classify(call.into_host_error()),
                Err(e) => return self.classify(e),
            }
        }
    }
}

/// What every worker thread of one executor shares.
pub(super) struct Shared {
    /// Compiled modules belong to it.
    pub(super) engine: Engine,
    /// Modules compiled for earlier runs.
    pub(super) compiled: Arc<CompiledModules>,
}

/// Starts worker thread `cod-wasm-<index>`, which serves `jobs` until the executor is dropped.
pub(super) fn spawn(
    index: usize,
    Shared { engine, compiled }: Shared,
    fuel_slice: u64,
    jobs: Arc<Queue<Job>>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("cod-wasm-{index}"))
        .spawn(move || {
            let mut linker = Linker::new(&engine);
            if let Err(e) = wasi::add_to_linker(&mut linker) {
                tracing::error!(worker = index, error = %e, "wasm worker cannot define WASI, stopping");
                return;
            }
            let worker = Worker {
                engine,
                compiled,
                linker,
                fuel_slice,
            };
            worker.serve(&jobs);
        })?;
    Ok(())
}

/// One worker thread's state.
struct Worker {
    /// Shared by all workers; compiled modules belong to it.
    engine: Engine,
    /// Shared by all workers.
    compiled: Arc<CompiledModules>,
    /// WASI only; each run clones it and adds its own modules.
    linker: Linker<Host>,
    /// Fuel per slice.
    fuel_slice: u64,
}

// === impl Worker ===

impl Worker {
    fn serve(&self, jobs: &Queue<Job>) {
        // `None`: the executor is gone and nothing is left to run.
        while let Some(job) = jobs.pop() {
            let outcome = job.span.in_scope(|| {
                let started = Instant::now();
                let outcome = self.run(&job.ctx, &job.interrupt);
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros(),
                    ?outcome,
                    "wasm run ended"
                );
                outcome
            });
            // The caller may have stopped waiting (its future was dropped); nobody to tell then.
            let _ = job.reply.send(outcome);
        }
    }

    fn run(&self, ctx: &RunContext, interrupt: &Arc<Interrupt>) -> RunOutcome {
        if interrupt.is_set() {
            return RunOutcome::Failed(FailureReason::Cancelled);
        }
        let EngineSpec::Wasm(params) = &ctx.engine else {
            return RunOutcome::Failed(FailureReason::InvalidProgram(format!(
                "the wasm executor was given a {} task",
                ctx.engine.kind().map_or("unknown engine", |k| k.as_str())
            )));
        };
        let deadline = ctx
            .limits
            .timeout
            .and_then(|t| Instant::now().checked_add(t));
        let setup = |m: String| RunOutcome::Failed(FailureReason::Setup(m));
        let memory_limit = match memory_limit(ctx.limits.memory_bytes) {
            Ok(limit) => limit,
            Err(m) => return setup(m),
        };
        let mounts = match MountTable::new(&ctx.inputs, &ctx.outputs) {
            Ok(mounts) => Arc::new(mounts),
            Err(e) => return setup(crate::errors::chain(&e)),
        };
        let stdout_tap = Arc::new(Tap::default());
        let stderr_tap = Arc::new(Tap::default());
        let cap = ctx.limits.max_output_bytes;
        let stdout = match CappedOutput::create(&ctx.stdout_path, cap, Arc::clone(&stdout_tap)) {
            Ok(f) => f,
            Err(e) => return setup(format!("cannot create {}: {e}", ctx.stdout_path.display())),
        };
        let stderr = match CappedOutput::create(&ctx.stderr_path, cap, Arc::clone(&stderr_tap)) {
            Ok(f) => f,
            Err(e) => return setup(format!("cannot create {}: {e}", ctx.stderr_path.display())),
        };
        let sleeper = Sleeper {
            interrupt: Arc::clone(interrupt),
            deadline,
        };
        let args: Vec<String> = std::iter::once(String::new())
            .chain(params.parameters.iter().cloned())
            .collect();
        // `ctx.env` is a BTreeMap, so already sorted, as Bacalhau sorts it.
        let wasi = match WasiCtx::new(
            &args,
            &ctx.env,
            stdout,
            stderr,
            Arc::clone(&mounts),
            sleeper,
        ) {
            Ok(wasi) => wasi,
            Err(e) => return setup(e.to_string()),
        };
        let mut store = Store::new(
            &self.engine,
            Host {
                wasi,
                memory: MemoryCap::new(memory_limit),
            },
        );
        store.limiter(|host| &mut host.memory);
        let slicer = Slicer {
            interrupt,
            deadline,
            fuel_slice: self.fuel_slice,
        };

        let end = match self.load_and_call(&mut store, &mounts, &slicer, params) {
            Ok(end) | Err(LoadError::Ended(end)) => end,
            Err(LoadError::Setup(m)) => return setup(m),
            Err(LoadError::Invalid(m)) => {
                return RunOutcome::Failed(FailureReason::InvalidProgram(m));
            }
        };
        let output_truncated = stdout_tap.cut() || stderr_tap.cut();
        // Writes are unbuffered: once the call ended, the heads are complete.
        let heads = || {
            Some(Box::new(crate::executor::StreamHeads {
                stdout: stdout_tap.take_head(),
                stderr: stderr_tap.take_head(),
            }))
        };
        let out_of_memory = store.data().memory.denied().then(|| {
            RunOutcome::Failed(FailureReason::OutOfMemory {
                limit: ctx.limits.memory_bytes.unwrap_or_default(),
            })
        });
        match end {
            CallEnd::Returned => RunOutcome::Exited {
                code: 0,
                output_truncated,
                heads: heads(),
            },
            CallEnd::Exit(code) => match out_of_memory {
                Some(oom) if code != 0 => oom,
                _ => RunOutcome::Exited {
                    code,
                    output_truncated,
                    heads: heads(),
                },
            },
            CallEnd::Trap(e) if is_program_error(&e) => RunOutcome::Failed(
                FailureReason::InvalidProgram(format!("entry module {}: {e}", params.entry_module)),
            ),
            CallEnd::Trap(e) => {
                tracing::info!(error = %e, "wasm guest trapped");
                out_of_memory.unwrap_or_else(|| RunOutcome::Exited {
                    code: 1,
                    output_truncated,
                    heads: heads(),
                })
            }
            CallEnd::Timeout => RunOutcome::Failed(FailureReason::Timeout(
                ctx.limits.timeout.unwrap_or(Duration::ZERO),
            )),
            CallEnd::Cancelled => RunOutcome::Failed(FailureReason::Cancelled),
        }
    }

    /// Loads `ImportModules`, then the entry module, and calls the entry point.
    fn load_and_call(
        &self,
        store: &mut Store<Host>,
        mounts: &MountTable,
        slicer: &Slicer<'_>,
        params: &WasmParams,
    ) -> Result<CallEnd, LoadError> {
        let mut loader = Loader::new(
            &self.engine,
            &self.compiled,
            mounts,
            self.linker.clone(),
            slicer,
        );
        for path in &params.import_modules {
            loader.load(store, path, Role::Listed, None)?;
        }
        let entry = params.entrypoint();
        let path = &params.entry_module;
        let instance = loader.load(store, path, Role::Entry, Some(entry))?;
        let func = instance.get_func(&*store, entry).ok_or_else(|| {
            LoadError::Invalid(format!(
                "entry module {path} exports no function named {entry:?}"
            ))
        })?;
        let ty = func.ty(&*store);
        if !ty.params().is_empty() || !ty.results().is_empty() {
            return Err(LoadError::Invalid(format!(
                "entry function {entry:?} of {path} must take no parameters and return nothing \
                 (it takes {:?} and returns {:?})",
                ty.params(),
                ty.results()
            )));
        }
        Ok(slicer.call(store, func))
    }
}

/// The per-memory byte limit: `Resources.Memory` rounded up to whole wasm pages, as on Bacalhau.
fn memory_limit(bytes: Option<u64>) -> Result<Option<usize>, String> {
    // 0 means "not set" in Bacalhau's resources, never "no memory".
    let Some(bytes) = bytes.filter(|b| *b > 0) else {
        return Ok(None);
    };
    let pages = bytes.div_ceil(PAGE);
    if pages > MAX_PAGES {
        return Err(format!(
            "memory limit of {bytes} bytes is more than the 4 GiB a wasm32 module can address"
        ));
    }
    usize::try_from(pages * PAGE).map(Some).map_err(|_| {
        format!("memory limit of {bytes} bytes does not fit this node's address space")
    })
}

/// Errors that say the module itself is unrunnable, even when they surface during a call
/// (lazy translation, a mistyped `_initialize`).
fn is_program_error(error: &wasmi::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Func(_)
            | ErrorKind::Wasm(_)
            | ErrorKind::Translation(_)
            | ErrorKind::ImplementationLimits(_)
            | ErrorKind::UserLimits(_)
            | ErrorKind::Ir(_)
    )
}
