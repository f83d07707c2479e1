//! The backends a compute node was built and configured with: executors, storage sources, publishers, each
//! keyed by its kind. Adding a backend is one file in its module plus one line where the node builds this.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::executor::Executor;
use crate::model::{EngineKind, PublisherKind, SourceKind};
use crate::publisher::Publisher;
use crate::storage::StorageSource;

/// Kind → backend maps.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    /// Engines.
    pub executors: BTreeMap<EngineKind, Arc<dyn Executor>>,
    /// Input sources.
    pub sources: BTreeMap<SourceKind, Arc<dyn StorageSource>>,
    /// Result destinations.
    pub publishers: BTreeMap<PublisherKind, Arc<dyn Publisher>>,
}

impl Backends {
    /// Registers an executor under its engine.
    pub fn with_executor(mut self, e: Arc<dyn Executor>) -> Self {
        self.executors.insert(e.engine(), e);
        self
    }
    /// Registers a storage source under its kind.
    pub fn with_source(mut self, s: Arc<dyn StorageSource>) -> Self {
        self.sources.insert(s.kind(), s);
        self
    }
    /// Registers a publisher under its kind.
    pub fn with_publisher(mut self, p: Arc<dyn Publisher>) -> Self {
        self.publishers.insert(p.kind(), p);
        self
    }
    /// Engine names for NodeInfo.
    pub fn engine_names(&self) -> Vec<String> {
        self.executors
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect()
    }
    /// Source names for NodeInfo.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.keys().map(|k| k.as_str().to_owned()).collect()
    }
    /// Publisher names for NodeInfo.
    pub fn publisher_names(&self) -> Vec<String> {
        self.publishers
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect()
    }
}
