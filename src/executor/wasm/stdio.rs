//! The guest's stdout and stderr: host files with a size cap.
//!
//! Output past the cap is dropped, and the stream remembers that it was. The guest's write still
//! reports every byte as written: a program that checks `write`'s result would otherwise fail
//! or loop on a full disk it cannot see, and the run would end differently only because it was
//! chatty. Writes go straight to the file, unbuffered, so nothing is lost when the guest traps.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::executor::STREAM_HEAD_BYTES;

/// What the run's owner learns of a stream: whether output was dropped, and the stream's first bytes (the
/// file's, since writes are appends), so the report needs no read of the file back.
#[derive(Debug, Default)]
pub(super) struct Tap {
    cut: AtomicBool,
    head: Mutex<Vec<u8>>,
}

impl Tap {
    /// Whether output past the cap was dropped.
    pub(super) fn cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// The first [`STREAM_HEAD_BYTES`] written (fewer if the stream was shorter).
    pub(super) fn take_head(&self) -> Vec<u8> {
        std::mem::take(&mut *self.head.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One capped output stream.
pub(super) struct CappedOutput {
    /// The host file, created empty for this run.
    file: File,
    /// Bytes written so far, never more than the cap.
    written: u64,
    /// Bytes the file may hold.
    cap: u64,
    /// Shared with the worker, which reports it in the outcome.
    tap: Arc<Tap>,
}

// === impl CappedOutput ===

impl CappedOutput {
    /// Creates (or empties) `path`; `tap` learns what is written.
    pub(super) fn create(path: &Path, cap: u64, tap: Arc<Tap>) -> io::Result<Self> {
        Ok(CappedOutput {
            file: crate::executor::open_stream(path)?,
            written: 0,
            cap,
            tap,
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
            if self.written < STREAM_HEAD_BYTES as u64 {
                let mut head = self.tap.head.lock().unwrap_or_else(|p| p.into_inner());
                let room = STREAM_HEAD_BYTES.saturating_sub(head.len());
                head.extend_from_slice(&buf[..take.min(room)]);
            }
            self.written += take as u64;
            kept += take as u64;
        }
        if kept < total {
            self.tap.cut.store(true, Ordering::Relaxed);
        }
        Ok(total)
    }
}
