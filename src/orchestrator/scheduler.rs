//! The batch scheduler: a pure function from a job, its executions and the candidate nodes to a plan. No I/O,
//! so it runs inside the write transaction that applies its plan.
//!
//! Rules (Bacalhau's): `Count` partitions, each completed once, on distinct nodes; a node is a candidate only
//! if it is approved and connected, supports the engine, the publisher and every input type, satisfies the hard
//! constraints and has room for the task's resources. `favour_` constraints only add rank. A partition whose
//! execution failed is retried on a node that has not failed this job. When a partition cannot be placed the
//! job waits until its `QueueTimeout` has passed (0, the default, fails at once) and then fails with every
//! node's reason.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::model::resources::{JobDefaults, job_resources};
use crate::model::{
    Execution, ExecutionDesiredStateType, ExecutionStateType, InputSpec, Job, NodeConnection,
    NodeId, NodeMembership, NodeState, PublisherSpec, Resources, constraint,
};

/// A node the scheduler may use, with what is already allocated on it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The node as registered, shared with the registry (a snapshot of 10,000 nodes copies pointers only).
    pub node: std::sync::Arc<NodeState>,
    /// Resources held by its active executions.
    pub allocated: Resources,
}

/// What the scheduler decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every partition has completed.
    Complete,
    /// Work is placed or running; `place` lists new (partition, node) pairs.
    Run {
        /// New executions to create.
        place: Vec<(u64, NodeId)>,
    },
    /// Some partitions cannot be placed yet; retry later (the queue timeout has not passed).
    Wait {
        /// New executions for the partitions that could be placed.
        place: Vec<(u64, NodeId)>,
        /// Why the rest wait.
        reason: String,
    },
    /// The job cannot finish.
    Fail {
        /// Why, naming nodes and their reasons.
        reason: String,
    },
}

fn active(e: &Execution) -> bool {
    !e.is_terminal() && e.desired_state.state_type != ExecutionDesiredStateType::Stopped
}

/// Why `node` cannot take `job`, or its rank if it can.
fn rank(job: &Job, need: &Resources, c: &Candidate) -> Result<i64, String> {
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
    if !need.fits_in(&cni.max_job_requirements) {
        return Err(format!(
            "job needs more than the node's per-job limit (cpu {} memory {} > cpu {} memory {})",
            need.cpu, need.memory, cni.max_job_requirements.cpu, cni.max_job_requirements.memory
        ));
    }
    let free = cni.max_capacity.saturating_sub(&c.allocated);
    if !need.fits_in(&free) {
        return Err(format!(
            "not enough free capacity (cpu {:.2}, memory {} bytes free)",
            free.cpu, free.memory
        ));
    }
    // Prefer emptier nodes: up to 100 points for free memory share.
    let share = if cni.max_capacity.memory == 0 {
        0.0
    } else {
        free.memory as f64 / cni.max_capacity.memory as f64
    };
    #[allow(clippy::cast_possible_truncation)] // 0..=100
    let capacity_points = (share * 100.0) as i64;
    Ok(score + capacity_points)
}

/// Plans the next step of a batch job.
pub fn plan(
    job: &Job,
    executions: &[Execution],
    candidates: &[Candidate],
    defaults: &JobDefaults,
    now: i64,
) -> Decision {
    let count = job.effective_count();
    let need = job_resources(job, defaults);
    let mut done = BTreeSet::new();
    let mut running = BTreeSet::new();
    // Nodes holding this job now (distinct-node rule) and nodes that failed it (never retried there).
    let mut busy_nodes = BTreeSet::new();
    let mut failed_nodes = BTreeSet::new();
    let mut last_error: BTreeMap<u64, String> = BTreeMap::new();
    for e in executions {
        let state = e.compute_state.state_type;
        if state == ExecutionStateType::Completed {
            done.insert(e.partition_index);
            busy_nodes.insert(e.node_id.clone());
        } else if active(e) {
            running.insert(e.partition_index);
            busy_nodes.insert(e.node_id.clone());
        } else if matches!(
            state,
            ExecutionStateType::Failed
                | ExecutionStateType::AskForBidRejected
                | ExecutionStateType::BidRejected
        ) {
            // A failure the orchestrator ordered itself (desired Stopped: the node was lost, or no longer had
            // the execution) is not the node's fault; it may take the partition again once it is back.
            if e.desired_state.state_type != ExecutionDesiredStateType::Stopped {
                failed_nodes.insert(e.node_id.clone());
            }
            last_error.insert(
                e.partition_index,
                format!(
                    "execution {} on node {}: {}",
                    e.id, e.node_id, e.compute_state.message
                ),
            );
        }
    }
    if done.len() as u64 >= count {
        return Decision::Complete;
    }
    let needed: Vec<u64> = (0..count)
        .filter(|p| !done.contains(p) && !running.contains(p))
        .collect();
    if needed.is_empty() {
        return Decision::Run { place: vec![] };
    }
    let mut ranked: Vec<(i64, NodeId)> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for c in candidates {
        let id = &c.node.info.node_id;
        if busy_nodes.contains(id) {
            reasons.push(format!("node {id}: already runs this job"));
            continue;
        }
        if failed_nodes.contains(id) {
            reasons.push(format!("node {id}: already failed this job"));
            continue;
        }
        match rank(job, &need, c) {
            Ok(score) => ranked.push((score, id.clone())),
            Err(why) => reasons.push(format!("node {id}: {why}")),
        }
    }
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut place = Vec::new();
    let mut nodes = ranked.into_iter().map(|(_, id)| id);
    let mut unplaced = Vec::new();
    for p in needed {
        match nodes.next() {
            Some(node) => place.push((p, node)),
            None => unplaced.push(p),
        }
    }
    if unplaced.is_empty() {
        return Decision::Run { place };
    }
    let mut reason = if candidates.is_empty() {
        "no compute node is connected".to_owned()
    } else {
        format!(
            "not enough nodes to run the job (partitions {unplaced:?} could not be placed): {}",
            reasons.join("; ")
        )
    };
    let errors: Vec<&String> = unplaced.iter().filter_map(|p| last_error.get(p)).collect();
    if !errors.is_empty() {
        reason = format!(
            "{}; last failure: {}",
            reason,
            errors
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let queue_timeout = job
        .task()
        .map(|t| t.timeouts.queue_timeout)
        .unwrap_or(0)
        .max(0);
    let waited = now.saturating_sub(job.create_time);
    if waited >= queue_timeout.saturating_mul(1_000_000_000) {
        Decision::Fail { reason }
    } else {
        Decision::Wait { place, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ComputeNodeInfo, NodeInfo, SpecConfig, State, Task, ci};

    fn node(id: &str, labels: &[(&str, &str)]) -> Candidate {
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
                        max_capacity: cap,
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

    fn job(extra: &str) -> Job {
        let yaml = format!(
            "Type: batch\n{extra}Tasks:\n- Name: main\n  Engine: {{Type: wasm, Params: {{EntryModule: /m}}}}\n"
        );
        ci::from_value(ci::parse_document(&yaml).expect("yaml")).expect("job")
    }

    fn exec(node: &str, partition: u64, state: ExecutionStateType) -> Execution {
        Execution {
            node_id: node.to_owned().into(),
            partition_index: partition,
            compute_state: State::new(state, "boom"),
            desired_state: State::new(ExecutionDesiredStateType::Running, ""),
            ..Default::default()
        }
    }

    #[test]
    fn places_count_partitions_on_distinct_nodes() {
        let j = job("Count: 2\n");
        let nodes = [node("a", &[]), node("b", &[]), node("c", &[])];
        let Decision::Run { place } = plan(&j, &[], &nodes, &JobDefaults::default(), 0) else {
            panic!("run")
        };
        assert_eq!(place.len(), 2);
        assert_ne!(place[0].1, place[1].1);
    }

    #[test]
    fn hard_constraints_filter_and_soft_ones_rank() {
        let j = job(
            "Constraints: [{Key: zone, Operator: '=', Values: [north]}, {Key: favour_fast, Operator: exists}]\n",
        );
        let nodes = [
            node("a", &[("zone", "south")]),
            node("b", &[("zone", "north")]),
            node("c", &[("zone", "north"), ("favour_fast", "1")]),
        ];
        let Decision::Run { place } = plan(&j, &[], &nodes, &JobDefaults::default(), 0) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, NodeId::from("c".to_owned()))]);
    }

    #[test]
    fn unknown_engine_fails_naming_it() {
        let mut j = job("");
        j.tasks[0] = Task {
            name: "main".into(),
            engine: SpecConfig {
                kind: "flibble".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let Decision::Fail { reason } =
            plan(&j, &[], &[node("a", &[])], &JobDefaults::default(), 0)
        else {
            panic!("fail")
        };
        assert!(reason.contains("flibble"), "{reason}");
    }

    #[test]
    fn failed_partition_retries_on_another_node_then_fails() {
        let j = job("");
        let nodes = [node("a", &[]), node("b", &[])];
        let first = [exec("a", 0, ExecutionStateType::Failed)];
        let Decision::Run { place } = plan(&j, &first, &nodes, &JobDefaults::default(), 0) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, NodeId::from("b".to_owned()))]);
        let both = [
            exec("a", 0, ExecutionStateType::Failed),
            exec("b", 0, ExecutionStateType::Failed),
        ];
        let Decision::Fail { reason } = plan(&j, &both, &nodes, &JobDefaults::default(), 0) else {
            panic!("fail")
        };
        assert!(reason.contains("boom"), "{reason}");
    }

    #[test]
    fn a_lost_nodes_partition_is_placed_elsewhere_and_the_node_not_blamed() {
        let j = job("");
        // The orchestrator failed it itself (node lost): desired state Stopped.
        let mut lost = exec("a", 0, ExecutionStateType::Failed);
        lost.desired_state = State::new(ExecutionDesiredStateType::Stopped, "node a lost");
        let Decision::Run { place } = plan(
            &j,
            &[lost.clone()],
            &[node("b", &[])],
            &JobDefaults::default(),
            0,
        ) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, NodeId::from("b".to_owned()))]);
        // Back, and alone: the lost node may take the partition again.
        let Decision::Run { place } =
            plan(&j, &[lost], &[node("a", &[])], &JobDefaults::default(), 0)
        else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, NodeId::from("a".to_owned()))]);
    }

    #[test]
    fn queue_timeout_waits_before_failing() {
        let mut j2 = job("Count: 3\n");
        j2.tasks[0].timeouts.queue_timeout = 60;
        let nodes = [node("a", &[])];
        assert!(matches!(
            plan(&j2, &[], &nodes, &JobDefaults::default(), 0),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            plan(&j2, &[], &nodes, &JobDefaults::default(), 61_000_000_000),
            Decision::Fail { .. }
        ));
    }

    #[test]
    fn completes_when_every_partition_completed() {
        let j = job("Count: 2\n");
        let execs = [
            exec("a", 0, ExecutionStateType::Completed),
            exec("b", 1, ExecutionStateType::Completed),
        ];
        assert_eq!(
            plan(&j, &execs, &[], &JobDefaults::default(), 0),
            Decision::Complete
        );
    }
}
