//! IPFS without a daemon: content-addressed blocks, the dag-pb and UnixFS formats, CAR files, and the ways a
//! node gets and serves blocks.
//!
//! Every block that enters the node from outside is checked against its CID ([`Block::verified`]) before
//! anything reads it: a peer or gateway can send garbage, but never garbage under a CID it does not hash to.
//!
//! - [`pb`]: the few protobuf wire primitives dag-pb and UnixFS need (no codegen, no protobuf crate).
//! - [`dagpb`]: the dag-pb node (`PBNode`/`PBLink`) and the UnixFS `Data` message inside it.
//! - [`car`]: CAR v1 read and write.
//! - [`blocks`]: the [`BlockStore`] trait every store implements, and an in-memory one; the [`BlockSource`]
//!   trait the exporter reads through (local store or network).
//! - [`store`]: the node's block store on disk (files + LMDB index, budget, LRU, pins).
//! - [`unixfs`]: the importer (Kubo's CIDs) and the exporter (`cat`, `get`).
//! - [`bitswap`]: the bitswap protocol on the node's swarm (client, server, DAG sessions).
//! - [`gateway`]: trustless gateway and Kubo RPC clients; [`fetch`]: the [`fetch::Fetcher`] that tries
//!   the local store, bitswap peers, gateways and Kubo RPC in turn; [`gateway_server`]: the trustless
//!   gateway this node serves.

pub mod bitswap;
pub mod blocks;
pub mod car;
pub mod dagpb;
pub mod fetch;
pub mod gateway;
pub mod gateway_server;
pub mod pb;
pub mod store;
pub mod unixfs;

pub use blocks::{
    BlockSource, BlockStore, BlockStoreError, FetchError, LocalSource, MemoryBlockStore,
};
pub use cid::Cid;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Multicodec of dag-pb nodes (UnixFS directories, files with links, CIDv0).
pub const DAG_PB: u64 = 0x70;
/// Multicodec of raw leaves (`--raw-leaves`, CIDv1 default in Kubo's `--cid-version 1`).
pub const RAW: u64 = 0x55;
/// Multihash code of SHA2-256, the only hash Kubo uses by default.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (the data is the digest; Kubo inlines tiny blocks with it).
pub const IDENTITY: u64 = 0x00;
/// The largest block accepted from anyone: bitswap and Kubo refuse blocks over 2 MiB, so nothing legitimate
/// is larger, and a bound keeps a hostile peer from making the node buffer without limit.
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// The CID of a block of `codec` whose SHA2-256 is `digest`; CIDv0 when `v0` (only for dag-pb). For callers
/// that hash a block as a stream of parts and never build it (the importer's `--only-hash` leaves).
pub fn sha256_cid(codec: u64, digest: &[u8; 32], v0: bool) -> Cid {
    // A 32-byte digest always fits the 64-byte multihash.
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, digest)
        .unwrap_or_else(|_| unreachable!("a sha2-256 digest fits a 64-byte multihash"));
    if v0 && codec == DAG_PB {
        Cid::new_v0(mh).unwrap_or_else(|_| unreachable!("a sha2-256 dag-pb CID is a valid CIDv0"))
    } else {
        Cid::new_v1(codec, mh)
    }
}

/// A block whose bytes are known to hash to its CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Bytes,
}

/// Why a block was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// The bytes do not hash to the CID: corruption or a lying peer.
    #[error("block {cid} does not match its content hash; the source sent corrupt or forged data")]
    HashMismatch {
        /// The CID asked for.
        cid: Cid,
    },
    /// A hash function this node cannot check; refusing is safer than trusting.
    #[error(
        "block {cid} uses multihash code {code:#x}, which this node cannot verify (only sha2-256)"
    )]
    UnsupportedHash {
        /// The CID.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// Larger than [`MAX_BLOCK_SIZE`].
    #[error("block {cid} is {size} bytes, over the {MAX_BLOCK_SIZE}-byte limit for a block")]
    TooLarge {
        /// The CID.
        cid: Cid,
        /// Its size.
        size: usize,
    },
}

impl Block {
    /// Checks `data` against `cid` and wraps them.
    pub fn verified(cid: Cid, data: Bytes) -> Result<Block, BlockError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(BlockError::TooLarge {
                cid,
                size: data.len(),
            });
        }
        let hash = cid.hash();
        let ok = match hash.code() {
            SHA2_256 => Sha256::digest(&data).as_slice() == hash.digest(),
            IDENTITY => data.as_ref() == hash.digest(),
            code => return Err(BlockError::UnsupportedHash { cid, code }),
        };
        if ok {
            Ok(Block { cid, data })
        } else {
            Err(BlockError::HashMismatch { cid })
        }
    }

    /// Hashes `data` (SHA2-256) into a block of the given codec; CIDv0 when `v0` (only for dag-pb).
    pub fn new(codec: u64, data: Bytes, v0: bool) -> Block {
        let cid = sha256_cid(codec, &Sha256::digest(&data).into(), v0);
        Block { cid, data }
    }

    /// Wraps bytes read back from a [`BlockStore`] without hashing them again: stores only ever hold blocks
    /// that were verified (or made) on the way in, and serving a 256 KiB block should not cost a hash.
    pub fn from_store(cid: Cid, data: Bytes) -> Block {
        Block { cid, data }
    }

    /// Its CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// Its bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Both parts.
    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_unixfs_file_has_kubos_cid() {
        // `ipfs add` of an empty file: a dag-pb node holding only UnixFS Data{Type: File, filesize: 0}.
        let block = Block::new(
            DAG_PB,
            Bytes::from_static(&[0x0a, 0x04, 0x08, 0x02, 0x18, 0x00]),
            true,
        );
        assert_eq!(
            block.cid().to_string(),
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
        );
    }

    #[test]
    fn verification_catches_a_flipped_byte() {
        let block = Block::new(RAW, Bytes::from_static(b"hello"), false);
        assert!(Block::verified(*block.cid(), Bytes::from_static(b"hello")).is_ok());
        assert_eq!(
            Block::verified(*block.cid(), Bytes::from_static(b"hellp")),
            Err(BlockError::HashMismatch { cid: *block.cid() })
        );
    }

    #[test]
    fn identity_cids_carry_their_data() {
        let mh = cid::multihash::Multihash::<64>::wrap(IDENTITY, b"tiny").expect("fits");
        let cid = Cid::new_v1(RAW, mh);
        assert!(Block::verified(cid, Bytes::from_static(b"tiny")).is_ok());
        assert!(Block::verified(cid, Bytes::from_static(b"tinz")).is_err());
    }

    #[test]
    fn unknown_hashes_are_refused_not_trusted() {
        let mh = cid::multihash::Multihash::<64>::wrap(0x13, &[0; 64]).expect("fits");
        let cid = Cid::new_v1(RAW, mh);
        assert!(matches!(
            Block::verified(cid, Bytes::new()),
            Err(BlockError::UnsupportedHash { code: 0x13, .. })
        ));
    }
}
