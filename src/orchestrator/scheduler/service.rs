//! `service`: keep `Count` executions running on distinct nodes; an execution that ends (failed or
//! completed) is replaced, on another node when one is free (a node that failed it ranks lower, one that
//! declined the bid is skipped). Restarts are held back by the crash-loop backoff so a crashing service does not
//! spin. The first placement follows the queue rule (`QueueTimeout`); once running, a service short of nodes
//! keeps waiting instead of failing. It never completes; it runs until stopped (or its `TotalTimeout`).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Candidate, Decision, Settings, active, describe, queue_or_fail, ranked, rejected, restart_at,
};
use crate::model::{Execution, ExecutionDesiredStateType, ExecutionStateType, Job, NodeId};

/// Rank points a node loses per execution of this job that failed on it.
const FAILURE_PENALTY: i64 = 50;

/// Plans the next step of a service job from its current-version executions.
pub fn plan(
    job: &Job,
    executions: &[&Execution],
    candidates: &[Candidate],
    settings: &Settings,
    now: i64,
) -> Decision {
    let count = job.effective_count();
    let mut running = BTreeSet::new();
    let mut declined = BTreeSet::new();
    let mut failures: BTreeMap<&NodeId, i64> = BTreeMap::new();
    let mut ended = Vec::new();
    let mut last_error = None;
    for e in executions {
        if active(e) {
            running.insert(&e.node_id);
        } else if rejected(e) {
            declined.insert(&e.node_id);
            last_error = Some(describe(e));
        } else {
            // Failures the orchestrator ordered itself (node lost) are not held against the node.
            if e.compute_state.state_type == ExecutionStateType::Failed
                && e.desired_state.state_type != ExecutionDesiredStateType::Stopped
            {
                *failures.entry(&e.node_id).or_default() += 1;
                last_error = Some(describe(e));
            }
            ended.push(*e);
        }
    }
    let active_count = executions.iter().filter(|e| active(e)).count() as u64;
    let missing = count.saturating_sub(active_count);
    if missing == 0 {
        return Decision::Run {
            place: vec![],
            wake_at: None,
        };
    }
    let at = restart_at(&ended);
    if at > now {
        return Decision::Run {
            place: vec![],
            wake_at: Some(at),
        };
    }
    let (nodes, reasons) = ranked(
        job,
        candidates,
        settings,
        |id| {
            if running.contains(id) {
                Some("already runs this job")
            } else if declined.contains(id) {
                Some("declined this job")
            } else {
                None
            }
        },
        |id| failures.get(id).copied().unwrap_or(0) * FAILURE_PENALTY,
    );
    let place: Vec<(u64, NodeId)> = nodes
        .into_iter()
        .take(usize::try_from(missing).unwrap_or(usize::MAX))
        .map(|n| (0, n))
        .collect();
    let short = missing - place.len() as u64;
    if short == 0 {
        return Decision::Run {
            place,
            wake_at: None,
        };
    }
    let mut reason = if candidates.is_empty() {
        "no compute node is connected".to_owned()
    } else {
        format!(
            "not enough nodes to keep {count} executions running ({short} missing): {}",
            reasons.join("; ")
        )
    };
    if let Some(e) = last_error {
        reason = format!("{reason}; last failure: {e}");
    }
    if executions.is_empty() {
        return queue_or_fail(job, place, reason, now);
    }
    Decision::Wait {
        place,
        reason,
        deadline: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{exec, id, job, node, plan_now};
    use super::super::{Decision, Settings, plan};
    use crate::model::{Execution, ExecutionStateType as S};

    #[test]
    fn keeps_count_running_on_distinct_nodes() {
        let j = job("service", "Count: 2\n");
        let nodes = [node("a", &[]), node("b", &[]), node("c", &[])];
        let Decision::Run { place, .. } = plan_now(&j, &[], &nodes) else {
            panic!("run")
        };
        assert_eq!(place.len(), 2);
        assert_ne!(place[0].1, place[1].1);
        let both = [exec("a", 0, S::Running), exec("b", 0, S::Running)];
        assert_eq!(
            plan_now(&j, &both, &nodes),
            Decision::Run {
                place: vec![],
                wake_at: None
            }
        );
    }

    #[test]
    fn replaces_a_failure_preferring_a_node_that_did_not_fail() {
        let j = job("service", "Count: 2\n");
        let nodes = [node("a", &[]), node("b", &[]), node("c", &[])];
        let execs = [exec("a", 0, S::Running), exec("b", 0, S::Failed)];
        let Decision::Run { place, .. } = plan_now(&j, &execs, &nodes) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, id("c"))]);
        // With no other node the failed one is used again.
        let Decision::Run { place, .. } = plan_now(&j, &execs, &nodes[..2]) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, id("b"))]);
    }

    #[test]
    fn a_crash_loop_is_held_back() {
        let j = job("service", "");
        let s = 1_000_000_000;
        let ended = |end: i64| Execution {
            create_time: end - s,
            modify_time: end,
            ..exec("a", 0, S::Failed)
        };
        let execs = [ended(10 * s), ended(12 * s), ended(14 * s)];
        let Decision::Run { place, wake_at } =
            plan(&j, &execs, &[node("a", &[])], &Settings::default(), 14 * s)
        else {
            panic!("run")
        };
        assert_eq!((place, wake_at), (vec![], Some(16 * s)));
        assert!(matches!(
            plan(&j, &execs, &[node("a", &[])], &Settings::default(), 16 * s),
            Decision::Run { place, .. } if place.len() == 1
        ));
    }

    #[test]
    fn first_placement_queues_but_a_running_service_only_waits() {
        let j = job("service", "Count: 2\n");
        let Decision::Fail { .. } = plan_now(&j, &[], &[node("a", &[])]) else {
            panic!("fail: QueueTimeout 0")
        };
        let execs = [exec("a", 0, S::Running)];
        let Decision::Wait { place, reason, .. } = plan_now(&j, &execs, &[node("a", &[])]) else {
            panic!("wait")
        };
        assert!(place.is_empty());
        assert!(reason.contains("1 missing"), "{reason}");
    }
}
