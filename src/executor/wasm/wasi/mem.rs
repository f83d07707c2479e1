//! The guest's linear memory, as WASI calls see it: every pointer and length is checked against
//! the memory's size, and a bad one is `EFAULT` for the guest, never a host panic.
//!
//! Values are little-endian and unaligned accesses are allowed (wasm memory has no alignment
//! faults, and wasi-libc never passes misaligned structs anyway).

use super::Errno;

/// Most iovecs one `fd_read`/`fd_write` call may pass, as Linux's `IOV_MAX`: the list is copied
/// to the host, so its length must be bounded by more than the memory size.
pub(super) const MAX_IOVS: u32 = 1024;

/// One call's view of the guest memory.
pub(super) struct Mem<'a>(pub(super) &'a mut [u8]);

// === impl Mem ===

impl<'a> Mem<'a> {
    /// The byte range `ptr..ptr+len`, checked.
    fn range(&self, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, Errno> {
        let start = ptr as usize;
        let end = start.checked_add(len as usize).ok_or(Errno::Fault)?;
        if end > self.0.len() {
            return Err(Errno::Fault);
        }
        Ok(start..end)
    }

    /// `len` bytes at `ptr`.
    pub(super) fn bytes(&self, ptr: u32, len: u32) -> Result<&[u8], Errno> {
        let range = self.range(ptr, len)?;
        Ok(&self.0[range])
    }

    /// `len` writable bytes at `ptr`.
    pub(super) fn bytes_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
        let range = self.range(ptr, len)?;
        Ok(&mut self.0[range])
    }

    /// A UTF-8 string (a path); `EILSEQ` if it is not UTF-8, as wasi-common.
    pub(super) fn str(&self, ptr: u32, len: u32) -> Result<&str, Errno> {
        std::str::from_utf8(self.bytes(ptr, len)?).map_err(|_| Errno::Ilseq)
    }

    /// Copies `data` to `ptr`.
    pub(super) fn write(&mut self, ptr: u32, data: &[u8]) -> Result<(), Errno> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::Fault)?;
        self.bytes_mut(ptr, len)?.copy_from_slice(data);
        Ok(())
    }

    pub(super) fn write_u32(&mut self, ptr: u32, value: u32) -> Result<(), Errno> {
        self.write(ptr, &value.to_le_bytes())
    }

    pub(super) fn write_u64(&mut self, ptr: u32, value: u64) -> Result<(), Errno> {
        self.write(ptr, &value.to_le_bytes())
    }

    /// Writes a count that the guest reads as a `size` (u32); sizes here never exceed the memory.
    pub(super) fn write_size(&mut self, ptr: u32, value: usize) -> Result<(), Errno> {
        self.write_u32(ptr, u32::try_from(value).map_err(|_| Errno::Overflow)?)
    }

    /// The `(buf, len)` pairs of an iovec list, each checked to lie inside the memory.
    pub(super) fn iovecs(&self, ptr: u32, count: u32) -> Result<Vec<(u32, u32)>, Errno> {
        if count > MAX_IOVS {
            return Err(Errno::Inval);
        }
        let raw = self.bytes(ptr, count * 8)?;
        let mut list = Vec::with_capacity(count as usize);
        for pair in raw.chunks_exact(8) {
            let buf = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let len = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            self.range(buf, len)?;
            list.push((buf, len));
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_is_efault_never_a_panic() {
        let mut data = vec![0u8; 64];
        let mut mem = Mem(&mut data);
        assert_eq!(mem.bytes(60, 4).unwrap().len(), 4);
        assert_eq!(mem.bytes(61, 4).unwrap_err(), Errno::Fault);
        assert_eq!(mem.bytes(u32::MAX, 2).unwrap_err(), Errno::Fault);
        assert_eq!(mem.write_u64(60, 1).unwrap_err(), Errno::Fault);
        assert_eq!(mem.bytes_mut(u32::MAX - 1, 4).unwrap_err(), Errno::Fault);
        // An iovec inside memory that points outside it.
        mem.write_u32(0, 32).unwrap();
        mem.write_u32(4, 33).unwrap();
        assert_eq!(mem.iovecs(0, 1).unwrap_err(), Errno::Fault);
        assert_eq!(mem.iovecs(0, MAX_IOVS + 1).unwrap_err(), Errno::Inval);
        mem.write_u32(4, 32).unwrap();
        assert_eq!(mem.iovecs(0, 1).unwrap(), vec![(32, 32)]);
        mem.write(8, &[0xff, 0xfe]).unwrap();
        assert_eq!(mem.str(8, 2).unwrap_err(), Errno::Ilseq);
    }
}
