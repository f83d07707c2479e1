//! Route attributes (`struct rtattr`: u16 length including the 4-byte header, u16 type, payload padded to
//! 4 bytes), in host byte order like the rest of netlink.

use netlink_packet_core::DecodeError;

const HEADER: usize = 4;

/// Bytes an attribute with `payload` bytes takes, padding included.
pub(crate) fn len(payload: usize) -> usize {
    (HEADER + payload + 3) & !3
}

/// Writes one attribute at the start of `buf` and returns the bytes it took.
pub(crate) fn emit(buf: &mut [u8], kind: u16, payload: &[u8]) -> usize {
    let total = len(payload.len());
    let declared = u16::try_from(HEADER + payload.len()).expect("a route attribute fits in 64 KiB");
    buf[..2].copy_from_slice(&declared.to_ne_bytes());
    buf[2..4].copy_from_slice(&kind.to_ne_bytes());
    buf[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    buf[HEADER + payload.len()..total].fill(0);
    total
}

/// The attributes in `buf`, as (type without the nested/byte-order bits, payload).
pub(crate) fn parse(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let declared = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if declared < HEADER || declared > buf.len() {
            return Err(DecodeError::from(format!(
                "route attribute {kind} declares {declared} bytes, {} left",
                buf.len()
            )));
        }
        out.push((kind, &buf[HEADER..declared]));
        buf = &buf[len(declared - HEADER).min(buf.len())..];
    }
    Ok(out)
}

/// An attribute type of a message: how it is written and read.
pub(crate) trait Attribute: Sized {
    /// Its type and payload.
    fn payload(&self) -> (u16, Vec<u8>);
    fn parse(kind: u16, payload: &[u8]) -> Result<Self, DecodeError>;
}

/// Bytes `attrs` take, padding included.
pub(crate) fn len_all<A: Attribute>(attrs: &[A]) -> usize {
    attrs.iter().map(|a| len(a.payload().1.len())).sum()
}

/// Writes `attrs` at the start of `buf`.
pub(crate) fn emit_all<A: Attribute>(buf: &mut [u8], attrs: &[A]) {
    let mut at = 0;
    for attr in attrs {
        let (kind, payload) = attr.payload();
        at += emit(&mut buf[at..], kind, &payload);
    }
}

/// The attributes in `buf`, typed.
pub(crate) fn parse_all<A: Attribute>(buf: &[u8]) -> Result<Vec<A>, DecodeError> {
    parse(buf)?
        .into_iter()
        .map(|(kind, payload)| A::parse(kind, payload))
        .collect()
}

/// A NUL-terminated string attribute's payload.
pub(crate) fn c_string(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// A string attribute's text, up to its first NUL.
pub(crate) fn string(payload: &[u8]) -> Result<String, DecodeError> {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    Ok(String::from_utf8(payload[..end].to_vec())?)
}
