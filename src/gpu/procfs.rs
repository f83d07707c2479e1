//! The procfs probe: `/proc/driver/nvidia/gpus/*/information` and `/proc/driver/nvidia/version`, written by
//! the kernel module itself, so it works where no user-space part of the driver is installed.
//!
//! The kernel does not publish memory size there: GPUs found this way advertise 0 bytes. Indexes follow PCI
//! bus order, as NVML numbers devices by default.

use std::path::{Path, PathBuf};

use super::probe::{GpuProbe, Inventory, ProbeError, ProbeSource, normalize_pci, under};
use super::{Gpu, GpuVendor};

/// Reads `/proc/driver/nvidia` under a root (`/`; a fixture tree in tests).
#[derive(Debug)]
pub(super) struct ProcfsProbe {
    root: PathBuf,
}

impl ProcfsProbe {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
}

impl GpuProbe for ProcfsProbe {
    fn source(&self) -> ProbeSource {
        ProbeSource::Procfs
    }

    fn probe(&self) -> Result<Inventory, ProbeError> {
        let dir = under(&self.root, "/proc/driver/nvidia/gpus");
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            ProbeError::Unavailable(format!(
                "{}: {e} (NVIDIA kernel module not loaded?)",
                dir.display()
            ))
        })?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join("information");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ProbeError::Failed(format!("{}: {e}", path.display())))?;
            found.push(
                parse_information(&text)
                    .map_err(|why| ProbeError::Malformed(format!("{}: {why}", path.display())))?,
            );
        }
        found.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
        for (i, gpu) in found.iter_mut().enumerate() {
            gpu.index = u32::try_from(i).unwrap_or(u32::MAX);
        }
        let driver_version =
            std::fs::read_to_string(under(&self.root, "/proc/driver/nvidia/version"))
                .ok()
                .and_then(|t| parse_version(&t));
        Ok(Inventory {
            gpus: found,
            driver_version,
            cuda_version: None,
            source: ProbeSource::Procfs,
        })
    }
}

/// The minor number of the GPU at `pci_address` (any spelling), if procfs under `root` lists it.
pub(super) fn minor_of(root: &Path, pci_address: &str) -> Option<u32> {
    let dir = under(root, "/proc/driver/nvidia/gpus");
    let want = normalize_pci(pci_address);
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| normalize_pci(&e.file_name().to_string_lossy()) == want)
        .find_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .and_then(|t| parse_information(&t).ok())
        .and_then(|g| g.minor)
}

/// One `information` file (`Key: value` lines, tab-padded). Index 0 and memory 0: the caller numbers them.
pub(super) fn parse_information(text: &str) -> Result<Gpu, String> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let name = field("Model").ok_or("no Model line")?;
    let uuid = field("GPU UUID").ok_or("no GPU UUID line")?;
    let bus = field("Bus Location").ok_or("no Bus Location line")?;
    let minor = field("Device Minor")
        .ok_or("no Device Minor line")?
        .parse::<u32>()
        .map_err(|_| "Device Minor is not a number")?;
    Ok(Gpu {
        index: 0,
        name,
        vendor: GpuVendor::Nvidia,
        memory_bytes: 0,
        pci_address: normalize_pci(&bus),
        uuid,
        minor: Some(minor),
    })
}

/// The driver version from `/proc/driver/nvidia/version`: the first dotted number on the `NVRM version` line
/// (`... Kernel Module  550.54.15  Tue Mar ...`, or `... Open Kernel Module for x86_64  550.54.15 ...`).
pub(super) fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|t| {
            t.contains('.')
                && t.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T4: &str = "Model: \t\t Tesla T4\nIRQ:   \t\t 35\nGPU UUID: \t GPU-0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff\n\
Video BIOS: \t 90.04.38.00.03\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n\
Bus Location: \t 0000:af:00.0\nDevice Minor: \t 1\nGPU Excluded:\t No\n";
    const A100: &str = "Model: \t\t NVIDIA A100-SXM4-40GB\nGPU UUID: \t GPU-5e3a\nBus Location: \t 0000:3b:00.0\nDevice Minor: \t 0\n";

    fn tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let gpus = root.path().join("proc/driver/nvidia/gpus");
        for (bus, text) in [("0000:af:00.0", T4), ("0000:3b:00.0", A100)] {
            std::fs::create_dir_all(gpus.join(bus)).expect("mkdir");
            std::fs::write(gpus.join(bus).join("information"), text).expect("write");
        }
        std::fs::write(
            root.path().join("proc/driver/nvidia/version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n\
             GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
        )
        .expect("write");
        root
    }

    #[test]
    fn reads_a_fixture_tree_in_bus_order() {
        let root = tree();
        let inv = ProcfsProbe::new(root.path()).probe().expect("probe");
        assert_eq!(inv.source, ProbeSource::Procfs);
        assert_eq!(inv.driver_version.as_deref(), Some("550.54.15"));
        let names: Vec<_> = inv
            .gpus
            .iter()
            .map(|g| (g.index, g.name.as_str(), g.minor))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "NVIDIA A100-SXM4-40GB", Some(0)),
                (1, "Tesla T4", Some(1))
            ]
        );
        assert_eq!(inv.gpus[1].pci_address, "0000:AF:00.0");
        assert_eq!(inv.gpus[1].uuid, "GPU-0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff");
        assert_eq!(inv.gpus[1].memory_bytes, 0, "procfs does not tell memory");
        assert_eq!(minor_of(root.path(), "00000000:AF:00.0"), Some(1));
        assert_eq!(minor_of(root.path(), "0000:01:00.0"), None);
    }

    #[test]
    fn absent_or_broken_trees_are_explained() {
        let empty = tempfile::tempdir().expect("tempdir");
        let e = ProcfsProbe::new(empty.path())
            .probe()
            .expect_err("no module");
        assert!(matches!(e, ProbeError::Unavailable(_)), "{e}");
        let gpus = empty.path().join("proc/driver/nvidia/gpus/0000:01:00.0");
        std::fs::create_dir_all(&gpus).expect("mkdir");
        std::fs::write(gpus.join("information"), "Model: X\n").expect("write");
        let e = ProcfsProbe::new(empty.path()).probe().expect_err("no uuid");
        assert!(e.to_string().contains("GPU UUID"), "{e}");
    }

    #[test]
    fn reads_open_module_versions() {
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  560.35.03  Release Build  (dvs-builder@U16)\n";
        assert_eq!(parse_version(open).as_deref(), Some("560.35.03"));
        assert_eq!(parse_version("nothing here"), None);
    }
}
