//! The node registry: every compute node the orchestrator knows, its admission and link state, and the
//! resources its active executions hold. Kept in memory (heartbeats are frequent and need no fsync) and
//! written to the `nodes` table on every admission or connection change, so a restarted orchestrator still
//! knows which nodes it approved or rejected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::{
    NodeAdmission, NodeConnection, NodeId, NodeMembership, NodeState, Resources, now_rfc3339,
};

use super::scheduler::Candidate;

#[derive(Debug, Clone)]
struct Entry {
    state: NodeState,
    allocated: Resources,
    /// Monotonic time of the last sign of life, for the disconnect timeout.
    last_seen: std::time::Instant,
    /// Since when it is disconnected (monotonic), for `NodeLostAfter`; `None` while connected.
    disconnected_at: Option<std::time::Instant>,
    /// Declared lost (its work moved) since it disconnected.
    lost: bool,
}

/// Shared, in-memory registry. A std mutex: it is never held across an `.await`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    inner: Arc<Mutex<HashMap<NodeId, Entry>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        // A panic while holding this lock aborts the process (panic = abort in release), so poisoning only
        // happens in tests; recover the data rather than cascade.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads persisted nodes at start-up, all disconnected until they handshake again.
    pub fn load(&self, nodes: Vec<NodeState>, allocated: HashMap<NodeId, Resources>) {
        let mut map = self.lock();
        for mut n in nodes {
            n.connection = NodeConnection::Disconnected;
            n.connection_state.status = NodeConnection::Disconnected;
            let id = n.info.node_id.clone();
            let alloc = allocated.get(&id).copied().unwrap_or_default();
            map.insert(
                id,
                Entry {
                    state: n,
                    allocated: alloc,
                    last_seen: std::time::Instant::now(),
                    // A restart does not know how long the node was away before: count from now.
                    disconnected_at: Some(std::time::Instant::now()),
                    lost: false,
                },
            );
        }
    }

    pub fn get(&self, id: &NodeId) -> Option<NodeState> {
        self.lock().get(id).map(|e| e.state.clone())
    }

    pub fn all(&self) -> Vec<NodeState> {
        let mut v: Vec<NodeState> = self.lock().values().map(|e| e.state.clone()).collect();
        v.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
        v
    }

    /// Candidates for the scheduler (every known node; the scheduler filters and explains).
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut v: Vec<Candidate> = self
            .lock()
            .values()
            .map(|e| Candidate {
                node: e.state.clone(),
                allocated: e.allocated,
            })
            .collect();
        v.sort_by(|a, b| a.node.info.node_id.cmp(&b.node.info.node_id));
        v
    }

    /// Records a node's (re)connection with its description, membership and admission as the caller decided
    /// them; returns the stored state.
    pub fn connected(&self, mut state: NodeState) -> NodeState {
        let mut map = self.lock();
        let id = state.info.node_id.clone();
        let now = now_rfc3339();
        let previous = map.get(&id);
        state.connection = NodeConnection::Connected;
        state.connection_state.status = NodeConnection::Connected;
        state.connection_state.connected_since = now.clone();
        state.connection_state.last_heartbeat = now;
        let allocated = previous.map(|p| p.allocated).unwrap_or_default();
        map.insert(
            id,
            Entry {
                state: state.clone(),
                allocated,
                last_seen: std::time::Instant::now(),
                disconnected_at: None,
                lost: false,
            },
        );
        state
    }

    /// How many nodes are in each (connection, membership), for `/metrics`: one pass, nothing cloned.
    pub fn counts(&self) -> std::collections::BTreeMap<(&'static str, &'static str), u64> {
        let mut counts = std::collections::BTreeMap::new();
        for e in self.lock().values() {
            *counts
                .entry((e.state.connection.as_str(), e.state.membership.as_str()))
                .or_default() += 1;
        }
        counts
    }

    /// How many nodes wait for an operator's decision (for the admission cap).
    pub fn pending_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.state.membership == NodeMembership::Pending)
            .count()
    }

    /// Records a heartbeat; false if the node is unknown (it must handshake first).
    pub fn heartbeat(&self, id: &NodeId, available: Resources) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else {
            return false;
        };
        e.last_seen = std::time::Instant::now();
        e.state.connection_state.last_heartbeat = now_rfc3339();
        e.state.info.compute_node_info.available_capacity = available;
        e.state.connection == NodeConnection::Connected
    }

    /// Marks a node disconnected; returns its state if it was connected.
    pub fn disconnected(&self, id: &NodeId, why: &str) -> Option<NodeState> {
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        if e.state.connection == NodeConnection::Disconnected {
            return None;
        }
        e.state.connection = NodeConnection::Disconnected;
        e.state.connection_state.status = NodeConnection::Disconnected;
        e.state.connection_state.disconnected_since = now_rfc3339();
        e.state.connection_state.last_error = why.to_owned();
        e.disconnected_at = Some(std::time::Instant::now());
        Some(e.state.clone())
    }

    /// Nodes disconnected for longer than `lost_after` and not yet declared lost: declares them lost (the
    /// connection stays DISCONNECTED, Bacalhau's API has no other state; `LastError` says lost) and returns
    /// their states.
    pub fn newly_lost(&self, lost_after: std::time::Duration) -> Vec<NodeState> {
        let mut map = self.lock();
        let mut lost = Vec::new();
        for e in map.values_mut() {
            let overdue = e
                .disconnected_at
                .is_some_and(|at| at.elapsed() > lost_after);
            if overdue && !e.lost && e.state.connection == NodeConnection::Disconnected {
                e.lost = true;
                e.state.connection_state.last_error = format!(
                    "lost: disconnected for longer than NodeLostAfter ({}s); its batch and service executions were rescheduled (was: {})",
                    lost_after.as_secs(),
                    e.state.connection_state.last_error
                );
                lost.push(e.state.clone());
            }
        }
        lost.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
        lost
    }

    /// Nodes connected but silent for longer than `timeout`.
    pub fn silent_for(&self, timeout: std::time::Duration) -> Vec<NodeId> {
        self.lock()
            .iter()
            .filter(|(_, e)| {
                e.state.connection == NodeConnection::Connected && e.last_seen.elapsed() > timeout
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Undoes [`Registry::newly_lost`] for a node whose loss could not be stored, so the next check retries.
    pub fn not_lost_yet(&self, id: &NodeId) {
        if let Some(e) = self.lock().get_mut(id) {
            e.lost = false;
        }
    }

    /// Sets a node's membership (an operator's decision); returns the new state.
    pub fn set_membership(&self, id: &NodeId, membership: NodeMembership) -> Option<NodeState> {
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        e.state.membership = membership;
        // Approving a node no credential admitted makes the operator its admission.
        if membership == NodeMembership::Approved && e.state.admission == NodeAdmission::None {
            e.state.admission = NodeAdmission::Operator;
        }
        Some(e.state.clone())
    }

    pub fn remove(&self, id: &NodeId) -> Option<NodeState> {
        self.lock().remove(id).map(|e| e.state)
    }

    /// Adds (or, with `release`, returns) resources held by an execution on `id`.
    pub fn allocate(&self, id: &NodeId, r: &Resources, release: bool) {
        if let Some(e) = self.lock().get_mut(id) {
            e.allocated = if release {
                e.allocated.saturating_sub(r)
            } else {
                e.allocated.add(r)
            };
        }
    }
}
