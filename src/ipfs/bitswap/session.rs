//! Fetching a whole DAG over bitswap: ask every peer whether it has the root (want-have), then pull every
//! block with want-block from the peers that do, a bounded number at a time, storing each block and following
//! its dag-pb links until nothing is missing.
//!
//! A peer is dropped for the rest of the fetch when it says DONT_HAVE, does not answer in time, or sends a
//! block nobody asked for (the only way a forged block can show up, since blocks are filed under the CID
//! their bytes hash to).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::debug;

use super::{Bitswap, WantError, WantType};
use crate::ipfs::dagpb::PbNode;
use crate::ipfs::{Block, BlockStore, BlockStoreError, DAG_PB, IDENTITY};
use crate::model::NodeId;

/// How a DAG fetch behaves.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// How long one peer may take to answer one want.
    pub want_timeout: Duration,
    /// Blocks requested at once.
    pub concurrency: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            want_timeout: Duration::from_secs(30),
            concurrency: 32,
        }
    }
}

/// A DAG fetch that failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No peer gave us a block.
    #[error("no bitswap peer provided {cid} ({})", reasons.join("; "))]
    NotFound {
        /// The block.
        cid: Cid,
        /// What each peer answered.
        reasons: Vec<String>,
    },
    /// No peer to ask.
    #[error("no IPFS peer is connected; check Ipfs.Peers and that the peers are running")]
    NoPeers,
    /// A dag-pb block that does not decode: its links cannot be followed.
    #[error("block {cid} is not valid dag-pb: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// Why.
        reason: String,
    },
    /// Storing a block failed.
    #[error("storing block {cid} failed")]
    Store {
        /// The block.
        cid: Cid,
        /// The cause (boxed to keep the error small: it travels through every session call).
        #[source]
        source: Box<BlockStoreError>,
    },
}

/// What a finished fetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Blocks fetched from peers.
    pub fetched: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// Blocks already in the store.
    pub local: u64,
}

/// Fetches `root` and every block it links to from `peers` into `store`. Cancel-safe: dropping the future
/// withdraws its waiters; blocks already stored stay (they are verified).
pub async fn fetch_dag(
    bitswap: &Bitswap,
    store: &Arc<dyn BlockStore>,
    root: Cid,
    peers: &[NodeId],
    config: SessionConfig,
) -> Result<SessionStats, SessionError> {
    if peers.is_empty() {
        return Err(SessionError::NoPeers);
    }
    let mut stats = SessionStats::default();
    let mut providers: Vec<NodeId> = Vec::new();
    let mut reasons = Vec::new();
    let strikes_at_start: Vec<u64> = peers.iter().map(|p| bitswap.strikes(p)).collect();

    let root_local = has(store, root).await?;
    if root_local {
        providers.extend(peers.iter().cloned());
    } else {
        // Who has the root? Asking all at once costs one small message each and finds the fastest.
        let mut asks: FuturesUnordered<_> = peers
            .iter()
            .map(|peer| async move {
                let answer = bitswap
                    .want(peer, root, WantType::Have, config.want_timeout)
                    .await;
                (peer.clone(), answer)
            })
            .collect();
        while let Some((peer, answer)) = asks.next().await {
            match answer {
                Ok(Some(block)) => {
                    put(store, block.clone()).await?;
                    stats.fetched += 1;
                    stats.bytes += block.data().len() as u64;
                    providers.push(peer);
                }
                Ok(None) => providers.push(peer),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if providers.is_empty() {
            return Err(SessionError::NotFound { cid: root, reasons });
        }
    }

    let mut queue = VecDeque::from([root]);
    let mut seen = HashSet::from([root]);
    let mut in_flight = FuturesUnordered::new();
    let mut next_provider = 0usize;
    loop {
        while in_flight.len() < config.concurrency.max(1) {
            let Some(cid) = queue.pop_front() else { break };
            if let Some(data) = local(store, cid).await? {
                stats.local += 1;
                follow_links(cid, &data, &mut queue, &mut seen)?;
                continue;
            }
            let order: Vec<NodeId> = (0..providers.len())
                .map(|i| providers[(next_provider + i) % providers.len()].clone())
                .collect();
            next_provider = next_provider.wrapping_add(1);
            let strikes: Vec<(NodeId, u64)> = order
                .iter()
                .map(|p| {
                    let idx = peers.iter().position(|q| q == p);
                    (p.clone(), idx.map_or(0, |i| strikes_at_start[i]))
                })
                .collect();
            in_flight.push(fetch_block(bitswap, cid, strikes, config.want_timeout));
        }
        let Some(done) = in_flight.next().await else {
            break;
        };
        let (cid, result) = done;
        match result {
            Ok((block, _peer)) => {
                stats.fetched += 1;
                stats.bytes += block.data().len() as u64;
                let data = block.data().clone();
                put(store, block).await?;
                follow_links(cid, &data, &mut queue, &mut seen)?;
            }
            Err(reasons) => return Err(SessionError::NotFound { cid, reasons }),
        }
    }
    debug!(root = %root, fetched = stats.fetched, bytes = stats.bytes, local = stats.local, "DAG fetched over bitswap");
    Ok(stats)
}

/// Asks each provider in turn for `cid`'s block, skipping any that sent unsolicited blocks since the fetch
/// began (their count is past the one recorded at the start).
async fn fetch_block(
    bitswap: &Bitswap,
    cid: Cid,
    providers: Vec<(NodeId, u64)>,
    timeout: Duration,
) -> (Cid, Result<(Block, NodeId), Vec<String>>) {
    let mut reasons = Vec::new();
    for (peer, strikes) in providers {
        if bitswap.strikes(&peer) > strikes {
            reasons.push(format!(
                "peer {peer} sent blocks nobody asked for (corrupt or forged data); not asked again"
            ));
            continue;
        }
        match bitswap.want(&peer, cid, WantType::Block, timeout).await {
            Ok(Some(block)) => return (cid, Ok((block, peer))),
            // A HAVE cannot answer a want-block; treat it like silence.
            Ok(None) => reasons.push(format!("peer {peer} answered HAVE but sent no block")),
            Err(e) => {
                if matches!(e, WantError::Timeout { .. }) {
                    bitswap.cancel(&peer, &[cid]).await;
                }
                reasons.push(e.to_string());
            }
        }
    }
    (cid, Err(reasons))
}

/// Queues the links of a dag-pb block that were not seen yet; raw blocks have none.
fn follow_links(
    cid: Cid,
    data: &Bytes,
    queue: &mut VecDeque<Cid>,
    seen: &mut HashSet<Cid>,
) -> Result<(), SessionError> {
    if cid.codec() != DAG_PB {
        return Ok(());
    }
    let node = PbNode::decode(data).map_err(|e| SessionError::Malformed {
        cid,
        reason: e.to_string(),
    })?;
    for link in node.links {
        if seen.insert(link.hash) {
            queue.push_back(link.hash);
        }
    }
    Ok(())
}

/// The block's bytes when the store has it (identity CIDs carry their bytes and are always "held").
async fn local(store: &Arc<dyn BlockStore>, cid: Cid) -> Result<Option<Bytes>, SessionError> {
    if cid.hash().code() == IDENTITY {
        return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.get(&cid))
        .await
        .map_err(|e| SessionError::Store {
            cid,
            source: Box::new(BlockStoreError::Backend {
                op: "get",
                reason: e.to_string(),
            }),
        })?
        .map_err(|source| SessionError::Store {
            cid,
            source: Box::new(source),
        })
}

async fn has(store: &Arc<dyn BlockStore>, cid: Cid) -> Result<bool, SessionError> {
    Ok(local(store, cid).await?.is_some())
}

async fn put(store: &Arc<dyn BlockStore>, block: Block) -> Result<(), SessionError> {
    let cid = *block.cid();
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.put(&block))
        .await
        .map_err(|e| SessionError::Store {
            cid,
            source: Box::new(BlockStoreError::Backend {
                op: "put",
                reason: e.to_string(),
            }),
        })?
        .map_err(|source| SessionError::Store {
            cid,
            source: Box::new(source),
        })
}
