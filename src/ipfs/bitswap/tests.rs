//! Two real swarms on loopback: one serves a store, the other fetches from it or misbehaves on purpose.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::session::{SessionConfig, SessionError, fetch_dag};
use super::*;
use crate::ipfs::dagpb::{PbLink, PbNode};
use crate::ipfs::{DAG_PB, MemoryBlockStore, RAW};
use crate::transport::{self, Client, Config, Identity};

const DEADLINE: Duration = Duration::from_secs(10);

struct Peer {
    client: Client,
    shutdown: CancellationToken,
    _events: tokio::sync::mpsc::Receiver<transport::Event>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn peer(listen: bool, ipfs_peers: Vec<String>) -> Peer {
    let config = Config {
        listen: if listen {
            vec!["/ip4/127.0.0.1/tcp/0".into()]
        } else {
            vec![]
        },
        ipfs_peers,
        ..Config::default()
    };
    let (client, events, event_loop) =
        transport::new(Identity::generate(), config).expect("transport");
    let shutdown = CancellationToken::new();
    tokio::spawn(event_loop.run(shutdown.clone()));
    Peer {
        client,
        shutdown,
        _events: events,
    }
}

fn start(peer: &Peer, store: Arc<dyn BlockStore>, limits: Limits) -> Bitswap {
    let (bitswap, run) = Bitswap::start(
        peer.client.streams(),
        store,
        limits,
        peer.shutdown.child_token(),
    )
    .expect("start");
    tokio::spawn(run);
    bitswap
}

/// A root dag-pb node linking two raw leaves and one dag-pb child that links a third leaf.
fn small_dag() -> (Cid, Vec<Block>) {
    let leaves: Vec<Block> = (0..3)
        .map(|i| Block::new(RAW, Bytes::from(vec![i as u8; 1000 + i]), false))
        .collect();
    let link = |b: &Block| PbLink {
        hash: *b.cid(),
        name: Some(String::new()),
        tsize: Some(b.data().len() as u64),
    };
    let child = Block::new(
        DAG_PB,
        Bytes::from(
            PbNode {
                links: vec![link(&leaves[2])],
                data: None,
            }
            .encode(),
        ),
        false,
    );
    let root = Block::new(
        DAG_PB,
        Bytes::from(
            PbNode {
                links: vec![link(&leaves[0]), link(&leaves[1]), link(&child)],
                data: None,
            }
            .encode(),
        ),
        true,
    );
    let mut blocks = leaves;
    blocks.push(child);
    blocks.push(root.clone());
    (*root.cid(), blocks)
}

async fn connected_pair() -> (Peer, Peer, NodeId) {
    let server = peer(true, vec![]);
    let addr = server.client.listen_addrs().await.expect("addr").remove(0);
    let client = peer(false, vec![addr]);
    let server_id = server.client.local_id().clone();
    assert!(client.client.wait_connected(&server_id, DEADLINE).await);
    (server, client, server_id)
}

#[tokio::test]
async fn fetches_a_whole_dag_from_a_peer() {
    let (server, client, server_id) = connected_pair().await;
    let (root, blocks) = small_dag();
    let served = Arc::new(MemoryBlockStore::new());
    for b in &blocks {
        served.put(b).expect("put");
    }
    let _serving = start(&server, served, Limits::default());
    let fetched: Arc<dyn BlockStore> = Arc::new(MemoryBlockStore::new());
    let bitswap = start(&client, fetched.clone(), Limits::default());

    let stats = tokio::time::timeout(
        DEADLINE,
        fetch_dag(
            &bitswap,
            &fetched,
            root,
            &[server_id],
            SessionConfig::default(),
        ),
    )
    .await
    .expect("in time")
    .expect("fetched");
    assert_eq!(stats.fetched, blocks.len() as u64);
    for b in &blocks {
        assert_eq!(fetched.get(b.cid()).expect("get").as_ref(), Some(b.data()));
    }
}

#[tokio::test]
async fn a_missing_block_fails_with_the_peers_answer() {
    let (server, client, server_id) = connected_pair().await;
    let _serving = start(
        &server,
        Arc::new(MemoryBlockStore::new()),
        Limits::default(),
    );
    let fetched: Arc<dyn BlockStore> = Arc::new(MemoryBlockStore::new());
    let bitswap = start(&client, fetched.clone(), Limits::default());
    let (root, _) = small_dag();

    let err = fetch_dag(
        &bitswap,
        &fetched,
        root,
        std::slice::from_ref(&server_id),
        SessionConfig::default(),
    )
    .await
    .expect_err("nobody has it");
    assert!(
        matches!(&err, SessionError::NotFound { cid, reasons } if *cid == root && reasons[0].contains("does not have")),
        "{err}"
    );
    // An unconnected peer is reported once the wait for its connection is over.
    let stranger = Identity::generate().node_id();
    let err = bitswap
        .want(&stranger, root, WantType::Have, Duration::from_millis(200))
        .await
        .expect_err("unreachable");
    assert!(matches!(err, WantError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn unsolicited_blocks_count_against_the_sender() {
    let (server, client, server_id) = connected_pair().await;
    let fetched: Arc<dyn BlockStore> = Arc::new(MemoryBlockStore::new());
    let bitswap = start(&client, fetched.clone(), Limits::default());
    let wanted = Block::new(RAW, Bytes::from_static(b"wanted"), false);
    let junk = Block::new(RAW, Bytes::from_static(b"nobody asked"), false);
    // The "server" is a raw stream that answers a want with a block nobody asked for, then the real one.
    let mut wants = server.client.streams().accept(PROTOCOL).expect("accept");
    let streams = server.client.streams();
    let client_id = client.client.local_id().clone();
    let (junk2, wanted2) = (junk.clone(), wanted.clone());
    let liar = tokio::spawn(async move {
        let (_, mut inbound) = wants.next().await.expect("a want stream");
        let want = Message::read(&mut inbound)
            .await
            .expect("read")
            .expect("a want");
        assert_eq!(want.wants[0].cid, *wanted2.cid());
        let mut out = streams.open(&client_id, PROTOCOL).await.expect("open");
        for block in [junk2, wanted2] {
            Message {
                blocks: vec![block],
                ..Message::default()
            }
            .write(&mut out)
            .await
            .expect("write");
        }
        out
    });
    let got = bitswap
        .want(&server_id, *wanted.cid(), WantType::Block, DEADLINE)
        .await
        .expect("answered")
        .expect("a block");
    assert_eq!(got, wanted);
    // Messages on one stream are handled in order, so the junk was seen before the wanted block.
    assert_eq!(bitswap.strikes(&server_id), 1);
    assert!(
        !fetched.has(junk.cid()).expect("has"),
        "unsolicited block stored"
    );
    drop(liar.await);
}

#[tokio::test]
async fn a_peer_cannot_queue_more_wants_than_the_limit() {
    let (server, client, server_id) = connected_pair().await;
    let limits = Limits {
        max_wants_per_peer: 100,
        ..Limits::default()
    };
    let store = Arc::new(MemoryBlockStore::new());
    let _serving = start(&server, store, limits);
    // The asking side reads answers itself, so it can count them.
    let mut answers = client.client.streams().accept(PROTOCOL).expect("accept");
    let mut stream = client
        .client
        .streams()
        .open(&server_id, PROTOCOL)
        .await
        .expect("open");
    let wants: Vec<Entry> = (0..1000u32)
        .map(|i| Entry {
            cid: *Block::new(RAW, Bytes::from(i.to_be_bytes().to_vec()), false).cid(),
            priority: 1,
            cancel: false,
            want_type: WantType::Have,
            send_dont_have: true,
        })
        .collect();
    Message {
        wants,
        ..Message::default()
    }
    .write(&mut stream)
    .await
    .expect("write");

    let (_, mut inbound) = tokio::time::timeout(DEADLINE, answers.next())
        .await
        .expect("an answer stream")
        .expect("open");
    let mut dont_haves = 0;
    while dont_haves < limits.max_wants_per_peer {
        let msg = tokio::time::timeout(DEADLINE, Message::read(&mut inbound))
            .await
            .expect("answers in time")
            .expect("readable")
            .expect("not closed yet");
        dont_haves += msg.presences.len();
    }
    assert_eq!(dont_haves, limits.max_wants_per_peer);
    // Nothing beyond the limit was queued: no more answers come.
    let more = tokio::time::timeout(Duration::from_millis(300), Message::read(&mut inbound)).await;
    assert!(more.is_err(), "answers beyond the limit: {more:?}");
}
