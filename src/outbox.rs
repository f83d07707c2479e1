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

use std::collections::{BTreeMap, HashMap, HashSet};
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
/// The most queued messages kept in memory for delivery (see [`Fresh`]): a few KiB each. Beyond it (a peer
/// away for a while), delivery decodes what it reads, as it does for what was queued before a restart.
const FRESH_MAX: usize = 512;

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
    /// Queued messages not yet sent, shared with [`Delivery`].
    fresh: Arc<Mutex<Fresh>>,
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

/// Messages this process queued and has not sent yet, each with the bytes stored for it.
///
/// Delivery reads the table for what to send (what is committed is what counts) and, where the bytes it
/// reads are the ones kept here, sends the kept message instead of decoding them: decoding messages it had
/// just encoded (each ask carries its whole job) was 4 % of a busy orchestrator's CPU. Equal bytes make
/// the shortcut exact whatever happened in between: a message whose transaction rolled back is replaced by
/// the next one queued at its number, and one renumbered, withdrawn or rewritten no longer matches and is
/// decoded as before. A std mutex, held for map updates only.
#[derive(Debug, Default)]
struct Fresh {
    peers: HashMap<NodeId, BTreeMap<u64, (Vec<u8>, Message)>>,
    len: usize,
}

impl Fresh {
    fn keep(&mut self, peer: &NodeId, seq: u64, bytes: Vec<u8>, message: Message) {
        let kept = self.peers.entry(peer.clone()).or_default();
        if (kept.contains_key(&seq) || self.len < FRESH_MAX)
            && kept.insert(seq, (bytes, message)).is_none()
        {
            self.len += 1;
        }
    }

    /// The message kept for `peer`'s `seq` if `stored` is what was kept for it. Delivery reads in order, so
    /// whatever is kept below `seq` was sent or withdrawn: it goes too.
    fn take(&mut self, peer: &NodeId, seq: u64, stored: &[u8]) -> Option<Message> {
        let kept = self.peers.get_mut(peer)?;
        let mut rest = kept.split_off(&seq);
        self.len -= kept.len();
        std::mem::swap(kept, &mut rest);
        let (bytes, message) = kept.remove(&seq)?;
        self.len -= 1;
        (bytes == stored).then_some(message)
    }

    /// Drops what is kept for `peer`: it went away, and what it gets on its return is read from the table.
    fn forget(&mut self, peer: &NodeId) {
        if let Some(kept) = self.peers.remove(peer) {
            self.len -= kept.len();
        }
    }
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning needs a panic while holding the lock; release builds abort on panic, so recover in tests.
    shared.lock().unwrap_or_else(|p| p.into_inner())
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
        let fresh = Arc::new(Mutex::new(Fresh::default()));
        let outbox = Outbox {
            messages,
            counters,
            commands: tx,
            acked: acked.clone(),
            fresh: fresh.clone(),
        };
        let delivery = Delivery {
            store: store.clone(),
            client,
            messages,
            commands: rx,
            acked,
            fresh,
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
        let bytes = txn.put_encoded(self.messages, &message_key(peer, seq), &message)?;
        trim(txn, self.messages, &self.acked)?;
        lock(&self.fresh).keep(peer, seq, bytes, message);
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
    fresh: Arc<Mutex<Fresh>>,
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
                        lock(&self.fresh).forget(&peer);
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
        let (store, client, messages, acked, fresh) = (
            self.store.clone(),
            self.client.clone(),
            self.messages,
            self.acked.clone(),
            self.fresh.clone(),
        );
        async move {
            loop {
                // Entries up to the acknowledged sequence may still be in the table; never send them again.
                let upto = lock(&acked).upto.get(&peer).copied().unwrap_or(0);
                let items = match read_batch(&store, messages, &fresh, &peer, upto) {
                    Ok(items) => items,
                    Err(e) => return DrainEnd::Failed(peer, e.to_string()),
                };
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

/// Up to [`BATCH_MESSAGES`] of the messages queued for `peer` after `upto`, in order: the kept one where the
/// table still holds exactly what was kept (see [`Fresh`]), decoded from the table otherwise.
fn read_batch(
    store: &Store,
    messages: Table<Message>,
    fresh: &Mutex<Fresh>,
    peer: &NodeId,
    upto: u64,
) -> Result<Vec<Sequenced>, StoreError> {
    let mut items = Vec::new();
    store.read_sync(|txn| {
        txn.prefix_after_raw(
            messages,
            &format!("{peer}/"),
            &message_key(peer, upto),
            BATCH_MESSAGES,
            |key, bytes| {
                let Some(seq) = key.rsplit('/').next().and_then(|s| s.parse().ok()) else {
                    return Ok(());
                };
                let kept = lock(fresh).take(peer, seq, bytes);
                let message = match kept {
                    Some(message) => message,
                    None => messages.decode(key, bytes)?,
                };
                items.push(Sequenced { seq, message });
                Ok(())
            },
        )
    })?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExecutionId;

    fn accepted(id: &str) -> Message {
        Message::BidAccepted {
            execution_id: ExecutionId::from(id.to_owned()),
        }
    }

    fn ids(items: &[Sequenced]) -> Vec<(u64, String)> {
        items
            .iter()
            .map(|s| match &s.message {
                Message::BidAccepted { execution_id } => (s.seq, execution_id.to_string()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn outbox(store: &Store) -> Outbox {
        Outbox {
            messages: store.table("test.outbox").expect("messages"),
            counters: store.table("test.counters").expect("counters"),
            commands: mpsc::channel(1).0,
            acked: Arc::default(),
            fresh: Arc::default(),
        }
    }

    #[test]
    fn delivery_sends_what_is_stored_whatever_was_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(tmp.path(), &Default::default()).expect("store");
        let outbox = outbox(&store);
        let peer = NodeId::from("n-1".to_owned());
        let queue = |id: &'static str, commit: bool| {
            let (o, p) = (outbox.clone(), peer.clone());
            store.write_sync(move |txn| {
                let seq = o.enqueue(txn, &p, accepted(id))?;
                if commit {
                    Ok(seq)
                } else {
                    Err(StoreError::Task("rolled back".into()))
                }
            })
        };
        // A message whose transaction rolled back is kept, then replaced by the next one at its number.
        assert!(queue("rolled-back", false).is_err());
        assert_eq!(queue("first", true).expect("first"), 1);
        assert_eq!(queue("second", true).expect("second"), 2);
        assert_eq!(lock(&outbox.fresh).len, 2);
        // A record rewritten after it was queued (as a renumbering does) no longer matches what was kept.
        let messages = outbox.messages;
        store
            .write_sync(move |txn| {
                txn.put(
                    messages,
                    &message_key(&NodeId::from("n-1".to_owned()), 2),
                    &accepted("rewritten"),
                )
            })
            .expect("rewrite");

        let sent = read_batch(&store, messages, &outbox.fresh, &peer, 0).expect("read");
        assert_eq!(
            ids(&sent),
            [(1, "first".to_owned()), (2, "rewritten".to_owned())]
        );
        assert_eq!(
            lock(&outbox.fresh).len,
            0,
            "what was sent or stale is no longer kept"
        );
        // A resend (the delivery failed) reads the same from the table.
        let again = read_batch(&store, messages, &outbox.fresh, &peer, 0).expect("read again");
        assert_eq!(ids(&again), ids(&sent));
        assert_eq!(
            ids(&read_batch(&store, messages, &outbox.fresh, &peer, 1).expect("after 1")),
            [(2, "rewritten".to_owned())]
        );
    }

    #[test]
    fn kept_messages_are_bounded_and_dropped_below_what_is_read() {
        let peer = NodeId::from("n-1".to_owned());
        let other = NodeId::from("n-2".to_owned());
        let mut fresh = Fresh::default();
        for seq in 1..=FRESH_MAX as u64 + 5 {
            fresh.keep(&peer, seq, vec![seq as u8], accepted("x"));
        }
        assert_eq!(fresh.len, FRESH_MAX, "no more than the bound are kept");
        // Replacing a kept number is allowed at the bound.
        fresh.keep(&peer, 3, vec![9], accepted("y"));
        assert_eq!(fresh.len, FRESH_MAX);
        assert!(
            fresh.take(&peer, 3, &[3]).is_none(),
            "other bytes: not the kept one"
        );
        assert_eq!(fresh.len, FRESH_MAX - 3, "1 and 2 went with it");
        assert!(fresh.take(&peer, 4, &[4]).is_some());
        fresh.keep(&other, 1, vec![1], accepted("z"));
        fresh.forget(&peer);
        assert_eq!(fresh.len, 1);
        assert!(fresh.take(&other, 1, &[1]).is_some());
        assert_eq!(fresh.len, 0);
    }
}
