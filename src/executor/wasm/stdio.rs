//! The guest's stdout and stderr: host files with a size cap.
//!
//! Output past the cap is dropped, and the stream remembers that it was. The guest's write still
//! reports every byte as written: a program that checks `write`'s result would otherwise fail
//! or loop on a full disk it cannot see, and the run would end differently only because it was
//! chatty. Writes go straight to the file, unbuffered, so nothing is lost when the guest traps.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One capped output stream.
pub(super) struct CappedOutput {
    /// The host file, created empty for this run.
    file: File,
    /// Bytes written so far, never more than the cap.
    written: u64,
    /// Bytes the file may hold.
    cap: u64,
    /// Set once output was dropped; shared with the worker, which reports it in the outcome.
    truncated: Arc<AtomicBool>,
}

// === impl CappedOutput ===

impl CappedOutput {
    /// Creates (or empties) `path`; `truncated` is set when output past `cap` is dropped.
    pub(super) fn create(path: &Path, cap: u64, truncated: Arc<AtomicBool>) -> io::Result<Self> {
        Ok(CappedOutput {
            file: File::create(path)?,
            written: 0,
            cap,
            truncated,
        })
    }

    /// Writes what fits under the cap of `bufs`, in order; returns the whole length, as if all
    /// of it was written.
    pub(super) fn write(&mut self, bufs: &[&[u8]]) -> io::Result<u64> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let mut kept = 0u64;
        for buf in bufs {
            let room = self.cap.saturating_sub(self.written);
            if room == 0 {
                break;
            }
            let take = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
            self.file.write_all(&buf[..take])?;
            self.written += take as u64;
            kept += take as u64;
        }
        if kept < total {
            self.truncated.store(true, Ordering::Relaxed);
        }
        Ok(total)
    }
}
