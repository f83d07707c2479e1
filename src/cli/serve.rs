//! `cod serve`: runs a node. With neither `--orchestrator` nor `--compute` it runs both roles in one process
//! (the embedded default: one command, a working single-device system).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use argh::FromArgs;
use tokio_util::sync::CancellationToken;

use super::UsageError;
use crate::config::{self, Config};

/// run a Cod node (orchestrator, compute, or both)
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "serve")]
pub struct ServeArgs {
    /// run the orchestrator role (with --compute too: hybrid)
    #[argh(switch)]
    pub orchestrator: bool,
    /// run the compute role
    #[argh(switch)]
    pub compute: bool,
    /// config file (YAML or JSON); flags and COD_* variables override it
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// data directory (default ~/.cod)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// REST API listen host (default 0.0.0.0)
    #[argh(option)]
    pub api_host: Option<String>,
    /// REST API listen port (default 1234; 0 picks one)
    #[argh(option)]
    pub api_port: Option<u16>,
    /// libp2p listen multiaddr(s) of an orchestrator, comma-separated (default /ip4/0.0.0.0/tcp/1235)
    #[argh(option)]
    pub listen: Option<String>,
    /// orchestrator multiaddr(s) a compute node dials, comma-separated
    #[argh(option)]
    pub orchestrators: Option<String>,
    /// node labels, k=v,k2=v2
    #[argh(option)]
    pub labels: Option<String>,
    /// host paths jobs may mount: PATH[:ro|:rw], comma-separated
    #[argh(option)]
    pub allow_listed_local_paths: Option<String>,
    /// engines this node refuses, comma-separated (Engines.Disabled: wasm, docker)
    #[argh(option)]
    pub disabled_engines: Option<String>,
    /// input types this node refuses, comma-separated (InputSources.Disabled)
    #[argh(option)]
    pub disabled_input_sources: Option<String>,
    /// publishers this node refuses, comma-separated (Publishers.Disabled)
    #[argh(option)]
    pub disabled_publishers: Option<String>,
    /// image patterns docker jobs must match, comma-separated (Compute.Policy.ImageAllowList)
    #[argh(option)]
    pub image_allow_list: Option<String>,
    /// host variables jobs may read as env:NAME, comma-separated globs (Compute.Env.AllowList)
    #[argh(option)]
    pub env_allow_list: Option<String>,
    /// refuse jobs that ask for a network (Compute.RejectNetworkedJobs)
    #[argh(switch)]
    pub reject_networked_jobs: bool,
    /// most CPU one job may ask for, e.g. 1.5 (Compute.Policy.MaxJob.CPU)
    #[argh(option)]
    pub max_job_cpu: Option<String>,
    /// most memory one job may ask for, e.g. 256MiB (Compute.Policy.MaxJob.Memory)
    #[argh(option)]
    pub max_job_memory: Option<String>,
    /// new compute nodes wait for `cod node approve`
    #[argh(switch)]
    pub manual_approval: bool,
    /// file holding the join token (first line): the orchestrator's Orchestrator.Auth.TokenFile and a
    /// compute node's Compute.Auth.TokenFile
    #[argh(option)]
    pub auth_token_file: Option<String>,
    /// node ids admitted without the join token, comma-separated (Orchestrator.Auth.AllowedNodes)
    #[argh(option)]
    pub allowed_nodes: Option<String>,
    /// refuse compute nodes that have neither the join token nor a place on the allow-list
    #[argh(switch)]
    pub require_token: bool,
    /// libp2p private network key file, Kubo's swarm.key format (Transport.SwarmKeyFile)
    #[argh(option)]
    pub swarm_key_file: Option<String>,
    /// host put in local-publisher result URLs (default 127.0.0.1)
    #[argh(option)]
    pub publisher_address: Option<String>,
    /// local publisher port (default 6001; 0 picks one)
    #[argh(option)]
    pub publisher_port: Option<u16>,
    /// heartbeat period of a compute node (default 15s)
    #[argh(option)]
    pub heartbeat_interval: Option<String>,
    /// a silent node is disconnected after this (default 60s)
    #[argh(option)]
    pub disconnect_timeout: Option<String>,
    /// a node disconnected this long is lost and its batch/service work moves (default 10m)
    #[argh(option)]
    pub node_lost_after: Option<String>,
    /// concurrent WASM executions (default: one per core)
    #[argh(option)]
    pub wasm_slots: Option<usize>,
    /// CPU given to jobs, e.g. 1.5 (default 80% of the cores)
    #[argh(option)]
    pub cpu: Option<String>,
    /// memory given to jobs, e.g. 512MiB (default 80% of the machine)
    #[argh(option)]
    pub memory: Option<String>,
    /// node name (default: the host name)
    #[argh(option)]
    pub name: Option<String>,
    /// write the node's bound addresses here (JSON) once every listener is up
    #[argh(option)]
    pub ready_file: Option<PathBuf>,
    /// serve the API without credentials even on a non-loopback host (API.Auth.Disabled)
    #[argh(switch)]
    pub api_auth_disabled: bool,
    /// serve the API over HTTPS with this PEM certificate chain (API.TLS.CertFile)
    #[argh(option)]
    pub api_tls_cert: Option<PathBuf>,
    /// private key of --api-tls-cert (API.TLS.KeyFile)
    #[argh(option)]
    pub api_tls_key: Option<PathBuf>,
    /// serve the API over HTTPS with a certificate generated once into <data dir>/tls (API.TLS.SelfSigned)
    #[argh(switch)]
    pub api_tls_self_signed: bool,
}

impl ServeArgs {
    /// Overlays the flags on `config` (flags win over file and environment).
    pub fn apply(&self, config: &mut Config) {
        if self.orchestrator || self.compute {
            config.roles = config::Roles {
                orchestrator: self.orchestrator,
                compute: self.compute,
            };
        }
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        if let Some(d) = &self.data_dir {
            config.data_dir.clone_from(d);
        }
        set(&mut config.api.host, &self.api_host);
        if let Some(p) = self.api_port {
            config.api.port = p;
        }
        if self.api_auth_disabled {
            config.api.auth.disabled = true;
        }
        if let Some(c) = &self.api_tls_cert {
            config.api.tls.cert_file = Some(c.clone());
        }
        if let Some(k) = &self.api_tls_key {
            config.api.tls.key_file = Some(k.clone());
        }
        if self.api_tls_self_signed {
            config.api.tls.self_signed = true;
        }
        if let Some(l) = &self.listen {
            config.transport.listen = config::split_list(l);
        }
        if let Some(o) = &self.orchestrators {
            config.transport.orchestrators = config::split_list(o);
        }
        if let Some(l) = &self.labels {
            config.compute.labels.extend(config::parse_labels(l));
        }
        if let Some(p) = &self.allow_listed_local_paths {
            config.compute.allow_listed_local_paths = config::split_list(p);
        }
        let list = |dst: &mut Vec<String>, v: &Option<String>| {
            if let Some(v) = v {
                *dst = config::split_list(v);
            }
        };
        list(&mut config.engines.disabled, &self.disabled_engines);
        list(
            &mut config.input_sources.disabled,
            &self.disabled_input_sources,
        );
        list(&mut config.publishers.disabled, &self.disabled_publishers);
        list(
            &mut config.compute.policy.image_allow_list,
            &self.image_allow_list,
        );
        list(&mut config.compute.env.allow_list, &self.env_allow_list);
        if self.reject_networked_jobs {
            config.compute.reject_networked_jobs = true;
        }
        set(&mut config.compute.policy.max_job.cpu, &self.max_job_cpu);
        set(
            &mut config.compute.policy.max_job.memory,
            &self.max_job_memory,
        );
        if self.manual_approval {
            config.orchestrator.manual_approval = true;
        }
        if let Some(f) = &self.auth_token_file {
            // One flag for both roles; the token itself is never a flag (it would show in `ps`).
            config.orchestrator.auth.token_file.clone_from(f);
            config.compute.auth.token_file.clone_from(f);
            config.orchestrator.auth.token = config::Secret::default();
            config.compute.auth.token = config::Secret::default();
        }
        if let Some(n) = &self.allowed_nodes {
            config.orchestrator.auth.allowed_nodes = config::split_list(n);
        }
        if self.require_token {
            config.orchestrator.auth.require_token = true;
        }
        set(&mut config.transport.swarm_key_file, &self.swarm_key_file);
        set(
            &mut config.compute.publisher_address,
            &self.publisher_address,
        );
        if let Some(p) = self.publisher_port {
            config.compute.publisher_port = p;
        }
        set(
            &mut config.compute.heartbeat_interval,
            &self.heartbeat_interval,
        );
        set(
            &mut config.orchestrator.disconnect_timeout,
            &self.disconnect_timeout,
        );
        set(
            &mut config.orchestrator.node_lost_after,
            &self.node_lost_after,
        );
        if let Some(s) = self.wasm_slots {
            config.compute.wasm_slots = s;
        }
        set(&mut config.compute.cpu, &self.cpu);
        set(&mut config.compute.memory, &self.memory);
        set(&mut config.compute.name, &self.name);
    }
}

/// A `cod serve` whose configuration is loaded and valid, ready to [`run`] on the runtime it asks for.
#[derive(Debug)]
pub struct Loaded {
    resolved: config::Resolved,
    ready_file: Option<PathBuf>,
}

impl Loaded {
    /// Async worker threads for this node (`None`: tokio's default, one per core, or `TOKIO_WORKER_THREADS`).
    ///
    /// A compute-only node gets one. Its heavy work has threads of its own (WASM workers, the store writer,
    /// the blocking pool for files), so its async side only moves messages, and a second worker only adds
    /// hand-offs between threads: on the fleet bench (10 compute nodes on 2 cores) one worker took 9 % of
    /// the context switches away (CPU per job moved within the bench's noise). Anything running the
    /// orchestrator keeps one per core, for the API and for many nodes' encrypted links.
    pub fn async_workers(&self) -> Option<usize> {
        async_workers(
            &self.resolved.raw.roles,
            std::env::var_os("TOKIO_WORKER_THREADS").is_some(),
        )
    }
}

/// [`Loaded::async_workers`] for `roles`; `env_set`: `TOKIO_WORKER_THREADS` is set, and wins.
fn async_workers(roles: &config::Roles, env_set: bool) -> Option<usize> {
    (roles.compute && !roles.orchestrator && !env_set).then_some(1)
}

/// Loads the configuration (defaults < file < COD_* < flags) and validates it; bad input is a
/// [`UsageError`]. Synchronous, so the runtime can be sized for the roles before it starts.
pub fn load(args: ServeArgs) -> anyhow::Result<Loaded> {
    let mut config = match &args.config {
        Some(path) => config::load_file(path).map_err(|e| UsageError::new(e.to_string()))?,
        None => Config::default(),
    };
    config::apply_env(&mut config, |k| std::env::var(k).ok());
    args.apply(&mut config);
    let resolved = config
        .resolve()
        .map_err(|e| UsageError::new(e.to_string()))?;
    // Checked here too (the node builds the users again) so a bad user is a usage error (exit 64).
    crate::auth::Authenticator::from_config(&config.api.auth)
        .map_err(|e| UsageError::new(e.to_string()))?;
    Ok(Loaded {
        resolved,
        ready_file: args.ready_file,
    })
}

/// Runs the node until SIGINT or SIGTERM, then shuts it down with a grace period.
pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let Loaded {
        resolved,
        ready_file,
    } = loaded;
    #[cfg(feature = "orchestrator")]
    if resolved.raw.roles.orchestrator {
        super::fd_limit::raise_for_orchestrator();
    }
    let shutdown = CancellationToken::new();
    let node = crate::node::start(resolved, ready_file, shutdown.clone())
        .await
        .context("starting the node")?;
    tokio::spawn(stop_on_signal(shutdown));
    node.run(Duration::from_secs(10)).await;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_pick_roles() {
        let mut c = Config::default();
        c.api.port = 9;
        let args = ServeArgs {
            compute: true,
            api_port: Some(0),
            orchestrators: Some("/ip4/127.0.0.1/tcp/1235".into()),
            labels: Some("zone=north".into()),
            disabled_engines: Some("docker".into()),
            env_allow_list: Some("EDGE_*, SITE_ID".into()),
            max_job_memory: Some("256MiB".into()),
            reject_networked_jobs: true,
            ..Default::default()
        };
        args.apply(&mut c);
        assert_eq!(c.api.port, 0);
        assert_eq!(
            c.roles,
            config::Roles {
                orchestrator: false,
                compute: true
            }
        );
        assert_eq!(
            c.compute.labels.get("zone").map(String::as_str),
            Some("north")
        );
        let policy = c.resolve().expect("valid").policy;
        assert!(
            policy
                .disabled_engines
                .contains(&crate::model::EngineKind::Docker)
        );
        assert_eq!(policy.env_allow_list, ["EDGE_*", "SITE_ID"]);
        assert_eq!(policy.max_job.memory, Some(256 << 20));
        assert!(policy.reject_networked_jobs);
    }

    #[test]
    fn only_a_compute_only_node_runs_on_one_async_worker() {
        let roles = |orchestrator, compute| config::Roles {
            orchestrator,
            compute,
        };
        assert_eq!(async_workers(&roles(false, true), false), Some(1));
        assert_eq!(async_workers(&roles(true, true), false), None);
        assert_eq!(async_workers(&roles(true, false), false), None);
        // The operator's TOKIO_WORKER_THREADS wins, as tokio's own default would let it.
        assert_eq!(async_workers(&roles(false, true), true), None);
    }

    #[test]
    fn load_reports_a_bad_config_as_a_usage_error() {
        let args = ServeArgs {
            compute: true,
            ..Default::default()
        };
        // A compute-only node with no orchestrator to dial cannot run.
        let e = load(args).expect_err("no orchestrators");
        assert!(e.chain().any(|c| c.is::<UsageError>()), "{e:#}");
    }
}
