//! Storage sources: bring an input to local disk. One backend per source type, each behind [`StorageSource`].
//! Backends see only specs and paths: never the store, the transport or each other.

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
}
