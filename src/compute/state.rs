//! The compute node's own record of each execution it accepted, so that a restart (or a reboot while the
//! orchestrator is unreachable) resumes accepted work instead of forgetting it.

use serde::{Deserialize, Serialize};

use crate::model::{Execution, NodeId};
use crate::store::{Store, StoreError, Table};

/// Where an accepted execution is in this node's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalState {
    /// Bid sent; waiting for BidAccepted.
    Bid,
    /// Accepted; running (or about to, or to be resumed after a restart).
    Running,
    /// Finished; its result is in the outbox (or delivered).
    Completed,
    /// Failed or cancelled; the report is in the outbox.
    Failed,
}

/// An accepted execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalExecution {
    /// The execution with its job snapshot.
    pub execution: Execution,
    /// The orchestrator that asked.
    pub orchestrator: NodeId,
    /// Its state here.
    pub state: LocalState,
    /// How many times it was started (a restart mid-run starts it again).
    pub attempts: u32,
    /// The GPU indexes it holds, so a restart gives it the same devices (absent in records written before
    /// GPU allocation existed: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
}

/// The compute node's tables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tables {
    /// Execution id → record.
    pub executions: Table<LocalExecution>,
}

impl Tables {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            executions: store.table("compute.executions")?,
        })
    }
}
