//! Safe layer unpacking: one uncompressed OCI/Docker layer tar into its own empty directory, in overlayfs
//! format, so the unpacked layers can be stacked as overlay lower dirs (or merged by [`crate::oci::rootfs`]).
//!
//! What a layer may contain, and what it becomes:
//! - regular files, directories, symlinks and hard links, with their mode (setuid/setgid/sticky included),
//!   owner (shifted by [`IdShift`]) and modification time. Directories get their mode and time once the whole
//!   layer is written, so a directory listed after its content (or a read-only one) still ends up as the tar
//!   says;
//! - FIFOs. They are allowed because a named pipe gives no access to hardware or kernel state (it is only a
//!   meeting point for processes that can already talk), and some images ship one; refusing them would break
//!   those images for no gain;
//! - whiteouts: `.wh.NAME` becomes a 0/0 character device `NAME` (how overlayfs hides `NAME` of lower layers),
//!   and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory (which then hides everything lower
//!   layers have there). Other `.wh..wh.*` names are AUFS bookkeeping and are skipped;
//! - nothing else: character and block devices other than whiteouts, and any other tar entry type, are
//!   refused with [`UnpackError::Forbidden`]. A container gets its devices from the runtime, never from an
//!   image.
//!
//! Confinement: every file system operation is resolved inside `dest` by `pathrs` (openat2 `RESOLVE_IN_ROOT`).
//! - entry paths are normalised lexically: leading `/` is dropped (absolute paths are relative to the layer),
//!   `.` is ignored, and a `..` that would climb above the layer root is refused with
//!   [`UnpackError::Escape`] (one that stays inside is resolved lexically, like containerd does);
//! - symlinks are created exactly as the tar says (absolute or relative, even dangling); when a later entry's
//!   parent goes through one, it is resolved as if `dest` were `/`, so it can never lead outside;
//! - an entry replaces whatever is at its path (a directory only merges into an existing directory): a file
//!   written where a symlink is replaces the symlink and never writes through it;
//! - a hard link must name an entry already unpacked from this layer (a regular file, symlink or FIFO); a
//!   link to anything else, e.g. the host's `/etc/passwd`, is [`UnpackError::Escape`];
//! - a whiteout naming `.` or `..` is [`UnpackError::Escape`].
//!
//! Ownership: an id `i` of the tar becomes `shift.base + i` on disk; an id `i >= shift.size` is refused with
//! [`UnpackError::UnmappedId`] rather than clamped, because a clamped owner would silently give the file to a
//! different user inside the container (Docker's user-namespace remapping refuses such images too). Whiteouts
//! and directories the tar implies but does not list are owned by the container's root (`shift.base`), mode
//! 0755.
//!
//! Limits: every entry counts against [`UnpackLimits::max_entries`] and file content against
//! [`UnpackLimits::max_bytes`]; the raw tar stream is also capped (content plus 16 KiB per entry), which bounds
//! the long-name and PAX headers the `tar` crate reads into memory. Content is streamed, never held whole.
//!
//! Not applied: extended attributes carried in the tar (PAX `SCHILY.xattr.*`, e.g. `security.capability`
//! file capabilities) and sub-second times.
//!
//! This is blocking code: async callers run it in `spawn_blocking`.

pub(super) mod inroot;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use pathrs::InodeType;
use tar::EntryType;

use self::inroot::{InRoot, Kind, Meta};

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
    /// Entries read from the tar (whiteouts and skipped metadata entries included).
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
    /// An entry's owner is outside the ids mapped into containers.
    #[error(
        "layer entry {path:?} is owned by {which} {id}, outside the {size} ids this node maps into containers"
    )]
    UnmappedId {
        /// The entry's path.
        path: String,
        /// "uid" or "gid".
        which: &'static str,
        /// The id in the tar.
        id: u64,
        /// [`IdShift::size`].
        size: u32,
    },
    /// `dest` is missing, not a directory, or not empty.
    #[error("cannot unpack a layer into {path:?}")]
    Dest {
        /// The destination given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file system operation on one entry failed.
    #[error("{op} for layer entry {path:?} failed")]
    Entry {
        /// The entry's path in the tar.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file system error not tied to one entry.
    #[error("unpacking layer")]
    Io(#[from] io::Error),
}

/// Unpacks the uncompressed tar stream `layer` into `dest` (see the module docs for what is allowed and how).
///
/// `dest` must be an existing, empty directory; its own owner and mode become those of the layer root
/// (`shift.base`, 0755, unless the tar has a `./` entry). On error, everything written below `dest` is removed
/// before returning and `dest` itself is left, empty, for the caller to remove or reuse.
pub fn apply_layer(
    layer: impl Read,
    dest: &Path,
    shift: IdShift,
    limits: UnpackLimits,
) -> Result<LayerStats, UnpackError> {
    let dest_err = |source| UnpackError::Dest {
        path: dest.to_owned(),
        source,
    };
    let mut children = std::fs::read_dir(dest).map_err(dest_err)?;
    if children.next().is_some() {
        return Err(dest_err(io::Error::new(
            io::ErrorKind::DirectoryNotEmpty,
            "the directory is not empty",
        )));
    }
    let tree = InRoot::open(dest).map_err(dest_err)?;
    let mut unpacker = Unpacker {
        tree,
        shift,
        limits,
        stats: LayerStats::default(),
        dirs: BTreeMap::new(),
        buf: vec![0; COPY_BUF],
    };
    match unpacker.run(layer) {
        Ok(()) => Ok(unpacker.stats),
        Err(err) => {
            if let Err(cleanup) = unpacker.tree.clear() {
                // The unpack error is what the caller must see; this one only tells the operator why the
                // directory was left dirty.
                tracing::warn!(dest = %dest.display(), error = %cleanup, "could not empty a failed layer directory");
            }
            Err(err)
        }
    }
}

/// Size of the one buffer file content is streamed through.
const COPY_BUF: usize = 64 * 1024;

/// Per-entry allowance for headers, padding, long names and PAX records in the raw stream cap.
const STREAM_OVERHEAD_PER_ENTRY: u64 = 16 * 1024;

/// Name prefix of whiteouts (AUFS convention, used by OCI layers).
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Name of the opaque whiteout.
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// State of one `apply_layer` call.
struct Unpacker {
    /// `dest`, confined.
    tree: InRoot,
    /// Id mapping.
    shift: IdShift,
    /// Bounds.
    limits: UnpackLimits,
    /// Counts so far.
    stats: LayerStats,
    /// Directory metadata applied once the layer is written (keyed by normalized path; the last entry wins).
    dirs: BTreeMap<PathBuf, Meta>,
    /// Reused copy buffer.
    buf: Vec<u8>,
}

// === impl Unpacker ===

impl Unpacker {
    fn run(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let stream_cap = self.limits.max_bytes.saturating_add(
            self.limits
                .max_entries
                .saturating_add(2)
                .saturating_mul(STREAM_OVERHEAD_PER_ENTRY),
        );
        let mut capped = Capped {
            inner: layer,
            left: stream_cap,
            exceeded: false,
        };
        // The tar crate stops at the end-of-archive blocks; reading on to EOF lets a hashing reader (the
        // caller's diff_id check) see the padding after them too.
        let result = self.entries(&mut capped).and_then(|()| {
            io::copy(&mut capped, &mut io::sink())
                .map(drop)
                .map_err(|err| {
                    UnpackError::Corrupt(format!("reading past the end of the archive: {err}"))
                })
        });
        if capped.exceeded {
            return Err(UnpackError::TooLarge(format!(
                "the tar stream is larger than {stream_cap} bytes"
            )));
        }
        result?;
        self.tree
            .set_meta(Path::new(""), self.implicit_dir_meta())
            .map_err(|source| entry_err("./", "set owner and mode", source))?;
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, meta) in dirs {
            let shown = rel.display().to_string();
            // An entry listed later may have replaced the directory; its metadata is then not ours to apply.
            let still_dir = rel.as_os_str().is_empty()
                || self
                    .tree
                    .lstat(&rel)
                    .map_err(|source| entry_err(&shown, "stat", source))?
                    .is_some_and(|st| Kind::of(&st) == Kind::Dir);
            if still_dir {
                self.tree
                    .set_meta(&rel, meta)
                    .map_err(|source| entry_err(&shown, "set owner, mode and time", source))?;
            }
        }
        Ok(())
    }

    fn entries(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(layer);
        let entries = archive
            .entries()
            .map_err(|err| UnpackError::Corrupt(err.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|err| UnpackError::Corrupt(err.to_string()))?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(UnpackError::TooLarge(format!(
                    "more than {} entries",
                    self.limits.max_entries
                )));
            }
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry
            .path()
            .map_err(|err| UnpackError::Corrupt(format!("an entry has an unreadable path: {err}")))?
            .into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // PAX global headers set defaults for later entries (the tar crate applies what it understands);
            // they are not files.
            return Ok(());
        }
        let rel = normalize(&raw).ok_or_else(|| UnpackError::Escape {
            path: shown.clone(),
            reason: "its `..` components climb above the layer root".into(),
        })?;
        let Some(name) = rel.file_name() else {
            if kind == EntryType::Directory {
                let meta = self.meta(entry, &shown, true)?;
                self.dirs.insert(PathBuf::new(), meta);
                return Ok(());
            }
            return Err(UnpackError::Corrupt(format!(
                "entry {shown:?} names the layer root but is not a directory"
            )));
        };
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&rel, &shown);
        }
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        let implicit = self.implicit_dir_meta();
        self.tree
            .ensure_dir(&parent, implicit)
            .map_err(|source| entry_err(&shown, "create parent directories", source))?;
        match kind {
            EntryType::Directory => {
                if !self.clear_path(&rel, &shown, true)? {
                    self.tree
                        .create(
                            &rel,
                            &InodeType::Directory(std::fs::Permissions::from_mode(0o700)),
                        )
                        .map_err(|source| entry_err(&shown, "create directory", source))?;
                }
                let meta = self.meta(entry, &shown, true)?;
                self.dirs.insert(rel, meta);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = self.meta(entry, &shown, true)?;
                self.clear_path(&rel, &shown, false)?;
                self.write_file(entry, &rel, &shown)?;
                self.set_meta(&rel, &shown, meta)?;
            }
            EntryType::Symlink => {
                let meta = self.meta(entry, &shown, false)?;
                let target = entry
                    .link_name()
                    .map_err(|err| UnpackError::Corrupt(format!("entry {shown:?}: {err}")))?
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("symlink {shown:?} has no target"))
                    })?
                    .into_owned();
                self.clear_path(&rel, &shown, false)?;
                self.tree
                    .create(&rel, &InodeType::Symlink(target))
                    .map_err(|source| entry_err(&shown, "create symlink", source))?;
                self.set_meta(&rel, &shown, meta)?;
            }
            EntryType::Link => self.hardlink(entry, &rel, &shown)?,
            EntryType::Fifo => {
                let meta = self.meta(entry, &shown, true)?;
                self.clear_path(&rel, &shown, false)?;
                self.tree
                    .create(
                        &rel,
                        &InodeType::Fifo(std::fs::Permissions::from_mode(0o600)),
                    )
                    .map_err(|source| entry_err(&shown, "create fifo", source))?;
                self.set_meta(&rel, &shown, meta)?;
            }
            EntryType::Char => return Err(forbidden(&shown, "character device")),
            EntryType::Block => return Err(forbidden(&shown, "block device")),
            other => {
                return Err(forbidden(
                    &shown,
                    &format!("tar entry of type {:?}", other.as_byte() as char),
                ));
            }
        }
        Ok(())
    }

    /// `.wh.NAME` or `.wh..wh..opq` at `rel`.
    fn whiteout(&mut self, rel: &Path, shown: &str) -> Result<(), UnpackError> {
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let implicit = self.implicit_dir_meta();
        if name == OPAQUE_WHITEOUT {
            self.tree
                .ensure_dir(parent, implicit)
                .map_err(|source| entry_err(shown, "create parent directories", source))?;
            return self
                .tree
                .set_opaque(parent)
                .map_err(|source| entry_err(shown, "mark directory opaque", source));
        }
        if name.starts_with(b".wh..wh.") {
            // AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): nothing to apply in overlay format.
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::Escape {
                path: shown.to_owned(),
                reason: format!(
                    "it is a whiteout for {:?}, which is not an entry of its directory",
                    String::from_utf8_lossy(hidden)
                ),
            });
        }
        self.tree
            .ensure_dir(parent, implicit)
            .map_err(|source| entry_err(shown, "create parent directories", source))?;
        let target = parent.join(OsStr::from_bytes(hidden));
        self.clear_path(&target, shown, false)?;
        self.tree
            .create(
                &target,
                &InodeType::CharacterDevice(std::fs::Permissions::from_mode(0o000), 0),
            )
            .map_err(|source| entry_err(shown, "create whiteout", source))?;
        let meta = Meta {
            mode: None,
            mtime: None,
            ..implicit
        };
        self.set_meta(&target, shown, meta)
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let raw_target = entry
            .link_name()
            .map_err(|err| UnpackError::Corrupt(format!("entry {shown:?}: {err}")))?
            .ok_or_else(|| UnpackError::Corrupt(format!("hard link {shown:?} has no target")))?
            .into_owned();
        let escape = |reason: String| UnpackError::Escape {
            path: shown.to_owned(),
            reason,
        };
        let target = normalize(&raw_target)
            .filter(|t| !t.as_os_str().is_empty())
            .ok_or_else(|| {
                escape(format!(
                    "it is a hard link to {}, which is outside the layer",
                    raw_target.display()
                ))
            })?;
        let stat = self
            .tree
            .lstat(&target)
            .map_err(|source| entry_err(shown, "stat hard link target", source))?
            .ok_or_else(|| {
                escape(format!(
                    "it is a hard link to {}, which is not an earlier entry of this layer",
                    raw_target.display()
                ))
            })?;
        match Kind::of(&stat) {
            Kind::Regular | Kind::Symlink | Kind::Fifo => {}
            Kind::Dir => return Err(forbidden(shown, "hard link to a directory")),
            Kind::Whiteout | Kind::Other => return Err(forbidden(shown, "hard link to a device")),
        }
        if target == rel {
            return Ok(());
        }
        self.clear_path(rel, shown, false)?;
        self.tree
            .create(rel, &InodeType::Hardlink(target))
            .map_err(|source| entry_err(shown, "create hard link", source))
    }

    /// Streams the entry's content into a new file at `rel`.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let budget = self.limits.max_bytes.saturating_sub(self.stats.bytes);
        let too_large = || {
            UnpackError::TooLarge(format!(
                "file content is larger than {} bytes (at entry {shown:?})",
                self.limits.max_bytes
            ))
        };
        if entry.size() > budget {
            return Err(too_large());
        }
        let mut file = self
            .tree
            .create_file(rel)
            .map_err(|source| entry_err(shown, "create file", source))?;
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(UnpackError::Corrupt(format!(
                        "reading entry {shown:?}: {err}"
                    )));
                }
            };
            written += n as u64;
            // Sparse entries expand while read, so the header size alone does not bound what is written.
            if written > budget {
                return Err(too_large());
            }
            file.write_all(&self.buf[..n])
                .map_err(|source| entry_err(shown, "write file", source))?;
        }
        self.stats.bytes += written;
        Ok(())
    }

    /// Makes room for a new entry at `rel`: removes what is there, except an existing directory when
    /// `keep_dir` (a directory entry merges into it). Returns whether such a directory was kept.
    fn clear_path(&self, rel: &Path, shown: &str, keep_dir: bool) -> Result<bool, UnpackError> {
        let existing = self
            .tree
            .lstat(rel)
            .map_err(|source| entry_err(shown, "stat", source))?;
        match existing {
            None => Ok(false),
            Some(st) if keep_dir && Kind::of(&st) == Kind::Dir => Ok(true),
            Some(_) => {
                self.tree
                    .remove(rel)
                    .map_err(|source| entry_err(shown, "replace existing entry", source))?;
                Ok(false)
            }
        }
    }

    fn set_meta(&self, rel: &Path, shown: &str, meta: Meta) -> Result<(), UnpackError> {
        self.tree
            .set_meta(rel, meta)
            .map_err(|source| entry_err(shown, "set owner, mode and time", source))
    }

    /// The entry's owner (shifted), mode (when `with_mode`) and time.
    fn meta<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
        with_mode: bool,
    ) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let bad = |what: &str, err: io::Error| {
            UnpackError::Corrupt(format!("entry {shown:?} has an invalid {what}: {err}"))
        };
        let uid = header.uid().map_err(|e| bad("uid", e))?;
        let gid = header.gid().map_err(|e| bad("gid", e))?;
        let mode = if with_mode {
            Some(header.mode().map_err(|e| bad("mode", e))? & 0o7777)
        } else {
            None
        };
        let mtime = header.mtime().map_err(|e| bad("mtime", e))?;
        Ok(Meta {
            uid: self.shift_id(uid, "uid", shown)?,
            gid: self.shift_id(gid, "gid", shown)?,
            mode,
            mtime: Some(i64::try_from(mtime).unwrap_or(i64::MAX)),
        })
    }

    fn shift_id(&self, id: u64, which: &'static str, shown: &str) -> Result<u32, UnpackError> {
        u32::try_from(id)
            .ok()
            .filter(|&id| id < self.shift.size)
            .and_then(|id| id.checked_add(self.shift.base))
            .ok_or_else(|| UnpackError::UnmappedId {
                path: shown.to_owned(),
                which,
                id,
                size: self.shift.size,
            })
    }

    /// Owner and mode of directories the layer implies but does not list: the container's root, 0755.
    fn implicit_dir_meta(&self) -> Meta {
        Meta {
            uid: self.shift.base,
            gid: self.shift.base,
            mode: Some(0o755),
            mtime: None,
        }
    }
}

fn entry_err(shown: &str, op: &'static str, source: io::Error) -> UnpackError {
    UnpackError::Entry {
        path: shown.to_owned(),
        op,
        source,
    }
}

fn forbidden(shown: &str, kind: &str) -> UnpackError {
    UnpackError::Forbidden {
        path: shown.to_owned(),
        kind: kind.to_owned(),
    }
}

/// `path` relative to the layer root, without `.` and with each `..` applied lexically; `None` when a `..`
/// climbs above the root. A leading `/` is dropped: layer paths are relative to the layer whatever they say.
pub(super) fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Some(out)
}

/// The layer stream, cut off (with an error the tar crate passes up) after `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
    /// Set when the cap was hit, so the caller can tell that error from a real read error.
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells a stream that ends exactly at the cap from one that goes on.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other("layer stream exceeds its size cap"));
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    /// No shift: what a test without a user namespace uses.
    pub(in crate::oci) const NO_SHIFT: IdShift = IdShift {
        base: 0,
        size: u32::MAX,
    };
    pub(in crate::oci) const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };
    pub(in crate::oci) const MTIME: u64 = 1_600_000_000;

    /// A layer tar built in memory. Paths and link names are written raw into the header, so tests can say
    /// what `tar::Builder` refuses (`..`, absolute paths).
    pub(in crate::oci) struct LayerTar {
        builder: tar::Builder<Vec<u8>>,
    }

    impl LayerTar {
        pub(in crate::oci) fn new() -> LayerTar {
            LayerTar {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        fn raw(
            mut self,
            path: &str,
            kind: EntryType,
            mode: u32,
            owner: (u64, u64),
            link: Option<&str>,
            data: &[u8],
        ) -> LayerTar {
            let mut header = tar::Header::new_gnu();
            let old = header.as_old_mut();
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(owner.0);
            header.set_gid(owner.1);
            header.set_mtime(MTIME);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder.append(&header, data).expect("append");
            self
        }

        pub(in crate::oci) fn file(self, path: &str, data: &str) -> LayerTar {
            self.file_as(path, data, 0o644, (0, 0))
        }

        pub(in crate::oci) fn file_as(
            self,
            path: &str,
            data: &str,
            mode: u32,
            owner: (u64, u64),
        ) -> LayerTar {
            self.raw(path, EntryType::Regular, mode, owner, None, data.as_bytes())
        }

        pub(in crate::oci) fn dir(self, path: &str, mode: u32) -> LayerTar {
            self.raw(path, EntryType::Directory, mode, (0, 0), None, b"")
        }

        pub(in crate::oci) fn symlink(self, path: &str, target: &str) -> LayerTar {
            self.raw(path, EntryType::Symlink, 0o777, (0, 0), Some(target), b"")
        }

        pub(in crate::oci) fn hardlink(self, path: &str, target: &str) -> LayerTar {
            self.raw(path, EntryType::Link, 0o644, (0, 0), Some(target), b"")
        }

        pub(in crate::oci) fn fifo(self, path: &str) -> LayerTar {
            self.raw(path, EntryType::Fifo, 0o620, (0, 0), None, b"")
        }

        pub(in crate::oci) fn whiteout(self, path: &str) -> LayerTar {
            self.raw(path, EntryType::Regular, 0o644, (0, 0), None, b"")
        }

        fn device(self, path: &str, kind: EntryType) -> LayerTar {
            self.raw(path, kind, 0o666, (0, 0), None, b"")
        }

        /// A path longer than a header holds: `tar::Builder` writes a GNU long-name entry before it.
        fn long_file(mut self, path: &str, data: &str) -> LayerTar {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(MTIME);
            header.set_size(data.len() as u64);
            self.builder
                .append_data(&mut header, path, data.as_bytes())
                .expect("append long name");
            self
        }

        /// A symlink with a long target (a GNU long-link entry).
        fn long_symlink(mut self, path: &str, target: &str) -> LayerTar {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(0);
            header.set_mtime(MTIME);
            self.builder
                .append_link(&mut header, path, target)
                .expect("append long link");
            self
        }

        /// A file whose path comes from a PAX `path` record; the header itself says `short`.
        fn pax_file(self, path: &str, short: &str, data: &str) -> LayerTar {
            let body = format!(" path={path}\n");
            // A PAX record's length counts its own digits.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            let record = format!("{len}{body}");
            self.raw(
                "PaxHeaders/x",
                EntryType::XHeader,
                0o644,
                (0, 0),
                None,
                record.as_bytes(),
            )
            .file(short, data)
        }

        pub(in crate::oci) fn finish(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish tar")
        }
    }

    /// A temp dir with `dest` (empty) and `outside/secret` (a host file no layer may touch).
    pub(in crate::oci) struct Sandbox {
        pub(in crate::oci) tmp: tempfile::TempDir,
    }

    impl Sandbox {
        pub(in crate::oci) fn new() -> Sandbox {
            let tmp = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir(tmp.path().join("dest")).expect("dest");
            std::fs::create_dir(tmp.path().join("outside")).expect("outside");
            std::fs::write(tmp.path().join("outside/secret"), "host").expect("secret");
            Sandbox { tmp }
        }

        pub(in crate::oci) fn dest(&self) -> PathBuf {
            self.tmp.path().join("dest")
        }

        pub(in crate::oci) fn outside(&self) -> PathBuf {
            self.tmp.path().join("outside")
        }

        pub(in crate::oci) fn apply(&self, tar: LayerTar) -> Result<LayerStats, UnpackError> {
            apply_layer(tar.finish().as_slice(), &self.dest(), NO_SHIFT, LIMITS)
        }

        /// The sentinel still holds exactly the untouched secret, with no extra links to it.
        pub(in crate::oci) fn assert_outside_untouched(&self) {
            let names: Vec<_> = std::fs::read_dir(self.outside())
                .expect("list outside")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, ["secret"], "something was written outside the layer");
            let secret = self.outside().join("secret");
            assert_eq!(std::fs::read_to_string(&secret).expect("secret"), "host");
            assert_eq!(
                std::fs::metadata(&secret).expect("secret").nlink(),
                1,
                "the secret was hard-linked"
            );
        }

        fn assert_dest_empty(&self) {
            let left: Vec<_> = std::fs::read_dir(self.dest()).expect("dest").collect();
            assert!(
                left.is_empty(),
                "a failed unpack left {} entries",
                left.len()
            );
        }

        /// The unpack failed, cleaned up after itself and touched nothing outside.
        fn assert_failed_cleanly(&self) {
            self.assert_dest_empty();
            self.assert_outside_untouched();
        }
    }

    fn escape_path(err: UnpackError) -> String {
        match err {
            UnpackError::Escape { path, .. } => path,
            other => panic!("expected an escape error, got {other:?}"),
        }
    }

    #[test]
    fn unpacks_files_dirs_symlinks_hardlinks_and_fifos() {
        let sb = Sandbox::new();
        let stats = sb
            .apply(
                LayerTar::new()
                    .dir("./", 0o755)
                    .dir("bin/", 0o755)
                    .file_as("bin/su", "#!su", 0o4755, (0, 0))
                    .file("etc/motd", "hello")
                    .symlink("etc/link", "motd")
                    .hardlink("etc/hard", "etc/motd")
                    .fifo("run/pipe"),
            )
            .expect("unpack");
        assert_eq!(
            stats,
            LayerStats {
                entries: 7,
                bytes: 9
            }
        );
        let dest = sb.dest();
        let su = std::fs::metadata(dest.join("bin/su")).expect("su");
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid bit kept");
        assert_eq!(su.mtime(), MTIME as i64);
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/motd")).expect("motd"),
            "hello"
        );
        assert_eq!(
            std::fs::read_link(dest.join("etc/link")).expect("link"),
            Path::new("motd")
        );
        let hard = std::fs::metadata(dest.join("etc/hard")).expect("hard");
        assert_eq!(
            hard.ino(),
            std::fs::metadata(dest.join("etc/motd"))
                .expect("motd")
                .ino()
        );
        let pipe = std::fs::symlink_metadata(dest.join("run/pipe")).expect("pipe");
        assert!(pipe.file_type().is_fifo());
        assert_eq!(pipe.mode() & 0o7777, 0o620);
        // `etc/` and `run/` were implied, not listed.
        let etc = std::fs::metadata(dest.join("etc")).expect("etc");
        assert_eq!(etc.mode() & 0o7777, 0o755);
    }

    #[test]
    fn rejects_dotdot_that_climbs_out() {
        for path in [
            "../outside/pwned",
            "a/../../outside/pwned",
            "./../outside/pwned",
        ] {
            let sb = Sandbox::new();
            let err = sb
                .apply(LayerTar::new().file("ok", "x").file(path, "pwned"))
                .expect_err(path);
            assert_eq!(escape_path(err), path);
            sb.assert_failed_cleanly();
        }
        // A `..` that stays inside is applied lexically.
        let sb = Sandbox::new();
        sb.apply(LayerTar::new().file("a/../b", "x"))
            .expect("inner ..");
        assert_eq!(
            std::fs::read_to_string(sb.dest().join("b")).expect("b"),
            "x"
        );
    }

    #[test]
    fn absolute_paths_are_relative_to_the_layer() {
        let sb = Sandbox::new();
        let host = sb.outside().join("pwned");
        let host = host.to_str().expect("utf-8 temp path");
        sb.apply(
            LayerTar::new()
                .file("/etc/motd", "hi")
                .file(host, "contained"),
        )
        .expect("unpack");
        assert_eq!(
            std::fs::read_to_string(sb.dest().join("etc/motd")).expect("motd"),
            "hi"
        );
        let inside = sb.dest().join(host.trim_start_matches('/'));
        assert_eq!(
            std::fs::read_to_string(inside).expect("contained"),
            "contained"
        );
        sb.assert_outside_untouched();
    }

    #[test]
    fn symlinks_are_kept_but_never_followed_out() {
        let sb = Sandbox::new();
        let outside = sb.outside();
        let abs = outside.to_str().expect("utf-8 temp path");
        sb.apply(
            LayerTar::new()
                .symlink("root", "/")
                .symlink("up", "../../../../..")
                .symlink("abs", abs)
                .file("root/via-root", "1")
                .file("up/via-up", "2"),
        )
        .expect("unpack");
        let dest = sb.dest();
        // Created as the tar says ...
        assert_eq!(std::fs::read_link(dest.join("abs")).expect("abs"), outside);
        assert_eq!(
            std::fs::read_link(dest.join("up")).expect("up"),
            Path::new("../../../../..")
        );
        // ... and resolved as if the layer were `/` when written through.
        assert_eq!(
            std::fs::read_to_string(dest.join("via-root")).expect("via-root"),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("via-up")).expect("via-up"),
            "2"
        );
        sb.assert_outside_untouched();

        // Through a symlink to a host directory: that path does not exist inside the layer, so it fails.
        let sb = Sandbox::new();
        let err = sb
            .apply(
                LayerTar::new()
                    .symlink("abs", sb.outside().to_str().expect("utf-8"))
                    .file("abs/pwned", "x"),
            )
            .expect_err("write through a symlink to a host dir");
        assert!(
            matches!(&err, UnpackError::Entry { path, .. } if path == "abs/pwned"),
            "{err:?}"
        );
        sb.assert_failed_cleanly();
    }

    #[test]
    fn a_file_over_a_symlink_replaces_the_symlink() {
        let sb = Sandbox::new();
        let secret = sb.outside().join("secret");
        sb.apply(
            LayerTar::new()
                .symlink("abs", secret.to_str().expect("utf-8"))
                .symlink("rel", "../outside/secret")
                .file("abs", "new")
                .file("rel", "new"),
        )
        .expect("unpack");
        for name in ["abs", "rel"] {
            let path = sb.dest().join(name);
            assert!(std::fs::symlink_metadata(&path).expect(name).is_file());
            assert_eq!(std::fs::read_to_string(&path).expect(name), "new");
        }
        sb.assert_outside_untouched();
    }

    #[test]
    fn a_directory_replaces_a_symlink_and_merges_into_a_directory() {
        let sb = Sandbox::new();
        sb.apply(
            LayerTar::new()
                .symlink("d", "../outside")
                .dir("d/", 0o750)
                .file("d/f", "f")
                .dir("e/", 0o755)
                .file("e/one", "1")
                .dir("e/", 0o700),
        )
        .expect("unpack");
        let d = std::fs::symlink_metadata(sb.dest().join("d")).expect("d");
        assert!(d.is_dir());
        assert_eq!(d.mode() & 0o7777, 0o750);
        assert!(
            sb.dest().join("e/one").exists(),
            "a repeated directory keeps its content"
        );
        sb.assert_outside_untouched();
    }

    #[test]
    fn hardlinks_must_name_an_entry_of_the_layer() {
        type Case = (&'static str, fn(&Sandbox) -> LayerTar);
        let cases: [Case; 4] = [
            ("absolute host path", |sb| {
                let secret = sb.outside().join("secret");
                LayerTar::new().hardlink("h", secret.to_str().expect("utf-8"))
            }),
            ("dotdot", |_| {
                LayerTar::new().hardlink("h", "../outside/secret")
            }),
            ("through a symlink", |sb| {
                LayerTar::new()
                    .symlink("d", sb.outside().to_str().expect("utf-8"))
                    .hardlink("h", "d/secret")
            }),
            ("missing", |_| LayerTar::new().hardlink("h", "etc/passwd")),
        ];
        for (what, tar) in cases {
            let sb = Sandbox::new();
            let err = sb.apply(tar(&sb)).expect_err(what);
            assert_eq!(escape_path(err), "h", "{what}");
            sb.assert_failed_cleanly();
        }
    }

    #[test]
    fn whiteouts_naming_dot_or_dotdot_are_escapes() {
        for path in [".wh...", "a/.wh..", ".wh."] {
            let sb = Sandbox::new();
            let err = sb
                .apply(LayerTar::new().file("ok", "x").whiteout(path))
                .expect_err(path);
            assert_eq!(escape_path(err), path);
            sb.assert_failed_cleanly();
        }
    }

    #[test]
    fn devices_are_forbidden() {
        for (kind, words) in [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
        ] {
            let sb = Sandbox::new();
            let err = sb
                .apply(LayerTar::new().file("ok", "x").device("dev/sda", kind))
                .expect_err(words);
            match err {
                UnpackError::Forbidden { path, kind } => {
                    assert_eq!(path, "dev/sda");
                    assert_eq!(kind, words);
                }
                other => panic!("expected forbidden, got {other:?}"),
            }
            sb.assert_failed_cleanly();
        }
    }

    #[test]
    fn whiteouts_and_opaque_dirs_use_the_overlay_format() {
        let sb = Sandbox::new();
        sb.apply(
            LayerTar::new()
                .whiteout("etc/.wh.passwd")
                .dir("opt/", 0o755)
                .whiteout("opt/.wh..wh..opq")
                .file("opt/new", "n")
                .whiteout(".wh..wh.plnk"),
        )
        .expect("unpack");
        let dest = sb.dest();
        let wh = std::fs::symlink_metadata(dest.join("etc/passwd")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        let opaque = xattr::get(dest.join("opt"), inroot::OPAQUE_XATTR).expect("xattr");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        assert!(dest.join("opt/new").exists());
        assert!(
            !dest.join(".wh..wh.plnk").exists(),
            "AUFS metadata is skipped"
        );
        assert_eq!(
            xattr::get(dest.join("etc"), inroot::OPAQUE_XATTR).expect("xattr"),
            None
        );
    }

    #[test]
    fn owners_are_shifted() {
        let sb = Sandbox::new();
        let shift = IdShift {
            base: 100_000,
            size: 65_536,
        };
        let tar = LayerTar::new()
            .file_as("home/user/f", "x", 0o6755, (1000, 50))
            .raw("link", EntryType::Symlink, 0o777, (7, 8), Some("home"), b"")
            .whiteout("gone/.wh.x");
        apply_layer(tar.finish().as_slice(), &sb.dest(), shift, LIMITS).expect("unpack");
        let dest = sb.dest();
        let f = std::fs::metadata(dest.join("home/user/f")).expect("f");
        assert_eq!((f.uid(), f.gid()), (101_000, 100_050));
        assert_eq!(f.mode() & 0o7777, 0o6755, "setuid/setgid survive the chown");
        let link = std::fs::symlink_metadata(dest.join("link")).expect("link");
        assert_eq!(
            (link.uid(), link.gid()),
            (100_007, 100_008),
            "symlinks are lchowned"
        );
        for implied in ["", "home", "home/user", "gone", "gone/x"] {
            let md = std::fs::symlink_metadata(dest.join(implied)).expect(implied);
            assert_eq!((md.uid(), md.gid()), (100_000, 100_000), "{implied:?}");
        }
    }

    #[test]
    fn ids_outside_the_mapping_are_refused() {
        let sb = Sandbox::new();
        let shift = IdShift {
            base: 100_000,
            size: 65_536,
        };
        let tar = LayerTar::new()
            .file("ok", "x")
            .file_as("f", "x", 0o644, (0, 65_536));
        let err = apply_layer(tar.finish().as_slice(), &sb.dest(), shift, LIMITS).expect_err("gid");
        assert!(
            matches!(err, UnpackError::UnmappedId { ref path, which: "gid", id: 65_536, size: 65_536 } if path == "f"),
            "{err:?}"
        );
        sb.assert_failed_cleanly();
    }

    #[test]
    fn limits_are_enforced() {
        let sb = Sandbox::new();
        let small = UnpackLimits {
            max_bytes: 10,
            max_entries: 10,
        };
        let tar = LayerTar::new().file("a", "12345").file("b", "123456");
        let err =
            apply_layer(tar.finish().as_slice(), &sb.dest(), NO_SHIFT, small).expect_err("bytes");
        assert!(matches!(err, UnpackError::TooLarge(_)), "{err:?}");
        sb.assert_failed_cleanly();

        let few = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 2,
        };
        let tar = LayerTar::new()
            .dir("a/", 0o755)
            .dir("b/", 0o755)
            .dir("c/", 0o755);
        let err =
            apply_layer(tar.finish().as_slice(), &sb.dest(), NO_SHIFT, few).expect_err("entries");
        assert!(matches!(err, UnpackError::TooLarge(_)), "{err:?}");
        sb.assert_failed_cleanly();

        // Exactly at the limits is fine.
        let tar = LayerTar::new().file("a", "12345").file("b", "12345");
        let stats =
            apply_layer(tar.finish().as_slice(), &sb.dest(), NO_SHIFT, small).expect("at limit");
        assert_eq!(stats.bytes, 10);
    }

    #[test]
    fn long_gnu_and_pax_names_work() {
        let sb = Sandbox::new();
        let long = format!("{}/file", "d".repeat(150));
        let target = format!("{}/target", "t".repeat(150));
        let pax = format!("{}/pax", "p".repeat(120));
        sb.apply(
            LayerTar::new()
                .long_file(&long, "gnu")
                .long_symlink("link", &target)
                .pax_file(&pax, "short", "pax"),
        )
        .expect("unpack");
        let dest = sb.dest();
        assert_eq!(
            std::fs::read_to_string(dest.join(&long)).expect("long"),
            "gnu"
        );
        assert_eq!(
            std::fs::read_link(dest.join("link")).expect("link"),
            Path::new(&target)
        );
        assert_eq!(
            std::fs::read_to_string(dest.join(&pax)).expect("pax"),
            "pax"
        );
        assert!(!dest.join("short").exists());
    }

    #[test]
    fn directories_listed_after_their_content_keep_their_mode_and_time() {
        let sb = Sandbox::new();
        sb.apply(
            LayerTar::new()
                .file("d/f", "x")
                .dir("d/", 0o700)
                .dir("ro/", 0o555)
                .file("ro/f", "y"),
        )
        .expect("unpack");
        for (dir, mode) in [("d", 0o700), ("ro", 0o555)] {
            let md = std::fs::metadata(sb.dest().join(dir)).expect(dir);
            assert_eq!(md.mode() & 0o7777, mode, "{dir}");
            assert_eq!(md.mtime(), MTIME as i64, "{dir}");
        }
        assert!(sb.dest().join("ro/f").exists());
    }

    #[test]
    fn dest_must_exist_and_be_empty() {
        let sb = Sandbox::new();
        std::fs::write(sb.dest().join("old"), "x").expect("old");
        let err = sb
            .apply(LayerTar::new().file("a", "x"))
            .expect_err("not empty");
        assert!(matches!(err, UnpackError::Dest { .. }), "{err:?}");
        assert!(
            sb.dest().join("old").exists(),
            "a refused dest is left alone"
        );
        let missing = sb.tmp.path().join("missing");
        let err = apply_layer(
            LayerTar::new().finish().as_slice(),
            &missing,
            NO_SHIFT,
            LIMITS,
        )
        .expect_err("missing");
        assert!(matches!(err, UnpackError::Dest { .. }), "{err:?}");
    }

    #[test]
    fn the_whole_stream_is_read_for_the_callers_hash() {
        struct Counting<'a> {
            data: &'a [u8],
            read: usize,
        }
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.data[self.read..].len().min(buf.len());
                buf[..n].copy_from_slice(&self.data[self.read..self.read + n]);
                self.read += n;
                Ok(n)
            }
        }
        let sb = Sandbox::new();
        let mut tar = LayerTar::new().file("a", "x").finish();
        // Tar writers pad to a record size; the hash covers the padding.
        tar.resize(10_240 * 2, 0);
        let mut reader = Counting {
            data: &tar,
            read: 0,
        };
        apply_layer(&mut reader, &sb.dest(), NO_SHIFT, LIMITS).expect("unpack");
        assert_eq!(reader.read, tar.len());
    }

    #[test]
    fn a_truncated_stream_is_corrupt() {
        let sb = Sandbox::new();
        let tar = LayerTar::new().file("a", &"x".repeat(2000)).finish();
        let err = apply_layer(&tar[..1024], &sb.dest(), NO_SHIFT, LIMITS).expect_err("truncated");
        assert!(matches!(err, UnpackError::Corrupt(_)), "{err:?}");
        sb.assert_failed_cleanly();
    }
}
