//! Evaluations: a request to the scheduler to look at a job again.

use serde::{Deserialize, Serialize};

use super::ids::{EvaluationId, JobId};

/// Why an evaluation was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvaluationTrigger {
    /// The job was submitted.
    #[serde(rename = "job-register")]
    JobRegister,
    /// The job was stopped.
    #[serde(rename = "job-cancel")]
    JobCancel,
    /// An execution ended or its node changed.
    #[serde(rename = "exec-update")]
    ExecutionUpdate,
    /// A node joined, left or changed.
    #[serde(rename = "node-update")]
    NodeUpdate,
    /// A delayed retry (queueing).
    #[serde(rename = "job-queue")]
    Queue,
}

/// A pending scheduler pass over a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Plain UUID.
    #[serde(rename = "ID")]
    pub id: EvaluationId,
    /// The job.
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    /// Namespace.
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    /// Why.
    #[serde(rename = "TriggeredBy")]
    pub triggered_by: EvaluationTrigger,
    /// Not before this time (Unix ns); 0 = now.
    #[serde(rename = "WaitUntil", default)]
    pub wait_until: i64,
    /// Unix ns.
    #[serde(rename = "CreateTime", default)]
    pub create_time: i64,
}
