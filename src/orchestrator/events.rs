//! What compute nodes tell the orchestrator: handshakes, heartbeats, and durable execution reports, plus the
//! evaluation worker that re-plans jobs when something changed.

use crate::model::{
    Evaluation, EvaluationId, Event, ExecutionStateType, JobType, NodeId, NodeMembership,
    NodeState, NodeType, State, now_nanos,
};
use crate::store::{Reader, StoreError, WriteTxn};
use crate::transport::protocol::HeldExecution;
use crate::transport::{JoinProof, Message, Request, Response, Sequenced};

use super::admission::{self, Refusal, Verdict};
use super::jobs::{self, AfterCommit, apply_decision, stop_execution};
use super::liveness::{self, ResultFate};
use super::reconcile;
use super::replan::{Planning, held as held_resources};
use super::scheduler;
use super::state::{self, Tables};
use super::{Orchestrator, OrchestratorError};

impl Orchestrator {
    /// Answers one request from a compute node.
    pub(crate) async fn handle_request(&self, peer: &NodeId, request: Request) -> Response {
        match request {
            Request::Handshake {
                info,
                last_applied_seq,
                join_proof,
                executions,
            } => {
                self.handshake(peer, info, last_applied_seq, join_proof, executions)
                    .await
            }
            Request::Heartbeat { available, .. } => {
                if let Some(refused) = self.refuse_unless_admitted(peer) {
                    return refused;
                }
                if self.inner.registry.heartbeat(peer, available) {
                    Response::Ack {
                        last_applied_seq: 0,
                    }
                } else {
                    Response::Refused {
                        reason: "unknown node: handshake first".to_owned(),
                    }
                }
            }
            Request::UpdateInfo { info } => match self.inner.registry.get(peer) {
                Some(state) if state.membership == NodeMembership::Rejected => Response::Refused {
                    reason: Refusal::Rejected.to_string(),
                },
                Some(mut state) => {
                    state.info = info;
                    state.info.node_id = peer.clone();
                    let state = self.inner.registry.connected(state);
                    match self.put_node(state).await {
                        Ok(()) => Response::Ack {
                            last_applied_seq: 0,
                        },
                        Err(e) => Response::Refused {
                            reason: format!("cannot store node info: {}", e.1),
                        },
                    }
                }
                None => Response::Refused {
                    reason: "unknown node: handshake first".to_owned(),
                },
            },
            Request::Deliver { messages } => self.deliver(peer, messages).await,
            Request::ReadOutput { .. } => Response::Refused {
                reason: "orchestrators hold no execution output; ask the compute node".to_owned(),
            },
        }
    }

    /// What a running execution has written since the offsets, asked of the node running it: `None` when the
    /// node cannot be reached (the follower simply asks again later).
    pub(crate) async fn read_output(
        &self,
        node: &NodeId,
        execution_id: &crate::model::ExecutionId,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Option<(Vec<u8>, Vec<u8>, bool)> {
        let request = Request::ReadOutput {
            execution_id: execution_id.clone(),
            stdout_offset,
            stderr_offset,
        };
        match self.inner.client.request(node, request).await {
            Ok(Response::Output {
                stdout,
                stderr,
                running,
            }) => Some((stdout, stderr, running)),
            _ => None,
        }
    }

    /// `Some(Refused)` for a node an operator rejected: every request after the handshake is refused too,
    /// so a rejected node that is still connected gets nothing done.
    fn refuse_unless_admitted(&self, peer: &NodeId) -> Option<Response> {
        let membership = self.inner.registry.membership(peer)?;
        (membership == NodeMembership::Rejected).then(|| Response::Refused {
            reason: Refusal::Rejected.to_string(),
        })
    }

    async fn handshake(
        &self,
        peer: &NodeId,
        mut info: crate::model::NodeInfo,
        compute_applied: u64,
        proof: Option<JoinProof>,
        held: Vec<HeldExecution>,
    ) -> Response {
        let registry = &self.inner.registry;
        let previous = registry.get(peer).map(|p| (p.membership, p.admission));
        let verdict = self.inner.config.admission.decide(
            peer,
            &self.inner.node_id,
            proof.as_ref(),
            previous,
            registry.pending_count(),
        );
        let admission = match verdict {
            Verdict::Refuse(why) => {
                // Not recorded in the registry (see admission.rs); the log is the orchestrator's record,
                // at warn level once a minute per node (it retries every heartbeat).
                if self
                    .inner
                    .refusals
                    .should_warn(peer, std::time::Instant::now())
                {
                    tracing::warn!(node_id = %peer, reason = %why, "compute node refused");
                } else {
                    tracing::debug!(node_id = %peer, reason = %why, "compute node refused");
                }
                return Response::Refused {
                    reason: why.to_string(),
                };
            }
            Verdict::Admit(how) => how,
            Verdict::Wait => previous.map(|(_, a)| a).unwrap_or_default(),
        };
        let membership = admission::membership(
            verdict,
            previous.map(|(m, _)| m),
            !self.inner.config.auto_approve,
        );
        info.node_id = peer.clone();
        info.node_type = NodeType::Compute;
        let state = self.inner.registry.connected(NodeState {
            info,
            membership,
            admission,
            ..Default::default()
        });
        let t = self.inner.tables;
        let outbox = self.inner.outbox.clone();
        let (peer_id, stored) = (peer.clone(), state.clone());
        let settings = self.inner.config.scheduler();
        // The reconciliation runs in the same transaction as the node's registration, before the outbox
        // resumes: what it compares cannot change underneath it.
        let applied = self
            .write(move |txn, after| {
                txn.put(t.nodes, stored.info.node_id.as_str(), &stored)?;
                // A node that applied more than this orchestrator sent outlived this orchestrator's state.
                outbox.rebase(txn, &peer_id, compute_applied)?;
                let planning = Planning {
                    t: &t,
                    outbox: &outbox,
                    settings: &settings,
                };
                let corrected =
                    reconcile::run(txn, &planning, &peer_id, compute_applied, &held, after)?;
                Ok((outbox.last_applied(txn, &peer_id)?, corrected))
            })
            .await;
        let applied = match applied {
            Ok((a, corrected)) => {
                if corrected > 0 {
                    tracing::info!(node_id = %peer, corrected, "reconciliation corrected executions");
                }
                a
            }
            Err(e) => {
                return Response::Refused {
                    reason: format!("orchestrator cannot store node state: {e}"),
                };
            }
        };
        tracing::info!(
            node_id = %peer,
            membership = state.membership.as_str(),
            admission = state.admission.as_str(),
            "compute node connected"
        );
        self.inner
            .outbox
            .peer_connected(peer, compute_applied)
            .await;
        if state.membership == NodeMembership::Approved {
            self.reevaluate_waiting_jobs_soon();
        }
        self.changed();
        Response::Welcome {
            orchestrator_id: self.inner.node_id.clone(),
            last_applied_seq: applied,
        }
    }

    /// Marks a node disconnected (connection closed or heartbeats stopped). Its executions stay: a node that
    /// comes back delivers their results from its outbox.
    pub(crate) async fn node_gone(&self, peer: &NodeId, why: &str) {
        self.inner.outbox.peer_disconnected(peer).await;
        let Some(state) = self.inner.registry.disconnected(peer, why) else {
            return;
        };
        tracing::info!(node_id = %peer, reason = why, "compute node disconnected");
        // Queued (in event order: `put_node` queues when called), not awaited: a fleet losing its link must
        // not hold the event loop for a commit per node. Group commit lets the whole burst share commits.
        let write = self.put_node(state);
        tokio::spawn(async move {
            if let Err(e) = write.await {
                tracing::warn!(node_id = %e.0, error = %e.1, "cannot store the node's disconnection");
            }
        });
        self.changed();
    }

    /// Stores a node's state; queued at the call, durable when the future yields `Ok`.
    fn put_node(
        &self,
        state: NodeState,
    ) -> impl Future<Output = Result<(), (NodeId, StoreError)>> + Send + 'static {
        let t = self.inner.tables;
        let id = state.info.node_id.clone();
        let write = self
            .inner
            .store
            .write(move |txn| txn.put(t.nodes, state.info.node_id.as_str(), &state));
        async move { write.await.map_err(|e| (id, e)) }
    }

    async fn deliver(&self, peer: &NodeId, messages: Vec<Sequenced>) -> Response {
        match self.inner.registry.membership(peer) {
            Some(m) if m != NodeMembership::Rejected => {}
            Some(_) => {
                return Response::Refused {
                    reason: Refusal::Rejected.to_string(),
                };
            }
            None => {
                return Response::Refused {
                    reason: "unknown node: handshake first".to_owned(),
                };
            }
        }
        let t = self.inner.tables;
        let outbox = self.inner.outbox.clone();
        let settings = self.inner.config.scheduler();
        let peer_id = peer.clone();
        let result = self
            .write(move |txn, after| {
                outbox.apply_inbound(txn, &peer_id, messages, |txn, message| {
                    apply_report(txn, &t, &outbox, &peer_id, message, &settings, after)
                })
            })
            .await;
        match result {
            Ok(last) => Response::Ack {
                last_applied_seq: last,
            },
            Err(e) => {
                tracing::warn!(node_id = %peer, error = %e, "cannot apply compute reports");
                Response::Refused {
                    reason: format!("orchestrator cannot apply reports now: {e}"),
                }
            }
        }
    }

    /// [`Orchestrator::enqueue_reevaluation_of_waiting_jobs`] for a node that was just approved, coalesced: while
    /// a pass is queued, further joins ride on it (the evaluations it queues read the registry when they run).
    fn reevaluate_waiting_jobs_soon(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.reevaluation_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let o = self.clone();
        tokio::spawn(async move {
            // Cleared before the pass reads anything: a node approved from now on queues the next pass.
            o.inner.reevaluation_pending.store(false, Ordering::Release);
            if let Err(e) = o.enqueue_reevaluation_of_waiting_jobs().await {
                tracing::warn!(error = %e, "cannot re-evaluate queued jobs");
            }
        });
    }

    /// Asks for an evaluation of every waiting job (queued jobs, daemon jobs), and wakes the worker.
    pub(crate) async fn enqueue_reevaluation_of_waiting_jobs(
        &self,
    ) -> Result<(), OrchestratorError> {
        let t = self.inner.tables;
        // Every approved handshake lands here: with nothing waiting (the common case when a fleet connects)
        // a read of the index's size answers it, with no commit to wait for.
        if self
            .inner
            .store
            .read(move |txn| txn.count(t.waiting))
            .await?
            == 0
        {
            return Ok(());
        }
        self.inner
            .store
            .write(move |txn| jobs::wake_waiting(txn, &t))
            .await?;
        self.wake_evaluations();
        Ok(())
    }

    /// Runs every evaluation that is due, one transaction each, jobs of higher `Priority` first (then older
    /// jobs), so queued jobs with a higher priority take freed capacity first.
    pub(crate) async fn run_due_evaluations(&self) -> Result<(), OrchestratorError> {
        let t = self.inner.tables;
        let now = now_nanos();
        let due: Vec<Evaluation> = self
            .inner
            .store
            .read(move |txn| {
                let mut due = Vec::new();
                for (_, e) in txn.all(t.evaluations)? {
                    if e.wait_until <= now {
                        let order = txn
                            .get(t.jobs, e.job_id.as_str())?
                            .map(|j| (std::cmp::Reverse(j.priority), j.create_time))
                            .unwrap_or((std::cmp::Reverse(i64::MIN), 0));
                        due.push((order, e));
                    }
                }
                due.sort_by_key(|(order, _)| *order);
                Ok(due.into_iter().map(|(_, e)| e).collect())
            })
            .await?;
        for eval in due {
            let outbox = self.inner.outbox.clone();
            let settings = self.inner.config.scheduler();
            self.write(move |txn, after| {
                // Gone when a newer wake-up replaced and ran it already; nothing to do then.
                if !txn.delete(t.evaluations, eval.id.as_str())? {
                    return Ok(());
                }
                if let Some(mut job) = txn.get(t.jobs, eval.job_id.as_str())?
                    && !job.state.state_type.is_terminal()
                {
                    let execs = state::executions_of(txn, &t, &job.id)?;
                    let decision =
                        scheduler::plan(&job, &execs, &after.candidates(), &settings, now_nanos());
                    let stored = Some(job.state.state_type);
                    apply_decision(
                        txn, &t, &outbox, &mut job, stored, &execs, decision, &eval.id, &settings,
                        after,
                    )?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// Applies one report from a compute node inside the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn apply_report(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    outbox: &crate::outbox::Outbox,
    peer: &NodeId,
    message: Message,
    settings: &scheduler::Settings,
    after: &mut AfterCommit,
) -> Result<(), StoreError> {
    let (job_id, exec_id) = match &message {
        Message::BidResult {
            job_id,
            execution_id,
            ..
        }
        | Message::ExecutionProgress {
            job_id,
            execution_id,
            ..
        }
        | Message::RunResult {
            job_id,
            execution_id,
            ..
        }
        | Message::ComputeError {
            job_id,
            execution_id,
            ..
        } => (job_id.clone(), execution_id.clone()),
        other => {
            tracing::warn!(node_id = %peer, message = ?other, "ignoring a message meant for compute nodes");
            return Ok(());
        }
    };
    let key = state::exec_key(&job_id, &exec_id);
    let Some(mut exec) = txn.get(t.executions, &key)? else {
        tracing::warn!(node_id = %peer, execution_id = %exec_id, "report for an unknown execution ignored");
        return Ok(());
    };
    if &exec.node_id != peer {
        tracing::warn!(node_id = %peer, execution_id = %exec_id, "report from a node that does not own the execution ignored");
        return Ok(());
    }
    let Some(mut job) = txn.get(t.jobs, job_id.as_str())? else {
        return Ok(());
    };
    // Exactly one result per partition: a result for a partition another execution already completed is
    // discarded (the execution ends superseded); the first result stops the partition's other executions.
    // A late result from a lost node arrives for an execution the orchestrator failed itself, and counts.
    // Only batch partitions are exclusive: ops and daemon executions are one per node, and a service's
    // executions are interchangeable replicas (all planned as partition 0), so one ending stops no other.
    let was_terminal = exec.is_terminal();
    // The compute state in the store, for the state counts (the one save below changes it).
    let stored = Some(exec.compute_state.state_type);
    if matches!(message, Message::RunResult { .. })
        && job.job_type == JobType::Batch
        && (!was_terminal || liveness::ended_by_orchestrator(&exec))
    {
        let execs = state::executions_of(txn, t, &job.id)?;
        match liveness::settle(&exec, &execs) {
            ResultFate::Superseded { by } => {
                let why = format!(
                    "superseded: partition {} was already completed by execution {by}; this result from node {peer} was discarded",
                    exec.partition_index
                );
                exec.compute_state = State::new(ExecutionStateType::Cancelled, why.clone());
                state::save_execution(txn, t, &mut exec, stored)?;
                state::record(
                    txn,
                    t,
                    &job,
                    Some(&exec.id),
                    Event::new("Execution", why).with("NewState", "Cancelled"),
                    after,
                )?;
                if !was_terminal {
                    release_and_wake(txn, t, &exec, settings, after)?;
                }
                return Ok(());
            }
            ResultFate::Keep { stop } => {
                if was_terminal {
                    state::record(
                        txn,
                        t,
                        &job,
                        Some(&exec.id),
                        Event::new(
                            "Execution",
                            format!(
                                "late result from node {peer} for partition {} kept: no other execution completed it",
                                exec.partition_index
                            ),
                        ),
                        after,
                    )?;
                }
                for id in stop {
                    let Some(other) = txn.get(t.executions, &state::exec_key(&job.id, &id))? else {
                        continue;
                    };
                    let reason = format!(
                        "superseded: execution {} on node {peer} completed partition {} first",
                        exec.id, exec.partition_index
                    );
                    state::record(
                        txn,
                        t,
                        &job,
                        Some(&id),
                        Event::new(
                            "Execution",
                            format!(
                                "stopping execution {id} on node {}: {reason}",
                                other.node_id
                            ),
                        ),
                        after,
                    )?;
                    stop_execution(txn, t, outbox, other, "superseded", &reason, after)?;
                }
            }
        }
    } else if was_terminal {
        return Ok(());
    }
    let mut ended = false;
    let event = match message {
        Message::BidResult { accepted: true, .. } => {
            crate::metrics::ORCHESTRATOR.bids_accepted.inc();
            exec.compute_state = State::new(ExecutionStateType::BidAccepted, "bid accepted");
            Event::new(
                "Exec Scanning",
                format!("node {peer} accepted the execution"),
            )
            .with("NewState", "BidAccepted")
        }
        Message::BidResult {
            accepted: false,
            reason,
            ..
        } => {
            crate::metrics::ORCHESTRATOR.bids_rejected.inc();
            exec.compute_state = State::new(ExecutionStateType::AskForBidRejected, reason.clone());
            ended = true;
            Event::new("Exec Scanning", format!("node {peer} declined: {reason}"))
                .with("NewState", "AskForBidRejected")
        }
        Message::ExecutionProgress { state, event, .. } => {
            exec.compute_state = State::new(state, event.message.clone());
            event.with("NewState", state.name())
        }
        Message::RunResult {
            published_result,
            run_output,
            ..
        } => {
            let code = run_output.exit_code;
            exec.compute_state =
                State::new(ExecutionStateType::Completed, format!("exit code {code}"));
            exec.published_result = published_result;
            exec.run_output = Some(run_output);
            ended = true;
            Event::new(
                "Execution",
                format!("execution completed with exit code {code}"),
            )
            .with("NewState", "Completed")
        }
        Message::ComputeError { state, error, .. } => {
            exec.compute_state = State::new(state, error.clone());
            exec.run_output
                .get_or_insert_with(Default::default)
                .error_msg = error.clone();
            ended = true;
            Event::new("Execution", format!("execution {}: {error}", state.name()))
                .with("NewState", state.name())
                .with("IsError", "true")
                .with("FailsExecution", "true")
        }
        _ => return Ok(()),
    };
    state::save_execution(txn, t, &mut exec, stored)?;
    state::record(txn, t, &job, Some(&exec.id), event, after)?;
    if ended {
        // Capacity freed: the waiting jobs it can serve are evaluated, highest priority first, by the
        // worker. While any wait, this job joins them rather than jumping the queue.
        let others_wait = if was_terminal {
            txn.count(t.waiting)? > 0
        } else {
            release_and_wake(txn, t, &exec, settings, after)?
        };
        if others_wait && !job.state.state_type.is_terminal() {
            jobs::schedule_wake(txn, t, &job, 0)?;
            after.evaluate = true;
        } else if !job.state.state_type.is_terminal() {
            let execs = state::executions_of(txn, t, &job.id)?;
            let decision =
                scheduler::plan(&job, &execs, &after.candidates(), settings, now_nanos());
            let eval_id = EvaluationId::generate();
            let stored = Some(job.state.state_type);
            apply_decision(
                txn, t, outbox, &mut job, stored, &execs, decision, &eval_id, settings, after,
            )?;
        }
    }
    Ok(())
}

/// `exec` ended: its node's capacity is free again, and the waiting jobs it can serve are woken. Whether any
/// job waits.
fn release_and_wake(
    txn: &mut WriteTxn<'_, '_>,
    t: &Tables,
    exec: &crate::model::Execution,
    settings: &scheduler::Settings,
    after: &mut AfterCommit,
) -> Result<bool, StoreError> {
    let freed = held_resources(exec);
    after.release(exec.node_id.clone(), freed);
    let node = after.candidate(&exec.node_id);
    let woken = jobs::wake_for_freed(txn, t, node, freed, settings)?;
    after.evaluate |= woken.is_some_and(|n| n > 0);
    Ok(woken.is_some())
}
