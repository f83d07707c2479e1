//! The guest's filesystem: Bacalhau's mount table, exposed as the single WASI preopen `/`.
//!
//! Bacalhau (wazero) gives a wasm task one filesystem as its WASI root: each input is mounted at
//! its `Target` (a directory read-only, a file input as that single file), each result folder is
//! mounted writable at `/<Name>`. Guests address `inputs/x.csv` or `/inputs/x.csv`; wasi-libc and
//! Go strip the leading `/` and resolve both against the preopen named `/`. We do the same:
//! [`MountDir`] is a virtual directory tree made only of mount points, and a path that enters a
//! mount is handed to that mount's own cap-std directory, which keeps the guest inside it
//! (symlinks included). One preopen also means `ls /` lists the mounts, as on Bacalhau.
//!
//! A file input is served from a cap-std handle on its parent directory, filtered to that one name:
//! the guest can open, stat and read it, nothing else in that directory is reachable.
//!
//! Must never: let a guest change a read-only input (every mutating call fails with `EROFS`, as on
//! wazero's read-only filesystem, and files are opened without write access), or reach a host path
//! outside the mounts.
//!
//! Paths are normalized lexically before the mount lookup (`a/../b` is `b`), so `..` never leaves
//! the root and may walk from one mount to another through the virtual tree; this differs from
//! POSIX only when the component before `..` is a symlink. Inside a mount cap-std applies its own
//! rules.

use std::any::Any;
use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use wasmi_wasi::wasi_common::dir::{OpenResult, ReaddirCursor, ReaddirEntity};
use wasmi_wasi::wasi_common::file::{Advice, FdFlags, FileType, Filestat, OFlags};
use wasmi_wasi::wasi_common::snapshots::preview_1::types::Errno;
use wasmi_wasi::wasi_common::sync::dir::Dir as SyncDir;
use wasmi_wasi::wasi_common::sync::{Dir as CapDir, ambient_authority};
use wasmi_wasi::wasi_common::{Error, ErrorExt, SystemTimeSpec, WasiDir, WasiFile};

use crate::executor::{OutputDir, PreparedInput};

/// A mount could not be set up from the prepared inputs and result folders.
#[derive(Debug, thiserror::Error)]
pub(super) enum MountError {
    /// An input target is not a usable guest path.
    #[error("input target {target:?} must be a path below / without `..`")]
    BadTarget {
        /// The target as given.
        target: String,
    },
    /// A result name is not a usable guest path.
    #[error("result path name {name:?} cannot be mounted at /{name}")]
    BadOutputName {
        /// The name as given.
        name: String,
    },
    /// Two mounts claim the same guest path.
    #[error("/{guest} is mounted twice (input targets and result names must differ)")]
    Duplicate {
        /// The guest path, without its leading `/`.
        guest: String,
    },
    /// The host side of a mount could not be opened.
    #[error("cannot open {host} for the mount at /{guest}")]
    Open {
        /// The guest path, without its leading `/`.
        guest: String,
        /// The host path.
        host: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A module could not be read out of the mount table.
#[derive(Debug, thiserror::Error)]
pub(super) enum ModuleReadError {
    /// No mount covers the path.
    #[error("no input is mounted at {path}")]
    NotMounted {
        /// The guest path.
        path: String,
    },
    /// The path is inside a mount but could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The guest path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path is a directory, and not one holding exactly one `.wasm` file.
    #[error("{path} is a directory with {} .wasm files ({}); name the module to run", found.len(), found.join(", "))]
    NotOneWasm {
        /// The guest path.
        path: String,
        /// The `.wasm` files found there.
        found: Vec<String>,
    },
}

/// Every mount of one run, keyed by guest path components.
pub(super) struct MountTable {
    /// Unordered; lookups take the longest matching prefix, so a nested target shadows its parent.
    mounts: Vec<Mount>,
}

/// One mount point.
struct Mount {
    /// Guest path components (`["inputs"]` for `/inputs`); never empty.
    at: Vec<String>,
    /// What is mounted there.
    kind: MountKind,
}

/// The host side of a mount.
enum MountKind {
    /// A host directory.
    Dir {
        /// For host-side reads of modules (cap-std keeps them inside the directory too).
        host: CapDir,
        /// What the guest talks to: the cap-std WASI directory, wrapped in [`ReadOnlyDir`] unless
        /// the input is writable.
        guest: Box<dyn WasiDir>,
    },
    /// A single host file, reached through its parent directory.
    File {
        /// The parent directory, for host-side reads of modules.
        host_parent: CapDir,
        /// The parent directory as a WASI directory; only `name` is ever looked up in it.
        guest_parent: SyncDir,
        /// The file's name in `host_parent`.
        name: String,
        /// Whether the guest may write to it (a `local` input with `ReadWrite`).
        writable: bool,
    },
}

/// Where a guest path leads.
enum Resolved<'a> {
    /// Into (or onto) a mount.
    Mount {
        /// Its index in the table: two paths are on the same mount when the indexes match.
        index: usize,
        /// The mount.
        mount: &'a Mount,
        /// The rest of the path inside the mount, `.` for the mount point itself.
        rest: String,
        /// The path ended in `/`, so it must name a directory.
        dir_only: bool,
    },
    /// A directory of the mount table itself: the root, or a parent of a nested target.
    Virtual(Vec<String>),
    /// Nothing; `parent_virtual` says whether its parent is a virtual directory (creating there is
    /// refused as read-only rather than reported as a missing parent).
    Missing {
        /// The parent is a virtual directory.
        parent_virtual: bool,
    },
}

// === impl MountTable ===

impl MountTable {
    /// Opens every input and result folder of a run.
    pub(super) fn new(inputs: &[PreparedInput], outputs: &[OutputDir]) -> Result<Self, MountError> {
        let mut table = MountTable {
            mounts: Vec::with_capacity(inputs.len() + outputs.len()),
        };
        for input in inputs {
            let at = guest_components(&input.target).ok_or_else(|| MountError::BadTarget {
                target: input.target.clone(),
            })?;
            let kind = open_input(input, &at)?;
            table.push(Mount { at, kind })?;
        }
        for output in outputs {
            // Bacalhau mounts a result folder at `/<Name>`, not at its `Path`.
            let at = guest_components(&output.name).ok_or_else(|| MountError::BadOutputName {
                name: output.name.clone(),
            })?;
            let host = open_dir(&output.host_dir, &at)?;
            let guest = Box::new(SyncDir::from_cap_std(try_clone(
                &host,
                &output.host_dir,
                &at,
            )?));
            table.push(Mount {
                at,
                kind: MountKind::Dir { host, guest },
            })?;
        }
        Ok(table)
    }

    fn push(&mut self, mount: Mount) -> Result<(), MountError> {
        if self.mounts.iter().any(|m| m.at == mount.at) {
            return Err(MountError::Duplicate {
                guest: mount.at.join("/"),
            });
        }
        self.mounts.push(mount);
        Ok(())
    }

    /// Resolves `path`, relative to the virtual directory `base`.
    fn resolve(&self, base: &[String], path: &str) -> Result<Resolved<'_>, Error> {
        if path.is_empty() {
            return Err(Error::not_found());
        }
        if path.starts_with('/') {
            // WASI paths are relative to a directory fd; wasi-libc strips the `/` before calling.
            return Err(Errno::Notcapable.into());
        }
        let mut full = base.to_vec();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    full.pop();
                }
                name => full.push(name.to_owned()),
            }
        }
        let best = self
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| full.starts_with(&m.at))
            .max_by_key(|(_, m)| m.at.len());
        if let Some((index, mount)) = best {
            let inside = &full[mount.at.len()..];
            let dir_only = path.ends_with('/');
            let mut rest = if inside.is_empty() {
                ".".to_owned()
            } else {
                inside.join("/")
            };
            if dir_only && !inside.is_empty() {
                rest.push('/');
            }
            return Ok(Resolved::Mount {
                index,
                mount,
                rest,
                dir_only,
            });
        }
        if self.is_virtual(&full) {
            return Ok(Resolved::Virtual(full));
        }
        let parent_virtual = match full.split_last() {
            Some((_, parent)) => self.is_virtual(parent),
            None => true,
        };
        Ok(Resolved::Missing { parent_virtual })
    }

    /// Whether `at` is a directory of the table itself: the root or a strict parent of a mount.
    fn is_virtual(&self, at: &[String]) -> bool {
        at.is_empty()
            || self
                .mounts
                .iter()
                .any(|m| m.at.len() > at.len() && m.at.starts_with(at))
    }

    /// Reads the module at guest path `path` (absolute or relative to `/`). A directory stands
    /// for the single `.wasm` file in it, as on Bacalhau.
    pub(super) fn read_module(&self, path: &str) -> Result<Vec<u8>, ModuleReadError> {
        let relative = path.trim_start_matches('/');
        // Messages name the path as the guest sees it, whichever way the spec wrote it.
        let path = format!("/{relative}");
        let not_mounted = || ModuleReadError::NotMounted { path: path.clone() };
        let io_err = |source| ModuleReadError::Io {
            path: path.clone(),
            source,
        };
        let resolved = if relative.is_empty() {
            return Err(not_mounted());
        } else {
            self.resolve(&[], relative).map_err(|_| not_mounted())?
        };
        match resolved {
            Resolved::Mount { mount, rest, .. } => match &mount.kind {
                MountKind::Dir { host, .. } => {
                    if !host.metadata(&rest).map_err(io_err)?.is_dir() {
                        return host.read(&rest).map_err(io_err);
                    }
                    let dir = host.open_dir(&rest).map_err(io_err)?;
                    let mut found = Vec::new();
                    for entry in dir.entries().map_err(io_err)? {
                        let entry = entry.map_err(io_err)?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.ends_with(".wasm") && !entry.file_type().map_err(io_err)?.is_dir() {
                            found.push(name);
                        }
                    }
                    match found.as_slice() {
                        [one] => dir.read(one).map_err(io_err),
                        _ => {
                            found.sort();
                            Err(ModuleReadError::NotOneWasm { path, found })
                        }
                    }
                }
                MountKind::File {
                    host_parent, name, ..
                } => {
                    if rest != "." {
                        return Err(io_err(io::Error::from(io::ErrorKind::NotADirectory)));
                    }
                    host_parent.read(name).map_err(io_err)
                }
            },
            Resolved::Virtual(_) => Err(ModuleReadError::NotOneWasm {
                path,
                found: Vec::new(),
            }),
            Resolved::Missing { .. } => Err(not_mounted()),
        }
    }
}

/// Splits a guest path into components; `None` for the root itself or a path with `..`.
fn guest_components(path: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = path
        .trim()
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_owned)
        .collect();
    let bad = parts.is_empty() || parts.iter().any(|p| p == "..");
    (!bad).then_some(parts)
}

fn open_input(input: &PreparedInput, at: &[String]) -> Result<MountKind, MountError> {
    let open_err = |source| MountError::Open {
        guest: at.join("/"),
        host: input.host_path.clone(),
        source,
    };
    let meta = std::fs::metadata(&input.host_path).map_err(open_err)?;
    if meta.is_dir() {
        let host = open_dir(&input.host_path, at)?;
        let dir = SyncDir::from_cap_std(try_clone(&host, &input.host_path, at)?);
        let guest: Box<dyn WasiDir> = if input.read_only {
            Box::new(ReadOnlyDir(Box::new(dir)))
        } else {
            Box::new(dir)
        };
        return Ok(MountKind::Dir { host, guest });
    }
    // The input may itself be a symlink (a `local` source); its target's parent is what we open.
    let real = std::fs::canonicalize(&input.host_path).map_err(open_err)?;
    let (Some(parent), Some(name)) = (real.parent(), real.file_name().and_then(|n| n.to_str()))
    else {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the file has no parent directory or its name is not UTF-8",
        )));
    };
    let host_parent = open_dir(parent, at)?;
    let guest_parent = SyncDir::from_cap_std(try_clone(&host_parent, parent, at)?);
    Ok(MountKind::File {
        host_parent,
        guest_parent,
        name: name.to_owned(),
        writable: !input.read_only,
    })
}

fn open_dir(host: &Path, at: &[String]) -> Result<CapDir, MountError> {
    CapDir::open_ambient_dir(host, ambient_authority()).map_err(|source| MountError::Open {
        guest: at.join("/"),
        host: host.to_owned(),
        source,
    })
}

fn try_clone(dir: &CapDir, host: &Path, at: &[String]) -> Result<CapDir, MountError> {
    dir.try_clone().map_err(|source| MountError::Open {
        guest: at.join("/"),
        host: host.to_owned(),
        source,
    })
}

/// The error for any change to something read-only; wazero's read-only filesystem uses it too.
fn read_only() -> Error {
    Errno::Rofs.into()
}

/// A stable inode number for a virtual directory.
fn virtual_inode(at: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    at.hash(&mut h);
    h.finish()
}

// === impl Mount ===

impl Mount {
    fn file_type(&self) -> FileType {
        match self.kind {
            MountKind::Dir { .. } => FileType::Directory,
            MountKind::File { .. } => FileType::RegularFile,
        }
    }

    /// The guest directory of a directory mount, when `rest` is strictly inside it.
    fn dir_inside(&self, rest: &str) -> Option<&dyn WasiDir> {
        match &self.kind {
            MountKind::Dir { guest, .. } if rest != "." => Some(guest.as_ref()),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)] // mirrors `WasiDir::open_file`
    async fn open(
        &self,
        symlink_follow: bool,
        rest: &str,
        dir_only: bool,
        oflags: OFlags,
        read: bool,
        write: bool,
        fdflags: FdFlags,
    ) -> Result<OpenResult, Error> {
        match &self.kind {
            MountKind::Dir { guest, .. } => {
                guest
                    .open_file(symlink_follow, rest, oflags, read, write, fdflags)
                    .await
            }
            MountKind::File {
                guest_parent,
                name,
                writable,
                ..
            } => {
                if rest != "." || dir_only || oflags.contains(OFlags::DIRECTORY) {
                    return Err(Error::not_dir());
                }
                if oflags.contains(OFlags::CREATE | OFlags::EXCLUSIVE) {
                    return Err(Error::exist());
                }
                let mutating = write
                    || oflags.intersects(OFlags::CREATE | OFlags::TRUNCATE)
                    || fdflags.contains(FdFlags::APPEND);
                if !writable && mutating {
                    return Err(read_only());
                }
                let opened = guest_parent
                    .open_file(symlink_follow, name, oflags, read, write, fdflags)
                    .await?;
                match opened {
                    OpenResult::File(f) if !writable => {
                        Ok(OpenResult::File(Box::new(ReadOnlyFile(f))))
                    }
                    other => Ok(other),
                }
            }
        }
    }
}

/// A directory of the mount table (the root, or a parent of a nested target). Everything below a
/// mount point belongs to the mount's own directory type.
pub(super) struct MountDir {
    /// The whole table, shared by every directory of it the guest opens.
    table: Arc<MountTable>,
    /// Which virtual directory this is; always one for which [`MountTable::is_virtual`] holds.
    at: Vec<String>,
}

// === impl MountDir ===

impl MountDir {
    /// The root directory `/`, to be preopened under that name.
    pub(super) fn root(table: Arc<MountTable>) -> Self {
        MountDir {
            table,
            at: Vec::new(),
        }
    }

    fn resolve(&self, path: &str) -> Result<Resolved<'_>, Error> {
        self.table.resolve(&self.at, path)
    }
}

fn virtual_stat(at: &[String]) -> Filestat {
    Filestat {
        device_id: 0,
        inode: virtual_inode(at),
        filetype: FileType::Directory,
        nlink: 1,
        size: 0,
        atim: None,
        mtim: None,
        ctim: None,
    }
}

#[async_trait]
impl WasiDir for MountDir {
    fn as_any(&self) -> &dyn Any {
        self
    }

    async fn open_file(
        &self,
        symlink_follow: bool,
        path: &str,
        oflags: OFlags,
        read: bool,
        write: bool,
        fdflags: FdFlags,
    ) -> Result<OpenResult, Error> {
        match self.resolve(path)? {
            Resolved::Mount {
                mount,
                rest,
                dir_only,
                ..
            } => {
                mount
                    .open(
                        symlink_follow,
                        &rest,
                        dir_only,
                        oflags,
                        read,
                        write,
                        fdflags,
                    )
                    .await
            }
            Resolved::Virtual(at) => {
                if oflags.contains(OFlags::CREATE | OFlags::EXCLUSIVE) {
                    Err(Error::exist())
                } else if write || oflags.contains(OFlags::TRUNCATE) {
                    Err(Errno::Isdir.into())
                } else {
                    Ok(OpenResult::Dir(Box::new(MountDir {
                        table: Arc::clone(&self.table),
                        at,
                    })))
                }
            }
            Resolved::Missing { parent_virtual } => {
                if parent_virtual && oflags.contains(OFlags::CREATE) {
                    Err(read_only())
                } else {
                    Err(Error::not_found())
                }
            }
        }
    }

    async fn create_dir(&self, path: &str) -> Result<(), Error> {
        match self.resolve(path)? {
            Resolved::Mount { mount, rest, .. } => match mount.dir_inside(&rest) {
                Some(dir) => dir.create_dir(&rest).await,
                None => Err(Error::exist()),
            },
            Resolved::Virtual(_) => Err(Error::exist()),
            Resolved::Missing {
                parent_virtual: true,
            } => Err(read_only()),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }

    async fn readdir(
        &self,
        cursor: ReaddirCursor,
    ) -> Result<Box<dyn Iterator<Item = Result<ReaddirEntity, Error>> + Send>, Error> {
        let depth = self.at.len();
        // A mount exactly at a child name decides its type; otherwise the child is a virtual dir.
        let mut children: BTreeMap<&str, (FileType, u64)> = BTreeMap::new();
        for mount in &self.table.mounts {
            if mount.at.len() <= depth || !mount.at.starts_with(&self.at) {
                continue;
            }
            let name = mount.at[depth].as_str();
            if mount.at.len() == depth + 1 {
                children.insert(name, (mount.file_type(), virtual_inode(&mount.at)));
            } else {
                children
                    .entry(name)
                    .or_insert((FileType::Directory, virtual_inode(&mount.at[..=depth])));
            }
        }
        let here = virtual_inode(&self.at);
        let parent = virtual_inode(&self.at[..depth.saturating_sub(1)]);
        let entries: Vec<(String, FileType, u64)> = [
            (".".to_owned(), FileType::Directory, here),
            ("..".to_owned(), FileType::Directory, parent),
        ]
        .into_iter()
        .chain(
            children
                .into_iter()
                .map(|(name, (ft, inode))| (name.to_owned(), ft, inode)),
        )
        .collect();
        let skip = usize::try_from(u64::from(cursor)).unwrap_or(usize::MAX);
        let iter =
            entries
                .into_iter()
                .enumerate()
                .skip(skip)
                .map(|(ix, (name, filetype, inode))| {
                    Ok(ReaddirEntity {
                        next: ReaddirCursor::from(ix as u64 + 1),
                        inode,
                        name,
                        filetype,
                    })
                });
        Ok(Box::new(iter))
    }

    async fn symlink(&self, old_path: &str, new_path: &str) -> Result<(), Error> {
        match self.resolve(new_path)? {
            Resolved::Mount { mount, rest, .. } => match mount.dir_inside(&rest) {
                Some(dir) => dir.symlink(old_path, &rest).await,
                None => Err(Error::exist()),
            },
            Resolved::Virtual(_) => Err(Error::exist()),
            Resolved::Missing {
                parent_virtual: true,
            } => Err(read_only()),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }

    async fn remove_dir(&self, path: &str) -> Result<(), Error> {
        match self.resolve(path)? {
            Resolved::Mount { mount, rest, .. } => match (mount.dir_inside(&rest), &mount.kind) {
                (Some(dir), _) => dir.remove_dir(&rest).await,
                (None, MountKind::File { .. }) => Err(Error::not_dir()),
                (None, MountKind::Dir { .. }) => Err(Errno::Busy.into()),
            },
            Resolved::Virtual(_) => Err(read_only()),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }

    async fn unlink_file(&self, path: &str) -> Result<(), Error> {
        match self.resolve(path)? {
            Resolved::Mount { mount, rest, .. } => match (mount.dir_inside(&rest), &mount.kind) {
                (Some(dir), _) => dir.unlink_file(&rest).await,
                (None, MountKind::File { .. }) => Err(Errno::Busy.into()),
                (None, MountKind::Dir { .. }) => Err(Errno::Isdir.into()),
            },
            Resolved::Virtual(_) => Err(Errno::Isdir.into()),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }

    async fn read_link(&self, path: &str) -> Result<PathBuf, Error> {
        match self.resolve(path)? {
            Resolved::Mount { mount, rest, .. } => match mount.dir_inside(&rest) {
                Some(dir) => dir.read_link(&rest).await,
                None => Err(Error::invalid_argument()),
            },
            Resolved::Virtual(_) => Err(Error::invalid_argument()),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }

    async fn get_filestat(&self) -> Result<Filestat, Error> {
        Ok(virtual_stat(&self.at))
    }

    async fn get_path_filestat(
        &self,
        path: &str,
        follow_symlinks: bool,
    ) -> Result<Filestat, Error> {
        match self.resolve(path)? {
            Resolved::Mount {
                mount,
                rest,
                dir_only,
                ..
            } => match &mount.kind {
                MountKind::Dir { guest, .. } => {
                    guest.get_path_filestat(&rest, follow_symlinks).await
                }
                MountKind::File {
                    guest_parent, name, ..
                } => {
                    if rest != "." || dir_only {
                        return Err(Error::not_dir());
                    }
                    guest_parent.get_path_filestat(name, follow_symlinks).await
                }
            },
            Resolved::Virtual(at) => Ok(virtual_stat(&at)),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }

    async fn rename(
        &self,
        path: &str,
        dest_dir: &dyn WasiDir,
        dest_path: &str,
    ) -> Result<(), Error> {
        let Some(dest) = dest_dir.as_any().downcast_ref::<MountDir>() else {
            // The destination is a directory the guest opened inside a mount; only that mount's
            // own directory type can rename into it.
            let (_, dir, from) = movable(self.resolve(path)?)?;
            return dir.rename(&from, dest_dir, dest_path).await;
        };
        let (dir, from, to) = same_mount_dir(self.resolve(path)?, dest.resolve(dest_path)?)?;
        dir.rename(&from, dir, &to).await
    }

    async fn hard_link(
        &self,
        path: &str,
        target_dir: &dyn WasiDir,
        target_path: &str,
    ) -> Result<(), Error> {
        let Some(dest) = target_dir.as_any().downcast_ref::<MountDir>() else {
            let (_, dir, from) = movable(self.resolve(path)?)?;
            return dir.hard_link(&from, target_dir, target_path).await;
        };
        let (dir, from, to) = same_mount_dir(self.resolve(path)?, dest.resolve(target_path)?)?;
        dir.hard_link(&from, dir, &to).await
    }

    async fn set_times(
        &self,
        path: &str,
        atime: Option<SystemTimeSpec>,
        mtime: Option<SystemTimeSpec>,
        follow_symlinks: bool,
    ) -> Result<(), Error> {
        match self.resolve(path)? {
            Resolved::Mount { mount, rest, .. } => match &mount.kind {
                MountKind::Dir { guest, .. } => {
                    guest.set_times(&rest, atime, mtime, follow_symlinks).await
                }
                MountKind::File {
                    guest_parent,
                    name,
                    writable: true,
                    ..
                } if rest == "." => {
                    guest_parent
                        .set_times(name, atime, mtime, follow_symlinks)
                        .await
                }
                MountKind::File { .. } => Err(read_only()),
            },
            Resolved::Virtual(_) => Err(read_only()),
            Resolved::Missing { .. } => Err(Error::not_found()),
        }
    }
}

/// The source of a rename or link: the directory mount `from` leads strictly inside, its index,
/// and the path inside it. Mount points, file inputs and virtual directories are not the guest's
/// to move.
fn movable(from: Resolved<'_>) -> Result<(usize, &dyn WasiDir, String), Error> {
    match from {
        Resolved::Missing { .. } => Err(Error::not_found()),
        Resolved::Virtual(_) => Err(Errno::Busy.into()),
        Resolved::Mount {
            index, mount, rest, ..
        } => match mount.dir_inside(&rest) {
            Some(dir) => Ok((index, dir, rest)),
            None => Err(Errno::Busy.into()),
        },
    }
}

/// For a rename or link between two paths of the table: the one directory mount holding both,
/// with both paths inside it. Moving between mounts is `EXDEV`, as between file systems.
fn same_mount_dir<'a>(
    from: Resolved<'a>,
    to: Resolved<'a>,
) -> Result<(&'a dyn WasiDir, String, String), Error> {
    let (index, dir, from) = movable(from)?;
    match to {
        Resolved::Mount {
            index: same, rest, ..
        } if same == index => {
            if rest == "." {
                Err(Errno::Busy.into())
            } else {
                Ok((dir, from, rest))
            }
        }
        Resolved::Mount { .. } | Resolved::Virtual(_) => Err(Errno::Xdev.into()),
        Resolved::Missing {
            parent_virtual: true,
        } => Err(read_only()),
        Resolved::Missing { .. } => Err(Error::not_found()),
    }
}

/// A read-only view of a WASI directory: lookups and reads pass through, every change is `EROFS`,
/// and what it opens is read-only too.
pub(super) struct ReadOnlyDir(pub(super) Box<dyn WasiDir>);

#[async_trait]
impl WasiDir for ReadOnlyDir {
    fn as_any(&self) -> &dyn Any {
        self
    }

    async fn open_file(
        &self,
        symlink_follow: bool,
        path: &str,
        oflags: OFlags,
        read: bool,
        write: bool,
        fdflags: FdFlags,
    ) -> Result<OpenResult, Error> {
        let mutating = write
            || oflags.intersects(OFlags::CREATE | OFlags::EXCLUSIVE | OFlags::TRUNCATE)
            || fdflags.contains(FdFlags::APPEND);
        if mutating {
            return Err(read_only());
        }
        match self
            .0
            .open_file(symlink_follow, path, oflags, read, false, fdflags)
            .await?
        {
            OpenResult::File(f) => Ok(OpenResult::File(Box::new(ReadOnlyFile(f)))),
            OpenResult::Dir(d) => Ok(OpenResult::Dir(Box::new(ReadOnlyDir(d)))),
        }
    }

    async fn create_dir(&self, _path: &str) -> Result<(), Error> {
        Err(read_only())
    }

    async fn readdir(
        &self,
        cursor: ReaddirCursor,
    ) -> Result<Box<dyn Iterator<Item = Result<ReaddirEntity, Error>> + Send>, Error> {
        self.0.readdir(cursor).await
    }

    async fn symlink(&self, _old_path: &str, _new_path: &str) -> Result<(), Error> {
        Err(read_only())
    }

    async fn remove_dir(&self, _path: &str) -> Result<(), Error> {
        Err(read_only())
    }

    async fn unlink_file(&self, _path: &str) -> Result<(), Error> {
        Err(read_only())
    }

    async fn read_link(&self, path: &str) -> Result<PathBuf, Error> {
        self.0.read_link(path).await
    }

    async fn get_filestat(&self) -> Result<Filestat, Error> {
        self.0.get_filestat().await
    }

    async fn get_path_filestat(
        &self,
        path: &str,
        follow_symlinks: bool,
    ) -> Result<Filestat, Error> {
        self.0.get_path_filestat(path, follow_symlinks).await
    }

    async fn rename(
        &self,
        _path: &str,
        _dest: &dyn WasiDir,
        _dest_path: &str,
    ) -> Result<(), Error> {
        Err(read_only())
    }

    async fn hard_link(
        &self,
        _path: &str,
        _dest: &dyn WasiDir,
        _dest_path: &str,
    ) -> Result<(), Error> {
        Err(read_only())
    }

    async fn set_times(
        &self,
        _path: &str,
        _atime: Option<SystemTimeSpec>,
        _mtime: Option<SystemTimeSpec>,
        _follow_symlinks: bool,
    ) -> Result<(), Error> {
        Err(read_only())
    }
}

/// A file opened from a read-only input. The host descriptor is already read-only, but a
/// read-only descriptor still lets its owner change timestamps, so those calls are refused here.
pub(super) struct ReadOnlyFile(pub(super) Box<dyn WasiFile>);

#[async_trait]
impl WasiFile for ReadOnlyFile {
    fn as_any(&self) -> &dyn Any {
        self
    }

    async fn get_filetype(&self) -> Result<FileType, Error> {
        self.0.get_filetype().await
    }

    fn pollable(&self) -> Option<BorrowedFd<'_>> {
        self.0.pollable()
    }

    fn isatty(&self) -> bool {
        self.0.isatty()
    }

    async fn datasync(&self) -> Result<(), Error> {
        self.0.datasync().await
    }

    async fn sync(&self) -> Result<(), Error> {
        self.0.sync().await
    }

    async fn get_fdflags(&self) -> Result<FdFlags, Error> {
        self.0.get_fdflags().await
    }

    async fn set_fdflags(&mut self, flags: FdFlags) -> Result<(), Error> {
        if flags.contains(FdFlags::APPEND) {
            return Err(read_only());
        }
        self.0.set_fdflags(flags).await
    }

    async fn get_filestat(&self) -> Result<Filestat, Error> {
        self.0.get_filestat().await
    }

    async fn set_filestat_size(&self, _size: u64) -> Result<(), Error> {
        Err(read_only())
    }

    async fn advise(&self, offset: u64, len: u64, advice: Advice) -> Result<(), Error> {
        self.0.advise(offset, len, advice).await
    }

    async fn set_times(
        &self,
        _atime: Option<SystemTimeSpec>,
        _mtime: Option<SystemTimeSpec>,
    ) -> Result<(), Error> {
        Err(read_only())
    }

    async fn read_vectored<'a>(&self, bufs: &mut [io::IoSliceMut<'a>]) -> Result<u64, Error> {
        self.0.read_vectored(bufs).await
    }

    async fn read_vectored_at<'a>(
        &self,
        bufs: &mut [io::IoSliceMut<'a>],
        offset: u64,
    ) -> Result<u64, Error> {
        self.0.read_vectored_at(bufs, offset).await
    }

    async fn write_vectored<'a>(&self, _bufs: &[io::IoSlice<'a>]) -> Result<u64, Error> {
        Err(read_only())
    }

    async fn write_vectored_at<'a>(
        &self,
        _bufs: &[io::IoSlice<'a>],
        _offset: u64,
    ) -> Result<u64, Error> {
        Err(read_only())
    }

    async fn seek(&self, pos: io::SeekFrom) -> Result<u64, Error> {
        self.0.seek(pos).await
    }

    async fn peek(&self, buf: &mut [u8]) -> Result<u64, Error> {
        self.0.peek(buf).await
    }

    fn num_ready_bytes(&self) -> Result<u64, Error> {
        self.0.num_ready_bytes()
    }

    async fn readable(&self) -> Result<(), Error> {
        self.0.readable().await
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;

    /// `/inputs` (read-only, holding `x.csv`) and `/outputs` (writable), in a temp dir.
    fn table() -> (tempfile::TempDir, MountDir) {
        let dir = tempfile::tempdir().unwrap();
        let inputs = dir.path().join("in");
        let outputs = dir.path().join("out");
        std::fs::create_dir_all(&inputs).unwrap();
        std::fs::create_dir_all(&outputs).unwrap();
        std::fs::write(inputs.join("x.csv"), "data").unwrap();
        let table = MountTable::new(
            &[PreparedInput {
                target: "/inputs".into(),
                host_path: inputs,
                read_only: true,
            }],
            &[OutputDir {
                name: "outputs".into(),
                path: "/outputs".into(),
                host_dir: outputs,
            }],
        )
        .unwrap();
        (dir, MountDir::root(Arc::new(table)))
    }

    fn errno(result: Result<(), Error>) -> Errno {
        result.unwrap_err().downcast().unwrap()
    }

    #[test]
    fn paths_resolve_lexically_and_never_above_the_root() {
        let (_dir, root) = table();
        let at = |path| match root.resolve(path).unwrap() {
            Resolved::Mount { mount, rest, .. } => format!("{}:{rest}", mount.at.join("/")),
            Resolved::Virtual(at) => format!("virtual:/{}", at.join("/")),
            Resolved::Missing { parent_virtual } => format!("missing:{parent_virtual}"),
        };
        assert_eq!(at("inputs/x.csv"), "inputs:x.csv");
        assert_eq!(at("./inputs/sub/../x.csv"), "inputs:x.csv");
        assert_eq!(at("../../inputs"), "inputs:.");
        assert_eq!(at("inputs/../outputs/y"), "outputs:y");
        assert_eq!(at(".."), "virtual:/");
        assert_eq!(at("nothing/here"), "missing:false");
        assert_eq!(at("nothing"), "missing:true");
        assert!(
            root.resolve("/inputs").is_err(),
            "absolute paths are not capabilities"
        );
    }

    #[test]
    fn renames_stay_inside_one_writable_mount() {
        let (dir, root) = table();
        std::fs::write(dir.path().join("out/a"), "a").unwrap();
        block_on(root.rename("outputs/a", &root, "outputs/b")).unwrap();
        assert!(dir.path().join("out/b").exists());

        let to_input = block_on(root.rename("outputs/b", &root, "inputs/b"));
        assert_eq!(errno(to_input), Errno::Xdev);
        let in_input = block_on(root.rename("inputs/x.csv", &root, "inputs/y.csv"));
        assert_eq!(errno(in_input), Errno::Rofs);
        let mount_point = block_on(root.rename("outputs", &root, "elsewhere"));
        assert_eq!(errno(mount_point), Errno::Busy);
        assert!(dir.path().join("in/x.csv").exists());
    }
}
