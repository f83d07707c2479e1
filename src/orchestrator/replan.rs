//! Re-planning one job inside the caller's transaction, for the corrections that end executions outside a
//! compute node's own reports (a lost node, a reconciliation).

use crate::model::{
    EvaluationId, Event, Execution, ExecutionDesiredStateType, ExecutionStateType, JobId, State,
    now_nanos,
};
use crate::outbox::Outbox;
use crate::store::{Reader, StoreError, WriteTxn};

use super::jobs::{AfterCommit, apply_decision};
use super::scheduler::{self, Settings};
use super::state::{self, Tables};

/// What a re-plan needs besides the transaction.
#[derive(Clone, Copy)]
pub(crate) struct Planning<'a> {
    pub t: &'a Tables,
    pub outbox: &'a Outbox,
    pub settings: &'a Settings,
}

impl Planning<'_> {
    /// Runs the scheduler for `job_id` and applies its plan, unless the job is gone or has ended.
    pub fn replan(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        job_id: &JobId,
        after: &mut AfterCommit,
    ) -> Result<(), StoreError> {
        let t = self.t;
        let Some(mut job) = txn.get(t.jobs, job_id.as_str())? else {
            return Ok(());
        };
        if job.state.state_type.is_terminal() {
            return Ok(());
        }
        let execs = state::executions_of(txn, t, &job.id)?;
        let decision = scheduler::plan(
            &job,
            &execs,
            &after.candidates(),
            self.settings,
            now_nanos(),
        );
        let stored = Some(job.state.state_type);
        apply_decision(
            txn,
            t,
            self.outbox,
            &mut job,
            stored,
            &execs,
            decision,
            &EvaluationId::generate(),
            self.settings,
            after,
        )
    }

    /// Ends `exec` as failed by the orchestrator itself (its node was lost, or no longer has it): the
    /// desired state is Stopped, which tells the scheduler the node is not to blame, so the node may take the
    /// partition again later. Records `event` and returns the execution's resources.
    pub fn fail_for_node(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        mut exec: Execution,
        reason: &str,
        event: Event,
        after: &mut AfterCommit,
    ) -> Result<(), StoreError> {
        let t = self.t;
        let stored = Some(exec.compute_state.state_type);
        exec.compute_state = State::new(ExecutionStateType::Failed, reason);
        exec.desired_state = State::new(ExecutionDesiredStateType::Stopped, reason);
        state::save_execution(txn, t, &mut exec, stored)?;
        if let Some(job) = txn.get(t.jobs, exec.job_id.as_str())? {
            state::record(txn, t, &job, Some(&exec.id), event, after)?;
        }
        after.release(exec.node_id.clone(), held(&exec));
        Ok(())
    }
}

/// The resources an execution holds on its node.
pub(crate) fn held(exec: &Execution) -> crate::model::Resources {
    exec.allocated_resources
        .tasks
        .values()
        .next()
        .copied()
        .unwrap_or_default()
}
