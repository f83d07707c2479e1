//! The link between orchestrators and compute nodes: libp2p (TCP + Noise + Yamux, identify, ping) carrying
//! versioned CBOR requests and answers ([`protocol`]): deliveries on one long-lived stream per connection
//! ([`link`]), everything else (and deliveries to a peer without a link) on request-response
//! ([`protocol::PROTOCOL_NAME`]), one stream per request.
//!
//! Layout (rust-libp2p's file-sharing example): [`new`] returns a cloneable [`Client`], a stream of [`Event`]s
//! and an [`EventLoop`] that alone owns the `Swarm`. No libp2p type leaves this module: callers see [`NodeId`]s
//! and multiaddrs as strings.
//!
//! Compute nodes dial out to their orchestrators (edge devices sit behind NAT) and redial with exponential
//! backoff; the orchestrator answers and sends its own requests back over the same connection.
//!
//! A hybrid node (orchestrator and compute in one process) still speaks these messages between its two halves:
//! [`Client::attach_local`] gives the in-process compute side its own client/event pair whose requests reach
//! the orchestrator side's event stream (and vice versa) without a socket.

mod join;
pub mod protocol;
mod swarm_key;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::model::NodeId;
pub use join::{JoinProof, JoinToken};
pub use protocol::{HeldExecution, Message, Request, Response, Sequenced};
pub use swarm_key::{SwarmKey, SwarmKeyError};

/// Transport settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Multiaddrs to listen on (orchestrators; compute-only nodes usually listen on none).
    pub listen: Vec<String>,
    /// Orchestrator multiaddrs to dial and keep dialing (compute nodes), with or without `/p2p/<id>`.
    pub orchestrators: Vec<String>,
    /// IPFS peers (`.../p2p/<id>`) to dial and keep connected for bitswap. They are not Cod nodes: their
    /// connections raise no [`Event`]s, so orchestrator and compute logic never see them.
    pub ipfs_peers: Vec<String>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Close connections idle this long (heartbeats keep live ones open).
    pub idle_timeout: Duration,
    /// Compute nodes: the join token. Outgoing handshakes to remote orchestrators get a proof of it
    /// ([`Request::Handshake::join_proof`]); the token itself never leaves the node.
    pub join_token: Option<JoinToken>,
    /// The private-network key: every TCP connection is encrypted with it before Noise, so only nodes that
    /// hold it can connect at all (IPFS peers included: a Kubo peer needs the same `swarm.key`).
    pub swarm_key: Option<SwarmKey>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            orchestrators: Vec::new(),
            ipfs_peers: Vec::new(),
            request_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            join_token: None,
            swarm_key: None,
        }
    }
}

/// Something the other side did.
#[derive(Debug)]
pub enum Event {
    /// A peer connected (first connection). For compute nodes the peer is an orchestrator they dialed.
    PeerConnected(NodeId),
    /// A peer's last connection closed.
    PeerDisconnected(NodeId),
    /// A peer sent a request; answer through `reply` (dropping it makes the peer see an error).
    Request {
        /// Who sent it.
        peer: NodeId,
        /// What.
        /// Boxed: requests are large (a job snapshot) and events wait in bounded queues.
        request: Box<Request>,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
}

/// A request that could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection to the peer and none could be made.
    #[error("node {peer} is not connected")]
    NotConnected {
        /// The peer.
        peer: NodeId,
    },
    /// The request was sent but no answer came.
    #[error("request to {peer} failed: {reason}")]
    RequestFailed {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// A listen or dial address does not parse.
    #[error("address {addr:?} is not a valid multiaddr: {reason}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The event loop has stopped.
    #[error("transport is shut down")]
    ShutDown,
    /// Loading or creating the identity key failed.
    #[error("identity key {path:?}: {reason}")]
    Identity {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

mod behaviour;
mod client;
mod codec;
mod event_loop;
mod identity;
mod inbound;
mod link;
mod refusals;
mod stream;
mod tcp;

pub use client::Client;
/// The frame reader, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) use codec::read_frame;
pub use event_loop::EventLoop;
pub use identity::{load_or_create_identity, parse_node_id};
/// The link's frame reader, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) use link::read_one as read_link_frame;
pub use stream::{IncomingStreams, PeerStream, Streams};

/// A node identity (its keypair), opaque outside this module.
pub use identity::Identity;

/// Builds the transport. Nothing runs until [`EventLoop::run`] is spawned.
///
/// Call it inside a Tokio runtime: listening binds its sockets right away, so a taken port or a bad address
/// fails here ([`TransportError::Listen`], [`TransportError::BadAddress`]) rather than later.
pub fn new(
    identity: Identity,
    config: Config,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), TransportError> {
    event_loop::build(identity, config)
}
