//! Node loss and late results.
//!
//! A compute node disconnected for longer than `Orchestrator.NodeLostAfter` is *lost*: its active batch and
//! service executions are failed by the orchestrator (desired state Stopped, so the scheduler does not hold
//! the failure against the node) and their partitions are placed elsewhere. Ops and daemon executions belong
//! to their node and stay. A lost node that comes back may still deliver a result from its outbox; exactly
//! one result per partition is kept (see [`settle`]).

use std::time::Duration;

use crate::model::{
    Event, Execution, ExecutionDesiredStateType, ExecutionId, ExecutionStateType, JobType, NodeId,
};
use crate::store::{Reader, StoreError, WriteTxn};

use super::jobs::AfterCommit;
use super::replan::Planning;
use super::state;

/// True for an execution the orchestrator failed itself because its node was lost (or no longer had it):
/// the only terminal executions a node may still deliver a result for.
pub(crate) fn ended_by_orchestrator(e: &Execution) -> bool {
    e.compute_state.state_type == ExecutionStateType::Failed
        && e.desired_state.state_type == ExecutionDesiredStateType::Stopped
}

/// Whether a lost node's execution of this job type moves to another node.
fn moves_when_lost(job_type: &JobType) -> bool {
    matches!(job_type, JobType::Batch | JobType::Service)
}

/// What happens to a result that arrives for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResultFate {
    /// The first result of its partition: keep it, and stop these other executions of the partition.
    Keep {
        /// Still-active executions of the same partition (replacements) to stop.
        stop: Vec<ExecutionId>,
    },
    /// Another execution already completed the partition: discard this result.
    Superseded {
        /// The execution whose result stands.
        by: ExecutionId,
    },
}

/// Decides the fate of `exec`'s result given every execution of its job: one result per partition.
pub(crate) fn settle(exec: &Execution, executions: &[Execution]) -> ResultFate {
    let siblings = executions
        .iter()
        .filter(|e| e.partition_index == exec.partition_index && e.id != exec.id);
    let mut stop = Vec::new();
    for e in siblings {
        if e.compute_state.state_type == ExecutionStateType::Completed {
            return ResultFate::Superseded { by: e.id.clone() };
        }
        if !e.is_terminal() && e.desired_state.state_type != ExecutionDesiredStateType::Stopped {
            stop.push(e.id.clone());
        }
    }
    ResultFate::Keep { stop }
}

/// Marks `node` lost inside the caller's transaction: fails its movable executions and re-plans their jobs.
pub(crate) fn lose_node(
    txn: &mut WriteTxn<'_, '_>,
    planning: &Planning<'_>,
    node: &NodeId,
    lost_after: Duration,
    after: &mut AfterCommit,
) -> Result<usize, StoreError> {
    let t = planning.t;
    let on_node = state::active_on_node(txn, t, node)?;
    let mut jobs = Vec::new();
    for exec in on_node {
        let Some(job) = txn.get(t.jobs, exec.job_id.as_str())? else {
            continue;
        };
        if !moves_when_lost(&job.job_type) {
            continue;
        }
        let reason = format!(
            "node {node} lost: disconnected for longer than NodeLostAfter ({}s)",
            lost_after.as_secs()
        );
        let event = Event::new(
            "Node Lost",
            format!(
                "{reason}; execution {} (partition {}) failed and its partition will be placed on another node",
                exec.id, exec.partition_index
            ),
        )
        .with("NewState", "Failed")
        .with("IsError", "true")
        .with("FailsExecution", "true");
        let job_id = exec.job_id.clone();
        planning.fail_for_node(txn, exec, &reason, event, after)?;
        if !jobs.contains(&job_id) {
            jobs.push(job_id);
        }
    }
    for job_id in &jobs {
        planning.replan(txn, job_id, after)?;
    }
    Ok(jobs.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;

    fn exec(id: &str, partition: u64, state: ExecutionStateType) -> Execution {
        Execution {
            id: ExecutionId::from(id.to_owned()),
            partition_index: partition,
            compute_state: State::new(state, ""),
            desired_state: State::new(ExecutionDesiredStateType::Running, ""),
            ..Default::default()
        }
    }

    #[test]
    fn a_late_result_is_discarded_when_the_replacement_completed() {
        let mut lost = exec("lost", 0, ExecutionStateType::Failed);
        lost.desired_state.state_type = ExecutionDesiredStateType::Stopped;
        let all = [
            lost.clone(),
            exec("other-partition", 1, ExecutionStateType::Running),
            exec("replacement", 0, ExecutionStateType::Completed),
        ];
        assert_eq!(
            settle(&lost, &all),
            ResultFate::Superseded {
                by: ExecutionId::from("replacement".to_owned())
            }
        );
    }

    #[test]
    fn a_late_result_is_kept_and_the_running_replacement_stopped() {
        let mut lost = exec("lost", 0, ExecutionStateType::Failed);
        lost.desired_state.state_type = ExecutionDesiredStateType::Stopped;
        let mut stopping = exec("stopping", 0, ExecutionStateType::Running);
        stopping.desired_state.state_type = ExecutionDesiredStateType::Stopped;
        let all = [
            lost.clone(),
            exec("replacement", 0, ExecutionStateType::Running),
            exec("failed-before", 0, ExecutionStateType::Failed),
            stopping,
            exec("other-partition", 1, ExecutionStateType::Running),
        ];
        assert_eq!(
            settle(&lost, &all),
            ResultFate::Keep {
                stop: vec![ExecutionId::from("replacement".to_owned())]
            }
        );
        assert!(ended_by_orchestrator(&lost));
        assert!(!ended_by_orchestrator(&all[2]));
    }

    #[test]
    fn only_batch_and_service_work_moves() {
        assert!(moves_when_lost(&JobType::Batch));
        assert!(moves_when_lost(&JobType::Service));
        assert!(!moves_when_lost(&JobType::Ops));
        assert!(!moves_when_lost(&JobType::Daemon));
    }
}
