//! Storage sources: bring an input to local disk. One backend per source type, each behind [`StorageSource`].
//! Backends see only specs and paths: never the store, the transport or each other.
//!
//! A source may also name an input's content before fetching it ([`StorageSource::content_id`]); the compute
//! node's input cache (`compute::cache`) keys prepared volumes by that id, and its result cache keys whole
//! executions by the ids of their inputs. A source that cannot name content cheaply keeps the default
//! (`None`: never cached).

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::model::{InputSpec, SourceKind};

pub mod archive;
mod filename;
pub mod inline;
#[cfg(feature = "ipfs")]
pub mod ipfs;
pub mod local;
#[cfg(feature = "storage-s3")]
pub mod s3;
#[cfg(feature = "storage-url")]
pub mod url;

/// A prepared input on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// A file or directory on the host.
    pub host_path: PathBuf,
    /// Whether the task may write to it.
    pub read_only: bool,
}

/// An input that could not be prepared. Messages name the input and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The spec is for another backend (a registry bug) or malformed.
    #[error("input of type {kind} cannot be handled by the {backend} source")]
    WrongKind {
        /// The input's type.
        kind: String,
        /// This backend.
        backend: &'static str,
    },
    /// A local path outside the node's allow-list.
    #[error(
        "local path {path:?} is not allowed on this node (allowed: {allowed}); ask the operator to add it to --allow-listed-local-paths"
    )]
    NotAllowed {
        /// The path.
        path: String,
        /// The allow-list, for the message.
        allowed: String,
    },
    /// The input does not exist.
    #[error("input {what} does not exist")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A `data:` URL that does not decode.
    #[error("inline data is malformed: {reason}")]
    BadInline {
        /// Why.
        reason: String,
    },
    /// An archive entry that would land outside the target directory.
    #[error("archive entry {entry:?} escapes the input directory")]
    UnsafeArchive {
        /// The entry's path.
        entry: String,
    },
    /// A download failed.
    #[error("downloading {url} failed: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// An IPFS DAG that no configured source could provide in time.
    #[error("CID {cid} could not be fetched from any of: {sources} ({reason})")]
    IpfsUnavailable {
        /// The CID.
        cid: String,
        /// Every source asked, in order.
        sources: String,
        /// What they answered, or that the fetch timed out; and what to do.
        reason: String,
    },
    /// The input is larger than allowed.
    #[error("input {what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Which input.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A download whose content does not have the checksum the input asked for. Nothing of it is kept.
    #[error(
        "downloading {url} gave content with sha256:{actual}, but the input's Checksum is sha256:{expected}; fix the Checksum or the URL"
    )]
    ChecksumMismatch {
        /// The URL, without userinfo.
        url: String,
        /// The checksum the input asked for (hex).
        expected: String,
        /// The checksum of what was received (hex).
        actual: String,
    },
    /// The spec's parameters cannot be used (a bad regex, checksum or endpoint).
    #[error("input {what} cannot be used: {reason}")]
    BadSpec {
        /// Which input.
        what: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The bytes received do not have the checksum the spec asked for.
    #[error(
        "input {what} does not match its ChecksumSHA256: expected {expected}, got {actual} (base64); check the checksum and VersionID"
    )]
    ObjectChecksumMismatch {
        /// Which input.
        what: String,
        /// The checksum asked for.
        expected: String,
        /// The checksum of what was received.
        actual: String,
    },
    /// A listed object whose key would land outside the input directory.
    #[error(
        "object {what} has a key that would land outside the input directory (absolute, or with an empty, . or .. segment); rename it or exclude it with Filter"
    )]
    UnsafeKey {
        /// The object.
        what: String,
    },
    /// A backend could not be set up when the node started (not about any one input).
    #[error("the {backend} source cannot start: {reason}")]
    Setup {
        /// The backend.
        backend: &'static str,
        /// Why, and what to do.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path:?} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// A filesystem error on `path`.
    pub fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
        move |source| StorageError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// What an input's prepared volume will contain, named before it is fetched: two inputs with the same id
/// prepare byte-identical volumes (same files, same names, same read-only flag). Built by a source from
/// something that pins the content (a SHA-256 the download is verified against, an IPFS CID, an S3 ETag plus
/// version), never from a mutable name alone. The text is namespaced by source type, so ids from different
/// sources never collide, and it may be stored and logged: it must not contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(String);

// === impl ContentId ===

impl ContentId {
    /// The id of content that `kind` identifies by `identity` (e.g. `sha256:<hex>`, a CID, `<etag>@<version>`).
    pub fn new(kind: SourceKind, identity: impl fmt::Display) -> Self {
        Self(format!("{}:{identity}", kind.as_str()))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A source of inputs.
#[async_trait]
pub trait StorageSource: Send + Sync + fmt::Debug {
    /// The source type served.
    fn kind(&self) -> SourceKind;
    /// Cheap check used when bidding (e.g. the allow-list): can this node serve `spec`?
    fn validate(&self, spec: &InputSpec) -> Result<(), StorageError>;
    /// Brings the input to local disk. `scratch` is an empty directory owned by this input, removed with the
    /// execution; a backend that copies or downloads writes only there.
    async fn prepare(&self, spec: &InputSpec, scratch: &Path) -> Result<Volume, StorageError>;
    /// The identity of what [`StorageSource::prepare`] would produce for `spec`, found cheaply (no body
    /// download: from the spec itself, or one metadata request such as an S3 HEAD). `None` means the content
    /// cannot be pinned (a mutable URL, a host path), so the input is neither cached nor allows the job's
    /// result to be reused. An `Err` fails the input, as `prepare` would.
    async fn content_id(&self, spec: &InputSpec) -> Result<Option<ContentId>, StorageError> {
        let _ = spec;
        Ok(None)
    }
}

/// [`StorageSource::prepare`] into `scratch`, made first: an execution's scratch folders are made only when
/// something goes there (a read-only input-cache hit needs none).
pub async fn prepare_in(
    source: &dyn StorageSource,
    spec: &InputSpec,
    scratch: &Path,
) -> Result<Volume, StorageError> {
    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(StorageError::io("creating", scratch))?;
    source.prepare(spec, scratch).await
}
