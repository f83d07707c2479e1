//! CAR v1 (content-addressed archives): a DAG-CBOR header `{roots: [CID…], version: 1}` followed by
//! sections `varint(len) ‖ CID ‖ block`, each length-prefixed with a multiformats unsigned varint.
//!
//! The reader trusts nothing: header and section sizes are bounded before anything is allocated, and it
//! hands back raw `(CID, bytes)` pairs that the caller must still verify ([`Block::verified`]), because a CAR
//! is only as honest as whoever made it.

use std::io::{self, Read, Write};

use bytes::Bytes;
use cid::Cid;

use super::pb::{get_uvarint, put_uvarint};
use super::{Block, MAX_BLOCK_SIZE};

/// The largest header accepted: real headers hold a handful of roots (a few hundred bytes).
const MAX_HEADER: u64 = 64 * 1024;
/// DAG-CBOR's tag for CIDs.
const CID_TAG: u64 = 42;

/// A CAR that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// Reading failed.
    #[error("reading the CAR failed")]
    Io(#[from] io::Error),
    /// The bytes are not a CAR v1.
    #[error("not a valid CAR v1: {0}")]
    Malformed(String),
}

fn malformed(why: impl Into<String>) -> CarError {
    CarError::Malformed(why.into())
}

/// Writes a CAR v1 stream.
#[derive(Debug)]
pub struct CarWriter<W: Write> {
    out: W,
    scratch: Vec<u8>,
}

impl<W: Write> CarWriter<W> {
    /// Starts a CAR with these roots (written at once).
    pub fn new(mut out: W, roots: &[Cid]) -> io::Result<Self> {
        let header = encode_header(roots);
        let mut prefix = Vec::with_capacity(10);
        put_uvarint(&mut prefix, header.len() as u64);
        out.write_all(&prefix)?;
        out.write_all(&header)?;
        Ok(CarWriter {
            out,
            scratch: Vec::with_capacity(64),
        })
    }

    /// Appends one block.
    pub fn write(&mut self, cid: &Cid, data: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        let cid_bytes = cid.to_bytes();
        put_uvarint(&mut self.scratch, (cid_bytes.len() + data.len()) as u64);
        self.scratch.extend_from_slice(&cid_bytes);
        self.out.write_all(&self.scratch)?;
        self.out.write_all(data)
    }

    /// Appends a block.
    pub fn write_block(&mut self, block: &Block) -> io::Result<()> {
        self.write(block.cid(), block.data())
    }

    /// Flushes and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `{"roots": [tag42(0x00 ‖ cid)…], "version": 1}` in DAG-CBOR's canonical key order (shorter key first).
fn encode_header(roots: &[Cid]) -> Vec<u8> {
    let mut h = Vec::with_capacity(24 + roots.len() * 40);
    h.push(0xa2); // map(2)
    cbor_text(&mut h, "roots");
    cbor_head(&mut h, 4, roots.len() as u64);
    for root in roots {
        cbor_head(&mut h, 6, CID_TAG);
        let bytes = root.to_bytes();
        cbor_head(&mut h, 2, bytes.len() as u64 + 1);
        h.push(0x00); // the multibase "identity" prefix DAG-CBOR puts before binary CIDs
        h.extend_from_slice(&bytes);
    }
    cbor_text(&mut h, "version");
    h.push(0x01);
    h
}

fn cbor_head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    match v {
        0..=23 => out.push(m | v as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, v as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads a CAR v1 stream block by block.
#[derive(Debug)]
pub struct CarReader<R: Read> {
    input: R,
    roots: Vec<Cid>,
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, CarError> {
        let len = read_uvarint(&mut input)?.ok_or_else(|| malformed("empty input"))?;
        if len == 0 || len > MAX_HEADER {
            return Err(malformed(format!("header length {len} is out of range")));
        }
        let mut header = vec![0; len as usize];
        input.read_exact(&mut header)?;
        let roots = decode_header(&header)?;
        Ok(CarReader { input, roots })
    }

    /// The roots the header names.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next `(CID, bytes)` section, unverified; `None` at a clean end.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Bytes)>, CarError> {
        let Some(len) = read_uvarint(&mut self.input)? else {
            return Ok(None);
        };
        // A CID is at most a few dozen bytes; allow generous room on top of the largest block.
        if len == 0 || len > (MAX_BLOCK_SIZE + 1024) as u64 {
            return Err(malformed(format!("section length {len} is out of range")));
        }
        let mut section = vec![0; len as usize];
        self.input.read_exact(&mut section)?;
        let mut rest = &section[..];
        let cid = Cid::read_bytes(&mut rest).map_err(|e| malformed(format!("section CID: {e}")))?;
        let at = section.len() - rest.len();
        let data = Bytes::from(section).slice(at..);
        Ok(Some((cid, data)))
    }

    /// The next block, checked against its CID.
    pub fn next_verified(&mut self) -> Result<Option<Result<Block, super::BlockError>>, CarError> {
        Ok(self
            .next_block()?
            .map(|(cid, data)| Block::verified(cid, data)))
    }
}

/// A varint read byte by byte; `None` on EOF before the first byte (the clean end of a CAR).
fn read_uvarint(input: &mut impl Read) -> Result<Option<u64>, CarError> {
    let mut buf = [0u8; 10];
    for i in 0..buf.len() {
        let mut byte = [0u8; 1];
        match input.read(&mut byte) {
            Ok(0) if i == 0 => return Ok(None),
            Ok(0) => return Err(malformed("truncated varint")),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        buf[i] = byte[0];
        if byte[0] & 0x80 == 0 {
            let (v, _) = get_uvarint(&buf[..=i]).map_err(|e| malformed(e.to_string()))?;
            return Ok(Some(v));
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

fn decode_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    use minicbor::Decoder;
    let bad = |e: minicbor::decode::Error| malformed(format!("header: {e}"));
    let mut d = Decoder::new(bytes);
    let entries = d
        .map()
        .map_err(bad)?
        .ok_or_else(|| malformed("header map has indefinite length"))?;
    let mut roots = Vec::new();
    let mut version = None;
    for _ in 0..entries {
        match d.str().map_err(bad)? {
            "version" => version = Some(d.u64().map_err(bad)?),
            "roots" => {
                let n = d
                    .array()
                    .map_err(bad)?
                    .ok_or_else(|| malformed("roots has indefinite length"))?;
                for _ in 0..n {
                    let tag = d.tag().map_err(bad)?;
                    if tag.as_u64() != CID_TAG {
                        return Err(malformed("a root is not a CID (tag 42)"));
                    }
                    let b = d.bytes().map_err(bad)?;
                    let cid = match b.split_first() {
                        Some((0, cid)) => Cid::try_from(cid),
                        _ => return Err(malformed("a root CID lacks the 0x00 prefix")),
                    }
                    .map_err(|e| malformed(format!("root CID: {e}")))?;
                    roots.push(cid);
                }
            }
            _ => d.skip().map_err(bad)?,
        }
    }
    match version {
        Some(1) => Ok(roots),
        Some(v) => Err(malformed(format!(
            "version {v} is not supported (only CAR v1)"
        ))),
        None => Err(malformed("header has no version")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::{DAG_PB, RAW};

    fn blocks() -> Vec<Block> {
        vec![
            Block::new(RAW, Bytes::from_static(b"one"), false),
            Block::new(DAG_PB, Bytes::from_static(&[0x0a, 0x02, 0x08, 0x01]), true),
            Block::new(RAW, Bytes::new(), false),
        ]
    }

    #[test]
    fn round_trips_roots_and_blocks() {
        let blocks = blocks();
        let roots = [*blocks[1].cid(), *blocks[0].cid()];
        let mut w = CarWriter::new(Vec::new(), &roots).expect("header");
        for b in &blocks {
            w.write_block(b).expect("block");
        }
        let car = w.finish().expect("finish");
        let mut r = CarReader::new(&car[..]).expect("reader");
        assert_eq!(r.roots(), roots);
        let mut back = Vec::new();
        while let Some(b) = r.next_verified().expect("section") {
            back.push(b.expect("verified"));
        }
        assert_eq!(back, blocks);
    }

    #[test]
    fn header_matches_go_car() {
        // go-car's header for one CIDv0 root, as `ipfs dag export` writes it.
        let root: Cid = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
            .parse()
            .expect("cid");
        let h = encode_header(&[root]);
        assert_eq!(&h[..8], &[0xa2, 0x65, b'r', b'o', b'o', b't', b's', 0x81]);
        assert_eq!(&h[8..12], &[0xd8, 0x2a, 0x58, 0x23]);
        assert_eq!(&h[h.len() - 9..], b"\x67version\x01");
        assert_eq!(decode_header(&h).expect("decodes"), vec![root]);
    }

    #[test]
    fn hostile_cars_are_errors() {
        // Huge header length.
        let mut huge = Vec::new();
        put_uvarint(&mut huge, 1 << 40);
        assert!(matches!(
            CarReader::new(&huge[..]),
            Err(CarError::Malformed(_))
        ));
        // Version 2 header.
        let mut v2 = encode_header(&[]);
        let n = v2.len();
        v2[n - 1] = 0x02;
        let mut car = Vec::new();
        put_uvarint(&mut car, v2.len() as u64);
        car.extend_from_slice(&v2);
        assert!(CarReader::new(&car[..]).is_err());
        // A section that claims more than it has.
        let mut w = CarWriter::new(Vec::new(), &[]).expect("header");
        w.write_block(&blocks()[0]).expect("block");
        let mut car = w.finish().expect("finish");
        car.truncate(car.len() - 1);
        let mut r = CarReader::new(&car[..]).expect("header ok");
        assert!(r.next_block().is_err());
        // A block that lies about its CID.
        let b = &blocks()[0];
        let mut w = CarWriter::new(Vec::new(), &[]).expect("header");
        w.write(b.cid(), b"two").expect("block");
        let car = w.finish().expect("finish");
        let mut r = CarReader::new(&car[..]).expect("header ok");
        assert!(matches!(r.next_verified(), Ok(Some(Err(_)))));
    }
}
