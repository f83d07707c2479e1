//! Safe layer unpacking. (Stub: interface only; being implemented.)
//!
//! A layer is unpacked into its own empty directory in overlayfs format: a whiteout `.wh.NAME` becomes a 0/0
//! character device `NAME`, an opaque whiteout `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
//! Every path is resolved inside the destination (openat2 `RESOLVE_IN_ROOT` through `pathrs`), so no entry can
//! escape it through `..`, an absolute or relative symlink, or a hardlink; device nodes other than whiteouts
//! are refused. Owners are shifted by [`IdShift`] so that the user namespace's root owns what image root owns.

use std::io::Read;
use std::path::Path;

/// Host id = container id + `base`, for ids below `size` (the container's user namespace mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// First host uid/gid of the mapping.
    pub base: u32,
    /// Number of ids mapped.
    pub size: u32,
}

/// Bounds on what one layer may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of file content.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_entries: u64,
}

/// What one layer held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries applied (whiteouts included).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Why a layer could not be unpacked. Each names the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land outside the layer's root.
    #[error("layer entry {path:?} escapes the image root: {reason}")]
    Escape {
        /// The entry's path in the tar.
        path: String,
        /// How.
        reason: String,
    },
    /// The layer is not a valid tar stream.
    #[error("layer is not a valid tar archive: {0}")]
    Corrupt(String),
    /// An entry type Cod refuses (device nodes, say).
    #[error("layer entry {path:?} is a {kind}, which images may not contain")]
    Forbidden {
        /// The entry's path.
        path: String,
        /// Its type.
        kind: String,
    },
    /// The layer is larger than allowed.
    #[error("layer exceeds the unpack limit: {0}")]
    TooLarge(String),
    /// A file system error.
    #[error("unpacking layer: {0}")]
    Io(#[from] std::io::Error),
}

/// Unpacks the uncompressed tar stream `layer` into the empty directory `dest` (see the module docs).
pub fn apply_layer(
    layer: impl Read,
    dest: &Path,
    shift: IdShift,
    limits: UnpackLimits,
) -> Result<LayerStats, UnpackError> {
    let _ = (layer, dest, shift, limits);
    todo!("oci::unpack::apply_layer")
}
