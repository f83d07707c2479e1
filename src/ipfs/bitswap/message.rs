//! Bitswap's wire message (go-bitswap / boxo `message.proto`), encoded and decoded by hand with [`crate::ipfs::pb`]:
//!
//! ```text
//! Message { Wantlist wantlist = 1; repeated bytes blocks = 2 (1.0.0); repeated Block payload = 3;
//!           repeated BlockPresence blockPresences = 4; int32 pendingBytes = 5; }
//! Wantlist { repeated Entry entries = 1; bool full = 2; }
//! Entry { bytes block = 1 (CID); int32 priority = 2; bool cancel = 3; WantType wantType = 4 (Block=0|Have=1);
//!         bool sendDontHave = 5; }
//! Block { bytes prefix = 1 (CID version, codec, multihash code, digest length); bytes data = 2; }
//! BlockPresence { bytes cid = 1; BlockPresenceType type = 2 (Have=0|DontHave=1); }
//! ```
//!
//! On a stream every message is `uvarint(len) ‖ message` (msgio's varint framing), several per stream.
//! Decoding trusts nothing: a frame is bounded by [`MAX_MESSAGE_SIZE`] before it is read, and a payload
//! block's CID is recomputed from its bytes, so a block can only ever be filed under the CID it hashes to.

use bytes::Bytes;
use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ipfs::pb::{
    Field, Fields, LEN, PbError, get_uvarint, put_bytes_field, put_key, put_uvarint,
    put_varint_field,
};
use crate::ipfs::{Block, DAG_PB, IDENTITY, SHA2_256};

/// The largest frame read or written: boxo's `network.MessageSizeMax` (4 MiB). A block is at most 2 MiB, so
/// one always fits.
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// What a want asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WantType {
    /// The block itself.
    Block,
    /// Only whether the peer has it (bitswap 1.2.0).
    Have,
}

/// One wantlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The block wanted.
    pub cid: Cid,
    /// Higher is sooner; peers may ignore it.
    pub priority: i32,
    /// Withdraws an earlier want for this CID.
    pub cancel: bool,
    /// Block or have.
    pub want_type: WantType,
    /// Ask for an explicit DONT_HAVE instead of silence.
    pub send_dont_have: bool,
}

/// A block presence answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The peer has the block.
    Have,
    /// The peer does not.
    DontHave,
}

/// One bitswap message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Wantlist changes (or the whole list when `full`).
    pub wants: Vec<Entry>,
    /// Whether `wants` replaces the peer's whole wantlist.
    pub full: bool,
    /// Blocks, each filed under the CID its bytes hash to.
    pub blocks: Vec<Block>,
    /// HAVE / DONT_HAVE answers.
    pub presences: Vec<(Cid, Presence)>,
    /// Bytes the sender still has queued for us (informational).
    pub pending_bytes: i32,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The stream failed or ended inside a frame.
    #[error("reading a bitswap message failed")]
    Io(#[from] std::io::Error),
    /// A frame longer than [`MAX_MESSAGE_SIZE`].
    #[error("bitswap message of {0} bytes is over the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(u64),
    /// Bytes that are not a bitswap message.
    #[error("malformed bitswap message: {0}")]
    Malformed(&'static str),
}

impl From<PbError> for MessageError {
    fn from(e: PbError) -> Self {
        MessageError::Malformed(e.0)
    }
}

// === impl Message ===

impl Message {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.wants.is_empty() && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// Encodes the message (without the frame's length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self
                .blocks
                .iter()
                .map(|b| b.data().len() + 16)
                .sum::<usize>(),
        );
        if !self.wants.is_empty() || self.full {
            let mut list = Vec::new();
            for entry in &self.wants {
                let mut e = Vec::with_capacity(48);
                put_bytes_field(&mut e, 1, &entry.cid.to_bytes());
                // int32 as protobuf varint: negative values take 10 bytes (sign-extended), as in Go.
                put_varint_field(&mut e, 2, entry.priority as i64 as u64);
                if entry.cancel {
                    put_varint_field(&mut e, 3, 1);
                }
                if entry.want_type == WantType::Have {
                    put_varint_field(&mut e, 4, 1);
                }
                if entry.send_dont_have {
                    put_varint_field(&mut e, 5, 1);
                }
                put_bytes_field(&mut list, 1, &e);
            }
            if self.full {
                put_varint_field(&mut list, 2, 1);
            }
            put_bytes_field(&mut out, 1, &list);
        }
        for block in &self.blocks {
            let prefix = prefix_bytes(block.cid());
            let len = 1
                + uvar_len(prefix.len())
                + prefix.len()
                + 1
                + uvar_len(block.data().len())
                + block.data().len();
            put_key(&mut out, 3, LEN);
            put_uvarint(&mut out, len as u64);
            put_bytes_field(&mut out, 1, &prefix);
            put_bytes_field(&mut out, 2, block.data());
        }
        for (cid, presence) in &self.presences {
            let mut p = Vec::with_capacity(48);
            put_bytes_field(&mut p, 1, &cid.to_bytes());
            if *presence == Presence::DontHave {
                put_varint_field(&mut p, 2, 1);
            }
            put_bytes_field(&mut out, 4, &p);
        }
        if self.pending_bytes != 0 {
            put_varint_field(&mut out, 5, self.pending_bytes as i64 as u64);
        }
        out
    }

    /// Decodes a message. Payload blocks with a hash this node cannot compute are refused.
    pub fn decode(buf: &[u8]) -> Result<Message, MessageError> {
        let mut msg = Message::default();
        for field in Fields::new(buf) {
            match field? {
                (1, Field::Bytes(list)) => {
                    for field in Fields::new(list) {
                        match field? {
                            (1, Field::Bytes(e)) => msg.wants.push(decode_entry(e)?),
                            (2, Field::Varint(v)) => msg.full = v != 0,
                            _ => {}
                        }
                    }
                }
                // Bitswap 1.0.0 blocks: bare bytes, always CIDv0 (dag-pb, sha2-256).
                (2, Field::Bytes(data)) => msg.blocks.push(block_from(0, DAG_PB, SHA2_256, data)?),
                (3, Field::Bytes(b)) => {
                    let mut prefix = None;
                    let mut data: &[u8] = &[];
                    for field in Fields::new(b) {
                        match field? {
                            (1, Field::Bytes(p)) => prefix = Some(p),
                            (2, Field::Bytes(d)) => data = d,
                            _ => {}
                        }
                    }
                    let prefix = prefix.ok_or(MessageError::Malformed("block without a prefix"))?;
                    let (version, codec, mh) = parse_prefix(prefix)?;
                    msg.blocks.push(block_from(version, codec, mh, data)?);
                }
                (4, Field::Bytes(p)) => {
                    let mut cid = None;
                    let mut presence = Presence::Have;
                    for field in Fields::new(p) {
                        match field? {
                            (1, Field::Bytes(c)) => cid = Some(parse_cid(c)?),
                            (2, Field::Varint(1)) => presence = Presence::DontHave,
                            _ => {}
                        }
                    }
                    let cid = cid.ok_or(MessageError::Malformed("presence without a CID"))?;
                    msg.presences.push((cid, presence));
                }
                (5, Field::Varint(v)) => msg.pending_bytes = v as i32,
                _ => {}
            }
        }
        Ok(msg)
    }

    /// Reads one framed message; `Ok(None)` at a clean end of stream. Cancel-safety: none (a frame may be
    /// half-read); callers read a stream from one task.
    pub async fn read<R: AsyncRead + Unpin>(
        stream: &mut R,
    ) -> Result<Option<Message>, MessageError> {
        let mut prefix = [0u8; 10];
        let mut used = 0;
        let len = loop {
            if used == prefix.len() {
                return Err(MessageError::Malformed("frame length varint too long"));
            }
            let n = stream.read(&mut prefix[used..used + 1]).await?;
            if n == 0 {
                return if used == 0 {
                    Ok(None)
                } else {
                    Err(MessageError::Malformed(
                        "stream ended inside a frame length",
                    ))
                };
            }
            used += 1;
            if prefix[used - 1] & 0x80 == 0 {
                break get_uvarint(&prefix[..used])?.0;
            }
        };
        if len > MAX_MESSAGE_SIZE as u64 {
            return Err(MessageError::TooLarge(len));
        }
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await?;
        Message::decode(&buf).map(Some)
    }

    /// Writes the message as one frame and flushes (Kubo reads frame by frame).
    pub async fn write<W: AsyncWrite + Unpin>(&self, stream: &mut W) -> std::io::Result<()> {
        let body = self.encode();
        let mut frame = Vec::with_capacity(body.len() + 10);
        put_uvarint(&mut frame, body.len() as u64);
        frame.extend_from_slice(&body);
        stream.write_all(&frame).await?;
        stream.flush().await
    }

    /// The frame size this message will have, to cut batches under [`MAX_MESSAGE_SIZE`].
    pub fn block_cost(block: &Block) -> usize {
        block.data().len() + 64
    }
}

fn uvar_len(n: usize) -> usize {
    crate::ipfs::pb::uvarint_len(n as u64)
}

fn decode_entry(buf: &[u8]) -> Result<Entry, MessageError> {
    let mut entry = Entry {
        cid: Cid::default(),
        priority: 0,
        cancel: false,
        want_type: WantType::Block,
        send_dont_have: false,
    };
    let mut has_cid = false;
    for field in Fields::new(buf) {
        match field? {
            (1, Field::Bytes(c)) => {
                entry.cid = parse_cid(c)?;
                has_cid = true;
            }
            (2, Field::Varint(v)) => entry.priority = v as i32,
            (3, Field::Varint(v)) => entry.cancel = v != 0,
            (4, Field::Varint(v)) => {
                entry.want_type = if v == 1 {
                    WantType::Have
                } else {
                    WantType::Block
                }
            }
            (5, Field::Varint(v)) => entry.send_dont_have = v != 0,
            _ => {}
        }
    }
    if !has_cid {
        return Err(MessageError::Malformed("want without a CID"));
    }
    Ok(entry)
}

fn parse_cid(bytes: &[u8]) -> Result<Cid, MessageError> {
    Cid::try_from(bytes).map_err(|_| MessageError::Malformed("invalid CID"))
}

/// `uvarint(version) ‖ uvarint(codec) ‖ uvarint(multihash code) ‖ uvarint(digest length)`, go-cid's
/// `Prefix.Bytes()`.
pub(crate) fn prefix_bytes(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    put_uvarint(&mut out, cid.version() as u64);
    put_uvarint(&mut out, cid.codec());
    put_uvarint(&mut out, cid.hash().code());
    put_uvarint(&mut out, u64::from(cid.hash().size()));
    out
}

fn parse_prefix(buf: &[u8]) -> Result<(u64, u64, u64), MessageError> {
    let mut rest = buf;
    let mut next = || -> Result<u64, MessageError> {
        let (v, n) = get_uvarint(rest)?;
        rest = &rest[n..];
        Ok(v)
    };
    let version = next()?;
    let codec = next()?;
    let mh = next()?;
    let _len = next()?;
    Ok((version, codec, mh))
}

/// Hashes `data` as the prefix says and files it under the resulting CID.
fn block_from(version: u64, codec: u64, mh: u64, data: &[u8]) -> Result<Block, MessageError> {
    if data.len() > crate::ipfs::MAX_BLOCK_SIZE {
        return Err(MessageError::Malformed("block over the 2 MiB limit"));
    }
    let data = Bytes::copy_from_slice(data);
    match (version, mh) {
        (0, SHA2_256) if codec == DAG_PB => Ok(Block::new(DAG_PB, data, true)),
        (1, SHA2_256) => Ok(Block::new(codec, data, false)),
        (1, IDENTITY) => {
            let hash = cid::multihash::Multihash::<64>::wrap(IDENTITY, &data)
                .map_err(|_| MessageError::Malformed("identity block too long"))?;
            Ok(Block::verified(Cid::new_v1(codec, hash), data)
                .map_err(|_| MessageError::Malformed("identity block does not verify"))?)
        }
        _ => Err(MessageError::Malformed(
            "block with a CID version or hash this node cannot verify (only sha2-256)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::RAW;

    fn cid(s: &str) -> Cid {
        s.parse().expect("valid CID")
    }

    #[test]
    fn want_have_encodes_like_go_bitswap() {
        // "hello\n" added with Kubo's defaults: QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN.
        let c = cid("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN");
        let msg = Message {
            wants: vec![Entry {
                cid: c,
                priority: 1,
                cancel: false,
                want_type: WantType::Have,
                send_dont_have: true,
            }],
            ..Message::default()
        };
        // wantlist{entries{block=<34 bytes>, priority=1, wantType=Have, sendDontHave=true}} as protoc
        // writes it (fields in number order, defaults omitted).
        let mut expected = vec![0x0a, 0x2c, 0x0a, 0x2a, 0x0a, 0x22];
        expected.extend_from_slice(&c.to_bytes());
        expected.extend_from_slice(&[0x10, 0x01, 0x20, 0x01, 0x28, 0x01]);
        assert_eq!(msg.encode(), expected);
        assert_eq!(Message::decode(&expected).expect("decodes"), msg);
    }

    #[test]
    fn payload_blocks_carry_the_cid_prefix_and_round_trip() {
        let v0 = Block::new(
            DAG_PB,
            Bytes::from_static(&[0x0a, 0x04, 0x08, 0x02, 0x18, 0x00]),
            true,
        );
        let raw = Block::new(RAW, Bytes::from_static(b"raw leaf"), false);
        let msg = Message {
            blocks: vec![v0.clone(), raw.clone()],
            presences: vec![
                (*raw.cid(), Presence::DontHave),
                (*v0.cid(), Presence::Have),
            ],
            pending_bytes: 7,
            ..Message::default()
        };
        let bytes = msg.encode();
        // payload{prefix = 00 70 12 20 (v0, dag-pb, sha2-256, 32 bytes), data}.
        assert_eq!(
            &bytes[..8],
            &[0x1a, 0x0e, 0x0a, 0x04, 0x00, 0x70, 0x12, 0x20]
        );
        assert_eq!(Message::decode(&bytes).expect("decodes"), msg);
    }

    #[test]
    fn a_block_is_filed_under_the_cid_its_bytes_hash_to() {
        let real = Block::new(RAW, Bytes::from_static(b"real"), false);
        let mut msg = Message {
            blocks: vec![real],
            ..Message::default()
        }
        .encode();
        // Flip the last byte of the data: the block decodes, but under a different CID, so it can never
        // satisfy the want for the original.
        let last = msg.len() - 1;
        msg[last] ^= 1;
        let decoded = Message::decode(&msg).expect("decodes");
        assert_eq!(decoded.blocks[0].data().as_ref(), b"ream");
        assert_ne!(
            decoded.blocks[0].cid(),
            Block::new(RAW, Bytes::from_static(b"real"), false).cid()
        );
    }

    #[test]
    fn unverifiable_hashes_are_refused() {
        let mut msg = Vec::new();
        let mut block = Vec::new();
        put_bytes_field(&mut block, 1, &[0x01, 0x55, 0x13, 0x40]); // sha2-512
        put_bytes_field(&mut block, 2, b"x");
        put_bytes_field(&mut msg, 3, &block);
        assert!(matches!(
            Message::decode(&msg),
            Err(MessageError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_frames_are_refused() {
        let msg = Message {
            presences: vec![(
                cid("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"),
                Presence::Have,
            )],
            ..Message::default()
        };
        let mut buf = Vec::new();
        msg.write(&mut buf).await.expect("write");
        msg.write(&mut buf).await.expect("write");
        let mut reader = futures::io::Cursor::new(buf);
        assert_eq!(
            Message::read(&mut reader).await.expect("one"),
            Some(msg.clone())
        );
        assert_eq!(Message::read(&mut reader).await.expect("two"), Some(msg));
        assert!(Message::read(&mut reader).await.expect("end").is_none());

        let mut huge = Vec::new();
        put_uvarint(&mut huge, MAX_MESSAGE_SIZE as u64 + 1);
        let mut reader = futures::io::Cursor::new(huge);
        assert!(matches!(
            Message::read(&mut reader).await,
            Err(MessageError::TooLarge(_))
        ));
    }
}
