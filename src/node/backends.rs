//! Builds the compute node's backends from the configuration: one line per backend.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::compute::Backends;
use crate::config::Resolved;
#[cfg(feature = "executor-wasm")]
use crate::executor::wasm::{WasmConfig, WasmExecutor};
use crate::model::NodeId;
use crate::publisher::local::{LocalPublisher, LocalPublisherConfig, LocalPublisherServer};
use crate::publisher::noop::NoopPublisher;
use crate::storage::inline::{InlineSource, InlineSourceConfig};
use crate::storage::local::{LocalSource, LocalSourceConfig};
#[cfg(feature = "storage-url")]
use crate::storage::url::{UrlSource, UrlSourceConfig};
use crate::store::Store;

use super::NodeError;

/// The backends and the local publisher's HTTP server (to be spawned by the node).
pub(super) async fn build(
    config: &Resolved,
    store: &Store,
    node_id: &NodeId,
    #[cfg(feature = "ipfs")] ipfs: Option<super::ipfs::IpfsParts>,
    #[cfg(not(feature = "ipfs"))] ipfs: Option<()>,
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
    // The IPFS gateway shares the local publisher's listener: both serve job results to whoever submitted the
    // job, and that port is already the one operators open for results.
    #[allow(unused_mut)]
    let mut routes = axum::Router::new();
    #[cfg(feature = "ipfs")]
    if let Some(parts) = &ipfs
        && config.raw.ipfs.serve_gateway
    {
        routes = crate::ipfs::gateway_server::router(parts.store.clone());
    }
    let (local_publisher, server) =
        LocalPublisher::start_with_routes(publisher_config, routes, shutdown)
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
    #[cfg(feature = "ipfs")]
    if let Some(parts) = ipfs {
        use crate::publisher::ipfs::IpfsPublisher;
        use crate::storage::ipfs::IpfsSource;
        let gateway = config.raw.ipfs.serve_gateway.then(|| url_base.clone());
        backends = backends
            .with_source(Arc::new(IpfsSource::new(
                parts.fetcher,
                parts.fetch_timeout,
                config.input_max_bytes,
            )))
            .with_publisher(Arc::new(IpfsPublisher::new(
                parts.store,
                gateway,
                parts.kubo,
            )));
    }
    #[cfg(not(feature = "ipfs"))]
    let _ = ipfs;
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
        let limits = &config.raw.input_sources;
        let url = UrlSource::new(UrlSourceConfig {
            max_attempts: limits.max_retry_count.max(1),
            timeout: config.input_read_timeout,
            max_size: config.input_max_bytes,
            ..UrlSourceConfig::default()
        })
        .map_err(|e| NodeError::Backend(e.to_string()))?;
        backends = backends.with_source(Arc::new(url));
    }
    #[cfg(feature = "storage-s3")]
    {
        use crate::publisher::s3::{S3Publisher, S3PublisherConfig};
        use crate::storage::s3::{S3Source, S3SourceConfig};
        let client = s3_client(config)?;
        backends = backends
            .with_source(Arc::new(S3Source::new(
                client.clone(),
                S3SourceConfig::default(),
            )))
            .with_publisher(Arc::new(S3Publisher::new(
                client,
                S3PublisherConfig::default(),
            )));
    }
    #[cfg(feature = "executor-oci")]
    if let Some(docker) = docker(config, store, node_id).await {
        backends = backends.with_executor(Arc::new(docker));
    }
    #[cfg(not(feature = "executor-oci"))]
    let _ = (store, node_id);
    if backends.executors.is_empty() {
        tracing::warn!(
            "this build has no execution engine; the compute role will decline every job"
        );
    }
    Ok((backends, server, url_base))
}

/// The S3 client of this node, shared by the s3 source, the s3 publisher and (on an orchestrator) result
/// signing: the `S3` config section's credentials and defaults, and an HTTP client using the process's TLS
/// provider (installed first thing in main).
#[cfg(feature = "storage-s3")]
pub(super) fn s3_client(config: &Resolved) -> Result<crate::s3::S3Client, NodeError> {
    use crate::s3::{S3Client, S3Settings};
    let s3 = &config.raw.s3;
    let mut settings = S3Settings::new(
        &s3.access_key_id,
        s3.secret_access_key.expose(),
        s3.session_token.expose(),
    );
    settings.default_region = s3.region.clone();
    settings.default_endpoint = s3.endpoint.clone();
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("cod/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            NodeError::Backend(format!(
                "building the S3 HTTP client failed ({}); install ca-certificates",
                crate::errors::chain(&e)
            ))
        })?;
    if !settings.has_credentials() {
        tracing::info!(
            "no S3 credentials configured; S3 requests are anonymous (public buckets only)"
        );
    }
    Ok(S3Client::new(http, settings))
}

/// The `docker` engine, when this node can run containers: it needs root (cgroups, namespaces, mounts). A
/// node that cannot still runs WASM jobs; NodeInfo tells the orchestrator which engines it has.
#[cfg(feature = "executor-oci")]
async fn docker(
    config: &Resolved,
    store: &Store,
    node_id: &NodeId,
) -> Option<crate::executor::oci::OciExecutor> {
    use crate::executor::oci::{IdMap, OciConfig, OciExecutor};
    use crate::oci::registry::{RegistryAuth, RegistryConfig};

    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "the docker engine needs root (namespaces, cgroups, mounts); this node runs WASM jobs only"
        );
        return None;
    }
    let d = &config.raw.compute.docker;
    let auths = d
        .credentials
        .iter()
        .map(|(host, c)| {
            let auth = if c.token.is_empty() {
                RegistryAuth::Basic {
                    username: c.username.clone(),
                    password: c.password.expose().to_owned(),
                }
            } else {
                RegistryAuth::Bearer {
                    token: c.token.expose().to_owned(),
                }
            };
            (host.clone(), auth)
        })
        .collect();
    let data_dir = std::path::absolute(&config.raw.data_dir).unwrap_or(config.raw.data_dir.clone());
    let oci = OciConfig {
        work_dir: data_dir.join("executions"),
        data_dir,
        registry: RegistryConfig {
            insecure: d.insecure_registries.clone(),
            auths,
            ..RegistryConfig::default()
        },
        cache_bytes: config.image_cache_bytes,
        id_map: IdMap {
            host_base: d.id_map_base,
            size: d.id_map_size,
        },
        pids_limit: d.pids_limit,
        // One cgroup parent per node: several nodes on one host (tests, a gateway running two) never share.
        cgroup_root: format!("cod/{node_id}"),
        allow_loopback_egress: d.allow_loopback_egress,
        helper_exe: None,
        gpu_driver_root: config.gpu.driver_root.clone(),
    };
    match OciExecutor::start(oci, store).await {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "the docker engine is unavailable; this node runs WASM jobs only");
            None
        }
    }
}
