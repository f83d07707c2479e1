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
}

impl Default for InputSourcesConfig {
    fn default() -> Self {
        Self {
            read_timeout: "5m".into(),
            max_retry_count: 3,
            max_size: "1GiB".into(),
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
    /// Timer period.
    #[serde(rename = "HousekeepingInterval")]
    pub housekeeping_interval: String,
    /// Delay before a queued job is evaluated again.
    #[serde(rename = "QueueBackoff")]
    pub queue_backoff: String,
    /// CPU for tasks that state none.
    #[serde(rename = "DefaultCPU")]
    pub default_cpu: String,
    /// Memory for tasks that state none.
    #[serde(rename = "DefaultMemory")]
    pub default_memory: String,
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
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 1234,
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/1235".into()],
            orchestrators: vec![],
        }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            manual_approval: false,
            disconnect_timeout: "60s".into(),
            housekeeping_interval: "5s".into(),
            queue_backoff: "10s".into(),
            default_cpu: "100m".into(),
            default_memory: "64MiB".into(),
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

fn default_data_dir() -> PathBuf {
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
    /// Orchestrator part.
    pub orchestrator: crate::orchestrator::Config,
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
        if self.roles.compute && !self.roles.orchestrator && self.transport.orchestrators.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "Transport.Orchestrators",
                value: String::new(),
                source_name: "configuration".into(),
                reason: "a compute-only node needs --orchestrators <multiaddr>".into(),
            });
        }
        let o = &self.orchestrator;
        let default_cpu =
            resources::parse_cpu(&o.default_cpu).map_err(|e| ConfigError::Invalid {
                key: "Orchestrator.DefaultCPU",
                value: o.default_cpu.clone(),
                source_name: "configuration".into(),
                reason: e.to_string(),
            })?;
        let orchestrator = crate::orchestrator::Config {
            auto_approve: !o.manual_approval,
            disconnect_timeout: duration("Orchestrator.DisconnectTimeout", &o.disconnect_timeout)?,
            // Disconnects are noticed on housekeeping ticks, so tick at least twice per timeout.
            housekeeping_interval: duration(
                "Orchestrator.HousekeepingInterval",
                &o.housekeeping_interval,
            )?
            .min(duration("Orchestrator.DisconnectTimeout", &o.disconnect_timeout)? / 2),
            queue_backoff: duration("Orchestrator.QueueBackoff", &o.queue_backoff)?,
            job_defaults: crate::model::resources::JobDefaults {
                cpu: default_cpu,
                memory: bytes("Orchestrator.DefaultMemory", &o.default_memory)?,
            },
        };
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
            orchestrator,
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

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "api: {port: 9999, host: 127.0.0.1}\ncompute: {labels: {zone: north}}\n",
        )
        .expect("write");
        let mut c = load_file(&path).expect("loads");
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
    fn registry_secrets_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "compute:\n  docker:\n    credentials:\n      registry.lan:5000: {username: ci, password: hunter2}\n",
        )
        .expect("write");
        let c = load_file(&path).expect("loads");
        let cred = &c.compute.docker.credentials["registry.lan:5000"];
        assert_eq!(cred.password.expose(), "hunter2");
        assert!(cred.token.is_empty());
        let shown = format!("{c:?} {}", serde_json::to_string(&c).expect("serializes"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn input_source_limits_use_bacalhaus_keys() {
        let r = Config::default().resolve().expect("valid");
        assert_eq!(r.input_read_timeout, Duration::from_secs(300));
        assert_eq!(r.input_max_bytes, 1 << 30);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "inputsources: {readTimeout: 2s, MaxRetryCount: 1, maxsize: 1KiB}\n",
        )
        .expect("write");
        let c = load_file(&path).expect("loads");
        assert_eq!(c.input_sources.max_retry_count, 1);
        let r = c.resolve().expect("valid");
        assert_eq!(
            (r.input_read_timeout, r.input_max_bytes),
            (Duration::from_secs(2), 1024)
        );
        let mut c = Config::default();
        c.input_sources.read_timeout = "soon".into();
        let err = c.resolve().expect_err("invalid").to_string();
        assert!(err.contains("InputSources.ReadTimeout"), "{err}");
    }

    #[test]
    fn cache_sizes_default_on_and_zero_turns_them_off() {
        let r = Config::default().resolve().expect("valid");
        assert_eq!(r.input_cache_bytes, 1 << 30);
        assert_eq!(r.result_cache_bytes, 256 << 20);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "compute: {inputCacheSize: \"0\", resultcachesize: 10MiB}\n",
        )
        .expect("write");
        let r = load_file(&path).expect("loads").resolve().expect("valid");
        assert_eq!((r.input_cache_bytes, r.result_cache_bytes), (0, 10 << 20));
        let mut c = Config::default();
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
        let mut c = Config::default();
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
        let mut c = Config::default();
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
        let mut c = Config::default();
        c.s3.access_key_id = "AKIA".into();
        let err = c.resolve().expect_err("secret missing").to_string();
        assert!(err.contains("S3.SecretAccessKey"), "{err}");
        let mut c = Config::default();
        c.publishers.types.s3.pre_signed_url_expiration = "8d".into();
        let err = c.resolve().expect_err("too long").to_string();
        assert!(err.contains("PreSignedURLExpiration"), "{err}");
        let mut c = Config::default();
        assert_eq!(
            c.resolve().expect("valid").s3_presign_expiry,
            Some(Duration::from_secs(30 * 60))
        );
        c.publishers.types.s3.pre_signed_url_disabled = true;
        assert_eq!(c.resolve().expect("valid").s3_presign_expiry, None);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut c = Config::default();
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
}
