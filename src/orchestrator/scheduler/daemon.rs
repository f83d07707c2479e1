//! `daemon`: one execution on every matching node, including nodes that join later (a node joining or being
//! approved triggers an evaluation of daemon jobs), kept running: an execution that ends is replaced on its
//! node, held back by the crash-loop backoff. A node that declined the bid is left alone for this version.
//! The job never completes; it runs until stopped (or its `TotalTimeout`).

use std::collections::{BTreeMap, BTreeSet};

use super::{Candidate, Decision, Settings, active, ranked, rejected, restart_at};
use crate::model::{Execution, Job, NodeId};

/// Plans the next step of a daemon job from its current-version executions.
pub fn plan(
    job: &Job,
    executions: &[&Execution],
    candidates: &[Candidate],
    settings: &Settings,
    now: i64,
) -> Decision {
    let mut running = BTreeSet::new();
    let mut declined = BTreeSet::new();
    let mut ended: BTreeMap<&NodeId, Vec<&Execution>> = BTreeMap::new();
    for e in executions {
        if active(e) {
            running.insert(&e.node_id);
        } else if rejected(e) {
            declined.insert(&e.node_id);
        } else {
            ended.entry(&e.node_id).or_default().push(e);
        }
    }
    let (nodes, _reasons) = ranked(
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
        |_| 0,
    );
    let mut place = Vec::new();
    let mut wake_at: Option<i64> = None;
    for node in nodes {
        let at = ended.get(&node).map(|v| restart_at(v)).unwrap_or(0);
        if at <= now {
            place.push((0, node));
        } else {
            wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        }
    }
    Decision::Run { place, wake_at }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{exec, id, job, node, plan_now};
    use super::super::{Decision, Settings, plan};
    use crate::model::{Execution, ExecutionStateType as S};

    #[test]
    fn lands_on_every_matching_node_and_on_nodes_that_join_later() {
        let j = job("daemon", "");
        let Decision::Run { place, .. } = plan_now(&j, &[], &[node("a", &[])]) else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, id("a"))]);
        let running = [exec("a", 0, S::Running)];
        let Decision::Run { place, .. } = plan_now(&j, &running, &[node("a", &[]), node("b", &[])])
        else {
            panic!("run")
        };
        assert_eq!(place, vec![(0, id("b"))]);
    }

    #[test]
    fn an_ended_execution_is_replaced_on_its_node_with_backoff() {
        let j = job("daemon", "");
        let s = 1_000_000_000;
        let ended = |end: i64| Execution {
            create_time: end - s,
            modify_time: end,
            ..exec("a", 0, S::Completed)
        };
        let once = [ended(10 * s)];
        let Decision::Run { place, wake_at } =
            plan(&j, &once, &[node("a", &[])], &Settings::default(), 10 * s)
        else {
            panic!("run")
        };
        assert_eq!((place, wake_at), (vec![(0, id("a"))], None));
        let twice = [ended(10 * s), ended(12 * s)];
        let Decision::Run { place, wake_at } =
            plan(&j, &twice, &[node("a", &[])], &Settings::default(), 12 * s)
        else {
            panic!("run")
        };
        assert_eq!((place, wake_at), (vec![], Some(13 * s)));
    }

    #[test]
    fn never_completes_and_skips_nodes_that_declined() {
        let j = job("daemon", "");
        let execs = [exec("a", 0, S::AskForBidRejected)];
        assert_eq!(
            plan_now(&j, &execs, &[node("a", &[])]),
            Decision::Run {
                place: vec![],
                wake_at: None
            }
        );
    }
}
