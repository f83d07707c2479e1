//! Bacalhau's wire types and the rules about them; no I/O.
//!
//! JSON keys are Bacalhau's exact names (`ID`, `Tasks`, `SpecConfig.Type`). Documents are decoded through
//! [`ci`] so keys match case-insensitively, as Go's decoder does. `Type` + `Params` maps are parsed into typed
//! enums once, in [`spec`]; nothing downstream matches on type strings.

pub mod ci;
pub mod constraint;
pub mod evaluation;
pub mod execution;
pub mod history;
pub mod ids;
pub mod job;
pub mod node;
pub mod resources;
pub mod spec;
pub mod validate;

pub use evaluation::{Evaluation, EvaluationTrigger};
pub use execution::{
    AllocatedResources, Execution, ExecutionDesiredStateType, ExecutionStateType, RunCommandResult,
    State,
};
pub use history::{Event, HistoryType, JobHistory};
pub use ids::{EvaluationId, ExecutionId, JobId, NodeId};
pub use job::{
    InputSource, Job, JobState, JobStateType, JobType, LabelSelectorRequirement, NetworkConfig,
    NetworkType, ResourcesConfig, ResultPath, SpecConfig, Task, TimeoutConfig, now_nanos,
};
pub use node::{
    BuildVersionInfo, ComputeNodeInfo, ConnectionState, NodeAdmission, NodeConnection, NodeInfo,
    NodeMembership, NodeState, NodeType, now_rfc3339,
};
pub use resources::{GpuResource, NodeResources, Resources};
pub use spec::{
    EngineKind, EngineSpec, InputSpec, PublisherKind, PublisherSpec, S3PublisherParams,
    S3SourceParams, SourceKind, WasmParams,
};
pub use validate::{FieldError, ValidationErrors};
