//! The `noop` publisher: the result stays on the compute node and nothing is published, as in Bacalhau.

use std::path::Path;

use async_trait::async_trait;

use super::{PublishTarget, Publisher, PublisherError};
use crate::model::{PublisherKind, PublisherSpec, SpecConfig};

/// Publishes nothing and returns an empty `SpecConfig`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopPublisher;

#[async_trait]
impl Publisher for NoopPublisher {
    fn kind(&self) -> PublisherKind {
        PublisherKind::Noop
    }

    fn validate(&self, spec: &PublisherSpec) -> Result<(), PublisherError> {
        match spec {
            PublisherSpec::Noop => Ok(()),
            other => Err(PublisherError::Unsupported {
                kind: PublisherKind::Noop.as_str(),
                reason: format!("the task asks for the {} publisher", other.type_name()),
            }),
        }
    }

    async fn publish(
        &self,
        _target: &PublishTarget,
        _result_dir: &Path,
    ) -> Result<SpecConfig, PublisherError> {
        Ok(SpecConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionId, JobId, NodeId};

    #[tokio::test]
    async fn publishes_nothing() {
        let target = PublishTarget {
            execution_id: ExecutionId::generate(),
            job_id: JobId::generate(),
            node_id: NodeId::default(),
            spec: PublisherSpec::Noop,
        };
        let published = NoopPublisher
            .publish(&target, Path::new("/nonexistent"))
            .await
            .expect("publish");
        assert!(published.is_empty());
        assert!(NoopPublisher.validate(&PublisherSpec::Noop).is_ok());
        assert!(NoopPublisher.validate(&PublisherSpec::Local).is_err());
    }
}
