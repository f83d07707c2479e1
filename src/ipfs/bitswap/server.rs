//! The serving half of bitswap: a ledger of wants per peer, drained by one task per peer that answers from
//! the local store.
//!
//! Why one task per peer and not one per want: answers to a peer go out in order on one stream anyway, and a
//! single task per peer bounds the work any one peer causes to one store lookup batch and one message at a
//! time. Limits come from [`Limits`]: wants beyond `max_wants_per_peer` are ignored (the peer asks again, as
//! Kubo does when its wants go unanswered), peers beyond `max_peers` are not served until others finish,
//! and every response holds its size in the shared `max_bytes_in_flight` budget until it is written.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use cid::Cid;
use tokio::sync::Semaphore;
use tracing::debug;

use super::message::{Entry, Message, Presence, WantType};
use super::{Bitswap, Limits, RESPONSE_TARGET, lock};
use crate::ipfs::{Block, BlockStore};
use crate::model::NodeId;

/// Wants answered per store lookup batch.
const BATCH: usize = 64;

pub(super) struct Server {
    /// Where answers come from.
    store: Arc<dyn BlockStore>,
    /// Caps on what one peer may queue.
    limits: Limits,
    /// Each peer's queued wants.
    ledgers: Mutex<HashMap<NodeId, Ledger>>,
    /// Bytes of responses not yet written, across all peers.
    budget: Arc<Semaphore>,
}

/// One peer's wants, in arrival order.
#[derive(Default)]
struct Ledger {
    /// Wants not yet answered; an entry whose CID left `live` (cancelled) is skipped when popped.
    queue: VecDeque<Entry>,
    /// CIDs still wanted; bounded by `max_wants_per_peer`.
    live: HashSet<Cid>,
    /// Whether a task is draining this ledger.
    serving: bool,
}

impl Server {
    pub(super) fn new(store: Arc<dyn BlockStore>, limits: Limits) -> Self {
        Self {
            store,
            limits,
            ledgers: Mutex::default(),
            budget: Arc::new(Semaphore::new(limits.max_bytes_in_flight)),
        }
    }

    /// Records a peer's wantlist update and makes sure a task is answering it.
    pub(super) fn on_wants(&self, bitswap: &Bitswap, peer: &NodeId, wants: Vec<Entry>, full: bool) {
        let start = {
            let mut ledgers = lock(&self.ledgers);
            if !ledgers.contains_key(peer) && ledgers.len() >= self.limits.max_peers {
                debug!(peer = %peer, "too many peers with wants; ignoring this one for now");
                return;
            }
            let ledger = ledgers.entry(peer.clone()).or_default();
            if full {
                ledger.live.clear();
                ledger.queue.clear();
            }
            let mut dropped = 0usize;
            for entry in wants {
                if entry.cancel {
                    ledger.live.remove(&entry.cid);
                } else if ledger.live.contains(&entry.cid) {
                    // Already queued; a want-block after a want-have upgrades it in place.
                    if entry.want_type == WantType::Block {
                        for queued in ledger.queue.iter_mut().filter(|q| q.cid == entry.cid) {
                            queued.want_type = WantType::Block;
                        }
                    }
                } else if ledger.live.len() < self.limits.max_wants_per_peer {
                    ledger.live.insert(entry.cid);
                    ledger.queue.push_back(entry);
                } else {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                debug!(peer = %peer, dropped, limit = self.limits.max_wants_per_peer, "wantlist over the limit");
            }
            let start = !ledger.serving && !ledger.live.is_empty();
            if start {
                ledger.serving = true;
            } else if ledger.live.is_empty() && !ledger.serving {
                ledgers.remove(peer);
            }
            start
        };
        if start {
            let bitswap = bitswap.clone();
            let peer = peer.clone();
            let shutdown = bitswap.inner.shutdown.clone();
            bitswap.inner.tasks.clone().spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = serve_peer(&bitswap, &peer) => {}
                }
            });
        }
    }

    /// Takes up to [`BATCH`] live wants off the peer's queue; ends the peer's service when there are none.
    fn next_batch(&self, peer: &NodeId) -> Vec<Entry> {
        let mut ledgers = lock(&self.ledgers);
        let Some(ledger) = ledgers.get_mut(peer) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(entry) = ledger.queue.pop_front() else {
                break;
            };
            if ledger.live.remove(&entry.cid) {
                batch.push(entry);
            }
        }
        if batch.is_empty() {
            ledgers.remove(peer);
        }
        batch
    }
}

/// Answers a peer's wants until its ledger is empty.
async fn serve_peer(bitswap: &Bitswap, peer: &NodeId) {
    let server = &bitswap.inner.server;
    loop {
        let batch = server.next_batch(peer);
        if batch.is_empty() {
            return;
        }
        let store = server.store.clone();
        // Store reads may touch the disk; keep them off the runtime's workers.
        let looked_up = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|entry| {
                    let answer = match entry.want_type {
                        WantType::Have => store.has(&entry.cid).map(|h| h.then_some(None)),
                        WantType::Block => store.get(&entry.cid).map(|b| b.map(Some)),
                    };
                    (entry, answer)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(looked_up) = looked_up else {
            return;
        };
        let mut msg = Message::default();
        let mut size = 0usize;
        for (entry, answer) in looked_up {
            match answer {
                Ok(Some(Some(data))) => {
                    let block = Block::from_store(entry.cid, data);
                    let cost = Message::block_cost(&block);
                    if size + cost > RESPONSE_TARGET && !msg.is_empty() {
                        if !flush(bitswap, peer, std::mem::take(&mut msg), size).await {
                            return;
                        }
                        size = 0;
                    }
                    size += cost;
                    msg.blocks.push(block);
                }
                Ok(Some(None)) => msg.presences.push((entry.cid, Presence::Have)),
                Ok(None) if entry.send_dont_have => {
                    msg.presences.push((entry.cid, Presence::DontHave));
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(peer = %peer, cid = %entry.cid, error = %e, "store lookup failed; answering DONT_HAVE");
                    if entry.send_dont_have {
                        msg.presences.push((entry.cid, Presence::DontHave));
                    }
                }
            }
        }
        if !msg.is_empty() && !flush(bitswap, peer, msg, size).await {
            return;
        }
    }
}

/// Sends one response holding `size` bytes of the shared budget until written; false when the peer's queue
/// is gone (bitswap shutting down).
async fn flush(bitswap: &Bitswap, peer: &NodeId, msg: Message, size: usize) -> bool {
    let server = &bitswap.inner.server;
    let want = size.clamp(1, server.limits.max_bytes_in_flight);
    let Ok(permit) = server
        .budget
        .clone()
        .acquire_many_owned(u32::try_from(want).unwrap_or(u32::MAX))
        .await
    else {
        return false;
    };
    bitswap.send(peer, msg, None, Some(permit)).await.is_ok()
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .field("peers", &lock(&self.ledgers).len())
            .finish_non_exhaustive()
    }
}
