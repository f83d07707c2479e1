//! Bidding: may this node run this execution? Cheap checks only (no downloads): engine, publisher and input
//! types present, the operator's [`super::policy`], each backend's own `validate`, and resources against free
//! capacity.

use std::sync::{Arc, Mutex};

use crate::model::resources::{JobDefaults, job_resources};
use crate::model::{EngineSpec, Execution, InputSpec, PublisherSpec, Resources};

use super::backends::Backends;

/// Resources held by accepted executions. A std mutex: never held across an `.await`.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    max: Resources,
    used: Arc<Mutex<Resources>>,
}

impl Capacity {
    pub fn new(max: Resources) -> Self {
        Self {
            max,
            used: Arc::new(Mutex::new(Resources::default())),
        }
    }
    fn used(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Reserves `r` if it fits.
    pub fn try_reserve(&self, r: &Resources) -> Result<(), String> {
        let mut used = self.used();
        let free = self.max.saturating_sub(&used);
        if !r.fits_in(&free) {
            return Err(format!(
                "not enough free capacity: job needs cpu {} memory {} bytes, node has cpu {:.2} memory {} bytes free",
                r.cpu, r.memory, free.cpu, free.memory
            ));
        }
        *used = used.add(r);
        Ok(())
    }
    /// Reserves `r` unconditionally (recovery of work accepted before a restart).
    pub fn force_reserve(&self, r: &Resources) {
        let mut used = self.used();
        *used = used.add(r);
    }
    pub fn release(&self, r: &Resources) {
        let mut used = self.used();
        *used = used.saturating_sub(r);
    }
    pub fn available(&self) -> Resources {
        self.max.saturating_sub(&self.used())
    }
}

/// The resources an execution holds: what the orchestrator allocated, else the job's own need.
pub(crate) fn execution_resources(e: &Execution, defaults: &JobDefaults) -> Resources {
    e.allocated_resources
        .tasks
        .values()
        .next()
        .copied()
        .or_else(|| e.job.as_ref().map(|j| job_resources(j, defaults)))
        .unwrap_or_default()
}

/// Decides a bid; `Err` carries the reason the user will see.
pub(crate) fn decide(
    backends: &Backends,
    config: &super::Config,
    e: &Execution,
) -> Result<(), String> {
    let job = e.job.as_ref().ok_or("the request carries no job")?;
    let task = job.task().ok_or("the job has no task")?;
    let engine = EngineSpec::parse(&task.engine, "Engine").map_err(|e| e.to_string())?;
    let need = execution_resources(e, &config.job_defaults);
    // The node's own environment: `env:` references must name a variable that is set (values are dropped).
    config
        .policy
        .check(task, &engine, &need, &|name| std::env::var(name).ok())?;
    let executor = engine
        .kind()
        .and_then(|k| backends.executors.get(&k))
        .ok_or_else(|| {
            format!(
                "engine {:?} is not supported by this node",
                task.engine.kind
            )
        })?;
    executor.validate(task).map_err(|e| e.to_string())?;
    if let Some(p) = PublisherSpec::parse(&task.publisher) {
        let publisher = p
            .kind()
            .and_then(|k| backends.publishers.get(&k))
            .ok_or_else(|| {
                format!(
                    "publisher {:?} is not supported by this node",
                    p.type_name()
                )
            })?;
        publisher.validate(&p).map_err(|e| e.to_string())?;
    }
    for (i, input) in task.input_sources.iter().enumerate() {
        let spec = InputSpec::parse(&input.source, &format!("InputSources[{i}]"))
            .map_err(|e| e.to_string())?;
        let source = spec
            .kind()
            .and_then(|k| backends.sources.get(&k))
            .ok_or_else(|| {
                format!(
                    "input type {:?} is not supported by this node",
                    spec.type_name()
                )
            })?;
        source
            .validate(&spec)
            .map_err(|e| format!("input {}: {e}", input.target))?;
    }
    Ok(())
}
