//! Bitswap (`/ipfs/bitswap/1.2.0`, inbound also 1.1.0 and 1.0.0) on the node's own libp2p swarm: the client
//! fetches blocks and whole DAGs from configured IPFS peers, the server answers any connected peer's wants
//! from the local [`BlockStore`].
//!
//! Wire behaviour follows Kubo (boxo): each side sends on streams it opened itself and only reads the streams
//! the other side opened, so an answer always comes back on a new inbound stream. Messages are framed one per
//! write ([`message`]).
//!
//! Trust: a block is filed under the CID its bytes hash to ([`message::Message::decode`]), so a block can only
//! answer the want for its own CID. Blocks nobody asked for are dropped and counted against the peer that
//! sent them; a DAG fetch stops asking a peer once it has done that ([`session`]).
//!
//! Bounds (a peer must not be able to exhaust the node):
//! - inbound streams: [`Limits::max_inbound_streams`] in all, [`MAX_STREAMS_PER_PEER`] per peer;
//! - a frame is at most [`message::MAX_MESSAGE_SIZE`];
//! - each peer's queued wants are capped at [`Limits::max_wants_per_peer`] (the rest are ignored, as boxo
//!   does), and at most [`Limits::max_peers`] peers have a ledger;
//! - blocks being sent are bounded by [`Limits::max_bytes_in_flight`] across all peers; a response message is
//!   cut at [`RESPONSE_TARGET`] bytes;
//! - outbound messages wait in a bounded queue per peer.

pub mod message;
mod server;
pub mod session;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cid::Cid;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace};

use super::{Block, BlockStore};
use crate::model::NodeId;
use crate::transport::{PeerStream, Streams};
pub use message::{Entry, Message, Presence, WantType};

/// The protocol we open streams with.
pub const PROTOCOL: &str = "/ipfs/bitswap/1.2.0";
/// Every protocol accepted inbound: older Kubo and other clients still open these.
const INBOUND_PROTOCOLS: [&str; 4] = [
    PROTOCOL,
    "/ipfs/bitswap/1.1.0",
    "/ipfs/bitswap/1.0.0",
    "/ipfs/bitswap",
];
/// Inbound streams one peer may have open at once (Kubo keeps one per direction).
pub const MAX_STREAMS_PER_PEER: usize = 8;
/// A response message is cut once its blocks reach this size (boxo's target message size is ~1 MiB).
pub const RESPONSE_TARGET: usize = 1024 * 1024;
/// Messages waiting to be written to one peer.
const SEND_QUEUE: usize = 32;
/// A peer's sender task closes its stream after this long without a message.
const SENDER_IDLE: Duration = Duration::from_secs(60);
/// A want still unanswered after this long is sent again, then after twice as long, and so on. Answers can
/// be lost (a stream reset, a peer restarting, a full inbound queue); asking again is what Kubo itself does
/// with its periodic rebroadcast. Doubling keeps a slow link (where a 256 KiB block legitimately takes
/// seconds) from being flooded with duplicate blocks.
const RESEND_AFTER: Duration = Duration::from_secs(2);
/// How long a want waits for its peer to be connected (the transport redials configured peers with
/// backoff, so a peer that just restarted comes back within this).
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// CIDs wanted recently, whose late or duplicate blocks (after a resend) are not held against the sender.
const RECENT_WANTS: usize = 8192;

/// What one peer may ask of this node.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wants queued per peer; more are ignored until some are answered.
    pub max_wants_per_peer: usize,
    /// Peers with queued wants at once.
    pub max_peers: usize,
    /// Bytes of blocks being sent across all peers.
    pub max_bytes_in_flight: usize,
    /// Inbound bitswap streams across all peers.
    pub max_inbound_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_wants_per_peer: 1024,
            max_peers: 256,
            max_bytes_in_flight: 32 * 1024 * 1024,
            max_inbound_streams: 256,
        }
    }
}

/// A want that got no usable answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WantError {
    /// The peer said it does not have the block.
    #[error("peer {peer} does not have {cid}")]
    DontHave {
        /// The peer.
        peer: NodeId,
        /// The block.
        cid: Cid,
    },
    /// No answer in time.
    #[error("peer {peer} did not answer for {cid} within {timeout:?}")]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// The block.
        cid: Cid,
        /// How long we waited.
        timeout: Duration,
    },
    /// The want could not be sent.
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// Bitswap has shut down.
    #[error("bitswap is shut down")]
    ShutDown,
}

/// What answered a want.
#[derive(Debug)]
enum Answer {
    Block(Block),
    Have,
    DontHave,
}

/// A message waiting in a peer's send queue.
#[derive(Debug)]
struct Outgoing {
    msg: Message,
    /// Told whether the message was written (wants fail fast when the peer cannot be reached).
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// Bytes of [`Limits::max_bytes_in_flight`] this message holds until it is written.
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A caller waiting for an answer about one CID from one peer.
#[derive(Debug)]
struct Waiter {
    id: u64,
    peer: NodeId,
    want_type: WantType,
    tx: oneshot::Sender<Answer>,
}

/// The bitswap engine. Cheap to clone.
#[derive(Clone)]
pub struct Bitswap {
    inner: Arc<Inner>,
}

struct Inner {
    /// Opens streams to peers (same swarm, same identity as the rest of the node).
    streams: Streams,
    /// Where served blocks come from (and where the DAG session puts fetched ones).
    store: Arc<dyn BlockStore>,
    /// What one peer may ask of us.
    limits: Limits,
    /// Callers waiting for answers, by CID.
    pending: Mutex<HashMap<Cid, Vec<Waiter>>>,
    /// Ids for [`Waiter`]s, so a timed-out caller removes exactly its own entry.
    next_waiter: AtomicU64,
    /// One sender task per peer we write to, fed through a bounded queue.
    senders: Mutex<HashMap<NodeId, mpsc::Sender<Outgoing>>>,
    /// Blocks each peer sent that nobody asked for (garbage or forged data); sessions stop using such peers.
    strikes: Mutex<HashMap<NodeId, u64>>,
    /// CIDs wanted lately (bounded, oldest forgotten first): a second copy of one is not a strike.
    recent: Mutex<(VecDeque<Cid>, HashSet<Cid>)>,
    /// The server half: per-peer ledgers of wants.
    server: server::Server,
    /// Inbound streams in all ([`Limits::max_inbound_streams`]).
    inbound: Arc<Semaphore>,
    /// Inbound streams per peer.
    inbound_per_peer: Mutex<HashMap<NodeId, usize>>,
    /// Every task bitswap spawns, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancels every task.
    shutdown: CancellationToken,
}

// === impl Bitswap ===

impl Bitswap {
    /// Starts bitswap on `streams`: accepts inbound streams from now on and serves `store`. The returned
    /// future runs until `shutdown` is cancelled and then waits for every bitswap task; spawn it in the
    /// node's task set.
    pub fn start(
        streams: Streams,
        store: Arc<dyn BlockStore>,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Result<
        (Bitswap, impl Future<Output = ()> + Send + 'static),
        crate::transport::TransportError,
    > {
        let mut incoming = Vec::new();
        for protocol in INBOUND_PROTOCOLS {
            incoming.push(streams.accept(protocol)?);
        }
        let inner = Arc::new(Inner {
            streams,
            store: store.clone(),
            limits,
            pending: Mutex::default(),
            next_waiter: AtomicU64::new(0),
            senders: Mutex::default(),
            strikes: Mutex::default(),
            recent: Mutex::default(),
            server: server::Server::new(store, limits),
            inbound: Arc::new(Semaphore::new(limits.max_inbound_streams)),
            inbound_per_peer: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown,
        });
        let bitswap = Bitswap { inner };
        let accept = bitswap.clone();
        let run = async move {
            let mut incoming = futures::stream::select_all(incoming);
            let shutdown = accept.inner.shutdown.clone();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = incoming.next() => match next {
                        Some((peer, stream)) => accept.on_inbound(peer, stream),
                        None => break,
                    },
                }
            }
            accept.inner.tasks.close();
            accept.inner.tasks.wait().await;
        };
        Ok((bitswap, run))
    }

    /// The store blocks are served from.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.inner.store
    }

    /// Asks `peer` for `cid` (a block or only a HAVE) and waits at most `timeout`. A block that arrives from
    /// any peer answers (it hashes to `cid`, so its source does not matter). Cancel-safe: the waiter is removed
    /// when the future is dropped; the want stays with the peer until [`Bitswap::cancel`].
    pub async fn want(
        &self,
        peer: &NodeId,
        cid: Cid,
        want_type: WantType,
        timeout: Duration,
    ) -> Result<Option<Block>, WantError> {
        if !self
            .inner
            .streams
            .wait_connected(peer, timeout.min(CONNECT_WAIT))
            .await
        {
            return Err(WantError::Unreachable {
                peer: peer.clone(),
                reason: "not connected; check that it runs and that Ipfs.Peers has its address"
                    .into(),
            });
        }
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        {
            let mut recent = lock(&self.inner.recent);
            let (order, set) = &mut *recent;
            if set.insert(cid) {
                order.push_back(cid);
                if order.len() > RECENT_WANTS
                    && let Some(old) = order.pop_front()
                {
                    set.remove(&old);
                }
            }
        }
        lock(&self.inner.pending)
            .entry(cid)
            .or_default()
            .push(Waiter {
                id,
                peer: peer.clone(),
                want_type,
                tx,
            });
        let _guard = WaiterGuard {
            inner: &self.inner,
            cid,
            id,
        };
        let msg = Message {
            wants: vec![Entry {
                cid,
                priority: 1,
                cancel: false,
                want_type,
                send_dont_have: true,
            }],
            ..Message::default()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut resend_after = RESEND_AFTER;
        let answer = loop {
            let (done, written) = oneshot::channel();
            self.send(peer, msg.clone(), Some(done), None).await?;
            match written.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(WantError::Unreachable {
                        peer: peer.clone(),
                        reason,
                    });
                }
                Err(_) => return Err(WantError::ShutDown),
            }
            let wait =
                resend_after.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            resend_after = resend_after.saturating_mul(2);
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(answer) => break Ok(answer),
                Err(_) if tokio::time::Instant::now() >= deadline => break Err(()),
                Err(_) => trace!(peer = %peer, cid = %cid, "no answer yet; asking again"),
            }
        };
        match answer {
            Ok(Ok(Answer::Block(block))) => Ok(Some(block)),
            Ok(Ok(Answer::Have)) => Ok(None),
            Ok(Ok(Answer::DontHave)) => Err(WantError::DontHave {
                peer: peer.clone(),
                cid,
            }),
            Ok(Err(_)) => Err(WantError::ShutDown),
            Err(_) => Err(WantError::Timeout {
                peer: peer.clone(),
                cid,
                timeout,
            }),
        }
    }

    /// Withdraws wants for `cids` from `peer` (best effort).
    pub async fn cancel(&self, peer: &NodeId, cids: &[Cid]) {
        if cids.is_empty() {
            return;
        }
        let msg = Message {
            wants: cids
                .iter()
                .map(|cid| Entry {
                    cid: *cid,
                    priority: 0,
                    cancel: true,
                    want_type: WantType::Block,
                    send_dont_have: false,
                })
                .collect(),
            ..Message::default()
        };
        let _ = self.send(peer, msg, None, None).await;
    }

    /// How many unsolicited blocks `peer` has sent so far.
    pub fn strikes(&self, peer: &NodeId) -> u64 {
        lock(&self.inner.strikes).get(peer).copied().unwrap_or(0)
    }

    /// Queues `msg` for `peer`, starting the peer's sender task when needed. Waits while the peer's queue is
    /// full, which is what bounds the messages (and, with `budget`, the bytes) waiting for one peer.
    async fn send(
        &self,
        peer: &NodeId,
        msg: Message,
        done: Option<oneshot::Sender<Result<(), String>>>,
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), WantError> {
        let tx = {
            let mut senders = lock(&self.inner.senders);
            match senders.get(peer) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(SEND_QUEUE);
                    senders.insert(peer.clone(), tx.clone());
                    let inner = self.inner.clone();
                    let peer = peer.clone();
                    let me = tx.clone();
                    self.inner.tasks.spawn(async move {
                        sender_task(&inner, &peer, rx).await;
                        let mut senders = lock(&inner.senders);
                        if senders.get(&peer).is_some_and(|t| t.same_channel(&me)) {
                            senders.remove(&peer);
                        }
                    });
                    tx
                }
            }
        };
        let outgoing = Outgoing {
            msg,
            done,
            _budget: budget,
        };
        tx.send(outgoing).await.map_err(|_| WantError::Unreachable {
            peer: peer.clone(),
            reason: "its sender stopped".into(),
        })
    }

    fn on_inbound(&self, peer: NodeId, stream: PeerStream) {
        let Ok(permit) = self.inner.inbound.clone().try_acquire_owned() else {
            debug!(peer = %peer, "too many inbound bitswap streams; dropping one");
            return;
        };
        {
            let mut per_peer = lock(&self.inner.inbound_per_peer);
            let count = per_peer.entry(peer.clone()).or_default();
            if *count >= MAX_STREAMS_PER_PEER {
                debug!(peer = %peer, "peer has too many bitswap streams open; dropping one");
                return;
            }
            *count += 1;
        }
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let shutdown = this.inner.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = this.read_stream(&peer, stream) => {}
            }
            let mut per_peer = lock(&this.inner.inbound_per_peer);
            if let Some(count) = per_peer.get_mut(&peer) {
                *count -= 1;
                if *count == 0 {
                    per_peer.remove(&peer);
                }
            }
            drop(permit);
        });
    }

    async fn read_stream(&self, peer: &NodeId, mut stream: PeerStream) {
        loop {
            match Message::read(&mut stream).await {
                Ok(Some(msg)) => self.on_message(peer, msg),
                Ok(None) => return,
                Err(e) => {
                    debug!(peer = %peer, error = %e, "bitswap stream closed");
                    return;
                }
            }
        }
    }

    fn on_message(&self, peer: &NodeId, msg: Message) {
        trace!(
            peer = %peer,
            wants = msg.wants.len(),
            blocks = msg.blocks.len(),
            presences = msg.presences.len(),
            "bitswap message"
        );
        for block in msg.blocks {
            let cid = *block.cid();
            let waiters = lock(&self.inner.pending).remove(&cid);
            match waiters {
                Some(waiters) => {
                    for w in waiters {
                        let answer = match w.want_type {
                            WantType::Block => Answer::Block(block.clone()),
                            WantType::Have => Answer::Have,
                        };
                        let _ = w.tx.send(answer);
                    }
                }
                None if lock(&self.inner.recent).1.contains(&cid) => {
                    trace!(peer = %peer, cid = %cid, "late copy of a block already answered");
                }
                None => {
                    debug!(peer = %peer, cid = %cid, "unsolicited block; dropped");
                    *lock(&self.inner.strikes).entry(peer.clone()).or_default() += 1;
                }
            }
        }
        if !msg.presences.is_empty() {
            let mut pending = lock(&self.inner.pending);
            for (cid, presence) in msg.presences {
                let Some(waiters) = pending.get_mut(&cid) else {
                    continue;
                };
                // A presence answers only the waiters that asked this peer. HAVE answers want-have; for a
                // want-block it only means the block is on its way, so those keep waiting.
                let mut kept = Vec::with_capacity(waiters.len());
                for w in waiters.drain(..) {
                    let answers = w.peer == *peer
                        && (presence == Presence::DontHave || w.want_type == WantType::Have);
                    if answers {
                        let answer = match presence {
                            Presence::Have => Answer::Have,
                            Presence::DontHave => Answer::DontHave,
                        };
                        let _ = w.tx.send(answer);
                    } else {
                        kept.push(w);
                    }
                }
                if kept.is_empty() {
                    pending.remove(&cid);
                } else {
                    *waiters = kept;
                }
            }
        }
        if !msg.wants.is_empty() || msg.full {
            self.inner.server.on_wants(self, peer, msg.wants, msg.full);
        }
    }
}

impl fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitswap")
            .field("limits", &self.inner.limits)
            .field("pending", &lock(&self.inner.pending).len())
            .finish_non_exhaustive()
    }
}

/// Removes a caller's waiter when its `want` future ends, however it ends.
struct WaiterGuard<'a> {
    inner: &'a Inner,
    cid: Cid,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.inner.pending);
        if let Some(waiters) = pending.get_mut(&self.cid) {
            waiters.retain(|w| w.id != self.id);
            if waiters.is_empty() {
                pending.remove(&self.cid);
            }
        }
    }
}

/// Writes a peer's queued messages on one stream, reopening it once when a write fails; ends after
/// [`SENDER_IDLE`] without messages.
async fn sender_task(inner: &Inner, peer: &NodeId, mut rx: mpsc::Receiver<Outgoing>) {
    let mut stream: Option<PeerStream> = None;
    loop {
        let outgoing = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            next = tokio::time::timeout(SENDER_IDLE, rx.recv()) => match next {
                Ok(Some(outgoing)) => outgoing,
                Ok(None) | Err(_) => return,
            },
        };
        let mut result = Err(String::from("not sent"));
        for attempt in 0..2 {
            if stream.is_none() {
                match inner.streams.open(peer, PROTOCOL).await {
                    Ok(s) => stream = Some(s),
                    Err(e) => {
                        debug!(peer = %peer, error = %e, "cannot open a bitswap stream");
                        result = Err(e.to_string());
                        break;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { break };
            match outgoing.msg.write(s).await {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    debug!(peer = %peer, attempt, error = %e, "bitswap write failed");
                    result = Err(e.to_string());
                    stream = None;
                }
            }
        }
        if let Some(done) = outgoing.done {
            let _ = done.send(result);
        }
    }
}

/// Locks a std mutex; a poisoned lock still holds consistent data (every critical section is one map
/// operation), so it is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
