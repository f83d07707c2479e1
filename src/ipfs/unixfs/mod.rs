//! UnixFS import: files, directories and symlinks into blocks whose CIDs are exactly Kubo's.
//!
//! Layout of this module:
//! - [`chunker`]: fixed-size chunks (boxo's `size-262144` splitter).
//! - [`file`]: the balanced file DAG, streamed with one pending link list per tree level.
//! - [`dir`]: plain directories and the sharding decision; [`hamt`]: sharded directories.
//! - [`export`]: the way back: `cat` and `get` from any [`BlockSource`](crate::ipfs::BlockSource).
//!
//! Compatibility target: Kubo's `ipfs add` defaults (checked against Kubo 0.22 / boxo 0.11 in
//! `tests/e2e/ipfs_cids.rs`): CIDv0, dag-pb leaves holding UnixFS `File` data, 256 KiB chunks, 174 links per
//! node, HAMT sharding at an estimated 256 KiB, fanout 256. `cid_version: 1` implies raw leaves, as in Kubo.
//!
//! Memory: a file needs one chunk per hashing thread plus `depth × max_links` links, whatever its size; a
//! directory needs its own entry list (as in Kubo), never its children's.
//!
//! Speed: hashing is the cost. Regular files of more than one chunk hash their leaves on a few worker
//! threads that each read their own chunks ([`positional`]); other inputs (stdin) are read ahead by the
//! caller's thread and handed to the workers round robin. Either way the leaves reach the tree builder in
//! file order, so the DAG is the same as the sequential one. With `--only-hash` no leaf block is built: its
//! framing and data are hashed as one stream.

pub mod chunker;
pub mod dir;
pub mod export;
pub mod file;
pub mod hamt;
mod positional;

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use cid::Cid;

use self::chunker::Chunker;
use self::dir::Entry;
use self::file::{Child, FileBuilder};
use super::{BlockStore, BlockStoreError};

/// The largest chunk boxo accepts (`helpers.BlockSizeLimit`, 1 MiB).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024;

/// How to import; the defaults are Kubo's `ipfs add` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// 0 (Kubo's default) or 1. Only dag-pb nodes can be CIDv0; raw leaves are always CIDv1.
    pub cid_version: u64,
    /// Leaves as raw blocks instead of dag-pb `File` nodes (Kubo: on by default with `--cid-version 1`).
    pub raw_leaves: bool,
    /// Chunk size in bytes (Kubo: 262144).
    pub chunk_size: usize,
    /// Links per file node (Kubo: 174).
    pub max_links: usize,
    /// A directory is sharded once its estimated size reaches this many bytes (Kubo: 256 KiB; 0 = never).
    pub hamt_threshold: usize,
    /// Slots per shard (Kubo: 256; a power of two).
    pub hamt_fanout: usize,
    /// Include entries whose name starts with `.` (Kubo's `--hidden`; off by default in its CLI).
    pub hidden: bool,
    /// Threads hashing leaves of a large file (0 = one per CPU, at most 4).
    pub threads: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            cid_version: 0,
            raw_leaves: false,
            chunk_size: 256 * 1024,
            max_links: 174,
            hamt_threshold: 256 * 1024,
            hamt_fanout: 256,
            hidden: false,
            threads: 0,
        }
    }
}

impl ImportOptions {
    /// Kubo's options for a CID version: v1 brings raw leaves unless told otherwise.
    pub fn for_cid_version(cid_version: u64) -> Self {
        ImportOptions {
            cid_version,
            raw_leaves: cid_version == 1,
            ..ImportOptions::default()
        }
    }

    fn validate(&self) -> Result<(), ImportError> {
        let bad = |m: String| Err(ImportError::Options(m));
        if self.cid_version > 1 {
            return bad(format!(
                "unknown CID version {} (use 0 or 1)",
                self.cid_version
            ));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return bad(format!(
                "chunk size {} is outside 1..={MAX_CHUNK_SIZE} bytes",
                self.chunk_size
            ));
        }
        if self.max_links < 2 {
            return bad(format!("max links {} must be at least 2", self.max_links));
        }
        if !self.hamt_fanout.is_power_of_two() || !(8..=256).contains(&self.hamt_fanout) {
            return bad(format!(
                "HAMT fanout {} must be a power of two from 8 to 256",
                self.hamt_fanout
            ));
        }
        Ok(())
    }

    fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }
}

/// What an import produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportedRoot {
    /// The root CID.
    pub cid: Cid,
    /// Cumulative size of the DAG (what a parent link's Tsize would say).
    pub size: u64,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the input failed.
    #[error("cannot read {path:?}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A name on disk is not UTF-8; UnixFS names are strings.
    #[error(
        "the name of {path:?} is not valid UTF-8, which UnixFS cannot store; rename it (e.g. with `convmv`) and add again"
    )]
    NotUtf8 {
        /// The entry.
        path: PathBuf,
    },
    /// A FIFO, socket or device: nothing UnixFS can hold.
    #[error(
        "{path:?} is a {kind}, which UnixFS cannot hold; remove it from the tree or add the files one by one"
    )]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Two names in one directory share their whole 64-bit hash, which a HAMT cannot place (as in Kubo).
    #[error(
        "cannot shard directory {dir:?}: the name {name:?} collides with another on the whole 64-bit hash; rename one"
    )]
    HashCollision {
        /// The directory.
        dir: PathBuf,
        /// One of the names.
        name: String,
    },
    /// The options make no sense.
    #[error("invalid import options: {0}")]
    Options(String),
    /// The block store refused a block.
    #[error("storing a block failed")]
    Store(#[source] BlockStoreError),
    /// A hashing thread panicked (a bug); the import is incomplete.
    #[error("a hashing thread of the importer died; the import is incomplete")]
    Worker,
}

/// Told about progress, for progress bars and `added <cid> <path>` lines.
pub trait ImportObserver {
    /// `n` more file bytes were read.
    fn bytes(&mut self, _n: u64) {}
    /// An entry is done: `path` is relative to the imported path's parent (`dir/sub/file`, `dir`), or the
    /// file name for a single file.
    fn added(&mut self, _path: &str, _root: &ImportedRoot) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl ImportObserver for NoObserver {}

/// Imports a file, directory (recursively) or symlink at `path`. A file is not wrapped in a directory.
pub fn import_path(
    store: &dyn BlockStore,
    path: &Path,
    options: &ImportOptions,
) -> Result<ImportedRoot, ImportError> {
    import_path_observed(store, path, options, &mut NoObserver)
}

/// [`import_path`] that reports progress to `observer`.
pub fn import_path_observed(
    store: &dyn BlockStore,
    path: &Path,
    options: &ImportOptions,
    observer: &mut dyn ImportObserver,
) -> Result<ImportedRoot, ImportError> {
    options.validate()?;
    // The root's own name only labels the output lines; a path like `.` or `/` has none, so fall back
    // to the path as given, as Kubo does.
    let label = match path.file_name() {
        Some(n) => utf8_name(path, n)?.to_owned(),
        None => path.to_string_lossy().into_owned(),
    };
    let mut importer = Importer {
        store,
        options,
        observer,
    };
    importer.entry(path, &label)
}

/// Imports one file's bytes from a reader (no name, not wrapped): `cat file | cod ipfs add`.
pub fn import_file(
    store: &dyn BlockStore,
    reader: impl Read,
    options: &ImportOptions,
) -> Result<ImportedRoot, ImportError> {
    options.validate()?;
    file_from_reader(
        store,
        reader,
        options,
        Path::new("<stdin>"),
        &mut NoObserver,
    )
}

struct Importer<'a> {
    store: &'a dyn BlockStore,
    options: &'a ImportOptions,
    observer: &'a mut dyn ImportObserver,
}

impl Importer<'_> {
    /// Imports whatever is at `path`; `label` is its output path (`dir/sub/name`).
    fn entry(&mut self, path: &Path, label: &str) -> Result<ImportedRoot, ImportError> {
        let read = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::symlink_metadata(path).map_err(read)?;
        let kind = meta.file_type();
        let root = if kind.is_symlink() {
            let target = fs::read_link(path).map_err(read)?;
            let (cid, size) = dir::symlink(
                self.store,
                self.options,
                target.as_os_str().as_bytes().to_vec(),
            )?;
            ImportedRoot { cid, size }
        } else if kind.is_file() {
            let file = fs::File::open(path).map_err(read)?;
            regular_file(self.store, file, self.options, path, self.observer)?
        } else if kind.is_dir() {
            return self.directory(path, label);
        } else {
            let kind = if kind.is_fifo() {
                "named pipe"
            } else if kind.is_socket() {
                "socket"
            } else if kind.is_block_device() {
                "block device"
            } else {
                "character device"
            };
            return Err(ImportError::Unsupported {
                path: path.to_owned(),
                kind,
            });
        };
        self.observer.added(label, &root);
        Ok(root)
    }

    fn directory(&mut self, path: &Path, label: &str) -> Result<ImportedRoot, ImportError> {
        let read = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        let mut names = Vec::new();
        for item in fs::read_dir(path).map_err(read)? {
            let item = item.map_err(read)?;
            let os_name = item.file_name();
            let name = utf8_name(&item.path(), &os_name)?.to_owned();
            if !self.options.hidden && name.starts_with('.') {
                continue;
            }
            names.push(name);
        }
        // Kubo walks entries in name order; the order shows in the output lines only, not in the CIDs.
        names.sort_unstable();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let child_path = path.join(&name);
            let child_label = format!("{label}/{name}");
            let root = self.entry(&child_path, &child_label)?;
            entries.push(Entry {
                name,
                cid: root.cid,
                tsize: root.size,
            });
        }
        let (cid, size) = dir::build(self.store, self.options, path, entries)?;
        let root = ImportedRoot { cid, size };
        self.observer.added(label, &root);
        Ok(root)
    }
}

fn utf8_name<'n>(path: &Path, name: &'n std::ffi::OsStr) -> Result<&'n str, ImportError> {
    name.to_str().ok_or_else(|| ImportError::NotUtf8 {
        path: path.to_owned(),
    })
}

/// A regular file: past one chunk, its leaves are hashed by workers reading their own chunks
/// ([`positional`]); the length only picks the way, the end is where a read comes back short.
fn regular_file(
    store: &dyn BlockStore,
    file: fs::File,
    options: &ImportOptions,
    path: &Path,
    observer: &mut dyn ImportObserver,
) -> Result<ImportedRoot, ImportError> {
    let len = file
        .metadata()
        .map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })?
        .len();
    let workers = options.worker_threads();
    if workers <= 1 || len <= options.chunk_size as u64 {
        return file_from_reader(store, file, options, path, observer);
    }
    let mut builder = FileBuilder::new(store, options);
    positional::leaves(store, options, workers, &file, &mut builder, path, observer)?;
    Ok(root_of(builder.finish()?))
}

/// Chunks, hashes and links one file. The first chunk decides: a file of one chunk is done on this thread;
/// a longer one gets hashing workers.
fn file_from_reader(
    store: &dyn BlockStore,
    reader: impl Read,
    options: &ImportOptions,
    path: &Path,
    observer: &mut dyn ImportObserver,
) -> Result<ImportedRoot, ImportError> {
    let read = |source| ImportError::Read {
        path: path.to_owned(),
        source,
    };
    let mut chunker = Chunker::new(reader, options.chunk_size);
    let mut builder = FileBuilder::new(store, options);
    let Some(first) = chunker.next_chunk().map_err(read)? else {
        let root = builder.finish()?;
        return Ok(root_of(root));
    };
    observer.bytes(first.len() as u64);
    let Some(second) = chunker.next_chunk().map_err(read)? else {
        builder.push_chunk(first)?;
        return Ok(root_of(builder.finish()?));
    };
    observer.bytes(second.len() as u64);
    let workers = options.worker_threads();
    if workers <= 1 {
        builder.push_chunk(first)?;
        builder.push_chunk(second)?;
        while let Some(chunk) = chunker.next_chunk().map_err(read)? {
            observer.bytes(chunk.len() as u64);
            builder.push_chunk(chunk)?;
        }
        return Ok(root_of(builder.finish()?));
    }
    parallel_leaves(
        store,
        options,
        workers,
        [first, second],
        &mut chunker,
        &mut builder,
        path,
        observer,
    )?;
    Ok(root_of(builder.finish()?))
}

fn root_of(child: Child) -> ImportedRoot {
    ImportedRoot {
        cid: child.cid,
        size: child.tsize,
    }
}

/// Chunks in flight per worker: enough to keep it busy while the reader refills, few enough that memory
/// stays at a handful of chunks.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// Reads chunks on this thread and hands chunk i to worker i mod n; results are taken back in the same
/// order, so leaves reach the builder in file order without a reorder buffer.
#[allow(clippy::too_many_arguments)]
fn parallel_leaves<R: Read>(
    store: &dyn BlockStore,
    options: &ImportOptions,
    workers: usize,
    first: [Vec<u8>; 2],
    chunker: &mut Chunker<R>,
    builder: &mut FileBuilder<'_>,
    path: &Path,
    observer: &mut dyn ImportObserver,
) -> Result<(), ImportError> {
    std::thread::scope(|scope| {
        let mut to_workers = Vec::with_capacity(workers);
        let mut from_workers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT_PER_WORKER);
            let (rtx, rrx) = mpsc::sync_channel::<Result<Child, ImportError>>(IN_FLIGHT_PER_WORKER);
            scope.spawn(move || {
                for chunk in rx {
                    if rtx.send(file::put_leaf(store, options, chunk)).is_err() {
                        break;
                    }
                }
            });
            to_workers.push(tx);
            from_workers.push(rrx);
        }
        let mut sent = 0usize;
        let mut received = 0usize;
        let mut pending = first.into_iter();
        let mut eof = false;
        // Dropping the senders on any early return ends the workers; the scope then joins them.
        loop {
            while !eof && sent - received < workers * IN_FLIGHT_PER_WORKER {
                let chunk = match pending.next() {
                    Some(c) => c,
                    None => match chunker.next_chunk() {
                        Ok(Some(c)) => {
                            observer.bytes(c.len() as u64);
                            c
                        }
                        Ok(None) => {
                            eof = true;
                            break;
                        }
                        Err(source) => {
                            return Err(ImportError::Read {
                                path: path.to_owned(),
                                source,
                            });
                        }
                    },
                };
                if to_workers[sent % workers].send(chunk).is_err() {
                    break;
                }
                sent += 1;
            }
            if received == sent {
                return Ok(());
            }
            let leaf = from_workers[received % workers]
                .recv()
                .map_err(|_| ImportError::Worker)??;
            received += 1;
            builder.push_leaf(leaf)?;
        }
    })
}

#[cfg(test)]
mod tests;
