//! How the node tells orchestrators about its GPUs: Bacalhau's `Resources.GPUs` entries and node labels.
//!
//! Labels as Bacalhau's `gpuLabelsProvider` writes them: `GPU-<i>` = model with spaces as dashes
//! (`Tesla-T4`), `GPU-<i>-Memory` = `<MiB>-MiB`. Bacalhau has no driver or CUDA label; Cod adds
//! `GPU-Driver-Version` and `GPU-CUDA-Version` (its own names) so jobs can ask for a driver with a constraint.

use std::collections::BTreeMap;

use crate::model::GpuResource;

use super::{Gpu, GpuVendor, Inventory};

/// Cod's label for the driver version (not Bacalhau's).
pub const DRIVER_LABEL: &str = "GPU-Driver-Version";
/// Cod's label for the CUDA version the driver supports (not Bacalhau's).
pub const CUDA_LABEL: &str = "GPU-CUDA-Version";

/// The Bacalhau shape of one GPU (memory in MiB).
pub fn resource(gpu: &Gpu) -> GpuResource {
    GpuResource {
        index: u64::from(gpu.index),
        name: gpu.name.clone(),
        vendor: match gpu.vendor {
            GpuVendor::Nvidia => "NVIDIA".to_owned(),
        },
        memory: gpu.memory_bytes >> 20,
        pci_address: gpu.pci_address.clone(),
    }
}

/// The labels for what discovery found (none without GPUs).
pub fn labels(inventory: Option<&Inventory>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let Some(inv) = inventory else {
        return labels;
    };
    // Bacalhau numbers labels by position in the list, which is the index order here.
    for (i, gpu) in inv.gpus.iter().enumerate() {
        labels.insert(format!("GPU-{i}"), gpu.name.replace(' ', "-"));
        labels.insert(
            format!("GPU-{i}-Memory"),
            format!("{}-MiB", gpu.memory_bytes >> 20),
        );
    }
    if let Some(v) = &inv.driver_version {
        labels.insert(DRIVER_LABEL.to_owned(), v.replace(' ', "-"));
    }
    if let Some(v) = &inv.cuda_version {
        labels.insert(CUDA_LABEL.to_owned(), v.clone());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::super::ProbeSource;
    use super::*;

    fn t4(index: u32) -> Gpu {
        Gpu {
            index,
            name: "Tesla T4".into(),
            vendor: GpuVendor::Nvidia,
            memory_bytes: 15360 << 20,
            pci_address: "0000:3B:00.0".into(),
            uuid: format!("GPU-{index}"),
            minor: Some(index),
        }
    }

    #[test]
    fn shapes_gpus_and_labels_as_bacalhau() {
        let r = resource(&t4(1));
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            serde_json::json!({"Index": 1, "Name": "Tesla T4", "Vendor": "NVIDIA", "Memory": 15360,
                               "PCIAddress": "0000:3B:00.0"})
        );
        let inv = Inventory {
            gpus: vec![t4(0), t4(1)],
            driver_version: Some("550.54.15".into()),
            cuda_version: Some("12.4".into()),
            source: ProbeSource::Nvml,
        };
        let l = labels(Some(&inv));
        assert_eq!(l["GPU-0"], "Tesla-T4");
        assert_eq!(l["GPU-1-Memory"], "15360-MiB");
        assert_eq!(l[DRIVER_LABEL], "550.54.15");
        assert_eq!(l[CUDA_LABEL], "12.4");
        assert_eq!(l.len(), 6);
        assert!(labels(None).is_empty());
    }
}
