//! Builds the compute node's backends from the configuration: one line per backend.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::compute::Backends;
use crate::config::Resolved;
use crate::executor::wasm::{WasmConfig, WasmExecutor};
use crate::publisher::local::{LocalPublisher, LocalPublisherConfig, LocalPublisherServer};
use crate::publisher::noop::NoopPublisher;
use crate::storage::inline::{InlineSource, InlineSourceConfig};
use crate::storage::local::{LocalSource, LocalSourceConfig};
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
    let url = UrlSource::new(UrlSourceConfig::default())
        .map_err(|e| NodeError::Backend(e.to_string()))?;
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
    let backends = Backends::default()
        .with_executor(Arc::new(WasmExecutor::new(WasmConfig {
            slots: config.wasm_slots,
            ..WasmConfig::default()
        })))
        .with_source(Arc::new(InlineSource::new(InlineSourceConfig::default())))
        .with_source(Arc::new(LocalSource::new(allow)))
        .with_source(Arc::new(url))
        .with_publisher(Arc::new(local_publisher))
        .with_publisher(Arc::new(NoopPublisher));
    Ok((backends, server, url_base))
}
