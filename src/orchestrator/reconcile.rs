//! The reconciliation handshake: a (re)connecting compute node says which executions it holds, and the
//! orchestrator compares that with what it has on record for the node.
//!
//! Both outboxes still replay after the handshake, so a difference is only a disagreement when no queued
//! message explains it: an execution the node does not know yet because its AskForBid is still queued here is
//! not "forgotten", and a report still queued on the node (it says "ended", we say "running") needs nothing.
//! What is left:
//! - we have it active on the node, the node applied its AskForBid but no longer holds it (its data dir was
//!   wiped): fail it, and re-plan the job;
//! - the node runs it but we have it ended, stopped or never heard of it: ask the node to stop it (a durable
//!   CancelExecution), unless a cancel is already queued.

use std::collections::{HashMap, HashSet};

use crate::model::{
    Event, Execution, ExecutionDesiredStateType, ExecutionId, ExecutionStateType, JobId, NodeId,
};
use crate::store::{Reader, StoreError, WriteTxn};
use crate::transport::Message;
use crate::transport::protocol::HeldExecution;

use super::jobs::AfterCommit;
use super::replan::Planning;
use super::state;

/// Why the node must stop an execution it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopWhy {
    /// The orchestrator has no such execution.
    Unknown,
    /// The orchestrator has it in this terminal state (e.g. failed when the node was lost).
    Ended(ExecutionStateType),
    /// The orchestrator asked for it to stop (job stopped, partition superseded).
    Stopped,
}

/// One correction the orchestrator makes after comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Correction {
    /// Active here, but the node applied its AskForBid and no longer holds it.
    Forgotten {
        /// Its job.
        job_id: JobId,
        /// The execution.
        execution_id: ExecutionId,
    },
    /// The node runs it; it should not run.
    Cancel {
        /// Its job.
        job_id: JobId,
        /// The execution.
        execution_id: ExecutionId,
        /// Why.
        why: StopWhy,
    },
}

/// Compares what the node `held` with `ours` (every execution on record for this node), ignoring what the
/// `pending` messages (queued here, not yet applied by the node) are about to change.
pub(crate) fn reconcile(
    held: &[HeldExecution],
    ours: &[Execution],
    pending: &[Message],
) -> Vec<Correction> {
    let mut asked = HashSet::new();
    let mut cancelling = HashSet::new();
    for m in pending {
        match m {
            Message::AskForBid { execution, .. } => {
                asked.insert(&execution.id);
            }
            Message::CancelExecution { execution_id, .. }
            | Message::BidRejected { execution_id, .. } => {
                cancelling.insert(execution_id);
            }
            _ => {}
        }
    }
    let held_by_id: HashMap<&ExecutionId, &HeldExecution> =
        held.iter().map(|h| (&h.execution_id, h)).collect();
    let ours_by_id: HashMap<&ExecutionId, &Execution> = ours.iter().map(|e| (&e.id, e)).collect();
    let mut corrections = Vec::new();
    for e in ours {
        // The node had it if its ask is no longer queued, or if the node reported on it (a node that lost
        // its state also lost its count of applied messages, so an old ask can look queued again).
        let reached =
            !asked.contains(&e.id) || e.compute_state.state_type != ExecutionStateType::AskForBid;
        if !e.is_terminal() && !held_by_id.contains_key(&e.id) && reached {
            corrections.push(Correction::Forgotten {
                job_id: e.job_id.clone(),
                execution_id: e.id.clone(),
            });
        }
    }
    for h in held.iter().filter(|h| h.active) {
        if cancelling.contains(&h.execution_id) {
            continue;
        }
        let why = match ours_by_id.get(&h.execution_id) {
            None => StopWhy::Unknown,
            Some(e) if e.is_terminal() => StopWhy::Ended(e.compute_state.state_type),
            Some(e) if e.desired_state.state_type == ExecutionDesiredStateType::Stopped => {
                StopWhy::Stopped
            }
            Some(_) => continue,
        };
        corrections.push(Correction::Cancel {
            job_id: h.job_id.clone(),
            execution_id: h.execution_id.clone(),
            why,
        });
    }
    corrections
}

/// Compares and applies the corrections inside the caller's transaction (the handshake's); returns how many
/// were made.
pub(crate) fn run(
    txn: &mut WriteTxn<'_, '_>,
    planning: &Planning<'_>,
    node: &NodeId,
    node_applied: u64,
    held: &[HeldExecution],
    after: &mut AfterCommit,
) -> Result<usize, StoreError> {
    let t = planning.t;
    // What we have active on the node, and our record of everything the node says it holds.
    let mut ours = state::active_on_node(txn, t, node)?;
    for h in held {
        if !ours.iter().any(|e| e.id == h.execution_id)
            && let Some(e) = txn.get(t.executions, &state::exec_key(&h.job_id, &h.execution_id))?
            && &e.node_id == node
        {
            ours.push(e);
        }
    }
    let pending = planning.outbox.pending(txn, node, node_applied)?;
    let corrections = reconcile(held, &ours, &pending);
    // Queued asks and acceptances for executions that ended (or were just found forgotten) would only start
    // them again on the node: withdraw them.
    let mut ended: HashSet<&ExecutionId> = ours
        .iter()
        .filter(|e| {
            e.is_terminal() || e.desired_state.state_type == ExecutionDesiredStateType::Stopped
        })
        .map(|e| &e.id)
        .collect();
    for c in &corrections {
        if let Correction::Forgotten { execution_id, .. } = c {
            ended.insert(execution_id);
        }
    }
    let withdrawn = planning
        .outbox
        .discard(txn, node, node_applied, |m| match m {
            Message::AskForBid { execution, .. } => ended.contains(&execution.id),
            Message::BidAccepted { execution_id } => ended.contains(execution_id),
            _ => false,
        })?;
    if withdrawn > 0 {
        tracing::info!(node_id = %node, withdrawn, "withdrew queued asks for executions that ended");
    }
    let mut replan = Vec::new();
    for c in &corrections {
        match c {
            Correction::Forgotten {
                job_id,
                execution_id,
            } => {
                let Some(exec) = txn.get(t.executions, &state::exec_key(job_id, execution_id))?
                else {
                    continue;
                };
                let reason = format!(
                    "node {node} no longer has execution {execution_id} (its state was lost, e.g. a wiped data dir)"
                );
                let event = Event::new(
                    "Reconciliation",
                    format!("{reason}; the partition will be placed again"),
                )
                .with("NewState", "Failed")
                .with("IsError", "true")
                .with("FailsExecution", "true");
                planning.fail_for_node(txn, exec, &reason, event, after)?;
                if !replan.contains(job_id) {
                    replan.push(job_id.clone());
                }
            }
            Correction::Cancel {
                job_id,
                execution_id,
                why,
            } => {
                let reason = match why {
                    StopWhy::Unknown => "the orchestrator has no record of it".to_owned(),
                    StopWhy::Ended(s) => format!("the orchestrator has it as {}", s.name()),
                    StopWhy::Stopped => "the orchestrator asked for it to stop".to_owned(),
                };
                planning.outbox.enqueue(
                    txn,
                    node,
                    Message::CancelExecution {
                        execution_id: execution_id.clone(),
                        reason: format!("reconciliation: {reason}"),
                    },
                )?;
                after.kick.push(node.clone());
                if let Some(job) = txn.get(t.jobs, job_id.as_str())? {
                    state::record(
                        txn,
                        t,
                        &job,
                        Some(execution_id),
                        Event::new(
                            "Reconciliation",
                            format!(
                                "node {node} still runs execution {execution_id} but {reason}: asked the node to stop it"
                            ),
                        ),
                        after,
                    )?;
                } else {
                    tracing::warn!(node_id = %node, execution_id = %execution_id, "node runs an execution of an unknown job; asked it to stop");
                }
            }
        }
    }
    for job_id in &replan {
        planning.replan(txn, job_id, after)?;
    }
    Ok(corrections.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;

    fn exec(id: &str, state: ExecutionStateType, desired: ExecutionDesiredStateType) -> Execution {
        Execution {
            id: ExecutionId::from(id.to_owned()),
            job_id: JobId::from("j".to_owned()),
            compute_state: State::new(state, ""),
            desired_state: State::new(desired, ""),
            ..Default::default()
        }
    }

    fn held(id: &str, active: bool) -> HeldExecution {
        HeldExecution {
            execution_id: ExecutionId::from(id.to_owned()),
            job_id: JobId::from("j".to_owned()),
            active,
        }
    }

    fn id(s: &str) -> ExecutionId {
        ExecutionId::from(s.to_owned())
    }

    use ExecutionDesiredStateType as D;
    use ExecutionStateType as S;

    #[test]
    fn an_execution_the_node_forgot_is_failed_unless_its_ask_is_still_queued() {
        let ours = [
            exec("forgotten", S::Running, D::Running),
            exec("queued", S::AskForBid, D::Running),
            exec("finished-long-ago", S::Completed, D::Running),
        ];
        let pending = [Message::AskForBid {
            execution: Box::new(exec("queued", S::AskForBid, D::Running)),
            accept_directly: true,
        }];
        assert_eq!(
            reconcile(&[], &ours, &pending),
            vec![Correction::Forgotten {
                job_id: JobId::from("j".to_owned()),
                execution_id: id("forgotten"),
            }]
        );
    }

    #[test]
    fn a_node_that_reported_on_an_execution_had_it_even_if_its_ask_looks_queued() {
        // A wiped node says it applied nothing, so the old ask is "pending" again; but it reported Running.
        let ours = [exec("ran", S::Running, D::Running)];
        let pending = [Message::AskForBid {
            execution: Box::new(exec("ran", S::AskForBid, D::Running)),
            accept_directly: true,
        }];
        assert_eq!(
            reconcile(&[], &ours, &pending),
            vec![Correction::Forgotten {
                job_id: JobId::from("j".to_owned()),
                execution_id: id("ran"),
            }]
        );
    }

    #[test]
    fn a_report_still_queued_on_the_node_is_no_disagreement() {
        // The node finished it (its RunResult is in its outbox); we still have it running.
        let ours = [exec("e", S::Running, D::Running)];
        assert!(reconcile(&[held("e", false)], &ours, &[]).is_empty());
        // And both agree it runs.
        assert!(reconcile(&[held("e", true)], &ours, &[]).is_empty());
    }

    #[test]
    fn the_node_is_told_to_stop_what_should_not_run() {
        let ours = [
            exec("lost", S::Failed, D::Stopped),
            exec("stopped", S::Running, D::Stopped),
            exec("cancel-queued", S::Running, D::Stopped),
        ];
        let held = [
            held("lost", true),
            held("stopped", true),
            held("cancel-queued", true),
            held("stranger", true),
            held("stranger-done", false),
        ];
        let pending = [Message::CancelExecution {
            execution_id: id("cancel-queued"),
            reason: String::new(),
        }];
        let why: Vec<(ExecutionId, StopWhy)> = reconcile(&held, &ours, &pending)
            .into_iter()
            .map(|c| match c {
                Correction::Cancel {
                    execution_id, why, ..
                } => (execution_id, why),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            why,
            vec![
                (id("lost"), StopWhy::Ended(S::Failed)),
                (id("stopped"), StopWhy::Stopped),
                (id("stranger"), StopWhy::Unknown),
            ]
        );
    }
}
