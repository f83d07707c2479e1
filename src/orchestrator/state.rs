//! The orchestrator's tables and the small helpers that keep their keys consistent.
//!
//! Keys: `jobs` by job id; `job_names` by `<namespace>/<name>`; `executions` by `<job id>/<execution id>` (a
//! prefix scan lists a job's executions, and compute messages carry both ids); `history` by
//! `<job id>/<seq:020>`; `evaluations` by evaluation id; `nodes` by node id; `counters` for the metrics' state
//! counts; `waiting` indexes the jobs to evaluate again when a node joins or capacity frees
//! (queued jobs and daemon jobs), keyed by [`waiting_key`] so a scan yields them highest priority first and
//! nothing has to scan the job table.

use super::jobs::AfterCommit;
use crate::model::{
    Evaluation, Event, Execution, ExecutionId, ExecutionStateType, HistoryType, Job, JobHistory,
    JobId, JobStateType, NodeId, NodeState, now_nanos,
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

/// Appends a history record for `job` (and `execution`, for execution-level events); `after` rings the
/// job's bell once the commit is durable.
pub(crate) fn record(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &Job,
    execution: Option<&ExecutionId>,
    event: Event,
    after: &mut AfterCommit,
) -> Result<(), StoreError> {
    after.history_of(&job.id);
    // The next number follows the job's last record: read, not a counter written beside every record (that
    // was one more put per record, in a page of its own for every job in a commit).
    let prefix = format!("{}/", job.id);
    let last = match txn.last_key(t.history, &prefix)? {
        None => 0,
        // Only this function writes these keys; one without a number is damage, not a fresh start (which
        // would overwrite the job's first record).
        Some(key) => key[prefix.len()..]
            .parse::<u64>()
            .map_err(|e| StoreError::Corrupt {
                table: t.history.name(),
                source: serde::de::Error::custom(format!("history key without a number: {e}")),
                key,
            })?,
    };
    let seq = last + 1;
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

/// Stores `job` with its revision bumped. `stored` is the state the stored record has (`None`: new job),
/// for the state counts.
pub(crate) fn save_job(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    job: &mut Job,
    stored: Option<JobStateType>,
) -> Result<(), StoreError> {
    super::metrics::job_saved(txn, t, job, stored)?;
    job.revision += 1;
    job.modify_time = now_nanos();
    txn.put(t.jobs, job.id.as_str(), job)
}

/// Stores `exec` with its revision bumped. `stored` is the compute state the stored record has (`None`: new
/// execution), for the state counts.
pub(crate) fn save_execution(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    exec: &mut Execution,
    stored: Option<ExecutionStateType>,
) -> Result<(), StoreError> {
    super::metrics::execution_saved(txn, t, exec, stored)?;
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

/// Marks the node index as describing every stored execution. `save_execution` keeps it in step in the
/// same transaction, so once built it is kept, not rebuilt at every start.
const NODE_INDEX_BUILT: &str = "index/node_executions";

/// The key prefix of the per-job history counters that stores before this version kept in `counters`.
const HISTORY_COUNTERS: &str = "hist/";

/// Builds what is derived from the stored records and then kept durable (the state counts of `/metrics`,
/// the node index), for a database that lacks them: a new one, or one written by an older release, whose
/// history counters it also drops. One pass over the executions, decoding only their node and state; when
/// both exist, only a seek for leftover counters, so a start does not grow with the number of jobs ever run.
pub(crate) fn derive_missing(txn: &mut WriteTxn<'_, '_>, t: &Tables) -> Result<(), StoreError> {
    // History counters of stores written before the numbers were read from the history itself: dead weight.
    // One range delete; none left after the first open.
    txn.delete_prefix_through(
        t.counters,
        HISTORY_COUNTERS,
        &format!("{HISTORY_COUNTERS}~"),
    )?;
    let mut seed = (!super::metrics::seeded(txn, t)?).then(super::metrics::Seed::default);
    let index = txn.get(t.counters, NODE_INDEX_BUILT)?.is_none();
    if seed.is_none() && !index {
        return Ok(());
    }
    if index {
        for (key, _) in txn.all(t.node_executions)? {
            txn.delete(t.node_executions, &key)?;
        }
    }
    for (key, e) in txn.all(t.probes.executions)? {
        let state = e.compute_state.state_type;
        if let Some(seed) = &mut seed {
            seed.execution(state);
        }
        if index && !state.is_terminal() {
            txn.put(t.node_executions, &format!("{}/{key}", e.node_id), &0)?;
        }
    }
    if let Some(mut seed) = seed {
        for (_, j) in txn.all(t.probes.jobs)? {
            seed.job(j.state.state_type);
        }
        seed.store(txn, t)?;
    }
    if index {
        txn.put(t.counters, NODE_INDEX_BUILT, &1)?;
    }
    Ok(())
}

/// Every active execution, through the node index (not a scan of every execution ever run).
pub(crate) fn all_active(txn: &impl Reader, t: &Tables) -> Result<Vec<Execution>, StoreError> {
    let mut out = Vec::new();
    for (indexed, _) in txn.all(t.node_executions)? {
        // `<node id>/<execution key>`; node ids hold no `/`.
        let Some((_, key)) = indexed.split_once('/') else {
            continue;
        };
        if let Some(e) = txn.get(t.executions, key)?
            && !e.is_terminal()
        {
            out.push(e);
        }
    }
    Ok(out)
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

    /// Stores `n` jobs of one execution each on `node`, every third still running, bypassing the index and
    /// the counts (as a database from an older release has them).
    fn old_database(store: &Store, t: Tables, n: usize) {
        store
            .write_sync(move |txn| {
                for i in 0..n {
                    let job = Job {
                        id: JobId::from(format!("j-{i:06}")),
                        ..Default::default()
                    };
                    let state = if i % 3 == 0 {
                        ExecutionStateType::Running
                    } else {
                        ExecutionStateType::Completed
                    };
                    let exec = Execution {
                        id: ExecutionId::from(format!("e-{i:06}")),
                        job_id: job.id.clone(),
                        node_id: NodeId::from("node-a".to_owned()),
                        compute_state: crate::model::State::new(state, ""),
                        ..Default::default()
                    };
                    txn.put(t.jobs, job.id.as_str(), &job)?;
                    txn.put(t.executions, &exec_key(&exec.job_id, &exec.id), &exec)?;
                }
                Ok(())
            })
            .expect("populate");
    }

    #[test]
    fn derived_tables_are_built_once_and_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Default::default()).expect("store");
        let t = Tables::open(&store).expect("tables");
        old_database(&store, t, 30);
        store
            .write_sync(move |txn| derive_missing(txn, &t))
            .expect("derive");
        let active = store.read_sync(|txn| all_active(txn, &t)).expect("read");
        assert_eq!(active.len(), 10);
        let node = NodeId::from("node-a".to_owned());
        let on_node = store
            .read_sync(|txn| active_on_node(txn, &t, &node))
            .expect("read");
        assert_eq!(on_node.len(), 10);
        // Once built, a start derives nothing: a stale entry planted now survives it (only saves change the
        // index, in the transaction that changes the execution).
        store
            .write_sync(move |txn| {
                txn.put(t.node_executions, "node-b/j-x/e-x", &0)?;
                derive_missing(txn, &t)
            })
            .expect("derive again");
        let entries = store
            .read_sync(|txn| txn.count(t.node_executions))
            .expect("count");
        assert_eq!(entries, 11);
        let c = store
            .read_sync(|txn| txn.prefix(t.counters, "metrics/execution/"))
            .expect("counts");
        assert!(
            c.contains(&("metrics/execution/Running".to_owned(), 10)),
            "{c:?}"
        );
        assert!(
            c.contains(&("metrics/execution/Completed".to_owned(), 20)),
            "{c:?}"
        );
    }

    /// History numbers continue from the job's own last record, per job (`j-1` is a prefix of `j-10`'s id,
    /// not of its keys); an older store's counters are dropped at open and its numbering goes on unbroken.
    #[test]
    fn history_numbers_follow_each_jobs_last_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Default::default()).expect("store");
        let t = Tables::open(&store).expect("tables");
        let job = |id: &str| Job {
            id: JobId::from(id.to_owned()),
            ..Default::default()
        };
        // A record as written straight to the table.
        let stored = |job: &Job, seq: u64| JobHistory {
            seq_num: seq,
            kind: HistoryType::JobLevel,
            job_id: job.id.clone(),
            job_version: 1,
            execution_id: None,
            time: String::new(),
            event: Event::new("Test", "stored"),
        };
        // As an older release left it: two records of j-1 and their counter.
        let (a, b) = (job("j-1"), job("j-10"));
        let old = a.clone();
        store
            .write_sync(move |txn| {
                for seq in 1..=2u64 {
                    txn.put(t.history, &format!("j-1/{seq:020}"), &stored(&old, seq))?;
                }
                txn.put(t.counters, "hist/j-1", &2)
            })
            .expect("old store");
        store
            .write_sync(move |txn| derive_missing(txn, &t))
            .expect("derive");
        store
            .write_sync(move |txn| {
                let mut after = AfterCommit::new(super::super::registry::Registry::default());
                for j in [&a, &b, &a] {
                    record(txn, &t, j, None, Event::new("Test", "x"), &mut after)?;
                }
                Ok(())
            })
            .expect("record");
        let seqs = |prefix: &'static str| -> Vec<u64> {
            store
                .read_sync(move |txn| txn.prefix(t.history, prefix))
                .expect("read")
                .into_iter()
                .map(|(_, h)| h.seq_num)
                .collect()
        };
        assert_eq!(seqs("j-1/"), [1, 2, 3, 4]);
        assert_eq!(seqs("j-10/"), [1]);
        let left = store
            .read_sync(move |txn| txn.prefix(t.counters, "hist/"))
            .expect("counters");
        assert!(left.is_empty(), "{left:?}");

        // A damaged key is an error, never a restart at 1 over the job's first record.
        let damaged = job("j-2");
        let refused = store.write_sync(move |txn| {
            txn.put(t.history, "j-2/garbage", &stored(&damaged, 0))?;
            let mut after = AfterCommit::new(super::super::registry::Registry::default());
            record(txn, &t, &damaged, None, Event::new("Test", "x"), &mut after)
        });
        assert!(
            matches!(refused, Err(StoreError::Corrupt { .. })),
            "{refused:?}"
        );
    }

    /// Start-up cost with many jobs: `cargo test --lib derive_missing_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn derive_missing_timing() {
        let n: usize = std::env::var("COD_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Default::default()).expect("store");
        let t = Tables::open(&store).expect("tables");
        old_database(&store, t, n);
        let started = std::time::Instant::now();
        store
            .write_sync(move |txn| derive_missing(txn, &t))
            .expect("derive");
        let first = started.elapsed();
        let started = std::time::Instant::now();
        store
            .write_sync(move |txn| derive_missing(txn, &t))
            .expect("derive");
        let store2 = store.clone();
        let active = store2.read_sync(|txn| all_active(txn, &t)).expect("read");
        let later = started.elapsed();
        let started = std::time::Instant::now();
        let scanned = store
            .read_sync(|txn| txn.all(t.executions))
            .expect("scan")
            .len();
        let full_scan = started.elapsed();
        println!(
            "{n} jobs: first start (derive) {first:?}; later starts (derive + active through the index, {} active) {later:?}; one full decode of all {scanned} executions {full_scan:?}",
            active.len()
        );
    }
}
