//! The NVML probe (feature `gpu`): `libnvidia-ml.so.1`, loaded at run time through nvml-wrapper.
//!
//! The versioned name is the one the driver installs (the unversioned `.so` comes only with development
//! packages); nvml-wrapper 0.13 asks for it by default. With a driver root other than `/`, the library is
//! looked for in that tree's usual library folders first. A static musl build cannot `dlopen` at all: loading
//! fails cleanly, and the next probe is tried. NVML is opened, read and shut down within one probe: nothing of
//! it stays loaded into the running node.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Nvml, cuda_driver_version_major, cuda_driver_version_minor};

use super::probe::{GpuProbe, Inventory, ProbeError, ProbeSource, normalize_pci, under};
use super::{Gpu, GpuVendor};

/// The library's name as the driver installs it.
const LIBRARY: &str = "libnvidia-ml.so.1";

/// Asks NVML.
#[derive(Debug)]
pub(super) struct NvmlProbe {
    /// The driver root (`/` on a normal host: the dynamic linker's search path is used).
    root: PathBuf,
}

impl NvmlProbe {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn library(&self) -> PathBuf {
        if self.root != Path::new("/") {
            for dir in super::DRIVER_LIB_DIRS {
                let p = under(&self.root, dir).join(LIBRARY);
                if p.is_file() {
                    return p;
                }
            }
        }
        PathBuf::from(LIBRARY)
    }
}

impl GpuProbe for NvmlProbe {
    fn source(&self) -> ProbeSource {
        ProbeSource::Nvml
    }

    fn probe(&self) -> Result<Inventory, ProbeError> {
        let lib = self.library();
        let nvml = Nvml::builder()
            .lib_path(OsStr::new(&lib))
            .init()
            .map_err(|e| match e {
                NvmlError::LibloadingError(e) => ProbeError::Unavailable(format!(
                    "cannot load {}: {e} (no NVIDIA driver, or a static build that cannot load libraries)",
                    lib.display()
                )),
                other => ProbeError::Failed(format!("NVML init: {other}")),
            })?;
        let failed = |what: &str, e: NvmlError| ProbeError::Failed(format!("{what}: {e}"));
        let count = nvml.device_count().map_err(|e| failed("device count", e))?;
        let mut gpus = Vec::new();
        for i in 0..count {
            let d = nvml
                .device_by_index(i)
                .map_err(|e| failed(&format!("device {i}"), e))?;
            let field = |what: &str, e| failed(&format!("device {i} {what}"), e);
            gpus.push(Gpu {
                index: d.index().unwrap_or(i),
                name: d.name().map_err(|e| field("name", e))?,
                vendor: GpuVendor::Nvidia,
                memory_bytes: d.memory_info().map_err(|e| field("memory", e))?.total,
                pci_address: normalize_pci(&d.pci_info().map_err(|e| field("PCI info", e))?.bus_id),
                uuid: d.uuid().map_err(|e| field("UUID", e))?,
                // Not supported on some platforms (and meaningless for MIG devices): no device node then.
                minor: d.minor_number().ok(),
            });
        }
        let driver_version = nvml.sys_driver_version().ok();
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                cuda_driver_version_major(v),
                cuda_driver_version_minor(v)
            )
        });
        Ok(Inventory {
            gpus,
            driver_version,
            cuda_version,
            source: ProbeSource::Nvml,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_cannot_load_is_unavailable_not_an_error_of_the_node() {
        // A driver root whose library is not a shared object: dlopen fails as it does in a static build or on
        // a host without the driver, on any machine (the e2e test covers a loadable one).
        let root = tempfile::tempdir().expect("tempdir");
        let lib = root.path().join("usr/lib64");
        std::fs::create_dir_all(&lib).expect("mkdir");
        std::fs::write(lib.join(LIBRARY), b"not an ELF file").expect("write");
        let e = NvmlProbe::new(root.path())
            .probe()
            .expect_err("cannot load");
        assert!(matches!(e, ProbeError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("usr/lib64/libnvidia-ml.so.1"), "{e}");
    }
}
