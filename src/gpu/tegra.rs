//! The Tegra (Jetson) probe: these boards have an integrated GPU and no NVML, so the device tree tells.
//!
//! `/proc/device-tree/compatible` (NUL-separated) contains `nvidia,tegra…`; the model comes from
//! `/proc/device-tree/model`. The GPU shares system memory, so it advertises the RAM size; it has no PCI
//! address, no UUID and no `/dev/nvidia<N>` node of its own (`minor: None`: its device nodes are shared).
//! The L4T release (`/etc/nv_tegra_release`) stands in for the driver version.

use std::path::{Path, PathBuf};

use super::probe::{GpuProbe, Inventory, ProbeError, ProbeSource, under};
use super::{Gpu, GpuVendor};

/// Reads the device tree under a root (`/`; a fixture tree in tests).
#[derive(Debug)]
pub(super) struct TegraProbe {
    root: PathBuf,
}

impl TegraProbe {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
}

impl GpuProbe for TegraProbe {
    fn source(&self) -> ProbeSource {
        ProbeSource::Tegra
    }

    fn probe(&self) -> Result<Inventory, ProbeError> {
        let compatible = std::fs::read(under(&self.root, "/proc/device-tree/compatible"))
            .map_err(|e| ProbeError::Unavailable(format!("no device tree: {e}")))?;
        let is_tegra = compatible
            .split(|b| *b == 0)
            .any(|c| String::from_utf8_lossy(c).starts_with("nvidia,tegra"));
        if !is_tegra {
            return Err(ProbeError::Unavailable("not a Tegra board".into()));
        }
        let name = std::fs::read(under(&self.root, "/proc/device-tree/model"))
            .map(|m| {
                String::from_utf8_lossy(&m)
                    .trim_end_matches('\0')
                    .trim()
                    .to_owned()
            })
            .ok()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "NVIDIA Tegra".to_owned());
        let memory_bytes = std::fs::read_to_string(under(&self.root, "/proc/meminfo"))
            .ok()
            .and_then(|t| mem_total(&t))
            .unwrap_or(0);
        let driver_version = std::fs::read_to_string(under(&self.root, "/etc/nv_tegra_release"))
            .ok()
            .and_then(|t| l4t_release(&t));
        Ok(Inventory {
            gpus: vec![Gpu {
                index: 0,
                name,
                vendor: GpuVendor::Nvidia,
                memory_bytes,
                pci_address: String::new(),
                uuid: String::new(),
                minor: None,
            }],
            driver_version,
            cuda_version: None,
            source: ProbeSource::Tegra,
        })
    }
}

/// `MemTotal:  32021580 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// `# R35 (release), REVISION: 4.1, GCID: …` → `L4T R35.4.1`.
fn l4t_release(text: &str) -> Option<String> {
    let line = text.lines().next()?.trim_start_matches('#').trim();
    let release = line.split_whitespace().next()?;
    let revision = line
        .split(',')
        .find_map(|p| p.trim().strip_prefix("REVISION:"))
        .map(str::trim)?;
    Some(format!("L4T {release}.{revision}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(compatible: &[u8]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let dt = root.path().join("proc/device-tree");
        std::fs::create_dir_all(&dt).expect("mkdir");
        std::fs::write(dt.join("compatible"), compatible).expect("write");
        std::fs::write(dt.join("model"), b"NVIDIA Jetson AGX Orin Developer Kit\0").expect("write");
        std::fs::write(
            root.path().join("proc/meminfo"),
            "MemTotal:       32021580 kB\nMemFree:         1000 kB\n",
        )
        .expect("write");
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::fs::write(
            root.path().join("etc/nv_tegra_release"),
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n",
        )
        .expect("write");
        root
    }

    #[test]
    fn finds_the_integrated_gpu_of_a_jetson() {
        let root = board(b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0");
        let inv = TegraProbe::new(root.path()).probe().expect("probe");
        assert_eq!(inv.source, ProbeSource::Tegra);
        assert_eq!(inv.gpus.len(), 1);
        let g = &inv.gpus[0];
        assert_eq!(g.name, "NVIDIA Jetson AGX Orin Developer Kit");
        assert_eq!(g.memory_bytes, 32_021_580 * 1024, "system RAM");
        assert_eq!(g.minor, None);
        assert!(g.pci_address.is_empty());
        assert_eq!(inv.driver_version.as_deref(), Some("L4T R35.4.1"));
    }

    #[test]
    fn other_boards_and_hosts_are_not_tegra() {
        let pi = board(b"raspberrypi,4-model-b\0brcm,bcm2711\0");
        let e = TegraProbe::new(pi.path()).probe().expect_err("a Pi");
        assert_eq!(e, ProbeError::Unavailable("not a Tegra board".into()));
        let pc = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            TegraProbe::new(pc.path()).probe(),
            Err(ProbeError::Unavailable(_))
        ));
    }
}
