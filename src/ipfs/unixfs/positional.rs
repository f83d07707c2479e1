//! The leaves of a regular file, hashed by threads that each read their own chunks with `pread`.
//!
//! With the fixed-size chunker, chunk i of a regular file is the `chunk_size` bytes at offset
//! i × `chunk_size`: the boundaries are known before anything is read. So no reader thread has to feed the
//! hashers (on a two-core machine it took CPU from them, and handed every chunk over through a channel):
//! each thread claims the next chunk index, reads that chunk with one positional read into a buffer it
//! keeps, and hashes it. The caller's thread is one of them: between its own chunks it takes the leaves
//! the others sent and gives them to the tree builder in file order, so the DAG is the sequential one and
//! no thread sits idle waiting to be woken for every leaf.
//!
//! The file's length is not trusted (it may change while it is added): as with the sequential chunker, the
//! file ends at the first chunk that reads short, and nothing after it is used.
//!
//! Memory: one chunk buffer per thread, plus the leaves that finished ahead of the one the builder waits
//! for. No chunk is claimed more than [`WINDOW`] past that one, so a descheduled thread cannot make the
//! reorder buffer grow with the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use super::file::{Child, FileBuilder, put_leaf_from};
use super::{ImportError, ImportObserver, ImportOptions};
use crate::ipfs::BlockStore;

/// How far (in chunks) a worker may run ahead of the first leaf the builder still waits for. Leaves are a
/// hundred bytes each; this only bounds the reorder buffer, it is not meant to be reached.
const WINDOW: u64 = 1024;

/// What a worker made of one chunk index.
enum Slot {
    /// A leaf of `len` file bytes (less than a chunk: the file's last).
    Leaf { child: Child, len: usize },
    /// The index is past the end of the file.
    End,
}

/// How far the builder got, and whether the workers should stop.
struct Progress {
    /// Leaves the builder took, in file order.
    taken: u64,
    /// Set at the end of the file, on an error, or when the builder returns.
    stop: bool,
    /// Workers blocked on the window, so the builder wakes nobody (no syscall) when none waits.
    waiting: usize,
}

struct Shared {
    next: AtomicU64,
    progress: Mutex<Progress>,
    moved: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        // Each critical section is a few field updates that cannot panic half-way.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the next chunk index, waiting while it is a window past the builder; `None` = stop.
    fn claim(&self) -> Option<u64> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let mut p = self.lock();
        while !p.stop && index >= p.taken + WINDOW {
            p.waiting += 1;
            p = self.moved.wait(p).unwrap_or_else(|e| e.into_inner());
            p.waiting -= 1;
        }
        (!p.stop).then_some(index)
    }

    fn taken(&self, taken: u64) {
        let mut p = self.lock();
        p.taken = taken;
        if p.waiting > 0 {
            self.moved.notify_all();
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.moved.notify_all();
    }
}

/// Stops the workers however the scope is left (an error, a panic), so none waits on the window forever.
struct StopOnDrop<'a>(&'a Shared);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Hashes every chunk of `file` on `threads` threads (this one included) and feeds the leaves to
/// `builder` in file order.
pub fn leaves(
    store: &dyn BlockStore,
    options: &ImportOptions,
    threads: usize,
    file: &File,
    builder: &mut FileBuilder<'_>,
    path: &Path,
    observer: &mut dyn ImportObserver,
) -> Result<(), ImportError> {
    let shared = Shared {
        next: AtomicU64::new(0),
        progress: Mutex::new(Progress {
            taken: 0,
            stop: false,
            waiting: 0,
        }),
        moved: Condvar::new(),
    };
    let hasher = Hasher {
        store,
        options,
        file,
        path,
    };
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&shared);
        let (tx, rx) = mpsc::channel::<(u64, Result<Slot, ImportError>)>();
        for _ in 1..threads {
            let tx = tx.clone();
            let (shared, hasher) = (&shared, &hasher);
            scope.spawn(move || {
                let _stop_on_panic = PanicStops(shared);
                let mut buf = ChunkBuf::new(options.chunk_size);
                while let Some(index) = shared.claim() {
                    let slot = hasher.slot(&mut buf, index);
                    let last = hasher.is_last(&slot);
                    if tx.send((index, slot)).is_err() || last {
                        // Later indexes are past the end (or not wanted); whoever holds one finds out by
                        // reading it, so this thread can go.
                        break;
                    }
                }
            });
        }
        // Only the workers hold senders: when they are all gone, `rx` ends.
        drop(tx);
        let mut order = InOrder {
            shared: &shared,
            chunk_size: options.chunk_size,
            early: BTreeMap::new(),
            wanted: 0,
            done: false,
            builder,
            observer,
        };
        let mut buf = ChunkBuf::new(options.chunk_size);
        loop {
            while let Ok((index, slot)) = rx.try_recv() {
                order.put(index, slot)?;
            }
            if order.done {
                return Ok(());
            }
            let index = shared.next.fetch_add(1, Ordering::Relaxed);
            // This thread is the one the window waits for: past it, take the others' leaves until it moves.
            while !order.done && index >= order.wanted + WINDOW {
                let Ok((i, slot)) = rx.recv() else { break };
                order.put(i, slot)?;
            }
            if order.done {
                return Ok(());
            }
            let slot = hasher.slot(&mut buf, index);
            let last = hasher.is_last(&slot);
            order.put(index, slot)?;
            if last {
                break;
            }
        }
        // This thread reached the end; the leaves before it are still coming.
        while !order.done {
            let Ok((index, slot)) = rx.recv() else {
                // Every worker left before the leaves up to the end arrived: one of them died.
                return Err(ImportError::Worker);
            };
            order.put(index, slot)?;
        }
        Ok(())
    })
}

/// Reads and hashes one chunk (any thread).
struct Hasher<'a> {
    store: &'a dyn BlockStore,
    options: &'a ImportOptions,
    file: &'a File,
    path: &'a Path,
}

impl Hasher<'_> {
    fn slot(&self, buf: &mut ChunkBuf, index: u64) -> Result<Slot, ImportError> {
        let chunk = buf
            .read(self.file, index)
            .map_err(|source| ImportError::Read {
                path: self.path.to_owned(),
                source,
            })?;
        if chunk.is_empty() {
            return Ok(Slot::End);
        }
        let child = put_leaf_from(self.store, self.options, chunk)?;
        Ok(Slot::Leaf {
            child,
            len: chunk.len(),
        })
    }

    /// Whether nothing after this slot belongs to the file (or the import failed).
    fn is_last(&self, slot: &Result<Slot, ImportError>) -> bool {
        !matches!(slot, Ok(Slot::Leaf { len, .. }) if *len == self.options.chunk_size)
    }
}

/// Puts leaves that arrive in any order into the builder in file order.
struct InOrder<'s, 'b, 'o> {
    shared: &'s Shared,
    chunk_size: usize,
    early: BTreeMap<u64, Result<Slot, ImportError>>,
    /// The index of the next leaf the builder takes.
    wanted: u64,
    /// The builder has every leaf of the file.
    done: bool,
    builder: &'b mut FileBuilder<'o>,
    observer: &'b mut dyn ImportObserver,
}

impl InOrder<'_, '_, '_> {
    fn put(&mut self, index: u64, slot: Result<Slot, ImportError>) -> Result<(), ImportError> {
        if self.done {
            return Ok(());
        }
        self.early.insert(index, slot);
        let before = self.wanted;
        while let Some(slot) = self.early.remove(&self.wanted) {
            match slot? {
                Slot::End => self.done = true,
                Slot::Leaf { child, len } => {
                    self.observer.bytes(len as u64);
                    self.builder.push_leaf(child)?;
                    self.wanted += 1;
                    self.done = len < self.chunk_size;
                }
            }
            if self.done {
                self.shared.stop();
                return Ok(());
            }
        }
        if self.wanted != before {
            self.shared.taken(self.wanted);
        }
        Ok(())
    }
}

/// Where chunks are read to: a buffer that starts on a page boundary, as every chunk's file offset does.
/// The kernel copies page-cache pages to user memory with `rep movsb`, which on AMD Zen (the bench VM)
/// runs at about a quarter of its speed when the destination is not 32-byte aligned, and a `Vec` from
/// malloc is only 16-byte aligned: measured, 0.22 s against 0.05 s of system time per 512 MiB read.
struct ChunkBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

const PAGE: usize = 4096;

impl ChunkBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + PAGE];
        // Always possible for bytes; `min` keeps the slice in bounds whatever `align_offset` answers.
        let start = storage.as_ptr().align_offset(PAGE).min(PAGE);
        ChunkBuf {
            storage,
            start,
            len,
        }
    }

    /// Reads chunk `index`, filling the buffer unless the file ends first; returns the bytes read.
    fn read(&mut self, file: &File, index: u64) -> io::Result<&[u8]> {
        let buf = &mut self.storage[self.start..self.start + self.len];
        let offset = index * buf.len() as u64;
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(&buf[..filled])
    }
}

/// Stops the others when a worker panics, so none waits on the window for the leaf that will not come.
struct PanicStops<'a>(&'a Shared);
impl Drop for PanicStops<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_buffers_start_on_a_page_and_read_whole_chunks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 249) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        for len in [1, 100, 4096, 262_144] {
            let mut buf = ChunkBuf::new(len);
            let chunk = buf.read(&file, 1).expect("read");
            assert_eq!(chunk.as_ptr().align_offset(PAGE), 0, "chunk size {len}");
            let want = &data[len.min(data.len())..(2 * len).min(data.len())];
            assert_eq!(chunk, want, "chunk size {len}");
        }
    }
}
