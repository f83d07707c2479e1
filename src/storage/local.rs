//! STUB
use std::path::Path;

use async_trait::async_trait;

use super::{StorageError, StorageSource, Volume};
use crate::model::{InputSpec, SourceKind};

/// STUB
#[derive(Debug, Default)]
pub struct LocalSource {}

#[async_trait]
impl StorageSource for LocalSource {
    fn kind(&self) -> SourceKind {
        unimplemented!()
    }
    fn validate(&self, _spec: &InputSpec) -> Result<(), StorageError> {
        Ok(())
    }
    async fn prepare(&self, _spec: &InputSpec, _scratch: &Path) -> Result<Volume, StorageError> {
        unimplemented!()
    }
}
