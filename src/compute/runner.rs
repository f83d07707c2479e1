//! Applying the orchestrator's messages and running accepted executions.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::executor::{
    FailureReason, Limits, OutputDir, PreparedInput, Progress, RUN_OUTPUT_BYTES, RunContext,
    RunOutcome, STREAM_HEAD_BYTES,
};
use crate::gpu::Gpu;
use crate::model::{
    EngineSpec, Event, Execution, ExecutionId, ExecutionStateType, InputSource, InputSpec, NodeId,
    PublisherSpec, RunCommandResult, SpecConfig, Task,
};
use crate::publisher::PublishTarget;
use crate::storage::{ContentId, StorageSource};
use crate::store::{Reader, StoreError, WriteTxn};
use crate::transport::{Message, Request, Response, Sequenced};

use super::Compute;
use super::bidder::{decide, execution_resources};
use super::cache::result::{self as result_cache, ResultCache, ResultKey, ResultMeta};
use super::disk_guard::{Guard, Watched};
use super::secrets::{self, Scrubber};
use super::state::{LocalExecution, LocalState};

/// History topic of the result cache's events (reused, or why not).
const RESULT_CACHE_TOPIC: &str = "Result Cache";
/// History topic of the GPU allocation events.
const GPU_TOPIC: &str = "GPU";
/// Most bytes of each stream one `ReadOutput` answer carries (a follower asks again for the rest).
const OUTPUT_CHUNK: u64 = 64 * 1024;

/// What a transaction decided to do once committed.
#[derive(Debug, Default)]
struct AfterCommit {
    start: Vec<ExecutionId>,
    cancel: Vec<ExecutionId>,
    /// What ended executions held, to free once committed.
    release: Vec<(ExecutionId, crate::model::Resources)>,
    kick: Vec<NodeId>,
}

/// How long the compute node runs a freshly asked-for execution before acknowledging the request. A job that
/// ends within it is accepted, started and finished in one transaction and one report (three commits on the
/// job's critical path instead of five); a longer one is accepted first and finishes in the background. If
/// the node dies inside the window nothing was acknowledged, and the orchestrator asks again.
const SHORT_JOB: Duration = Duration::from_millis(20);

/// Work for the runner's execution task set.
pub(super) enum Work {
    /// Run an accepted execution (loaded from the store).
    Start(ExecutionId),
    /// Wait for an execution already running (forwarding its progress) and record its end.
    Finish(
        Box<LocalExecution>,
        tokio::task::JoinHandle<Ending>,
        Progress,
    ),
}

/// One execution of the short-job path while it runs.
struct ShortRun {
    /// The `AskForBid`'s sequence number.
    seq: u64,
    id: ExecutionId,
    /// What the store will hold (state Running); handed to the transaction once the run has ended.
    record: Option<LocalExecution>,
    /// Its reserved resources, freed when it ends.
    need: crate::model::Resources,
    cancel: CancellationToken,
    progress: Progress,
    handle: tokio::task::JoinHandle<Ending>,
    /// Set when it ended within the window.
    ending: Option<Ending>,
}

/// How an execution ended, for its report.
pub(super) enum Ending {
    Completed {
        published: SpecConfig,
        output: RunCommandResult,
    },
    Failed {
        state: ExecutionStateType,
        error: String,
    },
}

impl Ending {
    /// The `/metrics` counter of this outcome.
    fn counter(&self) -> &'static crate::metrics::Counter {
        let m = &crate::metrics::COMPUTE;
        match self {
            Ending::Completed { .. } => &m.executions_completed,
            Ending::Failed {
                state: ExecutionStateType::Cancelled,
                ..
            } => &m.executions_cancelled,
            Ending::Failed { .. } => &m.executions_failed,
        }
    }
}

impl Compute {
    pub(super) async fn handle_request(&self, peer: &NodeId, request: Request) -> Response {
        match request {
            Request::Deliver { messages } => self.deliver(peer, messages).await,
            Request::ReadOutput {
                execution_id,
                stdout_offset,
                stderr_offset,
            } => {
                self.read_output(&execution_id, stdout_offset, stderr_offset)
                    .await
            }
            _ => Response::Refused {
                reason: "compute nodes accept only Deliver and ReadOutput requests".to_owned(),
            },
        }
    }

    async fn deliver(&self, peer: &NodeId, mut messages: Vec<Sequenced>) -> Response {
        if !messages.is_empty()
            && messages.iter().all(|m| {
                matches!(
                    m.message,
                    Message::AskForBid {
                        accept_directly: true,
                        ..
                    }
                )
            })
        {
            match self.run_short(peer, messages).await {
                Ok(response) => return response,
                Err(not_eligible) => messages = not_eligible,
            }
        }
        let inner = self.inner.clone();
        let peer_id = peer.clone();
        let result = self
            .inner
            .store
            .write(move |txn| {
                let mut after = AfterCommit::default();
                let last =
                    inner
                        .outbox
                        .apply_inbound(txn, &peer_id, messages, |txn, message| {
                            apply(&inner, txn, &peer_id, message, &mut after)
                        })?;
                Ok((last, after))
            })
            .await;
        match result {
            Ok((last, after)) => {
                self.after_commit(after);
                Response::Ack {
                    last_applied_seq: last,
                }
            }
            Err(e) => {
                warn!(orchestrator = %peer, error = %e, "cannot apply orchestrator messages");
                Response::Refused {
                    reason: format!("compute node cannot apply messages now: {e}"),
                }
            }
        }
    }

    fn after_commit(&self, after: AfterCommit) {
        for (id, r) in &after.release {
            self.inner.capacity.release(id, r);
        }
        for peer in &after.kick {
            self.inner.outbox.kick(peer);
        }
        for id in after.cancel {
            if let Some(token) = self
                .inner
                .running
                .lock()
                .ok()
                .and_then(|r| r.get(&id).cloned())
            {
                token.cancel();
            }
        }
        for id in after.start {
            let _ = self.inner.start.send(Work::Start(id));
        }
    }

    /// Starts again every execution that was running when the node stopped. Those running and those waiting
    /// for their bid's answer hold their resources and GPUs again (the same GPUs as before).
    pub(super) async fn recover(&self) -> Result<(), StoreError> {
        let t = self.inner.tables;
        let pending: Vec<LocalExecution> = self
            .inner
            .store
            .read(move |txn| {
                Ok(txn
                    .all(t.executions)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .filter(|e| matches!(e.state, LocalState::Running | LocalState::Bid))
                    .collect())
            })
            .await?;
        for e in pending {
            self.inner.capacity.force_reserve(
                &e.execution.id,
                &execution_resources(&e.execution, &self.inner.config.job_defaults),
                &e.gpus,
            );
            if e.state == LocalState::Running {
                info!(execution_id = %e.execution.id, "resuming an execution accepted before the restart");
                let _ = self.inner.start.send(Work::Start(e.execution.id.clone()));
            }
        }
        Ok(())
    }

    /// Does one piece of runner work.
    pub(super) async fn work(&self, work: Work) {
        match work {
            Work::Start(id) => self.execute(id).await,
            Work::Finish(record, handle, progress) => {
                let ending = joined(self.forwarding(&record, &progress, handle).await);
                self.forget_running(&record.execution.id);
                self.finish(*record, ending, progress.take()).await;
            }
        }
    }

    fn forget_running(&self, id: &ExecutionId) {
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(id);
        }
    }

    /// The short-job path (see [`SHORT_JOB`]) for a `Deliver` made only of fresh `AskForBid`s with
    /// `accept_directly` (under load the orchestrator's outbox sends several in one request): every one
    /// starts at once, and those that end within the window are accepted, started and finished in the one
    /// transaction that also accepts the others, with one Ack for all of them. `Err` gives the messages
    /// back when any of them is not eligible (a replay, already known, or a bid this node declines or has
    /// no room for), for the ordinary path to handle; nothing was started or reserved then.
    async fn run_short(
        &self,
        peer: &NodeId,
        messages: Vec<Sequenced>,
    ) -> Result<Response, Vec<Sequenced>> {
        // Checked and reserved on borrows, so an ineligible batch goes back untouched.
        let asks: Vec<(u64, &Execution)> = messages
            .iter()
            .filter_map(|m| match &m.message {
                Message::AskForBid { execution, .. } => Some((m.seq, &**execution)),
                _ => None,
            })
            .collect();
        let (t, outbox) = (self.inner.tables, &self.inner.outbox);
        let known = self.inner.store.read_sync(|txn| {
            let mut any_known = false;
            for (_, e) in &asks {
                any_known |= txn.get(t.executions, e.id.as_str())?.is_some();
            }
            Ok((outbox.last_applied(txn, peer)?, any_known))
        });
        let fresh = match known {
            Ok((last, false)) => {
                let mut ids = std::collections::HashSet::new();
                let mut prev = last;
                asks.iter().all(|(seq, e)| {
                    let ordered = *seq > prev;
                    prev = *seq;
                    ordered && ids.insert(&e.id)
                })
            }
            _ => false,
        };
        if !fresh
            || asks
                .iter()
                .any(|(_, e)| decide(&self.inner.backends, &self.inner.config, e).is_err())
        {
            return Err(messages);
        }
        let mut reserved: Vec<(Vec<u32>, crate::model::Resources)> = Vec::new();
        for (_, e) in &asks {
            let need = execution_resources(e, &self.inner.config.job_defaults);
            match self.inner.capacity.try_reserve(&e.id, &need) {
                Ok(gpus) => reserved.push((gpus, need)),
                Err(_) => {
                    for ((_, e), (_, need)) in asks.iter().zip(&reserved) {
                        self.inner.capacity.release(&e.id, need);
                    }
                    return Err(messages);
                }
            }
        }
        let ready = self.prepare_work_dirs(asks.iter().map(|(_, e)| *e)).await;
        let mut runs: Vec<ShortRun> = messages
            .into_iter()
            .filter_map(|m| match m.message {
                Message::AskForBid { execution, .. } => Some((m.seq, execution)),
                _ => None,
            })
            .zip(reserved)
            .enumerate()
            .map(|(i, ((seq, execution), (gpus, need)))| {
                let folders = match ready.get(i) {
                    Some(true) => Folders::Ready,
                    _ => Folders::ToMake,
                };
                self.start_short(peer, seq, execution, gpus, need, folders)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + SHORT_JOB;
        for run in &mut runs {
            if let Ok(result) = tokio::time::timeout_at(deadline, &mut run.handle).await {
                run.ending = Some(joined(result));
            }
        }
        debug!(
            orchestrator = %peer,
            executions = runs.len(),
            ended = runs.iter().filter(|r| r.ending.is_some()).count(),
            "short-job path"
        );
        for run in runs.iter().filter(|r| r.ending.is_some()) {
            self.forget_running(&run.id);
        }
        // One transaction, in sequence order: the ended ones recorded with their reports, the others as
        // running (their ends are recorded by the runner).
        let inner = self.inner.clone();
        let peer_id = peer.clone();
        // Set exactly for the runs that ended.
        let counters: Vec<Option<&'static crate::metrics::Counter>> = runs
            .iter()
            .map(|r| r.ending.as_ref().map(Ending::counter))
            .collect();
        // An ended run's record moves into the transaction; a running one's is copied, for the runner.
        let mut written: Vec<(u64, LocalExecution, Option<Ending>, Progress)> = runs
            .iter_mut()
            .filter_map(|r| {
                let record = match r.ending {
                    Some(_) => r.record.take(),
                    None => r.record.clone(),
                }?;
                Some((r.seq, record, r.ending.take(), r.progress.clone()))
            })
            .collect();
        let outcome = self
            .inner
            .store
            .write(move |txn| {
                for (seq, record, ending, progress) in &mut written {
                    inner.outbox.accept_inbound(txn, &peer_id, *seq)?;
                    match ending.take() {
                        Some(ending) => {
                            enqueue_accepted(&inner, txn, record, true)?;
                            enqueue_progress(&inner, txn, record, progress.take())?;
                            let report = report(record, ending);
                            inner.outbox.enqueue(txn, &record.orchestrator, report)?;
                            record.execution.job = None;
                            txn.put(t.executions, record.execution.id.as_str(), record)?;
                        }
                        None => {
                            txn.put(t.executions, record.execution.id.as_str(), record)?;
                            enqueue_accepted(&inner, txn, record, true)?;
                            enqueue_progress(&inner, txn, record, progress.take())?;
                        }
                    }
                }
                inner.outbox.last_applied(txn, &peer_id)
            })
            .await;
        let mut recycle = Vec::new();
        for (run, counter) in runs.into_iter().zip(counters) {
            if outcome.is_ok() {
                crate::metrics::COMPUTE.bids_accepted.inc();
            }
            if let Some(counter) = counter {
                self.inner.capacity.release(&run.id, &run.need);
                if outcome.is_ok() {
                    counter.inc();
                }
                recycle.push(run.id);
            } else if let Some(record) = run.record {
                if outcome.is_err() {
                    // Not accepted after all: stop it; the orchestrator will ask again.
                    run.cancel.cancel();
                }
                // Either way the run task is reaped (and, if accepted, reported) by the runner.
                let _ =
                    self.inner
                        .start
                        .send(Work::Finish(Box::new(record), run.handle, run.progress));
            }
        }
        let committed = outcome.is_ok();
        let response = self.acknowledge(peer, outcome);
        let discarding = self.discard_work_dirs(&recycle);
        // Not committed: the orchestrator asks again for these executions, in these folders, so they are
        // cleared before the answer. Committed, they are known here and a replay runs nothing.
        if !committed && let Some(discarding) = discarding {
            let _ = discarding.await;
        }
        Ok(response)
    }

    /// Starts one execution of the short-job path, its resources already reserved.
    fn start_short(
        &self,
        peer: &NodeId,
        seq: u64,
        execution: Box<Execution>,
        gpus: Vec<u32>,
        need: crate::model::Resources,
        folders: Folders,
    ) -> ShortRun {
        let id = execution.id.clone();
        let cancel = CancellationToken::new();
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(id.clone(), cancel.clone());
        }
        let span = info_span!("execution", execution_id = %id, job_id = %execution.job_id);
        let (me, snapshot) = (self.clone(), (*execution).clone());
        let (token, progress) = (cancel.clone(), Progress::default());
        let reporter = progress.clone();
        let handle = tokio::spawn(
            async move { me.run_pipeline(&snapshot, folders, token, reporter).await }
                .instrument(span),
        );
        ShortRun {
            seq,
            id,
            record: Some(LocalExecution {
                execution: *execution,
                orchestrator: peer.clone(),
                state: LocalState::Running,
                attempts: 1,
                gpus,
            }),
            need,
            cancel,
            progress,
            handle,
            ending: None,
        }
    }

    /// Live output of a running execution: up to [`OUTPUT_CHUNK`] bytes of each stream from the offsets.
    async fn read_output(&self, id: &ExecutionId, stdout_at: u64, stderr_at: u64) -> Response {
        let ended = Response::Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            running: false,
        };
        if !self.is_running(id) {
            return ended;
        }
        let Some(dir) = self.inner.work_dirs.path(id.as_str()) else {
            return ended;
        };
        let result_dir = dir.join("result");
        let scrubber = self
            .inner
            .scrubbers
            .lock()
            .ok()
            .and_then(|s| s.get(id).cloned());
        let read = tokio::task::spawn_blocking(move || match scrubber {
            None => (
                read_from(&result_dir.join("stdout"), stdout_at),
                read_from(&result_dir.join("stderr"), stderr_at),
            ),
            Some(s) => (
                read_masked(&result_dir.join("stdout"), stdout_at, &s),
                read_masked(&result_dir.join("stderr"), stderr_at, &s),
            ),
        })
        .await;
        // Still running after the read, so the files were this execution's throughout: its folder is
        // recycled only once it is no longer running, and then the files are another execution's.
        if !self.is_running(id) {
            return ended;
        }
        let (stdout, stderr) = read.unwrap_or_default();
        Response::Output {
            stdout,
            stderr,
            running: true,
        }
    }

    fn is_running(&self, id: &ExecutionId) -> bool {
        self.inner
            .running
            .lock()
            .map(|r| r.contains_key(id))
            .unwrap_or(false)
    }

    fn acknowledge(&self, peer: &NodeId, outcome: Result<u64, StoreError>) -> Response {
        match outcome {
            Ok(last) => {
                self.inner.outbox.kick(peer);
                Response::Ack {
                    last_applied_seq: last,
                }
            }
            Err(e) => {
                warn!(orchestrator = %peer, error = %e, "cannot record an execution");
                Response::Refused {
                    reason: format!("compute node cannot record the execution now: {e}"),
                }
            }
        }
    }

    /// Runs one accepted execution to its report.
    pub(super) async fn execute(&self, id: ExecutionId) {
        let t = self.inner.tables;
        let record = match self
            .inner
            .store
            .read_sync(|txn| txn.get(t.executions, id.as_str()))
        {
            Ok(Some(r)) if r.state == LocalState::Running => r,
            Ok(_) => return,
            Err(e) => {
                warn!(execution_id = %id, error = %e, "cannot load execution");
                return;
            }
        };
        let cancel = CancellationToken::new();
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(id.clone(), cancel.clone());
        }
        let span = info_span!("execution", execution_id = %id, job_id = %record.execution.job_id);
        let progress = Progress::default();
        let run = self
            .run_pipeline(&record.execution, Folders::ToMake, cancel, progress.clone())
            .instrument(span.clone());
        let ending = self.forwarding(&record, &progress, run).await;
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(&id);
        }
        let _enter = span.enter();
        self.finish(record, ending, progress.take()).await;
    }

    /// Awaits `run`, sending each milestone the executor reports meanwhile to the orchestrator (one small
    /// transaction per burst; milestones are rare: an image pull, say). What is left when `run` ends goes out
    /// with the report.
    async fn forwarding<T>(
        &self,
        record: &LocalExecution,
        progress: &Progress,
        run: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(run);
        loop {
            tokio::select! {
                biased;
                out = &mut run => return out,
                () = progress.changed() => {
                    let events = progress.take();
                    if events.is_empty() {
                        continue;
                    }
                    let (inner, rec) = (self.inner.clone(), record.clone());
                    let written = self
                        .inner
                        .store
                        .write(move |txn| enqueue_progress(&inner, txn, &rec, events))
                        .await;
                    match written {
                        Ok(()) => self.inner.outbox.kick(&record.orchestrator),
                        Err(e) => warn!(error = %e, "cannot record execution progress"),
                    }
                }
            }
        }
    }

    /// The GPUs this execution holds, each announced in its history ("allocated GPU 0 (Tesla T4, GPU-…)").
    /// A run that asked for GPUs and holds fewer (a resumed one whose devices are gone) fails rather than
    /// run without them.
    fn held_gpus(
        &self,
        execution: &Execution,
        need: u64,
        progress: &Progress,
    ) -> Result<Vec<Gpu>, String> {
        if need == 0 {
            return Ok(Vec::new());
        }
        let known = self.inner.config.gpu_list();
        let gpus: Vec<Gpu> = self
            .inner
            .capacity
            .gpus_of(&execution.id)
            .into_iter()
            .filter_map(|i| known.iter().find(|g| g.index == i).cloned())
            .collect();
        if (gpus.len() as u64) < need {
            return Err(format!(
                "the task needs {need} GPU(s) but this node holds {} for it (were GPUs removed since it was \
                 accepted?)",
                gpus.len()
            ));
        }
        for g in &gpus {
            let what = if g.uuid.is_empty() {
                g.name.clone()
            } else {
                format!("{}, {}", g.name, g.uuid)
            };
            progress.report(GPU_TOPIC, format!("allocated GPU {} ({what})", g.index));
        }
        Ok(gpus)
    }

    /// Makes the folders of a batch of executions in one trip to the blocking pool (a trip per execution was
    /// a quarter of a compute node's thread wake-ups in the fleet benchmark). Says, in order, which are
    /// ready; a run whose folders are not makes them itself, and reports why it cannot.
    async fn prepare_work_dirs<'e>(
        &self,
        executions: impl Iterator<Item = &'e Execution>,
    ) -> Vec<bool> {
        let plans: Vec<Option<(ExecutionId, Vec<PathBuf>)>> = executions
            .map(|e| {
                let task = e.job.as_ref()?.task()?;
                Some((e.id.clone(), work_folders(task)))
            })
            .collect();
        let dirs = self.inner.work_dirs.clone();
        tokio::task::spawn_blocking(move || {
            plans
                .iter()
                .map(|plan| {
                    plan.as_ref()
                        .is_some_and(|(id, folders)| dirs.prepare(id.as_str(), folders).is_ok())
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Done with these executions' inputs and result folders (the publisher keeps its own copy): emptied
    /// and kept for the next executions, in one blocking hop. Await the handle only where the same folders
    /// may be asked for again before it is done; nothing else needs to wait (a task woken for nothing is a
    /// context switch on a tiny job's path).
    fn discard_work_dirs(&self, ids: &[ExecutionId]) -> Option<tokio::task::JoinHandle<()>> {
        if ids.is_empty() {
            return None;
        }
        let dirs = self.inner.work_dirs.clone();
        let ids = ids.to_vec();
        Some(tokio::task::spawn_blocking(move || {
            for id in &ids {
                dirs.recycle(id.as_str());
            }
        }))
    }

    /// Runs the execution in its work dir. The dir is recycled by [`Compute::discard_work_dirs`] once the
    /// ending is recorded: cleaning up is not on the path to the result.
    async fn run_pipeline(
        &self,
        execution: &Execution,
        folders: Folders,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Ending {
        let failed = |error: String| Ending::Failed {
            state: ExecutionStateType::Failed,
            error,
        };
        let Some(job) = execution.job.as_ref() else {
            return failed("execution carries no job".into());
        };
        let Some(task) = job.task() else {
            return failed("job has no task".into());
        };
        // The bid's checks again: the policy may have changed since (a restart with a stricter config), and
        // an `env:` variable may have gone. The job fails with the reason a refused bid would give.
        if let Err(reason) = decide(&self.inner.backends, &self.inner.config, execution) {
            info!(%reason, "execution refused by this node's policy at run time");
            return failed(reason);
        }
        let engine = match EngineSpec::parse(&task.engine, "Engine") {
            Ok(e) => e,
            Err(e) => return failed(e.to_string()),
        };
        let publisher = PublisherSpec::parse(&task.publisher);
        let Some(executor) = engine
            .kind()
            .and_then(|k| self.inner.backends.executors.get(&k))
            .cloned()
        else {
            return failed(format!(
                "engine {:?} is not supported by this node",
                task.engine.kind
            ));
        };
        // Every folder of the execution in one trip to the blocking pool (each trip costs a thread hand-off on
        // the job's critical path). A retry after a restart starts from a clean directory.
        let ready = match folders {
            Folders::Ready => self.inner.work_dirs.path(execution.id.as_str()),
            Folders::ToMake => None,
        };
        let dir = match ready {
            Some(dir) => dir,
            None => {
                let (dirs, id, folders) = (
                    self.inner.work_dirs.clone(),
                    execution.id.clone(),
                    work_folders(task),
                );
                let made =
                    tokio::task::spawn_blocking(move || dirs.prepare(id.as_str(), &folders)).await;
                match made {
                    Ok(Ok(dir)) => dir,
                    Ok(Err((path, e))) => {
                        return failed(format!(
                            "cannot prepare the folder {}: {e}",
                            path.display()
                        ));
                    }
                    Err(e) => {
                        return failed(format!("cannot prepare the execution's folders: {e}"));
                    }
                }
            }
        };
        let result_dir = dir.join("result");
        let outputs: Vec<OutputDir> = task
            .result_paths
            .iter()
            .map(|rp| OutputDir {
                name: rp.name.clone(),
                path: rp.path.clone(),
                host_dir: result_dir.join(&rp.name),
            })
            .collect();
        // Each input's spec, source and (when a cache may use it) content id, before anything is fetched.
        let use_results = result_cache::opted_in(job);
        let want_ids = use_results || self.inner.caches.inputs.is_some();
        let mut resolved = Vec::with_capacity(task.input_sources.len());
        for (i, input) in task.input_sources.iter().enumerate() {
            let spec = match InputSpec::parse(&input.source, &format!("InputSources[{i}]")) {
                Ok(s) => s,
                Err(e) => return failed(e.to_string()),
            };
            let Some(source) = spec
                .kind()
                .and_then(|k| self.inner.backends.sources.get(&k))
                .cloned()
            else {
                return failed(format!(
                    "input type {:?} is not supported by this node",
                    spec.type_name()
                ));
            };
            let id = if want_ids {
                let found = tokio::select! {
                    r = source.content_id(&spec) => r,
                    _ = cancel.cancelled() => return cancelled(),
                };
                match found {
                    Ok(id) => id,
                    Err(e) => {
                        return failed(format!("preparing input {} failed: {e}", input.target));
                    }
                }
            } else {
                None
            };
            resolved.push(ResolvedInput {
                input,
                spec,
                source,
                id,
            });
        }
        let mut keep_as = None;
        if use_results {
            match self.result_cache_key(task, &engine, &resolved) {
                Err(why) => {
                    info!(reason = %why, "result cache not used");
                    progress.report(
                        RESULT_CACHE_TOPIC,
                        format!("result cache not used: {why}; running the task"),
                    );
                }
                Ok((cache, key)) => match cache.reuse(&key, &result_dir).await {
                    Ok(Some(found)) => {
                        let message = format!(
                            "result reused from execution {} of job {}",
                            found.execution_id, found.job_id
                        );
                        info!(from_execution = %found.execution_id, from_job = %found.job_id, "result reused");
                        progress.report(RESULT_CACHE_TOPIC, message);
                        return match self
                            .publish(execution, publisher.as_ref(), &result_dir)
                            .await
                        {
                            Ok(published) => Ending::Completed {
                                published,
                                output: found.output,
                            },
                            Err(e) => failed(e),
                        };
                    }
                    Ok(None) => keep_as = Some((cache, key)),
                    Err(e) => warn!(error = %e, "result cache lookup failed; running the task"),
                },
            }
        }
        let mut inputs = Vec::new();
        // Cached inputs stay leased (safe from eviction) until the executor is done with them.
        let mut leases = Vec::new();
        for (
            i,
            ResolvedInput {
                input,
                spec,
                source,
                id,
            },
        ) in resolved.into_iter().enumerate()
        {
            let scratch = dir.join("inputs").join(i.to_string());
            let prepare = async {
                match (&self.inner.caches.inputs, &id) {
                    (Some(cache), Some(id)) => {
                        let c = cache.prepare(id, source.as_ref(), &spec, &scratch).await?;
                        debug!(input = %input.target, content_id = %id, hit = c.hit, "input prepared through the cache");
                        Ok((c.volume, c.lease))
                    }
                    _ => crate::storage::prepare_in(source.as_ref(), &spec, &scratch)
                        .await
                        .map(|v| (v, None)),
                }
            };
            let prepared = tokio::select! {
                r = prepare => r,
                _ = cancel.cancelled() => return cancelled(),
            };
            match prepared {
                Ok((v, lease)) => {
                    leases.extend(lease);
                    inputs.push(PreparedInput {
                        target: input.target.clone(),
                        host_path: v.host_path,
                        read_only: v.read_only,
                    });
                }
                Err(e) => return failed(format!("preparing input {} failed: {e}", input.target)),
            }
        }
        // `env:` references become the node's own values here and only here; the scrubber keeps them out of
        // the captured output.
        let (mut env, scrubber) = match secrets::resolve_env(
            &task.env,
            &self.inner.config.policy.env_allow_list,
            &|name| std::env::var(name).ok(),
        ) {
            Ok(resolved) => resolved,
            Err(reason) => return failed(reason),
        };
        env.insert("BACALHAU_EXECUTION_ID".into(), execution.id.to_string());
        env.insert("BACALHAU_JOB_ID".into(), execution.job_id.to_string());
        env.insert("BACALHAU_JOB_TYPE".into(), job.job_type.to_string());
        env.insert(
            "BACALHAU_PARTITION_INDEX".into(),
            execution.partition_index.to_string(),
        );
        env.insert(
            "BACALHAU_PARTITION_COUNT".into(),
            job.effective_count().to_string(),
        );
        env.insert("BACALHAU_NODE_ID".into(), self.inner.node_id.to_string());
        let need = execution_resources(execution, &self.inner.config.job_defaults);
        let gpus = match self.held_gpus(execution, need.gpu, &progress) {
            Ok(g) => g,
            Err(reason) => return failed(reason),
        };
        // Long-running jobs (daemon, service) run until stopped: the node's default timeout is for batch work.
        let long_running = matches!(
            job.job_type,
            crate::model::JobType::Daemon | crate::model::JobType::Service
        );
        let timeout = match task.timeouts.execution_timeout {
            n if n > 0 => Some(Duration::from_secs(u64::try_from(n).unwrap_or(u64::MAX))),
            _ if long_running => None,
            _ => self.inner.config.default_timeout,
        };
        let stdout_path = result_dir.join("stdout");
        let stderr_path = result_dir.join("stderr");
        let ctx = RunContext {
            execution_id: execution.id.clone(),
            job_id: execution.job_id.clone(),
            engine,
            env,
            inputs,
            outputs,
            stdout_path: stdout_path.clone(),
            stderr_path: stderr_path.clone(),
            scratch_dir: dir.join("scratch"),
            limits: Limits {
                memory_bytes: (need.memory > 0).then_some(need.memory),
                cpu_millis: (need.cpu > 0.0).then(|| (need.cpu * 1000.0).round() as u64),
                timeout,
                max_output_bytes: self.inner.config.max_output_bytes,
            },
            network: task.network.clone(),
            progress,
            gpus,
        };
        let scrubbing = ScrubbingLive::register(&self.inner, &execution.id, scrubber.clone());
        // The guard stops the run through a child token when it writes past the node's limits; the job's own
        // cancellation still reaches the executor through the same token.
        let run_cancel = cancel.child_token();
        let guard = Guard::start(
            Watched {
                result_dirs: ctx.outputs.iter().map(|o| o.host_dir.clone()).collect(),
                max_result_bytes: self.inner.config.max_result_bytes,
            },
            run_cancel.clone(),
        );
        info!("execution started");
        let outcome = executor.run(ctx, run_cancel).await;
        drop(leases);
        let overrun = guard.finish().await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => return failed(e.to_string()),
        };
        if let Some(over) = overrun {
            warn!(reason = %over, "execution over the node's output size limit");
            return failed(over.to_string());
        }
        let (code, truncated, heads) = match outcome {
            RunOutcome::Exited {
                code,
                output_truncated,
                heads,
            } => (code, output_truncated, heads),
            RunOutcome::Failed(FailureReason::Cancelled) => {
                return Ending::Failed {
                    state: ExecutionStateType::Cancelled,
                    error: FailureReason::Cancelled.to_string(),
                };
            }
            RunOutcome::Failed(reason) => return failed(reason.to_string()),
        };
        // The result folder is read again only by a publisher or the result cache. Without either, and
        // with nothing to scrub, the executor's heads are the report and nothing is written or read back:
        // no trip to the blocking pool on a tiny job's critical path.
        let result_dir_read =
            keep_as.is_some() || !matches!(publisher, None | Some(PublisherSpec::Noop));
        let heads = match heads {
            Some(h) if scrubber.is_empty() && !result_dir_read => {
                Some((head_of(h.stdout), head_of(h.stderr)))
            }
            _ => None,
        };
        let ((stdout, stdout_truncated), (stderr, stderr_truncated)) = match heads {
            Some(heads) => heads,
            None => {
                // exitCode, scrubbing and the RunOutput heads in one blocking call (file I/O stays off the
                // runtime's workers). Scrubbed before anything reads the streams for the report, the result
                // cache or the publisher.
                let exit_code_file = result_dir.join("exitCode");
                let collected = tokio::task::spawn_blocking(move || {
                    crate::executor::open_stream(&exit_code_file)?
                        .write_all(code.to_string().as_bytes())?;
                    scrubber.scrub_file(&stdout_path)?;
                    scrubber.scrub_file(&stderr_path)?;
                    Ok::<_, std::io::Error>((head(&stdout_path), head(&stderr_path)))
                })
                .await;
                match collected {
                    Ok(Ok(heads)) => heads,
                    Ok(Err(e)) => {
                        return failed(format!(
                            "cannot write exitCode or scrub secrets from the output: {e}"
                        ));
                    }
                    Err(e) => return failed(format!("cannot collect the output: {e}")),
                }
            }
        };
        // Live readers now see the scrubbed files.
        drop(scrubbing);
        let mut output = RunCommandResult {
            exit_code: code,
            stdout,
            stdout_truncated,
            stderr,
            stderr_truncated,
            ..Default::default()
        };
        if truncated {
            output.error_msg = format!(
                "output was cut at {} bytes per stream",
                self.inner.config.max_output_bytes
            );
        }
        let published = match self
            .publish(execution, publisher.as_ref(), &result_dir)
            .await
        {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        // Only clean successes are kept for reuse (see compute::cache::result).
        if let Some((cache, key)) = keep_as
            && code == 0
            && !truncated
        {
            let meta = ResultMeta {
                execution_id: execution.id.clone(),
                job_id: execution.job_id.clone(),
                output: output.clone(),
            };
            // Best effort: the execution has its result either way.
            if let Err(e) = cache.keep(&key, &result_dir, meta).await {
                warn!(error = %e, "cannot keep the result for reuse");
            }
        }
        info!(exit_code = code, "execution completed");
        Ending::Completed { published, output }
    }

    /// Publishes `result_dir` through the task's publisher (`spec`, parsed; none publishes nothing); `Err`
    /// is the execution's failure reason.
    async fn publish(
        &self,
        execution: &Execution,
        spec: Option<&PublisherSpec>,
        result_dir: &Path,
    ) -> Result<SpecConfig, String> {
        let Some(spec) = spec else {
            return Ok(SpecConfig::default());
        };
        let Some(publisher) = spec
            .kind()
            .and_then(|k| self.inner.backends.publishers.get(&k))
            .cloned()
        else {
            return Err(format!(
                "publisher {:?} is not supported by this node",
                spec.type_name()
            ));
        };
        let target = PublishTarget {
            execution_id: execution.id.clone(),
            job_id: execution.job_id.clone(),
            node_id: self.inner.node_id.clone(),
            spec: spec.clone(),
        };
        publisher
            .publish(&target, result_dir)
            .await
            .map_err(|e| format!("publishing the result failed: {e}"))
    }

    /// The result cache and this task's key in it, or why the task cannot be looked up there.
    fn result_cache_key(
        &self,
        task: &Task,
        engine: &EngineSpec,
        inputs: &[ResolvedInput<'_>],
    ) -> Result<(ResultCache, ResultKey), String> {
        let Some(cache) = self.inner.caches.results.clone() else {
            return Err("it is off on this node (Compute.ResultCacheSize is 0)".to_owned());
        };
        if secrets::has_references(&task.env) {
            return Err(
                "the task's Env has env: references, whose values on the node may change between runs"
                    .to_owned(),
            );
        }
        let mut ids = Vec::with_capacity(inputs.len());
        for ResolvedInput {
            input, spec, id, ..
        } in inputs
        {
            let Some(id) = id else {
                return Err(format!(
                    "input {} ({}) has no content identity{}",
                    input.target,
                    spec.type_name(),
                    identity_hint(spec)
                ));
            };
            ids.push((input.target.clone(), id.clone()));
        }
        let key = ResultKey::new(task, engine, &ids)?;
        Ok((cache, key))
    }

    /// Records the ending and queues its report, in one transaction.
    async fn finish(&self, record: LocalExecution, ending: Ending, progress: Vec<Event>) {
        let (t, inner) = (self.inner.tables, self.inner.clone());
        let need = execution_resources(&record.execution, &self.inner.config.job_defaults);
        let orchestrator = record.orchestrator.clone();
        let id = record.execution.id.clone();
        let outcome = ending.counter();
        let holder = id.clone();
        let result = self
            .inner
            .store
            .write(move |txn| {
                let mut rec = record;
                enqueue_progress(&inner, txn, &rec, progress)?;
                let message = report(&mut rec, ending);
                inner.outbox.enqueue(txn, &rec.orchestrator, message)?;
                // The job snapshot (possibly an inline module) is no longer needed.
                rec.execution.job = None;
                txn.put(t.executions, rec.execution.id.as_str(), &rec)
            })
            .await;
        self.inner.capacity.release(&holder, &need);
        match result {
            Ok(()) => {
                outcome.inc();
                self.inner.outbox.kick(&orchestrator);
            }
            Err(e) => {
                warn!(error = %e, "cannot record the end of an execution; it will run again after a restart")
            }
        }
        // After the report is durable (and on its way). Not awaited: only a restart runs it again, and a
        // rerun starts from a clean folder anyway.
        let _ = self.discard_work_dirs(std::slice::from_ref(&id));
    }
}

/// Whether an execution's folders are made when its run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folders {
    /// Made, with the rest of its batch (see [`Compute::prepare_work_dirs`]).
    Ready,
    /// The run makes them.
    ToMake,
}

/// The folders a run of `task` works in, relative to its work dir: each result path's and `result/` itself.
/// An input's scratch folder (`inputs/<i>`) is made only when something goes there: most inputs are served
/// from the input cache, read-only, and each folder made is one more to read when the folder is recycled.
fn work_folders(task: &Task) -> Vec<PathBuf> {
    let result_dir = Path::new("result");
    let mut folders: Vec<PathBuf> = task
        .result_paths
        .iter()
        .map(|rp| result_dir.join(&rp.name))
        .collect();
    folders.push(result_dir.to_owned());
    folders
}

/// An input of the task, looked at before anything is fetched.
struct ResolvedInput<'a> {
    /// As the task gives it.
    input: &'a InputSource,
    /// Parsed.
    spec: InputSpec,
    /// The backend for its type.
    source: Arc<dyn StorageSource>,
    /// What it will contain, when its source can say (and a cache may use it).
    id: Option<ContentId>,
}

/// How a cancelled execution ends.
fn cancelled() -> Ending {
    Ending::Failed {
        state: ExecutionStateType::Cancelled,
        error: FailureReason::Cancelled.to_string(),
    }
}

/// What would give an input of this type a content identity, for the history message.
fn identity_hint(spec: &InputSpec) -> &'static str {
    match spec {
        InputSpec::UrlDownload { .. } => {
            " (give it a Checksum: Params.Checksum = \"sha256:<hex>\", or -i URL,opt=checksum=sha256:<hex>)"
        }
        InputSpec::Local { .. } => " (a host path can change between runs)",
        _ => "",
    }
}

/// The ending of a run task; a task that panicked is a failed execution, not a failed node.
fn joined(result: Result<Ending, tokio::task::JoinError>) -> Ending {
    result.unwrap_or_else(|e| Ending::Failed {
        state: ExecutionStateType::Failed,
        error: format!("execution task failed: {e}"),
    })
}

/// Sets the record's final state and returns the report for the orchestrator.
fn report(rec: &mut LocalExecution, ending: Ending) -> Message {
    let e = &rec.execution;
    match ending {
        Ending::Completed { published, output } => {
            rec.state = LocalState::Completed;
            Message::RunResult {
                execution_id: e.id.clone(),
                job_id: e.job_id.clone(),
                published_result: published,
                run_output: output,
            }
        }
        Ending::Failed { state, error } => {
            rec.state = LocalState::Failed;
            Message::ComputeError {
                execution_id: e.id.clone(),
                job_id: e.job_id.clone(),
                state,
                error,
            }
        }
    }
}

/// Queues the reports of an accepted bid: BidResult, and Running when it starts at once.
fn enqueue_accepted(
    inner: &super::Inner,
    txn: &mut WriteTxn<'_, '_>,
    rec: &LocalExecution,
    started: bool,
) -> Result<(), StoreError> {
    let (id, job_id) = (rec.execution.id.clone(), rec.execution.job_id.clone());
    let accepted = Message::BidResult {
        execution_id: id.clone(),
        job_id: job_id.clone(),
        accepted: true,
        reason: String::new(),
    };
    inner.outbox.enqueue(txn, &rec.orchestrator, accepted)?;
    if started {
        let running = Message::ExecutionProgress {
            execution_id: id,
            job_id,
            state: ExecutionStateType::Running,
            event: Event::new(
                "Running Execution",
                format!("running on node {}", inner.node_id),
            ),
        };
        inner.outbox.enqueue(txn, &rec.orchestrator, running)?;
    }
    Ok(())
}

/// Queues the executor's milestones as history events of the running execution.
fn enqueue_progress(
    inner: &super::Inner,
    txn: &mut WriteTxn<'_, '_>,
    rec: &LocalExecution,
    events: Vec<Event>,
) -> Result<(), StoreError> {
    for event in events {
        let message = Message::ExecutionProgress {
            execution_id: rec.execution.id.clone(),
            job_id: rec.execution.job_id.clone(),
            state: ExecutionStateType::Running,
            event,
        };
        inner.outbox.enqueue(txn, &rec.orchestrator, message)?;
    }
    Ok(())
}

/// Up to [`OUTPUT_CHUNK`] bytes of `path` from `offset` (nothing if it is missing or shorter).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = f.take(OUTPUT_CHUNK).read_to_end(&mut buf);
    }
    buf
}

/// Like [`read_from`] for an execution with secrets: the chunk is masked (see [`Scrubber::mask_live`]), looking
/// a little before the offset and past the chunk so that a secret across either edge is recognised.
fn read_masked(path: &Path, offset: u64, scrubber: &Scrubber) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let margin = scrubber.lookbehind() as u64;
    let start = offset.saturating_sub(margin);
    let mut window = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f
            .take((offset - start) + OUTPUT_CHUNK + margin)
            .read_to_end(&mut window);
    }
    #[allow(clippy::cast_possible_truncation)] // at most the longest secret
    let from = (offset - start) as usize;
    #[allow(clippy::cast_possible_truncation)] // 64 KiB
    scrubber.mask_live(window, from, OUTPUT_CHUNK as usize)
}

/// Keeps an execution's scrubber where live output reads find it, for as long as it runs (removed on drop,
/// whichever way the run ends).
struct ScrubbingLive<'a> {
    inner: &'a super::Inner,
    id: Option<ExecutionId>,
}

impl<'a> ScrubbingLive<'a> {
    fn register(inner: &'a super::Inner, id: &ExecutionId, scrubber: Scrubber) -> Self {
        if scrubber.is_empty() {
            return Self { inner, id: None };
        }
        if let Ok(mut s) = inner.scrubbers.lock() {
            s.insert(id.clone(), scrubber);
        }
        Self {
            inner,
            id: Some(id.clone()),
        }
    }
}

impl Drop for ScrubbingLive<'_> {
    fn drop(&mut self) {
        if let Some(id) = &self.id
            && let Ok(mut s) = self.inner.scrubbers.lock()
        {
            s.remove(id);
        }
    }
}

/// The first [`RUN_OUTPUT_BYTES`] of a file as text, and whether there was more.
fn head(path: &PathBuf) -> (String, bool) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), false);
    };
    let mut buf = vec![0u8; STREAM_HEAD_BYTES];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf.truncate(n);
    head_of(buf)
}

/// The report's text of a stream's first [`STREAM_HEAD_BYTES`], and whether there was more.
fn head_of(mut bytes: Vec<u8>) -> (String, bool) {
    let truncated = bytes.len() > RUN_OUTPUT_BYTES;
    bytes.truncate(RUN_OUTPUT_BYTES);
    match String::from_utf8(bytes) {
        Ok(text) => (text, truncated),
        Err(e) => (
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            truncated,
        ),
    }
}

/// Applies one orchestrator message inside the delivery transaction.
fn apply(
    inner: &super::Inner,
    txn: &mut WriteTxn<'_, '_>,
    orchestrator: &NodeId,
    message: Message,
    after: &mut AfterCommit,
) -> Result<(), StoreError> {
    let t = inner.tables;
    match message {
        Message::AskForBid {
            execution,
            accept_directly,
        } => {
            if txn.get(t.executions, execution.id.as_str())?.is_some() {
                return Ok(());
            }
            let need = execution_resources(&execution, &inner.config.job_defaults);
            let verdict = decide(&inner.backends, &inner.config, &execution)
                .and_then(|()| inner.capacity.try_reserve(&execution.id, &need));
            let (id, job_id) = (execution.id.clone(), execution.job_id.clone());
            match verdict {
                Err(reason) => {
                    crate::metrics::COMPUTE.bids_rejected.inc();
                    info!(execution_id = %id, %reason, "bid declined");
                    inner.outbox.enqueue(
                        txn,
                        orchestrator,
                        Message::BidResult {
                            execution_id: id,
                            job_id,
                            accepted: false,
                            reason,
                        },
                    )?;
                }
                Ok(gpus) => {
                    crate::metrics::COMPUTE.bids_accepted.inc();
                    let state = if accept_directly {
                        LocalState::Running
                    } else {
                        LocalState::Bid
                    };
                    let record = LocalExecution {
                        execution: *execution,
                        orchestrator: orchestrator.clone(),
                        state,
                        attempts: 1,
                        gpus,
                    };
                    txn.put(t.executions, id.as_str(), &record)?;
                    enqueue_accepted(inner, txn, &record, accept_directly)?;
                    if accept_directly {
                        after.start.push(id);
                    }
                }
            }
            after.kick.push(orchestrator.clone());
        }
        Message::BidAccepted { execution_id } => {
            if let Some(mut rec) = txn.get(t.executions, execution_id.as_str())?
                && rec.state == LocalState::Bid
            {
                rec.state = LocalState::Running;
                txn.put(t.executions, execution_id.as_str(), &rec)?;
                inner.outbox.enqueue(
                    txn,
                    orchestrator,
                    Message::ExecutionProgress {
                        execution_id: execution_id.clone(),
                        job_id: rec.execution.job_id.clone(),
                        state: ExecutionStateType::Running,
                        event: Event::new(
                            "Running Execution",
                            format!("running on node {}", inner.node_id),
                        ),
                    },
                )?;
                after.start.push(execution_id);
                after.kick.push(orchestrator.clone());
            }
        }
        Message::BidRejected { execution_id, .. } => {
            if let Some(rec) = txn.get(t.executions, execution_id.as_str())?
                && rec.state == LocalState::Bid
            {
                txn.delete(t.executions, execution_id.as_str())?;
                after.release.push((
                    execution_id,
                    execution_resources(&rec.execution, &inner.config.job_defaults),
                ));
            }
        }
        Message::CancelExecution {
            execution_id,
            reason,
        } => {
            let Some(mut rec) = txn.get(t.executions, execution_id.as_str())? else {
                return Ok(());
            };
            match rec.state {
                LocalState::Running
                    if inner
                        .running
                        .lock()
                        .map(|r| r.contains_key(&execution_id))
                        .unwrap_or(false) =>
                {
                    // The run task sees the cancellation and reports Cancelled itself.
                    after.cancel.push(execution_id);
                }
                LocalState::Bid | LocalState::Running => {
                    rec.state = LocalState::Failed;
                    rec.execution.job = None;
                    txn.put(t.executions, execution_id.as_str(), &rec)?;
                    inner.outbox.enqueue(
                        txn,
                        orchestrator,
                        Message::ComputeError {
                            execution_id,
                            job_id: rec.execution.job_id.clone(),
                            state: ExecutionStateType::Cancelled,
                            error: format!("cancelled: {reason}"),
                        },
                    )?;
                    after.release.push((
                        rec.execution.id.clone(),
                        execution_resources(&rec.execution, &inner.config.job_defaults),
                    ));
                    after.kick.push(orchestrator.clone());
                }
                LocalState::Completed | LocalState::Failed => {}
            }
        }
        other => warn!(message = ?other, "ignoring a message meant for orchestrators"),
    }
    Ok(())
}
