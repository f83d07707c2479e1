//! The cloneable handle other components use to talk to the [`EventLoop`](super::EventLoop): each call is a
//! [`Command`] with a oneshot for its answer, so nothing outside the loop touches the swarm.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Event, Request, Response, Streams, TransportError};
use crate::model::NodeId;

/// What a [`Client`] asks of the event loop.
#[derive(Debug)]
pub(super) enum Command {
    /// Send `request` to `peer` and answer on `reply`.
    Request {
        /// Which side of the node asks: decides where an in-process request goes.
        origin: Origin,
        /// The receiver.
        peer: NodeId,
        /// The request, boxed so the command channel's slots stay small (a request can carry a NodeInfo).
        request: Box<Request>,
        /// The answer, or why there is none.
        reply: oneshot::Sender<Result<Response, TransportError>>,
    },
    /// Attach an in-process peer; the answer is its attachment generation and its event stream.
    AttachLocal {
        /// The attachment.
        reply: oneshot::Sender<(u64, mpsc::Receiver<Event>)>,
    },
    /// Close every connection to a remote peer (a node the orchestrator rejected).
    Disconnect {
        /// The peer.
        peer: NodeId,
    },
}

/// Which side of a node a [`Client`] speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The node itself: requests go to remote peers (or to the attached in-process peer for the local id).
    Network,
    /// The in-process peer of the given attachment: its requests go to the node's own event stream. The
    /// generation tells a stale handle (from a replaced or dropped attachment) from the current one.
    Local {
        /// Which attachment.
        generation: u64,
    },
}

/// A cloneable handle to the transport's event loop.
#[derive(Debug, Clone)]
pub struct Client {
    /// This node's id, also the id of the in-process peer; cached so callers need no round trip.
    local_id: NodeId,
    /// Commands to the event loop; bounded, so callers wait when the loop falls behind.
    commands: mpsc::Sender<Command>,
    /// Where this handle's requests come from.
    origin: Origin,
    /// The loop publishes its current listen addresses (with `/p2p/<id>`) here.
    listen_addrs: watch::Receiver<Vec<String>>,
    /// The configured listen addresses, joined for error messages; empty when the node does not listen, in
    /// which case [`Client::listen_addrs`] does not wait for an address.
    listen_spec: Arc<str>,
    /// How long [`Client::listen_addrs`] waits for the first address.
    listen_wait: Duration,
    /// Raw protocol streams on the same swarm (bitswap).
    streams: Streams,
    /// The loop publishes the peers it has a connection to here.
    connected: watch::Receiver<BTreeSet<NodeId>>,
    /// The loop publishes the peers it has a link to here (read by tests: the link is an optimisation
    /// nothing else needs to know about).
    #[cfg_attr(not(test), allow(dead_code))]
    linked: watch::Receiver<BTreeSet<NodeId>>,
}

// === impl Client ===

impl Client {
    /// A handle for the node itself (the loop hands out in-process handles through [`Client::attach_local`]).
    #[allow(clippy::too_many_arguments)] // one per field, each from a different channel of the loop
    pub(super) fn new(
        local_id: NodeId,
        commands: mpsc::Sender<Command>,
        listen_addrs: watch::Receiver<Vec<String>>,
        listen_spec: Arc<str>,
        listen_wait: Duration,
        streams: Streams,
        connected: watch::Receiver<BTreeSet<NodeId>>,
        linked: watch::Receiver<BTreeSet<NodeId>>,
    ) -> Self {
        Self {
            local_id,
            commands,
            origin: Origin::Network,
            listen_addrs,
            listen_spec,
            listen_wait,
            streams,
            connected,
            linked,
        }
    }

    /// Raw protocol streams on this node's swarm (same identity and connections).
    pub fn streams(&self) -> Streams {
        self.streams.clone()
    }

    /// Whether at least one connection to `peer` is open.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.connected.borrow().contains(peer)
    }

    /// Waits until `peer` is connected, at most `timeout`; returns whether it is. Cancel-safe.
    pub async fn wait_connected(&self, peer: &NodeId, timeout: Duration) -> bool {
        let mut connected = self.connected.clone();
        matches!(
            tokio::time::timeout(timeout, connected.wait_for(|c| c.contains(peer))).await,
            Ok(Ok(_))
        )
    }

    /// Whether `peer` has a link now.
    #[cfg(test)]
    pub(super) fn is_linked(&self, peer: &NodeId) -> bool {
        self.linked.borrow().contains(peer)
    }

    /// Waits until `peer` has a link ([`super::link`]), at most `timeout`; returns whether it has.
    #[cfg(test)]
    pub(super) async fn wait_linked(&self, peer: &NodeId, timeout: Duration) -> bool {
        let mut linked = self.linked.clone();
        matches!(
            tokio::time::timeout(timeout, linked.wait_for(|c| c.contains(peer))).await,
            Ok(Ok(_))
        )
    }

    /// This node's id.
    pub fn local_id(&self) -> &NodeId {
        &self.local_id
    }

    /// Sends `request` to `peer` and waits for its answer.
    ///
    /// Fails fast with [`TransportError::NotConnected`] when no connection to `peer` exists: the transport
    /// never dials compute nodes, it answers over the connections they opened. The wait is bounded by the
    /// configured request timeout ([`TransportError::RequestFailed`]).
    ///
    /// Cancel-safety: dropping the future after the request left does not recall it; the peer may still
    /// apply it, and its answer is discarded. Durable messages are safe to resend (sequence numbers).
    pub async fn request(
        &self,
        peer: &NodeId,
        request: Request,
    ) -> Result<Response, TransportError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Request {
            origin: self.origin,
            peer: peer.clone(),
            request: Box::new(request),
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| TransportError::ShutDown)?;
        answer.await.map_err(|_| TransportError::ShutDown)?
    }

    /// Closes every connection to the remote `peer` (nothing happens when none is open, or for the in-process
    /// peer). A compute node redials on its own; the orchestrator then refuses its handshake if it must.
    pub async fn disconnect(&self, peer: &NodeId) -> Result<(), TransportError> {
        self.commands
            .send(Command::Disconnect { peer: peer.clone() })
            .await
            .map_err(|_| TransportError::ShutDown)
    }

    /// The addresses other nodes can dial, each ending in `/p2p/<id>`.
    ///
    /// When the node was configured to listen, this waits (at most the request timeout) until the first
    /// listener is up, so a node listening on port 0 can learn its port. A node that listens nowhere gets an
    /// empty list at once. Cancel-safe.
    pub async fn listen_addrs(&self) -> Result<Vec<String>, TransportError> {
        let mut addrs = self.listen_addrs.clone();
        if self.listen_spec.is_empty() {
            return Ok(addrs.borrow().clone());
        }
        match tokio::time::timeout(self.listen_wait, addrs.wait_for(|a| !a.is_empty())).await {
            Ok(Ok(current)) => Ok(current.clone()),
            Ok(Err(_)) => Err(TransportError::ShutDown),
            Err(_) => Err(TransportError::Listen {
                addr: self.listen_spec.to_string(),
                reason: format!("no listener came up within {:?}", self.listen_wait),
            }),
        }
    }

    /// An in-process peer (a hybrid node's compute half): its requests arrive on this side's event stream and
    /// this side's requests to [`Client::local_id`] arrive on the returned stream. The in-process peer has the
    /// same id as this node.
    ///
    /// Both streams first see [`Event::PeerConnected`] for the local id. Attaching again replaces the previous
    /// attachment (the node's stream sees the old one disconnect); dropping the returned receiver detaches
    /// (the node's stream sees [`Event::PeerDisconnected`]).
    pub async fn attach_local(&self) -> Result<(Client, mpsc::Receiver<Event>), TransportError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::AttachLocal { reply })
            .await
            .map_err(|_| TransportError::ShutDown)?;
        let (generation, events) = answer.await.map_err(|_| TransportError::ShutDown)?;
        let client = Client {
            origin: Origin::Local { generation },
            ..self.clone()
        };
        Ok((client, events))
    }
}
