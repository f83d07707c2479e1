//! Who may join: the orchestrator's decision on a compute node's handshake, from the node's Noise-proven id,
//! its join proof, the allow-list and what the registry already says about it.
//!
//! The model (also in the README):
//! - no token and no allow-list configured: every node joins (`OPEN`), approved unless `ManualApproval`;
//! - a valid join proof (`TOKEN`) or an allow-listed peer id (`ALLOW_LIST`): approved unless `ManualApproval`;
//! - an invalid proof: refused and never recorded in the registry (a wrong secret is a misconfiguration or an
//!   attack; recording it would let anyone fill the registry);
//! - no proof and not listed: PENDING until `cod node approve`, or refused when `RequireToken` is set. New
//!   pending nodes are capped ([`Policy::max_pending`]) so unauthenticated peers cannot grow the registry;
//! - REJECTED nodes are refused, whatever they present; nodes an operator approved keep their approval by
//!   peer id (Noise proves it), with or without a proof; nodes admitted by a credential they no longer
//!   show (dropped from the allow-list, token removed) go back to PENDING on their next handshake.
//!
//! This module decides only; the caller records and answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::{NodeAdmission, NodeId, NodeMembership};
use crate::transport::{JoinProof, JoinToken};

/// The admission settings (`Orchestrator.Auth`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The join token compute nodes must prove (`None`: no token).
    pub token: Option<JoinToken>,
    /// Peer ids admitted without a token.
    pub allowed: BTreeSet<NodeId>,
    /// Refuse nodes that neither prove the token nor are allow-listed, instead of keeping them PENDING.
    pub require_token: bool,
    /// The most nodes that may wait in PENDING without credentials; new ones beyond are refused.
    pub max_pending: usize,
}

/// What to do with a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admit it, this way. Whether it is approved at once also depends on `ManualApproval` ([`membership`]).
    Admit(NodeAdmission),
    /// Keep (or put) it in PENDING until an operator decides.
    Wait,
    /// Refuse the handshake.
    Refuse(Refusal),
}

/// Why a handshake is refused; the text goes back to the node and into the orchestrator's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An operator rejected the node.
    #[error(
        "this node was rejected by the orchestrator's operator (`cod node approve` or `cod node delete` \
         undoes that)"
    )]
    Rejected,
    /// The proof does not match the orchestrator's token (or the ids).
    #[error(
        "invalid join token: the proof does not match the orchestrator's Orchestrator.Auth.Token; set the \
         same value in this node's Compute.Auth.Token"
    )]
    BadProof,
    /// No proof, not allow-listed, and the orchestrator requires one.
    #[error(
        "this orchestrator admits only nodes with its join token or on its allow-list: set \
         Compute.Auth.Token (or ask the operator to add this node's id to Orchestrator.Auth.AllowedNodes)"
    )]
    TokenRequired,
    /// Too many nodes already wait for approval.
    #[error(
        "too many nodes are waiting for approval on this orchestrator; try again later, or use a join token"
    )]
    TooManyPending,
}

// === impl Policy ===

impl Policy {
    /// Whether any admission control is configured (without it, the orchestrator behaves as before).
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.allowed.is_empty()
    }

    /// Decides on a handshake from `peer` (its Noise-authenticated id) to the orchestrator `local`.
    /// `previous` is the registry's entry (membership and admission), `pending_count` how many nodes wait.
    pub fn decide(
        &self,
        peer: &NodeId,
        local: &NodeId,
        proof: Option<&JoinProof>,
        previous: Option<(NodeMembership, NodeAdmission)>,
        pending_count: usize,
    ) -> Verdict {
        // The in-process compute half has our id; no remote peer can (Noise proves ids).
        if peer == local {
            return Verdict::Admit(NodeAdmission::Local);
        }
        if let Some((NodeMembership::Rejected, _)) = previous {
            return Verdict::Refuse(Refusal::Rejected);
        }
        // A proof is checked whenever the orchestrator has a token: a wrong one is refused even for a node
        // approved before (a rotated token revokes nodes that did not get the new one). Without a token
        // here, a proof means nothing and is ignored.
        if let (Some(token), Some(proof)) = (&self.token, proof) {
            return if token.verify(proof, peer, local) {
                Verdict::Admit(NodeAdmission::Token)
            } else {
                Verdict::Refuse(Refusal::BadProof)
            };
        }
        if self.allowed.contains(peer) {
            return Verdict::Admit(NodeAdmission::AllowList);
        }
        if self.is_open() {
            return Verdict::Admit(NodeAdmission::Open);
        }
        match previous {
            // An operator's approval stands (Noise proves the id), without a proof.
            Some((NodeMembership::Approved, NodeAdmission::Operator)) => {
                Verdict::Admit(NodeAdmission::Operator)
            }
            _ if self.require_token => Verdict::Refuse(Refusal::TokenRequired),
            // Known nodes keep their place whatever the cap. A node admitted by a credential it no longer
            // shows (removed from the allow-list, token taken out of its config, or admitted before a policy
            // was configured) goes back to waiting: removing a credential revokes it.
            Some(_) => Verdict::Wait,
            None if pending_count >= self.max_pending => Verdict::Refuse(Refusal::TooManyPending),
            None => Verdict::Wait,
        }
    }
}

/// The membership an admitted or waiting node gets: admitted nodes are approved unless `manual_approval`
/// holds them for an operator (a node approved before and the local half never wait); waiting nodes are
/// PENDING.
pub fn membership(
    verdict: Verdict,
    previous: Option<NodeMembership>,
    manual_approval: bool,
) -> NodeMembership {
    match verdict {
        Verdict::Admit(NodeAdmission::Local) => NodeMembership::Approved,
        Verdict::Admit(_) if !manual_approval || previous == Some(NodeMembership::Approved) => {
            NodeMembership::Approved
        }
        _ => NodeMembership::Pending,
    }
}

/// Remembers when each refused node was last logged at warn level: a refused node retries its handshake
/// every heartbeat, and a misconfigured fleet must not flood the orchestrator's log (and its SD card).
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Last warn per node. Bounded by [`RefusalLog::MAX_NODES`]: cleared when full, which at worst logs a
    /// few nodes again early.
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl RefusalLog {
    /// How often one node's refusal is logged at warn level.
    pub const EVERY: Duration = Duration::from_secs(60);
    /// The most nodes remembered.
    const MAX_NODES: usize = 1024;

    /// Whether `peer`'s refusal should be logged at warn level now (otherwise at debug).
    pub fn should_warn(&self, peer: &NodeId, now: Instant) -> bool {
        // Never held across an await; a poisoned lock only means a panic elsewhere, so use the data.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < Self::EVERY)
        {
            return false;
        }
        if last.len() >= Self::MAX_NODES {
            last.clear();
        }
        last.insert(peer.clone(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::from(s.to_owned())
    }

    fn token_policy() -> Policy {
        Policy {
            token: JoinToken::new("join-me"),
            max_pending: 2,
            ..Policy::default()
        }
    }

    #[test]
    fn valid_proofs_admit_and_invalid_ones_are_refused() {
        let policy = token_policy();
        let (node, orch) = (id("node"), id("orch"));
        let good = policy.token.as_ref().expect("token").prove(&node, &orch);
        let bad = JoinToken::new("guess").expect("token").prove(&node, &orch);
        let replayed = policy
            .token
            .as_ref()
            .expect("token")
            .prove(&node, &id("other-orch"));
        assert_eq!(
            policy.decide(&node, &orch, Some(&good), None, 0),
            Verdict::Admit(NodeAdmission::Token)
        );
        for proof in [bad, replayed] {
            assert_eq!(
                policy.decide(&node, &orch, Some(&proof), None, 0),
                Verdict::Refuse(Refusal::BadProof)
            );
        }
        // Even a node approved before is refused with a wrong proof (token rotation revokes).
        assert_eq!(
            policy.decide(
                &node,
                &orch,
                Some(&bad),
                Some((NodeMembership::Approved, NodeAdmission::Token)),
                0
            ),
            Verdict::Refuse(Refusal::BadProof)
        );
    }

    #[test]
    fn nodes_without_proof_wait_up_to_the_cap_or_are_refused_when_required() {
        let mut policy = token_policy();
        let (node, orch) = (id("node"), id("orch"));
        assert_eq!(policy.decide(&node, &orch, None, None, 1), Verdict::Wait);
        assert_eq!(
            policy.decide(&node, &orch, None, None, 2),
            Verdict::Refuse(Refusal::TooManyPending)
        );
        // A node already pending keeps its place even when the cap is reached.
        assert_eq!(
            policy.decide(
                &node,
                &orch,
                None,
                Some((NodeMembership::Pending, NodeAdmission::None)),
                2
            ),
            Verdict::Wait
        );
        // An operator's approval stands without a proof; a credential no longer shown is revoked.
        assert_eq!(
            policy.decide(
                &node,
                &orch,
                None,
                Some((NodeMembership::Approved, NodeAdmission::Operator)),
                0
            ),
            Verdict::Admit(NodeAdmission::Operator)
        );
        for lost in [
            NodeAdmission::AllowList,
            NodeAdmission::Token,
            NodeAdmission::Open,
            NodeAdmission::None,
        ] {
            assert_eq!(
                policy.decide(
                    &node,
                    &orch,
                    None,
                    Some((NodeMembership::Approved, lost)),
                    2
                ),
                Verdict::Wait,
                "{lost:?}"
            );
        }
        policy.require_token = true;
        assert_eq!(
            policy.decide(&node, &orch, None, None, 0),
            Verdict::Refuse(Refusal::TokenRequired)
        );
    }

    #[test]
    fn allow_list_local_and_rejected() {
        let policy = Policy {
            allowed: [id("listed")].into(),
            require_token: true,
            ..Policy::default()
        };
        let orch = id("orch");
        assert_eq!(
            policy.decide(&id("listed"), &orch, None, None, 0),
            Verdict::Admit(NodeAdmission::AllowList)
        );
        assert_eq!(
            policy.decide(&orch, &orch, None, None, 0),
            Verdict::Admit(NodeAdmission::Local)
        );
        assert_eq!(
            policy.decide(
                &id("listed"),
                &orch,
                None,
                Some((NodeMembership::Rejected, NodeAdmission::AllowList)),
                0
            ),
            Verdict::Refuse(Refusal::Rejected)
        );
    }

    #[test]
    fn no_policy_is_open_and_ignores_proofs() {
        let policy = Policy::default();
        let (node, orch) = (id("node"), id("orch"));
        let proof = JoinToken::new("x").expect("token").prove(&node, &orch);
        assert_eq!(
            policy.decide(&node, &orch, Some(&proof), None, 100),
            Verdict::Admit(NodeAdmission::Open)
        );
    }

    #[test]
    fn refusals_are_logged_at_warn_once_a_minute_per_node() {
        let log = RefusalLog::default();
        let start = Instant::now();
        assert!(log.should_warn(&id("a"), start));
        assert!(!log.should_warn(&id("a"), start + Duration::from_secs(1)));
        assert!(log.should_warn(&id("b"), start + Duration::from_secs(1)));
        assert!(log.should_warn(&id("a"), start + RefusalLog::EVERY));
    }

    #[test]
    fn membership_follows_manual_approval() {
        let token = Verdict::Admit(NodeAdmission::Token);
        assert_eq!(membership(token, None, false), NodeMembership::Approved);
        assert_eq!(membership(token, None, true), NodeMembership::Pending);
        assert_eq!(
            membership(token, Some(NodeMembership::Pending), false),
            NodeMembership::Approved
        );
        assert_eq!(
            membership(token, Some(NodeMembership::Approved), true),
            NodeMembership::Approved
        );
        assert_eq!(
            membership(Verdict::Wait, Some(NodeMembership::Approved), false),
            NodeMembership::Pending
        );
        assert_eq!(
            membership(Verdict::Admit(NodeAdmission::Local), None, true),
            NodeMembership::Approved
        );
        assert_eq!(
            membership(Verdict::Wait, None, false),
            NodeMembership::Pending
        );
    }
}
