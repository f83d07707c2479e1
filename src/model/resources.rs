//! Resource quantities as Bacalhau writes them: CPU in Kubernetes notation (`500m`, `0.5`, `2`), memory and
//! disk in humanized bytes (`512Mb`, `1Gi`, `2GB`, case-insensitive), GPU as an integer.

use serde::{Deserialize, Serialize};

/// Resources as plain numbers, the shape Bacalhau uses in NodeInfo and AllocatedResources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores (fractional).
    #[serde(rename = "CPU", default)]
    pub cpu: f64,
    /// Memory in bytes.
    #[serde(rename = "Memory", default)]
    pub memory: u64,
    /// Disk in bytes.
    #[serde(rename = "Disk", default)]
    pub disk: u64,
    /// Number of GPUs.
    #[serde(rename = "GPU", default)]
    pub gpu: u64,
}

impl Resources {
    /// True when every dimension of `self` fits in `available`.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpu <= available.cpu + 1e-9
            && self.memory <= available.memory
            && self.disk <= available.disk
            && self.gpu <= available.gpu
    }

    /// `self - other`, floored at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu: (self.cpu - other.cpu).max(0.0),
            memory: self.memory.saturating_sub(other.memory),
            disk: self.disk.saturating_sub(other.disk),
            gpu: self.gpu.saturating_sub(other.gpu),
        }
    }

    /// `self + other`.
    pub fn add(&self, other: &Resources) -> Resources {
        Resources {
            cpu: self.cpu + other.cpu,
            memory: self.memory.saturating_add(other.memory),
            disk: self.disk.saturating_add(other.disk),
            gpu: self.gpu.saturating_add(other.gpu),
        }
    }
}

/// One GPU as Bacalhau advertises it in `Resources.GPUs` (its `models.GPU`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuResource {
    /// Index as the driver numbers it.
    #[serde(rename = "Index", default)]
    pub index: u64,
    /// Model, e.g. `Tesla T4`.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// `NVIDIA` (Bacalhau also knows `AMD/ATI` and `Intel`).
    #[serde(rename = "Vendor", default)]
    pub vendor: String,
    /// Total memory in MiB, as Bacalhau counts it.
    #[serde(rename = "Memory", default)]
    pub memory: u64,
    /// PCI address, `AAAA:BB:CC.C`; empty for integrated GPUs.
    #[serde(rename = "PCIAddress", default)]
    pub pci_address: String,
}

/// A node's capacity as Bacalhau shapes it: [`Resources`] with the `GPUs` list beside the count.
///
/// A separate type rather than a field of [`Resources`]: `Resources` is `Copy` and does arithmetic in ~100
/// places (bids, scheduling, policy), none of which needs the list; only the node description carries it.
/// The JSON (and CBOR) shape is Bacalhau's `Resources`, flattened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    /// The counts.
    #[serde(flatten)]
    pub resources: Resources,
    /// The GPUs themselves (the free ones, in available capacity).
    #[serde(rename = "GPUs", default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuResource>,
}

impl From<Resources> for NodeResources {
    fn from(resources: Resources) -> Self {
        Self {
            resources,
            gpus: Vec::new(),
        }
    }
}

/// A quantity string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} quantity {value:?} is not valid ({hint})")]
pub struct QuantityError {
    /// Which quantity (cpu, memory, disk, gpu).
    pub kind: &'static str,
    /// The text given.
    pub value: String,
    /// What a valid value looks like.
    pub hint: &'static str,
}

/// Parses a CPU quantity (`500m`, `0.5`, `2`) into cores.
pub fn parse_cpu(s: &str) -> Result<f64, QuantityError> {
    let err = || QuantityError {
        kind: "cpu",
        value: s.to_owned(),
        hint: "use cores like \"0.5\" or \"2\", or millicores like \"500m\"",
    };
    let t: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let cores = if let Some(m) = t.strip_suffix('m') {
        m.parse::<f64>().map_err(|_| err())? / 1000.0
    } else {
        t.parse::<f64>().map_err(|_| err())?
    };
    if !cores.is_finite() || cores < 0.0 {
        return Err(err());
    }
    Ok(cores)
}

/// Parses a byte quantity (`512Mb`, `1Gi`, `2GB`, `1024`) into bytes. Like go-humanize (which Bacalhau uses),
/// `MB`/`Mb` are powers of 1000 and `MiB`/`Mi` powers of 1024; the unit is case-insensitive.
pub fn parse_bytes(kind: &'static str, s: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError {
        kind,
        value: s.to_owned(),
        hint: "use a size like \"512Mb\", \"1Gi\" or \"2GB\"",
    };
    let t: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    #[allow(clippy::cast_possible_truncation)] // range checked above
    Ok(bytes.round() as u64)
}

/// Parses a GPU count.
pub fn parse_gpu(s: &str) -> Result<u64, QuantityError> {
    s.trim().parse::<u64>().map_err(|_| QuantityError {
        kind: "gpu",
        value: s.to_owned(),
        hint: "use a whole number of GPUs like \"1\"",
    })
}

/// Resources a task gets when its spec leaves them out. Small on purpose: edge boards have little memory, and
/// Bacalhau's big defaults kept nodes from starting at all (bacalhau#4214, #3017).
#[derive(Debug, Clone, Copy)]
pub struct JobDefaults {
    /// CPU cores.
    pub cpu: f64,
    /// Memory bytes.
    pub memory: u64,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            cpu: 0.1,
            memory: 64 * 1000 * 1000,
        }
    }
}

/// The resources one execution of `job` needs (validated specs parse; bad values count as defaults).
pub fn job_resources(job: &super::Job, defaults: &JobDefaults) -> Resources {
    let Some(task) = job.task() else {
        return Resources::default();
    };
    let r = &task.resources;
    Resources {
        cpu: parse_cpu(&r.cpu)
            .ok()
            .filter(|_| !r.cpu.is_empty())
            .unwrap_or(defaults.cpu),
        memory: parse_bytes("memory", &r.memory)
            .ok()
            .filter(|_| !r.memory.is_empty())
            .unwrap_or(defaults.memory),
        disk: parse_bytes("disk", &r.disk).unwrap_or(0),
        gpu: parse_gpu(&r.gpu).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bacalhau_quantities() {
        assert_eq!(parse_cpu("500m").expect("cpu"), 0.5);
        assert_eq!(parse_cpu(" 2 ").expect("cpu"), 2.0);
        assert_eq!(parse_bytes("memory", "512Mb").expect("mem"), 512_000_000);
        assert_eq!(parse_bytes("memory", "1Gi").expect("mem"), 1 << 30);
        assert_eq!(parse_bytes("memory", "64MiB").expect("mem"), 64 << 20);
        assert_eq!(parse_bytes("memory", "1024").expect("mem"), 1024);
        assert!(parse_bytes("memory", "lots").is_err());
        assert!(parse_cpu("-1").is_err());
        assert_eq!(parse_gpu("1").expect("gpu"), 1);
    }
}
