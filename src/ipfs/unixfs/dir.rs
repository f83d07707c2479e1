//! Directories: one dag-pb node with a link per entry, sorted by name (bytewise, as boxo's merkledag
//! sorts on encode), or a HAMT when it would be too big.
//!
//! When to shard is Kubo's rule (boxo `io/directory.go`, Kubo 0.22 / boxo 0.11 and later by default): the
//! directory becomes a HAMT once the *estimated* size of its node reaches `HAMTShardingSize` (256 KiB),
//! where the estimate is the sum over entries of `len(name) + len(cid bytes)`: not the encoded block size.
//! Entries are only added during an import, so the estimate only grows and the outcome depends on the
//! final set of entries alone.

use bytes::Bytes;
use cid::Cid;

use super::{ImportError, ImportOptions, hamt};
use crate::ipfs::dagpb::{DataType, PbLink, PbNode, UnixfsData};
use crate::ipfs::{Block, BlockStore, DAG_PB};

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (UTF-8, one path component).
    pub name: String,
    /// The entry's root.
    pub cid: Cid,
    /// Its cumulative size.
    pub tsize: u64,
}

/// boxo's link size estimate for the sharding decision.
pub fn estimated_size(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| e.name.len() + e.cid.encoded_len())
        .sum()
}

/// Whether Kubo would shard a directory with these entries.
pub fn needs_sharding(entries: &[Entry], options: &ImportOptions) -> bool {
    options.hamt_threshold != 0 && estimated_size(entries) >= options.hamt_threshold
}

/// Builds and stores a directory (plain or sharded); returns its CID and Tsize.
pub fn build(
    store: &dyn BlockStore,
    options: &ImportOptions,
    path: &std::path::Path,
    mut entries: Vec<Entry>,
) -> Result<(Cid, u64), ImportError> {
    if needs_sharding(&entries, options) {
        return hamt::build(store, options, path, entries);
    }
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let tsizes: u64 = entries.iter().map(|e| e.tsize).sum();
    let node = PbNode {
        links: entries
            .into_iter()
            .map(|e| PbLink {
                hash: e.cid,
                name: Some(e.name),
                tsize: Some(e.tsize),
            })
            .collect(),
        data: Some(Bytes::from(UnixfsData::new(DataType::Directory).encode())),
    };
    let bytes = Bytes::from(node.encode());
    let tsize = bytes.len() as u64 + tsizes;
    let block = Block::new(DAG_PB, bytes, options.cid_version == 0);
    store.put(&block).map_err(ImportError::Store)?;
    Ok((*block.cid(), tsize))
}

/// Builds and stores a symlink node; returns its CID and Tsize.
pub fn symlink(
    store: &dyn BlockStore,
    options: &ImportOptions,
    target: Vec<u8>,
) -> Result<(Cid, u64), ImportError> {
    let mut data = UnixfsData::new(DataType::Symlink);
    data.data = Some(Bytes::from(target));
    let bytes = Bytes::from(
        PbNode {
            links: Vec::new(),
            data: Some(Bytes::from(data.encode())),
        }
        .encode(),
    );
    let tsize = bytes.len() as u64;
    let block = Block::new(DAG_PB, bytes, options.cid_version == 0);
    store.put(&block).map_err(ImportError::Store)?;
    Ok((*block.cid(), tsize))
}
