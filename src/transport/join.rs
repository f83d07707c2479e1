//! The join token: a secret shared by an orchestrator and the compute nodes it should admit, and the proof a
//! compute node sends instead of the token itself.
//!
//! The token never travels, not even inside Noise: a node sends
//! `HMAC-SHA256(token, "cod-join-v1" || len || node id || len || orchestrator id)`. Both ids are the peer ids that
//! Noise has already authenticated, so a proof is good for one node talking to one orchestrator only: a rogue
//! orchestrator that receives it cannot replay it to another orchestrator, and another node cannot reuse it.
//! Verification compares in constant time (`ring::hmac::verify`).

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::model::NodeId;

/// Domain separation: a proof for this protocol cannot be mistaken for an HMAC computed for anything else.
const DOMAIN: &[u8] = b"cod-join-v1";

/// The shared join token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(Vec<u8>);

/// What a compute node sends in its handshake to show that it knows the join token.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinProof(#[serde(with = "proof_bytes")] [u8; 32]);

// === impl JoinToken ===

impl JoinToken {
    /// A token from its text; `None` when empty (no token configured).
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| Self(token.as_bytes().to_vec()))
    }

    /// The proof that `node` knows this token, for `orchestrator`.
    pub fn prove(&self, node: &NodeId, orchestrator: &NodeId) -> JoinProof {
        let tag = hmac::sign(&self.key(), &message(node, orchestrator));
        let mut proof = [0u8; 32];
        proof.copy_from_slice(tag.as_ref());
        JoinProof(proof)
    }

    /// Whether `proof` is what `node` must send to `orchestrator` with this token (constant-time compare).
    pub fn verify(&self, proof: &JoinProof, node: &NodeId, orchestrator: &NodeId) -> bool {
        hmac::verify(&self.key(), &message(node, orchestrator), &proof.0).is_ok()
    }

    fn key(&self) -> hmac::Key {
        // HMAC takes keys of any length (long ones are hashed first).
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// What the proof signs: the domain, then both ids, each length-prefixed so that ("ab", "c") and ("a", "bc")
/// stay apart.
fn message(node: &NodeId, orchestrator: &NodeId) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for id in [node.as_str(), orchestrator.as_str()] {
        m.extend_from_slice(&(id.len() as u64).to_be_bytes());
        m.extend_from_slice(id.as_bytes());
    }
    m
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

impl std::fmt::Debug for JoinProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A proof is not secret (it only works for one pair of ids), but it is noise in logs.
        f.write_str("JoinProof(..)")
    }
}

/// CBOR byte string for the 32 proof bytes (serde would otherwise write an array of 32 integers).
mod proof_bytes {
    use serde::{Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let bytes = serde_bytes_vec(d)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| D::Error::invalid_length(bytes.len(), &"32 bytes"))
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::from(s.to_owned())
    }

    #[test]
    fn a_proof_verifies_only_for_its_token_and_both_ids() {
        let token = JoinToken::new("s3cret-join-token").expect("non-empty");
        let (node, orch) = (id("12D3KooWnode"), id("12D3KooWorch"));
        let proof = token.prove(&node, &orch);
        assert!(token.verify(&proof, &node, &orch));

        let other_token = JoinToken::new("another-token").expect("non-empty");
        assert!(!other_token.verify(&proof, &node, &orch), "wrong token");
        assert!(
            !token.verify(&proof, &id("12D3KooWother"), &orch),
            "another node cannot reuse the proof"
        );
        assert!(
            !token.verify(&proof, &node, &id("12D3KooWrogue")),
            "a rogue orchestrator cannot replay it elsewhere"
        );
        assert!(
            !token.verify(&proof, &orch, &node),
            "the roles are not interchangeable"
        );
    }

    #[test]
    fn ids_are_length_prefixed() {
        let token = JoinToken::new("t").expect("non-empty");
        assert_ne!(
            token.prove(&id("ab"), &id("c")),
            token.prove(&id("a"), &id("bc"))
        );
    }

    #[test]
    fn matches_a_plain_hmac_sha256() {
        // Pins the construction (a changed domain or layout would break every deployed node).
        let token = JoinToken::new("key").expect("non-empty");
        let proof = token.prove(&id("n"), &id("o"));
        // HMAC-SHA256(b"key", b"cod-join-v1\0\0\0\0\0\0\0\x01n\0\0\0\0\0\0\0\x01o"), computed apart from this
        // crate (Python's hmac module).
        let expected = "0667d806944f90a5ce9dc013c3d3230d2894c04fa5f0028bc8c24dd0ed3e1a01";
        let hex: String = proof.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn empty_tokens_are_no_token_and_debug_hides_the_value() {
        assert!(JoinToken::new("  ").is_none());
        let token = JoinToken::new("visible?").expect("non-empty");
        assert!(!format!("{token:?}").contains("visible"));
    }
}
