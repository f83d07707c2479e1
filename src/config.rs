//! The node's configuration: one root [`Config`] made of per-component parts, loaded once and validated
//! before the store is opened or a port is bound.
//!
//! Precedence, lowest first: built-in defaults (small, for edge boards) < config file (`--config`, YAML or
//! JSON, keys matched case-insensitively) < `COD_*` environment variables < command-line flags. Components
//! receive their part by value; there is no global config. Logging is not part of it: `COD_LOG` (a tracing
//! filter such as `info,cod=debug`) is read before anything else so that configuration errors are logged too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Resources, ci, resources};

/// Which roles this node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Accepts and schedules jobs.
    pub orchestrator: bool,
    /// Runs jobs.
    pub compute: bool,
}

/// The whole configuration, as a file may state it. Durations and sizes are strings (`"15s"`, `"512MiB"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// State, identity key, executions and published results live here.
    #[serde(rename = "DataDir")]
    pub data_dir: PathBuf,
    /// Roles (both = hybrid, the default).
    #[serde(rename = "Roles")]
    pub roles: Roles,
    /// REST API.
    #[serde(rename = "API")]
    pub api: ApiConfig,
    /// libp2p.
    #[serde(rename = "Transport")]
    pub transport: TransportConfig,
    /// Orchestrator role.
    #[serde(rename = "Orchestrator")]
    pub orchestrator: OrchestratorConfig,
    /// Compute role.
    #[serde(rename = "Compute")]
    pub compute: ComputeConfig,
    /// LMDB.
    #[serde(rename = "Store")]
    pub store: StoreConfig,
    /// The IPFS block store (`<DataDir>/ipfs`), shared by the node and `cod ipfs`.
    #[serde(rename = "Ipfs")]
    pub ipfs: IpfsConfig,
    /// S3 access: credentials and defaults shared by the s3 source, the s3 publisher and result signing.
    #[serde(rename = "S3")]
    pub s3: S3Config,
    /// Publisher settings, under Bacalhau's key names (`Publishers.Types.S3.PreSignedURLDisabled`).
    #[serde(rename = "Publishers")]
    pub publishers: PublishersConfig,
    /// How inputs are fetched, under Bacalhau's key names (`InputSources.ReadTimeout`, `MaxRetryCount`).
    #[serde(rename = "InputSources")]
    pub input_sources: InputSourcesConfig,
    /// Engines turned off on this node (Bacalhau's `Engines.Disabled`).
    #[serde(rename = "Engines")]
    pub engines: EnginesConfig,
    /// Bacalhau's `JobAdmissionControl` (only `RejectNetworkedJobs`, the same as `Compute.RejectNetworkedJobs`).
    #[serde(rename = "JobAdmissionControl")]
    pub job_admission_control: JobAdmissionControlConfig,
    /// Prometheus `GET /metrics` on the API.
    #[serde(rename = "Metrics")]
    pub metrics: MetricsConfig,
}

/// `Metrics`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (default on; off answers 404). Scrapes need the `read:agent` capability when the
    /// API requires credentials.
    #[serde(rename = "Enabled")]
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `Engines`: engine types (`wasm`, `docker`) this node refuses although it was built with them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnginesConfig {
    /// Engine type names; a job for one of them is refused with a reason naming this key.
    #[serde(rename = "Disabled")]
    pub disabled: Vec<String>,
}

/// `JobAdmissionControl`, under Bacalhau's key names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobAdmissionControlConfig {
    /// Refuse jobs that ask for any network (either this or `Compute.RejectNetworkedJobs` turns it on).
    #[serde(rename = "RejectNetworkedJobs")]
    pub reject_networked_jobs: bool,
}

/// `Compute.Env`: which host variables jobs may read through `env:NAME` values in `Task.Env`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComputeEnvConfig {
    /// Glob patterns of variable names (`EDGE_*`); empty (the default) refuses every reference.
    #[serde(rename = "AllowList")]
    pub allow_list: Vec<String>,
}

/// `Compute.Policy`: what this node runs, beyond what it can run (see `compute::policy`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComputePolicyConfig {
    /// Image patterns `docker` jobs must match (`alpine`, `registry.lan:5000/team/*`, `ghcr.io/org/**`,
    /// `alpine:3.*`); empty admits every image.
    #[serde(rename = "ImageAllowList")]
    pub image_allow_list: Vec<String>,
    /// The most one job may ask for; empty values leave it to the node's capacity.
    #[serde(rename = "MaxJob")]
    pub max_job: MaxJobConfig,
}

/// `Compute.Policy.MaxJob`: per-job resource maximum, in the units of a job's `Resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaxJobConfig {
    /// Cores (`1.5`, `500m`).
    #[serde(rename = "CPU")]
    pub cpu: String,
    /// Memory (`512MiB`).
    #[serde(rename = "Memory")]
    pub memory: String,
    /// Disk (`10GiB`).
    #[serde(rename = "Disk")]
    pub disk: String,
    /// GPUs (`1`).
    #[serde(rename = "GPU")]
    pub gpu: String,
}

/// Limits on fetching inputs over HTTP (`urlDownload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InputSourcesConfig {
    /// Longest one download try may take, connecting included (Bacalhau's default, 5 minutes).
    #[serde(rename = "ReadTimeout")]
    pub read_timeout: String,
    /// Tries per download, the first included (Bacalhau's default, 3). Only connect errors, timeouts, 5xx and
    /// 429 are tried again.
    #[serde(rename = "MaxRetryCount")]
    pub max_retry_count: u32,
    /// The most bytes one download may have (a Cod setting: a runaway or hostile server must not fill the
    /// board's disk).
    #[serde(rename = "MaxSize")]
    pub max_size: String,
    /// Input types this node refuses (`urlDownload`, `s3`, `ipfs`, `local`, `inline`; Bacalhau's key).
    #[serde(rename = "Disabled")]
    pub disabled: Vec<String>,
}

impl Default for InputSourcesConfig {
    fn default() -> Self {
        Self {
            read_timeout: "5m".into(),
            max_retry_count: 3,
            max_size: "1GiB".into(),
            disabled: vec![],
        }
    }
}

/// S3 access. A compute node uses it to fetch `s3` inputs and to publish to `s3`; an orchestrator uses it to
/// sign result download URLs. Without an access key every request is anonymous (public buckets only).
///
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`)
/// and `AWS_ENDPOINT_URL` fill the keys that the config file leaves empty, as explicit configuration beats
/// the ambient environment in the AWS SDKs. The three credentials come as a set, from one place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Config {
    /// Access key id (not secret: it appears in every signed URL).
    #[serde(rename = "AccessKeyID")]
    pub access_key_id: String,
    /// Secret access key.
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: Secret,
    /// Session token of temporary credentials.
    #[serde(rename = "SessionToken")]
    pub session_token: Secret,
    /// Region for specs that name none (empty = `us-east-1`).
    #[serde(rename = "Region")]
    pub region: String,
    /// Endpoint for specs that name none (empty = AWS); for a MinIO or Garage that serves every job.
    #[serde(rename = "Endpoint")]
    pub endpoint: String,
}

/// `Publishers`, as Bacalhau names it; only the S3 part has settings here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublishersConfig {
    /// Per publisher type.
    #[serde(rename = "Types")]
    pub types: PublisherTypesConfig,
    /// Publisher types this node refuses (`local`, `noop`, `s3`, `ipfs`; Bacalhau's key).
    #[serde(rename = "Disabled")]
    pub disabled: Vec<String>,
}

/// `Publishers.Types`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublisherTypesConfig {
    /// `Publishers.Types.S3`.
    #[serde(rename = "S3")]
    pub s3: S3PublisherConfig,
}

/// How the orchestrator hands out S3-published results (Bacalhau's `Publishers.Types.S3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3PublisherConfig {
    /// Leave `s3` results as they are instead of adding pre-signed download URLs (`cod job get` then cannot
    /// fetch them).
    #[serde(rename = "PreSignedURLDisabled")]
    pub pre_signed_url_disabled: bool,
    /// How long a pre-signed URL stays valid (Bacalhau's default, 30 minutes; S3 allows at most 7 days).
    #[serde(rename = "PreSignedURLExpiration")]
    pub pre_signed_url_expiration: String,
}

impl Default for S3PublisherConfig {
    fn default() -> Self {
        Self {
            pre_signed_url_disabled: false,
            pre_signed_url_expiration: "30m".into(),
        }
    }
}

/// IPFS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpfsConfig {
    /// Disk budget of the block store; unpinned blocks are evicted (least recently used first) to stay
    /// under it, pinned ones (what `cod ipfs add` added, published results) never are.
    #[serde(rename = "StoreSize")]
    pub store_size: String,
    /// IPFS peers to fetch from and serve to over bitswap: `/ip4/<addr>/tcp/<port>/p2p/<peer id>`, dialled
    /// at start and kept connected. There is no DHT: blocks are found only at these peers, then gateways.
    #[serde(rename = "Peers")]
    pub peers: Vec<String>,
    /// Trustless gateways (`https://host[:port]`) tried after the peers; every block is verified.
    #[serde(rename = "Gateways")]
    pub gateways: Vec<String>,
    /// A Kubo RPC API (`http://127.0.0.1:5001`, Bacalhau's `IPFS.Endpoint`): tried last for inputs, and
    /// published results are pushed to it.
    #[serde(rename = "KuboRpc")]
    pub kubo_rpc: String,
    /// Longest time to fetch one `ipfs` input; past it the execution fails naming every source tried.
    #[serde(rename = "FetchTimeout")]
    pub fetch_timeout: String,
    /// Serve the block store as a trustless gateway (`/ipfs/<cid>`) on the local publisher's port.
    #[serde(rename = "ServeGateway")]
    pub serve_gateway: bool,
}

impl Default for IpfsConfig {
    fn default() -> Self {
        // Edge boards have 8-32 GB of flash shared with images and results.
        Self {
            store_size: "1GiB".into(),
            peers: vec![],
            gateways: vec![],
            kubo_rpc: String::new(),
            // Bacalhau's InputSources.ReadTimeout.
            fetch_timeout: "5m".into(),
            serve_gateway: true,
        }
    }
}

/// REST API settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Listen host.
    #[serde(rename = "Host")]
    pub host: String,
    /// Listen port (0 = pick one; see the ready file).
    #[serde(rename = "Port")]
    pub port: u16,
    /// Who may call the API (Bacalhau v1.7's `API.Auth`).
    #[serde(rename = "Auth")]
    pub auth: ApiAuthConfig,
    /// HTTPS for the API (Bacalhau's `API.TLS`).
    #[serde(rename = "TLS")]
    pub tls: ApiTlsConfig,
}

/// `API.Auth`: the users allowed to call the API. With no users, a listener reachable from other machines
/// is protected by a generated admin key in `<DataDir>/api-token`; a loopback-only one stays open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiAuthConfig {
    /// Opens the API to anyone who can reach it, even on a non-loopback listener (logged as a warning).
    #[serde(rename = "Disabled")]
    pub disabled: bool,
    /// Users: each has an API key (sent as `Authorization: Bearer`) or a user name and password (Basic).
    #[serde(rename = "Users")]
    pub users: Vec<ApiUserConfig>,
}

/// One API user, in Bacalhau v1.7's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiUserConfig {
    /// A name for logs (never a secret).
    #[serde(rename = "Alias")]
    pub alias: String,
    /// Basic-auth user name (letters and digits).
    #[serde(rename = "Username")]
    pub username: String,
    /// Basic-auth password: plain (10-255 characters) or a bcrypt hash from `cod auth hash-password`.
    #[serde(rename = "Password")]
    pub password: Secret,
    /// Bearer API key (20-255 characters).
    #[serde(rename = "APIKey")]
    pub api_key: Secret,
    /// What the user may do; the union of every entry's actions.
    #[serde(rename = "Capabilities")]
    pub capabilities: Vec<ApiCapabilityConfig>,
}

/// A set of allowed actions: `read:job`, `write:job`, `read:node`, `write:node`, `read:agent`,
/// `write:agent`, with `*` for either half, or the shorthands `read`, `submit` and `admin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiCapabilityConfig {
    /// The actions.
    #[serde(rename = "Actions")]
    pub actions: Vec<String>,
}

/// `API.TLS`: serve the API over HTTPS from a certificate and key, or from a self-signed pair generated
/// once into `<DataDir>/tls/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiTlsConfig {
    /// PEM certificate chain.
    #[serde(rename = "CertFile")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    #[serde(rename = "KeyFile")]
    pub key_file: Option<PathBuf>,
    /// Generate (first start) and use a self-signed certificate.
    #[serde(rename = "SelfSigned")]
    pub self_signed: bool,
}

/// Transport settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportConfig {
    /// Multiaddrs an orchestrator listens on.
    #[serde(rename = "Listen")]
    pub listen: Vec<String>,
    /// Orchestrator multiaddrs a compute node dials.
    #[serde(rename = "Orchestrators")]
    pub orchestrators: Vec<String>,
    /// A libp2p private network key (Kubo's `swarm.key` format): only nodes with the same key can connect.
    /// Empty: no private network.
    #[serde(rename = "SwarmKeyFile")]
    pub swarm_key_file: String,
}

/// Orchestrator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestratorConfig {
    /// New nodes wait for `cod node approve` when true.
    #[serde(rename = "ManualApproval")]
    pub manual_approval: bool,
    /// A node silent this long is disconnected.
    #[serde(rename = "DisconnectTimeout")]
    pub disconnect_timeout: String,
    /// A node disconnected this long is lost: its batch and service executions move to other nodes.
    #[serde(rename = "NodeLostAfter")]
    pub node_lost_after: String,
    /// Timer period.
    #[serde(rename = "HousekeepingInterval")]
    pub housekeeping_interval: String,
    /// Delay before a queued job is evaluated again.
    #[serde(rename = "QueueBackoff")]
    pub queue_backoff: String,
    /// A compute node is given work up to its capacity times this (≥ 1; 1 = no over-subscription). Bacalhau
    /// bounds at 1.5 × capacity; the node's own bidder queues what it cannot run at once.
    #[serde(rename = "OverSubscriptionFactor")]
    pub over_subscription_factor: f64,
    /// CPU for tasks that state none.
    #[serde(rename = "DefaultCPU")]
    pub default_cpu: String,
    /// Memory for tasks that state none.
    #[serde(rename = "DefaultMemory")]
    pub default_memory: String,
    /// Which compute nodes may join.
    #[serde(rename = "Auth")]
    pub auth: OrchestratorAuthConfig,
}

/// `Orchestrator.Auth`: compute node admission. With neither a token nor an allow-list every node may join
/// (approved unless `ManualApproval`). With either, a node that proves the token or is listed joins, a wrong
/// token is refused, and any other node waits in PENDING for `cod node approve` (refused with `RequireToken`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestratorAuthConfig {
    /// The join token compute nodes must prove (Bacalhau's name). Never sent: nodes send an HMAC of it.
    #[serde(rename = "Token")]
    pub token: Secret,
    /// A file holding the token (first line), instead of `Token` (so it need not sit in a unit's environment).
    #[serde(rename = "TokenFile")]
    pub token_file: String,
    /// Node ids (libp2p peer ids) admitted without the token.
    #[serde(rename = "AllowedNodes")]
    pub allowed_nodes: Vec<String>,
    /// Refuse nodes with neither the token nor a place on the allow-list instead of keeping them PENDING.
    #[serde(rename = "RequireToken")]
    pub require_token: bool,
    /// The most nodes that may wait in PENDING without credentials; new ones beyond are refused (an
    /// unauthenticated peer must not be able to fill the registry).
    #[serde(rename = "MaxPendingNodes")]
    pub max_pending_nodes: usize,
}

impl Default for OrchestratorAuthConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            token_file: String::new(),
            allowed_nodes: vec![],
            require_token: false,
            max_pending_nodes: 100,
        }
    }
}

/// `Compute.Auth`: the join token this compute node proves to its orchestrators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComputeAuthConfig {
    /// The join token (Bacalhau's name).
    #[serde(rename = "Token")]
    pub token: Secret,
    /// A file holding the token (first line), instead of `Token`.
    #[serde(rename = "TokenFile")]
    pub token_file: String,
}

/// Reads a token from `token` or `token_file` (one of them); `Ok(None)` when neither is set.
fn join_token(
    key: &'static str,
    token: &Secret,
    token_file: &str,
) -> Result<Option<crate::transport::JoinToken>, ConfigError> {
    let invalid = |value: String, reason: String| ConfigError::Invalid {
        key,
        value,
        source_name: "configuration".into(),
        reason,
    };
    let text = match (token.is_empty(), token_file.trim().is_empty()) {
        (true, true) => return Ok(None),
        (false, false) => {
            return Err(invalid(
                token_file.to_owned(),
                "set the token or the token file, not both".into(),
            ));
        }
        (false, true) => token.expose().to_owned(),
        (true, false) => std::fs::read_to_string(token_file.trim())
            .map_err(|e| {
                invalid(
                    token_file.to_owned(),
                    format!("cannot read the token file: {e}"),
                )
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    // Short tokens can be guessed offline from one captured proof; 16 characters is what
    // `openssl rand -hex 8` gives.
    match crate::transport::JoinToken::new(&text) {
        Some(_) if text.trim().len() < 16 => Err(invalid(
            "<redacted>".into(),
            "the join token must have at least 16 characters (e.g. `openssl rand -hex 16`)".into(),
        )),
        Some(t) => Ok(Some(t)),
        None => Err(invalid(
            token_file.to_owned(),
            "the token file is empty".into(),
        )),
    }
}

/// Compute settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComputeConfig {
    /// Node name (label `name`); defaults to the host name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Operator labels.
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    /// CPU given to jobs (cores; empty = 80 % of the machine).
    #[serde(rename = "CPU")]
    pub cpu: String,
    /// Memory given to jobs (empty = 80 % of the machine).
    #[serde(rename = "Memory")]
    pub memory: String,
    /// Host paths jobs may mount (`PATH[:ro|:rw]`, globs `/*`, `/**`).
    #[serde(rename = "AllowListedLocalPaths")]
    pub allow_listed_local_paths: Vec<String>,
    /// Heartbeat period.
    #[serde(rename = "HeartbeatInterval")]
    pub heartbeat_interval: String,
    /// Concurrent WASM executions.
    #[serde(rename = "WasmSlots")]
    pub wasm_slots: usize,
    /// Cap on stdout and on stderr.
    #[serde(rename = "MaxOutput")]
    pub max_output: String,
    /// Cap on the total size of one execution's result paths, enforced while it runs.
    #[serde(rename = "MaxOutputSize")]
    pub max_output_size: String,
    /// Timeout for tasks that set none (empty = none).
    #[serde(rename = "DefaultExecutionTimeout")]
    pub default_execution_timeout: String,
    /// Local publisher: address put in result URLs.
    #[serde(rename = "PublisherAddress")]
    pub publisher_address: String,
    /// Local publisher: port (0 = pick).
    #[serde(rename = "PublisherPort")]
    pub publisher_port: u16,
    /// Local publisher: listen host.
    #[serde(rename = "PublisherListen")]
    pub publisher_listen: String,
    /// Decline jobs that ask for any network (`Host`, `HTTP`, `Bridge`); they fail with the reason.
    #[serde(rename = "RejectNetworkedJobs")]
    pub reject_networked_jobs: bool,
    /// Disk for cached inputs (by content: URLs with a Checksum, inline data, IPFS CIDs, S3 ETags); least
    /// recently used ones go first. `0` turns the cache off.
    #[serde(rename = "InputCacheSize")]
    pub input_cache_size: String,
    /// Disk for kept results of jobs that opt in with `Meta: {cod.result-cache: "true"}`. `0` turns it off.
    #[serde(rename = "ResultCacheSize")]
    pub result_cache_size: String,
    /// The `docker` engine.
    #[serde(rename = "Docker")]
    pub docker: DockerConfig,
    /// `env:` references in `Task.Env` (Bacalhau's `Compute.Env.AllowList`).
    #[serde(rename = "Env")]
    pub env: ComputeEnvConfig,
    /// Image allow-list and per-job maximum.
    #[serde(rename = "Policy")]
    pub policy: ComputePolicyConfig,
    /// The join token proved to orchestrators.
    #[serde(rename = "Auth")]
    pub auth: ComputeAuthConfig,
    /// NVIDIA GPUs.
    #[serde(rename = "GPU")]
    pub gpu: GpuConfig,
}

/// `Compute.GPU`: finding NVIDIA GPUs and exposing them to containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuConfig {
    /// Look for GPUs (NVML, then the fallbacks). `false` advertises none.
    #[serde(rename = "Enabled")]
    pub enabled: bool,
    /// Where the driver's device nodes and libraries live (`/`; as the NVIDIA container toolkit's `root`).
    #[serde(rename = "DriverRoot")]
    pub driver_root: String,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            driver_root: "/".into(),
        }
    }
}

/// `docker` engine settings: registries, the image cache, and the sandbox's id range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DockerConfig {
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries always are, as with Docker.
    #[serde(rename = "InsecureRegistries")]
    pub insecure_registries: Vec<String>,
    /// Credentials by registry host (`ghcr.io`, `registry.lan:5000`; Docker Hub is `docker.io`).
    #[serde(rename = "Credentials")]
    pub credentials: BTreeMap<String, RegistryCredential>,
    /// Disk for pulled images; least recently used ones go first when it is exceeded.
    #[serde(rename = "ImageCacheSize")]
    pub image_cache_size: String,
    /// Host uid/gid that container root maps to (the user namespace's first id).
    #[serde(rename = "IdMapBase")]
    pub id_map_base: u32,
    /// Number of ids in the container's user namespace.
    #[serde(rename = "IdMapSize")]
    pub id_map_size: u32,
    /// Most processes per container (a fork bomb stops here).
    #[serde(rename = "PidsLimit")]
    pub pids_limit: u64,
    /// Let `HTTP` jobs reach allowed names that resolve to this node itself (off: a job listing `localhost`
    /// must not reach the node's API).
    #[serde(rename = "AllowLoopbackEgress")]
    pub allow_loopback_egress: bool,
}

/// How to log in to one registry: a user and password (Basic, or exchanged for a bearer token as the
/// registry asks), or a bearer token as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryCredential {
    /// User name.
    #[serde(rename = "Username")]
    pub username: String,
    /// Password.
    #[serde(rename = "Password")]
    pub password: Secret,
    /// Bearer token (instead of a user and password).
    #[serde(rename = "Token")]
    pub token: Secret,
}

/// A value that must never be shown: `Debug` and serialization (`/api/v1/agent/config`, logs) print a
/// placeholder; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether it is empty (not set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            insecure_registries: vec![],
            credentials: BTreeMap::new(),
            image_cache_size: "2GiB".into(),
            // Above the ids a distribution hands out to people and services, and a full 16-bit range so images
            // that use uids such as 65534 (nobody) work.
            id_map_base: 100_000,
            id_map_size: 65_536,
            pids_limit: 1024,
            allow_loopback_egress: false,
        }
    }
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// LMDB map size.
    #[serde(rename = "MapSize")]
    pub map_size: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            roles: Roles {
                orchestrator: true,
                compute: true,
            },
            api: ApiConfig::default(),
            transport: TransportConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            compute: ComputeConfig::default(),
            store: StoreConfig::default(),
            ipfs: IpfsConfig::default(),
            s3: S3Config::default(),
            publishers: PublishersConfig::default(),
            input_sources: InputSourcesConfig::default(),
            engines: EnginesConfig::default(),
            job_admission_control: JobAdmissionControlConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 1234,
            auth: ApiAuthConfig::default(),
            tls: ApiTlsConfig::default(),
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/1235".into()],
            orchestrators: vec![],
            swarm_key_file: String::new(),
        }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            manual_approval: false,
            disconnect_timeout: "60s".into(),
            node_lost_after: "10m".into(),
            housekeeping_interval: "5s".into(),
            queue_backoff: "10s".into(),
            over_subscription_factor: 1.0,
            default_cpu: "100m".into(),
            default_memory: "64MiB".into(),
            auth: OrchestratorAuthConfig::default(),
        }
    }
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            labels: BTreeMap::new(),
            cpu: String::new(),
            memory: String::new(),
            allow_listed_local_paths: vec![],
            heartbeat_interval: "15s".into(),
            wasm_slots: 0,
            max_output: "1GiB".into(),
            max_output_size: "10GiB".into(),
            default_execution_timeout: String::new(),
            publisher_address: "127.0.0.1".into(),
            publisher_port: 6001,
            publisher_listen: "0.0.0.0".into(),
            reject_networked_jobs: false,
            // Room for a few typical edge datasets and models on an SD card, small next to the image cache.
            input_cache_size: "1GiB".into(),
            result_cache_size: "256MiB".into(),
            docker: DockerConfig::default(),
            env: ComputeEnvConfig::default(),
            policy: ComputePolicyConfig::default(),
            auth: ComputeAuthConfig::default(),
            gpu: GpuConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            map_size: "1GiB".into(),
        }
    }
}

/// `~/.cod`, or `/var/lib/cod` without a home; the CLI looks for the node's `api-token` here too.
pub(crate) fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".cod"),
        _ => PathBuf::from("/var/lib/cod"),
    }
}

/// A configuration problem, naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or parsed.
    #[error("config file {path:?}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A value is invalid.
    #[error("{key} = {value:?} (from {source_name}): {reason}")]
    Invalid {
        /// The key (`Compute.HeartbeatInterval`).
        key: &'static str,
        /// The value.
        value: String,
        /// `default`, the file, `COD_…` or `--flag`.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a config file (YAML or JSON, keys case-insensitive) over the defaults.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let value = ci::parse_document(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    ci::from_value(value).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Applies `COD_*` variables read through `env` (a lookup, so tests need not touch the process environment).
pub fn apply_env(
    config: &mut Config,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, String)> {
    let mut applied = Vec::new();
    let mut take = |key: &'static str| {
        let v = env(key)?;
        applied.push((key, v.clone()));
        Some(v)
    };
    if let Some(v) = take("COD_IPFS_STORE_SIZE") {
        config.ipfs.store_size = v;
    }
    if let Some(v) = take("COD_IPFS_PEERS") {
        config.ipfs.peers = split_list(&v);
    }
    if let Some(v) = take("COD_IPFS_GATEWAYS") {
        config.ipfs.gateways = split_list(&v);
    }
    if let Some(v) = take("COD_DATA_DIR") {
        config.data_dir = v.into();
    }
    if let Some(v) = take("COD_API_HOST") {
        config.api.host = v;
    }
    if let Some(v) = take("COD_API_PORT")
        && let Ok(p) = v.parse()
    {
        config.api.port = p;
    }
    if let Some(v) = take("COD_LISTEN") {
        config.transport.listen = split_list(&v);
    }
    if let Some(v) = take("COD_ORCHESTRATORS") {
        config.transport.orchestrators = split_list(&v);
    }
    if let Some(v) = take("COD_LABELS") {
        config.compute.labels.extend(parse_labels(&v));
    }
    if let Some(v) = take("COD_ALLOW_LISTED_LOCAL_PATHS") {
        config.compute.allow_listed_local_paths = split_list(&v);
    }
    // Like COD_API_PORT, a value that does not parse leaves the file's setting.
    if let Some(v) = take("COD_COMPUTE_GPU_ENABLED") {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => config.compute.gpu.enabled = true,
            "false" | "0" => config.compute.gpu.enabled = false,
            _ => {}
        }
    }
    if let Some(v) = take("COD_COMPUTE_GPU_DRIVER_ROOT") {
        config.compute.gpu.driver_root = v;
    }
    // Tokens are recorded by name only.
    if let Some(v) = env("COD_ORCHESTRATOR_AUTH_TOKEN") {
        applied.push(("COD_ORCHESTRATOR_AUTH_TOKEN", "<redacted>".into()));
        config.orchestrator.auth.token = Secret::new(v);
    }
    if let Some(v) = env("COD_COMPUTE_AUTH_TOKEN") {
        applied.push(("COD_COMPUTE_AUTH_TOKEN", "<redacted>".into()));
        config.compute.auth.token = Secret::new(v);
    }
    apply_aws_env(&mut config.s3, &env, &mut applied);
    applied
}

/// Fills S3 keys the file left empty from the AWS variables (see [`S3Config`]). Secrets are recorded in
/// `applied` by name only.
fn apply_aws_env(
    s3: &mut S3Config,
    env: &impl Fn(&str) -> Option<String>,
    applied: &mut Vec<(&'static str, String)>,
) {
    let mut take = |key: &'static str, secret: bool| {
        let v = env(key).filter(|v| !v.trim().is_empty())?;
        applied.push((
            key,
            if secret {
                "<redacted>".into()
            } else {
                v.clone()
            },
        ));
        Some(v)
    };
    if s3.access_key_id.is_empty()
        && s3.secret_access_key.is_empty()
        && let Some(id) = take("AWS_ACCESS_KEY_ID", false)
    {
        s3.access_key_id = id;
        if let Some(secret) = take("AWS_SECRET_ACCESS_KEY", true) {
            s3.secret_access_key = Secret::new(secret);
        }
        if s3.session_token.is_empty()
            && let Some(token) = take("AWS_SESSION_TOKEN", true)
        {
            s3.session_token = Secret::new(token);
        }
    }
    if s3.region.is_empty()
        && let Some(region) =
            take("AWS_REGION", false).or_else(|| take("AWS_DEFAULT_REGION", false))
    {
        s3.region = region;
    }
    if s3.endpoint.is_empty()
        && let Some(endpoint) = take("AWS_ENDPOINT_URL", false)
    {
        s3.endpoint = endpoint;
    }
}

/// Splits `a,b,c` into trimmed non-empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> BTreeMap<String, String> {
    split_list(s)
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        source_name: "configuration".into(),
        reason: format!("not a duration like \"15s\" or \"2m\": {e}"),
    })
}

fn bytes(key: &'static str, value: &str) -> Result<u64, ConfigError> {
    resources::parse_bytes("size", value).map_err(|e| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        source_name: "configuration".into(),
        reason: e.to_string(),
    })
}

/// Everything validated and converted, ready for the components.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The config as given (for `cod config show` and `/agent/config`).
    pub raw: Config,
    /// Orchestrator part (only a build with the `orchestrator` feature has one).
    #[cfg(feature = "orchestrator")]
    pub orchestrator: crate::orchestrator::Config,
    /// Resources for tasks that state none (`Orchestrator.DefaultCPU`/`DefaultMemory`): the orchestrator
    /// schedules with them and a compute node reserves them.
    pub job_defaults: crate::model::resources::JobDefaults,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Capacity for jobs.
    pub capacity: Resources,
    /// Output cap.
    pub max_output_bytes: u64,
    /// Cap on one execution's result paths.
    pub max_output_size_bytes: u64,
    /// Default execution timeout.
    pub default_timeout: Option<Duration>,
    /// LMDB map size.
    pub map_size: usize,
    /// WASM worker threads.
    pub wasm_slots: usize,
    /// Node name.
    pub name: String,
    /// Image cache budget in bytes.
    pub image_cache_bytes: u64,
    /// Input cache budget in bytes (0 = off).
    pub input_cache_bytes: u64,
    /// Result cache budget in bytes (0 = off).
    pub result_cache_bytes: u64,
    /// Lifetime of pre-signed S3 result URLs; `None` when signing is disabled.
    pub s3_presign_expiry: Option<Duration>,
    /// IPFS block store budget in bytes.
    pub ipfs_store_bytes: u64,
    /// Limit for fetching one `ipfs` input.
    pub ipfs_fetch_timeout: Duration,
    /// `InputSources.ReadTimeout`.
    pub input_read_timeout: Duration,
    /// `InputSources.MaxSize` in bytes.
    pub input_max_bytes: u64,
    /// The compute policy (disabled backends, image allow-list, per-job maximum, networks, env references).
    pub policy: crate::compute::Policy,
    /// `Compute.Auth`: the join token a compute-only node proves to its orchestrators.
    pub compute_join_token: Option<crate::transport::JoinToken>,
    /// `Transport.SwarmKeyFile`, loaded.
    pub swarm_key: Option<crate::transport::SwarmKey>,
    /// `Compute.GPU`.
    pub gpu: crate::gpu::GpuSettings,
}

impl Config {
    /// The IPFS block store budget (`Ipfs.StoreSize`), for `cod ipfs`, which needs no other setting.
    pub fn ipfs_store_bytes(&self) -> Result<u64, ConfigError> {
        bytes("Ipfs.StoreSize", &self.ipfs.store_size)
    }

    /// Checks every value and converts units; reports the first bad key.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        if !self.roles.orchestrator && !self.roles.compute {
            return Err(ConfigError::Invalid {
                key: "Roles",
                value: "none".into(),
                source_name: "configuration".into(),
                reason: "a node needs at least one role".into(),
            });
        }
        self.roles_built()?;
        if self.roles.compute && !self.roles.orchestrator && self.transport.orchestrators.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "Transport.Orchestrators",
                value: String::new(),
                source_name: "configuration".into(),
                reason: "a compute-only node needs --orchestrators <multiaddr>".into(),
            });
        }
        let job_defaults = self.job_defaults()?;
        #[cfg(feature = "orchestrator")]
        let orchestrator = self.orchestrator_settings(job_defaults)?;
        let s3 = &self.s3;
        if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
            return Err(ConfigError::Invalid {
                key: if s3.access_key_id.is_empty() {
                    "S3.AccessKeyID"
                } else {
                    "S3.SecretAccessKey"
                },
                value: String::new(),
                source_name: "configuration".into(),
                reason:
                    "S3.AccessKeyID and S3.SecretAccessKey go together: set both, or neither for \
                         anonymous access"
                        .into(),
            });
        }
        let presign = &self.publishers.types.s3;
        let s3_presign_expiry = if presign.pre_signed_url_disabled {
            None
        } else {
            let key = "Publishers.Types.S3.PreSignedURLExpiration";
            let expiry = duration(key, &presign.pre_signed_url_expiration)?;
            // SigV4 query signing allows 1 second to 7 days.
            if expiry < Duration::from_secs(1) || expiry > Duration::from_secs(7 * 24 * 3600) {
                return Err(ConfigError::Invalid {
                    key,
                    value: presign.pre_signed_url_expiration.clone(),
                    source_name: "configuration".into(),
                    reason: "must be between 1s and 7 days (S3's limits)".into(),
                });
            }
            Some(expiry)
        };
        let c = &self.compute;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let cpu = if c.cpu.is_empty() {
            cores * 0.8
        } else {
            resources::parse_cpu(&c.cpu).map_err(|e| ConfigError::Invalid {
                key: "Compute.CPU",
                value: c.cpu.clone(),
                source_name: "configuration".into(),
                reason: e.to_string(),
            })?
        };
        let memory = if c.memory.is_empty() {
            total_memory().map(|m| m / 10 * 8).unwrap_or(512 << 20)
        } else {
            bytes("Compute.Memory", &c.memory)?
        };
        let default_timeout = if c.default_execution_timeout.is_empty() {
            None
        } else {
            Some(duration(
                "Compute.DefaultExecutionTimeout",
                &c.default_execution_timeout,
            )?)
        };
        let map_size =
            usize::try_from(bytes("Store.MapSize", &self.store.map_size)?).unwrap_or(usize::MAX);
        let name = if c.name.is_empty() {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "cod".into())
        } else {
            c.name.clone()
        };
        Ok(Resolved {
            raw: self.clone(),
            #[cfg(feature = "orchestrator")]
            orchestrator,
            job_defaults,
            heartbeat_interval: duration("Compute.HeartbeatInterval", &c.heartbeat_interval)?,
            capacity: Resources {
                cpu,
                memory,
                disk: 0,
                gpu: 0,
            },
            max_output_bytes: bytes("Compute.MaxOutput", &c.max_output)?,
            max_output_size_bytes: bytes("Compute.MaxOutputSize", &c.max_output_size)?,
            default_timeout,
            map_size,
            wasm_slots: if c.wasm_slots == 0 {
                cores.max(1.0) as usize
            } else {
                c.wasm_slots
            },
            name,
            image_cache_bytes: bytes("Compute.Docker.ImageCacheSize", &c.docker.image_cache_size)?,
            input_cache_bytes: bytes("Compute.InputCacheSize", &c.input_cache_size)?,
            result_cache_bytes: bytes("Compute.ResultCacheSize", &c.result_cache_size)?,
            s3_presign_expiry,
            ipfs_store_bytes: self.ipfs_store_bytes()?,
            input_read_timeout: duration(
                "InputSources.ReadTimeout",
                &self.input_sources.read_timeout,
            )?,
            input_max_bytes: bytes("InputSources.MaxSize", &self.input_sources.max_size)?,
            ipfs_fetch_timeout: duration("Ipfs.FetchTimeout", &self.ipfs.fetch_timeout)?,
            compute_join_token: join_token(
                "Compute.Auth.Token",
                &c.auth.token,
                &c.auth.token_file,
            )?,
            swarm_key: self.swarm_key()?,
            policy: self.policy()?,
            gpu: self.gpu_settings()?,
        })
    }

    /// `Compute.GPU` resolved: the driver root must be an absolute path (`/` on a normal host).
    fn gpu_settings(&self) -> Result<crate::gpu::GpuSettings, ConfigError> {
        let g = &self.compute.gpu;
        let root = std::path::PathBuf::from(g.driver_root.trim());
        if !root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "Compute.GPU.DriverRoot",
                value: g.driver_root.clone(),
                source_name: "configuration".into(),
                reason: "must be an absolute path: \"/\" on a normal host, or where the driver's files are \
                         mounted (as the NVIDIA container toolkit's root)"
                    .into(),
            });
        }
        Ok(crate::gpu::GpuSettings {
            enabled: g.enabled,
            driver_root: root,
        })
    }

    /// The compute policy from its keys (see [`crate::compute::policy`]).
    fn policy(&self) -> Result<crate::compute::Policy, ConfigError> {
        use crate::model::{EngineKind, PublisherKind, SourceKind};
        fn kinds<K: Ord>(
            key: &'static str,
            names: &[String],
            parse: impl Fn(&str) -> Option<K>,
            known: &str,
        ) -> Result<std::collections::BTreeSet<K>, ConfigError> {
            names
                .iter()
                .map(|n| {
                    parse(n).ok_or_else(|| ConfigError::Invalid {
                        key,
                        value: n.clone(),
                        source_name: "configuration".into(),
                        reason: format!("not a type this node knows (known: {known})"),
                    })
                })
                .collect()
        }
        let invalid = |key: &'static str, value: &str, reason: String| ConfigError::Invalid {
            key,
            value: value.to_owned(),
            source_name: "configuration".into(),
            reason,
        };
        fn optional(s: &str) -> Option<&str> {
            Some(s.trim()).filter(|s| !s.is_empty())
        }
        let m = &self.compute.policy.max_job;
        let max_job = crate::compute::policy::MaxJob {
            cpu: optional(&m.cpu)
                .map(|v| {
                    resources::parse_cpu(v)
                        .map_err(|e| invalid("Compute.Policy.MaxJob.CPU", v, e.to_string()))
                })
                .transpose()?,
            memory: optional(&m.memory)
                .map(|v| bytes("Compute.Policy.MaxJob.Memory", v))
                .transpose()?,
            disk: optional(&m.disk)
                .map(|v| bytes("Compute.Policy.MaxJob.Disk", v))
                .transpose()?,
            gpu: optional(&m.gpu)
                .map(|v| {
                    resources::parse_gpu(v)
                        .map_err(|e| invalid("Compute.Policy.MaxJob.GPU", v, e.to_string()))
                })
                .transpose()?,
        };
        let image_allow_list = self
            .compute
            .policy
            .image_allow_list
            .iter()
            .map(|p| {
                crate::compute::policy::ImagePattern::parse(p)
                    .map_err(|e| invalid("Compute.Policy.ImageAllowList", p, e))
            })
            .collect::<Result<_, _>>()?;
        if let Some(bad) = self
            .compute
            .env
            .allow_list
            .iter()
            .find(|p| p.trim().is_empty())
        {
            return Err(invalid(
                "Compute.Env.AllowList",
                bad,
                "an empty pattern admits nothing; remove it".into(),
            ));
        }
        Ok(crate::compute::Policy {
            disabled_engines: kinds(
                "Engines.Disabled",
                &self.engines.disabled,
                EngineKind::parse,
                "wasm, docker",
            )?,
            disabled_sources: kinds(
                "InputSources.Disabled",
                &self.input_sources.disabled,
                SourceKind::parse,
                "inline, local, urlDownload, ipfs, s3",
            )?,
            disabled_publishers: kinds(
                "Publishers.Disabled",
                &self.publishers.disabled,
                PublisherKind::parse,
                "local, noop, ipfs, s3",
            )?,
            image_allow_list,
            max_job,
            reject_networked_jobs: self.compute.reject_networked_jobs
                || self.job_admission_control.reject_networked_jobs,
            env_allow_list: self
                .compute
                .env
                .allow_list
                .iter()
                .map(|p| p.trim().to_owned())
                .collect(),
        })
    }

    /// Refuses a role this binary was built without, before anything starts. An edge build has no
    /// orchestrator, and `cod serve` with no role flags asks for both roles, so the message says how to run it.
    fn roles_built(&self) -> Result<(), ConfigError> {
        let missing = if self.roles.orchestrator && !cfg!(feature = "orchestrator") {
            Some((
                "orchestrator",
                "this cod is a compute-only (edge) build, without the `orchestrator` feature: run it with \
                 --compute --orchestrators <multiaddr>, and run the orchestrator with a full cod build",
            ))
        } else if self.roles.compute && !cfg!(feature = "compute") {
            Some((
                "compute",
                "this cod was built without the `compute` feature: run it with --orchestrator, and run \
                 compute nodes with a build that has it",
            ))
        } else {
            None
        };
        match missing {
            Some((role, reason)) => Err(ConfigError::Invalid {
                key: "Roles",
                value: role.into(),
                source_name: "configuration".into(),
                reason: reason.into(),
            }),
            None => Ok(()),
        }
    }

    /// `Orchestrator.DefaultCPU` and `DefaultMemory`: the resources of a task that states none. Resolved in
    /// every build, because a compute node sizes such executions with them too.
    fn job_defaults(&self) -> Result<crate::model::resources::JobDefaults, ConfigError> {
        let o = &self.orchestrator;
        let cpu = resources::parse_cpu(&o.default_cpu).map_err(|e| ConfigError::Invalid {
            key: "Orchestrator.DefaultCPU",
            value: o.default_cpu.clone(),
            source_name: "configuration".into(),
            reason: e.to_string(),
        })?;
        Ok(crate::model::resources::JobDefaults {
            cpu,
            memory: bytes("Orchestrator.DefaultMemory", &o.default_memory)?,
        })
    }

    /// The rest of `Orchestrator.*` checked and converted. Only a build with the orchestrator checks it: an
    /// edge build refuses the role (see [`Config::resolve`]) and ignores the keys.
    #[cfg(feature = "orchestrator")]
    fn orchestrator_settings(
        &self,
        job_defaults: crate::model::resources::JobDefaults,
    ) -> Result<crate::orchestrator::Config, ConfigError> {
        let o = &self.orchestrator;
        let node_lost_after = duration("Orchestrator.NodeLostAfter", &o.node_lost_after)?;
        if node_lost_after.is_zero() {
            return Err(ConfigError::Invalid {
                key: "Orchestrator.NodeLostAfter",
                value: o.node_lost_after.clone(),
                source_name: "configuration".into(),
                reason:
                    "must be longer than zero (a node is lost after being disconnected this long)"
                        .into(),
            });
        }
        let disconnect_timeout = duration("Orchestrator.DisconnectTimeout", &o.disconnect_timeout)?;
        Ok(crate::orchestrator::Config {
            auto_approve: !o.manual_approval,
            disconnect_timeout,
            node_lost_after,
            // Disconnects and losses are noticed on housekeeping ticks, so tick at least twice per timeout.
            housekeeping_interval: duration(
                "Orchestrator.HousekeepingInterval",
                &o.housekeeping_interval,
            )?
            .min(disconnect_timeout / 2)
            .min(node_lost_after / 2),
            queue_backoff: duration("Orchestrator.QueueBackoff", &o.queue_backoff)?,
            over_subscription: if o.over_subscription_factor.is_finite()
                && (1.0..=100.0).contains(&o.over_subscription_factor)
            {
                o.over_subscription_factor
            } else {
                return Err(ConfigError::Invalid {
                    key: "Orchestrator.OverSubscriptionFactor",
                    value: o.over_subscription_factor.to_string(),
                    source_name: "configuration".into(),
                    reason: "must be a number from 1 (no over-subscription) to 100".into(),
                });
            },
            job_defaults,
            admission: self.admission_policy()?,
        })
    }

    /// `Orchestrator.Auth` checked and converted.
    #[cfg(feature = "orchestrator")]
    fn admission_policy(&self) -> Result<crate::orchestrator::admission::Policy, ConfigError> {
        let a = &self.orchestrator.auth;
        let token = join_token("Orchestrator.Auth.Token", &a.token, &a.token_file)?;
        let allowed = a
            .allowed_nodes
            .iter()
            .map(|text| {
                crate::transport::parse_node_id(text).map_err(|reason| ConfigError::Invalid {
                    key: "Orchestrator.Auth.AllowedNodes",
                    value: text.clone(),
                    source_name: "configuration".into(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        if a.require_token && token.is_none() && a.allowed_nodes.is_empty() {
            return Err(ConfigError::Invalid {
                key: "Orchestrator.Auth.RequireToken",
                value: "true".into(),
                source_name: "configuration".into(),
                reason: "no node could ever join: set Orchestrator.Auth.Token (or TokenFile) or \
                         Orchestrator.Auth.AllowedNodes"
                    .into(),
            });
        }
        Ok(crate::orchestrator::admission::Policy {
            token,
            allowed,
            require_token: a.require_token,
            max_pending: a.max_pending_nodes,
        })
    }

    /// `Transport.SwarmKeyFile` loaded, or `None` when unset.
    fn swarm_key(&self) -> Result<Option<crate::transport::SwarmKey>, ConfigError> {
        let path = self.transport.swarm_key_file.trim();
        if path.is_empty() {
            return Ok(None);
        }
        crate::transport::SwarmKey::load(Path::new(path))
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key: "Transport.SwarmKeyFile",
                value: path.to_owned(),
                source_name: "configuration".into(),
                reason: format!("{e:#}"),
            })
    }
}

/// Total memory of the machine (or of the cgroup, when that is smaller), from /proc.
fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut total = kb * 1024;
    for limit_file in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(text) = std::fs::read_to_string(limit_file)
            && let Ok(limit) = text.trim().parse::<u64>()
        {
            total = total.min(limit);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `c` as this build can resolve it: a build without the orchestrator (the edge flavor) refuses
    /// the hybrid default, so there the tests' nodes are compute nodes with an orchestrator to dial.
    fn built(mut c: Config) -> Config {
        if !cfg!(feature = "orchestrator") {
            c.roles.orchestrator = false;
            if c.transport.orchestrators.is_empty() {
                c.transport.orchestrators = vec!["/ip4/127.0.0.1/tcp/1235".into()];
            }
        }
        c
    }

    #[test]
    #[cfg(not(feature = "orchestrator"))]
    fn a_build_without_the_orchestrator_refuses_the_role_and_says_what_to_run() {
        let hybrid = Config::default();
        let e = hybrid
            .resolve()
            .expect_err("a hybrid node needs the orchestrator");
        let text = e.to_string();
        assert!(text.starts_with("Roles = \"orchestrator\""), "{text}");
        assert!(text.contains("--compute --orchestrators"), "{text}");
        let mut compute = built(Config::default());
        compute.orchestrator.default_memory = "128MiB".into();
        let r = compute.resolve().expect("a compute node resolves");
        // A compute node sizes executions that state no resources with the orchestrator's defaults.
        assert_eq!(r.job_defaults.memory, 128 << 20);
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "api: {port: 9999, host: 127.0.0.1}\ncompute: {labels: {zone: north}}\n",
        )
        .expect("write");
        let mut c = built(load_file(&path).expect("loads"));
        assert_eq!(c.api.port, 9999);
        assert_eq!(
            c.compute.heartbeat_interval, "15s",
            "defaults fill what the file leaves out"
        );
        apply_env(&mut c, |k| (k == "COD_API_PORT").then(|| "7777".to_owned()));
        assert_eq!(c.api.port, 7777);
        assert_eq!(
            c.compute.labels.get("zone").map(String::as_str),
            Some("north")
        );
        c.resolve().expect("valid");
    }

    #[test]
    fn gpu_settings_from_file_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "compute: {gpu: {enabled: false, driverRoot: /run/nvidia/driver}}\n",
        )
        .expect("write");
        let mut c = built(load_file(&path).expect("loads"));
        let r = c.resolve().expect("valid");
        assert!(!r.gpu.enabled);
        assert_eq!(r.gpu.driver_root, Path::new("/run/nvidia/driver"));
        apply_env(&mut c, |k| match k {
            "COD_COMPUTE_GPU_ENABLED" => Some("TRUE".to_owned()),
            "COD_COMPUTE_GPU_DRIVER_ROOT" => Some("/".to_owned()),
            _ => None,
        });
        let r = c.resolve().expect("valid");
        assert_eq!(r.gpu, crate::gpu::GpuSettings::default());
        apply_env(&mut c, |k| {
            (k == "COD_COMPUTE_GPU_ENABLED").then(|| "maybe".to_owned())
        });
        assert!(
            c.compute.gpu.enabled,
            "an unreadable value leaves the setting"
        );
        c.compute.gpu.driver_root = "run/nvidia".into();
        let e = c.resolve().expect_err("relative root");
        assert!(e.to_string().contains("Compute.GPU.DriverRoot"), "{e}");
        assert_eq!(
            built(Config::default()).resolve().map(|r| r.gpu).ok(),
            Some(crate::gpu::GpuSettings::default())
        );
    }

    #[test]
    fn registry_secrets_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "compute:\n  docker:\n    credentials:\n      registry.lan:5000: {username: ci, password: hunter2}\n",
        )
        .expect("write");
        let c = built(load_file(&path).expect("loads"));
        let cred = &c.compute.docker.credentials["registry.lan:5000"];
        assert_eq!(cred.password.expose(), "hunter2");
        assert!(cred.token.is_empty());
        let shown = format!("{c:?} {}", serde_json::to_string(&c).expect("serializes"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn input_source_limits_use_bacalhaus_keys() {
        let r = built(Config::default()).resolve().expect("valid");
        assert_eq!(r.input_read_timeout, Duration::from_secs(300));
        assert_eq!(r.input_max_bytes, 1 << 30);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "inputsources: {readTimeout: 2s, MaxRetryCount: 1, maxsize: 1KiB}\n",
        )
        .expect("write");
        let c = built(load_file(&path).expect("loads"));
        assert_eq!(c.input_sources.max_retry_count, 1);
        let r = c.resolve().expect("valid");
        assert_eq!(
            (r.input_read_timeout, r.input_max_bytes),
            (Duration::from_secs(2), 1024)
        );
        let mut c = built(Config::default());
        c.input_sources.read_timeout = "soon".into();
        let err = c.resolve().expect_err("invalid").to_string();
        assert!(err.contains("InputSources.ReadTimeout"), "{err}");
    }

    #[test]
    fn cache_sizes_default_on_and_zero_turns_them_off() {
        let r = built(Config::default()).resolve().expect("valid");
        assert_eq!(r.input_cache_bytes, 1 << 30);
        assert_eq!(r.result_cache_bytes, 256 << 20);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "compute: {inputCacheSize: \"0\", resultcachesize: 10MiB}\n",
        )
        .expect("write");
        let r = built(load_file(&path).expect("loads"))
            .resolve()
            .expect("valid");
        assert_eq!((r.input_cache_bytes, r.result_cache_bytes), (0, 10 << 20));
        let mut c = built(Config::default());
        c.compute.input_cache_size = "lots".into();
        let err = c.resolve().expect_err("invalid").to_string();
        assert!(err.contains("Compute.InputCacheSize"), "{err}");
    }

    #[test]
    fn aws_variables_fill_only_what_the_file_leaves_empty() {
        let aws = |k: &str| {
            match k {
                "AWS_ACCESS_KEY_ID" => Some("AKIAENV"),
                "AWS_SECRET_ACCESS_KEY" => Some("env-secret"),
                "AWS_SESSION_TOKEN" => Some("env-token"),
                "AWS_DEFAULT_REGION" => Some("eu-west-1"),
                "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let mut c = built(Config::default());
        let applied = apply_env(&mut c, aws);
        assert_eq!(c.s3.access_key_id, "AKIAENV");
        assert_eq!(c.s3.secret_access_key.expose(), "env-secret");
        assert_eq!(c.s3.session_token.expose(), "env-token");
        assert_eq!(c.s3.region, "eu-west-1");
        assert_eq!(c.s3.endpoint, "http://127.0.0.1:9000");
        let shown = format!("{applied:?} {c:?}");
        assert!(
            !shown.contains("env-secret") && !shown.contains("env-token"),
            "{shown}"
        );

        // Credentials from the file win as a set: no env secret is paired with the file's key.
        let mut c = built(Config::default());
        c.s3.access_key_id = "AKIAFILE".into();
        c.s3.secret_access_key = Secret::new("file-secret");
        c.s3.region = "us-west-2".into();
        apply_env(&mut c, aws);
        assert_eq!(c.s3.access_key_id, "AKIAFILE");
        assert_eq!(c.s3.secret_access_key.expose(), "file-secret");
        assert!(c.s3.session_token.is_empty());
        assert_eq!(c.s3.region, "us-west-2");
    }

    #[test]
    fn s3_settings_are_validated() {
        let mut c = built(Config::default());
        c.s3.access_key_id = "AKIA".into();
        let err = c.resolve().expect_err("secret missing").to_string();
        assert!(err.contains("S3.SecretAccessKey"), "{err}");
        let mut c = built(Config::default());
        c.publishers.types.s3.pre_signed_url_expiration = "8d".into();
        let err = c.resolve().expect_err("too long").to_string();
        assert!(err.contains("PreSignedURLExpiration"), "{err}");
        let mut c = built(Config::default());
        assert_eq!(
            c.resolve().expect("valid").s3_presign_expiry,
            Some(Duration::from_secs(30 * 60))
        );
        c.publishers.types.s3.pre_signed_url_disabled = true;
        assert_eq!(c.resolve().expect("valid").s3_presign_expiry, None);
    }

    #[test]
    fn policy_keys_use_bacalhaus_names_and_bad_entries_name_their_key() {
        use crate::model::{EngineKind, PublisherKind, SourceKind};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "engines: {disabled: [Docker]}\ninputsources: {disabled: [urlDownload]}\n\
             publishers: {disabled: [s3]}\njobAdmissionControl: {rejectNetworkedJobs: true}\n\
             compute: {env: {allowList: [EDGE_*]}, policy: {imageAllowList: [alpine], \
             maxJob: {cpu: 500m, memory: 1GiB, gpu: \"1\"}}}\n",
        )
        .expect("write");
        let p = built(load_file(&path).expect("loads"))
            .resolve()
            .expect("valid")
            .policy;
        assert!(p.disabled_engines.contains(&EngineKind::Docker));
        assert!(p.disabled_sources.contains(&SourceKind::UrlDownload));
        assert!(p.disabled_publishers.contains(&PublisherKind::S3));
        assert!(p.reject_networked_jobs);
        assert_eq!(p.env_allow_list, ["EDGE_*"]);
        assert_eq!(p.image_allow_list.len(), 1);
        assert_eq!(
            (
                p.max_job.cpu,
                p.max_job.memory,
                p.max_job.disk,
                p.max_job.gpu
            ),
            (Some(0.5), Some(1 << 30), None, Some(1))
        );
        assert_eq!(
            built(Config::default()).resolve().expect("valid").policy,
            crate::compute::Policy::default(),
            "the default policy admits everything"
        );

        let mut c = built(Config::default());
        c.engines.disabled = vec!["podman".into()];
        let err = c.resolve().expect_err("unknown engine").to_string();
        assert!(
            err.contains("Engines.Disabled") && err.contains("podman"),
            "{err}"
        );
        let mut c = built(Config::default());
        c.compute.policy.max_job.memory = "lots".into();
        let err = c.resolve().expect_err("bad size").to_string();
        assert!(err.contains("Compute.Policy.MaxJob.Memory"), "{err}");
        let mut c = built(Config::default());
        c.compute.policy.image_allow_list = vec!["a//b".into()];
        let err = c.resolve().expect_err("bad pattern").to_string();
        assert!(err.contains("Compute.Policy.ImageAllowList"), "{err}");
    }

    #[test]
    #[cfg(feature = "orchestrator")]
    fn node_lost_after_defaults_to_ten_minutes_and_must_be_positive() {
        let resolved = Config::default().resolve().expect("defaults");
        assert_eq!(
            resolved.orchestrator.node_lost_after,
            Duration::from_secs(600)
        );
        let mut c = Config::default();
        c.orchestrator.node_lost_after = "3s".into();
        let resolved = c.resolve().expect("3s");
        assert_eq!(
            resolved.orchestrator.node_lost_after,
            Duration::from_secs(3)
        );
        assert!(resolved.orchestrator.housekeeping_interval <= Duration::from_millis(1500));
        for bad in ["0s", "later"] {
            let mut c = Config::default();
            c.orchestrator.node_lost_after = bad.into();
            let err = c.resolve().expect_err(bad).to_string();
            assert!(err.contains("Orchestrator.NodeLostAfter"), "{err}");
        }
    }

    #[test]
    #[cfg(feature = "orchestrator")]
    fn over_subscription_factor_is_bounded() {
        for bad in [0.5, f64::NAN, 101.0] {
            let mut c = Config::default();
            c.orchestrator.over_subscription_factor = bad;
            let err = c.resolve().expect_err("invalid").to_string();
            assert!(err.contains("Orchestrator.OverSubscriptionFactor"), "{err}");
        }
        let mut c = Config::default();
        c.orchestrator.over_subscription_factor = 1.5;
        assert!(c.resolve().is_ok());
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut c = built(Config::default());
        c.compute.heartbeat_interval = "soon".into();
        let err = c.resolve().expect_err("invalid").to_string();
        assert!(err.contains("Compute.HeartbeatInterval"), "{err}");
        let mut c = Config::default();
        c.roles.orchestrator = false;
        assert!(
            c.resolve()
                .expect_err("needs orchestrators")
                .to_string()
                .contains("--orchestrators")
        );
    }

    #[test]
    #[cfg(feature = "orchestrator")]
    fn join_tokens_come_from_the_value_or_a_file_and_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-the-file-0123456789\nignored second line\n").expect("write");
        let mut c = Config::default();
        c.orchestrator.auth.token_file = file.display().to_string();
        c.compute.auth.token = Secret::new("from-the-value-0123456789");
        let r = c.resolve().expect("valid");
        let policy = r.orchestrator.admission;
        let (node, orch) = (
            crate::model::NodeId::from("n".to_owned()),
            crate::model::NodeId::from("o".to_owned()),
        );
        let file_token =
            crate::transport::JoinToken::new("from-the-file-0123456789").expect("token");
        let proof = file_token.prove(&node, &orch);
        assert!(policy.token.expect("set").verify(&proof, &node, &orch));
        assert!(r.compute_join_token.is_some());
        let shown = serde_json::to_string(&c).expect("serializes");
        assert!(!shown.contains("from-the-value"), "{shown}");

        // Both at once, a short token, an empty or missing file: each names its key.
        c.orchestrator.auth.token = Secret::new("another-value-0123456789");
        for (setup, key, why) in [
            (
                Box::new(|_: &mut Config| {}) as Box<dyn Fn(&mut Config)>,
                "Orchestrator.Auth.Token",
                "not both",
            ),
            (
                Box::new(|c: &mut Config| {
                    c.orchestrator.auth.token_file.clear();
                    c.orchestrator.auth.token = Secret::new("short");
                }),
                "Orchestrator.Auth.Token",
                "at least 16",
            ),
            (
                Box::new(|c: &mut Config| {
                    c.orchestrator.auth.token_file.clear();
                    c.compute.auth.token = Secret::default();
                    c.compute.auth.token_file = "/nonexistent/token".into();
                }),
                "Compute.Auth.Token",
                "cannot read",
            ),
        ] {
            let mut bad = c.clone();
            setup(&mut bad);
            let err = bad.resolve().expect_err("invalid").to_string();
            assert!(err.contains(key) && err.contains(why), "{err}");
            assert!(
                !err.contains("0123456789"),
                "the error shows the token: {err}"
            );
        }
    }

    #[test]
    #[cfg(feature = "orchestrator")]
    fn allowed_nodes_must_be_peer_ids_and_require_token_needs_a_way_in() {
        let mut c = Config::default();
        c.orchestrator.auth.allowed_nodes = vec!["not-a-peer-id".into()];
        let err = c.resolve().expect_err("invalid").to_string();
        assert!(err.contains("Orchestrator.Auth.AllowedNodes"), "{err}");
        let id = crate::transport::Identity::generate().node_id();
        c.orchestrator.auth.allowed_nodes = vec![id.to_string()];
        c.orchestrator.auth.require_token = true;
        let policy = c.resolve().expect("valid").orchestrator.admission;
        assert!(policy.allowed.contains(&id) && policy.require_token);
        c.orchestrator.auth.allowed_nodes.clear();
        let err = c.resolve().expect_err("no way in").to_string();
        assert!(err.contains("Orchestrator.Auth.RequireToken"), "{err}");
    }

    #[test]
    fn token_variables_are_applied_and_recorded_redacted() {
        let mut c = built(Config::default());
        let applied = apply_env(&mut c, |k| {
            (k == "COD_COMPUTE_AUTH_TOKEN").then(|| "env-token-0123456789".to_owned())
        });
        assert_eq!(c.compute.auth.token.expose(), "env-token-0123456789");
        assert_eq!(
            applied,
            vec![("COD_COMPUTE_AUTH_TOKEN", "<redacted>".to_owned())]
        );
    }

    #[test]
    fn a_bad_swarm_key_file_names_the_key() {
        let mut c = built(Config::default());
        c.transport.swarm_key_file = "/nonexistent/swarm.key".into();
        let err = c.resolve().expect_err("missing").to_string();
        assert!(err.contains("Transport.SwarmKeyFile"), "{err}");
    }
}
