//! Writes of the `nodes` table, many per commit. Every handshake, disconnect and description change stores the
//! node's state; one fsync'd commit each would cap a fleet's (re)connection at the disk's commit rate (10,000
//! nodes at ~8 ms per LMDB commit is over a minute, and a simulator process dying takes 1,000 nodes at once).
//! Writes are queued in order and the writer commits everything queued so far in one transaction, so
//! concurrent handshakes share an fsync and a burst of disconnects costs a few commits. Each write also answers
//! what the orchestrator has applied from that node (the handshake's Welcome needs it), read in the same
//! transaction, so a handshake costs no blocking task of its own.

use tokio::sync::{mpsc, oneshot};

use crate::model::NodeState;
use crate::outbox::Outbox;
use crate::store::Store;

use super::state::Tables;

/// Most node states in one commit (bounds the transaction while thousands wait).
const MAX_BATCH: usize = 1024;

/// What a write answers: the highest sequence number applied from the node, or why the write failed.
pub(crate) type Written = Result<u64, String>;

/// One queued write and who waits for it.
type Queued = (NodeState, oneshot::Sender<Written>);

/// The queue's sending side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub(crate) struct NodeWrites {
    queue: mpsc::UnboundedSender<Queued>,
}

/// The writer; spawn [`Writer::run`].
#[derive(Debug)]
pub(crate) struct Writer {
    queue: mpsc::UnboundedReceiver<Queued>,
    store: Store,
    tables: Tables,
    outbox: Outbox,
}

impl NodeWrites {
    pub fn new(store: Store, tables: Tables, outbox: Outbox) -> (Self, Writer) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self { queue: tx },
            Writer {
                queue: rx,
                store,
                tables,
                outbox,
            },
        )
    }

    /// Queues `state` for the next commit. Order is kept: of two writes of one node, the later wins. Await
    /// the answer to know it is durable (an error says why it is not); dropping it leaves the write queued.
    pub fn put(&self, state: NodeState) -> oneshot::Receiver<Written> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, tx))) = self.queue.send((state, tx)) {
            let _ = tx.send(Err("the orchestrator is shutting down".to_owned()));
        }
        rx
    }
}

impl Writer {
    /// Commits queued writes until every [`NodeWrites`] handle is gone.
    pub async fn run(mut self) {
        let mut batch: Vec<Queued> = Vec::new();
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let (t, outbox) = (self.tables, self.outbox.clone());
            let states: Vec<NodeState> = batch.iter().map(|(s, _)| s.clone()).collect();
            let result = self
                .store
                .write(move |txn| {
                    let mut applied = Vec::with_capacity(states.len());
                    for s in &states {
                        txn.put(t.nodes, s.info.node_id.as_str(), s)?;
                        applied.push(outbox.last_applied(txn, &s.info.node_id)?);
                    }
                    Ok(applied)
                })
                .await
                .map_err(|e| e.to_string());
            match result {
                Ok(applied) => {
                    for ((_, done), a) in batch.drain(..).zip(applied) {
                        let _ = done.send(Ok(a));
                    }
                }
                Err(e) => {
                    tracing::warn!(nodes = batch.len(), error = %e, "cannot store node states");
                    for (_, done) in batch.drain(..) {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeConnection, NodeInfo};
    use crate::store::Reader;

    fn state(id: &str, connection: NodeConnection) -> NodeState {
        NodeState {
            info: NodeInfo {
                node_id: id.to_owned().into(),
                ..Default::default()
            },
            connection,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn queued_writes_are_durable_when_answered_and_the_last_one_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state"), &Default::default()).expect("store");
        let tables = Tables::open(&store).expect("tables");
        let (outbox, _delivery) = Outbox::new(
            &store,
            crate::transport::new(crate::transport::Identity::generate(), Default::default())
                .expect("transport")
                .0,
            crate::outbox::Tables {
                messages: "test.outbox",
                counters: "test.outbox_counters",
            },
        )
        .expect("outbox");
        let (writes, writer) = NodeWrites::new(store.clone(), tables, outbox);
        // Queued before the writer runs, as handshakes arriving at start-up are.
        let mut answers: Vec<_> = (0..500)
            .map(|i| writes.put(state(&format!("n{i:03}"), NodeConnection::Connected)))
            .collect();
        answers.push(writes.put(state("n007", NodeConnection::Disconnected)));
        let task = tokio::spawn(writer.run());
        for a in answers {
            assert_eq!(a.await.expect("answered"), Ok(0), "nothing applied yet");
        }
        let (count, n7) = store
            .read(move |txn| Ok((txn.all(tables.nodes)?.len(), txn.get(tables.nodes, "n007")?)))
            .await
            .expect("read");
        assert_eq!(count, 500);
        assert_eq!(n7.map(|n| n.connection), Some(NodeConnection::Disconnected));
        // The writer ends with its last handle.
        drop(writes);
        task.await.expect("writer ends");
    }
}
