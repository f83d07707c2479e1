//! Builds the compute node's backends from the configuration: one line per backend.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::compute::Backends;
use crate::config::Resolved;
#[cfg(feature = "executor-wasm")]
use crate::executor::wasm::{WasmConfig, WasmExecutor};
use crate::publisher::local::{LocalPublisher, LocalPublisherConfig, LocalPublisherServer};
use crate::publisher::noop::NoopPublisher;
use crate::storage::inline::{InlineSource, InlineSourceConfig};
use crate::storage::local::{LocalSource, LocalSourceConfig};
#[cfg(feature = "storage-url")]
use crate::storage::url::{UrlSource, UrlSourceConfig};

use super::NodeError;

/// The backends and the local publisher's HTTP server (to be spawned by the node).
pub(super) async fn build(
    config: &Resolved,
    shutdown: CancellationToken,
) -> Result<(Backends, LocalPublisherServer, String), NodeError> {
    let c = &config.raw.compute;
    let allow = LocalSourceConfig::parse(&c.allow_listed_local_paths)
        .map_err(|e| NodeError::Config(format!("Compute.AllowListedLocalPaths: {e}")))?;
    let publisher_config = LocalPublisherConfig {
        dir: config.raw.data_dir.join("results"),
        address: c.publisher_address.clone(),
        port: c.publisher_port,
        listen_host: c.publisher_listen.clone(),
    };
    let (local_publisher, server) = LocalPublisher::start(publisher_config, shutdown)
        .await
        .map_err(|e| NodeError::Backend(e.to_string()))?;
    let url_base = local_publisher.url_base().to_owned();
    // One line per backend; a backend whose feature is off is simply not offered (NodeInfo says what is).
    #[allow(unused_mut)] // only the optional backends below mutate it
    let mut backends = Backends::default()
        .with_source(Arc::new(InlineSource::new(InlineSourceConfig::default())))
        .with_source(Arc::new(LocalSource::new(allow)))
        .with_publisher(Arc::new(local_publisher))
        .with_publisher(Arc::new(NoopPublisher));
    #[cfg(feature = "executor-wasm")]
    {
        let wasm = WasmConfig {
            slots: config.wasm_slots,
            ..WasmConfig::default()
        };
        backends = backends.with_executor(Arc::new(WasmExecutor::new(wasm)));
    }
    #[cfg(feature = "storage-url")]
    {
        let url = UrlSource::new(UrlSourceConfig::default())
            .map_err(|e| NodeError::Backend(e.to_string()))?;
        backends = backends.with_source(Arc::new(url));
    }
    if backends.executors.is_empty() {
        tracing::warn!(
            "this build has no execution engine; the compute role will decline every job"
        );
    }
    Ok((backends, server, url_base))
}
