//! The orchestrator's gauges for `/metrics`: jobs and executions by state, pending evaluations, outbox depth
//! and nodes by connection and membership, plus rendering them with the event counters of
//! [`crate::metrics::ORCHESTRATOR`].
//!
//! Jobs and executions by state are counted **in the store, in the transaction that changes them**
//! ([`job_saved`] and [`execution_saved`] are called by `state::save_job` / `save_execution`): keys
//! `metrics/job/<State>` and `metrics/execution/<State>` of the `counters` table. So the counts are exact
//! across aborted transactions, group commits and restarts, and a scrape reads about twenty small keys
//! instead of scanning tables that grow with every job. The caller says which state the stored record has
//! (it loaded the record, so it knows; no read on the hot path), and only when the state changed do two
//! counter updates join the same transaction (no extra commit, so no extra fsync). Debug builds read the
//! stored state back and assert the caller was right, so the tests check every call site.
//!
//! A database written before these counters existed is counted once, at start-up ([`Seed`], in the same pass
//! over the executions as the node index: `state::derive_missing`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::metrics::exposition::{Encoder, Kind};
use crate::metrics::{ORCHESTRATOR, OutboxGauges, RequestKind};
use crate::model::{
    Execution, ExecutionStateType, Job, JobState, JobStateType, NodeConnection, NodeMembership,
    State,
};
use crate::store::{Reader, Store, StoreError, Table, WriteTxn};

use super::state::Tables;
use super::{Orchestrator, OrchestratorError};

const JOB_PREFIX: &str = "metrics/job/";
const EXECUTION_PREFIX: &str = "metrics/execution/";
/// Present once the counters describe every stored record.
const SEEDED: &str = "metrics/seeded";

/// Only the state of a stored job (the rest of the record is skipped, not built).
#[derive(Debug, Deserialize)]
pub(crate) struct JobProbe {
    #[serde(rename = "State", default)]
    pub state: JobState,
}

/// Only the node and compute state of a stored execution.
#[derive(Debug, Deserialize)]
pub(crate) struct ExecutionProbe {
    #[serde(rename = "NodeID", default)]
    pub node_id: crate::model::NodeId,
    #[serde(rename = "ComputeState", default)]
    pub compute_state: State<ExecutionStateType>,
}

/// Views of the jobs and executions tables that decode only the state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probes {
    pub jobs: Table<JobProbe>,
    pub executions: Table<ExecutionProbe>,
}

impl Probes {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            jobs: store.table("orchestrator.jobs")?,
            executions: store.table("orchestrator.executions")?,
        })
    }
}

fn job_state_name(s: JobStateType) -> String {
    s.to_string()
}

fn bump(txn: &mut WriteTxn<'_, '_>, t: &Tables, key: &str, up: bool) -> Result<(), StoreError> {
    let n = txn.get(t.counters, key)?.unwrap_or(0);
    let n = if up { n + 1 } else { n.saturating_sub(1) };
    txn.put(t.counters, key, &n)
}

/// Moves `job` between state counts; call before the job is written. `stored` is the state of the record
/// in the store (`None`: a new job).
pub(crate) fn job_saved(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &Job,
    stored: Option<JobStateType>,
) -> Result<(), StoreError> {
    #[cfg(debug_assertions)]
    {
        let actual = txn
            .get(t.probes.jobs, job.id.as_str())?
            .map(|p| p.state.state_type);
        assert_eq!(stored, actual, "job {}: stored state misreported", job.id);
    }
    let old = stored;
    let new = job.state.state_type;
    if old == Some(new) {
        return Ok(());
    }
    if let Some(old) = old {
        bump(
            txn,
            t,
            &format!("{JOB_PREFIX}{}", job_state_name(old)),
            false,
        )?;
    }
    bump(
        txn,
        t,
        &format!("{JOB_PREFIX}{}", job_state_name(new)),
        true,
    )
}

/// Moves `exec` between state counts; call before the execution is written. `stored` is the compute state
/// of the record in the store (`None`: a new execution).
pub(crate) fn execution_saved(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    exec: &Execution,
    stored: Option<ExecutionStateType>,
) -> Result<(), StoreError> {
    #[cfg(debug_assertions)]
    {
        let actual = txn
            .get(
                t.probes.executions,
                &super::state::exec_key(&exec.job_id, &exec.id),
            )?
            .map(|p| p.compute_state.state_type);
        assert_eq!(
            stored, actual,
            "execution {}: stored state misreported",
            exec.id
        );
    }
    let old = stored;
    let new = exec.compute_state.state_type;
    if old == Some(new) {
        return Ok(());
    }
    if let Some(old) = old {
        bump(txn, t, &format!("{EXECUTION_PREFIX}{}", old.name()), false)?;
    }
    bump(txn, t, &format!("{EXECUTION_PREFIX}{}", new.name()), true)
}

/// Whether the counters describe every stored record (a database from before them, or a new one, has none).
pub(crate) fn seeded(txn: &impl Reader, t: &Tables) -> Result<bool, StoreError> {
    Ok(txn.get(t.counters, SEEDED)?.is_some())
}

/// The counts of a database that has none, gathered while the caller scans the tables once.
#[derive(Debug, Default)]
pub(crate) struct Seed {
    counts: BTreeMap<String, u64>,
}

impl Seed {
    pub fn job(&mut self, s: JobStateType) {
        *self
            .counts
            .entry(format!("{JOB_PREFIX}{}", job_state_name(s)))
            .or_default() += 1;
    }

    pub fn execution(&mut self, s: ExecutionStateType) {
        *self
            .counts
            .entry(format!("{EXECUTION_PREFIX}{}", s.name()))
            .or_default() += 1;
    }

    /// Stores the counts of every job and execution (each passed once) and marks the counters seeded.
    pub fn store(self, txn: &mut WriteTxn<'_, '_>, t: &Tables) -> Result<(), StoreError> {
        for (key, n) in self.counts {
            txn.put(t.counters, &key, &n)?;
        }
        txn.put(t.counters, SEEDED, &1)
    }
}

/// What a scrape reports from the orchestrator's state.
#[derive(Debug, Default)]
pub struct OrchestratorGauges {
    /// Jobs per state name.
    pub jobs: BTreeMap<String, u64>,
    /// Executions per state name.
    pub executions: BTreeMap<String, u64>,
    /// Evaluations waiting to run (one per queued job, plus re-evaluations).
    pub evaluations: u64,
    /// The outbox to compute nodes.
    pub outbox: OutboxGauges,
    /// Nodes per (connection, membership).
    pub nodes: BTreeMap<(&'static str, &'static str), u64>,
}

impl Orchestrator {
    /// The orchestrator's gauges: a bounded read (a few dozen keys and O(1) table sizes) plus one pass over
    /// the in-memory node registry.
    pub async fn metrics(&self) -> Result<OrchestratorGauges, OrchestratorError> {
        let t = self.inner.tables;
        let outbox = self.inner.outbox.clone();
        let mut gauges = self
            .inner
            .store
            .read(move |txn| {
                let mut g = OrchestratorGauges::default();
                for s in [
                    JobStateType::Pending,
                    JobStateType::Queued,
                    JobStateType::Running,
                    JobStateType::Completed,
                    JobStateType::Failed,
                    JobStateType::Stopped,
                ] {
                    g.jobs.insert(job_state_name(s), 0);
                }
                for s in [
                    ExecutionStateType::AskForBid,
                    ExecutionStateType::BidAccepted,
                    ExecutionStateType::Running,
                    ExecutionStateType::Completed,
                    ExecutionStateType::Failed,
                    ExecutionStateType::Cancelled,
                ] {
                    g.executions.insert(s.name().to_owned(), 0);
                }
                for (key, n) in txn.prefix(t.counters, JOB_PREFIX)? {
                    g.jobs.insert(key[JOB_PREFIX.len()..].to_owned(), n);
                }
                for (key, n) in txn.prefix(t.counters, EXECUTION_PREFIX)? {
                    g.executions
                        .insert(key[EXECUTION_PREFIX.len()..].to_owned(), n);
                }
                g.evaluations = txn.count(t.evaluations)?;
                g.outbox.messages = outbox.pending_messages(txn)?;
                Ok(g)
            })
            .await?;
        gauges.outbox.role = "orchestrator";
        gauges.outbox.peers_pending = self.inner.outbox.peers_pending();
        gauges.nodes = self.inner.registry.counts();
        Ok(gauges)
    }
}

/// Writes the orchestrator's families.
pub fn render(e: &mut Encoder, g: &OrchestratorGauges) {
    e.family("cod_jobs", "Jobs by state", Kind::Gauge);
    for (state, n) in &g.jobs {
        e.count("cod_jobs", &[("state", state)], *n);
    }
    e.family("cod_executions", "Executions by compute state", Kind::Gauge);
    for (state, n) in &g.executions {
        e.count("cod_executions", &[("state", state)], *n);
    }
    e.family(
        "cod_jobs_queued",
        "Jobs waiting for a matching node (the scheduling queue)",
        Kind::Gauge,
    );
    e.count(
        "cod_jobs_queued",
        &[],
        g.jobs
            .get(&job_state_name(JobStateType::Queued))
            .copied()
            .unwrap_or(0),
    );
    e.family(
        "cod_evaluations_pending",
        "Evaluations waiting to run (queued jobs are evaluated again when they are due)",
        Kind::Gauge,
    );
    e.count("cod_evaluations_pending", &[], g.evaluations);
    e.family(
        "cod_nodes",
        "Compute nodes known to the orchestrator, by connection and membership",
        Kind::Gauge,
    );
    for connection in [NodeConnection::Connected, NodeConnection::Disconnected] {
        for membership in [
            NodeMembership::Pending,
            NodeMembership::Approved,
            NodeMembership::Rejected,
        ] {
            let (connection, membership) = (connection.as_str(), membership.as_str());
            let n = g.nodes.get(&(connection, membership)).copied().unwrap_or(0);
            e.count(
                "cod_nodes",
                &[("connection", connection), ("membership", membership)],
                n,
            );
        }
    }
    e.family(
        "cod_jobs_submitted_total",
        "Jobs accepted by this orchestrator since it started",
        Kind::Counter,
    );
    e.count(
        "cod_jobs_submitted_total",
        &[],
        ORCHESTRATOR.jobs_submitted.get(),
    );
    e.family(
        "cod_orchestrator_bids_total",
        "Bid results received from compute nodes, by outcome",
        Kind::Counter,
    );
    e.count(
        "cod_orchestrator_bids_total",
        &[("outcome", "accepted")],
        ORCHESTRATOR.bids_accepted.get(),
    );
    e.count(
        "cod_orchestrator_bids_total",
        &[("outcome", "rejected")],
        ORCHESTRATOR.bids_rejected.get(),
    );
    e.family(
        "cod_orchestrator_request_duration_seconds",
        "Time to handle a request from a compute node, by kind",
        Kind::Histogram,
    );
    for (kind, h) in RequestKind::ALL.iter().zip(&ORCHESTRATOR.request_seconds) {
        e.histogram(
            "cod_orchestrator_request_duration_seconds",
            &[("kind", kind.label())],
            h,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobId;
    use crate::orchestrator::state;

    fn counts(store: &Store, t: &Tables) -> BTreeMap<String, u64> {
        store
            .read_sync(|txn| txn.prefix(t.counters, "metrics/"))
            .expect("read")
            .into_iter()
            .collect()
    }

    #[test]
    fn counts_follow_committed_transitions_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &crate::store::Config::default()).expect("store");
        let t = Tables::open(&store).expect("tables");
        store
            .write_sync(move |txn| state::derive_missing(txn, &t))
            .expect("seed");
        let mut job = Job {
            id: JobId::generate(),
            ..Default::default()
        };
        job.state.state_type = JobStateType::Pending;
        let mut job = store
            .write_sync(move |txn| state::save_job(txn, &t, &mut job, None).map(|()| job))
            .expect("save");
        job.state.state_type = JobStateType::Running;
        let job = store
            .write_sync(move |txn| {
                state::save_job(txn, &t, &mut job, Some(JobStateType::Pending))?;
                // Saving again without a state change counts nothing.
                state::save_job(txn, &t, &mut job, Some(JobStateType::Running)).map(|()| job)
            })
            .expect("save");
        // An aborted transaction leaves the counts as they were.
        let mut done = job.clone();
        done.state.state_type = JobStateType::Completed;
        let aborted = store.write_sync(move |txn| {
            state::save_job(txn, &t, &mut done, Some(JobStateType::Running))?;
            Err::<(), _>(StoreError::Aborted("no".into()))
        });
        assert!(aborted.is_err());
        let c = counts(&store, &t);
        assert_eq!(c.get("metrics/job/Pending"), Some(&0));
        assert_eq!(c.get("metrics/job/Running"), Some(&1));
        assert_eq!(c.get("metrics/job/Completed"), None);

        // A database from before the counters is counted once at start-up.
        store
            .write_sync(move |txn| {
                txn.delete_prefix_through(t.counters, "metrics/", "metrics/~")
                    .map(|_| ())
            })
            .expect("wipe");
        store
            .write_sync(move |txn| state::derive_missing(txn, &t))
            .expect("seed");
        store
            .write_sync(move |txn| state::derive_missing(txn, &t))
            .expect("seed again");
        let c = counts(&store, &t);
        assert_eq!(c.get("metrics/job/Running"), Some(&1), "{c:?}");
        assert_eq!(c.get("metrics/job/Pending"), None, "{c:?}");
    }

    #[test]
    fn probes_read_only_the_state() {
        let job: JobProbe =
            serde_json::from_str(r#"{"ID":"j-1","State":{"StateType":"Running"},"Tasks":[]}"#)
                .expect("decodes");
        assert_eq!(job.state.state_type, JobStateType::Running);
        let stored = Execution {
            compute_state: State::new(ExecutionStateType::Completed, "done"),
            ..Default::default()
        };
        let text = serde_json::to_string(&stored).expect("encodes");
        let exec: ExecutionProbe = serde_json::from_str(&text).expect("decodes");
        assert_eq!(exec.compute_state.state_type, ExecutionStateType::Completed);
    }
}
