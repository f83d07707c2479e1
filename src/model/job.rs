//! The job spec: `models.Job` and its parts, with Bacalhau's exact JSON key names.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::ids::JobId;

/// `Type` + `Params`, Bacalhau's generic plug-in configuration (engines, sources, publishers). The typed forms
/// live in [`super::spec`]; this is the wire form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecConfig {
    /// The plug-in's type name (`wasm`, `docker`, `inline`, `local`, …); matched case-insensitively.
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// Type-specific parameters.
    #[serde(rename = "Params", default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

impl SpecConfig {
    /// True when no type is set (an absent publisher, say).
    pub fn is_empty(&self) -> bool {
        self.kind.trim().is_empty()
    }
    /// The type name, lower-cased and trimmed, as Bacalhau normalizes it.
    pub fn normalized_kind(&self) -> String {
        self.kind.trim().to_ascii_lowercase()
    }
}

/// A job's scheduling type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JobType {
    /// Run `Count` executions to completion.
    #[default]
    Batch,
    /// Run once on every matching node.
    Ops,
    /// Run on every matching node, forever.
    Daemon,
    /// Keep `Count` executions running.
    Service,
    /// A type this node does not know; kept so validation can name it.
    Invalid(String),
}

impl JobType {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            JobType::Batch => "batch",
            JobType::Ops => "ops",
            JobType::Daemon => "daemon",
            JobType::Service => "service",
            JobType::Invalid(s) => s,
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for JobType {
    fn from(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "batch" => JobType::Batch,
            "ops" => JobType::Ops,
            "daemon" => JobType::Daemon,
            "service" => JobType::Service,
            _ => JobType::Invalid(s.to_owned()),
        }
    }
}

impl Serialize for JobType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for JobType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(JobType::from(s.as_str()))
    }
}

/// A job's state, serialized as text (`"Running"`), unlike execution states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JobStateType {
    /// Not yet set.
    #[default]
    Undefined,
    /// Accepted, not yet scheduled.
    Pending,
    /// Waiting for a matching node.
    Queued,
    /// At least one execution is active.
    Running,
    /// Every partition completed (batch/ops).
    Completed,
    /// The job cannot finish.
    Failed,
    /// Stopped by a user.
    Stopped,
}

impl JobStateType {
    /// True for states a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStateType::Completed | JobStateType::Failed | JobStateType::Stopped
        )
    }
}

impl fmt::Display for JobStateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `{StateType, Message}` of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The state.
    #[serde(rename = "StateType", default)]
    pub state_type: JobStateType,
    /// Why the job is in this state (a failure reason, say).
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A label selector requirement (`{Key, Operator, Values}`), Kubernetes' selection operators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    /// The label key.
    #[serde(rename = "Key", default)]
    pub key: String,
    /// `=`, `==`, `!=`, `in`, `notin`, `exists`, `!`, `gt`, `lt`.
    #[serde(rename = "Operator", default)]
    pub operator: String,
    /// The values compared against.
    #[serde(rename = "Values", default)]
    pub values: Vec<String>,
}

/// An input: where the data comes from and where the task sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSource {
    /// The storage source.
    #[serde(rename = "Source", default)]
    pub source: SpecConfig,
    /// A free label (the CLI sets it to the source URI).
    #[serde(rename = "Alias", default, skip_serializing_if = "String::is_empty")]
    pub alias: String,
    /// The path the task sees it at.
    #[serde(rename = "Target", default)]
    pub target: String,
}

/// An output folder of the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultPath {
    /// The folder's name in the published result.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// The path inside the task (docker); wasm mounts it at `/<Name>`.
    #[serde(rename = "Path", default)]
    pub path: String,
}

/// Requested resources, as strings the way users write them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesConfig {
    /// CPU (`500m`, `0.5`).
    #[serde(rename = "CPU", default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    /// Memory (`512Mb`).
    #[serde(rename = "Memory", default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    /// Disk (`1Gb`).
    #[serde(rename = "Disk", default, skip_serializing_if = "String::is_empty")]
    pub disk: String,
    /// GPU count.
    #[serde(rename = "GPU", default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
}

/// A task's network mode, serialized as text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkType {
    /// The engine's default (wasm: none here, since Cod links no HTTP host function yet).
    #[default]
    Default,
    /// No network.
    None,
    /// The host's network (`Full` is an alias).
    Host,
    /// HTTP(S) to the listed `Domains` only.
    Http,
    /// A bridged network.
    Bridge,
    /// A value this node does not know; kept so validation can name it.
    Invalid(String),
}

impl NetworkType {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            NetworkType::Default => "Default",
            NetworkType::None => "None",
            NetworkType::Host => "Host",
            NetworkType::Http => "HTTP",
            NetworkType::Bridge => "Bridge",
            NetworkType::Invalid(s) => s,
        }
    }
}

impl From<&str> for NetworkType {
    fn from(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "default" => NetworkType::Default,
            "none" => NetworkType::None,
            "host" | "full" => NetworkType::Host,
            "http" => NetworkType::Http,
            "bridge" => NetworkType::Bridge,
            _ => NetworkType::Invalid(s.to_owned()),
        }
    }
}

impl Serialize for NetworkType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NetworkType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // v1.4 clients send an integer enum; 0 was None.
        let v = Value::deserialize(d)?;
        Ok(match v {
            Value::String(s) => NetworkType::from(s.as_str()),
            Value::Number(n) if n.as_i64() == Some(0) => NetworkType::None,
            Value::Number(n) if n.as_i64() == Some(1) => NetworkType::Host,
            Value::Number(n) if n.as_i64() == Some(2) => NetworkType::Http,
            Value::Null => NetworkType::Default,
            other => NetworkType::Invalid(other.to_string()),
        })
    }
}

/// `{Type, Domains}` of a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The mode.
    #[serde(rename = "Type", default)]
    pub kind: NetworkType,
    /// Allowed domains for `HTTP`.
    #[serde(rename = "Domains", default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// Timeouts in whole seconds; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutConfig {
    /// Longest a single execution may run.
    #[serde(rename = "ExecutionTimeout", default)]
    pub execution_timeout: i64,
    /// Longest the job may wait for a node.
    #[serde(rename = "QueueTimeout", default)]
    pub queue_timeout: i64,
    /// Longest the whole job may take.
    #[serde(rename = "TotalTimeout", default)]
    pub total_timeout: i64,
}

/// One task of a job (Bacalhau runs only the first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task's name (`main` by default in the CLI).
    #[serde(rename = "Name", default)]
    pub name: String,
    /// What runs it.
    #[serde(rename = "Engine", default)]
    pub engine: SpecConfig,
    /// Where results go; empty means nothing is published.
    #[serde(
        rename = "Publisher",
        default,
        skip_serializing_if = "SpecConfig::is_empty"
    )]
    pub publisher: SpecConfig,
    /// Environment variables for the task.
    #[serde(rename = "Env", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Free-form metadata.
    #[serde(rename = "Meta", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Inputs.
    #[serde(
        rename = "InputSources",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub input_sources: Vec<InputSource>,
    /// Output folders.
    #[serde(rename = "ResultPaths", default, skip_serializing_if = "Vec::is_empty")]
    pub result_paths: Vec<ResultPath>,
    /// Requested resources.
    #[serde(rename = "Resources", default)]
    pub resources: ResourcesConfig,
    /// Network mode.
    #[serde(rename = "Network", default)]
    pub network: NetworkConfig,
    /// Timeouts.
    #[serde(rename = "Timeouts", default)]
    pub timeouts: TimeoutConfig,
}

/// A job: what to run, how many times, where.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Server-generated id.
    #[serde(rename = "ID", default)]
    pub id: JobId,
    /// Name; defaults to the id.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Namespace; defaults to `default`.
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    /// Scheduling type.
    #[serde(rename = "Type", default)]
    pub job_type: JobType,
    /// Priority (higher first).
    #[serde(rename = "Priority", default)]
    pub priority: i64,
    /// How many executions (batch/service). `None` when the submitter left it out (then 1).
    #[serde(rename = "Count", default)]
    pub count: Option<i64>,
    /// Node label constraints.
    #[serde(rename = "Constraints", default)]
    pub constraints: Vec<LabelSelectorRequirement>,
    /// Metadata; `bacalhau.org/` keys are reserved.
    #[serde(rename = "Meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Labels, filterable on list.
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
    /// Tasks; only the first runs.
    #[serde(rename = "Tasks", default)]
    pub tasks: Vec<Task>,
    /// Server-owned state.
    #[serde(rename = "State", default)]
    pub state: JobState,
    /// Server-owned spec version, from 1.
    #[serde(rename = "Version", default)]
    pub version: u64,
    /// Server-owned revision, +1 per change.
    #[serde(rename = "Revision", default)]
    pub revision: u64,
    /// Unix nanoseconds.
    #[serde(rename = "CreateTime", default)]
    pub create_time: i64,
    /// Unix nanoseconds.
    #[serde(rename = "ModifyTime", default)]
    pub modify_time: i64,
}

impl Job {
    /// The task that runs (Bacalhau uses only the first).
    pub fn task(&self) -> Option<&Task> {
        self.tasks.first()
    }
    /// `Count` with Bacalhau's default of 1 when omitted.
    pub fn effective_count(&self) -> u64 {
        match self.count {
            None => 1,
            Some(n) => u64::try_from(n).unwrap_or(0),
        }
    }
}

/// Current time in Unix nanoseconds, Bacalhau's timestamp form for jobs and executions.
pub fn now_nanos() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
