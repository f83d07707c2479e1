//! `ops`: one execution on every matching node at the first evaluation, none on nodes that join later. The
//! job completes when every execution has ended and one failure fails it (Bacalhau). A node that declines
//! the bid (its own policy) is left out; if every node declines, the job fails with their reasons.

use super::{Candidate, Decision, Settings, active, describe, queue_or_fail, ranked, rejected};
use crate::model::{Execution, ExecutionStateType, Job};

/// Plans the next step of an ops job from its current-version executions.
pub fn plan(
    job: &Job,
    executions: &[&Execution],
    candidates: &[Candidate],
    settings: &Settings,
    now: i64,
) -> Decision {
    if executions.is_empty() {
        // First evaluation (or still queued): every matching node gets one.
        let (nodes, reasons) = ranked(job, candidates, settings, |_| None, |_| 0);
        if nodes.is_empty() {
            let reason = if candidates.is_empty() {
                "no compute node is connected".to_owned()
            } else {
                format!("no node can run the job: {}", reasons.join("; "))
            };
            return queue_or_fail(job, vec![], reason, now);
        }
        return Decision::Run {
            place: nodes.into_iter().map(|n| (0, n)).collect(),
            wake_at: None,
        };
    }
    if let Some(failed) = executions
        .iter()
        .find(|e| e.compute_state.state_type == ExecutionStateType::Failed)
    {
        return Decision::Fail {
            reason: format!("an ops execution failed: {}", describe(failed)),
        };
    }
    if executions.iter().any(|e| active(e)) {
        return Decision::Run {
            place: vec![],
            wake_at: None,
        };
    }
    if executions
        .iter()
        .any(|e| e.compute_state.state_type == ExecutionStateType::Completed)
    {
        return Decision::Complete;
    }
    let declined: Vec<String> = executions
        .iter()
        .filter(|e| rejected(e))
        .map(|e| describe(e))
        .collect();
    Decision::Fail {
        reason: if declined.is_empty() {
            "every execution was stopped before it completed".to_owned()
        } else {
            format!("every node declined the job: {}", declined.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{exec, id, job, node, plan_now};
    use super::super::{Decision, Settings, plan};
    use crate::model::{ExecutionStateType as S, NodeConnection};

    #[test]
    fn runs_once_on_every_matching_node() {
        let j = job(
            "ops",
            "Constraints: [{Key: zone, Operator: '=', Values: [north]}]\n",
        );
        let nodes = [
            node("a", &[("zone", "north")]),
            node("b", &[("zone", "south")]),
            node("c", &[("zone", "north")]),
        ];
        let Decision::Run { place, .. } = plan_now(&j, &[], &nodes) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, id("a")), (0, id("c"))]);
    }

    #[test]
    fn nodes_joining_later_get_nothing() {
        let j = job("ops", "");
        let nodes = [node("a", &[]), node("b", &[])];
        let running = [exec("a", 0, S::BidAccepted)];
        assert_eq!(
            plan_now(&j, &running, &nodes),
            Decision::Run {
                place: vec![],
                wake_at: None
            }
        );
    }

    #[test]
    fn completes_when_all_end_and_fails_on_one_failure() {
        let j = job("ops", "");
        let nodes = [node("a", &[]), node("b", &[])];
        let done = [exec("a", 0, S::Completed), exec("b", 0, S::Completed)];
        assert_eq!(plan_now(&j, &done, &nodes), Decision::Complete);
        let one_failed = [exec("a", 0, S::Completed), exec("b", 0, S::Failed)];
        let Decision::Fail { reason } = plan_now(&j, &one_failed, &nodes) else {
            panic!("fail")
        };
        assert!(reason.contains("boom"), "{reason}");
        let declined_one = [
            exec("a", 0, S::Completed),
            exec("b", 0, S::AskForBidRejected),
        ];
        assert_eq!(plan_now(&j, &declined_one, &nodes), Decision::Complete);
        let declined_all = [exec("a", 0, S::AskForBidRejected)];
        let Decision::Fail { reason } = plan_now(&j, &declined_all, &nodes) else {
            panic!("fail")
        };
        assert!(
            reason.contains("declined") && reason.contains("boom"),
            "{reason}"
        );
    }

    #[test]
    fn no_matching_node_queues_then_fails() {
        let mut j = job("ops", "");
        j.tasks[0].timeouts.queue_timeout = 10;
        let mut gone = node("a", &[]);
        std::sync::Arc::make_mut(&mut gone.node).connection = NodeConnection::Disconnected;
        let nodes = [gone];
        assert!(matches!(
            plan(&j, &[], &nodes, &Settings::default(), 0),
            Decision::Wait { .. }
        ));
        let Decision::Fail { reason } = plan(&j, &[], &nodes, &Settings::default(), 10_000_000_000)
        else {
            panic!("fail")
        };
        assert!(reason.contains("disconnected"), "{reason}");
    }
}
