//! The messages between orchestrators and compute nodes, and their wire encoding.
//!
//! Every request is an [`Envelope`] encoded as CBOR (minicbor, through its serde bridge so the model's serde
//! types travel unchanged). The envelope carries a version; a receiver refuses versions it does not know with a
//! clear error rather than misreading them. Messages that must not be lost travel inside [`Request::Deliver`]
//! as [`Sequenced`] items: the sender keeps them in its durable outbox until the receiver acknowledges their
//! sequence number, and the receiver applies each sequence number at most once. Replays are therefore harmless.

use serde::{Deserialize, Serialize};

use super::JoinProof;
use crate::model::{
    Event, Execution, ExecutionId, ExecutionStateType, JobId, NodeId, NodeInfo, NodeResources,
    RunCommandResult, SpecConfig,
};

/// libp2p protocol name of the request-response protocol.
pub const PROTOCOL_NAME: &str = "/cod/compute/1";

/// Current envelope version.
///
/// 2: the handshake carries an optional join proof. Version 1 peers could not tell a handshake with a proof
/// from a malformed one, so the version is bumped: an old peer and a new one each refuse the other's messages
/// with [`CodecError::Version`] ("upgrade the older side") instead of misreading them.
///
/// 3: the handshake carries the executions the node holds, for the reconciliation (see
/// `orchestrator::reconcile`). A version 2 handshake has no such field and would read as "the node holds
/// nothing", which would fail every execution it runs; the bump makes both sides refuse each other instead.
pub const WIRE_VERSION: u16 = 3;

/// Largest encoded request or response accepted (inline WASM modules travel inside AskForBid).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The versioned wrapper of every message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// [`WIRE_VERSION`] of the sender.
    pub version: u16,
    /// The message.
    pub body: T,
}

/// A request from one side to the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Compute → orchestrator, first thing after connecting: who I am, what I can do, and the last
    /// orchestrator sequence number I applied (so the orchestrator replays from there).
    Handshake {
        /// The node's description.
        info: NodeInfo,
        /// Highest orchestrator→compute sequence number this node has applied.
        last_applied_seq: u64,
        /// Proof that the node knows the join token, bound to both peer ids (see [`super::JoinToken`]).
        /// Compute code leaves it `None`: the transport fills it in on the way out when a token is configured,
        /// because only the transport knows the Noise-authenticated ids it must be bound to.
        join_proof: Option<JoinProof>,
        /// Every execution this node holds for this orchestrator and where it is, so both sides can compare
        /// what they know (the reconciliation).
        executions: Vec<HeldExecution>,
    },
    /// Compute → orchestrator, periodically: still alive, and how much is free.
    Heartbeat {
        /// Free capacity (with the free GPUs listed; peers that predate the list ignore it).
        available: NodeResources,
        /// Executions running.
        running: u64,
    },
    /// Compute → orchestrator when its description changes (labels, capacity).
    UpdateInfo {
        /// The new description.
        info: NodeInfo,
    },
    /// Either direction: durable messages, in sequence order.
    Deliver {
        /// The messages.
        messages: Vec<Sequenced>,
    },
    /// Orchestrator → compute: what a running execution has written so far, from these offsets (live logs;
    /// not durable, simply asked again).
    ReadOutput {
        /// The execution.
        execution_id: ExecutionId,
        /// Bytes of stdout already seen.
        stdout_offset: u64,
        /// Bytes of stderr already seen.
        stderr_offset: u64,
    },
}

/// One execution as a compute node knows it, sent in its handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldExecution {
    /// The execution.
    pub execution_id: ExecutionId,
    /// Its job.
    pub job_id: JobId,
    /// Whether it still runs (or waits to) on the node, or has ended there (its report is queued or delivered).
    pub active: bool,
}

/// A durable message with its sender-assigned sequence number (the idempotency key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced {
    /// Strictly increasing per (sender, receiver).
    pub seq: u64,
    /// The message.
    pub message: Message,
}

/// Durable messages (Bacalhau's bprotocol/NCL data plane).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Orchestrator → compute: bid on this execution (carries the job snapshot). With `accept_directly` the
    /// compute node may start at once if it bids (Bacalhau's "desired Running" path, saving a round trip).
    AskForBid {
        /// The execution, with `job` set.
        execution: Box<Execution>,
        /// Start without waiting for BidAccepted.
        accept_directly: bool,
    },
    /// Orchestrator → compute: your bid won; run it.
    BidAccepted {
        /// The execution.
        execution_id: ExecutionId,
    },
    /// Orchestrator → compute: your bid lost; forget it.
    BidRejected {
        /// The execution.
        execution_id: ExecutionId,
        /// Why.
        reason: String,
    },
    /// Orchestrator → compute: stop it.
    CancelExecution {
        /// The execution.
        execution_id: ExecutionId,
        /// Why.
        reason: String,
    },
    /// Compute → orchestrator: my answer to AskForBid.
    BidResult {
        /// The execution.
        execution_id: ExecutionId,
        /// Its job.
        job_id: JobId,
        /// Whether the node bids.
        accepted: bool,
        /// Why not, when not.
        reason: String,
    },
    /// Compute → orchestrator: progress (Running, Publishing) with a history event.
    ExecutionProgress {
        /// The execution.
        execution_id: ExecutionId,
        /// Its job.
        job_id: JobId,
        /// The new state.
        state: ExecutionStateType,
        /// What happened.
        event: Event,
    },
    /// Compute → orchestrator: finished and published.
    RunResult {
        /// The execution.
        execution_id: ExecutionId,
        /// Its job.
        job_id: JobId,
        /// Where the result went.
        published_result: SpecConfig,
        /// Output summary and exit code.
        run_output: RunCommandResult,
    },
    /// Compute → orchestrator: it failed (could not run, timed out, was cancelled, could not publish).
    ComputeError {
        /// The execution.
        execution_id: ExecutionId,
        /// Its job.
        job_id: JobId,
        /// Failed or Cancelled.
        state: ExecutionStateType,
        /// What went wrong, for the user.
        error: String,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Handshake accepted: resend your outbox after `last_applied_seq`.
    Welcome {
        /// The orchestrator's id.
        orchestrator_id: NodeId,
        /// Highest compute→orchestrator sequence number the orchestrator has applied from this node.
        last_applied_seq: u64,
    },
    /// Deliver/Heartbeat/UpdateInfo accepted; for Deliver, every message up to `last_applied_seq` is applied.
    Ack {
        /// Highest sequence number applied (for Deliver; 0 otherwise).
        last_applied_seq: u64,
    },
    /// The answer to `ReadOutput`: the bytes from the offsets asked (a bounded chunk of each), and whether the
    /// execution is still running on the node (when not, the bytes are empty: its result has the output).
    Output {
        /// More stdout.
        stdout: Vec<u8>,
        /// More stderr.
        stderr: Vec<u8>,
        /// Still running.
        running: bool,
    },
    /// Refused (not approved, rejected, unknown node, unsupported version…). The reason is for the operator.
    Refused {
        /// Why.
        reason: String,
    },
}

/// An undecodable message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not CBOR of the expected shape.
    #[error("malformed message")]
    Malformed(#[source] minicbor_serde::error::DecodeError),
    /// A version this node does not speak.
    #[error(
        "unsupported wire version {got} (this node speaks {WIRE_VERSION}); upgrade the older side"
    )]
    Version {
        /// What arrived.
        got: u16,
    },
    /// Encoding failed (not expected for these types).
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Encodes a message in its envelope.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, CodecError> {
    minicbor_serde::to_vec(Envelope {
        version: WIRE_VERSION,
        body,
    })
    .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes an enveloped message, refusing unknown versions.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CodecError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u16,
    }
    let v: VersionOnly = minicbor_serde::from_slice(bytes).map_err(CodecError::Malformed)?;
    if v.version != WIRE_VERSION {
        return Err(CodecError::Version { got: v.version });
    }
    let env: Envelope<T> = minicbor_serde::from_slice(bytes).map_err(CodecError::Malformed)?;
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let req = Request::Deliver {
            messages: vec![Sequenced {
                seq: 7,
                message: Message::BidAccepted {
                    execution_id: ExecutionId::generate(),
                },
            }],
        };
        let bytes = encode(&req).expect("encodes");
        let back: Request = decode(&bytes).expect("decodes");
        assert_eq!(back, req);
    }

    #[test]
    fn heartbeats_carry_free_gpus_in_bacalhaus_flat_shape() {
        let available = NodeResources {
            resources: crate::model::Resources {
                cpu: 1.5,
                memory: 1 << 30,
                disk: 0,
                gpu: 1,
            },
            gpus: vec![crate::model::GpuResource {
                index: 1,
                name: "Tesla T4".into(),
                vendor: "NVIDIA".into(),
                memory: 15360,
                pci_address: "0000:3B:00.0".into(),
            }],
        };
        let req = Request::Heartbeat {
            available: available.clone(),
            running: 1,
        };
        let back: Request = decode(&encode(&req).expect("encodes")).expect("decodes");
        assert_eq!(back, req);
        // The JSON is Bacalhau's `Resources`: counts and `GPUs` side by side.
        let json = serde_json::to_value(&available).expect("json");
        assert_eq!(json["GPU"], 1);
        assert_eq!(json["GPUs"][0]["Memory"], 15360);
        // A peer without the list (older Cod) still decodes, with none listed.
        let old = Request::Heartbeat {
            available: NodeResources::default(),
            running: 0,
        };
        let back: Request = decode(&encode(&old).expect("encodes")).expect("decodes");
        assert_eq!(back, old);
    }

    #[test]
    fn handshakes_carry_the_join_proof() {
        let token = crate::transport::JoinToken::new("t0ken").expect("non-empty");
        let (node, orch) = (
            NodeId::from("node".to_owned()),
            NodeId::from("orch".to_owned()),
        );
        for join_proof in [None, Some(token.prove(&node, &orch))] {
            let req = Request::Handshake {
                info: NodeInfo::default(),
                last_applied_seq: 3,
                join_proof,
                executions: vec![HeldExecution {
                    execution_id: ExecutionId::generate(),
                    job_id: JobId::from("j-1".to_owned()),
                    active: true,
                }],
            };
            let bytes = encode(&req).expect("encodes");
            let back: Request = decode(&bytes).expect("decodes");
            assert_eq!(back, req);
            if let Request::Handshake {
                join_proof: Some(p),
                ..
            } = back
            {
                assert!(token.verify(&p, &node, &orch));
            }
        }
    }

    #[test]
    fn version_one_peers_are_refused_clearly() {
        // What a pre-admission node sends: its handshake has no proof field and its envelope says 1.
        let bytes = minicbor_serde::to_vec(Envelope {
            version: 1,
            body: Response::Ack {
                last_applied_seq: 0,
            },
        })
        .expect("encodes");
        let err = decode::<Response>(&bytes).expect_err("old version");
        assert!(err.to_string().contains("upgrade the older side"), "{err}");
    }

    #[test]
    fn refuses_unknown_versions() {
        let bytes = minicbor_serde::to_vec(Envelope {
            version: 99,
            body: Response::Ack {
                last_applied_seq: 0,
            },
        })
        .expect("encodes");
        assert!(matches!(
            decode::<Response>(&bytes),
            Err(CodecError::Version { got: 99 })
        ));
        assert!(matches!(
            decode::<Response>(b"\xff\x00"),
            Err(CodecError::Malformed(_))
        ));
    }
}
