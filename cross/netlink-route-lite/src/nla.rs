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
