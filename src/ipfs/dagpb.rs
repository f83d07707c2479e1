//! The dag-pb node and the UnixFS `Data` message it carries.
//!
//! Byte-exact with Kubo (boxo's merkledag and unixfs packages), because the bytes decide the CID:
//! - `PBNode`: links (field 2) come before data (field 1); each `PBLink` writes Hash (1), Name (2) and Tsize (3)
//!   in that order, and Kubo always writes Name and Tsize, even an empty name. [`PbLink::name`] and
//!   [`PbLink::tsize`] are options so a decoded node re-encodes to the bytes it came from.
//! - UnixFS `Data`: fields in number order, `blocksizes` unpacked (proto2 `repeated` without `packed`).
//!   Decoding accepts packed too, as the protobuf rules require.

use bytes::Bytes;
use cid::Cid;

use super::pb::{self, Field, Fields, PbError};

/// One link of a dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    /// The linked block.
    pub hash: Cid,
    /// The entry name (directories); `Some("")` for file chunks, as Kubo writes them.
    pub name: Option<String>,
    /// Cumulative size of the linked DAG: the block plus everything below it.
    pub tsize: Option<u64>,
}

/// A dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PbNode {
    /// Links, in the order they are stored (sorted by name for plain directories).
    pub links: Vec<PbLink>,
    /// The payload; for UnixFS, an encoded [`UnixfsData`].
    pub data: Option<Bytes>,
}

impl PbNode {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        let mut link = Vec::new();
        for l in &self.links {
            link.clear();
            pb::put_bytes_field(&mut link, 1, &l.hash.to_bytes());
            if let Some(name) = &l.name {
                pb::put_bytes_field(&mut link, 2, name.as_bytes());
            }
            if let Some(tsize) = l.tsize {
                pb::put_varint_field(&mut link, 3, tsize);
            }
            pb::put_bytes_field(&mut out, 2, &link);
        }
        if let Some(data) = &self.data {
            pb::put_bytes_field(&mut out, 1, data);
        }
        out
    }

    fn encoded_len_hint(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len() + 8) + self.links.len() * 48
    }

    /// Parses a node. `block` is the whole block, so the data field can be shared without copying.
    pub fn decode(block: &Bytes) -> Result<PbNode, PbError> {
        let mut node = PbNode::default();
        for field in Fields::new(block) {
            match field? {
                (1, Field::Bytes(d)) => node.data = Some(block.slice_ref(d)),
                (2, Field::Bytes(l)) => node.links.push(decode_link(l)?),
                (1 | 2, _) => return Err(PbError("PBNode field has the wrong wire type")),
                _ => return Err(PbError("PBNode has an unknown field")),
            }
        }
        Ok(node)
    }
}

fn decode_link(buf: &[u8]) -> Result<PbLink, PbError> {
    let mut hash = None;
    let mut name = None;
    let mut tsize = None;
    for field in Fields::new(buf) {
        match field? {
            (1, Field::Bytes(h)) => {
                hash = Some(Cid::try_from(h).map_err(|_| PbError("PBLink hash is not a CID"))?)
            }
            (2, Field::Bytes(n)) => {
                name = Some(
                    String::from_utf8(n.to_vec())
                        .map_err(|_| PbError("PBLink name is not UTF-8"))?,
                )
            }
            (3, Field::Varint(t)) => tsize = Some(t),
            _ => return Err(PbError("PBLink has an unknown or mistyped field")),
        }
    }
    Ok(PbLink {
        hash: hash.ok_or(PbError("PBLink without a hash"))?,
        name,
        tsize,
    })
}

/// UnixFS node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A leaf of raw bytes (legacy; Kubo writes `File` leaves or raw blocks).
    Raw,
    /// A plain directory.
    Directory,
    /// A file or a chunk of one.
    File,
    /// Unused metadata type.
    Metadata,
    /// A symbolic link; `Data` is the target.
    Symlink,
    /// One node of a sharded (HAMT) directory.
    HamtShard,
}

impl DataType {
    fn code(self) -> u64 {
        match self {
            DataType::Raw => 0,
            DataType::Directory => 1,
            DataType::File => 2,
            DataType::Metadata => 3,
            DataType::Symlink => 4,
            DataType::HamtShard => 5,
        }
    }

    fn from_code(code: u64) -> Result<Self, PbError> {
        Ok(match code {
            0 => DataType::Raw,
            1 => DataType::Directory,
            2 => DataType::File,
            3 => DataType::Metadata,
            4 => DataType::Symlink,
            5 => DataType::HamtShard,
            _ => return Err(PbError("unknown UnixFS type")),
        })
    }
}

/// The UnixFS `Data` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixfsData {
    /// What the node is.
    pub kind: DataType,
    /// Inline bytes: file content, a symlink target, or a HAMT node's bitfield.
    pub data: Option<Bytes>,
    /// Total bytes of a file (or chunk).
    pub filesize: Option<u64>,
    /// Bytes under each link of a file node, in link order.
    pub blocksizes: Vec<u64>,
    /// HAMT hash function (murmur3-x64-64 = 0x22).
    pub hash_type: Option<u64>,
    /// HAMT fanout (256 in Kubo).
    pub fanout: Option<u64>,
    /// Unix permission bits, when the importer was asked to keep them.
    pub mode: Option<u32>,
}

impl UnixfsData {
    /// A node of `kind` with nothing else set.
    pub fn new(kind: DataType) -> Self {
        UnixfsData {
            kind,
            data: None,
            filesize: None,
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
            mode: None,
        }
    }

    /// The encoding Kubo writes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.data.as_ref().map_or(0, Bytes::len) + 16 + self.blocksizes.len() * 4,
        );
        pb::put_varint_field(&mut out, 1, self.kind.code());
        if let Some(d) = &self.data {
            pb::put_bytes_field(&mut out, 2, d);
        }
        if let Some(s) = self.filesize {
            pb::put_varint_field(&mut out, 3, s);
        }
        for &b in &self.blocksizes {
            pb::put_varint_field(&mut out, 4, b);
        }
        if let Some(h) = self.hash_type {
            pb::put_varint_field(&mut out, 5, h);
        }
        if let Some(f) = self.fanout {
            pb::put_varint_field(&mut out, 6, f);
        }
        if let Some(m) = self.mode {
            pb::put_varint_field(&mut out, 7, u64::from(m));
        }
        out
    }

    /// Parses the message. `buf` is shared so inline data is not copied.
    pub fn decode(buf: &Bytes) -> Result<UnixfsData, PbError> {
        let mut kind = None;
        let mut d = UnixfsData::new(DataType::Raw);
        for field in Fields::new(buf) {
            match field? {
                (1, Field::Varint(t)) => kind = Some(DataType::from_code(t)?),
                (2, Field::Bytes(b)) => d.data = Some(buf.slice_ref(b)),
                (3, Field::Varint(s)) => d.filesize = Some(s),
                (4, Field::Varint(b)) => d.blocksizes.push(b),
                (4, Field::Bytes(mut packed)) => {
                    while !packed.is_empty() {
                        let (v, n) = pb::get_uvarint(packed)?;
                        d.blocksizes.push(v);
                        packed = &packed[n..];
                    }
                }
                (5, Field::Varint(h)) => d.hash_type = Some(h),
                (6, Field::Varint(f)) => d.fanout = Some(f),
                (7, Field::Varint(m)) => {
                    d.mode = Some(u32::try_from(m).map_err(|_| PbError("UnixFS mode too large"))?)
                }
                // mtime (8) and anything newer: not needed to read content.
                (n, _) if n >= 8 => {}
                _ => return Err(PbError("UnixFS Data field has the wrong wire type")),
            }
        }
        d.kind = kind.ok_or(PbError("UnixFS Data without a Type"))?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::{Block, DAG_PB};

    fn unixfs_node(data: UnixfsData, links: Vec<PbLink>) -> PbNode {
        PbNode {
            links,
            data: Some(Bytes::from(data.encode())),
        }
    }

    #[test]
    fn empty_directory_matches_kubo() {
        // `ipfs add -r` of an empty directory.
        let node = unixfs_node(UnixfsData::new(DataType::Directory), vec![]);
        assert_eq!(node.encode(), [0x0a, 0x02, 0x08, 0x01]);
        let block = Block::new(DAG_PB, Bytes::from(node.encode()), true);
        assert_eq!(
            block.cid().to_string(),
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
        );
    }

    #[test]
    fn small_file_matches_kubo() {
        // `echo hello | ipfs add`: one leaf holding "hello\n".
        let mut d = UnixfsData::new(DataType::File);
        d.data = Some(Bytes::from_static(b"hello\n"));
        d.filesize = Some(6);
        let block = Block::new(DAG_PB, Bytes::from(unixfs_node(d, vec![]).encode()), true);
        assert_eq!(
            block.cid().to_string(),
            "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
        );
    }

    #[test]
    fn nodes_round_trip() {
        let leaf = Block::new(DAG_PB, Bytes::from_static(b"x"), true);
        let mut d = UnixfsData::new(DataType::File);
        d.filesize = Some(10);
        d.blocksizes = vec![4, 6];
        let node = unixfs_node(
            d.clone(),
            vec![
                PbLink {
                    hash: *leaf.cid(),
                    name: Some(String::new()),
                    tsize: Some(14),
                },
                PbLink {
                    hash: *leaf.cid(),
                    name: None,
                    tsize: None,
                },
            ],
        );
        let bytes = Bytes::from(node.encode());
        let back = PbNode::decode(&bytes).expect("decodes");
        assert_eq!(back, node);
        assert_eq!(back.encode(), bytes.as_ref());
        let data = UnixfsData::decode(back.data.as_ref().expect("data")).expect("unixfs");
        assert_eq!(data, d);
    }

    #[test]
    fn packed_blocksizes_are_read() {
        let buf = Bytes::from_static(&[0x08, 0x02, 0x22, 0x02, 0x04, 0x06]);
        let d = UnixfsData::decode(&buf).expect("decodes");
        assert_eq!(d.blocksizes, vec![4, 6]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &[0xff][..],
            &[0x12, 0x03, 0x0a, 0x01],
            &[0x1a, 0x00],
            &[0x0a],
        ] {
            assert!(
                PbNode::decode(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(UnixfsData::decode(&Bytes::from_static(&[0x08, 0x09])).is_err());
        assert!(UnixfsData::decode(&Bytes::from_static(&[0x18, 0x01])).is_err());
    }
}
