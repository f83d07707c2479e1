//! Finding the node's GPUs: the [`GpuProbe`] trait and the order its implementations are tried in.
//!
//! NVML first (exact, and what the container side needs: UUIDs and minor numbers); `nvidia-smi` where NVML
//! cannot be loaded by this binary (the static musl build cannot `dlopen`, but can run the tool); procfs where
//! neither is there (a driver without its user-space tools); the device tree on Tegra/Jetson, which has no
//! NVML at all. The first probe that finds a GPU wins; each one that does not says why, and the node logs the
//! reasons once ("no NVIDIA GPU found (NVML: …; nvidia-smi: …)"). Probes only read: they never change the
//! driver's state.

use std::fmt;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

use super::{Gpu, GpuSettings};

/// Where an [`Inventory`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeSource {
    /// `libnvidia-ml.so.1`.
    Nvml,
    /// The `nvidia-smi` tool.
    NvidiaSmi,
    /// `/proc/driver/nvidia`.
    Procfs,
    /// The device tree of a Tegra (Jetson) board.
    Tegra,
}

impl fmt::Display for ProbeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeSource::Nvml => "NVML",
            ProbeSource::NvidiaSmi => "nvidia-smi",
            ProbeSource::Procfs => "procfs",
            ProbeSource::Tegra => "Tegra device tree",
        })
    }
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The GPUs, by index.
    pub gpus: Vec<Gpu>,
    /// Driver version (`550.54.15`), when the source tells.
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports (`12.4`), when the source tells.
    pub cuda_version: Option<String>,
    /// Which probe.
    pub source: ProbeSource,
}

/// Why a probe found nothing. Not a node failure: the next probe is tried, and a node without GPUs runs on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The source is not on this machine (no library, no tool, no files).
    #[error("not available ({0})")]
    Unavailable(String),
    /// The source is there but failed (driver not loaded, no permission).
    #[error("failed ({0})")]
    Failed(String),
    /// The source answered something this node cannot read.
    #[error("unreadable answer ({0})")]
    Malformed(String),
}

/// One way of finding GPUs.
pub trait GpuProbe: fmt::Debug + Send + Sync {
    /// Which source this is (for the log).
    fn source(&self) -> ProbeSource;
    /// Looks. Blocking (a library call, a process, file reads): call it off the async runtime.
    fn probe(&self) -> Result<Inventory, ProbeError>;
}

/// The outcome of [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `Compute.GPU.Enabled` is false.
    Disabled,
    /// GPUs found.
    Found(Inventory),
    /// None found; why not, per probe tried.
    NoGpu(Vec<(ProbeSource, String)>),
}

impl Discovery {
    /// The GPUs found (none unless [`Discovery::Found`]).
    pub fn gpus(&self) -> &[Gpu] {
        match self {
            Discovery::Found(i) => &i.gpus,
            _ => &[],
        }
    }
    /// The inventory, when GPUs were found.
    pub fn inventory(&self) -> Option<&Inventory> {
        match self {
            Discovery::Found(i) => Some(i),
            _ => None,
        }
    }
}

/// The probes for this machine, in the order they are tried.
pub fn default_probes(settings: &GpuSettings) -> Vec<Box<dyn GpuProbe>> {
    let root = &settings.driver_root;
    vec![
        #[cfg(feature = "gpu")]
        Box::new(super::nvml::NvmlProbe::new(root)),
        Box::new(super::smi::SmiProbe::new(root)),
        // /proc and the device tree are the running kernel's, whatever the driver root.
        Box::new(super::procfs::ProcfsProbe::new(Path::new("/"))),
        Box::new(super::tegra::TegraProbe::new(Path::new("/"))),
    ]
}

/// Finds the GPUs with the first probe that sees one, and logs the outcome once (info).
pub fn discover(settings: &GpuSettings, probes: &[Box<dyn GpuProbe>]) -> Discovery {
    if !settings.enabled {
        info!("GPU discovery off (Compute.GPU.Enabled = false): advertising no GPU");
        return Discovery::Disabled;
    }
    let mut tried = Vec::new();
    for p in probes {
        match p.probe() {
            Ok(inventory) if !inventory.gpus.is_empty() => {
                info!(
                    source = %inventory.source,
                    count = inventory.gpus.len(),
                    models = ?inventory.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
                    driver = inventory.driver_version.as_deref().unwrap_or("unknown"),
                    cuda = inventory.cuda_version.as_deref().unwrap_or("unknown"),
                    "NVIDIA GPUs found"
                );
                return Discovery::Found(inventory);
            }
            Ok(_) => tried.push((p.source(), "no GPU listed".to_owned())),
            Err(e) => {
                debug!(source = %p.source(), reason = %e, "GPU probe found nothing");
                tried.push((p.source(), e.to_string()));
            }
        }
    }
    info!("no NVIDIA GPU found ({})", why_none(&tried));
    Discovery::NoGpu(tried)
}

/// "NVML: not available (…); nvidia-smi: …".
pub fn why_none(tried: &[(ProbeSource, String)]) -> String {
    tried
        .iter()
        .map(|(s, why)| format!("{s}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `<root>/<rel>`, where `rel` is an absolute path on the target system.
pub(super) fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// A PCI bus id in one form whatever the source wrote (`00000000:3b:00.0` from NVML, `0000:3B:00.0`): a
/// four-digit domain and upper-case hex, as in [`Gpu::pci_address`]. Text that is not a bus id is kept as is.
pub(super) fn normalize_pci(raw: &str) -> String {
    let raw = raw.trim();
    let Some((domain, rest)) = raw.split_once(':') else {
        return raw.to_owned();
    };
    let Ok(domain) = u32::from_str_radix(domain, 16) else {
        return raw.to_owned();
    };
    format!("{domain:04X}:{}", rest.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(ProbeSource, Result<Inventory, ProbeError>);

    impl GpuProbe for Fixed {
        fn source(&self) -> ProbeSource {
            self.0
        }
        fn probe(&self) -> Result<Inventory, ProbeError> {
            self.1.clone()
        }
    }

    fn one_gpu(source: ProbeSource) -> Inventory {
        Inventory {
            gpus: vec![Gpu {
                index: 0,
                name: "Tesla T4".into(),
                vendor: super::super::GpuVendor::Nvidia,
                memory_bytes: 16 << 30,
                pci_address: "0000:3B:00.0".into(),
                uuid: "GPU-1".into(),
                minor: Some(0),
            }],
            driver_version: None,
            cuda_version: None,
            source,
        }
    }

    #[test]
    fn first_probe_with_a_gpu_wins_and_failures_are_explained() {
        let probes: Vec<Box<dyn GpuProbe>> = vec![
            Box::new(Fixed(
                ProbeSource::Nvml,
                Err(ProbeError::Unavailable("no libnvidia-ml.so.1".into())),
            )),
            Box::new(Fixed(
                ProbeSource::NvidiaSmi,
                Ok(one_gpu(ProbeSource::NvidiaSmi)),
            )),
            Box::new(Fixed(ProbeSource::Procfs, Ok(one_gpu(ProbeSource::Procfs)))),
        ];
        let found = discover(&GpuSettings::default(), &probes);
        assert_eq!(
            found.inventory().map(|i| i.source),
            Some(ProbeSource::NvidiaSmi)
        );

        let none: Vec<Box<dyn GpuProbe>> = vec![
            Box::new(Fixed(
                ProbeSource::Nvml,
                Err(ProbeError::Unavailable("no libnvidia-ml.so.1".into())),
            )),
            Box::new(Fixed(
                ProbeSource::Procfs,
                Ok(Inventory {
                    gpus: vec![],
                    ..one_gpu(ProbeSource::Procfs)
                }),
            )),
        ];
        let Discovery::NoGpu(tried) = discover(&GpuSettings::default(), &none) else {
            panic!("expected no GPU");
        };
        assert_eq!(
            why_none(&tried),
            "NVML: not available (no libnvidia-ml.so.1); procfs: no GPU listed"
        );
    }

    #[test]
    fn disabled_advertises_none_without_probing() {
        let probes: Vec<Box<dyn GpuProbe>> = vec![Box::new(Fixed(
            ProbeSource::Nvml,
            Ok(one_gpu(ProbeSource::Nvml)),
        ))];
        let off = GpuSettings {
            enabled: false,
            ..GpuSettings::default()
        };
        assert_eq!(discover(&off, &probes), Discovery::Disabled);
        assert!(discover(&off, &probes).gpus().is_empty());
    }

    #[test]
    fn pci_ids_are_normalized() {
        assert_eq!(normalize_pci("00000000:3b:00.0"), "0000:3B:00.0");
        assert_eq!(normalize_pci(" 0000:3B:00.0 "), "0000:3B:00.0");
        assert_eq!(normalize_pci("n/a"), "n/a");
    }
}
