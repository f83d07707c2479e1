//! Job intake, queries, stopping, node administration, and applying scheduler decisions.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;

use crate::model::{
    AllocatedResources, Evaluation, EvaluationId, EvaluationTrigger, Event, Execution,
    ExecutionDesiredStateType, ExecutionId, ExecutionStateType, Job, JobHistory, JobId, JobState,
    JobStateType, JobType, NodeId, NodeMembership, NodeState, Resources, SpecConfig, State,
    now_nanos, spec, validate,
};
use crate::store::{Reader, StoreError, Table, WriteTxn};
use crate::transport::Message;

use super::registry::Registry;
use super::scheduler::{self, Decision, JobDefaults, Settings};
use super::state::{self, Tables};
use super::{Orchestrator, OrchestratorError};

/// Meta keys under this prefix belong to the server.
const RESERVED_META: &str = "bacalhau.org/";

/// Answer to a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitResponse {
    /// The job's id.
    pub job_id: JobId,
    /// The evaluation that scheduled it.
    pub evaluation_id: EvaluationId,
    /// Things the user should know (legacy forms converted, ignored fields).
    pub warnings: Vec<String>,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct JobListing {
    /// The jobs.
    pub items: Vec<Job>,
    /// Token for the next page; empty when done.
    pub next_token: String,
}

/// Which history records to return.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only records after this sequence number (the previous page's token).
    pub after_seq: u64,
    /// At most this many.
    pub limit: usize,
    /// `Some(true)` job-level only, `Some(false)` execution-level only.
    pub job_level: Option<bool>,
    /// Only this execution's records.
    pub execution_id: Option<String>,
}

/// A page of history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The job (the request may have named it by a prefix or its name).
    pub job_id: JobId,
    /// The records.
    pub items: Vec<JobHistory>,
    /// Bacalhau's long-poll contract: non-empty until the job is terminal and nothing is left.
    pub next_token: String,
}

/// What an operator does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Let it receive work.
    Approve,
    /// Refuse it.
    Reject,
    /// Forget it.
    Delete,
}

impl NodeAction {
    /// Parses Bacalhau's action names.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "approve" => Some(Self::Approve),
            "reject" => Some(Self::Reject),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// What a write transaction changed outside the store. Capacity moves in the node registry at once, so the
/// next decision, later in this transaction or in the next one, plans against it; outbox kicks and evaluation
/// wake-ups wait for the commit. Dropped without [`Orchestrator::after_commit`] (the closure failed, or the
/// commit did), it gives back every capacity change it made.
#[derive(Debug)]
pub(crate) struct AfterCommit {
    registry: Registry,
    /// Peers with new outbox messages.
    pub kick: Vec<NodeId>,
    /// (node, resources, release) changes made to the registry, undone on drop unless committed.
    moved: Vec<(NodeId, Resources, bool)>,
    /// Whether the evaluation worker should look again.
    pub evaluate: bool,
    /// Jobs whose history grew: their followers are woken after the commit.
    histories: Vec<JobId>,
}

impl AfterCommit {
    pub(crate) fn new(registry: Registry) -> Self {
        AfterCommit {
            registry,
            kick: Vec::new(),
            moved: Vec::new(),
            evaluate: false,
            histories: Vec::new(),
        }
    }

    /// `job`'s history has a new record.
    pub(crate) fn history_of(&mut self, job: &JobId) {
        // A transaction touches one job, or a few (a node lost): a scan beats a set.
        if !self.histories.contains(job) {
            self.histories.push(job.clone());
        }
    }

    /// The nodes to plan against, with the capacity held by everything decided so far, this transaction
    /// included.
    pub(crate) fn candidates(&self) -> Vec<scheduler::Candidate> {
        self.registry.candidates()
    }

    /// `node` as a candidate, with the capacity held on it by everything decided so far.
    pub(crate) fn candidate(&self, node: &NodeId) -> Option<scheduler::Candidate> {
        self.registry.candidate(node)
    }

    /// `node` now holds `r` for an execution placed on it.
    pub(crate) fn hold(&mut self, node: NodeId, r: Resources) {
        self.registry.allocate(&node, &r, false);
        self.moved.push((node, r, false));
    }

    /// `node` no longer holds `r`: the execution that held it ended.
    pub(crate) fn release(&mut self, node: NodeId, r: Resources) {
        self.registry.allocate(&node, &r, true);
        self.moved.push((node, r, true));
    }
}

impl Drop for AfterCommit {
    fn drop(&mut self) {
        for (node, r, release) in self.moved.drain(..).rev() {
            self.registry.allocate(&node, &r, !release);
        }
    }
}

impl Orchestrator {
    /// Runs `f` in a write transaction with an [`AfterCommit`] to record its effects in. Its capacity changes
    /// are made at once (the transactions after it, in its batch or later, plan against them) and undone if
    /// `f` or the commit fails; the rest is carried out on the store's writer thread as soon as the commit is
    /// known, even if the caller stopped waiting.
    pub(crate) fn write<R, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteTxn<'_, '_>, &mut AfterCommit) -> Result<R, StoreError>
            + Send
            + 'static,
    {
        let registry = self.inner.registry.clone();
        let this = self.clone();
        self.inner.store.write_then(
            move |txn| {
                let mut after = AfterCommit::new(registry);
                let r = f(txn, &mut after)?;
                Ok((r, after))
            },
            move |result| {
                result.map(|(r, after)| {
                    this.after_commit(after);
                    r
                })
            },
        )
    }

    fn after_commit(&self, mut after: AfterCommit) {
        after.moved.clear();
        for peer in &after.kick {
            self.inner.outbox.kick(peer);
        }
        if after.evaluate {
            self.wake_evaluations();
        }
        self.inner.bells.ring(&after.histories);
        self.changed();
    }

    /// Validates, stores and schedules a job, all in one transaction.
    pub async fn submit(
        &self,
        mut job: Job,
        force: bool,
    ) -> Result<SubmitResponse, OrchestratorError> {
        let mut warnings = spec::normalize_legacy_wasm(&mut job);
        validate::validate_submission(&job)?;
        if job.tasks.len() > 1 {
            warnings.push(format!(
                "only the first task runs; {} others were dropped",
                job.tasks.len() - 1
            ));
            job.tasks.truncate(1);
        }
        if !job.id.as_str().is_empty() {
            warnings.push(format!(
                "the ID {} given in the spec was ignored; the server assigns ids",
                job.id
            ));
        }
        let now = now_nanos();
        job.id = JobId::generate();
        if job.namespace.trim().is_empty() {
            job.namespace = "default".to_owned();
        }
        if job.name.trim().is_empty() {
            job.name = job.id.to_string();
        }
        if job.count.is_none() {
            job.count = Some(1);
        }
        let before = job.meta.len();
        job.meta.retain(|k, _| !k.starts_with(RESERVED_META));
        if job.meta.len() != before {
            warnings.push(format!(
                "meta keys starting with {RESERVED_META} are reserved and were removed"
            ));
        }
        job.meta.insert(
            "bacalhau.org/requester.id".into(),
            self.inner.node_id.to_string(),
        );
        job.meta.insert(
            "bacalhau.org/orchestrator.id".into(),
            self.inner.node_id.to_string(),
        );
        job.state = JobState {
            state_type: JobStateType::Pending,
            message: String::new(),
        };
        job.version = 1;
        job.revision = 0;
        job.create_time = now;
        job.modify_time = now;

        let t = self.inner.tables;
        let outbox = self.inner.outbox.clone();
        let settings = self.inner.config.scheduler();
        let eval_id = EvaluationId::generate();
        let eval = eval_id.clone();
        let response_job = self
            .write(move |txn, after| {
                let name_key = state::name_key(&job.namespace, &job.name);
                let mut executions = Vec::new();
                // The state of the stored job (none yet for a new one), for the state counts.
                let mut stored = None;
                if let Some(existing_id) = txn.get(t.job_names, &name_key)? {
                    let Some(existing) = txn.get(t.jobs, existing_id.as_str())? else {
                        return Err(StoreError::Aborted(format!(
                            "the name {:?} points to job {existing_id}, which is missing; choose another name",
                            job.name
                        )));
                    };
                    stored = Some(existing.state.state_type);
                    job = new_version(txn, &t, &outbox, existing, job, force, after)?;
                    executions = state::executions_of(txn, &t, &job.id)?;
                } else {
                    txn.put(t.job_names, &name_key, &job.id)?;
                    state::record(txn, &t, &job, None, Event::new("Submission", "Job submitted"), after)?;
                }
                if let Some(deadline) = scheduler::total_deadline(&job) {
                    schedule_deadline(txn, &t, &job, deadline)?;
                }
                let decision = scheduler::plan(&job, &executions, &after.candidates(), &settings, now);
                apply_decision(txn, &t, &outbox, &mut job, stored, &executions, decision, &eval, &settings, after)?;
                Ok(job.id.clone())
            })
            .await
            .map_err(|e| match e {
                StoreError::Aborted(reason) => OrchestratorError::Conflict(reason),
                other => OrchestratorError::Store(other),
            })?;
        crate::metrics::ORCHESTRATOR.jobs_submitted.inc();
        tracing::info!(job_id = %response_job, "job submitted");
        Ok(SubmitResponse {
            job_id: response_job,
            evaluation_id: eval_id,
            warnings,
        })
    }

    /// Finds a job by id, name (in `namespace`) or unique id prefix.
    pub async fn job(&self, id: &str, namespace: &str) -> Result<Job, OrchestratorError> {
        let t = self.inner.tables;
        self.inner
            .store
            .read_sync(|txn| resolve(txn, &t, id, namespace))?
            .ok_or_else(|| OrchestratorError::NotFound {
                kind: "job",
                id: id.to_owned(),
            })
    }

    /// A page of jobs in `namespace` (`*` = all). The token is the offset of the next page.
    pub async fn list_jobs(
        &self,
        namespace: &str,
        limit: usize,
        token: &str,
        reverse: bool,
    ) -> Result<JobListing, OrchestratorError> {
        let offset = if token.is_empty() {
            0
        } else {
            token.parse::<usize>().map_err(|_| {
                OrchestratorError::BadRequest(format!("next_token {token:?} is not valid"))
            })?
        };
        let t = self.inner.tables;
        let ns = namespace.to_owned();
        let limit = if limit == 0 { 100 } else { limit.min(1000) };
        let (items, next) = self
            .inner
            .store
            .read(move |txn| list(txn, &t, &ns, limit, offset, reverse))
            .await?;
        Ok(JobListing {
            items,
            next_token: next.map(|n| n.to_string()).unwrap_or_default(),
        })
    }

    /// A job's executions, oldest first.
    pub async fn executions(
        &self,
        id: &str,
        namespace: &str,
    ) -> Result<Vec<Execution>, OrchestratorError> {
        let job = self.job(id, namespace).await?;
        let t = self.inner.tables;
        Ok(self
            .inner
            .store
            .read_sync(|txn| state::executions_of(txn, &t, &job.id))?)
    }

    /// A page of a job's history.
    pub async fn history(
        &self,
        id: &str,
        namespace: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, OrchestratorError> {
        let t = self.inner.tables;
        let limit = if filter.limit == 0 {
            100
        } else {
            filter.limit.min(1000)
        };
        // The job's state and its records in one read transaction: a follower reads this once per change of
        // its job, so only the state is decoded of the job (the probe skips the rest of the record).
        let found = self.inner.store.read_sync(|txn| {
            let Some((job_id, probe)) = find(txn, &t, t.probes.jobs, id, namespace)? else {
                return Ok(None);
            };
            let after = format!("{job_id}/{:020}", filter.after_seq);
            // Only the records after the token are decoded (a follower reads a few new ones each time).
            let records: Vec<JobHistory> = txn
                .prefix_after(t.history, &format!("{job_id}/"), &after, usize::MAX)?
                .into_iter()
                .map(|(_, h)| h)
                .collect();
            let highest = records
                .last()
                .map(|h| h.seq_num)
                .unwrap_or(filter.after_seq);
            let records: Vec<JobHistory> = records
                .into_iter()
                .filter(|h| match filter.job_level {
                    Some(true) => h.execution_id.is_none(),
                    Some(false) => h.execution_id.is_some(),
                    None => true,
                })
                .filter(|h| {
                    filter.execution_id.as_deref().is_none_or(|x| {
                        h.execution_id
                            .as_ref()
                            .is_some_and(|e| e.as_str().starts_with(x))
                    })
                })
                .collect();
            Ok(Some((job_id, probe.state.state_type, records, highest)))
        })?;
        let Some((job_id, state, all, highest)) = found else {
            return Err(OrchestratorError::NotFound {
                kind: "job",
                id: id.to_owned(),
            });
        };
        let more = all.len() > limit;
        let items: Vec<JobHistory> = all.into_iter().take(limit).collect();
        let last_seq = if more {
            items.last().map(|h| h.seq_num).unwrap_or(highest)
        } else {
            highest
        };
        let next_token = if more || !state.is_terminal() {
            last_seq.to_string()
        } else {
            String::new()
        };
        Ok(HistoryPage {
            job_id,
            items,
            next_token,
        })
    }

    /// Published results of a job's completed executions.
    pub async fn results(
        &self,
        id: &str,
        namespace: &str,
    ) -> Result<Vec<SpecConfig>, OrchestratorError> {
        Ok(results(&self.executions(id, namespace).await?))
    }

    /// Stops a job: its active executions are cancelled. Returns the evaluation id (empty when it was already
    /// stopped).
    pub async fn stop(
        &self,
        id: &str,
        namespace: &str,
        reason: &str,
    ) -> Result<String, OrchestratorError> {
        let job = self.job(id, namespace).await?;
        match job.state.state_type {
            JobStateType::Stopped => return Ok(String::new()),
            s if s.is_terminal() => {
                return Err(OrchestratorError::Conflict(format!(
                    "job {} is already {s} and cannot be stopped",
                    job.id
                )));
            }
            _ => {}
        }
        let t = self.inner.tables;
        let outbox = self.inner.outbox.clone();
        let reason = if reason.trim().is_empty() {
            "stopped by user".to_owned()
        } else {
            reason.to_owned()
        };
        let eval_id = EvaluationId::generate();
        let job_id = job.id.clone();
        self.write(move |txn, after| {
            let Some(mut job) = txn.get(t.jobs, job_id.as_str())? else {
                return Ok(());
            };
            if job.state.state_type.is_terminal() {
                return Ok(());
            }
            for e in state::executions_of(txn, &t, &job.id)? {
                stop_execution(txn, &t, &outbox, e, &reason, &reason, after)?;
            }
            set_waiting(txn, &t, &job, false)?;
            let previous = job.state.state_type;
            job.state = JobState {
                state_type: JobStateType::Stopped,
                message: reason.clone(),
            };
            state::record(
                txn,
                &t,
                &job,
                None,
                Event::new("State Update", format!("job Stopped: {reason}"))
                    .with("NewState", "Stopped")
                    .with("PreviousState", previous.to_string()),
                after,
            )?;
            state::save_job(txn, &t, &mut job, Some(previous))?;
            Ok(())
        })
        .await?;
        Ok(eval_id.to_string())
    }

    /// Every known node.
    pub fn nodes(&self) -> Vec<NodeState> {
        self.inner.registry.all()
    }

    /// A node by id or unique id prefix.
    pub fn node(&self, id: &str) -> Result<NodeState, OrchestratorError> {
        let nodes = self.inner.registry.all();
        if let Some(n) = nodes.iter().find(|n| n.info.node_id.as_str() == id) {
            return Ok(n.clone());
        }
        let matches: Vec<&NodeState> = nodes
            .iter()
            .filter(|n| n.info.node_id.as_str().starts_with(id))
            .collect();
        match matches.as_slice() {
            [one] if !id.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(OrchestratorError::NotFound {
                kind: "node",
                id: id.to_owned(),
            }),
            _ => Err(OrchestratorError::BadRequest(format!(
                "node id prefix {id:?} matches {} nodes",
                matches.len()
            ))),
        }
    }

    /// Approves, rejects or deletes a node.
    pub async fn update_node(
        &self,
        id: &str,
        action: NodeAction,
    ) -> Result<NodeState, OrchestratorError> {
        let node = self.node(id)?;
        let node_id = node.info.node_id.clone();
        let t = self.inner.tables;
        let updated = match membership_for(action) {
            Some(m) => {
                if node.membership == m {
                    return Err(OrchestratorError::Conflict(format!(
                        "node {node_id} is already {}",
                        m.as_str()
                    )));
                }
                let state = self
                    .inner
                    .registry
                    .set_membership(&node_id, m)
                    .ok_or_else(|| OrchestratorError::NotFound {
                        kind: "node",
                        id: id.to_owned(),
                    })?;
                let s = state.clone();
                self.inner
                    .store
                    .write(move |txn| txn.put(t.nodes, s.info.node_id.as_str(), &s))
                    .await?;
                state
            }
            None => {
                let state = self.inner.registry.remove(&node_id).ok_or_else(|| {
                    OrchestratorError::NotFound {
                        kind: "node",
                        id: id.to_owned(),
                    }
                })?;
                let key = node_id.to_string();
                self.inner
                    .store
                    .write(move |txn| txn.delete(t.nodes, &key).map(|_| ()))
                    .await?;
                state
            }
        };
        tracing::info!(node_id = %node_id, action = ?action, "node membership changed");
        // A rejected node gets nothing more: close its connection (it may redial; its handshake is then
        // refused). The in-process half has no connection to close.
        if action == NodeAction::Reject
            && node_id != self.inner.node_id
            && let Err(e) = self.inner.client.disconnect(&node_id).await
        {
            tracing::warn!(node_id = %node_id, error = %e, "cannot disconnect the rejected node");
        }
        if action == NodeAction::Approve {
            self.enqueue_reevaluation_of_waiting_jobs().await?;
        }
        self.changed();
        Ok(updated)
    }
}

/// Finds a job by exact id, then by name in the namespace, then by unique id prefix.
pub(crate) fn resolve(
    txn: &impl Reader,
    t: &Tables,
    id: &str,
    namespace: &str,
) -> Result<Option<Job>, StoreError> {
    Ok(find(txn, t, t.jobs, id, namespace)?.map(|(_, job)| job))
}

/// [`resolve`] through `view`, a view of the jobs table (the whole job, or a probe that decodes a part of
/// it): the job's id and the record as `view` decodes it.
fn find<V: DeserializeOwned>(
    txn: &impl Reader,
    t: &Tables,
    view: Table<V>,
    id: &str,
    namespace: &str,
) -> Result<Option<(JobId, V)>, StoreError> {
    if let Some(record) = txn.get(view, id)? {
        return Ok(Some((JobId::from(id.to_owned()), record)));
    }
    if let Some(job_id) = txn.get(t.job_names, &state::name_key(namespace, id))? {
        return Ok(txn.get(view, job_id.as_str())?.map(|r| (job_id, r)));
    }
    if id.len() >= 4 {
        let mut matches = txn.prefix(view, id)?;
        if matches.len() == 1 {
            return Ok(matches.pop().map(|(key, r)| (JobId::from(key), r)));
        }
    }
    Ok(None)
}

/// Reloads nodes and the resources their active executions hold (start-up).
pub(crate) fn load_registry(
    txn: &impl Reader,
    t: &Tables,
    defaults: &JobDefaults,
) -> Result<(Vec<NodeState>, HashMap<NodeId, Resources>), StoreError> {
    let nodes: Vec<NodeState> = txn.all(t.nodes)?.into_iter().map(|(_, n)| n).collect();
    let mut allocated: HashMap<NodeId, Resources> = HashMap::new();
    for e in state::all_active(txn, t)? {
        if !e.is_terminal() && e.desired_state.state_type != ExecutionDesiredStateType::Stopped {
            let r = e
                .allocated_resources
                .tasks
                .values()
                .next()
                .copied()
                .unwrap_or(Resources {
                    cpu: defaults.cpu,
                    memory: defaults.memory,
                    ..Default::default()
                });
            let slot = allocated.entry(e.node_id.clone()).or_default();
            *slot = slot.add(&r);
        }
    }
    Ok((nodes, allocated))
}

/// Makes `spec` the next version of `existing` (same id, `Version` + 1): the older version's executions are
/// stopped and the job is scheduled afresh (Bacalhau's update by `Name`). An identical spec is refused unless
/// `force`, as Bacalhau does.
#[allow(clippy::too_many_arguments)]
fn new_version(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    outbox: &crate::outbox::Outbox,
    mut existing: Job,
    spec: Job,
    force: bool,
    after: &mut AfterCommit,
) -> Result<Job, StoreError> {
    if existing.job_type != spec.job_type {
        return Err(StoreError::Aborted(format!(
            "job {:?} ({}) is a {} job and cannot become a {} job; stop it and submit under another name",
            existing.name, existing.id, existing.job_type, spec.job_type
        )));
    }
    let user_meta = |j: &Job| -> BTreeMap<String, String> {
        j.meta
            .iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_META))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let same = existing.tasks == spec.tasks
        && existing.count == spec.count
        && existing.constraints == spec.constraints
        && existing.priority == spec.priority
        && existing.labels == spec.labels
        && user_meta(&existing) == user_meta(&spec);
    if same && !force {
        return Err(StoreError::Aborted(format!(
            "no changes detected for job {:?} ({}); submit with Force to run it again",
            spec.name, existing.id
        )));
    }
    // The waiting key depends on the priority, which the update may change.
    set_waiting(txn, t, &existing, false)?;
    let reason = format!("job updated to version {}", existing.version + 1);
    for e in state::executions_of(txn, t, &existing.id)? {
        stop_execution(txn, t, outbox, e, &reason, &reason, after)?;
    }
    let previous = existing.state.state_type;
    existing.version += 1;
    existing.priority = spec.priority;
    existing.count = spec.count;
    existing.constraints = spec.constraints;
    existing.labels = spec.labels;
    existing.tasks = spec.tasks;
    existing.meta = spec.meta;
    // Queue and total timeouts of the new version count from now.
    existing.meta.insert(
        scheduler::VERSION_TIME_META.to_owned(),
        now_nanos().to_string(),
    );
    existing.state = JobState {
        state_type: JobStateType::Pending,
        message: reason.clone(),
    };
    state::record(
        txn,
        t,
        &existing,
        None,
        Event::new(
            "Job Update",
            format!("{reason}; older executions are stopped"),
        )
        .with("NewState", "Pending")
        .with("PreviousState", previous.to_string()),
        after,
    )?;
    Ok(existing)
}

/// Asks for an evaluation of `job` when its `TotalTimeout` passes (one per job; an update replaces it).
fn schedule_deadline(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &Job,
    at: i64,
) -> Result<(), StoreError> {
    let eval = Evaluation {
        id: EvaluationId::from(format!("deadline-{}", job.id)),
        job_id: job.id.clone(),
        namespace: job.namespace.clone(),
        triggered_by: EvaluationTrigger::Queue,
        wait_until: at,
        create_time: now_nanos(),
    };
    txn.put(t.evaluations, eval.id.as_str(), &eval)
}

/// Applies a scheduler decision to `job` inside the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_decision(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    outbox: &crate::outbox::Outbox,
    job: &mut Job,
    stored: Option<JobStateType>,
    executions: &[Execution],
    decision: Decision,
    eval_id: &EvaluationId,
    settings: &Settings,
    after: &mut AfterCommit,
) -> Result<(), StoreError> {
    let place = match &decision {
        Decision::Run { place, .. } | Decision::Wait { place, .. } => place.clone(),
        _ => vec![],
    };
    let need = scheduler::job_resources(job, &settings.defaults);
    let task_name = job.task().map(|t| t.name.clone()).unwrap_or_default();
    for (partition, node) in place {
        let now = now_nanos();
        let mut exec = Execution {
            id: ExecutionId::generate(),
            namespace: job.namespace.clone(),
            eval_id: eval_id.clone(),
            name: job.name.clone(),
            node_id: node.clone(),
            job_id: job.id.clone(),
            job: None,
            job_version: job.version,
            allocated_resources: AllocatedResources {
                tasks: BTreeMap::from([(task_name.clone(), need)]),
            },
            desired_state: State::new(ExecutionDesiredStateType::Running, "execution approved"),
            compute_state: State::new(ExecutionStateType::AskForBid, "bid requested"),
            partition_index: partition,
            create_time: now,
            ..Default::default()
        };
        state::save_execution(txn, t, &mut exec, None)?;
        let mut snapshot = exec.clone();
        snapshot.job = Some(job.clone());
        outbox.enqueue(
            txn,
            &node,
            Message::AskForBid {
                execution: Box::new(snapshot),
                accept_directly: true,
            },
        )?;
        state::record(
            txn,
            t,
            job,
            Some(&exec.id),
            Event::new(
                "Scheduling",
                format!(
                    "execution {} placed on node {node} (partition {partition})",
                    exec.id
                ),
            )
            .with("NewState", "AskForBid"),
            after,
        )?;
        after.kick.push(node.clone());
        after.hold(node, need);
    }
    let any_active = executions.iter().any(scheduler::active);
    let new_state = match &decision {
        Decision::Complete => Some((JobStateType::Completed, String::new())),
        Decision::Fail { reason } => Some((JobStateType::Failed, reason.clone())),
        Decision::Run { place, wake_at } if !job.state.state_type.is_terminal() => {
            if let Some(at) = wake_at {
                schedule_wake(txn, t, job, *at)?;
            }
            // A long-running job with nothing placed anywhere yet waits for nodes (it is in the waiting index).
            let idle = !any_active && place.is_empty();
            Some(if idle && job.job_type == JobType::Daemon {
                (
                    JobStateType::Queued,
                    "waiting for a matching compute node".to_owned(),
                )
            } else {
                (JobStateType::Running, String::new())
            })
        }
        Decision::Wait {
            place,
            reason,
            deadline,
        } => {
            let backoff = now_nanos().saturating_add(
                i64::try_from(settings.queue_backoff.as_nanos()).unwrap_or(i64::MAX),
            );
            schedule_wake(txn, t, job, deadline.map_or(backoff, |d| d.min(backoff)))?;
            if job.state.message != *reason {
                state::record(
                    txn,
                    t,
                    job,
                    None,
                    Event::new("Queueing", format!("job queued: {reason}")),
                    after,
                )?;
            }
            Some((
                if any_active || !place.is_empty() {
                    JobStateType::Running
                } else {
                    JobStateType::Queued
                },
                reason.clone(),
            ))
        }
        _ => None,
    };
    if let Decision::Fail { reason } = &decision {
        // The job cannot finish: stop what still runs.
        for e in executions {
            stop_execution(txn, t, outbox, e.clone(), "job failed", reason, after)?;
        }
    }
    // The waiting index holds what a node joining or capacity freeing may unblock: queued work, and daemon
    // jobs (they spread to nodes that join later) until they end.
    let waits = match &decision {
        Decision::Wait { .. } => true,
        Decision::Complete | Decision::Fail { .. } => false,
        Decision::Run { .. } => job.job_type == JobType::Daemon,
    };
    set_waiting(txn, t, job, waits)?;
    if let Some((new, message)) = new_state
        && (job.state.state_type != new || job.state.message != message)
    {
        let previous = job.state.state_type;
        job.state = JobState {
            state_type: new,
            message: message.clone(),
        };
        let text = if message.is_empty() {
            format!("job {new}")
        } else {
            format!("job {new}: {message}")
        };
        let mut event = Event::new("State Update", text)
            .with("NewState", new.to_string())
            .with("PreviousState", previous.to_string());
        if new == JobStateType::Failed {
            event = event.with("IsError", "true");
        }
        state::record(txn, t, job, None, event, after)?;
    }
    state::save_job(txn, t, job, stored)
}

/// Adds `job` to (or removes it from) the waiting index.
pub(crate) fn set_waiting(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &Job,
    waits: bool,
) -> Result<(), StoreError> {
    let key = state::waiting_key(job);
    if waits {
        txn.put(t.waiting, &key, &job.id)
    } else {
        txn.delete(t.waiting, &key).map(|_| ())
    }
}

/// The id of a job's single pending re-evaluation: a wake-up written again replaces the previous one, so
/// node joins, freed capacity and timers never pile evaluations up.
fn wake_id(job: &JobId) -> EvaluationId {
    EvaluationId::from(format!("wake-{job}"))
}

/// Asks for an evaluation of `job` at `at` (Unix ns; 0 = now). An earlier pending wake-up is kept.
pub(crate) fn schedule_wake(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &Job,
    at: i64,
) -> Result<(), StoreError> {
    let id = wake_id(&job.id);
    if let Some(pending) = txn.get(t.evaluations, id.as_str())?
        && pending.wait_until <= at
    {
        return Ok(());
    }
    let eval = Evaluation {
        id: id.clone(),
        job_id: job.id.clone(),
        namespace: job.namespace.clone(),
        triggered_by: if at == 0 {
            EvaluationTrigger::NodeUpdate
        } else {
            EvaluationTrigger::Queue
        },
        wait_until: at,
        create_time: now_nanos(),
    };
    txn.put(t.evaluations, id.as_str(), &eval)
}

/// How many waiting jobs, in queue order, one release of capacity looks at. Those further back are woken by
/// a later release or by their own backoff timer: a long queue of jobs that the freed node cannot take must
/// not make every finished execution read all of it.
const FREED_SCAN: usize = 16;

/// Capacity `freed` on `node` (an execution there ended): wakes the waiting jobs that the scheduler would
/// place on that node, in queue order (priority, then age), until what they need has used up what was freed.
/// Waking every waiting job instead made each finished execution cost an evaluation of the whole queue (a
/// write transaction each, nearly all of them deciding to wait again): quadratic in the queue's length.
/// A job already due for an evaluation is left to it and not charged, so a release never wakes less than
/// it freed. `None` when no job waits, else how many were woken.
pub(crate) fn wake_for_freed(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    node: Option<scheduler::Candidate>,
    freed: Resources,
    settings: &Settings,
) -> Result<Option<usize>, StoreError> {
    if txn.count(t.waiting)? == 0 {
        return Ok(None);
    }
    // A node gone since cannot take anything; the jobs wait for a node to join.
    let Some(mut node) = node else {
        return Ok(Some(0));
    };
    let mut woken = 0;
    let now = now_nanos();
    let mut budget = freed;
    // The smallest need seen: once a wake leaves the budget unable to hold it, nothing further back is
    // likely to fit either.
    let mut smallest: Option<Resources> = None;
    let mut scanned = 0;
    let mut after = String::new();
    'scan: while scanned < FREED_SCAN {
        let page = txn.prefix_after(t.waiting, "", &after, FREED_SCAN - scanned)?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (_, job_id) in page {
            scanned += 1;
            let Some(job) = txn.get(t.jobs, job_id.as_str())? else {
                continue;
            };
            let need = scheduler::job_resources(&job, &settings.defaults);
            let least = smallest.map_or(need, |s| Resources {
                cpu: s.cpu.min(need.cpu),
                memory: s.memory.min(need.memory),
                disk: s.disk.min(need.disk),
                gpu: s.gpu.min(need.gpu),
            });
            smallest = Some(least);
            if !need.fits_in(&budget) || wake_due(txn, t, &job.id, now)? {
                continue;
            }
            let execs = state::executions_of(txn, t, &job.id)?;
            let placed =
                match scheduler::plan(&job, &execs, std::slice::from_ref(&node), settings, now) {
                    Decision::Run { place, .. } | Decision::Wait { place, .. } => place.len(),
                    Decision::Complete | Decision::Fail { .. } => 0,
                };
            if placed == 0 {
                continue;
            }
            schedule_wake(txn, t, &job, 0)?;
            woken += 1;
            for _ in 0..placed {
                node.allocated = node.allocated.add(&need);
                budget = budget.saturating_sub(&need);
            }
            if !least.fits_in(&budget) {
                break 'scan;
            }
        }
    }
    Ok(Some(woken))
}

/// Whether `job` has a wake-up due by `now` (its evaluation runs anyway).
fn wake_due(txn: &WriteTxn<'_, '_>, t: &Tables, job: &JobId, now: i64) -> Result<bool, StoreError> {
    Ok(txn
        .get(t.evaluations, wake_id(job).as_str())?
        .is_some_and(|e| e.wait_until <= now))
}

/// Asks for an evaluation of every waiting job now (a node joined or was approved). Costs one counter read
/// when nothing waits.
pub(crate) fn wake_waiting(txn: &mut WriteTxn<'_, '_>, t: &Tables) -> Result<bool, StoreError> {
    if txn.count(t.waiting)? == 0 {
        return Ok(false);
    }
    for (_, job_id) in txn.all(t.waiting)? {
        if let Some(job) = txn.get(t.jobs, job_id.as_str())? {
            schedule_wake(txn, t, &job, 0)?;
        }
    }
    Ok(true)
}

/// Asks the node running `e` to stop it (unless it already ended or was asked): desired state Stopped
/// (`why` says why) and a durable CancelExecution carrying `reason` for the node's report.
pub(crate) fn stop_execution(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    outbox: &crate::outbox::Outbox,
    mut e: Execution,
    why: &str,
    reason: &str,
    after: &mut AfterCommit,
) -> Result<(), StoreError> {
    if e.is_terminal() || e.desired_state.state_type == ExecutionDesiredStateType::Stopped {
        return Ok(());
    }
    e.desired_state = State::new(ExecutionDesiredStateType::Stopped, why);
    let stored = Some(e.compute_state.state_type);
    state::save_execution(txn, t, &mut e, stored)?;
    let cancel = Message::CancelExecution {
        execution_id: e.id.clone(),
        reason: reason.to_owned(),
    };
    outbox.enqueue(txn, &e.node_id, cancel)?;
    after.kick.push(e.node_id);
    Ok(())
}

/// Lists jobs newest first (or oldest first with `reverse`), offset-paged.
pub(crate) fn list(
    txn: &impl Reader,
    t: &Tables,
    namespace: &str,
    limit: usize,
    offset: usize,
    reverse: bool,
) -> Result<(Vec<Job>, Option<usize>), StoreError> {
    let mut jobs: Vec<Job> = txn
        .all(t.jobs)?
        .into_iter()
        .map(|(_, j)| j)
        .filter(|j| namespace == "*" || j.namespace == namespace)
        .collect();
    jobs.sort_by(|a, b| {
        b.create_time
            .cmp(&a.create_time)
            .then_with(|| a.id.cmp(&b.id))
    });
    if reverse {
        jobs.reverse();
    }
    let total = jobs.len();
    let items: Vec<Job> = jobs.into_iter().skip(offset).take(limit).collect();
    let next = (offset + items.len() < total).then_some(offset + items.len());
    Ok((items, next))
}

/// Results of a job's completed executions.
pub(crate) fn results(execs: &[Execution]) -> Vec<SpecConfig> {
    execs
        .iter()
        .filter(|e| {
            e.compute_state.state_type == ExecutionStateType::Completed
                && !e.published_result.is_empty()
        })
        .map(|e| e.published_result.clone())
        .collect()
}

/// Marks the job's membership change for a node.
pub(crate) fn membership_for(action: NodeAction) -> Option<NodeMembership> {
    match action {
        NodeAction::Approve => Some(NodeMembership::Approved),
        NodeAction::Reject => Some(NodeMembership::Rejected),
        NodeAction::Delete => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeInfo, NodeState};

    fn registry_with(node: &str) -> (Registry, NodeId) {
        let registry = Registry::default();
        registry.connected(NodeState {
            info: NodeInfo {
                node_id: node.to_owned().into(),
                ..Default::default()
            },
            membership: NodeMembership::Approved,
            ..Default::default()
        });
        (registry, node.to_owned().into())
    }

    fn cpu(c: f64) -> Resources {
        Resources {
            cpu: c,
            ..Default::default()
        }
    }

    fn allocated(after: &AfterCommit) -> f64 {
        after.candidates()[0].allocated.cpu
    }

    #[test]
    fn capacity_moves_at_once_so_the_next_decision_sees_it() {
        let (registry, node) = registry_with("a");
        registry.allocate(&node, &cpu(2.0), false);
        let mut after = AfterCommit::new(registry.clone());
        after.hold(node.clone(), cpu(1.0));
        assert_eq!(allocated(&after), 3.0);
        after.release(node.clone(), cpu(2.0));
        // A second transaction of the same batch plans against both changes.
        let second = AfterCommit::new(registry.clone());
        assert_eq!(allocated(&second), 1.0);
    }

    #[test]
    fn a_release_wakes_only_the_waiting_jobs_it_can_serve_in_queue_order() {
        use scheduler::testing;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path(), &Default::default()).expect("store");
        let t = Tables::open(&store).expect("tables");
        let settings = Settings::default();
        let waiting = |id: &str, extra: &str, created: i64| {
            let mut j = testing::job("batch", extra);
            j.id = JobId::from(id.to_owned());
            j.create_time = created;
            j
        };
        let mut gpu = waiting("j-gpu", "Priority: 9\n", 1);
        gpu.tasks[0].resources.gpu = "1".into();
        let jobs = vec![
            gpu,
            waiting(
                "j-far",
                "Priority: 7\nConstraints: [{Key: zone, Operator: '=', Values: [far]}]\n",
                2,
            ),
            waiting("j-high", "Priority: 5\n", 3),
            waiting("j-old", "", 4),
            waiting("j-new", "", 5),
            waiting("j-newest", "", 6),
        ];
        let seeded = jobs.clone();
        store
            .write_sync(move |txn| {
                for j in &seeded {
                    txn.put(t.jobs, j.id.as_str(), j)?;
                    set_waiting(txn, &t, j, true)?;
                }
                Ok(())
            })
            .expect("seed");
        // The node is full but for what the ended execution held.
        let release = |allocated: f64, freed: f64| {
            let mut node = testing::node("a", &[]);
            node.allocated = cpu(allocated);
            let freed = Resources {
                memory: 64_000_000 * 4,
                ..cpu(freed)
            };
            store
                .write_sync(move |txn| wake_for_freed(txn, &t, Some(node), freed, &settings))
                .expect("wake")
        };
        let due = || -> Vec<String> {
            store
                .read_sync(move |txn| txn.all(t.evaluations))
                .expect("evaluations")
                .into_iter()
                .filter(|(_, e)| e.wait_until == 0)
                .map(|(_, e)| e.job_id.to_string())
                .collect()
        };
        // One slot: the first job in queue order that this node can take (not the GPU job, not the one
        // constrained elsewhere), and no other.
        assert_eq!(release(1.9, 0.1), Some(1));
        assert_eq!(due(), ["j-high"]);
        // Two slots: j-high is due already and not charged, so the next two are woken, and not the third.
        assert_eq!(release(1.8, 0.2), Some(2));
        let mut woken = due();
        woken.sort();
        assert_eq!(woken, ["j-high", "j-new", "j-old"]);
        assert_eq!(release(1.9, 0.1), Some(1));
        assert_eq!(due().len(), 4);
        // A node gone wakes nothing; an empty queue says so.
        assert_eq!(
            store
                .write_sync(move |txn| wake_for_freed(txn, &t, None, cpu(1.0), &settings))
                .expect("wake"),
            Some(0)
        );
        store
            .write_sync(move |txn| {
                for j in &jobs {
                    set_waiting(txn, &t, j, false)?;
                }
                Ok(())
            })
            .expect("drain");
        assert_eq!(release(1.9, 0.1), None);
    }

    #[test]
    fn an_uncommitted_transaction_gives_its_capacity_back() {
        let (registry, node) = registry_with("a");
        registry.allocate(&node, &cpu(2.0), false);
        let mut failed = AfterCommit::new(registry.clone());
        failed.hold(node.clone(), cpu(1.0));
        failed.release(node.clone(), cpu(2.0));
        failed.hold(node.clone(), cpu(0.5));
        drop(failed);
        assert_eq!(registry.candidates()[0].allocated.cpu, 2.0);
    }
}
