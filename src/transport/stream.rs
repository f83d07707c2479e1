//! Raw protocol streams on the node's swarm, for protocols that bring their own framing (bitswap).
//!
//! A thin wrapper over `libp2p-stream`: [`Streams`] opens outbound streams and registers inbound protocols,
//! [`PeerStream`] is one negotiated stream (futures `AsyncRead + AsyncWrite`). Peers are named by [`NodeId`],
//! so no libp2p type leaves the transport.
//!
//! Outbound streams go through libp2p-stream; inbound ones through [`super::inbound`], which queues up to
//! [`super::inbound::QUEUE`] per protocol (libp2p-stream's own inbound hand-over has one slot and drops
//! streams that arrive back to back, as Kubo's answers do).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite, Stream};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{mpsc, watch};

use super::TransportError;
use crate::model::NodeId;

/// Opens and accepts raw protocol streams. Cheap to clone; each clone has its own backpressure slot.
#[derive(Clone)]
pub struct Streams {
    /// libp2p-stream's handle to its behaviour inside the swarm (outbound streams).
    control: libp2p_stream::Control,
    /// Where inbound streams of each accepted protocol are queued.
    inbound: super::inbound::Registry,
    /// The peers with an open connection (published by the event loop).
    connected: watch::Receiver<std::collections::BTreeSet<NodeId>>,
}

/// One negotiated stream to or from a peer.
pub struct PeerStream {
    inner: libp2p::Stream,
}

/// Inbound streams of one protocol, with the peer that opened each.
pub struct IncomingStreams {
    inner: mpsc::Receiver<(PeerId, libp2p::Stream)>,
}

// === impl Streams ===

impl Streams {
    pub(super) fn new(
        control: libp2p_stream::Control,
        inbound: super::inbound::Registry,
        connected: watch::Receiver<std::collections::BTreeSet<NodeId>>,
    ) -> Self {
        Self {
            control,
            inbound,
            connected,
        }
    }

    /// Waits until `peer` has an open connection, at most `timeout`; returns whether it has. Streams can only
    /// be opened to connected peers (the transport knows no addresses for others). Cancel-safe.
    pub async fn wait_connected(&self, peer: &NodeId, timeout: std::time::Duration) -> bool {
        let mut connected = self.connected.clone();
        matches!(
            tokio::time::timeout(timeout, connected.wait_for(|c| c.contains(peer))).await,
            Ok(Ok(_))
        )
    }

    /// Opens a stream to `peer` speaking `protocol`, dialling the peer if it is not connected and its address
    /// is known. Cancel-safe: a stream opened after the caller gave up is dropped (closed).
    pub async fn open(
        &self,
        peer: &NodeId,
        protocol: &'static str,
    ) -> Result<PeerStream, TransportError> {
        let peer_id = parse_peer(peer)?;
        let mut control = self.control.clone();
        control
            .open_stream(peer_id, StreamProtocol::new(protocol))
            .await
            .map(|inner| PeerStream { inner })
            .map_err(|e| TransportError::RequestFailed {
                peer: peer.clone(),
                reason: e.to_string(),
            })
    }

    /// Accepts inbound streams of `protocol` (advertised to peers from now on). Fails if the protocol is
    /// already being accepted: only one consumer may own a protocol.
    pub fn accept(&self, protocol: &'static str) -> Result<IncomingStreams, TransportError> {
        let mut registry = super::inbound::lock(&self.inbound);
        let key = StreamProtocol::new(protocol);
        if registry.get(&key).is_some_and(|tx| !tx.is_closed()) {
            return Err(TransportError::Listen {
                addr: protocol.to_owned(),
                reason: "the protocol is already accepted by another component".into(),
            });
        }
        let (tx, inner) = mpsc::channel(super::inbound::QUEUE);
        registry.insert(key, tx);
        Ok(IncomingStreams { inner })
    }
}

fn parse_peer(peer: &NodeId) -> Result<PeerId, TransportError> {
    peer.as_str()
        .parse::<PeerId>()
        .map_err(|e| TransportError::BadAddress {
            addr: peer.to_string(),
            reason: format!("not a peer id: {e}"),
        })
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

// === impl IncomingStreams ===

impl Stream for IncomingStreams {
    type Item = (NodeId, PeerStream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_recv(cx).map(|next| {
            next.map(|(peer, inner)| (NodeId::from(peer.to_string()), PeerStream { inner }))
        })
    }
}

impl fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStreams").finish_non_exhaustive()
    }
}

// === impl PeerStream ===

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerStream").finish_non_exhaustive()
    }
}
