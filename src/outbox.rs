//! Durable messaging between an orchestrator and its compute nodes (both roles use it).
//!
//! A message that must reach the other side is written to the outbox **in the same transaction** as the state
//! change that caused it ([`Outbox::enqueue`]), under a per-peer sequence number. [`Delivery`] sends unacked
//! messages in order while the peer is connected and deletes them only when the peer acknowledges their
//! sequence number. The receiver applies a message and records its sequence number in one transaction
//! ([`Outbox::accept_inbound`]), so a replay (after a crash, a timeout or a reconnect) is skipped. This is what
//! makes disconnected operation and crash recovery work: nothing is lost and nothing is applied twice.
//!
//! Acknowledged messages are not deleted in a transaction of their own: every commit costs an fsync and LMDB
//! has one writer, so a delete per ack would put extra commits on every job's critical path. Delivery
//! remembers how far each peer has acknowledged (in memory) and never sends those again; the entries are
//! trimmed inside the next transaction that writes to this outbox anyway, or by a sweep every few seconds. If
//! the process dies first, the entries are sent once more and the receiver skips them by sequence number.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::model::NodeId;
use crate::store::{Reader, Store, StoreError, Table, WriteTxn};
use crate::transport::{Client, Message, Request, Response, Sequenced};

/// Most messages sent in one `Deliver` request.
const BATCH_MESSAGES: usize = 64;
/// Delay before retrying a peer whose delivery failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often acknowledged messages are trimmed when no other write did it.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Table names of one role's outbox (a hybrid node keeps two outboxes in one environment).
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// Pending messages: `<peer>/<seq:020>` → message.
    pub messages: &'static str,
    /// Counters: `out/<peer>` (last seq assigned) and `in/<peer>` (last seq applied).
    pub counters: &'static str,
}

/// Writing side of the outbox, cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    messages: Table<Message>,
    counters: Table<u64>,
    /// Wakes the delivery task; bounded, and a full channel only means a wake-up is already pending.
    commands: mpsc::Sender<Command>,
    /// How far each peer has acknowledged, shared with [`Delivery`].
    acked: Arc<Mutex<Acked>>,
}

/// Acknowledgements not yet trimmed from the table. A std mutex: held only for map updates, never across an
/// `.await` or a transaction.
#[derive(Debug, Default)]
struct Acked {
    /// Highest sequence number each peer has applied.
    upto: HashMap<NodeId, u64>,
    /// Peers whose acknowledged entries may still be in the table.
    dirty: HashSet<NodeId>,
    /// Peers with messages queued since this process started and not yet all acknowledged (`/metrics`).
    backlog: HashSet<NodeId>,
}

impl Acked {
    fn record(&mut self, peer: &NodeId, seq: u64) {
        let upto = self.upto.entry(peer.clone()).or_insert(0);
        if seq > *upto {
            *upto = seq;
            self.dirty.insert(peer.clone());
        }
    }
}

fn lock(acked: &Mutex<Acked>) -> std::sync::MutexGuard<'_, Acked> {
    // Poisoning needs a panic while holding the lock; release builds abort on panic, so recover in tests.
    acked.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deletes acknowledged entries of the dirty peers inside `txn`.
fn trim(
    txn: &mut WriteTxn<'_, '_>,
    messages: Table<Message>,
    acked: &Mutex<Acked>,
) -> Result<(), StoreError> {
    let work: Vec<(NodeId, u64)> = {
        let mut a = lock(acked);
        let dirty: Vec<NodeId> = a.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|p| a.upto.get(&p).map(|u| (p, *u)))
            .collect()
    };
    for (peer, upto) in work {
        txn.delete_prefix_through(messages, &format!("{peer}/"), &message_key(&peer, upto))?;
    }
    Ok(())
}

#[derive(Debug)]
enum Command {
    Kick(NodeId),
    Connected(NodeId, u64),
    Disconnected(NodeId),
}

fn message_key(peer: &NodeId, seq: u64) -> String {
    format!("{peer}/{seq:020}")
}

impl Outbox {
    /// Opens the outbox tables and builds the delivery task (spawn [`Delivery::run`]).
    pub fn new(
        store: &Store,
        client: Client,
        tables: Tables,
    ) -> Result<(Outbox, Delivery), StoreError> {
        let messages = store.table(tables.messages)?;
        let counters = store.table(tables.counters)?;
        let (tx, rx) = mpsc::channel(1024);
        let acked = Arc::new(Mutex::new(Acked::default()));
        let outbox = Outbox {
            messages,
            counters,
            commands: tx,
            acked: acked.clone(),
        };
        let delivery = Delivery {
            store: store.clone(),
            client,
            messages,
            commands: rx,
            acked,
        };
        Ok((outbox, delivery))
    }

    /// Queues `message` for `peer` inside the caller's transaction; returns its sequence number. Call
    /// [`Outbox::kick`] after the transaction commits.
    pub fn enqueue(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        peer: &NodeId,
        message: Message,
    ) -> Result<u64, StoreError> {
        let key = format!("out/{peer}");
        let seq = txn.get(self.counters, &key)?.unwrap_or(0) + 1;
        txn.put(self.counters, &key, &seq)?;
        txn.put(self.messages, &message_key(peer, seq), &message)?;
        trim(txn, self.messages, &self.acked)?;
        Ok(seq)
    }

    /// Records that `seq` from `peer` is being applied in this transaction. Returns false when it was applied
    /// before (a replay), in which case the caller must skip it.
    pub fn accept_inbound(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        peer: &NodeId,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let key = format!("in/{peer}");
        let last = txn.get(self.counters, &key)?.unwrap_or(0);
        if seq <= last {
            return Ok(false);
        }
        txn.put(self.counters, &key, &seq)?;
        Ok(true)
    }

    /// Applies `messages` from `peer` in order inside the caller's transaction, skipping those applied before
    /// (replays), and returns the highest sequence number applied, for the Ack.
    pub fn apply_inbound(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        peer: &NodeId,
        messages: Vec<Sequenced>,
        mut apply: impl FnMut(&mut WriteTxn<'_, '_>, Message) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        for Sequenced { seq, message } in messages {
            if self.accept_inbound(txn, peer, seq)? {
                apply(txn, message)?;
            }
        }
        self.last_applied(txn, peer)
    }

    /// Messages still in the table (undelivered, plus acknowledged ones not yet trimmed): O(1).
    pub fn pending_messages(&self, txn: &impl Reader) -> Result<u64, StoreError> {
        txn.count(self.messages)
    }

    /// Peers with messages queued since start-up and not yet all acknowledged.
    pub fn peers_pending(&self) -> u64 {
        lock(&self.acked).backlog.len() as u64
    }

    /// The highest sequence number applied from `peer`.
    pub fn last_applied(&self, txn: &impl Reader, peer: &NodeId) -> Result<u64, StoreError> {
        Ok(txn.get(self.counters, &format!("in/{peer}"))?.unwrap_or(0))
    }

    /// Renumbers what is queued for `peer` after `peer_applied` when the peer says it applied more than this
    /// side ever sent: this side lost its state (a wiped data dir), not the peer, and the peer's replay
    /// protection would otherwise drop the new messages as already applied. Returns whether it renumbered.
    pub fn rebase(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        peer: &NodeId,
        peer_applied: u64,
    ) -> Result<bool, StoreError> {
        let key = format!("out/{peer}");
        let sent = txn.get(self.counters, &key)?.unwrap_or(0);
        if sent >= peer_applied {
            return Ok(false);
        }
        let queued = txn.prefix(self.messages, &format!("{peer}/"))?;
        let mut seq = peer_applied;
        for (old, message) in queued {
            txn.delete(self.messages, &old)?;
            seq += 1;
            txn.put(self.messages, &message_key(peer, seq), &message)?;
        }
        txn.put(self.counters, &key, &seq)?;
        warn!(peer = %peer, sent, peer_applied, "the peer applied more than this node sent: this node's state was lost; renumbered its queued messages");
        Ok(true)
    }

    /// The messages queued for `peer` that it has not applied (sequence numbers above `peer_applied`), in
    /// order: what is still going to be delivered, which a reconciliation must not mistake for a disagreement.
    pub fn pending(
        &self,
        txn: &impl Reader,
        peer: &NodeId,
        peer_applied: u64,
    ) -> Result<Vec<Message>, StoreError> {
        Ok(txn
            .prefix_after(
                self.messages,
                &format!("{peer}/"),
                &message_key(peer, peer_applied),
                usize::MAX,
            )?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Withdraws the messages queued for `peer` above `peer_applied` that `stale` picks (asks for executions
    /// that ended meanwhile); returns how many. The receiver accepts the gaps: it only refuses sequence
    /// numbers at or below the last it applied.
    pub fn discard(
        &self,
        txn: &mut WriteTxn<'_, '_>,
        peer: &NodeId,
        peer_applied: u64,
        stale: impl Fn(&Message) -> bool,
    ) -> Result<usize, StoreError> {
        let queued = txn.prefix_after(
            self.messages,
            &format!("{peer}/"),
            &message_key(peer, peer_applied),
            usize::MAX,
        )?;
        let mut n = 0;
        for (key, message) in queued {
            if stale(&message) {
                txn.delete(self.messages, &key)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Wakes delivery for `peer` after new messages were committed.
    pub fn kick(&self, peer: &NodeId) {
        lock(&self.acked).backlog.insert(peer.clone());
        // A full channel means the delivery task has plenty of wake-ups queued; dropping one loses nothing
        // because every drain reads the whole outbox of its peer.
        let _ = self.commands.try_send(Command::Kick(peer.clone()));
    }

    /// The peer completed its handshake and has applied everything up to `peer_applied`: delete that and
    /// deliver the rest.
    pub async fn peer_connected(&self, peer: &NodeId, peer_applied: u64) {
        let _ = self
            .commands
            .send(Command::Connected(peer.clone(), peer_applied))
            .await;
    }

    /// The peer is gone; stop sending until it returns.
    pub async fn peer_disconnected(&self, peer: &NodeId) {
        let _ = self
            .commands
            .send(Command::Disconnected(peer.clone()))
            .await;
    }
}

/// The task that sends outbox messages to connected peers.
#[derive(Debug)]
pub struct Delivery {
    store: Store,
    client: Client,
    messages: Table<Message>,
    commands: mpsc::Receiver<Command>,
    acked: Arc<Mutex<Acked>>,
}

#[derive(Debug, Default)]
struct PeerState {
    connected: bool,
    in_flight: bool,
    /// New messages arrived while a drain was running.
    dirty: bool,
}

enum DrainEnd {
    Drained(NodeId),
    Failed(NodeId, String),
    RetryDue(NodeId),
}

impl Delivery {
    /// Runs until `shutdown`. Cancel-safe: messages stay in the outbox until acknowledged.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut peers: HashMap<NodeId, PeerState> = HashMap::new();
        let mut drains: JoinSet<DrainEnd> = JoinSet::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    if !lock(&self.acked).dirty.is_empty() {
                        let (messages, acked) = (self.messages, self.acked.clone());
                        if let Err(e) = self.store.write(move |txn| trim(txn, messages, &acked)).await {
                            warn!(error = %e, "cannot trim acknowledged outbox messages");
                        }
                    }
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::Kick(peer) => {
                        let state = peers.entry(peer.clone()).or_default();
                        if state.in_flight { state.dirty = true } else if state.connected {
                            state.in_flight = true;
                            drains.spawn(self.drain(peer));
                        }
                    }
                    Command::Connected(peer, applied) => {
                        let state = peers.entry(peer.clone()).or_default();
                        state.connected = true;
                        lock(&self.acked).record(&peer, applied);
                        if state.in_flight { state.dirty = true } else {
                            state.in_flight = true;
                            drains.spawn(self.drain(peer));
                        }
                    }
                    Command::Disconnected(peer) => {
                        peers.entry(peer).or_default().connected = false;
                    }
                },
                Some(done) = drains.join_next() => {
                    let end = match done {
                        Ok(end) => end,
                        Err(e) => { warn!(error = %e, "outbox drain task failed"); continue; }
                    };
                    match end {
                        DrainEnd::Drained(peer) => {
                            let state = peers.entry(peer.clone()).or_default();
                            state.in_flight = false;
                            if state.dirty && state.connected {
                                state.dirty = false;
                                state.in_flight = true;
                                drains.spawn(self.drain(peer));
                            } else if !state.dirty {
                                lock(&self.acked).backlog.remove(&peer);
                            }
                        }
                        DrainEnd::Failed(peer, reason) => {
                            debug!(peer = %peer, %reason, "outbox delivery failed; will retry");
                            drains.spawn(async move {
                                tokio::time::sleep(RETRY_AFTER).await;
                                DrainEnd::RetryDue(peer)
                            });
                        }
                        DrainEnd::RetryDue(peer) => {
                            let state = peers.entry(peer.clone()).or_default();
                            state.dirty = false;
                            if state.connected {
                                drains.spawn(self.drain(peer));
                            } else {
                                state.in_flight = false;
                            }
                        }
                    }
                }
            }
        }
        drains.shutdown().await;
    }

    fn drain(&self, peer: NodeId) -> impl std::future::Future<Output = DrainEnd> + Send + 'static {
        let (store, client, messages, acked) = (
            self.store.clone(),
            self.client.clone(),
            self.messages,
            self.acked.clone(),
        );
        async move {
            loop {
                let prefix = format!("{peer}/");
                // Entries up to the acknowledged sequence may still be in the table; never send them again.
                let upto = lock(&acked).upto.get(&peer).copied().unwrap_or(0);
                let after = message_key(&peer, upto);
                let batch = match store
                    .read_sync(|txn| txn.prefix_after(messages, &prefix, &after, BATCH_MESSAGES))
                {
                    Ok(b) => b,
                    Err(e) => return DrainEnd::Failed(peer, e.to_string()),
                };
                if batch.is_empty() {
                    return DrainEnd::Drained(peer);
                }
                let items: Vec<Sequenced> = batch
                    .into_iter()
                    .filter_map(|(k, message)| {
                        let seq = k.rsplit('/').next()?.parse().ok()?;
                        Some(Sequenced { seq, message })
                    })
                    .collect();
                let Some(highest) = items.last().map(|s| s.seq) else {
                    return DrainEnd::Drained(peer);
                };
                let started = std::time::Instant::now();
                match client
                    .request(&peer, Request::Deliver { messages: items })
                    .await
                {
                    Ok(Response::Ack { last_applied_seq }) => {
                        crate::metrics::outbox_round_trip(messages.name(), started.elapsed());
                        let applied = last_applied_seq.min(highest);
                        lock(&acked).record(&peer, applied);
                        if applied < highest {
                            return DrainEnd::Failed(
                                peer,
                                format!("peer applied only up to {applied}"),
                            );
                        }
                    }
                    Ok(Response::Refused { reason }) => return DrainEnd::Failed(peer, reason),
                    Ok(other) => {
                        return DrainEnd::Failed(peer, format!("unexpected answer {other:?}"));
                    }
                    Err(e) => return DrainEnd::Failed(peer, e.to_string()),
                }
            }
        }
    }
}
