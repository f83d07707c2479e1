//! STUB
use std::path::Path;

use async_trait::async_trait;

use super::{PublishTarget, Publisher, PublisherError};
use crate::model::{PublisherKind, PublisherSpec, SpecConfig};

/// STUB
#[derive(Debug, Default)]
pub struct LocalPublisher {}

#[async_trait]
impl Publisher for LocalPublisher {
    fn kind(&self) -> PublisherKind {
        unimplemented!()
    }
    fn validate(&self, _spec: &PublisherSpec) -> Result<(), PublisherError> {
        Ok(())
    }
    async fn publish(&self, _t: &PublishTarget, _dir: &Path) -> Result<SpecConfig, PublisherError> {
        unimplemented!()
    }
}
