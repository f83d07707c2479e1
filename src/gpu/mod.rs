//! GPUs: what the node has ([`Gpu`], found by a probe), which execution holds which (allocation on the compute
//! node), and what a container needs to use the ones it holds (exposure, in the `docker` engine).
//!
//! Only NVIDIA GPUs for now, as Bacalhau's NVML path; `GpuVendor` leaves room for others.
//!
//! Layout: [`probe`] finds the GPUs ([`GpuProbe`] with one implementation per source: NVML, `nvidia-smi`,
//! procfs, Tegra), [`allocator`] hands them to executions, [`advertise`] turns them into Bacalhau's
//! `Resources.GPUs` and node labels. Nothing here is needed by a node without GPUs: discovery then says so
//! once and every list stays empty.

pub mod advertise;
pub mod allocator;
#[cfg(feature = "gpu")]
mod nvml;
pub mod probe;
mod procfs;
mod smi;
mod tegra;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use allocator::{GpuAllocator, NotEnoughGpus};
pub use probe::{Discovery, GpuProbe, Inventory, ProbeError, ProbeSource, discover};

/// The vendor, spelled as Bacalhau's `GPUVendor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GpuVendor {
    /// NVIDIA.
    #[serde(rename = "NVIDIA")]
    Nvidia,
}

/// One GPU of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Index as NVML numbers them (stable while the driver is loaded); what executions are given.
    pub index: u32,
    /// Model, e.g. `NVIDIA A100-SXM4-40GB` or `Orin (nvgpu)`.
    pub name: String,
    /// Vendor.
    pub vendor: GpuVendor,
    /// Total memory in bytes (integrated GPUs share the system's).
    pub memory_bytes: u64,
    /// PCI bus id, `0000:3B:00.0`; empty for integrated GPUs.
    pub pci_address: String,
    /// NVIDIA's `GPU-…` UUID; what `NVIDIA_VISIBLE_DEVICES` names.
    pub uuid: String,
    /// Minor number of its device node, `/dev/nvidia<minor>`; `None` for integrated (Tegra) GPUs, whose
    /// device nodes are shared (`/dev/nvhost-*`, `/dev/nvmap`).
    pub minor: Option<u32>,
}

/// Where a driver root keeps the driver's libraries, in search order (Debian/Ubuntu multiarch first, then the
/// RPM distributions' `lib64`, then plain `lib`): NVML is loaded from there, and containers get theirs from there.
pub const DRIVER_LIB_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib",
];

/// GPU settings of a compute node (`Compute.GPU`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSettings {
    /// Look for GPUs at all.
    pub enabled: bool,
    /// Where the driver's files live, as the NVIDIA container toolkit's `root`: device nodes under
    /// `<root>/dev`, libraries and tools under `<root>/usr/...`. `/` on a normal host.
    pub driver_root: PathBuf,
}

impl Default for GpuSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            driver_root: PathBuf::from("/"),
        }
    }
}
