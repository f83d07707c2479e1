//! The guest's stdout and stderr: host files with a size cap.
//!
//! Output past the cap is dropped, and the stream remembers that it was. The guest's write still
//! reports every byte as written: a program that checks `write`'s result would otherwise fail
//! or loop on a full disk it cannot see, and the run would end differently only because it was
//! chatty. Writes go straight to the file, unbuffered, so nothing is lost when the guest traps.

use std::any::Any;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wasmi_wasi::wasi_common::file::FileType;
use wasmi_wasi::wasi_common::{Error, WasiFile};

/// One capped output stream.
pub(super) struct CappedOutput {
    /// The file and the bytes written to it so far. A mutex because `WasiFile` writes take
    /// `&self`; only the run's own worker thread ever locks it.
    sink: Mutex<Sink>,
    /// Bytes the file may hold.
    cap: u64,
    /// Set once output was dropped; shared with the worker, which reports it in the outcome.
    truncated: Arc<AtomicBool>,
}

/// The file behind a [`CappedOutput`].
struct Sink {
    /// The host file, created empty for this run.
    file: File,
    /// Bytes written so far, never more than the cap.
    written: u64,
}

// === impl CappedOutput ===

impl CappedOutput {
    /// Creates (or empties) `path`; `truncated` is set when output past `cap` is dropped.
    pub(super) fn create(path: &Path, cap: u64, truncated: Arc<AtomicBool>) -> io::Result<Self> {
        Ok(CappedOutput {
            sink: Mutex::new(Sink {
                file: File::create(path)?,
                written: 0,
            }),
            cap,
            truncated,
        })
    }
}

#[async_trait]
impl WasiFile for CappedOutput {
    fn as_any(&self) -> &dyn Any {
        self
    }

    async fn get_filetype(&self) -> Result<FileType, Error> {
        // A pipe, as wasi-common reports captured output: not a tty, so libc buffers fully.
        Ok(FileType::Pipe)
    }

    async fn write_vectored<'a>(&self, bufs: &[io::IoSlice<'a>]) -> Result<u64, Error> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        // A poisoned lock only means an earlier write panicked; the file is still usable.
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = 0u64;
        for buf in bufs {
            let room = self.cap.saturating_sub(sink.written);
            if room == 0 {
                break;
            }
            let take = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
            sink.file.write_all(&buf[..take])?;
            sink.written += take as u64;
            kept += take as u64;
        }
        if kept < total {
            self.truncated.store(true, Ordering::Relaxed);
        }
        Ok(total)
    }
}
