//! Bidding: may this node run this execution? Cheap checks only (no downloads): engine, publisher and input
//! types present, the operator's [`super::policy`], each backend's own `validate`, and resources against free
//! capacity.

use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::gpu::GpuAllocator;
use crate::model::resources::{JobDefaults, job_resources};
use crate::model::{EngineSpec, Execution, ExecutionId, InputSpec, PublisherSpec, Resources};

use super::backends::Backends;

/// Resources held by accepted executions, and which GPUs each holds. A std mutex: never held across an
/// `.await`. The counts and the GPU holders live under one lock so a bid takes both or neither.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    max: Resources,
    used: Arc<Mutex<Used>>,
}

/// What accepted executions hold.
#[derive(Debug, Default)]
struct Used {
    resources: Resources,
    gpus: GpuAllocator,
}

impl Capacity {
    /// `max.gpu` is the number of `gpus` (the indexes discovery found).
    pub fn new(max: Resources, gpus: impl IntoIterator<Item = u32>) -> Self {
        Self {
            max,
            used: Arc::new(Mutex::new(Used {
                resources: Resources::default(),
                gpus: GpuAllocator::new(gpus),
            })),
        }
    }
    fn used(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Reserves `r` for `holder` if it fits, and returns the GPU indexes it gets (lowest free first).
    pub fn try_reserve(&self, holder: &ExecutionId, r: &Resources) -> Result<Vec<u32>, String> {
        let mut used = self.used();
        let free = self.max.saturating_sub(&used.resources);
        // GPUs first: their shortage is the reason to give when both are short.
        used.gpus.check(r.gpu).map_err(|e| e.to_string())?;
        if !r.fits_in(&free) {
            return Err(format!(
                "not enough free capacity: job needs cpu {} memory {} bytes, node has cpu {:.2} memory {} bytes free",
                r.cpu, r.memory, free.cpu, free.memory
            ));
        }
        let gpus = used
            .gpus
            .reserve(holder, r.gpu)
            .map_err(|e| e.to_string())?;
        used.resources = used.resources.add(r);
        Ok(gpus)
    }
    /// Reserves `r` unconditionally (recovery of work accepted before a restart), with the GPUs it held then
    /// when they are still free; otherwise (a GPU gone, say) the lowest free ones, and the run says which.
    pub fn force_reserve(&self, holder: &ExecutionId, r: &Resources, gpus: &[u32]) {
        let mut used = self.used();
        used.resources = used.resources.add(r);
        if let Err(e) = used.gpus.restore(holder, gpus) {
            warn!(execution_id = %holder, reason = %e, "cannot give a resumed execution its GPUs back; taking free ones");
            if let Err(e) = used.gpus.reserve(holder, r.gpu) {
                warn!(execution_id = %holder, reason = %e, "a resumed execution runs without its GPUs");
            }
        }
    }
    /// Frees what `holder` holds: `r` and its GPUs.
    pub fn release(&self, holder: &ExecutionId, r: &Resources) {
        let mut used = self.used();
        used.resources = used.resources.saturating_sub(r);
        used.gpus.release(holder);
    }
    pub fn available(&self) -> Resources {
        self.max.saturating_sub(&self.used().resources)
    }
    /// The free GPU indexes, lowest first.
    pub fn free_gpus(&self) -> Vec<u32> {
        self.used().gpus.free()
    }
    /// The GPU indexes `holder` holds.
    pub fn gpus_of(&self, holder: &ExecutionId) -> Vec<u32> {
        self.used().gpus.held_by(holder)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ExecutionId {
        ExecutionId::from(s.to_owned())
    }

    fn need(gpu: u64) -> Resources {
        Resources {
            cpu: 0.1,
            memory: 1,
            disk: 0,
            gpu,
        }
    }

    #[test]
    fn bids_take_specific_gpus_and_release_them() {
        let max = Resources {
            cpu: 4.0,
            memory: 1 << 30,
            disk: 0,
            gpu: 2,
        };
        let c = Capacity::new(max, [0, 1]);
        assert_eq!(c.try_reserve(&id("a"), &need(1)), Ok(vec![0]));
        assert_eq!(c.try_reserve(&id("b"), &need(1)), Ok(vec![1]));
        let e = c.try_reserve(&id("c"), &need(1)).expect_err("none free");
        assert_eq!(e, "needs 1 GPU; this node has 0 free (of 2)");
        assert_eq!(
            c.try_reserve(&id("cpu"), &need(0)),
            Ok(vec![]),
            "CPU work still fits"
        );
        c.release(&id("a"), &need(1));
        assert_eq!(c.free_gpus(), vec![0]);
        assert_eq!(c.available().gpu, 1);
        // A restart: b keeps GPU 1 even though 0 is the lowest free one.
        let after = Capacity::new(max, [0, 1]);
        after.force_reserve(&id("b"), &need(1), &[1]);
        assert_eq!(after.gpus_of(&id("b")), vec![1]);
        assert_eq!(after.try_reserve(&id("d"), &need(1)), Ok(vec![0]));
        // A GPU gone since: the resumed execution gets a free one if there is one.
        let fewer = Capacity::new(Resources { gpu: 1, ..max }, [0]);
        fewer.force_reserve(&id("b"), &need(1), &[1]);
        assert_eq!(fewer.gpus_of(&id("b")), vec![0]);
    }
}
