//! The content-addressed image store: pulls images once, unpacks each layer once, shares layers between
//! images and jobs, and evicts the least recently used ones under a disk budget.
//!
//! On disk, under `<data_dir>/oci/`:
//! - `blobs/sha256/<hex>`: downloaded (compressed) layer blobs, verified before they get this name. A blob
//!   lives only until its layer is unpacked, so layers are not stored twice on small disks.
//! - `layers/<diff_id hex>/`: unpacked layers in overlay format ([`apply_layer`]), owned by the shifted ids of
//!   the container user namespace. Shared by every image that has the layer.
//! - `tmp/`: layers being unpacked and directories being deleted; emptied when the store opens.
//!
//! Indexed in LMDB: `oci.images` (manifest digest → config and layers), `oci.layers` (diff id → size and id
//! shift of a complete unpacked layer), `oci.tags` (`<platform> <reference>` → manifest digest, what a
//! reference last resolved to).
//!
//! Invariants:
//! - A layer directory exists under `layers/` only once complete: it is unpacked in `tmp/`, its diff id is
//!   checked, the file system is synced, and then it is renamed into place; its `oci.layers` record is written
//!   after that. On open, directories without a record and records without a directory are removed, so a crash
//!   never leaves a half layer in use.
//! - One pull at a time works on a given layer (a per-diff-id async lock); concurrent pulls of one image wait
//!   for each other's layers instead of racing.
//! - A leased layer ([`ImageLease`], held by [`Image`]) is never deleted by [`ImageStore::gc`].
//!
//! Tags versus digests: a reference pinned by digest that is already present needs no network at all. A tag
//! is resolved again on every pull (tags move), but if the registry cannot be reached the image the tag last
//! resolved to on this node is used, with a warning, so jobs keep running through registry outages.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tracing::{debug, info, warn};

use super::platform::Platform;
use super::reference::{Digest, ImageRef};
use super::registry::{Compression, ImageConfig, LayerDescriptor, PullError, Registry};
use super::unpack::{IdShift, UnpackError, UnpackLimits, apply_layer};
use crate::keyed::{KeyedLocks, Lease, Leases, UseClock, now_ms};
use crate::store::{Reader, Store, StoreError, Table};

/// Read buffer for blobs: one syscall per 256 KiB instead of per 8 KiB.
const READ_BUFFER: usize = 256 * 1024;

/// Image store settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStoreConfig {
    /// How layer owners are shifted into the container user namespace (e.g. base 100000, size 65536). Layers
    /// unpacked with another shift are unpacked again.
    pub shift: IdShift,
    /// Bounds on what one layer may unpack to.
    pub limits: UnpackLimits,
}

/// A step of a pull, for progress reports and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The image is known: `download_bytes` is the compressed size of its layers not yet unpacked here.
    Resolved {
        /// Manifest digest.
        digest: Digest,
        /// Number of layers.
        layers: usize,
        /// Bytes still to download (upper bound: blobs left from an interrupted pull are reused).
        download_bytes: u64,
        /// True if the registry was unreachable and the tag's last known image is used.
        from_cache: bool,
    },
    /// Layer `index` (bottom = 0) was already unpacked.
    LayerCached {
        /// Position in the image.
        index: usize,
        /// Its diff id.
        diff_id: Digest,
    },
    /// Layer `index` is downloading.
    Downloading {
        /// Position in the image.
        index: usize,
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        received: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Layer `index` was unpacked.
    LayerUnpacked {
        /// Position in the image.
        index: usize,
        /// Its diff id.
        diff_id: Digest,
        /// Tar entries applied.
        entries: u64,
        /// File content bytes written.
        bytes: u64,
        /// Time spent decompressing, hashing and unpacking.
        took: Duration,
    },
}

/// A pulled image, ready to run. Holds a lease on its layers until dropped (or until [`Image::lease`] is
/// moved out and dropped): keep it while a container uses the layers.
#[derive(Debug)]
pub struct Image {
    /// What was asked for.
    pub reference: ImageRef,
    /// The platform manifest's digest.
    pub digest: Digest,
    /// The image's platform.
    pub platform: Platform,
    /// How to run it.
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first (overlay lower dirs in reverse order).
    pub layers: Vec<PathBuf>,
    /// Compressed bytes downloaded by this pull (0 when everything was cached).
    pub pulled_bytes: u64,
    /// Wall time of the pull, including unpacking.
    pub took: Duration,
    /// Keeps the layers from garbage collection.
    pub lease: ImageLease,
}

/// Keeps an image's layers from [`ImageStore::gc`] while it exists.
#[derive(Debug)]
pub struct ImageLease {
    _lease: Lease,
}

/// What [`ImageStore::gc`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Bytes in use before.
    pub before_bytes: u64,
    /// Bytes in use after.
    pub after_bytes: u64,
    /// Images forgotten.
    pub images_removed: usize,
    /// Layer directories deleted.
    pub layers_removed: usize,
}

/// A store operation (open, GC) that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// A file system operation failed.
    #[error("image store: cannot {op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image index failed.
    #[error("image store: the image index failed")]
    Index(#[source] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("image store: the {0} task failed")]
    Task(&'static str),
}

/// The image store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The directory layout.
    paths: Paths,
    /// LMDB, for the index tables.
    store: Store,
    /// The index tables.
    tables: Tables,
    /// Where images come from.
    registry: Registry,
    /// Id shift and unpack limits.
    config: ImageStoreConfig,
    /// Per-layer locks: one pull (or GC) at a time per diff id.
    locks: KeyedLocks,
    /// Leased images and layers, which GC keeps.
    leases: Arc<Leases>,
    /// One GC at a time (an async lock: GC awaits LMDB and file removal while holding it).
    gc: tokio::sync::Mutex<()>,
    /// The last use stamp given out: wall-clock milliseconds, but strictly increasing, so that two pulls in
    /// the same millisecond still have an LRU order.
    clock: UseClock,
}

#[derive(Debug, Clone)]
struct Paths {
    blobs: PathBuf,
    layers: PathBuf,
    tmp: PathBuf,
}

impl Paths {
    fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }
    fn layer(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }
}

#[derive(Debug, Clone, Copy)]
struct Tables {
    images: Table<ImageRecord>,
    layers: Table<LayerRecord>,
    tags: Table<TagRecord>,
}

/// An image's index record, keyed by manifest digest hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    /// The reference it was last pulled as.
    reference: String,
    digest: Digest,
    platform: Platform,
    config: ImageConfig,
    layers: Vec<LayerDescriptor>,
    /// Unix milliseconds of the last pull; GC evicts the oldest first.
    last_used_ms: u64,
}

/// A complete unpacked layer, keyed by diff id hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    /// The blob it came from.
    blob: Digest,
    /// Disk space used (allocated blocks), for the GC budget.
    disk_bytes: u64,
    /// File content bytes.
    content_bytes: u64,
    entries: u64,
    /// The id shift it was unpacked with.
    shift_base: u32,
    shift_size: u32,
    unpacked_ms: u64,
}

/// What a reference last resolved to on this node, keyed by `<platform> <reference>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagRecord {
    digest: Digest,
    resolved_ms: u64,
}

fn tag_key(image: &ImageRef, platform: &Platform) -> String {
    format!("{platform} {image}")
}

fn layer_key(diff_id: &Digest) -> String {
    format!("layer:{}", diff_id.hex())
}

fn image_key(digest: &Digest) -> String {
    format!("image:{}", digest.hex())
}

// === impl ImageStore ===

impl ImageStore {
    /// Opens the store in `<data_dir>/oci/`, creating it if needed, and cleans up after a crash: empties
    /// `tmp/`, deletes layer directories without a complete record (or unpacked with another id shift) and
    /// records without a directory, and deletes blobs no image needs any more.
    pub async fn open(
        data_dir: &Path,
        store: &Store,
        registry: Registry,
        config: ImageStoreConfig,
    ) -> Result<ImageStore, ImageStoreError> {
        let root = data_dir.join("oci");
        let paths = Paths {
            blobs: root.join("blobs").join("sha256"),
            layers: root.join("layers"),
            tmp: root.join("tmp"),
        };
        let tables = Tables {
            images: store.table("oci.images").map_err(ImageStoreError::Index)?,
            layers: store.table("oci.layers").map_err(ImageStoreError::Index)?,
            tags: store.table("oci.tags").map_err(ImageStoreError::Index)?,
        };
        let t = tables;
        let (images, layers) = store
            .read(move |txn| Ok((txn.all(t.images)?, txn.all(t.layers)?)))
            .await
            .map_err(ImageStoreError::Index)?;
        let last_use = images
            .iter()
            .map(|(_, i)| i.last_used_ms)
            .max()
            .unwrap_or(0);
        let sweep_paths = paths.clone();
        let stale = blocking("sweep", move || {
            sweep(&sweep_paths, &images, &layers, config.shift)
        })
        .await??;
        if !stale.is_empty() {
            warn!(
                layers = stale.len(),
                "image store: dropped incomplete or stale layers"
            );
            store
                .write(move |txn| {
                    for hex in &stale {
                        txn.delete(t.layers, hex)?;
                    }
                    Ok(())
                })
                .await
                .map_err(ImageStoreError::Index)?;
        }
        Ok(ImageStore {
            inner: Arc::new(Inner {
                paths,
                store: store.clone(),
                tables,
                registry,
                config,
                locks: KeyedLocks::default(),
                leases: Arc::new(Leases::default()),
                gc: tokio::sync::Mutex::new(()),
                clock: UseClock::after(last_use),
            }),
        })
    }

    /// The registry client (the bidder resolves images through it without pulling).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The manifest digest `image` is known to resolve to for `platform`, if that image is complete here
    /// (every layer unpacked with the current id shift). Reads the index only; no network.
    pub async fn cached(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<Option<Digest>, ImageStoreError> {
        let t = self.inner.tables;
        let key = tag_key(image, platform);
        let shift = self.inner.config.shift;
        let paths = self.inner.paths.clone();
        let record = self
            .inner
            .store
            .read(move |txn| {
                let Some(tag) = txn.get(t.tags, &key)? else {
                    return Ok(None);
                };
                let Some(record) = txn.get(t.images, tag.digest.hex())? else {
                    return Ok(None);
                };
                for l in &record.layers {
                    match txn.get(t.layers, l.diff_id.hex())? {
                        Some(lr) if lr.shift_base == shift.base && lr.shift_size == shift.size => {}
                        _ => return Ok(None),
                    }
                }
                Ok(Some(record))
            })
            .await
            .map_err(ImageStoreError::Index)?;
        Ok(record
            .filter(|r| r.layers.iter().all(|l| paths.layer(&l.diff_id).is_dir()))
            .map(|r| r.digest))
    }

    /// Pulls `image` for `platform` and returns its unpacked layers, leased until the [`Image`] is dropped.
    /// Skips whatever is already here (see the module docs for tags versus digests). Concurrent pulls of
    /// the same image or of shared layers are safe; they wait for each other per layer.
    ///
    /// Not cancel-safe in the sense of finishing the work, but safe to cancel: a dropped pull leaves at most
    /// a verified blob and a temp directory that the next open sweeps.
    pub async fn pull(
        &self,
        image: &ImageRef,
        platform: &Platform,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, PullError> {
        let started = Instant::now();
        let name = image.to_string();
        let index_err = |source| PullError::Index {
            image: name.clone(),
            source,
        };
        let t = self.inner.tables;
        let key = tag_key(image, platform);
        let lookup_key = key.clone();
        let pinned = image.digest().cloned();
        let node_platform = platform.clone();
        let known: Option<ImageRecord> = self
            .inner
            .store
            .read(move |txn| {
                if let Some(tag) = txn.get(t.tags, &lookup_key)? {
                    return txn.get(t.images, tag.digest.hex());
                }
                // A digest pinning a manifest this node already has (pulled under another name or by tag).
                // An index digest is found through the tag table once pulled that way.
                let Some(digest) = pinned else {
                    return Ok(None);
                };
                Ok(txn
                    .get(t.images, digest.hex())?
                    .filter(|r| node_platform.runs(&r.platform)))
            })
            .await
            .map_err(index_err)?;

        let mut from_cache = false;
        let mut record = match (image.digest(), known) {
            // Pinned and already known: content addressing makes the registry unnecessary.
            (Some(_), Some(record)) => record,
            (_, known) => match self.inner.registry.resolve_manifest(image, platform).await {
                Ok(manifest) => {
                    let digest_hex = manifest.digest.hex().to_owned();
                    let existing = self
                        .inner
                        .store
                        .read(move |txn| txn.get(t.images, &digest_hex))
                        .await
                        .map_err(index_err)?;
                    match existing {
                        Some(record) => record,
                        None => {
                            let resolved = self
                                .inner
                                .registry
                                .fetch_config(&manifest, platform)
                                .await?;
                            ImageRecord {
                                reference: name.clone(),
                                digest: resolved.digest,
                                platform: resolved.platform,
                                config: resolved.config,
                                layers: resolved.layers,
                                last_used_ms: 0,
                            }
                        }
                    }
                }
                Err(e) if e.is_unreachable() => match known {
                    Some(record) => {
                        warn!(image = %name, digest = %record.digest, error = %e,
                            "registry unreachable; using the image this tag last resolved to");
                        from_cache = true;
                        record
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            },
        };

        // Lease before looking at layers, so that GC (which checks leases under the same per-layer locks)
        // cannot delete a layer between our check and our use of it.
        let mut keys = vec![image_key(&record.digest)];
        keys.extend(record.layers.iter().map(|l| layer_key(&l.diff_id)));
        let lease = ImageLease {
            _lease: self.inner.leases.acquire(keys),
        };

        // Record the image before fetching layers: open and GC then see its blobs as wanted.
        record.reference = name.clone();
        record.last_used_ms = self.inner.clock.stamp();
        let to_store = record.clone();
        let missing: Vec<u64> = self
            .inner
            .store
            .write(move |txn| {
                txn.put(t.images, to_store.digest.hex(), &to_store)?;
                txn.put(
                    t.tags,
                    &key,
                    &TagRecord {
                        digest: to_store.digest.clone(),
                        resolved_ms: to_store.last_used_ms,
                    },
                )?;
                let mut missing = Vec::new();
                for l in &to_store.layers {
                    if txn.get(t.layers, l.diff_id.hex())?.is_none() {
                        missing.push(l.blob.size);
                    }
                }
                Ok(missing)
            })
            .await
            .map_err(index_err)?;
        progress(PullProgress::Resolved {
            digest: record.digest.clone(),
            layers: record.layers.len(),
            download_bytes: missing.iter().sum(),
            from_cache,
        });

        let mut layers = Vec::with_capacity(record.layers.len());
        let mut pulled_bytes = 0;
        for (index, layer) in record.layers.iter().enumerate() {
            let (path, fetched) = self.ensure_layer(image, index, layer, progress).await?;
            pulled_bytes += fetched;
            layers.push(path);
        }
        let took = started.elapsed();
        info!(image = %name, digest = %record.digest, layers = layers.len(), pulled_bytes,
            took_ms = took.as_millis(), "image ready");
        Ok(Image {
            reference: image.clone(),
            digest: record.digest,
            platform: record.platform,
            config: record.config,
            layers,
            pulled_bytes,
            took,
            lease,
        })
    }

    /// Makes layer `index` of `image` present (download + unpack unless already there) and returns its
    /// directory and the bytes downloaded.
    async fn ensure_layer(
        &self,
        image: &ImageRef,
        index: usize,
        layer: &LayerDescriptor,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(PathBuf, u64), PullError> {
        let name = image.to_string();
        let _lock = self.inner.locks.lock(&layer_key(&layer.diff_id)).await;
        let t = self.inner.tables;
        let shift = self.inner.config.shift;
        let dir = self.inner.paths.layer(&layer.diff_id);
        let diff_hex = layer.diff_id.hex().to_owned();
        let present = self
            .inner
            .store
            .read(move |txn| txn.get(t.layers, &diff_hex))
            .await
            .map_err(|source| PullError::Index {
                image: name.clone(),
                source,
            })?
            .is_some_and(|r| r.shift_base == shift.base && r.shift_size == shift.size);
        if present && tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            debug!(image = %name, diff_id = %layer.diff_id, "layer already unpacked");
            progress(PullProgress::LayerCached {
                index,
                diff_id: layer.diff_id.clone(),
            });
            return Ok((dir, 0));
        }

        let blob_path = self.inner.paths.blob(&layer.blob.digest);
        // A blob file only gets its name once verified, so one of the right size is the right content.
        let have_blob = tokio::fs::metadata(&blob_path)
            .await
            .is_ok_and(|m| m.is_file() && m.len() == layer.blob.size);
        let mut fetched = 0;
        if !have_blob {
            let total = layer.blob.size;
            let digest = layer.blob.digest.clone();
            let mut report = |received| {
                progress(PullProgress::Downloading {
                    index,
                    digest: digest.clone(),
                    received,
                    total,
                });
            };
            self.inner
                .registry
                .fetch_blob(image, &layer.blob, &blob_path, &mut report)
                .await?;
            fetched = total;
        }

        let job = UnpackJob {
            image: name.clone(),
            blob_path: blob_path.clone(),
            layer: layer.clone(),
            tmp: self.inner.paths.tmp.clone(),
            layers_dir: self.inner.paths.layers.clone(),
            dest: dir.clone(),
            shift,
            limits: self.inner.config.limits,
        };
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| PullError::Task {
                image: name.clone(),
                task: "unpack",
                reason: e.to_string(),
            })
            .and_then(|r| r);
        let unpacked = match outcome {
            Ok(u) => u,
            Err(e) => {
                // The blob is verified registry content, but it cannot become a layer: fetching it again
                // would not help, so do not keep it (a local I/O failure may be transient: keep it then).
                if !matches!(e, PullError::Io { .. }) {
                    let _ = tokio::fs::remove_file(&blob_path).await;
                }
                return Err(e);
            }
        };
        let took = started.elapsed();
        let record = LayerRecord {
            diff_id: layer.diff_id.clone(),
            blob: layer.blob.digest.clone(),
            disk_bytes: unpacked.disk_bytes,
            content_bytes: unpacked.bytes,
            entries: unpacked.entries,
            shift_base: shift.base,
            shift_size: shift.size,
            unpacked_ms: now_ms(),
        };
        self.inner
            .store
            .write(move |txn| txn.put(t.layers, record.diff_id.hex(), &record))
            .await
            .map_err(|source| PullError::Index {
                image: name.clone(),
                source,
            })?;
        // The layer is durable; the compressed copy is no longer needed.
        if let Err(e) = tokio::fs::remove_file(&blob_path).await {
            debug!(path = ?blob_path, error = %e, "could not remove an unpacked blob");
        }
        debug!(image = %name, diff_id = %layer.diff_id, entries = unpacked.entries,
            bytes = unpacked.bytes, took_ms = took.as_millis(), "layer unpacked");
        progress(PullProgress::LayerUnpacked {
            index,
            diff_id: layer.diff_id.clone(),
            entries: unpacked.entries,
            bytes: unpacked.bytes,
            took,
        });
        Ok((dir, fetched))
    }

    /// Bytes the store uses on disk: unpacked layers (allocated blocks, as recorded) and blobs.
    pub async fn usage(&self) -> Result<u64, ImageStoreError> {
        let t = self.inner.tables;
        let layers = self
            .inner
            .store
            .read(move |txn| txn.all(t.layers))
            .await
            .map_err(ImageStoreError::Index)?;
        let blobs_dir = self.inner.paths.blobs.clone();
        let blobs = blocking("blob scan", move || file_sizes(&blobs_dir)).await??;
        Ok(layers.iter().map(|(_, l)| l.disk_bytes).sum::<u64>() + blobs.values().sum::<u64>())
    }

    /// Frees space until the store uses at most `budget_bytes`: first layers no image refers to, then whole
    /// images, least recently pulled first. Leased images and layers are kept even if the budget cannot be
    /// met; a layer shared with a kept image is kept too.
    pub async fn gc(&self, budget_bytes: u64) -> Result<GcReport, ImageStoreError> {
        let _one_gc = self.inner.gc.lock().await;
        let t = self.inner.tables;
        let (images, layers) = self
            .inner
            .store
            .read(move |txn| Ok((txn.all(t.images)?, txn.all(t.layers)?)))
            .await
            .map_err(ImageStoreError::Index)?;
        let blobs_dir = self.inner.paths.blobs.clone();
        let blobs = blocking("blob scan", move || file_sizes(&blobs_dir)).await??;
        let layer_bytes: HashMap<String, u64> = layers
            .iter()
            .map(|(k, l)| (k.clone(), l.disk_bytes))
            .collect();
        let before = layer_bytes.values().sum::<u64>() + blobs.values().sum::<u64>();
        let mut report = GcReport {
            before_bytes: before,
            after_bytes: before,
            ..GcReport::default()
        };
        if before <= budget_bytes {
            return Ok(report);
        }

        // How many image records use each layer.
        let mut users: HashMap<String, usize> = HashMap::new();
        for (_, image) in &images {
            for l in &image.layers {
                *users.entry(l.diff_id.hex().to_owned()).or_default() += 1;
            }
        }
        // Unreferenced layers (left by failed pulls or removed images), oldest first.
        let mut orphans: Vec<&LayerRecord> = layers
            .iter()
            .filter(|(k, _)| !users.contains_key(k.as_str()))
            .map(|(_, l)| l)
            .collect();
        orphans.sort_by_key(|l| l.unpacked_ms);
        for layer in orphans {
            if report.after_bytes <= budget_bytes {
                break;
            }
            let removed = self
                .remove_layer(&layer.diff_id, Some(&layer.blob), &blobs, &layer_bytes)
                .await?;
            report.count(removed);
        }

        let mut by_age: Vec<&ImageRecord> = images.iter().map(|(_, i)| i).collect();
        by_age.sort_by_key(|i| i.last_used_ms);
        for image in by_age {
            if report.after_bytes <= budget_bytes {
                break;
            }
            if !self.forget_image(image).await? {
                continue;
            }
            report.images_removed += 1;
            info!(image = %image.reference, digest = %image.digest, "image evicted");
            for l in &image.layers {
                let hex = l.diff_id.hex();
                let Some(n) = users.get_mut(hex) else {
                    continue;
                };
                *n -= 1;
                if *n > 0 {
                    continue;
                }
                // The blob too: one left over from an interrupted pull of this image.
                let removed = self
                    .remove_layer(&l.diff_id, Some(&l.blob.digest), &blobs, &layer_bytes)
                    .await?;
                report.count(removed);
            }
        }
        if report.after_bytes > budget_bytes {
            warn!(
                budget_bytes,
                used_bytes = report.after_bytes,
                "image store is over budget, but the rest is in use"
            );
        }
        Ok(report)
    }

    /// Deletes `image`'s record and the tags pointing at it, unless it is leased. Checked inside the write
    /// transaction: a pull leases before it writes the record, and LMDB serialises the two writes.
    async fn forget_image(&self, image: &ImageRecord) -> Result<bool, ImageStoreError> {
        let t = self.inner.tables;
        let leases = self.inner.leases.clone();
        let digest = image.digest.clone();
        self.inner
            .store
            .write(move |txn| {
                if leases.is_leased(&image_key(&digest)) {
                    return Ok(false);
                }
                txn.delete(t.images, digest.hex())?;
                for (key, tag) in txn.all(t.tags)? {
                    if tag.digest == digest {
                        txn.delete(t.tags, &key)?;
                    }
                }
                Ok(true)
            })
            .await
            .map_err(ImageStoreError::Index)
    }

    /// Deletes an unpacked layer and its blob (either may be absent) unless a pull holds the layer or it is
    /// leased. Both are deleted under the layer's lock, so an in-flight pull never loses a blob it just
    /// downloaded.
    async fn remove_layer(
        &self,
        diff_id: &Digest,
        blob: Option<&Digest>,
        blobs: &HashMap<String, u64>,
        layer_bytes: &HashMap<String, u64>,
    ) -> Result<Removed, ImageStoreError> {
        let key = layer_key(diff_id);
        // Busy means a pull is working on it right now: it is in use.
        let Some(_lock) = self.inner.locks.try_lock(&key) else {
            return Ok(Removed::default());
        };
        if self.inner.leases.is_leased(&key) {
            return Ok(Removed::default());
        }
        let mut removed = Removed::default();
        if let Some(bytes) = layer_bytes.get(diff_id.hex()) {
            let t = self.inner.tables;
            let hex = diff_id.hex().to_owned();
            self.inner
                .store
                .write(move |txn| txn.delete(t.layers, &hex))
                .await
                .map_err(ImageStoreError::Index)?;
            let dir = self.inner.paths.layer(diff_id);
            let tmp = self.inner.paths.tmp.clone();
            blocking("layer removal", move || remove_tree_via(&dir, &tmp)).await??;
            removed.layer = true;
            removed.bytes += bytes;
        }
        if let Some(blob) = blob
            && let Some(size) = blobs.get(blob.hex())
        {
            let path = self.inner.paths.blob(blob);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => removed.bytes += size,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        debug!(diff_id = %diff_id, freed = removed.bytes, "layer removed");
        Ok(removed)
    }
}

/// What one [`ImageStore::remove_layer`] freed.
#[derive(Debug, Default)]
struct Removed {
    /// An unpacked layer was deleted.
    layer: bool,
    /// Bytes freed (layer and blob).
    bytes: u64,
}

impl GcReport {
    fn count(&mut self, removed: Removed) {
        self.after_bytes = self.after_bytes.saturating_sub(removed.bytes);
        if removed.layer {
            self.layers_removed += 1;
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<R: Send + 'static>(
    task: &'static str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ImageStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ImageStoreError::Task(task))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageStoreError {
    let path = path.to_owned();
    move |source| ImageStoreError::Io { op, path, source }
}

/// The crash clean-up done at open (see [`ImageStore::open`]); returns the layer records to delete.
fn sweep(
    paths: &Paths,
    images: &[(String, ImageRecord)],
    layers: &[(String, LayerRecord)],
    shift: IdShift,
) -> Result<Vec<String>, ImageStoreError> {
    for dir in [&paths.blobs, &paths.layers, &paths.tmp] {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    for entry in std::fs::read_dir(&paths.tmp).map_err(io_err("list", &paths.tmp))? {
        let path = entry.map_err(io_err("list", &paths.tmp))?.path();
        remove_any(&path).map_err(io_err("remove", &path))?;
    }
    let good: HashMap<&str, &LayerRecord> = layers
        .iter()
        .filter(|(_, l)| l.shift_base == shift.base && l.shift_size == shift.size)
        .map(|(k, l)| (k.as_str(), l))
        .collect();
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(&paths.layers).map_err(io_err("list", &paths.layers))? {
        let entry = entry.map_err(io_err("list", &paths.layers))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if good.contains_key(name.as_str()) && entry.path().is_dir() {
            on_disk.push(name);
        } else {
            remove_tree_via(&entry.path(), &paths.tmp)?;
        }
    }
    let stale: Vec<String> = layers
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !on_disk.contains(k))
        .collect();
    // Blobs still wanted: layers of known images that are not unpacked yet.
    let wanted: Vec<&str> = images
        .iter()
        .flat_map(|(_, i)| &i.layers)
        .filter(|l| !on_disk.iter().any(|d| d == l.diff_id.hex()))
        .map(|l| l.blob.digest.hex())
        .collect();
    for entry in std::fs::read_dir(&paths.blobs).map_err(io_err("list", &paths.blobs))? {
        let entry = entry.map_err(io_err("list", &paths.blobs))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Partial downloads (dot names) and blobs no image needs.
        if !wanted.contains(&name.as_str()) {
            let path = entry.path();
            remove_any(&path).map_err(io_err("remove", &path))?;
        }
    }
    Ok(stale)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a directory tree by first renaming it into `tmp`, so an interrupted removal never leaves a
/// partial tree under a name that looks valid.
fn remove_tree_via(path: &Path, tmp: &Path) -> Result<(), ImageStoreError> {
    let doomed = tmp.join(format!("gc-{}", uuid::Uuid::new_v4()));
    match std::fs::rename(path, &doomed) {
        Ok(()) => remove_any(&doomed).map_err(io_err("remove", &doomed)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("move aside", path)(e)),
    }
}

/// Sizes of the plain files in `dir`, by name.
fn file_sizes(dir: &Path) -> Result<HashMap<String, u64>, ImageStoreError> {
    let mut sizes = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Ok(m) = entry.metadata()
            && m.is_file()
        {
            sizes.insert(entry.file_name().to_string_lossy().into_owned(), m.len());
        }
    }
    Ok(sizes)
}

/// Disk space of a tree: allocated blocks of every entry, not following symlinks. Iterative, so a
/// deeply nested layer cannot overflow the stack.
fn disk_usage(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total + std::fs::symlink_metadata(root)?.blocks() * 512)
}

/// One layer's unpack, run on the blocking pool.
struct UnpackJob {
    image: String,
    blob_path: PathBuf,
    layer: LayerDescriptor,
    tmp: PathBuf,
    layers_dir: PathBuf,
    dest: PathBuf,
    shift: IdShift,
    limits: UnpackLimits,
}

struct Unpacked {
    entries: u64,
    bytes: u64,
    disk_bytes: u64,
}

impl UnpackJob {
    fn run(self) -> Result<Unpacked, PullError> {
        let work = self.tmp.join(format!(
            "layer-{}-{}",
            self.layer.diff_id.hex(),
            uuid::Uuid::new_v4()
        ));
        let result = self.unpack_into(&work);
        if result.is_err() {
            let _ = remove_any(&work);
        }
        result
    }

    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PullError {
        let image = self.image.clone();
        let path = path.to_owned();
        move |source| PullError::Io {
            image,
            op,
            path,
            source,
        }
    }

    fn unpack_into(&self, work: &Path) -> Result<Unpacked, PullError> {
        std::fs::create_dir(work).map_err(self.io("create", work))?;
        let file =
            std::fs::File::open(&self.blob_path).map_err(self.io("open", &self.blob_path))?;
        let buffered = BufReader::with_capacity(READ_BUFFER, file);
        let decompressed: Box<dyn Read> = match self.layer.compression {
            Compression::None => Box::new(buffered),
            // Multi-member: Go's gzip reader (and so Docker) reads concatenated members as one stream.
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(ZstdFrames::new(buffered)),
        };
        // The uncompressed stream may not exceed what the limits allow plus tar's own overhead (headers and
        // padding, generously 4 KiB per entry): this also bounds the drain below, which no tar reader checks.
        let cap = self
            .limits
            .max_bytes
            .saturating_add(self.limits.max_entries.saturating_mul(4096))
            .saturating_add(1 << 20);
        let mut hashing = HashingReader::new(decompressed, cap);
        let unpack_error = |source: UnpackError, over: bool| PullError::Unpack {
            image: self.image.clone(),
            layer: self.layer.blob.digest.clone(),
            source: if over {
                UnpackError::TooLarge(format!("the uncompressed layer exceeds {cap} bytes"))
            } else {
                source
            },
        };
        let stats = match apply_layer(&mut hashing, work, self.shift, self.limits) {
            Ok(stats) => stats,
            Err(e) => return Err(unpack_error(e, hashing.over_cap)),
        };
        // The diff id covers the whole stream, including what follows the tar end-of-archive blocks.
        if let Err(e) = io::copy(&mut hashing, &mut io::sink()) {
            let over = hashing.over_cap;
            return Err(unpack_error(
                UnpackError::Corrupt(format!("reading the rest of the layer: {e}")),
                over,
            ));
        }
        let actual = hashing.finish();
        if actual != self.layer.diff_id {
            return Err(PullError::DiffIdMismatch {
                image: self.image.clone(),
                layer: self.layer.blob.digest.clone(),
                expected: self.layer.diff_id.clone(),
                actual,
            });
        }
        let disk_bytes = disk_usage(work).map_err(self.io("measure", work))?;
        // Flush the layer's data before it gets its final name: after a power cut a layer is either absent
        // or whole. One syncfs instead of an fsync per file (layers have thousands).
        let dir = std::fs::File::open(work).map_err(self.io("open", work))?;
        nix::unistd::syncfs(dir.as_raw_fd())
            .map_err(|e| self.io("sync", work)(io::Error::from(e)))?;
        drop(dir);
        // A directory left under the final name (unpacked with another id shift) is replaced.
        remove_tree_via(&self.dest, &self.tmp).map_err(|e| match e {
            ImageStoreError::Io { op, path, source } => PullError::Io {
                image: self.image.clone(),
                op,
                path,
                source,
            },
            other => PullError::Io {
                image: self.image.clone(),
                op: "replace",
                path: self.dest.clone(),
                source: io::Error::other(other.to_string()),
            },
        })?;
        std::fs::rename(work, &self.dest).map_err(self.io("rename into place", &self.dest))?;
        std::fs::File::open(&self.layers_dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("sync", &self.layers_dir))?;
        Ok(Unpacked {
            entries: stats.entries,
            bytes: stats.bytes,
            disk_bytes,
        })
    }
}

/// Hashes (sha256) and counts what passes through, and fails once more than `cap` bytes have.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    read: u64,
    cap: u64,
    /// Set when the cap was hit (the error the reader returns may be re-wrapped by the tar reader).
    over_cap: bool,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R, cap: u64) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            read: 0,
            cap,
            over_cap: false,
        }
    }

    fn finish(self) -> Digest {
        Digest::from_sha256(self.hasher.finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            self.over_cap = true;
            return Err(io::Error::other(
                "layer larger than the unpack limits allow",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A zstd stream of any number of frames (ruzstd's streaming decoder reads one), skipping skippable frames
/// (zstd:chunked puts its table of contents in one).
struct ZstdFrames<R> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    /// True while a frame is being decoded.
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        Self {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                    self.decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(io::Error::other)?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                    self.in_frame = false;
                }
                continue;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_reader_hashes_and_caps() {
        let data = vec![7u8; 10_000];
        let mut r = HashingReader::new(&data[..], 20_000);
        io::copy(&mut r, &mut io::sink()).expect("copy");
        assert_eq!(r.finish(), Digest::sha256_of(&data));
        let mut capped = HashingReader::new(&data[..], 5_000);
        assert!(io::copy(&mut capped, &mut io::sink()).is_err());
        assert!(capped.over_cap);
    }

    #[test]
    fn zstd_reader_decodes_several_frames_and_skips_skippable_ones() {
        use ruzstd::encoding::{CompressionLevel, compress_to_vec};
        let a = b"first frame ".repeat(1000);
        let b = b"second frame".repeat(1000);
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        // A skippable frame: magic 0x184D2A50..5F, then a 4-byte little-endian length.
        stream.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        stream.extend_from_slice(&5u32.to_le_bytes());
        stream.extend_from_slice(b"hello");
        stream.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut out = Vec::new();
        ZstdFrames::new(&stream[..])
            .read_to_end(&mut out)
            .expect("decode");
        assert_eq!(out, [a, b].concat());
        let mut garbage = Vec::new();
        assert!(
            ZstdFrames::new(&b"not zstd at all"[..])
                .read_to_end(&mut garbage)
                .is_err()
        );
    }

    #[test]
    fn disk_usage_counts_blocks_without_following_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 10_000]).expect("write");
        std::os::unix::fs::symlink("/usr", dir.path().join("a/link")).expect("symlink");
        let used = disk_usage(dir.path()).expect("du");
        assert!((10_000..1_000_000).contains(&used), "{used}");
    }

    #[test]
    fn sweep_drops_partial_work_and_unwanted_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths {
            blobs: dir.path().join("blobs/sha256"),
            layers: dir.path().join("layers"),
            tmp: dir.path().join("tmp"),
        };
        let shift = IdShift {
            base: 100_000,
            size: 65_536,
        };
        for d in [&paths.blobs, &paths.layers, &paths.tmp] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let complete = Digest::sha256_of(b"complete");
        let half = Digest::sha256_of(b"half");
        let old_shift = Digest::sha256_of(b"old shift");
        let lost = Digest::sha256_of(b"lost");
        let wanted_blob = Digest::sha256_of(b"wanted blob");
        let unwanted_blob = Digest::sha256_of(b"unwanted blob");
        for d in [&complete, &half, &old_shift] {
            std::fs::create_dir(paths.layer(d)).expect("layer dir");
        }
        std::fs::create_dir_all(paths.tmp.join("layer-x/etc")).expect("tmp work");
        std::fs::write(paths.blob(&wanted_blob), b"w").expect("blob");
        std::fs::write(paths.blob(&unwanted_blob), b"u").expect("blob");
        std::fs::write(paths.blobs.join(".x.partial-1"), b"p").expect("partial");
        let record = |diff_id: &Digest, base| {
            (
                diff_id.hex().to_owned(),
                LayerRecord {
                    diff_id: diff_id.clone(),
                    blob: diff_id.clone(),
                    disk_bytes: 1,
                    content_bytes: 1,
                    entries: 1,
                    shift_base: base,
                    shift_size: 65_536,
                    unpacked_ms: 0,
                },
            )
        };
        let layers = vec![
            record(&complete, 100_000),
            record(&old_shift, 0),
            record(&lost, 100_000),
        ];
        let image = ImageRecord {
            reference: "x".into(),
            digest: Digest::sha256_of(b"m"),
            platform: Platform::host(),
            config: ImageConfig::default(),
            layers: vec![LayerDescriptor {
                blob: crate::oci::registry::BlobDescriptor {
                    digest: wanted_blob.clone(),
                    size: 1,
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                },
                compression: Compression::None,
                diff_id: Digest::sha256_of(b"not unpacked yet"),
            }],
            last_used_ms: 0,
        };
        let mut stale = sweep(&paths, &[("m".into(), image)], &layers, shift).expect("sweep");
        stale.sort();
        let mut want = vec![old_shift.hex().to_owned(), lost.hex().to_owned()];
        want.sort();
        assert_eq!(stale, want);
        assert!(paths.layer(&complete).is_dir());
        assert!(!paths.layer(&half).exists(), "no record: incomplete");
        assert!(!paths.layer(&old_shift).exists(), "other shift");
        assert_eq!(std::fs::read_dir(&paths.tmp).expect("tmp").count(), 0);
        assert!(paths.blob(&wanted_blob).exists());
        assert!(!paths.blob(&unwanted_blob).exists());
        assert!(!paths.blobs.join(".x.partial-1").exists());
    }
}
