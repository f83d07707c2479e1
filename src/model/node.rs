//! Node descriptions as Bacalhau shapes them: `NodeInfo`, `ComputeNodeInfo`, `NodeState`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::NodeId;
use super::resources::{NodeResources, Resources};

/// Orchestrator or compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NodeType {
    /// Bacalhau's name for the orchestrator.
    Requester,
    /// Runs jobs.
    #[default]
    Compute,
}

/// What a compute node can do and has free.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComputeNodeInfo {
    /// Engine names (`wasm`, …).
    #[serde(rename = "ExecutionEngines", default)]
    pub execution_engines: Vec<String>,
    /// Publisher names.
    #[serde(rename = "Publishers", default)]
    pub publishers: Vec<String>,
    /// Storage source names.
    #[serde(rename = "StorageSources", default)]
    pub storage_sources: Vec<String>,
    /// Total capacity for jobs.
    #[serde(rename = "MaxCapacity", default)]
    pub max_capacity: NodeResources,
    /// Capacity of the local queue.
    #[serde(rename = "QueueCapacity", default)]
    pub queue_capacity: Resources,
    /// Capacity free now.
    #[serde(rename = "AvailableCapacity", default)]
    pub available_capacity: NodeResources,
    /// Largest single job.
    #[serde(rename = "MaxJobRequirements", default)]
    pub max_job_requirements: Resources,
    /// Executions running now.
    #[serde(rename = "RunningExecutions", default)]
    pub running_executions: u64,
    /// Executions queued.
    #[serde(rename = "EnqueuedExecutions", default)]
    pub enqueued_executions: u64,
    /// Advertised address (lower-case key, as Bacalhau has it).
    #[serde(rename = "address", default)]
    pub address: String,
}

/// A node's self-description.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id (the libp2p peer id).
    #[serde(rename = "NodeID", default)]
    pub node_id: NodeId,
    /// Role.
    #[serde(rename = "NodeType", default)]
    pub node_type: NodeType,
    /// Labels for constraints (operator labels plus `os_type`, `os_arch`, `name`).
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
    /// Protocols spoken.
    #[serde(rename = "SupportedProtocols", default)]
    pub supported_protocols: Vec<String>,
    /// Compute details (compute nodes only).
    #[serde(rename = "ComputeNodeInfo", default)]
    pub compute_node_info: ComputeNodeInfo,
    /// The version string.
    #[serde(rename = "BacalhauVersion", default)]
    pub bacalhau_version: BuildVersionInfo,
    /// libp2p multiaddrs other nodes can dial (orchestrators), each ending in `/p2p/<id>`. A Cod extension:
    /// Bacalhau clients ignore unknown keys.
    #[serde(
        rename = "ListenAddresses",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub listen_addresses: Vec<String>,
}

/// Build information, Bacalhau's `BuildVersionInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildVersionInfo {
    /// Major version.
    #[serde(rename = "Major", default)]
    pub major: String,
    /// Minor version.
    #[serde(rename = "Minor", default)]
    pub minor: String,
    /// `v<semver>`.
    #[serde(rename = "GitVersion", default)]
    pub git_version: String,
    /// Commit, when known.
    #[serde(rename = "GitCommit", default)]
    pub git_commit: String,
    /// RFC 3339.
    #[serde(rename = "BuildDate", default)]
    pub build_date: String,
    /// `linux`.
    #[serde(rename = "GOOS", default)]
    pub goos: String,
    /// `amd64`, `arm64`, …
    #[serde(rename = "GOARCH", default)]
    pub goarch: String,
}

impl BuildVersionInfo {
    /// This binary's version info.
    pub fn current() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        let mut parts = version.split('.');
        Self {
            major: parts.next().unwrap_or_default().to_owned(),
            minor: parts.next().unwrap_or_default().to_owned(),
            git_version: format!("v{version}"),
            git_commit: option_env!("COD_GIT_COMMIT").unwrap_or_default().to_owned(),
            build_date: String::new(),
            goos: std::env::consts::OS.to_owned(),
            goarch: go_arch().to_owned(),
        }
    }
}

/// The architecture as Go names it (Bacalhau's `os_arch` label values).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// Admission state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NodeMembership {
    /// Waiting for `cod node approve`.
    #[serde(rename = "PENDING")]
    Pending,
    /// May receive work.
    #[default]
    #[serde(rename = "APPROVED")]
    Approved,
    /// Refused.
    #[serde(rename = "REJECTED")]
    Rejected,
}

impl NodeMembership {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
        }
    }
}

/// How the orchestrator admitted a node (a Cod extension of Bacalhau's NodeState, shown as `Admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NodeAdmission {
    /// Not admitted (yet): pending nodes without credentials, and records from before admission existed.
    #[default]
    #[serde(rename = "NONE")]
    None,
    /// The hybrid node's own in-process compute half.
    #[serde(rename = "LOCAL")]
    Local,
    /// It proved knowledge of the join token.
    #[serde(rename = "TOKEN")]
    Token,
    /// Its peer id is in `Orchestrator.Auth.AllowedNodes`.
    #[serde(rename = "ALLOW_LIST")]
    AllowList,
    /// An operator approved it (`cod node approve`).
    #[serde(rename = "OPERATOR")]
    Operator,
    /// No admission policy is configured: every node may join (subject to `ManualApproval`).
    #[serde(rename = "OPEN")]
    Open,
}

impl NodeAdmission {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Local => "LOCAL",
            Self::Token => "TOKEN",
            Self::AllowList => "ALLOW_LIST",
            Self::Operator => "OPERATOR",
            Self::Open => "OPEN",
        }
    }
}

/// Link state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NodeConnection {
    /// Connected and heartbeating.
    #[serde(rename = "CONNECTED")]
    Connected,
    /// Gone.
    #[default]
    #[serde(rename = "DISCONNECTED")]
    Disconnected,
}

impl NodeConnection {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "CONNECTED",
            Self::Disconnected => "DISCONNECTED",
        }
    }
}

/// Connection details (v1.6+).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionState {
    /// Same as `Connection`.
    #[serde(rename = "Status", default)]
    pub status: NodeConnection,
    /// RFC 3339.
    #[serde(rename = "LastHeartbeat", default)]
    pub last_heartbeat: String,
    /// RFC 3339.
    #[serde(rename = "ConnectedSince", default)]
    pub connected_since: String,
    /// RFC 3339.
    #[serde(rename = "DisconnectedSince", default)]
    pub disconnected_since: String,
    /// Last sequence number received from the node.
    #[serde(rename = "LastComputeSeqNum", default)]
    pub last_compute_seq_num: u64,
    /// Last sequence number the node acknowledged.
    #[serde(rename = "LastOrchestratorSeqNum", default)]
    pub last_orchestrator_seq_num: u64,
    /// Why it disconnected.
    #[serde(rename = "LastError", default)]
    pub last_error: String,
}

/// A node as the orchestrator knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// What the node said about itself.
    #[serde(rename = "Info")]
    pub info: NodeInfo,
    /// Admission.
    #[serde(rename = "Membership")]
    pub membership: NodeMembership,
    /// Link.
    #[serde(rename = "Connection")]
    pub connection: NodeConnection,
    /// Link details.
    #[serde(rename = "ConnectionState", default)]
    pub connection_state: ConnectionState,
    /// How it was admitted (Cod extension; Bacalhau clients ignore the extra key).
    #[serde(rename = "Admission", default)]
    pub admission: NodeAdmission,
}

/// RFC 3339 text of the current time (history and heartbeat timestamps).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}
