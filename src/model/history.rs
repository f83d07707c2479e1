//! Job history (v1.5+ shape): a sequence of events per job, paged with a long-poll token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{ExecutionId, JobId};

/// Job-level or execution-level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryType {
    /// About the job.
    #[serde(rename = "JobLevel")]
    JobLevel,
    /// About one execution.
    #[serde(rename = "ExecutionLevel")]
    ExecutionLevel,
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Human text.
    #[serde(rename = "Message", default)]
    pub message: String,
    /// `Submission`, `State Update`, `Scheduling`, `Running Execution`, …
    #[serde(rename = "Topic", default)]
    pub topic: String,
    /// RFC 3339.
    #[serde(rename = "Timestamp", default)]
    pub timestamp: String,
    /// `IsError`, `NewState`, `FailsExecution`, …
    #[serde(
        rename = "Details",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub details: BTreeMap<String, String>,
}

impl Event {
    /// An event stamped now.
    pub fn new(topic: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            topic: topic.to_owned(),
            timestamp: super::node::now_rfc3339(),
            details: BTreeMap::new(),
        }
    }
    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// One history record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    /// Position in the job's history, from 1.
    #[serde(rename = "SeqNum")]
    pub seq_num: u64,
    /// Level.
    #[serde(rename = "Type")]
    pub kind: HistoryType,
    /// The job.
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    /// The job version.
    #[serde(rename = "JobVersion", default)]
    pub job_version: u64,
    /// The execution, for execution-level records.
    #[serde(
        rename = "ExecutionID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub execution_id: Option<ExecutionId>,
    /// What happened.
    #[serde(rename = "Event")]
    pub event: Event,
    /// RFC 3339.
    #[serde(rename = "Time")]
    pub time: String,
}
