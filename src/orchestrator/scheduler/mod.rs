//! The scheduler: pure functions from a job, its executions and the candidate nodes to a [`Decision`]. No I/O,
//! so each runs inside the write transaction that applies its decision.
//!
//! One planner per job type (Bacalhau's semantics):
//! - [`batch`]: `Count` partitions, each completed once, on distinct nodes; failures retried elsewhere.
//! - [`ops`]: once on every matching node at the first evaluation; done when they all end, failed by a failure.
//! - [`daemon`]: one execution on every matching node, including nodes that join later; an execution that ends
//!   is replaced on its node; never completes.
//! - [`service`]: keep `Count` executions running on distinct nodes; ended ones are replaced.
//!
//! What they share lives here: which node can take the job and how well ([`rank`]: engine, publisher, input
//! types, hard constraints, per-job limit, capacity with the over-subscription bound, `favour_` constraints,
//! free capacity, previous attempts), the queue/fail rule for work that cannot be placed (`QueueTimeout`), the
//! job deadline (`TotalTimeout`) and the restart backoff of long-running jobs. Only executions of the job's
//! current version count: an update stops the older ones.

pub mod batch;
pub mod daemon;
pub mod ops;
pub mod service;

use std::time::Duration;

pub use crate::model::resources::{JobDefaults, job_resources};
use crate::model::{
    Execution, ExecutionDesiredStateType, ExecutionStateType, InputSpec, Job, JobType,
    NodeConnection, NodeId, NodeMembership, NodeState, PublisherSpec, Resources, constraint,
};

/// A node the scheduler may use, with what is already allocated on it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The node as registered, shared with the registry (a snapshot of 10,000 nodes copies pointers only).
    pub node: std::sync::Arc<NodeState>,
    /// Resources held by its active executions.
    pub allocated: Resources,
}

/// Scheduler settings (from `Orchestrator.*`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Resources for tasks that do not state them.
    pub defaults: JobDefaults,
    /// A node is given work up to its capacity times this (`Orchestrator.OverSubscriptionFactor`, ≥ 1).
    pub over_subscription: f64,
    /// How long a queued job waits before it is evaluated again.
    pub queue_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            defaults: JobDefaults::default(),
            over_subscription: 1.0,
            queue_backoff: Duration::from_secs(10),
        }
    }
}

/// What the scheduler decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The job is done (batch: every partition completed; ops: every execution ended).
    Complete,
    /// Work is placed or running; `place` lists new (partition, node) pairs. `wake_at` (Unix ns) asks for
    /// another evaluation then (a restart held back by the crash-loop backoff).
    Run {
        /// New executions to create.
        place: Vec<(u64, NodeId)>,
        /// Evaluate again at this time.
        wake_at: Option<i64>,
    },
    /// Some work cannot be placed yet; retry later (the queue timeout has not passed).
    Wait {
        /// New executions for the work that could be placed.
        place: Vec<(u64, NodeId)>,
        /// Why the rest waits.
        reason: String,
        /// When the queue timeout passes (Unix ns), so the retry is not later than that.
        deadline: Option<i64>,
    },
    /// The job cannot finish.
    Fail {
        /// Why, naming nodes and their reasons.
        reason: String,
    },
}

/// Plans the next step of `job`, by its type.
pub fn plan(
    job: &Job,
    executions: &[Execution],
    candidates: &[Candidate],
    settings: &Settings,
    now: i64,
) -> Decision {
    let current: Vec<&Execution> = executions
        .iter()
        .filter(|e| e.job_version == job.version)
        .collect();
    if let Some(reason) = total_timeout_passed(job, now) {
        return Decision::Fail { reason };
    }
    match job.job_type {
        JobType::Ops => ops::plan(job, &current, candidates, settings, now),
        JobType::Daemon => daemon::plan(job, &current, candidates, settings, now),
        JobType::Service => service::plan(job, &current, candidates, settings, now),
        JobType::Batch | JobType::Invalid(_) => {
            batch::plan(job, &current, candidates, settings, now)
        }
    }
}

/// Server-owned meta key: when the job's current version was submitted (Unix ns), set by an update.
pub const VERSION_TIME_META: &str = "bacalhau.org/version.createTime";

/// When the job's current version was submitted: its timeouts count from then.
pub fn version_start(job: &Job) -> i64 {
    job.meta
        .get(VERSION_TIME_META)
        .and_then(|v| v.parse().ok())
        .unwrap_or(job.create_time)
}

/// The job's `TotalTimeout` deadline (Unix ns), if it has one.
pub fn total_deadline(job: &Job) -> Option<i64> {
    let total = job.task()?.timeouts.total_timeout;
    (total > 0).then(|| version_start(job).saturating_add(total.saturating_mul(1_000_000_000)))
}

fn total_timeout_passed(job: &Job, now: i64) -> Option<String> {
    let deadline = total_deadline(job)?;
    (now >= deadline).then(|| {
        format!(
            "job exceeded its TotalTimeout of {}s; its executions were stopped",
            job.task().map(|t| t.timeouts.total_timeout).unwrap_or(0)
        )
    })
}

/// True while the execution runs or may run (not ended, not asked to stop).
pub fn active(e: &Execution) -> bool {
    !e.is_terminal() && e.desired_state.state_type != ExecutionDesiredStateType::Stopped
}

/// True when the node declined the execution (its bid policy or the orchestrator's bid check).
pub fn rejected(e: &Execution) -> bool {
    matches!(
        e.compute_state.state_type,
        ExecutionStateType::AskForBidRejected | ExecutionStateType::BidRejected
    )
}

/// "execution X on node Y: message", for reasons shown to the user.
pub fn describe(e: &Execution) -> String {
    format!(
        "execution {} on node {}: {}",
        e.id, e.node_id, e.compute_state.message
    )
}

/// Why `node` cannot take `job`, or its rank if it can.
pub fn rank(
    job: &Job,
    need: &Resources,
    c: &Candidate,
    settings: &Settings,
) -> Result<i64, String> {
    let info = &c.node.info;
    if c.node.membership != NodeMembership::Approved {
        return Err(format!(
            "node is {}",
            c.node.membership.as_str().to_lowercase()
        ));
    }
    if c.node.connection != NodeConnection::Connected {
        return Err("node is disconnected".to_owned());
    }
    let Some(task) = job.task() else {
        return Err("job has no task".to_owned());
    };
    let cni = &info.compute_node_info;
    let engine = task.engine.normalized_kind();
    if !cni
        .execution_engines
        .iter()
        .any(|e| e.eq_ignore_ascii_case(&engine))
    {
        return Err(format!(
            "engine {:?} is not supported (supported: {})",
            task.engine.kind.trim(),
            cni.execution_engines.join(", ")
        ));
    }
    if let Some(p) = PublisherSpec::parse(&task.publisher)
        && !cni
            .publishers
            .iter()
            .any(|x| x.eq_ignore_ascii_case(p.type_name()))
    {
        return Err(format!(
            "publisher {:?} is not supported (supported: {})",
            p.type_name(),
            cni.publishers.join(", ")
        ));
    }
    for input in &task.input_sources {
        if let Ok(spec) = InputSpec::parse(&input.source, "input") {
            let name = spec.type_name().to_owned();
            if !cni
                .storage_sources
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&name))
            {
                return Err(format!(
                    "input type {name:?} is not supported (supported: {})",
                    cni.storage_sources.join(", ")
                ));
            }
        }
    }
    let mut score = 0i64;
    for req in &job.constraints {
        let ok = constraint::matches(req, &info.labels);
        if constraint::is_soft(req) {
            if ok {
                score += 10;
            }
        } else if !ok {
            return Err(format!(
                "does not match constraint {} {} {:?}",
                req.key, req.operator, req.values
            ));
        }
    }
    // GPUs first, with their own message: they are whole devices (over-subscription never applies), and
    // "needs 2 GPUs; node has 1 free" says more than a capacity dump.
    if need.gpu > 0 {
        let total = cni.max_capacity.resources.gpu;
        let free = total.saturating_sub(c.allocated.gpu);
        let s = if need.gpu == 1 { "" } else { "s" };
        if total == 0 {
            return Err(format!("needs {} GPU{s}; node has no GPU", need.gpu));
        }
        if need.gpu > free {
            return Err(format!(
                "needs {} GPU{s}; node has {free} free (of {total})",
                need.gpu
            ));
        }
    }
    if !need.fits_in(&cni.max_job_requirements) {
        return Err(format!(
            "job needs more than the node's per-job limit ({} > {})",
            show(need),
            show(&cni.max_job_requirements)
        ));
    }
    // Over-subscription: the bound is the node's capacity times the factor; the node's own bidder still
    // queues what it cannot run at once.
    let bound = scale(&cni.max_capacity.resources, settings.over_subscription);
    let free = bound.saturating_sub(&c.allocated);
    if !need.fits_in(&free) {
        return Err(format!(
            "not enough free capacity (needs {}, free {})",
            show(need),
            show(&free)
        ));
    }
    // Prefer emptier nodes: up to 100 points for the free share of the scarcer of CPU and memory.
    let share = |free: f64, max: f64| if max <= 0.0 { 1.0 } else { free / max };
    #[allow(clippy::cast_precision_loss)] // a share, precision is irrelevant
    let emptiest = share(free.memory as f64, bound.memory as f64).min(share(free.cpu, bound.cpu));
    #[allow(clippy::cast_possible_truncation)] // 0..=100
    let capacity_points = (emptiest.clamp(0.0, 1.0) * 100.0) as i64;
    Ok(score + capacity_points)
}

fn show(r: &Resources) -> String {
    let mut s = format!("cpu {:.2}, memory {} bytes", r.cpu, r.memory);
    if r.disk > 0 {
        s.push_str(&format!(", disk {} bytes", r.disk));
    }
    if r.gpu > 0 {
        s.push_str(&format!(", gpu {}", r.gpu));
    }
    s
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // factor ≥ 1 and capacities far below 2^52
fn scale(r: &Resources, factor: f64) -> Resources {
    let f = if factor.is_finite() && factor >= 1.0 {
        factor
    } else {
        1.0
    };
    Resources {
        cpu: r.cpu * f,
        memory: (r.memory as f64 * f) as u64,
        disk: (r.disk as f64 * f) as u64,
        // A GPU cannot be shared by over-subscribing it.
        gpu: r.gpu,
    }
}

/// Nodes that can take the job, best first, and every other node's reason. `skip` excludes nodes for a
/// job-type reason (already runs it, failed it) and says why; `penalty` lowers a node's rank.
pub fn ranked(
    job: &Job,
    candidates: &[Candidate],
    settings: &Settings,
    skip: impl Fn(&NodeId) -> Option<&'static str>,
    penalty: impl Fn(&NodeId) -> i64,
) -> (Vec<NodeId>, Vec<String>) {
    let need = job_resources(job, &settings.defaults);
    let mut ok: Vec<(i64, NodeId)> = Vec::new();
    let mut reasons = Vec::new();
    for c in candidates {
        let id = &c.node.info.node_id;
        if let Some(why) = skip(id) {
            reasons.push(format!("node {id}: {why}"));
            continue;
        }
        match rank(job, &need, c, settings) {
            Ok(score) => ok.push((score - penalty(id), id.clone())),
            Err(why) => reasons.push(format!("node {id}: {why}")),
        }
    }
    ok.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    (ok.into_iter().map(|(_, id)| id).collect(), reasons)
}

/// Work that cannot be placed: wait while the job's `QueueTimeout` has not passed since it was created
/// (0, the default, fails at once), then fail with `reason`.
pub fn queue_or_fail(job: &Job, place: Vec<(u64, NodeId)>, reason: String, now: i64) -> Decision {
    let queue_timeout = job
        .task()
        .map(|t| t.timeouts.queue_timeout)
        .unwrap_or(0)
        .max(0);
    let deadline = version_start(job).saturating_add(queue_timeout.saturating_mul(1_000_000_000));
    if now >= deadline {
        Decision::Fail { reason }
    } else {
        Decision::Wait {
            place,
            reason,
            deadline: Some(deadline),
        }
    }
}

/// An execution that ran shorter than this counts towards the crash-loop backoff.
const SHORT_RUN: i64 = 10 * 60 * 1_000_000_000;
/// The longest a restart is held back.
const MAX_BACKOFF: i64 = 5 * 60 * 1_000_000_000;

/// When a long-running job may next start an execution, given its ended ones (any order): the first end is
/// replaced at once, each further short-lived end in a row doubles the delay from 1 s up to 5 min. An
/// execution that ran long resets the count, so a service that fails once a day restarts at once.
pub fn restart_at(ended: &[&Execution]) -> i64 {
    let mut ends: Vec<&&Execution> = ended
        .iter()
        .filter(|e| e.desired_state.state_type != ExecutionDesiredStateType::Stopped)
        .collect();
    ends.sort_by_key(|e| std::cmp::Reverse(e.modify_time));
    let Some(last) = ends.first() else {
        return 0;
    };
    let in_a_row = ends
        .iter()
        .take_while(|e| e.modify_time.saturating_sub(e.create_time) < SHORT_RUN)
        .count();
    if in_a_row <= 1 {
        return 0;
    }
    let shift = u32::try_from(in_a_row - 2).unwrap_or(u32::MAX).min(20);
    let delay = 1_000_000_000i64.saturating_mul(1 << shift).min(MAX_BACKOFF);
    last.modify_time.saturating_add(delay)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fixtures shared by the planners' tests.
    use super::*;
    use crate::model::{ComputeNodeInfo, NodeInfo, State, ci};

    pub fn node(id: &str, labels: &[(&str, &str)]) -> Candidate {
        let cap = Resources {
            cpu: 2.0,
            memory: 1 << 30,
            disk: 0,
            gpu: 0,
        };
        Candidate {
            node: NodeState {
                info: NodeInfo {
                    node_id: id.to_owned().into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    compute_node_info: ComputeNodeInfo {
                        execution_engines: vec!["wasm".into()],
                        publishers: vec!["local".into(), "noop".into()],
                        storage_sources: vec!["inline".into(), "urlDownload".into()],
                        max_capacity: cap.into(),
                        max_job_requirements: cap,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                membership: NodeMembership::Approved,
                connection: NodeConnection::Connected,
                ..Default::default()
            }
            .into(),
            allocated: Resources::default(),
        }
    }

    pub fn job(kind: &str, extra: &str) -> Job {
        let yaml = format!(
            "Type: {kind}\n{extra}Tasks:\n- Name: main\n  Engine: {{Type: wasm, Params: {{EntryModule: /m}}}}\n"
        );
        let mut j: Job = ci::from_value(ci::parse_document(&yaml).expect("yaml")).expect("job");
        j.version = 1;
        j
    }

    pub fn exec(node: &str, partition: u64, state: ExecutionStateType) -> Execution {
        Execution {
            id: format!("e-{node}-{partition}-{}", state.name()).into(),
            node_id: node.to_owned().into(),
            partition_index: partition,
            job_version: 1,
            compute_state: State::new(state, "boom"),
            desired_state: State::new(ExecutionDesiredStateType::Running, ""),
            ..Default::default()
        }
    }

    pub fn id(s: &str) -> NodeId {
        NodeId::from(s.to_owned())
    }

    pub fn plan_now(job: &Job, execs: &[Execution], nodes: &[Candidate]) -> Decision {
        plan(job, execs, nodes, &Settings::default(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn over_subscription_bounds_a_node() {
        let j = job("batch", "");
        let mut n = node("a", &[]);
        n.allocated = Resources {
            cpu: 2.0,
            memory: 0,
            ..Default::default()
        };
        let need = job_resources(&j, &JobDefaults::default());
        let strict = Settings::default();
        let err = rank(&j, &need, &n, &strict).expect_err("full node");
        assert!(err.contains("not enough free capacity"), "{err}");
        let loose = Settings {
            over_subscription: 1.5,
            ..Settings::default()
        };
        assert!(rank(&j, &need, &n, &loose).is_ok());
    }

    #[test]
    fn disk_and_gpu_needs_are_checked() {
        let mut j = job("batch", "");
        j.tasks[0].resources.gpu = "1".into();
        let need = job_resources(&j, &JobDefaults::default());
        let err = rank(&j, &need, &node("a", &[]), &Settings::default()).expect_err("no gpu");
        assert_eq!(err, "needs 1 GPU; node has no GPU");
        j.tasks[0].resources.gpu = String::new();
        j.tasks[0].resources.disk = "1Gi".into();
        let need = job_resources(&j, &JobDefaults::default());
        let err = rank(&j, &need, &node("a", &[]), &Settings::default()).expect_err("no disk");
        assert!(err.contains("disk"), "{err}");
    }

    #[test]
    fn gpu_jobs_go_only_where_enough_gpus_are_free_whatever_the_over_subscription() {
        let mut j = job("batch", "");
        j.tasks[0].resources.gpu = "2".into();
        let need = job_resources(&j, &JobDefaults::default());
        let mut n = node("a", &[]);
        let info = &mut std::sync::Arc::make_mut(&mut n.node).info.compute_node_info;
        info.max_capacity.resources.gpu = 2;
        info.max_job_requirements.gpu = 2;
        let loose = Settings {
            over_subscription: 3.0,
            ..Settings::default()
        };
        assert!(rank(&j, &need, &n, &loose).is_ok(), "both free");
        n.allocated.gpu = 1;
        let err = rank(&j, &need, &n, &loose).expect_err("one held");
        assert_eq!(err, "needs 2 GPUs; node has 1 free (of 2)");
        j.tasks[0].resources.gpu = "3".into();
        n.allocated.gpu = 0;
        let need = job_resources(&j, &JobDefaults::default());
        let err = rank(&j, &need, &n, &loose).expect_err("more than the node has");
        assert_eq!(err, "needs 3 GPUs; node has 2 free (of 2)");
    }

    #[test]
    fn total_timeout_fails_every_type() {
        for kind in ["batch", "ops", "daemon", "service"] {
            let mut j = job(kind, "");
            j.tasks[0].timeouts.total_timeout = 5;
            assert!(matches!(
                plan(&j, &[], &[node("a", &[])], &Settings::default(), 1),
                Decision::Run { .. }
            ));
            let Decision::Fail { reason } = plan(
                &j,
                &[],
                &[node("a", &[])],
                &Settings::default(),
                5_000_000_000,
            ) else {
                panic!("{kind} should fail")
            };
            assert!(reason.contains("TotalTimeout"), "{reason}");
        }
    }

    #[test]
    fn older_versions_are_ignored() {
        let mut j = job("batch", "");
        j.version = 2;
        let old = exec("a", 0, ExecutionStateType::Completed);
        let Decision::Run { place, .. } = plan_now(&j, &[old], &[node("a", &[])]) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, id("a"))]);
    }

    #[test]
    fn restart_backoff_doubles_for_short_runs_and_resets_after_a_long_one() {
        let ended = |end: i64, ran: i64| Execution {
            create_time: end - ran,
            modify_time: end,
            ..exec("a", 0, ExecutionStateType::Failed)
        };
        let s = 1_000_000_000;
        let one = [ended(100 * s, s)];
        assert_eq!(restart_at(&one.iter().collect::<Vec<_>>()), 0);
        let two = [ended(100 * s, s), ended(102 * s, s)];
        assert_eq!(restart_at(&two.iter().collect::<Vec<_>>()), 103 * s);
        let three = [ended(100 * s, s), ended(102 * s, s), ended(104 * s, s)];
        assert_eq!(restart_at(&three.iter().collect::<Vec<_>>()), 106 * s);
        let reset = [ended(100 * s, s), ended(2000 * s, 1000 * s)];
        assert_eq!(restart_at(&reset.iter().collect::<Vec<_>>()), 0);
    }
}
