//! The node registry: every compute node the orchestrator knows, its admission and link state, and the
//! resources its active executions hold. Kept in memory (heartbeats are frequent and need no fsync) and
//! written to the `nodes` table on every admission or connection change, so a restarted orchestrator still
//! knows which nodes it approved or rejected.
//!
//! Sized for fleets (10,000 nodes on one orchestrator): each node's state sits behind an `Arc`, so a scheduling
//! snapshot ([`Registry::candidates`], taken for every decision and every delivered report) copies pointers,
//! not descriptions; a writer copies a state only while a snapshot still holds it (`Arc::make_mut`). The map
//! is ordered by node id, so listings and snapshots come out sorted without a sort.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::model::{
    NodeAdmission, NodeConnection, NodeId, NodeMembership, NodeResources, NodeState, Resources,
    now_rfc3339,
};

use super::scheduler::Candidate;

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with the snapshots handed out; changed through `Arc::make_mut`.
    state: Arc<NodeState>,
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
    inner: Arc<Mutex<BTreeMap<NodeId, Entry>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Entry>> {
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
                    state: Arc::new(n),
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
        self.lock().get(id).map(|e| NodeState::clone(&e.state))
    }

    /// A node's membership, without copying its description (checked on every heartbeat and delivery).
    pub fn membership(&self, id: &NodeId) -> Option<NodeMembership> {
        self.lock().get(id).map(|e| e.state.membership)
    }

    /// Every known node, ordered by id.
    pub fn all(&self) -> Vec<NodeState> {
        self.lock()
            .values()
            .map(|e| NodeState::clone(&e.state))
            .collect()
    }

    /// One node as a scheduler candidate, with what it holds now.
    pub fn candidate(&self, id: &NodeId) -> Option<Candidate> {
        self.lock().get(id).map(|e| Candidate {
            node: Arc::clone(&e.state),
            allocated: e.allocated,
        })
    }

    /// Candidates for the scheduler (every known node, ordered by id; the scheduler filters and explains).
    /// Pointer copies: cheap enough to take for every decision with 10,000 nodes.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.lock()
            .values()
            .map(|e| Candidate {
                node: Arc::clone(&e.state),
                allocated: e.allocated,
            })
            .collect()
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
                state: Arc::new(state.clone()),
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
    pub fn heartbeat(&self, id: &NodeId, available: NodeResources) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else {
            return false;
        };
        e.last_seen = std::time::Instant::now();
        let state = Arc::make_mut(&mut e.state);
        state.connection_state.last_heartbeat = now_rfc3339();
        state.info.compute_node_info.available_capacity = available;
        state.connection == NodeConnection::Connected
    }

    /// Marks a node disconnected; returns its state if it was connected.
    pub fn disconnected(&self, id: &NodeId, why: &str) -> Option<NodeState> {
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        if e.state.connection == NodeConnection::Disconnected {
            return None;
        }
        e.disconnected_at = Some(std::time::Instant::now());
        let state = Arc::make_mut(&mut e.state);
        state.connection = NodeConnection::Disconnected;
        state.connection_state.status = NodeConnection::Disconnected;
        state.connection_state.disconnected_since = now_rfc3339();
        state.connection_state.last_error = why.to_owned();
        Some(state.clone())
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
                let state = Arc::make_mut(&mut e.state);
                state.connection_state.last_error = format!(
                    "lost: disconnected for longer than NodeLostAfter ({}s); its batch and service executions were rescheduled (was: {})",
                    lost_after.as_secs(),
                    state.connection_state.last_error
                );
                lost.push(state.clone());
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
        let state = Arc::make_mut(&mut map.get_mut(id)?.state);
        state.membership = membership;
        // Approving a node no credential admitted makes the operator its admission.
        if membership == NodeMembership::Approved && state.admission == NodeAdmission::None {
            state.admission = NodeAdmission::Operator;
        }
        Some(state.clone())
    }

    pub fn remove(&self, id: &NodeId) -> Option<NodeState> {
        self.lock()
            .remove(id)
            .map(|e| Arc::unwrap_or_clone(e.state))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeInfo;

    fn node(id: &str) -> NodeState {
        NodeState {
            info: NodeInfo {
                node_id: id.to_owned().into(),
                ..Default::default()
            },
            membership: NodeMembership::Approved,
            ..Default::default()
        }
    }

    fn id(s: &str) -> NodeId {
        s.to_owned().into()
    }

    #[test]
    fn snapshots_share_states_and_come_out_ordered() {
        let r = Registry::default();
        for n in ["c", "a", "b"] {
            r.connected(node(n));
        }
        let first = r.candidates();
        let ids: Vec<&str> = first.iter().map(|c| c.node.info.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let all: Vec<String> = r
            .all()
            .into_iter()
            .map(|n| n.info.node_id.as_str().to_owned())
            .collect();
        assert_eq!(all, ["a", "b", "c"]);
        // A second snapshot points at the same states: nothing was copied.
        let second = r.candidates();
        for (x, y) in first.iter().zip(&second) {
            assert!(Arc::ptr_eq(&x.node, &y.node));
        }
    }

    #[test]
    fn changes_after_a_snapshot_leave_it_as_it_was() {
        let r = Registry::default();
        r.connected(node("a"));
        let before = r.candidates();
        let free = Resources {
            cpu: 1.5,
            ..Default::default()
        };
        assert!(r.heartbeat(&id("a"), free.into()));
        r.allocate(&id("a"), &free, false);
        assert!(r.disconnected(&id("a"), "gone").is_some());
        // The snapshot a scheduling decision holds does not move under it.
        let old = &before[0];
        assert_eq!(old.node.connection, NodeConnection::Connected);
        assert_eq!(
            old.node
                .info
                .compute_node_info
                .available_capacity
                .resources
                .cpu,
            0.0
        );
        assert_eq!(old.allocated.cpu, 0.0);
        // The registry has the new state.
        let now = &r.candidates()[0];
        assert!(!Arc::ptr_eq(&old.node, &now.node));
        assert_eq!(now.node.connection, NodeConnection::Disconnected);
        assert_eq!(now.node.connection_state.last_error, "gone");
        assert_eq!(
            now.node
                .info
                .compute_node_info
                .available_capacity
                .resources
                .cpu,
            1.5
        );
        assert_eq!(now.allocated.cpu, 1.5);
    }

    #[test]
    fn membership_is_read_without_the_description() {
        let r = Registry::default();
        assert_eq!(r.membership(&id("a")), None);
        r.connected(node("a"));
        assert_eq!(r.membership(&id("a")), Some(NodeMembership::Approved));
        r.set_membership(&id("a"), NodeMembership::Rejected);
        assert_eq!(r.membership(&id("a")), Some(NodeMembership::Rejected));
        assert_eq!(
            r.remove(&id("a")).map(|n| n.membership),
            Some(NodeMembership::Rejected)
        );
        assert_eq!(r.membership(&id("a")), None);
    }
}
