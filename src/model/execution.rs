//! Executions: one attempt to run a job's task on one node. States are integers on the wire (v1.6+ numbering).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{EvaluationId, ExecutionId, JobId, NodeId};
use super::job::{Job, SpecConfig};
use super::resources::Resources;

/// The observed (compute-side) state of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExecutionStateType {
    /// Not set.
    #[default]
    Undefined,
    /// Created by the scheduler.
    New,
    /// Bid requested from the node.
    AskForBid,
    /// The node bid.
    AskForBidAccepted,
    /// The node declined.
    AskForBidRejected,
    /// The orchestrator accepted the bid; the node runs it.
    BidAccepted,
    /// Running on the node.
    Running,
    /// Publishing results.
    Publishing,
    /// The orchestrator rejected the bid.
    BidRejected,
    /// Finished and published (any exit code).
    Completed,
    /// Could not run or publish.
    Failed,
    /// Stopped before finishing.
    Cancelled,
}

impl ExecutionStateType {
    /// The v1.6+ integer.
    pub fn code(self) -> u8 {
        match self {
            Self::Undefined => 0,
            Self::New => 1,
            Self::AskForBid => 2,
            Self::AskForBidAccepted => 3,
            Self::AskForBidRejected => 4,
            Self::BidAccepted => 5,
            Self::Running => 6,
            Self::Publishing => 7,
            Self::BidRejected => 8,
            Self::Completed => 9,
            Self::Failed => 10,
            Self::Cancelled => 11,
        }
    }
    /// From the v1.6+ integer.
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Undefined,
            1 => Self::New,
            2 => Self::AskForBid,
            3 => Self::AskForBidAccepted,
            4 => Self::AskForBidRejected,
            5 => Self::BidAccepted,
            6 => Self::Running,
            7 => Self::Publishing,
            8 => Self::BidRejected,
            9 => Self::Completed,
            10 => Self::Failed,
            11 => Self::Cancelled,
            _ => return None,
        })
    }
    /// True for states an execution never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::AskForBidRejected
                | Self::BidRejected
                | Self::Completed
                | Self::Failed
                | Self::Cancelled
        )
    }
    /// A readable name for tables and history.
    pub fn name(self) -> &'static str {
        match self {
            Self::Undefined => "Undefined",
            Self::New => "New",
            Self::AskForBid => "AskForBid",
            Self::AskForBidAccepted => "AskForBidAccepted",
            Self::AskForBidRejected => "AskForBidRejected",
            Self::BidAccepted => "BidAccepted",
            Self::Running => "Running",
            Self::Publishing => "Publishing",
            Self::BidRejected => "BidRejected",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }
}

impl Serialize for ExecutionStateType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for ExecutionStateType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u64::deserialize(d)?;
        Self::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown execution state {code}")))
    }
}

/// What the scheduler wants of an execution (integers on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExecutionDesiredStateType {
    /// Waiting for a bid.
    #[default]
    Pending,
    /// Should run.
    Running,
    /// Should stop.
    Stopped,
}

impl ExecutionDesiredStateType {
    /// The integer.
    pub fn code(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Running => 1,
            Self::Stopped => 2,
        }
    }
    /// A readable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Stopped => "Stopped",
        }
    }
}

impl Serialize for ExecutionDesiredStateType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for ExecutionDesiredStateType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match u64::deserialize(d)? {
            0 => Self::Pending,
            1 => Self::Running,
            2 => Self::Stopped,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown desired state {other}"
                )));
            }
        })
    }
}

/// `{StateType, Message}` with a typed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State<T> {
    /// The state.
    #[serde(rename = "StateType")]
    pub state_type: T,
    /// Why.
    #[serde(rename = "Message", default)]
    pub message: String,
}

impl<T> State<T> {
    /// A state with a message.
    pub fn new(state_type: T, message: impl Into<String>) -> Self {
        Self {
            state_type,
            message: message.into(),
        }
    }
}

/// The first bytes of stdout/stderr and the exit code, kept with the execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCommandResult {
    /// First 2 KB of stdout.
    #[serde(rename = "Stdout", default)]
    pub stdout: String,
    /// Whether stdout was longer.
    #[serde(rename = "StdoutTruncated", default)]
    pub stdout_truncated: bool,
    /// First 2 KB of stderr (lower-case key, as Bacalhau has it).
    #[serde(rename = "stderr", default)]
    pub stderr: String,
    /// Whether stderr was longer.
    #[serde(rename = "StderrTruncated", default)]
    pub stderr_truncated: bool,
    /// The exit code.
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
    /// Why it could not run, if it could not.
    #[serde(rename = "ErrorMsg", default)]
    pub error_msg: String,
}

/// Resources set aside per task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocatedResources {
    /// Task name → resources.
    #[serde(rename = "Tasks", default)]
    pub tasks: BTreeMap<String, Resources>,
}

/// One attempt to run a job on a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// `e-<uuid>`.
    #[serde(rename = "ID")]
    pub id: ExecutionId,
    /// The job's namespace.
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    /// The evaluation that created it.
    #[serde(rename = "EvalID", default)]
    pub eval_id: EvaluationId,
    /// The job's name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Where it runs.
    #[serde(rename = "NodeID", default)]
    pub node_id: NodeId,
    /// Its job.
    #[serde(rename = "JobID", default)]
    pub job_id: JobId,
    /// Snapshot of the job (sent to the compute node; omitted in listings).
    #[serde(rename = "Job", default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// The job version it runs.
    #[serde(rename = "JobVersion", default)]
    pub job_version: u64,
    /// Resources it holds.
    #[serde(rename = "AllocatedResources", default)]
    pub allocated_resources: AllocatedResources,
    /// What the scheduler wants.
    #[serde(rename = "DesiredState", default)]
    pub desired_state: State<ExecutionDesiredStateType>,
    /// What the node reports.
    #[serde(rename = "ComputeState", default)]
    pub compute_state: State<ExecutionStateType>,
    /// Where its results were published.
    #[serde(rename = "PublishedResult", default)]
    pub published_result: SpecConfig,
    /// Output summary.
    #[serde(rename = "RunOutput", default, skip_serializing_if = "Option::is_none")]
    pub run_output: Option<RunCommandResult>,
    /// The execution this one replaced.
    #[serde(rename = "PreviousExecution", default)]
    pub previous_execution: String,
    /// The execution that replaced this one.
    #[serde(rename = "NextExecution", default)]
    pub next_execution: String,
    /// Evaluation created when it ended.
    #[serde(rename = "FollowupEvalID", default)]
    pub followup_eval_id: String,
    /// Partition (0..Count-1) for batch jobs.
    #[serde(rename = "PartitionIndex", default)]
    pub partition_index: u64,
    /// +1 per change.
    #[serde(rename = "Revision", default)]
    pub revision: u64,
    /// Unix ns.
    #[serde(rename = "CreateTime", default)]
    pub create_time: i64,
    /// Unix ns.
    #[serde(rename = "ModifyTime", default)]
    pub modify_time: i64,
}

impl Execution {
    /// True when the node reports a terminal state.
    pub fn is_terminal(&self) -> bool {
        self.compute_state.state_type.is_terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_integers_on_the_wire() {
        let s = State::new(ExecutionStateType::Completed, "done");
        let v = serde_json::to_value(&s).expect("ser");
        assert_eq!(v["StateType"], 9);
        let back: State<ExecutionStateType> = serde_json::from_value(v).expect("de");
        assert_eq!(back.state_type, ExecutionStateType::Completed);
    }
}
