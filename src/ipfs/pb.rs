//! Protobuf wire primitives: varints, field keys and length-delimited fields. dag-pb and UnixFS are two small
//! proto2 messages whose byte-exact encoding decides every CID, so they are written by hand rather than
//! through a generator whose field order and packing we would then have to audit anyway.

/// Wire type of varint fields.
pub const VARINT: u8 = 0;
/// Wire type of 64-bit fields (skipped when decoding; dag-pb and UnixFS use none).
pub const FIXED64: u8 = 1;
/// Wire type of bytes, strings, sub-messages and packed repeated fields.
pub const LEN: u8 = 2;
/// Wire type of 32-bit fields (skipped when decoding).
pub const FIXED32: u8 = 5;

/// Bytes that do not parse as the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct PbError(pub &'static str);

/// Appends `v` as an unsigned LEB128 varint (also the multiformats `unsigned-varint`, used by CAR).
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The number of bytes [`put_uvarint`] writes for `v`.
pub fn uvarint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a varint from the front of `buf`, returning it and the bytes used. Refuses overlong encodings
/// (more than 10 bytes, or bits past 64).
pub fn get_uvarint(buf: &[u8]) -> Result<(u64, usize), PbError> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(PbError("varint overflows 64 bits"));
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(PbError("truncated varint"))
}

/// Appends a field key.
pub fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_uvarint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// Appends a varint field.
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, VARINT);
    put_uvarint(out, v);
}

/// Appends a length-delimited field.
pub fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One decoded field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// A varint value.
    Varint(u64),
    /// A length-delimited value.
    Bytes(&'a [u8]),
    /// A fixed-width value (not used by our messages; kept so unknown fields can be skipped).
    Fixed,
}

/// Iterates over the fields of one message: `(field number, value)`.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Fields of the message in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PbError> {
        if self.buf.len() < n {
            return Err(PbError("field runs past the end"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, PbError> {
        let (v, n) = get_uvarint(self.buf)?;
        self.buf = &self.buf[n..];
        Ok(v)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), PbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let number = u32::try_from(key >> 3).map_err(|_| PbError("field number too large"))?;
            if number == 0 {
                return Err(PbError("field number 0"));
            }
            let value = match (key & 7) as u8 {
                VARINT => Field::Varint(self.varint()?),
                LEN => {
                    let len = usize::try_from(self.varint()?)
                        .map_err(|_| PbError("length does not fit memory"))?;
                    Field::Bytes(self.take(len)?)
                }
                FIXED64 => {
                    self.take(8)?;
                    Field::Fixed
                }
                FIXED32 => {
                    self.take(4)?;
                    Field::Fixed
                }
                _ => return Err(PbError("unknown wire type")),
            };
            Ok((number, value))
        })();
        if field.is_err() {
            // Stop after the first error: the rest of the buffer has no defined meaning.
            self.buf = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v), "{v}");
            assert_eq!(get_uvarint(&out), Ok((v, out.len())));
        }
    }

    #[test]
    fn bad_varints_are_errors() {
        assert!(get_uvarint(&[0x80]).is_err());
        assert!(get_uvarint(&[0xff; 11]).is_err());
        assert!(
            get_uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).is_err()
        );
    }

    #[test]
    fn fields_decode_and_stop_at_garbage() {
        let mut msg = Vec::new();
        put_varint_field(&mut msg, 1, 2);
        put_bytes_field(&mut msg, 2, b"hi");
        let fields: Vec<_> = Fields::new(&msg).collect::<Result<_, _>>().expect("valid");
        assert_eq!(
            fields,
            vec![(1, Field::Varint(2)), (2, Field::Bytes(b"hi"))]
        );
        // A length running past the end.
        let bad = [0x12, 0x05, b'a'];
        let mut it = Fields::new(&bad);
        assert!(it.next().is_some_and(|f| f.is_err()));
        assert!(it.next().is_none());
    }
}
