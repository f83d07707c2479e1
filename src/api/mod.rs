//! STUB: replaced by the API implementation.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::compute::Compute;
use crate::model::NodeInfo;
use crate::orchestrator::Orchestrator;

/// What the API serves.
pub struct ApiState {
    /// The orchestrator, on orchestrator nodes.
    pub orchestrator: Option<Orchestrator>,
    /// The compute role, on compute nodes.
    pub compute: Option<Compute>,
    /// This node's description.
    pub node_info: Arc<dyn Fn() -> NodeInfo + Send + Sync>,
    /// The redacted configuration.
    pub config: serde_json::Value,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish()
    }
}

/// The API server failed.
#[derive(Debug, thiserror::Error)]
#[error("api server failed: {0}")]
pub struct ApiError(String);

/// Serves until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, shutdown: CancellationToken) -> Result<(), ApiError> {
    let _ = (listener, state);
    shutdown.cancelled().await;
    Ok(())
}
