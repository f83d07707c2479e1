//! The `ipfs` source: `Params.CID` (and optionally `Params.Path` inside the DAG, a Cod extension) fetched
//! through the node's [`Fetcher`] (local store → bitswap peers → gateways → Kubo RPC, every block verified)
//! and exported into the input's scratch directory: a file becomes a file at the target, a directory a
//! directory.
//!
//! The whole DAG is fetched before anything is written, so a fetch that fails or times out leaves the
//! scratch directory empty; the execution then fails with a reason naming every source tried.

use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{ContentId, StorageError, StorageSource, Volume};
use crate::ipfs::fetch::Fetcher;
use crate::ipfs::unixfs::export;
use crate::ipfs::{Cid, LocalSource};
use crate::model::{InputSpec, SourceKind};

/// Prepares `ipfs` inputs; see the module docs.
#[derive(Debug, Clone)]
pub struct IpfsSource {
    /// Gets DAGs into the node's block store.
    fetcher: Fetcher,
    /// Longest fetch of one input.
    timeout: Duration,
    /// The most file bytes one input may unpack to (`InputSources.MaxSize`).
    max_bytes: u64,
}

/// The most files, directories and symlinks one input may unpack to.
const MAX_ENTRIES: u64 = 1_000_000;

// === impl IpfsSource ===

impl IpfsSource {
    /// A source fetching through `fetcher`, each input within `timeout` and `max_bytes` of file content.
    pub fn new(fetcher: Fetcher, timeout: Duration, max_bytes: u64) -> Self {
        Self {
            fetcher,
            timeout,
            max_bytes,
        }
    }

    /// What identifies the input's content, for the input cache: the CID (plus the path inside it). Cheap:
    /// a CID names its content, so nothing needs fetching.
    fn identity(spec: &InputSpec) -> Option<ContentId> {
        match spec {
            InputSpec::Ipfs { cid, path } if path.is_empty() => {
                Some(ContentId::new(SourceKind::Ipfs, cid))
            }
            InputSpec::Ipfs { cid, path } => {
                Some(ContentId::new(SourceKind::Ipfs, format!("{cid}/{path}")))
            }
            _ => None,
        }
    }
}

fn parse(spec: &InputSpec) -> Result<(Cid, &str), StorageError> {
    let InputSpec::Ipfs { cid, path } = spec else {
        return Err(StorageError::WrongKind {
            kind: spec.type_name().to_owned(),
            backend: SourceKind::Ipfs.as_str(),
        });
    };
    let parsed = cid.parse::<Cid>().map_err(|e| StorageError::NotFound {
        what: format!("ipfs input {cid:?} (not a CID: {e})"),
    })?;
    // The path picks a part of the exported DAG; it must stay inside it.
    if !Path::new(path.as_str())
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(StorageError::NotFound {
            what: format!("path {path:?} inside {cid} (only plain relative paths are allowed)"),
        });
    }
    Ok((parsed, path.as_str()))
}

#[async_trait]
impl StorageSource for IpfsSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Ipfs
    }

    fn validate(&self, spec: &InputSpec) -> Result<(), StorageError> {
        parse(spec).map(|_| ())
    }

    async fn content_id(&self, spec: &InputSpec) -> Result<Option<ContentId>, StorageError> {
        parse(spec)?;
        Ok(Self::identity(spec))
    }

    async fn prepare(&self, spec: &InputSpec, scratch: &Path) -> Result<Volume, StorageError> {
        let (cid, path) = parse(spec)?;
        let unavailable = |reason: String| StorageError::IpfsUnavailable {
            cid: cid.to_string(),
            sources: self.fetcher.describe_sources().join(", "),
            reason,
        };
        match tokio::time::timeout(self.timeout, self.fetcher.fetch_dag(cid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unavailable(crate::errors::chain(&e))),
            Err(_) => {
                return Err(unavailable(format!(
                    "no source provided it within {:?} (Ipfs.FetchTimeout); check that a peer or gateway \
                     has it",
                    self.timeout
                )));
            }
        }
        let dest = scratch.join("ipfs");
        let local = LocalSource(Arc::clone(self.fetcher.store()));
        let limits = export::ExportLimits::new(self.max_bytes, MAX_ENTRIES);
        export::get_limited(&local, &cid, &dest, &limits)
            .await
            .map_err(|e| match e {
                export::ExportError::TooLarge { .. } => StorageError::TooLarge {
                    what: format!("ipfs://{cid}"),
                    limit: self.max_bytes,
                },
                export::ExportError::UnsafeName { name, .. } => {
                    StorageError::UnsafeArchive { entry: name }
                }
                export::ExportError::UnsafeSymlink { target, .. } => {
                    StorageError::UnsafeArchive { entry: target }
                }
                e => StorageError::Download {
                    url: format!("ipfs://{cid}"),
                    reason: crate::errors::chain(&e),
                },
            })?;
        let host_path = if path.is_empty() {
            dest
        } else {
            dest.join(path)
        };
        if tokio::fs::symlink_metadata(&host_path).await.is_err() {
            return Err(StorageError::NotFound {
                what: format!("path {path:?} inside {cid}"),
            });
        }
        Ok(Volume {
            host_path,
            read_only: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::MemoryBlockStore;
    use crate::ipfs::unixfs::{ImportOptions, import_path};

    #[tokio::test]
    async fn exports_a_held_directory_and_a_path_inside_it() {
        let src = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(src.path().join("d")).expect("mkdir");
        std::fs::write(src.path().join("d/a.txt"), b"hello").expect("write");
        let store = Arc::new(MemoryBlockStore::new());
        let root = import_path(&*store, &src.path().join("d"), &ImportOptions::default())
            .expect("import")
            .cid;
        let source = IpfsSource::new(Fetcher::new(store), Duration::from_secs(5), 1 << 30);

        let scratch = tempfile::tempdir().expect("tmp");
        let spec = InputSpec::Ipfs {
            cid: root.to_string(),
            path: String::new(),
        };
        let volume = source
            .prepare(&spec, scratch.path())
            .await
            .expect("prepared");
        assert_eq!(
            std::fs::read(volume.host_path.join("a.txt")).expect("read"),
            b"hello"
        );

        let scratch = tempfile::tempdir().expect("tmp");
        let spec = InputSpec::Ipfs {
            cid: root.to_string(),
            path: "a.txt".into(),
        };
        let volume = source
            .prepare(&spec, scratch.path())
            .await
            .expect("prepared");
        assert_eq!(std::fs::read(&volume.host_path).expect("read"), b"hello");
        assert_eq!(
            IpfsSource::identity(&spec).as_ref().map(ContentId::as_str),
            Some(format!("ipfs:{root}/a.txt").as_str())
        );
    }

    #[tokio::test]
    async fn a_cid_nobody_has_fails_naming_the_sources() {
        let source = IpfsSource::new(
            Fetcher::new(Arc::new(MemoryBlockStore::new())),
            Duration::from_secs(5),
            1 << 30,
        );
        let scratch = tempfile::tempdir().expect("tmp");
        let spec = InputSpec::Ipfs {
            cid: "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN".into(),
            path: String::new(),
        };
        let err = source
            .prepare(&spec, scratch.path())
            .await
            .expect_err("missing");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "CID QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN could not be fetched from any of: the local store"
            ),
            "{text}"
        );
        assert!(
            std::fs::read_dir(scratch.path())
                .expect("dir")
                .next()
                .is_none()
        );
        for bad in ["../x", "/etc/passwd"] {
            let spec = InputSpec::Ipfs {
                cid: "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN".into(),
                path: bad.into(),
            };
            assert!(source.validate(&spec).is_err(), "{bad}");
        }
    }
}
