//! Sharded directories (UnixFS HAMT), byte-exact with boxo's `ipld/unixfs/hamt`.
//!
//! - Each name is hashed with murmur3 x64 (the first 64 bits of the 128-bit hash, seed 0, big-endian);
//!   a shard of fanout 2^k uses the next k bits of that hash, most significant first, as the slot.
//! - A slot with one entry links the entry directly, named `<slot as %02X><name>`; a slot with several
//!   holds a child shard, linked under the bare `%02X` prefix. With inserts only (an import) this layout
//!   depends on the set of names alone, not on their order, so building it in one pass matches Kubo.
//! - A shard node is dag-pb with links in slot order and `Data{HAMTShard, Data: bitfield, hashType 0x22,
//!   fanout}`; the bitfield is big-endian with bit i = slot i and leading zero bytes dropped
//!   (go-bitfield's `Bytes()`).

use bytes::Bytes;

use super::dir::Entry;
use super::{ImportError, ImportOptions};
use crate::ipfs::dagpb::{DataType, PbLink, PbNode, UnixfsData};
use crate::ipfs::{Block, BlockStore, DAG_PB};

/// Multicodec of murmur3-x64-64, the UnixFS `hashType` of every Kubo shard.
pub const HASH_MURMUR3: u64 = 0x22;

/// murmur3 x64 128 (seed 0) truncated to its first 64-bit half, which is what boxo's `murmur3.New64`
/// (spaolacci/murmur3) computes.
pub fn murmur3_x64_64(data: &[u8]) -> u64 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mut h1: u64 = 0;
    let mut h2: u64 = 0;
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let (a, b) = block.split_at(8);
        let k1 = u64::from_le_bytes(a.try_into().unwrap_or_else(|_| unreachable!("8 bytes")));
        let k2 = u64::from_le_bytes(b.try_into().unwrap_or_else(|_| unreachable!("8 bytes")));
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(b) << (8 * i);
        } else {
            k2 |= u64::from(b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1.wrapping_add(h2)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The slot of `hash` at `depth` in a shard tree whose nodes use `bits` bits each (boxo's `hashBits`).
/// `None` once the 64 bits are used up (boxo: "sharded directory too deep").
pub fn slot(hash: u64, depth: usize, bits: u32) -> Option<usize> {
    let start = depth.checked_mul(bits as usize)?;
    if start + bits as usize > 64 {
        return None;
    }
    let shifted = hash << start;
    usize::try_from(shifted >> (64 - bits)).ok()
}

/// Width of the hex slot prefix: the hex digits of `fanout - 1` (2 for 256).
pub fn prefix_len(fanout: usize) -> usize {
    format!("{:X}", fanout.saturating_sub(1)).len()
}

/// Builds a sharded directory of `entries` (any order) and returns its root as a directory link target.
pub fn build(
    store: &dyn BlockStore,
    options: &ImportOptions,
    dir: &std::path::Path,
    entries: Vec<Entry>,
) -> Result<(cid::Cid, u64), ImportError> {
    let hashed = entries
        .into_iter()
        .map(|e| (murmur3_x64_64(e.name.as_bytes()), e))
        .collect();
    shard(store, options, dir, hashed, 0)
}

fn shard(
    store: &dyn BlockStore,
    options: &ImportOptions,
    dir: &std::path::Path,
    mut entries: Vec<(u64, Entry)>,
    depth: usize,
) -> Result<(cid::Cid, u64), ImportError> {
    let fanout = options.hamt_fanout;
    let bits = fanout.trailing_zeros();
    let pad = prefix_len(fanout);
    let mut slotted = Vec::with_capacity(entries.len());
    for (hash, e) in entries.drain(..) {
        let Some(s) = slot(hash, depth, bits) else {
            return Err(ImportError::HashCollision {
                dir: dir.to_owned(),
                name: e.name,
            });
        };
        slotted.push((s, hash, e));
    }
    // Stable by slot; names within a slot keep no meaningful order (they go to a child shard).
    slotted.sort_by_key(|(s, _, _)| *s);
    let mut bitfield = vec![0u8; fanout.div_ceil(8)];
    let mut links = Vec::new();
    let mut child_tsizes = 0u64;
    let mut rest = slotted.as_slice();
    while let Some(&(s, _, _)) = rest.first() {
        let n = rest.iter().take_while(|(t, _, _)| *t == s).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let last = bitfield.len() - 1 - s / 8;
        bitfield[last] |= 1 << (s % 8);
        let prefix = format!("{s:0pad$X}");
        if let [(_, _, e)] = group {
            links.push(PbLink {
                hash: e.cid,
                name: Some(format!("{prefix}{}", e.name)),
                tsize: Some(e.tsize),
            });
            child_tsizes += e.tsize;
        } else {
            let sub = group.iter().map(|(_, h, e)| (*h, e.clone())).collect();
            let (cid, tsize) = shard(store, options, dir, sub, depth + 1)?;
            links.push(PbLink {
                hash: cid,
                name: Some(prefix),
                tsize: Some(tsize),
            });
            child_tsizes += tsize;
        }
    }
    let first = bitfield
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bitfield.len());
    let mut data = UnixfsData::new(DataType::HamtShard);
    if first < bitfield.len() {
        data.data = Some(Bytes::copy_from_slice(&bitfield[first..]));
    }
    data.hash_type = Some(HASH_MURMUR3);
    data.fanout = Some(fanout as u64);
    let bytes = Bytes::from(
        PbNode {
            links,
            data: Some(Bytes::from(data.encode())),
        }
        .encode(),
    );
    let tsize = bytes.len() as u64 + child_tsizes;
    let block = Block::new(DAG_PB, bytes, options.cid_version == 0);
    store.put(&block).map_err(ImportError::Store)?;
    Ok((*block.cid(), tsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Reference values of MurmurHash3_x64_128 (seed 0), first half, as spaolacci/murmur3's Sum64.
        assert_eq!(murmur3_x64_64(b""), 0);
        assert_eq!(murmur3_x64_64(b"hello"), 0xcbd8_a7b3_41bd_9b02);
        assert_eq!(
            murmur3_x64_64(b"The quick brown fox jumps over the lazy dog"),
            0xe34b_bc7b_bc07_1b6c
        );
    }

    #[test]
    fn slots_read_the_hash_from_the_top() {
        let h = 0xab_cd_00_00_00_00_00_01u64;
        assert_eq!(slot(h, 0, 8), Some(0xab));
        assert_eq!(slot(h, 1, 8), Some(0xcd));
        assert_eq!(slot(h, 7, 8), Some(0x01));
        assert_eq!(slot(h, 8, 8), None);
        assert_eq!(slot(h, 0, 4), Some(0xa));
        assert_eq!(slot(h, 1, 4), Some(0xb));
        assert_eq!(prefix_len(256), 2);
        assert_eq!(prefix_len(16), 1);
    }
}
