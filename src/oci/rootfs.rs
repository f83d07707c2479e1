//! Per-execution root filesystems built from unpacked layers. (Stub: interface only; being implemented.)
//!
//! Where overlayfs works, the layers (bottom to top) are the lower dirs of an overlay mount with an upper and
//! work dir inside the execution's directory; otherwise the layers are merged into a copy, applying whiteouts
//! as deletions. Either way the layers themselves are never written.

use std::path::{Path, PathBuf};

/// A prepared root filesystem; call [`RootFs::release`] when the container is gone.
#[derive(Debug)]
pub struct RootFs {
    path: PathBuf,
}

impl RootFs {
    /// Builds a root filesystem at `<work>/rootfs` from `layers` (bottom first). `work` is the execution's own
    /// directory.
    pub fn prepare(layers: &[PathBuf], work: &Path) -> std::io::Result<RootFs> {
        let _ = (layers, work);
        todo!("oci::rootfs::RootFs::prepare")
    }
    /// The directory to give the runtime.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Unmounts (if mounted) and removes everything under `work`.
    pub fn release(self) -> std::io::Result<()> {
        todo!("oci::rootfs::RootFs::release")
    }
}
