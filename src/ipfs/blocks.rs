//! Where blocks live. Every store (the node's disk store, the in-memory one tests and `--only-hash` use)
//! implements [`BlockStore`]; bitswap, the gateway, the importer and the exporter see only the trait.
//!
//! The calls are synchronous: a block is at most [`MAX_BLOCK_SIZE`](super::MAX_BLOCK_SIZE) and stores answer
//! from LMDB or one small file, so async callers batch work into `spawn_blocking` rather than paying a task
//! switch per block.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;

use super::{Block, BlockError};

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockStoreError {
    /// The store's disk budget is spent and nothing can be evicted (everything is pinned).
    #[error(
        "the block store is full ({used} of {budget} bytes, all pinned); raise the IPFS store budget or free space"
    )]
    Full {
        /// Bytes in use.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Disk or database trouble.
    #[error("block store {op} failed: {reason}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// Why.
        reason: String,
    },
}

/// Blocks by CID.
pub trait BlockStore: Send + Sync + fmt::Debug {
    /// The block's bytes, if held. Stores only hold verified blocks, so callers need not hash again.
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>, BlockStoreError>;
    /// Whether the block is held.
    fn has(&self, cid: &Cid) -> Result<bool, BlockStoreError>;
    /// Stores a block (a no-op when already held).
    fn put(&self, block: &Block) -> Result<(), BlockStoreError>;
    /// The block's size, if held (bitswap's `HAVE` answers and DAG sizes need no bytes).
    fn size(&self, cid: &Cid) -> Result<Option<u64>, BlockStoreError> {
        Ok(self.get(cid)?.map(|b| b.len() as u64))
    }
    /// Whether `put` throws every block away (`--only-hash`): writers may then skip building a block and
    /// only work out its CID.
    fn discards_blocks(&self) -> bool {
        false
    }
}

/// Why a block could not be had from a [`BlockSource`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No source that was asked has the block (not in the local store, no peer or gateway answered).
    #[error("block {cid} is unavailable: {reason}")]
    Unavailable {
        /// The block asked for.
        cid: Cid,
        /// Where it was looked for, and what to do about it.
        reason: String,
    },
    /// The store behind the source failed.
    #[error("reading a block from the store failed")]
    Store(#[source] BlockStoreError),
    /// A block arrived but was refused (wrong hash, too large, unknown hash function).
    #[error("a fetched block was refused")]
    Invalid(#[source] BlockError),
}

/// Where the exporter (and anything else that walks a DAG) gets blocks: the local store, or a network
/// fetcher (bitswap, a trustless gateway) that verifies what it receives and may keep it in a store.
///
/// Async because a network source waits on peers; every returned block matches its CID (sources verify
/// before returning, stores hold only verified blocks).
#[async_trait]
pub trait BlockSource: Send + Sync + fmt::Debug {
    /// The block's bytes.
    async fn block(&self, cid: &Cid) -> Result<Bytes, FetchError>;
}

/// Any [`BlockStore`] as a [`BlockSource`] that answers from the store only (no network): a block that is
/// not held is [`FetchError::Unavailable`].
#[derive(Debug, Clone)]
pub struct LocalSource<S>(pub S);

#[async_trait]
impl<S> BlockSource for LocalSource<S>
where
    S: std::ops::Deref + Send + Sync + fmt::Debug,
    S::Target: BlockStore,
{
    async fn block(&self, cid: &Cid) -> Result<Bytes, FetchError> {
        // Identity CIDs carry their bytes; no store holds them (Kubo does not either).
        if cid.hash().code() == super::IDENTITY {
            return Ok(Bytes::copy_from_slice(cid.hash().digest()));
        }
        match self.0.get(cid).map_err(FetchError::Store)? {
            Some(data) => Ok(data),
            None => Err(FetchError::Unavailable {
                cid: *cid,
                reason: "not in the local store; add it with `cod ipfs add` or fetch it from the network"
                    .to_owned(),
            }),
        }
    }
}

/// Blocks in memory: for tests, and for `cod ipfs add --only-hash`, which keeps nothing.
#[derive(Debug, Default)]
pub struct MemoryBlockStore {
    blocks: Mutex<HashMap<Cid, Bytes>>,
    /// When set, `put` drops the bytes (only-hash mode) and remembers nothing.
    discard: bool,
}

impl MemoryBlockStore {
    /// An empty store that keeps what it is given.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that forgets every block: hashing without storing.
    pub fn discarding() -> Self {
        MemoryBlockStore {
            blocks: Mutex::default(),
            discard: true,
        }
    }

    /// How many blocks are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Cid, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated (each call is one insert or
        // lookup), so a poisoned lock is still safe to use.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockStore for MemoryBlockStore {
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>, BlockStoreError> {
        Ok(self.lock().get(cid).cloned())
    }

    fn has(&self, cid: &Cid) -> Result<bool, BlockStoreError> {
        Ok(self.lock().contains_key(cid))
    }

    fn put(&self, block: &Block) -> Result<(), BlockStoreError> {
        if !self.discard {
            self.lock()
                .entry(*block.cid())
                .or_insert_with(|| block.data().clone());
        }
        Ok(())
    }

    fn discards_blocks(&self) -> bool {
        self.discard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::RAW;

    #[test]
    fn memory_store_keeps_or_discards() {
        let block = Block::new(RAW, Bytes::from_static(b"abc"), false);
        let keep = MemoryBlockStore::new();
        keep.put(&block).expect("put");
        assert_eq!(
            keep.get(block.cid()).expect("get"),
            Some(block.data().clone())
        );
        assert_eq!(keep.size(block.cid()).expect("size"), Some(3));
        assert!(!keep.discards_blocks());
        let drop = MemoryBlockStore::discarding();
        drop.put(&block).expect("put");
        assert!(!drop.has(block.cid()).expect("has"));
        assert!(drop.discards_blocks());
    }
}
