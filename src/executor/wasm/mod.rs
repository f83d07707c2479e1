//! STUB: replaced by the wasm executor implementation.

mod fs;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Executor, ExecutorError, RunContext, RunOutcome};
use crate::model::{EngineKind, Task};

/// Settings of the wasm executor.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Number of worker threads (concurrent wasm runs).
    pub slots: usize,
}

/// Runs WASI preview 1 modules in wasmi on dedicated threads.
#[derive(Debug)]
pub struct WasmExecutor {}

impl WasmExecutor {
    /// Starts the worker threads.
    pub fn new(config: WasmConfig) -> Self {
        let _ = config;
        Self {}
    }
}

#[async_trait]
impl Executor for WasmExecutor {
    fn engine(&self) -> EngineKind {
        EngineKind::Wasm
    }
    fn validate(&self, _task: &Task) -> Result<(), ExecutorError> {
        Ok(())
    }
    async fn run(&self, _ctx: RunContext, _cancel: CancellationToken) -> Result<RunOutcome, ExecutorError> {
        Err(ExecutorError::ShutDown { engine: "wasm" })
    }
}
