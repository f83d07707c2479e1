//! Fixed-size chunking, as boxo's `size-N` splitter does it: every chunk is exactly `size` bytes except the
//! last, which is shorter (never empty, unless the whole input is empty).
//!
//! Short reads from the source (pipes, sockets) are filled up before a chunk is cut, as Go's `io.ReadFull`
//! does; cutting at every short read would change the CIDs.

use std::io::{self, Read};

/// Reads `size`-byte chunks from a reader, one at a time, so only one chunk is in memory.
#[derive(Debug)]
pub struct Chunker<R> {
    reader: R,
    size: usize,
    done: bool,
}

impl<R: Read> Chunker<R> {
    /// Chunks of `size` bytes (at least 1).
    pub fn new(reader: R, size: usize) -> Self {
        Chunker {
            reader,
            size: size.max(1),
            done: false,
        }
    }

    /// The next chunk, or `None` at the end. A chunk is a fresh `Vec` because it becomes a block's bytes.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        // `take` + `read_to_end` fills uninitialized capacity (no 256 KiB memset per chunk) and keeps reading
        // through short reads until the chunk is full or the input ends.
        let mut buf = Vec::with_capacity(self.size);
        let limit = self.size as u64;
        loop {
            match (&mut self.reader)
                .take(limit - buf.len() as u64)
                .read_to_end(&mut buf)
            {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if buf.len() < self.size {
            self.done = true;
            if buf.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 3 bytes per call, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn lens(data: &[u8], size: usize) -> Vec<usize> {
        let mut c = Chunker::new(Trickle(data), size);
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().expect("read") {
            out.push(chunk.len());
        }
        out
    }

    #[test]
    fn cuts_at_exact_boundaries_despite_short_reads() {
        assert_eq!(lens(&[], 4), Vec::<usize>::new());
        assert_eq!(lens(&[1], 4), vec![1]);
        assert_eq!(lens(&[0; 8], 4), vec![4, 4]);
        assert_eq!(lens(&[0; 9], 4), vec![4, 4, 1]);
        assert_eq!(lens(&[0; 11], 4), vec![4, 4, 3]);
    }
}
