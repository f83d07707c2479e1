//! `batch`: `Count` partitions, each completed once, on distinct nodes. A partition whose execution failed is
//! retried on a node that has not failed this job (Bacalhau's previous-executions ranker vetoes such nodes).
//! When a partition cannot be placed the job waits until its `QueueTimeout` has passed and then fails with every
//! node's reason.

use std::collections::{BTreeMap, BTreeSet};

use super::{Candidate, Decision, Settings, active, describe, queue_or_fail, ranked};
use crate::model::{Execution, ExecutionDesiredStateType, ExecutionStateType, Job};

/// Plans the next step of a batch job from its current-version executions.
pub fn plan(
    job: &Job,
    executions: &[&Execution],
    candidates: &[Candidate],
    settings: &Settings,
    now: i64,
) -> Decision {
    let count = job.effective_count();
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
            last_error.insert(e.partition_index, describe(e));
        }
    }
    if done.len() as u64 >= count {
        return Decision::Complete;
    }
    let needed: Vec<u64> = (0..count)
        .filter(|p| !done.contains(p) && !running.contains(p))
        .collect();
    if needed.is_empty() {
        return Decision::Run {
            place: vec![],
            wake_at: None,
        };
    }
    let (nodes, reasons) = ranked(
        job,
        candidates,
        settings,
        |id| {
            if busy_nodes.contains(id) {
                Some("already runs this job")
            } else if failed_nodes.contains(id) {
                Some("already failed this job")
            } else {
                None
            }
        },
        |_| 0,
    );
    let mut place = Vec::new();
    let mut nodes = nodes.into_iter();
    let mut unplaced = Vec::new();
    for p in needed {
        match nodes.next() {
            Some(node) => place.push((p, node)),
            None => unplaced.push(p),
        }
    }
    if unplaced.is_empty() {
        return Decision::Run {
            place,
            wake_at: None,
        };
    }
    let mut reason = if candidates.is_empty() {
        "no compute node is connected".to_owned()
    } else {
        format!(
            "not enough nodes to run the job (partitions {unplaced:?} could not be placed): {}",
            reasons.join("; ")
        )
    };
    let errors: Vec<&str> = unplaced
        .iter()
        .filter_map(|p| last_error.get(p).map(String::as_str))
        .collect();
    if !errors.is_empty() {
        reason = format!("{reason}; last failure: {}", errors.join("; "));
    }
    queue_or_fail(job, place, reason, now)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{exec, node};
    use super::super::{JobDefaults, Settings};
    use super::*;
    use crate::model::{NodeId, SpecConfig, Task};

    fn job(extra: &str) -> Job {
        super::super::testing::job("batch", extra)
    }

    fn plan(
        job: &Job,
        execs: &[Execution],
        nodes: &[Candidate],
        _defaults: &JobDefaults,
        now: i64,
    ) -> Decision {
        super::super::plan(job, execs, nodes, &Settings::default(), now)
    }

    #[test]
    fn a_lost_nodes_partition_is_placed_elsewhere_and_the_node_not_blamed() {
        let j = job("");
        // The orchestrator failed it itself (node lost): desired state Stopped.
        let mut lost = exec("a", 0, ExecutionStateType::Failed);
        lost.desired_state =
            crate::model::State::new(ExecutionDesiredStateType::Stopped, "node a lost");
        let Decision::Run { place, .. } = plan(
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
        let Decision::Run { place, .. } =
            plan(&j, &[lost], &[node("a", &[])], &JobDefaults::default(), 0)
        else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, NodeId::from("a".to_owned()))]);
    }

    #[test]
    fn places_count_partitions_on_distinct_nodes() {
        let j = job("Count: 2\n");
        let nodes = [node("a", &[]), node("b", &[]), node("c", &[])];
        let Decision::Run { place, .. } = plan(&j, &[], &nodes, &JobDefaults::default(), 0) else {
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
        let Decision::Run { place, .. } = plan(&j, &[], &nodes, &JobDefaults::default(), 0) else {
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
        let Decision::Run { place, .. } = plan(&j, &first, &nodes, &JobDefaults::default(), 0)
        else {
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
