//! The orchestrator's tables and the small helpers that keep their keys consistent.
//!
//! Keys: `jobs` by job id; `job_names` by `<namespace>/<name>`; `executions` by `<job id>/<execution id>` (a
//! prefix scan lists a job's executions, and compute messages carry both ids); `history` by
//! `<job id>/<seq:020>`; `evaluations` by evaluation id; `nodes` by node id; `counters` for history sequence
//! numbers (`hist/<job id>`); `waiting` indexes the jobs to evaluate again when a node joins or capacity frees
//! (queued jobs and daemon jobs), keyed by [`waiting_key`] so a scan yields them highest priority first and
//! nothing has to scan the job table.

use crate::model::{
    Evaluation, Event, Execution, ExecutionId, HistoryType, Job, JobHistory, JobId, NodeId,
    NodeState, now_nanos,
};
use crate::store::{Reader, Store, StoreError, Table, WriteTxn};

/// The orchestrator's tables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tables {
    pub jobs: Table<Job>,
    pub job_names: Table<JobId>,
    pub executions: Table<Execution>,
    pub history: Table<JobHistory>,
    pub evaluations: Table<Evaluation>,
    pub nodes: Table<NodeState>,
    pub counters: Table<u64>,
    /// State-only views of `jobs` and `executions`, for the state counts of `/metrics`.
    pub probes: super::metrics::Probes,
    /// Index of active executions by node: `<node id>/<job id>/<execution id>` (the execution's key after the
    /// node id), so a node's handshake or loss reads that node's work, not every execution.
    pub node_executions: Table<u8>,
    /// Jobs to evaluate again when a node joins or capacity frees, highest priority first.
    pub waiting: Table<JobId>,
}

impl Tables {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            jobs: store.table("orchestrator.jobs")?,
            job_names: store.table("orchestrator.job_names")?,
            executions: store.table("orchestrator.executions")?,
            history: store.table("orchestrator.history")?,
            evaluations: store.table("orchestrator.evaluations")?,
            nodes: store.table("orchestrator.nodes")?,
            counters: store.table("orchestrator.counters")?,
            probes: super::metrics::Probes::open(store)?,
            node_executions: store.table("orchestrator.node_executions")?,
            waiting: store.table("orchestrator.waiting")?,
        })
    }
}

pub(crate) fn name_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The `waiting` key of `job`: priority descending, then oldest first. Depends only on fields an update keeps
/// or rewrites with the key (see `jobs::submit`), so the owner can always delete it.
pub(crate) fn waiting_key(job: &Job) -> String {
    // Map i64 priority onto u64 so that higher priorities sort first as text.
    let inverted = u64::try_from(i128::from(i64::MAX) - i128::from(job.priority)).unwrap_or(0);
    format!("{inverted:020}/{:020}/{}", job.create_time.max(0), job.id)
}

pub(crate) fn exec_key(job: &JobId, exec: &ExecutionId) -> String {
    format!("{job}/{exec}")
}

/// A job's executions, oldest first by creation time.
pub(crate) fn executions_of(
    txn: &impl Reader,
    t: &Tables,
    job: &JobId,
) -> Result<Vec<Execution>, StoreError> {
    let mut execs: Vec<Execution> = txn
        .prefix(t.executions, &format!("{job}/"))?
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    execs.sort_by_key(|e| e.create_time);
    Ok(execs)
}

/// Appends a history record for `job` (and `execution`, for execution-level events).
pub(crate) fn record(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &Job,
    execution: Option<&ExecutionId>,
    event: Event,
) -> Result<(), StoreError> {
    let counter = format!("hist/{}", job.id);
    let seq = txn.get(t.counters, &counter)?.unwrap_or(0) + 1;
    txn.put(t.counters, &counter, &seq)?;
    let entry = JobHistory {
        seq_num: seq,
        kind: if execution.is_some() {
            HistoryType::ExecutionLevel
        } else {
            HistoryType::JobLevel
        },
        job_id: job.id.clone(),
        job_version: job.version,
        execution_id: execution.cloned(),
        time: event.timestamp.clone(),
        event,
    };
    txn.put(t.history, &format!("{}/{seq:020}", job.id), &entry)
}

/// Stores `job` with its revision bumped.
pub(crate) fn save_job(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &mut Job,
) -> Result<(), StoreError> {
    super::metrics::job_saved(txn, t, job)?;
    job.revision += 1;
    job.modify_time = now_nanos();
    txn.put(t.jobs, job.id.as_str(), job)
}

/// Stores `exec` with its revision bumped.
pub(crate) fn save_execution(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    exec: &mut Execution,
) -> Result<(), StoreError> {
    super::metrics::execution_saved(txn, t, exec)?;
    exec.revision += 1;
    exec.modify_time = now_nanos();
    let key = exec_key(&exec.job_id, &exec.id);
    let indexed = format!("{}/{key}", exec.node_id);
    if exec.is_terminal() {
        txn.delete(t.node_executions, &indexed)?;
    } else {
        txn.put(t.node_executions, &indexed, &0)?;
    }
    txn.put(t.executions, &key, exec)
}

/// The executions active (not terminal) on `node`, through the index.
pub(crate) fn active_on_node(
    txn: &impl Reader,
    t: &Tables,
    node: &NodeId,
) -> Result<Vec<Execution>, StoreError> {
    let prefix = format!("{node}/");
    let mut out = Vec::new();
    for (indexed, _) in txn.prefix(t.node_executions, &prefix)? {
        if let Some(e) = txn.get(t.executions, &indexed[prefix.len()..])?
            && !e.is_terminal()
        {
            out.push(e);
        }
    }
    Ok(out)
}

/// Rebuilds the node index from the executions (at start-up: a state written by an older release has none,
/// and a rebuilt index cannot drift).
pub(crate) fn rebuild_node_index(txn: &mut WriteTxn<'_, '_>, t: &Tables) -> Result<(), StoreError> {
    for (key, _) in txn.all(t.node_executions)? {
        txn.delete(t.node_executions, &key)?;
    }
    for (key, e) in txn.all(t.executions)? {
        if !e.is_terminal() {
            txn.put(t.node_executions, &format!("{}/{key}", e.node_id), &0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_keys_sort_highest_priority_then_oldest_first() {
        let job = |id: &str, priority: i64, created: i64| Job {
            id: JobId::from(id.to_owned()),
            priority,
            create_time: created,
            ..Default::default()
        };
        let mut keys = [
            waiting_key(&job("low-old", -5, 1)),
            waiting_key(&job("mid-new", 0, 9)),
            waiting_key(&job("top", i64::MAX, 50)),
            waiting_key(&job("mid-old", 0, 2)),
            waiting_key(&job("bottom", i64::MIN, 0)),
        ];
        keys.sort();
        let order: Vec<&str> = keys
            .iter()
            .map(|k| k.rsplit('/').next().unwrap_or_default())
            .collect();
        assert_eq!(order, ["top", "mid-old", "mid-new", "low-old", "bottom"]);
    }
}
