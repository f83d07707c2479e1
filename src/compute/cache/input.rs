//! The input cache: prepared input volumes keyed by their [`ContentId`], under `<data dir>/cache/inputs`.
//!
//! A hit gives the cached volume itself, read-only and leased for the execution, so nothing is fetched or
//! copied; a volume a source marks writable gets a private copy in the execution's scratch instead, since a
//! task must never change what other executions will be served. A miss prepares the input in a staging
//! directory through its own source, then caches it. Cache trouble (disk, index) never fails an input: it
//! falls back to preparing the input without the cache.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{CacheError, Commit, DiskCache, Hit, Lease, copy_tree, remove_any, sha256_hex};
use crate::model::InputSpec;
use crate::storage::{ContentId, StorageError, StorageSource, Volume};
use crate::store::Store;

/// What an input-cache entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InputMeta {
    /// The content id (the key is its hash), for operators reading the index.
    pub content_id: String,
    /// The volume inside the entry directory, relative (`""`: the directory itself).
    pub volume: String,
    /// Whether the source made it read-only.
    pub read_only: bool,
}

/// A prepared input and, when it is served from the cache, the lease that keeps it there: hold it until the
/// execution no longer uses the volume.
#[derive(Debug)]
pub(crate) struct CachedInput {
    /// The volume to give the executor.
    pub volume: Volume,
    /// Set when the volume lives in the cache.
    pub lease: Option<Lease>,
    /// Whether it came from the cache without being fetched.
    pub hit: bool,
}

/// The input cache; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct InputCache {
    cache: DiskCache<InputMeta>,
}

// === impl InputCache ===

impl InputCache {
    /// Opens the cache in `root` (see [`DiskCache::open`]).
    pub async fn open(root: &Path, store: &Store, budget: u64) -> Result<Self, CacheError> {
        Ok(Self {
            cache: DiskCache::open("input", root, store, "compute.input_cache", budget).await?,
        })
    }

    /// Prepares `spec`, whose content is `id`, through `source`: from the cache when it holds `id`, else
    /// fetched once into the cache. Concurrent calls for one id fetch it once; the others wait and hit.
    /// `scratch` is the execution's own directory for this input, made here only when something goes there
    /// (a writable copy, an entry too large to keep, the fallback when the cache fails): a read-only hit
    /// makes no folder, and the execution's folder has one less to strip when it is recycled.
    pub async fn prepare(
        &self,
        id: &ContentId,
        source: &dyn StorageSource,
        spec: &InputSpec,
        scratch: &Path,
    ) -> Result<CachedInput, StorageError> {
        match self.try_prepare(id, source, spec, scratch).await {
            Ok(prepared) => prepared,
            Err(e) => {
                warn!(content_id = %id, error = %e, "input cache unavailable; preparing without it");
                let volume = crate::storage::prepare_in(source, spec, scratch).await?;
                Ok(CachedInput {
                    volume,
                    lease: None,
                    hit: false,
                })
            }
        }
    }

    /// The outer `Err` is the cache's failure (fall back); the inner one the source's (fail the input).
    async fn try_prepare(
        &self,
        id: &ContentId,
        source: &dyn StorageSource,
        spec: &InputSpec,
        scratch: &Path,
    ) -> Result<Result<CachedInput, StorageError>, CacheError> {
        let key = sha256_hex(id.as_str());
        let guard = self.cache.lock(&key).await;
        if let Some(hit) = self.cache.lookup(&guard).await? {
            return Ok(serve(hit, scratch, true).await);
        }
        let staging = self.cache.staging().await?;
        let volume = match source.prepare(spec, staging.path()).await {
            Ok(v) => v,
            Err(e) => {
                staging.discard().await;
                return Ok(Err(e));
            }
        };
        let Some(relative) = volume
            .host_path
            .strip_prefix(staging.path())
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_owned)
        else {
            // The source put the volume elsewhere (it binds a host path): nothing here to cache.
            debug!(content_id = %id, "the source's volume is outside its scratch; not cached");
            staging.discard().await;
            return Ok(Ok(CachedInput {
                volume,
                lease: None,
                hit: false,
            }));
        };
        let meta = InputMeta {
            content_id: id.to_string(),
            volume: relative.clone(),
            read_only: volume.read_only,
        };
        match self.cache.commit(&guard, staging, meta).await? {
            Commit::Cached(hit) => Ok(serve(hit, scratch, false).await),
            Commit::TooLarge(staging) => {
                // Used once, from the execution's scratch: the staging dir moves there.
                let from = staging.path().to_owned();
                let to = scratch.to_owned();
                let moved = tokio::task::spawn_blocking(move || {
                    remove_any(&to)?;
                    make_parent(&to)?;
                    std::fs::rename(&from, &to).or_else(|_| copy_tree(&from, &to))
                })
                .await;
                match moved {
                    Ok(Ok(())) => {
                        // Renamed (nothing left) or copied (the drop removes the original).
                        drop(staging);
                        Ok(Ok(CachedInput {
                            volume: Volume {
                                host_path: join(scratch, &relative),
                                read_only: volume.read_only,
                            },
                            lease: None,
                            hit: false,
                        }))
                    }
                    Ok(Err(source)) => Err(CacheError::Io {
                        cache: "input",
                        op: "move to the execution",
                        path: scratch.to_owned(),
                        source,
                    }),
                    Err(_) => Err(CacheError::Task {
                        cache: "input",
                        task: "move",
                    }),
                }
            }
        }
    }
}

/// The volume of a cached entry: the entry itself when read-only (leased), else a private copy in `scratch`.
async fn serve(
    hit: Hit<InputMeta>,
    scratch: &Path,
    from_cache: bool,
) -> Result<CachedInput, StorageError> {
    let path = join(&hit.dir, &hit.entry.meta.volume);
    if hit.entry.meta.read_only {
        return Ok(CachedInput {
            volume: Volume {
                host_path: path,
                read_only: true,
            },
            lease: Some(hit.lease),
            hit: from_cache,
        });
    }
    let target = join(scratch, &hit.entry.meta.volume);
    let (from, to) = (path.clone(), target.clone());
    // The lease keeps the entry while it is copied; the copy is the execution's own.
    let copied = tokio::task::spawn_blocking(move || {
        make_parent(&to)?;
        copy_tree(&from, &to)
    })
    .await
    .map_err(|e| StorageError::Io {
        op: "copying cached input to",
        path: target.clone(),
        source: std::io::Error::other(e),
    })?;
    copied.map_err(StorageError::io("copying cached input to", &target))?;
    drop(hit.lease);
    Ok(CachedInput {
        volume: Volume {
            host_path: target,
            read_only: false,
        },
        lease: None,
        hit: from_cache,
    })
}

/// Makes the folder `path` goes in (the execution's scratch folders are made only when used).
fn make_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// `base/relative`, where an empty `relative` is `base` itself.
fn join(base: &Path, relative: &str) -> PathBuf {
    if relative.is_empty() {
        base.to_owned()
    } else {
        base.join(relative)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::model::SourceKind;
    use crate::storage::inline::InlineSource;

    /// The real inline source, counting how often it really prepares (a wrapper, not a mock: the work is
    /// the real source's).
    #[derive(Debug, Default)]
    struct Counting {
        inner: InlineSource,
        prepared: AtomicUsize,
        writable: bool,
    }

    #[async_trait]
    impl StorageSource for Counting {
        fn kind(&self) -> SourceKind {
            SourceKind::Inline
        }
        fn validate(&self, spec: &InputSpec) -> Result<(), StorageError> {
            self.inner.validate(spec)
        }
        async fn prepare(&self, spec: &InputSpec, scratch: &Path) -> Result<Volume, StorageError> {
            self.prepared.fetch_add(1, Ordering::SeqCst);
            let mut v = self.inner.prepare(spec, scratch).await?;
            v.read_only = !self.writable;
            Ok(v)
        }
        async fn content_id(&self, spec: &InputSpec) -> Result<Option<ContentId>, StorageError> {
            self.inner.content_id(spec).await
        }
    }

    fn spec(text: &str) -> InputSpec {
        InputSpec::Inline {
            url: format!("data:,{text}"),
        }
    }

    async fn setup(budget: u64) -> (tempfile::TempDir, InputCache) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state"), &Default::default()).expect("store");
        let cache = InputCache::open(&dir.path().join("inputs"), &store, budget)
            .await
            .expect("open");
        (dir, cache)
    }

    async fn prepare(
        cache: &InputCache,
        source: &Counting,
        spec: &InputSpec,
        scratch: &Path,
    ) -> CachedInput {
        let id = source.content_id(spec).await.expect("id").expect("some");
        cache
            .prepare(&id, source, spec, scratch)
            .await
            .expect("prepare")
    }

    #[tokio::test]
    async fn fetches_once_and_serves_the_cached_copy_read_only() {
        let (dir, cache) = setup(1 << 20).await;
        let source = Counting::default();
        let first = prepare(&cache, &source, &spec("hello"), &dir.path().join("s1")).await;
        assert!(!first.hit && first.lease.is_some());
        let second = prepare(&cache, &source, &spec("hello"), &dir.path().join("s2")).await;
        assert!(second.hit && second.volume.read_only);
        assert_eq!(second.volume, first.volume, "the same cached file");
        assert_eq!(
            std::fs::read_to_string(&second.volume.host_path).expect("read"),
            "hello"
        );
        assert_eq!(source.prepared.load(Ordering::SeqCst), 1);
        assert!(
            !dir.path().join("s2").exists(),
            "no scratch folder made, nothing copied, for a read-only input"
        );
        // Other content is another entry.
        prepare(&cache, &source, &spec("other"), &dir.path().join("s3")).await;
        assert_eq!(source.prepared.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn writable_volumes_get_a_private_copy() {
        let (dir, cache) = setup(1 << 20).await;
        let source = Counting {
            writable: true,
            ..Counting::default()
        };
        // As an execution's scratch is: in a folder not made yet either.
        let s1 = dir.path().join("e1/inputs/0");
        let first = prepare(&cache, &source, &spec("hello"), &s1).await;
        assert_eq!(first.volume.host_path, s1.join("inline"));
        assert!(!first.volume.read_only && first.lease.is_none());
        std::fs::write(&first.volume.host_path, "changed by the task").expect("write");
        let s2 = dir.path().join("s2");
        let second = prepare(&cache, &source, &spec("hello"), &s2).await;
        assert!(second.hit);
        assert_eq!(
            std::fs::read_to_string(&second.volume.host_path).expect("read"),
            "hello",
            "a task's writes never reach the cache"
        );
    }

    #[tokio::test]
    async fn concurrent_preparations_of_one_content_fetch_once() {
        let (dir, cache) = setup(1 << 20).await;
        let source = Arc::new(Counting::default());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..4 {
            let (cache, source) = (cache.clone(), Arc::clone(&source));
            let scratch = dir.path().join(format!("s{i}"));
            tasks.spawn(async move {
                prepare(&cache, &source, &spec("shared"), &scratch)
                    .await
                    .volume
            });
        }
        let volumes: Vec<Volume> = tasks.join_all().await;
        assert!(volumes.windows(2).all(|w| w[0] == w[1]), "{volumes:?}");
        assert_eq!(source.prepared.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn inputs_larger_than_the_budget_are_used_once_from_scratch() {
        let (dir, cache) = setup(3).await;
        let source = Counting::default();
        let scratch = dir.path().join("e1/inputs/0");
        let got = prepare(&cache, &source, &spec("too big"), &scratch).await;
        assert_eq!(got.volume.host_path, scratch.join("inline"));
        assert!(got.lease.is_none() && !got.hit);
        assert_eq!(
            std::fs::read_to_string(&got.volume.host_path).expect("read"),
            "too big"
        );
        prepare(&cache, &source, &spec("too big"), &dir.path().join("s2")).await;
        assert_eq!(source.prepared.load(Ordering::SeqCst), 2, "never cached");
    }

    #[tokio::test]
    async fn a_failed_preparation_caches_nothing() {
        let (dir, cache) = setup(1 << 20).await;
        let source = Counting::default();
        let bad = InputSpec::Inline {
            url: "data:;base64,!!!".into(),
        };
        let id = source.content_id(&bad).await.expect("id").expect("some");
        let scratch = dir.path().join("s1");
        std::fs::create_dir_all(&scratch).expect("scratch");
        let err = cache.prepare(&id, &source, &bad, &scratch).await;
        assert!(
            matches!(err, Err(StorageError::BadInline { .. })),
            "{err:?}"
        );
        assert!(cache.cache.keys_by_age().await.is_empty());
        let tmp = dir.path().join("inputs/tmp");
        assert_eq!(std::fs::read_dir(tmp).expect("tmp").count(), 0);
    }
}
