//! The composition root: turns a validated configuration into a running node. Components are built in
//! dependency order (store → identity → transport → orchestrator / compute → API), one log line each, and
//! every long-lived task lives in the node's `JoinSet`. Shutdown: cancel, drain with a grace period, then the
//! store closes when the last handle drops.

mod backends;
#[cfg(feature = "ipfs")]
mod ipfs;
mod trim;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::compute::{self, Compute};
use crate::config::Resolved;
#[cfg(feature = "orchestrator")]
use crate::orchestrator::Orchestrator;
use crate::store::{self, Store};
use crate::transport;

/// The node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A configuration value is unusable (exit 64).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The state database.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The transport.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The orchestrator.
    #[cfg(feature = "orchestrator")]
    #[error(transparent)]
    Orchestrator(#[from] crate::orchestrator::OrchestratorError),
    /// The compute role.
    #[error(transparent)]
    Compute(#[from] compute::ComputeError),
    /// A backend.
    #[error("backend: {0}")]
    Backend(String),
    /// The API listener.
    #[error("cannot listen for the API on {addr}")]
    ApiBind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The ready file.
    #[error("cannot write the ready file {path:?}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a started node tells the world (written to `--ready-file` once every listener is up).
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    /// The node id (libp2p peer id).
    pub node_id: String,
    /// The API's bound address.
    pub api: SocketAddr,
    /// Multiaddrs compute nodes can dial (orchestrators).
    pub p2p: Vec<String>,
    /// Base URL of the local publisher (compute nodes).
    pub publisher: Option<String>,
    /// The process id.
    pub pid: u32,
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    /// Where it listens.
    pub ready: ReadyInfo,
}

/// How long a hybrid node waits for its compute half to join before it writes its ready file anyway.
#[cfg(feature = "orchestrator")]
const HYBRID_JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds and starts every component of the node.
pub async fn start(
    config: Resolved,
    ready_file: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<Node, NodeError> {
    // `Config::resolve` has refused any role this build lacks, so `roles.orchestrator` implies the feature.
    let raw = &config.raw;
    let mut tasks = JoinSet::new();
    let store = Store::open(
        &raw.data_dir.join("state"),
        &store::Config {
            map_size: config.map_size,
        },
    )?;
    info!(data_dir = %raw.data_dir.display(), "state database open");
    let identity = transport::load_or_create_identity(&raw.data_dir.join("identity.key"))?;
    let node_id = identity.node_id();
    info!(node_id = %node_id, "identity loaded");
    let hybrid = raw.roles.orchestrator && raw.roles.compute;
    let transport_config = transport::Config {
        listen: if raw.roles.orchestrator {
            raw.transport.listen.clone()
        } else {
            vec![]
        },
        orchestrators: if raw.roles.compute && !raw.roles.orchestrator {
            raw.transport.orchestrators.clone()
        } else {
            vec![]
        },
        // Bitswap runs with the compute role (the block store lives there).
        ipfs_peers: if raw.roles.compute && cfg!(feature = "ipfs") {
            raw.ipfs.peers.clone()
        } else {
            vec![]
        },
        // Only a compute-only node dials orchestrators; a hybrid's compute half is in-process and admitted as
        // the orchestrator's own.
        join_token: if raw.roles.compute && !raw.roles.orchestrator {
            config.compute_join_token.clone()
        } else {
            None
        },
        swarm_key: config.swarm_key,
        ..transport::Config::default()
    };
    let (client, events, event_loop) = transport::new(identity, transport_config)?;
    tasks.spawn(event_loop.run(shutdown.child_token()));
    let p2p = if raw.roles.orchestrator {
        client.listen_addrs().await?
    } else {
        vec![]
    };
    info!(listen = ?p2p, "transport started");

    let mut main_events = Some(events);
    #[cfg(feature = "orchestrator")]
    let orchestrator = if raw.roles.orchestrator {
        let events = main_events
            .take()
            .ok_or_else(|| NodeError::Config("transport events taken twice".into()))?;
        let (orchestrator, runner) = Orchestrator::new(
            store.clone(),
            client.clone(),
            events,
            config.orchestrator.clone(),
        )?;
        tasks.spawn(runner.run(shutdown.child_token()));
        let admission = &config.orchestrator.admission;
        info!(
            auto_approve = config.orchestrator.auto_approve,
            join_token = admission.token.is_some(),
            allowed_nodes = admission.allowed.len(),
            require_token = admission.require_token,
            "orchestrator started"
        );
        Some(orchestrator)
    } else {
        None
    };

    let mut publisher = None;
    let compute = if raw.roles.compute {
        let (compute_client, compute_events) = if hybrid {
            client.attach_local().await?
        } else {
            let events = main_events
                .take()
                .ok_or_else(|| NodeError::Config("transport events taken twice".into()))?;
            (client.clone(), events)
        };
        #[cfg(feature = "ipfs")]
        let ipfs = Some(ipfs::start(
            &config,
            &client,
            &mut tasks,
            shutdown.child_token(),
        )?);
        #[cfg(not(feature = "ipfs"))]
        let ipfs = {
            let i = &raw.ipfs;
            if !i.peers.is_empty() || !i.gateways.is_empty() || !i.kubo_rpc.is_empty() {
                tracing::error!(
                    "Ipfs.Peers, Ipfs.Gateways or Ipfs.KuboRpc is set, but this cod was built without the `ipfs` \
                     feature: they are ignored and ipfs inputs and results are declined"
                );
            }
            None
        };
        let (backends, server, url_base) =
            backends::build(&config, &store, &node_id, ipfs, shutdown.child_token()).await?;
        tasks.spawn(async move {
            if let Err(e) = server.await {
                warn!(error = %e, "local publisher server stopped");
            }
        });
        publisher = Some(url_base);
        let gpus = discover_gpus(&config.gpu).await;
        let capacity = crate::model::Resources {
            gpu: gpus.as_ref().map_or(0, |i| i.gpus.len() as u64),
            ..config.capacity
        };
        let compute_config = compute::Config {
            name: config.name.clone(),
            labels: raw.compute.labels.clone(),
            capacity,
            max_job: config.policy.max_job.applied_to(capacity),
            heartbeat_interval: config.heartbeat_interval,
            work_dir: raw.data_dir.join("executions"),
            max_output_bytes: config.max_output_bytes,
            max_result_bytes: config.max_output_size_bytes,
            default_timeout: config.default_timeout,
            job_defaults: config.job_defaults,
            address: raw.compute.publisher_address.clone(),
            policy: config.policy.clone(),
            gpus,
        };
        let caches = compute::Caches::open(
            &raw.data_dir.join("cache"),
            &store,
            config.input_cache_bytes,
            config.result_cache_bytes,
        )
        .await
        .map_err(compute::ComputeError::from)?;
        info!(
            input_cache_bytes = config.input_cache_bytes,
            result_cache_bytes = config.result_cache_bytes,
            "compute caches open"
        );
        let (compute, runner) = Compute::new(
            store.clone(),
            compute_client,
            compute_events,
            backends,
            caches,
            compute_config,
        )?;
        tasks.spawn(runner.run(shutdown.child_token()));
        info!(engines = ?compute.node_info().compute_node_info.execution_engines, "compute started");
        Some(compute)
    } else {
        None
    };

    // A hybrid's compute half joins its orchestrator through the in-process path, after both loops started.
    #[cfg(feature = "orchestrator")]
    if let (true, Some(o)) = (hybrid, &orchestrator)
        && !o.wait_for_node(&node_id, HYBRID_JOIN_WAIT).await
    {
        tracing::warn!(
            wait = ?HYBRID_JOIN_WAIT,
            "this node's compute half has not joined its orchestrator yet; jobs submitted now may find no node"
        );
    }
    let auth = Arc::new(api_access(raw)?);
    let tls = api::tls::server_config(&raw.api.tls, &raw.data_dir, &raw.api.host)
        .map_err(|e| NodeError::Config(crate::errors::chain(&e)))?;
    let api_addr = format!("{}:{}", raw.api.host, raw.api.port);
    let listener = tokio::net::TcpListener::bind(&api_addr)
        .await
        .map_err(|source| NodeError::ApiBind {
            addr: api_addr.clone(),
            source,
        })?;
    let api_bound = listener.local_addr().map_err(|source| NodeError::ApiBind {
        addr: api_addr,
        source,
    })?;
    let info_source = compute.clone();
    let orchestrator_id = node_id.clone();
    let listen_addresses = p2p.clone();
    let node_info: Arc<dyn Fn() -> crate::model::NodeInfo + Send + Sync> = Arc::new(move || {
        let mut info = match &info_source {
            Some(c) => c.node_info(),
            None => crate::model::NodeInfo {
                node_id: orchestrator_id.clone(),
                node_type: crate::model::NodeType::Requester,
                bacalhau_version: crate::model::BuildVersionInfo::current(),
                ..Default::default()
            },
        };
        info.listen_addresses.clone_from(&listen_addresses);
        info
    });
    #[cfg(all(feature = "orchestrator", feature = "storage-s3"))]
    let result_signer = match (&orchestrator, config.s3_presign_expiry) {
        (Some(_), Some(expiry)) => Some(crate::s3::ResultSigner::new(
            backends::s3_client(&config)?,
            expiry,
        )),
        _ => None,
    };
    let state = ApiState {
        #[cfg(feature = "orchestrator")]
        orchestrator,
        compute,
        node_info,
        config: serde_json::to_value(raw).unwrap_or_default(),
        auth,
        metrics: raw.metrics.enabled,
        #[cfg(all(feature = "orchestrator", feature = "storage-s3"))]
        result_signer,
    };
    let api_shutdown = shutdown.child_token();
    tasks.spawn(async move {
        if let Err(e) = api::serve(listener, tls, state, api_shutdown).await {
            warn!(error = %e, "API server stopped");
        }
    });
    info!(addr = %api_bound, "API listening");

    let ready = ReadyInfo {
        node_id: node_id.to_string(),
        api: api_bound,
        p2p,
        publisher,
        pid: std::process::id(),
    };
    if let Some(path) = ready_file {
        write_ready(&path, &ready)?;
    }
    info!(node_id = %node_id, "node ready");
    tasks.spawn(trim::run(shutdown.child_token()));
    Ok(Node {
        tasks,
        shutdown,
        ready,
    })
}

/// Decides who may call the API (see [`crate::auth::mode`]) and, for a non-loopback API without users,
/// makes or reads `<DataDir>/api-token`. Logs the decision, never a key.
fn api_access(raw: &crate::config::Config) -> Result<crate::auth::Access, NodeError> {
    use crate::auth::{self, Access, Authenticator, Mode, OpenReason};
    let config_error = |e: &dyn std::error::Error| NodeError::Config(crate::errors::chain(e));
    Ok(match auth::mode(&raw.api.auth, &raw.api.host) {
        Mode::Open(OpenReason::Loopback) => {
            info!(host = %raw.api.host, "API open without credentials: it listens on loopback only");
            Access::Open(OpenReason::Loopback)
        }
        Mode::Open(OpenReason::Disabled) => {
            warn!(
                host = %raw.api.host,
                "API.Auth.Disabled: anyone who can reach the API may run jobs and manage nodes"
            );
            Access::Open(OpenReason::Disabled)
        }
        Mode::Users => {
            let users = Authenticator::from_config(&raw.api.auth).map_err(|e| config_error(&e))?;
            info!(users = ?users, "API requires credentials");
            Access::Users(users)
        }
        Mode::TokenFile => {
            let path = auth::token_file::path(&raw.data_dir);
            let (key, created) =
                auth::token_file::load_or_create(&path).map_err(|e| config_error(&e))?;
            info!(
                token_file = %path.display(),
                created,
                "API requires credentials: no API.Auth.Users and a non-loopback listener, so the admin key \
                 is in the token file (the cod CLI on this machine uses it)"
            );
            Access::Users(Authenticator::single_admin_key("api-token", &key))
        }
    })
}

fn write_ready(path: &std::path::Path, ready: &ReadyInfo) -> Result<(), NodeError> {
    let err = |source| NodeError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(ready).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl Node {
    /// Waits for the shutdown signal, then stops every task within `grace`.
    pub async fn run(mut self, grace: Duration) {
        self.shutdown.cancelled().await;
        info!("shutting down");
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!("tasks did not stop within the grace period; aborting them");
            self.tasks.shutdown().await;
        }
        info!("stopped");
    }
}

/// Finds the node's GPUs (blocking: a library load, maybe a process) and logs the outcome once.
async fn discover_gpus(settings: &crate::gpu::GpuSettings) -> Option<crate::gpu::Inventory> {
    let settings = settings.clone();
    let found = tokio::task::spawn_blocking(move || {
        let probes = crate::gpu::probe::default_probes(&settings);
        crate::gpu::discover(&settings, &probes)
    })
    .await;
    match found {
        Ok(d) => d.inventory().cloned(),
        Err(e) => {
            warn!(error = %e, "GPU discovery failed; advertising no GPU");
            None
        }
    }
}
