//! Publishers: make an execution's result folder (`stdout`, `stderr`, `exitCode`, one folder per ResultPath)
//! available and describe where, as a `SpecConfig` stored in `Execution.PublishedResult`.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::model::{ExecutionId, JobId, NodeId, PublisherKind, PublisherSpec, SpecConfig};

#[cfg(feature = "ipfs")]
pub mod ipfs;
pub mod local;
pub mod noop;
#[cfg(feature = "storage-s3")]
pub mod s3;
mod tarball;

/// Which execution is being published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTarget {
    /// The execution.
    pub execution_id: ExecutionId,
    /// Its job.
    pub job_id: JobId,
    /// This node.
    pub node_id: NodeId,
    /// The task's publisher spec (where the result goes, for publishers with parameters).
    pub spec: PublisherSpec,
}

/// A result that could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// Packing the result failed.
    #[error("packing the result of {execution_id} from {dir:?} failed")]
    Pack {
        /// The execution.
        execution_id: ExecutionId,
        /// The result dir.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The local publisher's listener could not be bound.
    #[error(
        "binding the local publisher to {addr} failed; pick a free port or another listen address"
    )]
    Bind {
        /// The address asked for.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The local publisher's HTTP server stopped with an error.
    #[error("the local publisher's server on {addr} failed")]
    Serve {
        /// The bound address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem operation outside packing failed (preparing the publisher's directory).
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
    /// Uploading the result failed.
    #[error("uploading to {destination} failed: {reason}")]
    Upload {
        /// Where it was going (`s3://bucket/key`).
        destination: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The spec cannot be handled by this publisher.
    #[error("publisher {kind} cannot publish this result: {reason}")]
    Unsupported {
        /// The publisher.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

/// A result destination.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug {
    /// The publisher type served.
    fn kind(&self) -> PublisherKind;
    /// Cheap check used when bidding.
    fn validate(&self, spec: &PublisherSpec) -> Result<(), PublisherError>;
    /// Publishes `result_dir` and returns where it went.
    async fn publish(
        &self,
        target: &PublishTarget,
        result_dir: &Path,
    ) -> Result<SpecConfig, PublisherError>;
}
