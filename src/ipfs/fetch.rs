//! The [`Fetcher`]: gets a block or a whole DAG from wherever it is, in a fixed order: the local store, then
//! the configured bitswap peers, then trustless gateways, then a Kubo RPC endpoint. Everything fetched is
//! verified by the source that fetched it and kept in the local store, so the exporter and the bitswap and
//! gateway servers see it afterwards.
//!
//! Why this order: the local store costs nothing; bitswap peers are the operator's own IPFS nodes (close and
//! trusted to be up); gateways are public and slow; Kubo RPC is the legacy path Bacalhau used.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;

use super::bitswap::session::{SessionConfig, fetch_dag};
use super::bitswap::{Bitswap, WantType};
use super::blocks::{BlockSource, FetchError};
use super::dagpb::PbNode;
use super::gateway::HttpSource;
use super::{BlockStore, DAG_PB, IDENTITY};
use crate::model::NodeId;

/// Fetches blocks and DAGs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Where fetched blocks go, and the first place looked.
    store: Arc<dyn BlockStore>,
    /// Bitswap and the peers to ask, when any are configured.
    bitswap: Option<(Bitswap, Vec<NodeId>)>,
    /// Gateways, then Kubo RPC endpoints, in the order tried.
    http: Vec<HttpSource>,
    /// Per-want timeout and concurrency of bitswap sessions.
    session: SessionConfig,
}

// === impl Fetcher ===

impl Fetcher {
    /// A fetcher over `store` with no network sources (add them with the `with_*` methods).
    pub fn new(store: Arc<dyn BlockStore>) -> Self {
        Self {
            store,
            bitswap: None,
            http: Vec::new(),
            session: SessionConfig::default(),
        }
    }

    /// Asks `peers` over `bitswap`.
    pub fn with_bitswap(
        mut self,
        bitswap: Bitswap,
        peers: Vec<NodeId>,
        session: SessionConfig,
    ) -> Self {
        if !peers.is_empty() {
            self.bitswap = Some((bitswap, peers));
        }
        self.session = session;
        self
    }

    /// Adds an HTTP source (tried in the order added, after bitswap).
    pub fn with_http(mut self, source: HttpSource) -> Self {
        self.http.push(source);
        self
    }

    /// The store blocks land in.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    /// Every source, for messages ("could not be fetched from any of: …").
    pub fn describe_sources(&self) -> Vec<String> {
        let mut out = vec!["the local store".to_owned()];
        if let Some((_, peers)) = &self.bitswap {
            out.extend(peers.iter().map(|p| format!("bitswap peer {p}")));
        }
        out.extend(self.http.iter().map(HttpSource::describe));
        out
    }

    /// Makes sure `root` and every block under it are in the local store. Cancel-safe (blocks stored so far
    /// stay; they are verified).
    pub async fn fetch_dag(&self, root: Cid) -> Result<(), FetchError> {
        let mut tried = Vec::new();
        match self.missing(root).await? {
            None => return Ok(()),
            Some(_) => tried.push("the local store: not held".to_owned()),
        }
        if let Some((bitswap, peers)) = &self.bitswap {
            match fetch_dag(bitswap, &self.store, root, peers, self.session).await {
                Ok(_) => return Ok(()),
                Err(e) => tried.push(format!("bitswap: {e}")),
            }
        }
        for source in &self.http {
            match source.fetch_dag(root, &self.store).await {
                Ok(_) => return Ok(()),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(FetchError::Unavailable {
            cid: root,
            reason: tried.join("; "),
        })
    }

    /// Stores a fetched (verified) block off the runtime and returns its bytes.
    async fn keep(&self, block: super::Block) -> Result<Bytes, FetchError> {
        let data = block.data().clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put(&block))
            .await
            .map_err(|e| {
                FetchError::Store(super::BlockStoreError::Backend {
                    op: "put",
                    reason: e.to_string(),
                })
            })?
            .map_err(FetchError::Store)?;
        Ok(data)
    }

    /// The first block under `root` that the store lacks, if any.
    async fn missing(&self, root: Cid) -> Result<Option<Cid>, FetchError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut queue = VecDeque::from([root]);
            let mut seen = HashSet::from([root]);
            while let Some(cid) = queue.pop_front() {
                let data = if cid.hash().code() == IDENTITY {
                    Bytes::copy_from_slice(cid.hash().digest())
                } else {
                    match store.get(&cid).map_err(FetchError::Store)? {
                        Some(data) => data,
                        None => return Ok(Some(cid)),
                    }
                };
                if cid.codec() == DAG_PB {
                    // A stored block that is not dag-pb cannot have come from a verified import or fetch
                    // under a dag-pb CID unless it is malformed; its subtree is then unreachable.
                    let Ok(node) = PbNode::decode(&data) else {
                        return Ok(Some(cid));
                    };
                    for link in node.links {
                        if seen.insert(link.hash) {
                            queue.push_back(link.hash);
                        }
                    }
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| {
            FetchError::Store(super::BlockStoreError::Backend {
                op: "walk",
                reason: e.to_string(),
            })
        })?
    }
}

#[async_trait]
impl BlockSource for Fetcher {
    async fn block(&self, cid: &Cid) -> Result<Bytes, FetchError> {
        let cid = *cid;
        if cid.hash().code() == IDENTITY {
            return Ok(Bytes::copy_from_slice(cid.hash().digest()));
        }
        let store = self.store.clone();
        let held = tokio::task::spawn_blocking(move || store.get(&cid))
            .await
            .map_err(|e| {
                FetchError::Store(super::BlockStoreError::Backend {
                    op: "get",
                    reason: e.to_string(),
                })
            })?
            .map_err(FetchError::Store)?;
        if let Some(data) = held {
            return Ok(data);
        }
        let mut tried = Vec::new();
        if let Some((bitswap, peers)) = &self.bitswap {
            for peer in peers {
                match bitswap
                    .want(peer, cid, WantType::Block, self.session.want_timeout)
                    .await
                {
                    Ok(Some(block)) => return self.keep(block).await,
                    Ok(None) => tried.push(format!("peer {peer} answered HAVE without the block")),
                    Err(e) => tried.push(e.to_string()),
                }
            }
        }
        for source in &self.http {
            match source.fetch_raw(cid).await {
                Ok(block) => return self.keep(block).await,
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(FetchError::Unavailable {
            cid,
            reason: if tried.is_empty() {
                "not in the local store and no IPFS peer or gateway is configured".to_owned()
            } else {
                tried.join("; ")
            },
        })
    }
}

/// The default per-want timeout, exposed for config defaults.
pub const DEFAULT_WANT_TIMEOUT: Duration = Duration::from_secs(30);
