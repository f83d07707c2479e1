//! The compute node's caches: prepared inputs by content ([`input::InputCache`]) and finished executions'
//! results by what produced them ([`result::ResultCache`]). Both are a [`DiskCache`]: directories under a
//! disk budget, indexed in LMDB, evicted least recently used first.
//!
//! They live in `compute/`, not in `storage/`, because they need the store: storage backends see only specs
//! and paths (DESIGN.md's dependency rule), while the runner already owns the store and the backends.
//!
//! On disk, under `<root>/`: `entries/<key>/` holds complete entries, `tmp/` entries being written and
//! entries being deleted. Keys are lowercase SHA-256 hex (of a content id, or of a result-cache key), so they
//! are safe as file names and LMDB keys of bounded length.
//!
//! Invariants:
//! - An entry is served only once complete: it is written in `tmp/`, synced, renamed into `entries/`, and
//!   then indexed. On open, `tmp/` is emptied, and directories without a record and records without a
//!   directory are removed, so a crash at any step never leaves a half-written entry that could be served.
//! - One task at a time works on a key ([`DiskCache::lock`]): concurrent executions that need the same
//!   content wait for the first one to fetch it instead of fetching it again.
//! - A leased entry ([`Lease`], held while an execution uses it) is never evicted. Leases are in memory: after
//!   a restart nothing runs, so nothing is leased. Eviction takes the key's lock and checks the lease under
//!   it, and leases are only taken under that lock, so the two cannot race.
//! - The budget is a target, not a hard cap: entries in use are kept even when the cache is over budget, and
//!   an entry larger than the whole budget is never kept (the caller uses it once from its staging area).

pub(crate) mod input;
pub(crate) mod result;

use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

pub(crate) use crate::keyed::Lease;
use crate::keyed::{KeyedLocks, Leases, UseClock};
use crate::store::{Reader, Store, StoreError, Table};

/// A cache operation that failed. The caller decides whether that fails the execution (it usually does not:
/// a cache is an optimization, and the work can be done without it).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file system operation failed.
    #[error("{cache} cache: cannot {op} {path:?}")]
    Io {
        /// Which cache.
        cache: &'static str,
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The index failed.
    #[error("{cache} cache: the index failed")]
    Index {
        /// Which cache.
        cache: &'static str,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A blocking task panicked or was cancelled.
    #[error("{cache} cache: the {task} task failed")]
    Task {
        /// Which cache.
        cache: &'static str,
        /// Which task.
        task: &'static str,
    },
}

/// The lowercase SHA-256 hex of `text`: how ids and keys become entry names.
pub(crate) fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// One entry's index record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry<M> {
    /// Bytes of file content in the entry (what the budget counts).
    pub size_bytes: u64,
    /// When it was last served or written (ms since the epoch, strictly increasing per cache): LRU order.
    pub last_used_ms: u64,
    /// What the entry is, for its user.
    pub meta: M,
}

/// A served entry: its directory and record, leased until dropped.
#[derive(Debug)]
pub(crate) struct Hit<M> {
    /// The entry's directory (read only to everyone: it is shared).
    pub dir: PathBuf,
    /// Its record.
    pub entry: Entry<M>,
    /// Keeps it from eviction.
    pub lease: Lease,
}

/// What [`DiskCache::commit`] did with a staged entry.
#[derive(Debug)]
pub(crate) enum Commit<M> {
    /// It is in the cache now.
    Cached(Hit<M>),
    /// It is larger than the whole budget, so it was not kept: here it is back, for one use.
    TooLarge(Staging),
}

/// A directory in `tmp/` being filled. Removed on drop unless committed or taken, so an abandoned fill
/// (an error, a cancelled execution) leaves nothing behind.
#[derive(Debug)]
pub(crate) struct Staging {
    path: Option<PathBuf>,
}

impl Staging {
    /// The directory to fill.
    pub fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("a staging dir has its path until it is consumed, which takes it by value")
    }

    /// Removes the directory now (off the runtime's workers). Dropping does the same in the background; this
    /// is for paths that can wait for it.
    pub async fn discard(mut self) {
        if let Some(path) = self.path.take() {
            let _ = tokio::task::spawn_blocking(move || remove_any(&path)).await;
        }
    }

    /// The directory, no longer removed on drop.
    pub fn into_path(mut self) -> PathBuf {
        self.path
            .take()
            .expect("a staging dir has its path until it is consumed, which takes it by value")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Off the runtime's workers when there is a runtime (a partial download can be large); a failure
            // only wastes space until the next open empties tmp/.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || remove_any(&path));
                }
                Err(_) => {
                    let _ = remove_any(&path);
                }
            }
        }
    }
}

/// Proof that the caller holds a key's lock (see [`DiskCache::lock`]).
#[derive(Debug)]
pub(crate) struct KeyGuard {
    key: String,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// What one [`DiskCache::gc`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GcReport {
    /// Bytes indexed before.
    pub before_bytes: u64,
    /// Bytes indexed after.
    pub after_bytes: u64,
    /// Entries evicted.
    pub evicted: usize,
}

/// A budgeted, LRU-evicted directory cache; see the module docs. Cheap to clone.
#[derive(Debug)]
pub(crate) struct DiskCache<M> {
    inner: Arc<Inner>,
    _meta: PhantomData<fn() -> M>,
}

impl<M> Clone for DiskCache<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _meta: PhantomData,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// `input` or `result`, for messages and logs.
    name: &'static str,
    /// Complete entries.
    entries: PathBuf,
    /// Entries being written or deleted; emptied on open.
    tmp: PathBuf,
    /// LMDB, for the index.
    store: Store,
    /// The index: key → `Entry<M>` as JSON. Untyped here so `Inner` needs no type parameter.
    table: Table<serde_json::Value>,
    /// Bytes the entries may take (a target: leased entries are kept beyond it).
    budget: u64,
    /// One fill, lookup or eviction at a time per key.
    locks: KeyedLocks,
    /// Entries in use, which eviction keeps.
    leases: Arc<Leases>,
    /// One GC at a time (an async lock: GC awaits LMDB and file removal while holding it).
    gc: tokio::sync::Mutex<()>,
    /// The last use stamp handed out, so LRU order is strict even within one millisecond.
    clock: UseClock,
    /// Use stamps of hits newer than their records: a hit is on every execution's path, and writing its
    /// stamp would cost a commit (an fsync) each time. Eviction reads them with the records; the next fill
    /// writes them. A restart forgets the ones not yet written, which only makes LRU order a little older.
    hits: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Inner {
    fn hits(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        // Every change is one insert or remove: a panicking holder leaves the map usable.
        self.hits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When `key` was last used: the newer of its record's stamp and an unwritten hit.
    fn last_used(&self, key: &str, recorded: u64) -> u64 {
        self.hits()
            .get(key)
            .map_or(recorded, |&hit| hit.max(recorded))
    }
}

// === impl DiskCache ===

impl<M> DiskCache<M>
where
    M: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// Opens the cache in `root` with its index in `table`, cleans up after a crash (see the module docs) and
    /// evicts down to `budget` (which may have shrunk since the last run).
    pub async fn open(
        name: &'static str,
        root: &Path,
        store: &Store,
        table: &'static str,
        budget: u64,
    ) -> Result<Self, CacheError> {
        let index = |source| CacheError::Index {
            cache: name,
            source,
        };
        let table: Table<serde_json::Value> = store.table(table).map_err(index)?;
        let records = store.read(move |txn| txn.all(table)).await.map_err(index)?;
        let (entries, tmp) = (root.join("entries"), root.join("tmp"));
        let (e, t) = (entries.clone(), tmp.clone());
        let known: Vec<String> = records.iter().map(|(k, _)| k.clone()).collect();
        let stale = blocking(name, "sweep", move || sweep(name, &e, &t, &known)).await??;
        let last_use = records
            .iter()
            .filter_map(|(_, v)| v.get("last_used_ms").and_then(serde_json::Value::as_u64))
            .max()
            .unwrap_or(0);
        if !stale.is_empty() {
            warn!(
                cache = name,
                entries = stale.len(),
                "dropped index records whose files are gone"
            );
            store
                .write(move |txn| {
                    for key in &stale {
                        txn.delete(table, key)?;
                    }
                    Ok(())
                })
                .await
                .map_err(index)?;
        }
        let cache = Self {
            inner: Arc::new(Inner {
                name,
                entries,
                tmp,
                store: store.clone(),
                table,
                budget,
                locks: KeyedLocks::default(),
                leases: Arc::new(Leases::default()),
                gc: tokio::sync::Mutex::new(()),
                clock: UseClock::after(last_use),
                hits: Default::default(),
            }),
            _meta: PhantomData,
        };
        cache.gc().await?;
        Ok(cache)
    }

    /// Waits for the lock on `key`; hold it across a lookup and the fill that follows a miss. Cancel-safe
    /// (tokio's mutex is).
    pub async fn lock(&self, key: &str) -> KeyGuard {
        KeyGuard {
            key: key.to_owned(),
            _lock: self.inner.locks.lock(key).await,
        }
    }

    /// The entry under the guard's key, leased and marked as just used; `None` on a miss.
    pub async fn lookup(&self, guard: &KeyGuard) -> Result<Option<Hit<M>>, CacheError> {
        let table = self.inner.table;
        // A point read and a stat, on this thread: both take microseconds, less than a hand-off to the
        // blocking pool would.
        let found = self
            .inner
            .store
            .read_sync(|txn| txn.get(table, &guard.key))
            .map_err(|source| self.index_err(source))?;
        let dir = self.inner.entries.join(&guard.key);
        if found.is_some() && !std::fs::exists(&dir).unwrap_or(false) {
            // Removed behind the cache's back (an operator freeing space): forget it, then it is a miss.
            warn!(cache = self.inner.name, key = %guard.key, "cache entry missing on disk; dropped");
            let key = guard.key.clone();
            self.inner
                .store
                .write(move |txn| txn.delete(table, &key))
                .await
                .map_err(|source| self.index_err(source))?;
            return Ok(None);
        }
        let Some(value) = found else {
            return Ok(None);
        };
        let mut entry: Entry<M> = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => {
                // Written by another version: treat as a miss; the fill replaces it.
                warn!(cache = self.inner.name, key = %guard.key, error = %e, "unreadable cache record");
                return Ok(None);
            }
        };
        entry.last_used_ms = self.inner.clock.stamp();
        self.inner
            .hits()
            .insert(guard.key.clone(), entry.last_used_ms);
        Ok(Some(Hit {
            dir,
            entry,
            lease: self.inner.leases.acquire(vec![guard.key.clone()]),
        }))
    }

    /// A fresh, empty directory in `tmp/` to fill.
    pub async fn staging(&self) -> Result<Staging, CacheError> {
        let path = self
            .inner
            .tmp
            .join(format!("fill-{}", uuid::Uuid::new_v4()));
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(|source| self.io_err("create", &path, source))?;
        Ok(Staging { path: Some(path) })
    }

    /// Makes a filled staging directory the entry under the guard's key (replacing any unreadable record):
    /// sync, rename, index, in that order, then evicts down to the budget. An entry larger than the budget is
    /// given back instead.
    pub async fn commit(
        &self,
        guard: &KeyGuard,
        staging: Staging,
        meta: M,
    ) -> Result<Commit<M>, CacheError> {
        let name = self.inner.name;
        let src = staging.path().to_owned();
        let size = blocking(name, "sync", move || sync_tree(&src)).await?;
        let size = size.map_err(|source| self.io_err("sync", staging.path(), source))?;
        if size > self.inner.budget {
            debug!(cache = name, key = %guard.key, size, budget = self.inner.budget, "entry larger than the budget; not kept");
            return Ok(Commit::TooLarge(staging));
        }
        let dir = self.inner.entries.join(&guard.key);
        let (from, to, entries) = (
            staging.path().to_owned(),
            dir.clone(),
            self.inner.entries.clone(),
        );
        let tmp = self.inner.tmp.clone();
        blocking(name, "rename", move || {
            // A directory left by an unreadable record (or an old version) makes way first.
            remove_tree_via(&to, &tmp)?;
            std::fs::rename(&from, &to)?;
            // The rename itself must survive power loss before the index points at the entry.
            std::fs::File::open(&entries)?.sync_all()
        })
        .await?
        .map_err(|source| self.io_err("install", &dir, source))?;
        // The directory moved: nothing left to remove on drop.
        let _ = staging.into_path();
        let entry = Entry {
            size_bytes: size,
            last_used_ms: self.inner.clock.stamp(),
            meta,
        };
        let value = serde_json::to_value(&entry)
            .map_err(|e| self.io_err("encode the record of", &dir, io::Error::other(e)))?;
        let (table, key) = (self.inner.table, guard.key.clone());
        // The hits' stamps go into the same commit (a failed one drops them: LRU order is a little older).
        let hits: Vec<(String, u64)> = self
            .inner
            .hits()
            .drain()
            .filter(|(k, _)| *k != key)
            .collect();
        self.inner
            .store
            .write(move |txn| {
                for (hit, stamp) in hits {
                    if let Some(mut record) = txn.get(table, &hit)?
                        && let Some(obj) = record.as_object_mut()
                    {
                        obj.insert("last_used_ms".into(), stamp.into());
                        txn.put(table, &hit, &record)?;
                    }
                }
                txn.put(table, &key, &value)
            })
            .await
            .map_err(|source| self.index_err(source))?;
        let lease = self.inner.leases.acquire(vec![guard.key.clone()]);
        debug!(cache = name, key = %guard.key, size, "entry cached");
        // Best effort: a failed GC leaves the cache over budget until the next one, and the entry is fine.
        if let Err(e) = self.gc().await {
            warn!(cache = name, error = %e, "cache eviction failed");
        }
        Ok(Commit::Cached(Hit { dir, entry, lease }))
    }

    /// Evicts entries, least recently used first, until the cache fits its budget. Entries that are leased,
    /// or being filled or looked up, are kept.
    pub async fn gc(&self) -> Result<GcReport, CacheError> {
        let _one_gc = self.inner.gc.lock().await;
        let table = self.inner.table;
        let records = self
            .inner
            .store
            .read(move |txn| txn.all(table))
            .await
            .map_err(|source| self.index_err(source))?;
        let mut entries: Vec<(String, u64, u64)> = records
            .into_iter()
            .map(|(k, v)| {
                let field = |f: &str| v.get(f).and_then(serde_json::Value::as_u64).unwrap_or(0);
                let used = self.inner.last_used(&k, field("last_used_ms"));
                (k, field("size_bytes"), used)
            })
            .collect();
        let before: u64 = entries.iter().map(|(_, size, _)| size).sum();
        let mut report = GcReport {
            before_bytes: before,
            after_bytes: before,
            evicted: 0,
        };
        if before <= self.inner.budget {
            return Ok(report);
        }
        entries.sort_by_key(|(_, _, used)| *used);
        for (key, size, _) in entries {
            if report.after_bytes <= self.inner.budget {
                break;
            }
            // Busy means a fill or lookup holds it right now: it is in use.
            let Some(_lock) = self.inner.locks.try_lock(&key) else {
                continue;
            };
            if self.inner.leases.is_leased(&key) {
                continue;
            }
            let k = key.clone();
            self.inner
                .store
                .write(move |txn| txn.delete(table, &k))
                .await
                .map_err(|source| self.index_err(source))?;
            self.inner.hits().remove(&key);
            let (dir, tmp) = (self.inner.entries.join(&key), self.inner.tmp.clone());
            blocking(self.inner.name, "evict", move || {
                remove_tree_via(&dir, &tmp)
            })
            .await?
            .map_err(|source| self.io_err("evict", &self.inner.entries.join(&key), source))?;
            report.after_bytes = report.after_bytes.saturating_sub(size);
            report.evicted += 1;
            info!(cache = self.inner.name, key = %key, bytes = size, "cache entry evicted");
        }
        if report.after_bytes > self.inner.budget {
            warn!(
                cache = self.inner.name,
                budget_bytes = self.inner.budget,
                used_bytes = report.after_bytes,
                "cache is over budget, but the rest is in use"
            );
        }
        Ok(report)
    }

    /// The directory of the entry under `key` (whether or not it exists).
    #[cfg(test)]
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.inner.entries.join(key)
    }

    /// The keys indexed, least recently used first.
    #[cfg(test)]
    pub async fn keys_by_age(&self) -> Vec<String> {
        let table = self.inner.table;
        let mut all: Vec<(String, u64)> = self
            .inner
            .store
            .read(move |txn| txn.all(table))
            .await
            .expect("read index")
            .into_iter()
            .map(|(k, v)| {
                let used = self
                    .inner
                    .last_used(&k, v["last_used_ms"].as_u64().unwrap_or(0));
                (k, used)
            })
            .collect();
        all.sort_by_key(|(_, used)| *used);
        all.into_iter().map(|(k, _)| k).collect()
    }

    fn io_err(&self, op: &'static str, path: &Path, source: io::Error) -> CacheError {
        CacheError::Io {
            cache: self.inner.name,
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn index_err(&self, source: StoreError) -> CacheError {
        CacheError::Index {
            cache: self.inner.name,
            source,
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<R: Send + 'static>(
    cache: &'static str,
    task: &'static str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| CacheError::Task { cache, task })
}

/// The crash clean-up done at open; returns the records whose directory is missing.
fn sweep(
    cache: &'static str,
    entries: &Path,
    tmp: &Path,
    known: &[String],
) -> Result<Vec<String>, CacheError> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| CacheError::Io {
            cache,
            op,
            path,
            source,
        }
    };
    for dir in [entries, tmp] {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    for entry in std::fs::read_dir(tmp).map_err(io("list", tmp))? {
        let path = entry.map_err(io("list", tmp))?.path();
        remove_any(&path).map_err(io("remove", &path))?;
    }
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(entries).map_err(io("list", entries))? {
        let entry = entry.map_err(io("list", entries))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if known.contains(&name) {
            on_disk.push(name);
        } else {
            // Renamed into place but never indexed (a crash in between), or from an older layout.
            let path = entry.path();
            remove_tree_via(&path, tmp).map_err(io("remove", &path))?;
        }
    }
    Ok(known
        .iter()
        .filter(|k| !on_disk.contains(k))
        .cloned()
        .collect())
}

/// Removes a file or a directory tree; a missing one is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a directory tree by first renaming it into `tmp`, so an interrupted removal never leaves a
/// partial tree under a name that looks like a complete entry.
fn remove_tree_via(path: &Path, tmp: &Path) -> io::Result<()> {
    let doomed = tmp.join(format!("gc-{}", uuid::Uuid::new_v4()));
    match std::fs::rename(path, &doomed) {
        Ok(()) => remove_any(&doomed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Syncs every file and directory under `root` to disk and returns the bytes of file content. Iterative,
/// so a deep tree cannot overflow the stack; symlinks are not followed.
fn sync_tree(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let file = std::fs::File::open(entry.path())?;
                total += file.metadata()?.len();
                file.sync_all()?;
            }
        }
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(total)
}

/// Copies the tree at `from` (a file or a directory) to `to`, merging into directories that exist. Symlinks
/// are copied as links, never followed, so a link in an input cannot pull host files into a copy.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if !meta.is_dir() {
        return copy_entry(from, to, &meta);
    }
    let mut stack = vec![(from.to_owned(), to.to_owned())];
    while let Some((src, dst)) = stack.pop() {
        std::fs::create_dir_all(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let (s, d) = (entry.path(), dst.join(entry.file_name()));
            let meta = std::fs::symlink_metadata(&s)?;
            if meta.is_dir() {
                stack.push((s, d));
            } else {
                copy_entry(&s, &d, &meta)?;
            }
        }
    }
    Ok(())
}

fn copy_entry(from: &Path, to: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if meta.is_file() {
        std::fs::copy(from, to).map(|_| ())
    } else {
        // Sockets, fifos, devices: nothing a job input or result should carry.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Config;

    type Cache = DiskCache<String>;

    async fn open(dir: &Path, store: &Store, budget: u64) -> Cache {
        DiskCache::open("test", &dir.join("cache"), store, "test.cache", budget)
            .await
            .expect("open")
    }

    fn store(dir: &Path) -> Store {
        Store::open(&dir.join("state"), &Config::default()).expect("store")
    }

    /// Fills `key` with one file of `size` bytes; returns the hit (leased) or None if too large.
    async fn fill(cache: &Cache, key: &str, size: usize) -> Option<Hit<String>> {
        let guard = cache.lock(key).await;
        assert!(cache.lookup(&guard).await.expect("lookup").is_none());
        let staging = cache.staging().await.expect("staging");
        std::fs::write(staging.path().join("data"), vec![b'x'; size]).expect("write");
        match cache
            .commit(&guard, staging, key.to_owned())
            .await
            .expect("commit")
        {
            Commit::Cached(hit) => Some(hit),
            Commit::TooLarge(_) => None,
        }
    }

    async fn has(cache: &Cache, key: &str) -> bool {
        let guard = cache.lock(key).await;
        cache.lookup(&guard).await.expect("lookup").is_some()
    }

    #[tokio::test]
    async fn a_hit_serves_the_committed_entry() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 1000).await;
        let hit = fill(&cache, "k1", 10).await.expect("cached");
        assert_eq!(hit.entry.size_bytes, 10);
        assert_eq!(hit.entry.meta, "k1");
        drop(hit);
        let guard = cache.lock("k1").await;
        let hit = cache.lookup(&guard).await.expect("lookup").expect("hit");
        assert_eq!(std::fs::read(hit.dir.join("data")).expect("data").len(), 10);
        assert_eq!(hit.dir, cache.entry_dir("k1"));
    }

    #[tokio::test]
    async fn evicts_least_recently_used_first_to_fit_the_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 30).await;
        for key in ["a", "b", "c"] {
            drop(fill(&cache, key, 10).await.expect("cached"));
        }
        assert_eq!(cache.keys_by_age().await, ["a", "b", "c"]);
        // Using `a` makes `b` the least recently used.
        assert!(has(&cache, "a").await);
        assert_eq!(cache.keys_by_age().await, ["b", "c", "a"]);
        drop(fill(&cache, "d", 10).await.expect("cached"));
        assert_eq!(cache.keys_by_age().await, ["c", "a", "d"]);
        assert!(!cache.entry_dir("b").exists(), "evicted from disk too");
        // A larger entry pushes out as many as it needs.
        drop(fill(&cache, "e", 20).await.expect("cached"));
        assert_eq!(cache.keys_by_age().await, ["d", "e"]);
    }

    #[tokio::test]
    async fn hits_cost_no_commit_and_their_order_is_written_with_the_next_fill() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 100).await;
        for key in ["a", "b"] {
            drop(fill(&cache, key, 10).await.expect("cached"));
        }
        let before = store.commit_stats();
        assert!(has(&cache, "a").await);
        assert_eq!(
            store.commit_stats().submitted,
            before.submitted,
            "a hit writes nothing"
        );
        assert_eq!(cache.keys_by_age().await, ["b", "a"]);
        // The next fill carries `a`'s use into the index, where a reopened cache finds it.
        drop(fill(&cache, "c", 10).await.expect("cached"));
        drop(cache);
        let cache = open(dir.path(), &store, 100).await;
        assert_eq!(cache.keys_by_age().await, ["b", "a", "c"]);
    }

    #[tokio::test]
    async fn leased_entries_are_never_evicted() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 20).await;
        let pinned = fill(&cache, "old", 10).await.expect("cached");
        drop(fill(&cache, "mid", 10).await.expect("cached"));
        drop(fill(&cache, "new", 10).await.expect("cached"));
        // `old` is the least recently used but in use: `mid` goes instead.
        assert_eq!(cache.keys_by_age().await, ["old", "new"]);
        assert!(pinned.dir.join("data").is_file());
        // Everything in use: over budget, kept, and evicted once released.
        let new = {
            let guard = cache.lock("new").await;
            cache.lookup(&guard).await.expect("lookup").expect("hit")
        };
        let held = fill(&cache, "newest", 10).await.expect("cached");
        assert_eq!(cache.keys_by_age().await, ["old", "new", "newest"]);
        let report = cache.gc().await.expect("gc");
        assert_eq!(report.evicted, 0);
        assert_eq!(report.after_bytes, 30);
        drop((pinned, new));
        let report = cache.gc().await.expect("gc");
        assert_eq!(report.evicted, 1);
        assert_eq!(cache.keys_by_age().await, ["new", "newest"]);
        drop(held);
    }

    #[tokio::test]
    async fn an_entry_being_filled_is_not_evicted_and_waiters_see_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 10).await;
        drop(fill(&cache, "a", 10).await.expect("cached"));
        let guard = cache.lock("a").await;
        // Over budget now, but `a` is locked by a lookup: kept.
        drop(fill(&cache, "b", 5).await.expect("cached"));
        assert_eq!(cache.keys_by_age().await, ["a", "b"]);
        drop(guard);
        // A second task waits for the first one's fill and then finds it.
        let guard = cache.lock("c").await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { has(&cache, "c").await })
        };
        let staging = cache.staging().await.expect("staging");
        std::fs::write(staging.path().join("data"), b"x").expect("write");
        let committed = cache.commit(&guard, staging, "c".into()).await;
        drop(guard);
        drop(committed);
        assert!(waiter.await.expect("join"), "the waiter sees the fill");
    }

    #[tokio::test]
    async fn entries_larger_than_the_budget_are_given_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 5).await;
        let guard = cache.lock("big").await;
        let staging = cache.staging().await.expect("staging");
        std::fs::write(staging.path().join("data"), b"0123456789").expect("write");
        let Commit::TooLarge(staging) = cache
            .commit(&guard, staging, "big".into())
            .await
            .expect("commit")
        else {
            panic!("cached an entry over the budget");
        };
        assert!(staging.path().join("data").is_file(), "usable once");
        assert!(cache.keys_by_age().await.is_empty());
    }

    #[tokio::test]
    async fn a_crash_never_leaves_a_partial_entry_to_serve() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        {
            let cache = open(dir.path(), &store, 100).await;
            drop(fill(&cache, "good", 3).await.expect("cached"));
            drop(fill(&cache, "gone", 3).await.expect("cached"));
            // A fill that never finished (the process died mid-download)...
            let staging = cache.staging().await.expect("staging");
            std::fs::write(staging.path().join("half"), b"x").expect("write");
            let _ = staging.into_path();
            // ...one renamed into place but not indexed...
            std::fs::create_dir_all(cache.entry_dir("unindexed")).expect("mkdir");
            // ...and one whose directory vanished.
            std::fs::remove_dir_all(cache.entry_dir("gone")).expect("rm");
        }
        let cache = open(dir.path(), &store, 100).await;
        assert_eq!(cache.keys_by_age().await, ["good"]);
        assert!(!cache.entry_dir("unindexed").exists());
        let tmp = dir.path().join("cache/tmp");
        assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
        assert!(has(&cache, "good").await);
        assert!(!has(&cache, "gone").await);
    }

    #[tokio::test]
    async fn an_entry_deleted_behind_the_cache_is_a_miss() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 100).await;
        drop(fill(&cache, "a", 3).await.expect("cached"));
        std::fs::remove_dir_all(cache.entry_dir("a")).expect("rm");
        assert!(!has(&cache, "a").await);
        assert!(cache.keys_by_age().await.is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_fill_removes_its_staging_dir() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        let cache = open(dir.path(), &store, 100).await;
        let staging = cache.staging().await.expect("staging");
        let path = staging.path().to_owned();
        std::fs::write(path.join("partial"), b"x").expect("write");
        staging.discard().await;
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_smaller_budget_on_open_evicts() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(dir.path());
        {
            let cache = open(dir.path(), &store, 100).await;
            for key in ["a", "b", "c"] {
                drop(fill(&cache, key, 10).await.expect("cached"));
            }
        }
        let cache = open(dir.path(), &store, 15).await;
        assert_eq!(cache.keys_by_age().await, ["c"]);
    }

    #[test]
    fn copy_tree_copies_files_dirs_and_links_without_following() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("a"), b"a").expect("write");
        std::fs::write(src.join("sub/b"), b"b").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).expect("link");
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).expect("copy");
        assert_eq!(std::fs::read(dst.join("sub/b")).expect("b"), b"b");
        assert_eq!(
            std::fs::read_link(dst.join("link")).expect("link"),
            Path::new("/etc/passwd")
        );
        assert_eq!(sync_tree(&dst).expect("size"), 2, "links are not content");
        copy_tree(&src.join("a"), &dir.path().join("one")).expect("file");
        assert_eq!(std::fs::read(dir.path().join("one")).expect("one"), b"a");
    }
}
