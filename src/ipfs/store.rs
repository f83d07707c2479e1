//! The node's block store on disk: blocks as files, indexed in LMDB, under a disk budget with LRU eviction
//! of unpinned blocks. `cod serve` and the `cod ipfs` CLI may use the same data dir at once.
//!
//! Layout under `<data_dir>/ipfs/`:
//! - `blocks/<xy>/<key>`: one file per block. `key` is the block's multihash written as a base32 CIDv1-raw
//!   string, so a block reached as CIDv0 dag-pb and as CIDv1 is stored once; `xy` are the key's next-to-last
//!   two characters (Kubo flatfs' sharding: evenly spread, ≤ 1024 directories).
//! - `tmp/`: blocks being written.
//! - `index/`: an LMDB environment of its own: `ipfs.blocks` (key → size, last use), `ipfs.lru`
//!   (`<last use ms:020>/<key>`, the eviction order), `ipfs.pins` (root CID → pin record), `ipfs.pinned`
//!   (`<key>/<root>`: which pins hold a block) and `ipfs.pin_blocks` (`<root>/<key>`, for unpinning), and
//!   `ipfs.meta` (bytes in use). Its own environment keeps the CLI out of the node's job state.
//! - `lock`: an advisory lock (flock) taken only around commits and eviction, so one process never
//!   deletes a block file between another's existence check and its commit.
//!
//! Why files and not LMDB values: blocks are up to 2 MiB (256 KiB typically). As LMDB values they would be
//! overflow pages that need contiguous free runs (fragmentation, slow page search), the map (and so the
//! address space, ~1 GiB usable on a 32-bit board) would have to cover the whole budget, and the file never
//! shrinks after eviction. Files cost one inode each but stream straight from the page cache, and eviction
//! gives the space back. LMDB keeps what must be transactional: what is present, pinned, and recent.
//!
//! Crash safety: a block is written to `tmp/`, checked against its CID (the [`Block`] type guarantees it),
//! and renamed into place; before its index record is committed the file is made durable (fsync, or one
//! syncfs for a whole import), and [`BlockStore::get`]
//! serves only indexed blocks whose file has the recorded size. A crash leaves at worst an unindexed file,
//! which a later write of the same block replaces and [`DiskBlockStore::sweep`] removes.
//!
//! An import goes through a [`Batch`]: its blocks are written as they come and indexed (and pinned) in one
//! transaction at the end, so an import is either fully indexed and pinned or not at all, and eviction
//! (which only sees indexed blocks) never takes blocks of an import that is still running.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cid::Cid;
use serde::{Deserialize, Serialize};

use super::dagpb::PbNode;
use super::{Block, BlockStore, BlockStoreError, DAG_PB, IDENTITY, RAW};
use crate::store::{Reader, Store, StoreError, Table};

/// Block store settings (the `Ipfs` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStoreConfig {
    /// Disk budget for block files, in bytes. Unpinned blocks are evicted, least recently used first, to
    /// stay under it; pinned ones are never evicted, and a write that pinned blocks alone would push over
    /// it fails.
    pub budget: u64,
}

impl Default for DiskStoreConfig {
    fn default() -> Self {
        // Small boards have 8–32 GB of flash shared with images and results.
        DiskStoreConfig { budget: 1 << 30 }
    }
}

/// What the store holds for a block.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BlockRecord {
    size: u64,
    used_ms: u64,
}

/// A pinned root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// What was pinned (a path, a job id): for people listing pins.
    pub name: String,
    /// Distinct blocks of its DAG.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When, in Unix milliseconds.
    pub pinned_ms: u64,
}

/// Usage figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Indexed blocks.
    pub blocks: u64,
    /// Their bytes.
    pub used: u64,
    /// The budget.
    pub budget: u64,
    /// Pinned roots.
    pub pins: u64,
}

#[derive(Debug, Clone, Copy)]
struct Tables {
    blocks: Table<BlockRecord>,
    lru: Table<()>,
    pins: Table<PinRecord>,
    pinned: Table<()>,
    pin_blocks: Table<()>,
    meta: Table<u64>,
}

const USED: &str = "used";

/// Blocks on disk under a budget. Open it once per process per data dir (LMDB's rule); share it by `Arc`.
#[derive(Debug)]
pub struct DiskBlockStore {
    root: PathBuf,
    blocks_dir: PathBuf,
    tmp_dir: PathBuf,
    index: Store,
    t: Tables,
    config: DiskStoreConfig,
    /// Last-use times of blocks read since the last write, flushed with the next commit: a read must not
    /// cost a durable write (one fsync per block would make `cat` crawl), and losing some recency on a
    /// crash only changes eviction order.
    touched: Mutex<HashMap<String, u64>>,
    /// Names of tmp files; unique within the process (the pid makes them unique across processes).
    tmp_seq: std::sync::atomic::AtomicU64,
}

fn backend(op: &'static str) -> impl Fn(StoreError) -> BlockStoreError {
    move |e| BlockStoreError::Backend {
        op,
        reason: crate::errors::chain(&e),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl Fn(io::Error) -> BlockStoreError + use<> {
    let path = path.to_owned();
    move |e| BlockStoreError::Backend {
        op,
        reason: format!("{}: {e}", path.display()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The store key of a block: its multihash as a base32 CIDv1-raw string (codec-independent).
pub fn block_key(cid: &Cid) -> String {
    Cid::new_v1(RAW, *cid.hash()).to_string()
}

fn lru_key(used_ms: u64, key: &str) -> String {
    format!("{used_ms:020}/{key}")
}

// === impl DiskBlockStore ===

impl DiskBlockStore {
    /// Opens (creating) the store in `<data_dir>/ipfs/`.
    pub fn open(data_dir: &Path, config: DiskStoreConfig) -> Result<Self, BlockStoreError> {
        let root = data_dir.join("ipfs");
        let blocks_dir = root.join("blocks");
        let tmp_dir = root.join("tmp");
        for d in [&blocks_dir, &tmp_dir] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        // The index holds small records only; 256 MiB of map is about a million blocks and fits a 32-bit
        // address space beside everything else.
        let index = Store::open(
            &root.join("index"),
            &crate::store::Config {
                map_size: 256 << 20,
            },
        )
        .map_err(backend("open index"))?;
        let e = backend("open index table");
        let t = Tables {
            blocks: index.table("ipfs.blocks").map_err(&e)?,
            lru: index.table("ipfs.lru").map_err(&e)?,
            pins: index.table("ipfs.pins").map_err(&e)?,
            pinned: index.table("ipfs.pinned").map_err(&e)?,
            pin_blocks: index.table("ipfs.pin_blocks").map_err(&e)?,
            meta: index.table("ipfs.meta").map_err(&e)?,
        };
        Ok(DiskBlockStore {
            root,
            blocks_dir,
            tmp_dir,
            index,
            t,
            config,
            touched: Mutex::default(),
            tmp_seq: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn file(&self, key: &str) -> PathBuf {
        let n = key.len();
        self.blocks_dir.join(&key[n - 3..n - 1]).join(key)
    }

    /// Takes the cross-process commit lock (released on drop).
    fn lock(&self) -> Result<fs::File, BlockStoreError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(file)
    }

    /// Writes a block's file under its final name (through `tmp/` and a rename, so the name never shows a
    /// partial file to a reader of the directory); durability comes from [`DiskBlockStore::sync_new`].
    fn write_file(&self, key: &str, data: &[u8]) -> Result<(), BlockStoreError> {
        // (Returns nothing: whether a copy existed was decided by the caller from the index.)
        let dest = self.file(key);
        let seq = self
            .tmp_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.tmp_dir.join(format!("{}-{seq}", std::process::id()));
        // Not synced here: the commit syncs every new block at once before indexing any of them.
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            drop(f);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, &dest)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("write block", &dest)(e)
        })
    }

    /// Makes freshly written block files durable before they are indexed. A few blocks (a fetched block)
    /// get an fsync each plus one of their directories; an import gets one `syncfs`, which costs one
    /// journal flush instead of one per block (measured: ~20x faster for 256 KiB blocks on this VM's disk).
    fn sync_new(&self, new: &[(String, u64)]) -> Result<(), BlockStoreError> {
        const FSYNC_EACH_UP_TO: usize = 8;
        if new.is_empty() {
            return Ok(());
        }
        if new.len() <= FSYNC_EACH_UP_TO {
            let mut dirs = HashSet::new();
            for (key, _) in new {
                let path = self.file(key);
                fs::File::open(&path)
                    .and_then(|f| f.sync_data())
                    .map_err(io_err("sync block", &path))?;
                if let Some(parent) = path.parent() {
                    dirs.insert(parent.to_owned());
                }
            }
            for dir in dirs {
                fs::File::open(&dir)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err("sync directory", &dir))?;
            }
            return Ok(());
        }
        let dir = fs::File::open(&self.blocks_dir).map_err(io_err("open", &self.blocks_dir))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
            .map_err(|e| io_err("syncfs", &self.blocks_dir)(io::Error::from(e)))
    }

    fn record(&self, key: &str) -> Result<Option<BlockRecord>, BlockStoreError> {
        let (t, key) = (self.t, key.to_owned());
        self.index
            .read_sync(move |txn| txn.get(t.blocks, &key))
            .map_err(backend("read index"))
    }

    /// Starts an import: blocks put through the batch are indexed (and pinned) together by
    /// [`Batch::commit`]; dropped uncommitted, they stay unindexed files for [`DiskBlockStore::sweep`].
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            state: Mutex::default(),
        }
    }

    /// Bytes in use, the budget, and counts.
    pub fn stats(&self) -> Result<StoreStats, BlockStoreError> {
        let t = self.t;
        let (blocks, used, pins) = self
            .index
            .read_sync(move |txn| {
                Ok((
                    txn.count(t.blocks)?,
                    txn.get(t.meta, USED)?.unwrap_or(0),
                    txn.count(t.pins)?,
                ))
            })
            .map_err(backend("read index"))?;
        Ok(StoreStats {
            blocks,
            used,
            budget: self.config.budget,
            pins,
        })
    }

    /// Every pin, by root CID string.
    pub fn pins(&self) -> Result<Vec<(String, PinRecord)>, BlockStoreError> {
        let t = self.t;
        self.index
            .read_sync(move |txn| txn.all(t.pins))
            .map_err(backend("read index"))
    }

    /// Pins a DAG that is already in the store (e.g. fetched block by block), walking it from `root`.
    /// Fails if any block is missing: a pin promises the whole DAG.
    pub fn pin_dag(&self, root: &Cid, name: &str) -> Result<PinRecord, BlockStoreError> {
        let mut seen = HashSet::new();
        let mut stack = vec![*root];
        while let Some(cid) = stack.pop() {
            if cid.hash().code() == IDENTITY || !seen.insert(block_key(&cid)) {
                continue;
            }
            // Raw blocks have no links; only dag-pb nodes need reading.
            if cid.codec() == DAG_PB {
                let data = self.get(&cid)?.ok_or_else(|| BlockStoreError::Backend {
                    op: "pin",
                    reason: format!("block {cid} of the DAG under {root} is not in the store"),
                })?;
                let node = PbNode::decode(&data).map_err(|e| BlockStoreError::Backend {
                    op: "pin",
                    reason: format!("block {cid} is not dag-pb: {e}"),
                })?;
                stack.extend(node.links.iter().map(|l| l.hash));
            } else if !self.has(&cid)? {
                return Err(BlockStoreError::Backend {
                    op: "pin",
                    reason: format!("block {cid} of the DAG under {root} is not in the store"),
                });
            }
        }
        let _lock = self.lock()?;
        self.commit_txn(Vec::new(), seen, Some((*root, name.to_owned())))
    }

    /// Removes a pin; its blocks become evictable unless another pin holds them. Returns whether it existed.
    pub fn unpin(&self, root: &Cid) -> Result<bool, BlockStoreError> {
        let t = self.t;
        let root = root.to_string();
        let _lock = self.lock()?;
        self.index
            .write_sync(move |txn| {
                if txn.get(t.pins, &root)?.is_none() {
                    return Ok(false);
                }
                txn.delete(t.pins, &root)?;
                let prefix = format!("{root}/");
                for (k, ()) in txn.prefix(t.pin_blocks, &prefix)? {
                    let key = &k[prefix.len()..];
                    txn.delete(t.pinned, &format!("{key}/{root}"))?;
                    txn.delete(t.pin_blocks, &k)?;
                }
                Ok(true)
            })
            .map_err(backend("unpin"))
    }

    /// Indexes `new` blocks (whose files are in place), refreshes the last use of `all`, optionally pins
    /// `all` under a root, then evicts down to the budget. Call with the lock held.
    fn commit_txn(
        &self,
        new: Vec<(String, u64)>,
        all: HashSet<String>,
        pin: Option<(Cid, String)>,
    ) -> Result<PinRecord, BlockStoreError> {
        // Every block this commit vouches for must still have its file: another process may have evicted
        // a block this batch found present, between that check and now.
        for key in all.iter() {
            let path = self.file(key);
            if !path.exists() {
                return Err(BlockStoreError::Backend {
                    op: "commit",
                    reason: format!(
                        "block {key} was evicted by a concurrent garbage collection; run the import again"
                    ),
                });
            }
        }
        self.sync_new(&new)?;
        let touched =
            std::mem::take(&mut *self.touched.lock().unwrap_or_else(PoisonError::into_inner));
        let t = self.t;
        let now = now_ms();
        let budget = self.config.budget;
        let (record, doomed) = self
            .index
            .write_sync(move |txn| {
                let mut used: u64 = txn.get(t.meta, USED)?.unwrap_or(0);
                let set_used = |txn: &mut crate::store::WriteTxn<'_, '_>, key: &str, ms: u64| {
                    if let Some(mut rec) = txn.get(t.blocks, key)? {
                        txn.delete(t.lru, &lru_key(rec.used_ms, key))?;
                        rec.used_ms = rec.used_ms.max(ms);
                        txn.put(t.lru, &lru_key(rec.used_ms, key), &())?;
                        txn.put(t.blocks, key, &rec)?;
                    }
                    Ok::<_, StoreError>(())
                };
                for (key, ms) in &touched {
                    set_used(txn, key, *ms)?;
                }
                for (key, size) in &new {
                    if txn.get(t.blocks, key)?.is_none() {
                        txn.put(
                            t.blocks,
                            key,
                            &BlockRecord {
                                size: *size,
                                used_ms: now,
                            },
                        )?;
                        txn.put(t.lru, &lru_key(now, key), &())?;
                        used += size;
                    }
                }
                let mut record = PinRecord {
                    name: String::new(),
                    blocks: 0,
                    bytes: 0,
                    pinned_ms: now,
                };
                for key in &all {
                    set_used(txn, key, now)?;
                }
                if let Some((root, name)) = &pin {
                    let root = root.to_string();
                    record.name = name.clone();
                    for key in &all {
                        txn.put(t.pinned, &format!("{key}/{root}"), &())?;
                        txn.put(t.pin_blocks, &format!("{root}/{key}"), &())?;
                        record.blocks += 1;
                        record.bytes += txn.get(t.blocks, key)?.map_or(0, |r| r.size);
                    }
                    txn.put(t.pins, &root, &record)?;
                }
                let doomed = evict_in(txn, t, &mut used, budget)?;
                txn.put(t.meta, USED, &used)?;
                if used > budget {
                    return Err(StoreError::Aborted(format!("full:{used}")));
                }
                Ok((record, doomed))
            })
            .map_err(|e| match e {
                StoreError::Aborted(m) if m.starts_with("full:") => BlockStoreError::Full {
                    used: m[5..].parse().unwrap_or(0),
                    budget,
                },
                other => backend("commit")(other),
            })?;
        for key in doomed {
            let _ = fs::remove_file(self.file(&key));
        }
        Ok(record)
    }

    /// Evicts unpinned blocks (least recently used first) until at most `target` bytes are in use;
    /// returns the bytes in use after.
    pub fn evict_to(&self, target: u64) -> Result<u64, BlockStoreError> {
        let _lock = self.lock()?;
        let t = self.t;
        let (used, doomed) = self
            .index
            .write_sync(move |txn| {
                let mut used: u64 = txn.get(t.meta, USED)?.unwrap_or(0);
                let doomed = evict_in(txn, t, &mut used, target)?;
                txn.put(t.meta, USED, &used)?;
                Ok((used, doomed))
            })
            .map_err(backend("evict"))?;
        for key in doomed {
            let _ = fs::remove_file(self.file(&key));
        }
        Ok(used)
    }

    /// Removes what a crash can leave: tmp files and unindexed block files older than `min_age` (younger
    /// ones may belong to an import still running in another process). Returns how many files went.
    pub fn sweep(&self, min_age: Duration) -> Result<u64, BlockStoreError> {
        let _lock = self.lock()?;
        let old = |m: &fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age)
        };
        let mut removed = 0;
        let rd = |d: &Path| fs::read_dir(d).map_err(io_err("list", d));
        for e in rd(&self.tmp_dir)?.flatten() {
            if e.metadata().is_ok_and(|m| old(&m)) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        for shard in rd(&self.blocks_dir)?.flatten() {
            for e in rd(&shard.path())?.flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                if e.metadata().is_ok_and(|m| old(&m))
                    && self.record(&key)?.is_none()
                    && fs::remove_file(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Records last-use times of reads in the index now (they are otherwise written with the next commit).
    pub fn flush_usage(&self) -> Result<(), BlockStoreError> {
        if self
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            return Ok(());
        }
        let _lock = self.lock()?;
        self.commit_txn(Vec::new(), HashSet::new(), None)
            .map(|_| ())
    }

    fn read_indexed(&self, cid: &Cid) -> Result<Option<Bytes>, BlockStoreError> {
        let key = block_key(cid);
        let Some(rec) = self.record(&key)? else {
            return Ok(None);
        };
        let path = self.file(&key);
        let data = match fs::read(&path) {
            Ok(d) => d,
            // Evicted by another process after we read the record.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read block", &path)(e)),
        };
        if data.len() as u64 != rec.size {
            return Err(BlockStoreError::Backend {
                op: "read block",
                reason: format!(
                    "{} has {} bytes, the index says {}; the file was damaged outside cod",
                    path.display(),
                    data.len(),
                    rec.size
                ),
            });
        }
        self.touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, now_ms());
        Ok(Some(Bytes::from(data)))
    }
}

/// Deletes index entries of unpinned blocks, oldest use first, until `*used <= target`; returns their keys
/// (the caller deletes the files after the commit).
fn evict_in(
    txn: &mut crate::store::WriteTxn<'_, '_>,
    t: Tables,
    used: &mut u64,
    target: u64,
) -> Result<Vec<String>, StoreError> {
    let mut doomed = Vec::new();
    let mut after = String::from("0");
    while *used > target {
        let page = txn.prefix_after(t.lru, "", &after, 256)?;
        let Some((last, ())) = page.last() else {
            break;
        };
        after = last.clone();
        for (lru, ()) in page {
            if *used <= target {
                break;
            }
            let key = lru.split_once('/').map_or("", |(_, k)| k).to_owned();
            if !txn.prefix(t.pinned, &format!("{key}/"))?.is_empty() {
                continue;
            }
            if let Some(rec) = txn.get(t.blocks, &key)? {
                *used = used.saturating_sub(rec.size);
            }
            txn.delete(t.blocks, &key)?;
            txn.delete(t.lru, &lru)?;
            doomed.push(key);
        }
    }
    Ok(doomed)
}

impl BlockStore for DiskBlockStore {
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>, BlockStoreError> {
        self.read_indexed(cid)
    }

    fn has(&self, cid: &Cid) -> Result<bool, BlockStoreError> {
        let key = block_key(cid);
        Ok(self.record(&key)?.is_some() && self.file(&key).exists())
    }

    fn put(&self, block: &Block) -> Result<(), BlockStoreError> {
        let batch = self.batch();
        batch.put(block)?;
        batch.commit(None).map(|_| ())
    }

    fn size(&self, cid: &Cid) -> Result<Option<u64>, BlockStoreError> {
        Ok(self.record(&block_key(cid))?.map(|r| r.size))
    }
}

impl Drop for DiskBlockStore {
    fn drop(&mut self) {
        // Best effort: recency is a hint, not state.
        let _ = self.flush_usage();
    }
}

/// An import in progress; see [`DiskBlockStore::batch`].
#[derive(Debug)]
pub struct Batch<'a> {
    store: &'a DiskBlockStore,
    state: Mutex<BatchState>,
}

#[derive(Debug, Default)]
struct BatchState {
    /// Blocks this batch wrote, not yet indexed.
    new: Vec<(String, u64)>,
    /// Every block of the batch (written or found present): what a pin covers.
    all: HashSet<String>,
    /// Bytes of `new`.
    new_bytes: u64,
}

impl Batch<'_> {
    /// Indexes the batch's blocks in one transaction, pinning them all under `pin` (root, name) if given.
    pub fn commit(self, pin: Option<(&Cid, &str)>) -> Result<PinRecord, BlockStoreError> {
        let state = self
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let _lock = self.store.lock()?;
        self.store
            .commit_txn(state.new, state.all, pin.map(|(c, n)| (*c, n.to_owned())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BlockStore for Batch<'_> {
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>, BlockStoreError> {
        let key = block_key(cid);
        if self.lock().new.iter().any(|(k, _)| *k == key) {
            let path = self.store.file(&key);
            return fs::read(&path)
                .map(|d| Some(Bytes::from(d)))
                .map_err(io_err("read block", &path));
        }
        self.store.get(cid)
    }

    fn has(&self, cid: &Cid) -> Result<bool, BlockStoreError> {
        Ok(self.lock().all.contains(&block_key(cid)) || self.store.has(cid)?)
    }

    fn put(&self, block: &Block) -> Result<(), BlockStoreError> {
        let cid = block.cid();
        if cid.hash().code() == IDENTITY {
            return Ok(());
        }
        let key = block_key(cid);
        if self.lock().all.contains(&key) {
            return Ok(());
        }
        if self.store.record(&key)?.is_none() {
            let size = block.data().len() as u64;
            // Refuse early, before writing, when even evicting every unpinned block could not make room.
            let budget = self.store.config.budget;
            let pending = self.lock().new_bytes;
            let used = self.store.stats()?.used;
            if used + pending + size > budget {
                let after = self.store.evict_to(budget.saturating_sub(pending + size))?;
                if after + pending + size > budget {
                    return Err(BlockStoreError::Full {
                        used: after + pending + size,
                        budget,
                    });
                }
            }
            self.store.write_file(&key, block.data())?;
            let mut state = self.lock();
            state.new.push((key.clone(), size));
            state.new_bytes += size;
        }
        self.lock().all.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(data: &'static [u8]) -> Block {
        Block::new(RAW, Bytes::from_static(data), false)
    }

    fn open(dir: &Path, budget: u64) -> DiskBlockStore {
        DiskBlockStore::open(dir, DiskStoreConfig { budget }).expect("open")
    }

    #[test]
    fn blocks_survive_reopen_and_v0_v1_share_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Block::new(DAG_PB, Bytes::from_static(&[0x0a, 0x02, 0x08, 0x01]), true);
        {
            let store = open(dir.path(), 1 << 20);
            store.put(&node).expect("put");
            store.put(&raw(b"abc")).expect("put");
        }
        let store = open(dir.path(), 1 << 20);
        assert_eq!(
            store.get(node.cid()).expect("get"),
            Some(node.data().clone())
        );
        let v1 = Cid::new_v1(DAG_PB, *node.cid().hash());
        assert!(store.has(&v1).expect("has"));
        assert_eq!(store.stats().expect("stats").blocks, 2);
        assert_eq!(store.stats().expect("stats").used, 4 + 3);
    }

    #[test]
    fn uncommitted_batches_are_invisible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let b = raw(b"pending");
        let batch = store.batch();
        batch.put(&b).expect("put");
        assert!(batch.has(b.cid()).expect("has"));
        assert_eq!(store.get(b.cid()).expect("get"), None, "not indexed yet");
        drop(batch);
        assert_eq!(store.get(b.cid()).expect("get"), None);
        // The orphan file is swept, and a fresh write of the block works.
        assert_eq!(store.sweep(Duration::ZERO).expect("sweep"), 1);
        store.put(&b).expect("put again");
        assert!(store.get(b.cid()).expect("get").is_some());
    }

    #[test]
    fn lru_evicts_unpinned_blocks_and_pins_protect_whole_dags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 30);
        let a = Block::new(RAW, Bytes::from(vec![1u8; 10]), false);
        let b = Block::new(RAW, Bytes::from(vec![2u8; 10]), false);
        let c = Block::new(RAW, Bytes::from(vec![3u8; 10]), false);
        let d = Block::new(RAW, Bytes::from(vec![4u8; 10]), false);
        // a and b pinned under one root; c unpinned.
        let batch = store.batch();
        batch.put(&a).expect("put");
        batch.put(&b).expect("put");
        batch.commit(Some((a.cid(), "ab"))).expect("commit");
        store.put(&c).expect("put c");
        assert_eq!(store.stats().expect("stats").used, 30);
        // d needs room: c (the only unpinned block) goes.
        store.put(&d).expect("put d");
        assert!(!store.has(c.cid()).expect("has"));
        assert!(store.has(a.cid()).expect("has") && store.has(b.cid()).expect("has"));
        // Everything left is pinned or... d is unpinned, so e evicts d; then nothing can go.
        let e = Block::new(RAW, Bytes::from(vec![5u8; 10]), false);
        let batch = store.batch();
        batch.put(&e).expect("put e");
        batch.commit(Some((e.cid(), "e"))).expect("pin e");
        assert!(!store.has(d.cid()).expect("has"));
        let f = Block::new(RAW, Bytes::from(vec![6u8; 10]), false);
        assert!(matches!(store.put(&f), Err(BlockStoreError::Full { .. })));
        // Unpinning makes room again.
        assert!(store.unpin(a.cid()).expect("unpin"));
        store.put(&f).expect("room after unpin");
        assert_eq!(store.pins().expect("pins").len(), 1);
    }

    #[test]
    fn recently_read_blocks_are_evicted_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 20);
        let a = Block::new(RAW, Bytes::from(vec![1u8; 10]), false);
        let b = Block::new(RAW, Bytes::from(vec![2u8; 10]), false);
        store.put(&a).expect("put");
        store.put(&b).expect("put");
        // Make sure the read is at a later millisecond than b's write.
        let until = SystemTime::now() + Duration::from_millis(3);
        while SystemTime::now() < until {
            std::hint::spin_loop();
        }
        store.get(a.cid()).expect("read a");
        store.flush_usage().expect("flush");
        let c = Block::new(RAW, Bytes::from(vec![3u8; 10]), false);
        store.put(&c).expect("put c");
        assert!(store.has(a.cid()).expect("has"), "a was used last");
        assert!(!store.has(b.cid()).expect("has"));
    }

    #[test]
    fn pin_dag_walks_links_and_refuses_incomplete_dags() {
        use crate::ipfs::unixfs::{ImportOptions, import_path};
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        fs::write(src.join("f"), vec![7u8; 600_000]).expect("write");
        let store = open(&dir.path().join("data"), 1 << 30);
        let batch = store.batch();
        let root = import_path(&batch, &src, &ImportOptions::default()).expect("import");
        batch.commit(None).expect("commit");
        let pin = store.pin_dag(&root.cid, "src").expect("pin");
        assert_eq!(
            pin.blocks, 4,
            "dir + file root + 3 distinct leaves (two equal full chunks)"
        );
        let absent = raw(b"not here");
        let dir_node = crate::ipfs::dagpb::PbNode {
            links: vec![crate::ipfs::dagpb::PbLink {
                hash: *absent.cid(),
                name: Some("x".into()),
                tsize: Some(8),
            }],
            data: None,
        };
        let holder = Block::new(DAG_PB, Bytes::from(dir_node.encode()), true);
        store.put(&holder).expect("put");
        assert!(store.pin_dag(holder.cid(), "broken").is_err());
    }
}
