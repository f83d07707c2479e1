//! File system operations confined to one directory tree, shared by layer unpacking and the copy-mode rootfs.
//!
//! Every path is resolved by `pathrs` (openat2 `RESOLVE_IN_ROOT`, or its checked emulation on old kernels), so
//! `..` and symlinks, absolute or relative, resolve as if the tree were `/`: nothing here can reach outside it.
//! Creation and removal go through [`pathrs::Root`]; what pathrs lacks (owner, mode, times) is done with `*at`
//! calls on a pathrs-resolved parent directory and a single final name, never following that name.
//!
//! Paths given here must be relative and already free of `.` and `..` components (see `unpack::normalize`):
//! the final name is then always a real entry of its parent, never an alias of it.

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use pathrs::flags::OpenFlags;
use pathrs::{Handle, InodeType, Root};

/// The xattr overlayfs reads to decide that a directory hides what lower layers have at its path.
pub(in crate::oci) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Owner, mode and modification time to give an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::oci) struct Meta {
    /// Host uid (already shifted).
    pub uid: u32,
    /// Host gid (already shifted).
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky; `None` for symlinks, whose mode Linux ignores.
    pub mode: Option<u32>,
    /// Seconds since the epoch, used for both atime and mtime; `None` leaves the times alone.
    pub mtime: Option<i64>,
}

/// The type of an existing entry, as far as replacing it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::oci) enum Kind {
    Dir,
    Symlink,
    Regular,
    Fifo,
    /// A 0/0 character device: an overlayfs whiteout.
    Whiteout,
    /// Any other inode (other devices, sockets).
    Other,
}

impl Kind {
    pub(in crate::oci) fn of(stat: &FileStat) -> Kind {
        let fmt = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else if fmt == SFlag::S_IFLNK {
            Kind::Symlink
        } else if fmt == SFlag::S_IFREG {
            Kind::Regular
        } else if fmt == SFlag::S_IFIFO {
            Kind::Fifo
        } else if fmt == SFlag::S_IFCHR && stat.st_rdev == 0 {
            Kind::Whiteout
        } else {
            Kind::Other
        }
    }
}

/// A directory tree that every operation stays inside.
#[derive(Debug)]
pub(in crate::oci) struct InRoot {
    /// The pathrs handle all resolution goes through.
    root: Root,
    /// Where the tree is on the host, for error messages and for the tree's own root directory.
    dir: PathBuf,
}

// === impl InRoot ===

impl InRoot {
    /// Opens the tree at `dir`, which must be an existing directory the caller trusts (its own parents are not
    /// checked; only what is below it is treated as hostile).
    pub(in crate::oci) fn open(dir: &Path) -> io::Result<InRoot> {
        let root = Root::open(dir).map_err(to_io)?;
        Ok(InRoot {
            root,
            dir: dir.to_owned(),
        })
    }

    /// The tree's location on the host.
    pub(in crate::oci) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `lstat` of `rel`: `None` when it (or a parent) does not exist.
    pub(in crate::oci) fn lstat(&self, rel: &Path) -> io::Result<Option<FileStat>> {
        match self.root.resolve_nofollow(rel) {
            Ok(handle) => Ok(Some(nix::sys::stat::fstat(handle.as_fd().as_raw_fd())?)),
            Err(err) => {
                let err = to_io(err);
                if err.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The directory `rel` resolves to (symlinks followed inside the tree). `rel` may be empty: the tree's root.
    pub(in crate::oci) fn resolve_dir(&self, rel: &Path) -> io::Result<Handle> {
        let handle = self.root.resolve(or_dot(rel)).map_err(to_io)?;
        let stat = nix::sys::stat::fstat(handle.as_fd().as_raw_fd())?;
        if Kind::of(&stat) != Kind::Dir {
            return Err(io::Error::from(io::ErrorKind::NotADirectory));
        }
        Ok(handle)
    }

    /// Makes sure `rel` is a directory, creating it and its missing parents with `implicit` as owner and mode
    /// (times are left at "now"), and returns it. Existing components, symlinks included, are used as they are
    /// (resolved inside the tree); an existing non-directory is an error.
    pub(in crate::oci) fn ensure_dir(&self, rel: &Path, implicit: Meta) -> io::Result<Handle> {
        match self.resolve_dir(rel) {
            Ok(handle) => return Ok(handle),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        // Rare path (the tar had no entry for a parent): walk down, creating what is missing.
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            match self.resolve_dir(&prefix) {
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            self.create(
                &prefix,
                &InodeType::Directory(Permissions::from_mode(0o700)),
            )?;
            self.set_meta(&prefix, implicit)?;
        }
        self.resolve_dir(rel)
    }

    /// Creates `rel`, which must not exist; its parent must.
    pub(in crate::oci) fn create(&self, rel: &Path, inode: &InodeType) -> io::Result<()> {
        self.root.create(rel, inode).map_err(to_io)
    }

    /// Creates the regular file `rel` (which must not exist) and opens it for writing.
    pub(in crate::oci) fn create_file(&self, rel: &Path) -> io::Result<File> {
        self.root
            .create_file(
                rel,
                OpenFlags::O_WRONLY
                    | OpenFlags::O_EXCL
                    | OpenFlags::O_NOFOLLOW
                    | OpenFlags::O_CLOEXEC,
                &Permissions::from_mode(0o600),
            )
            .map_err(to_io)
    }

    /// Removes `rel` whatever it is (a directory with its content; a symlink itself, never its target). A
    /// missing `rel` is not an error.
    pub(in crate::oci) fn remove(&self, rel: &Path) -> io::Result<()> {
        match self.root.remove_all(rel).map_err(to_io) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Removes every entry below the tree's root, leaving the root itself.
    pub(in crate::oci) fn clear(&self) -> io::Result<()> {
        for child in std::fs::read_dir(&self.dir)? {
            self.remove(Path::new(&child?.file_name()))?;
        }
        Ok(())
    }

    /// Gives `rel` (not followed if a symlink) its owner, then its mode (after the owner: chown clears
    /// setuid/setgid bits), then its times.
    pub(in crate::oci) fn set_meta(&self, rel: &Path, meta: Meta) -> io::Result<()> {
        let Some(name) = rel.file_name() else {
            return self.set_root_meta(meta);
        };
        let parent = self.resolve_dir(rel.parent().unwrap_or(Path::new("")))?;
        set_meta_at(&parent, name, meta)
    }

    /// Sets the opaque xattr on the directory `rel` (empty: the tree's root).
    pub(in crate::oci) fn set_opaque(&self, rel: &Path) -> io::Result<()> {
        let dir = self
            .resolve_dir(rel)?
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .map_err(to_io)?;
        xattr::FileExt::set_xattr(&dir, OPAQUE_XATTR, b"y")
    }

    /// The tree's root has no parent inside the tree; it is the caller's own directory, so plain path calls are
    /// fine (and `set_meta_at` could not name it).
    fn set_root_meta(&self, meta: Meta) -> io::Result<()> {
        std::os::unix::fs::chown(&self.dir, Some(meta.uid), Some(meta.gid))?;
        if let Some(mode) = meta.mode {
            std::fs::set_permissions(&self.dir, Permissions::from_mode(mode & 0o7777))?;
        }
        if let Some(secs) = meta.mtime {
            let time = std::time::UNIX_EPOCH
                .checked_add(std::time::Duration::from_secs(
                    u64::try_from(secs).unwrap_or(0),
                ))
                .unwrap_or(std::time::UNIX_EPOCH);
            File::open(&self.dir)?.set_times(
                std::fs::FileTimes::new()
                    .set_accessed(time)
                    .set_modified(time),
            )?;
        }
        Ok(())
    }
}

/// Owner, mode and times of `name` in `parent`, never following `name`.
fn set_meta_at(parent: &Handle, name: &OsStr, meta: Meta) -> io::Result<()> {
    let fd = Some(parent.as_fd().as_raw_fd());
    nix::unistd::fchownat(
        fd,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if let Some(mode) = meta.mode {
        // NoFollowSymlink: the kernel (fchmodat2, Linux 6.6) or libc (via O_PATH) refuses to chmod through a
        // symlink, should one have replaced `name`.
        nix::sys::stat::fchmodat(
            fd,
            name,
            Mode::from_bits_truncate(mode & 0o7777),
            FchmodatFlags::NoFollowSymlink,
        )?;
    }
    if let Some(secs) = meta.mtime {
        let time = TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(fd, name, &time, &time, UtimensatFlags::NoFollowSymlink)?;
    }
    Ok(())
}

/// pathrs resolves "" and "." alike, but say "." to be clear.
fn or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// A pathrs error as an `io::Error` of the same kind (so `NotFound` and `AlreadyExists` can be matched), keeping
/// pathrs's description of the step that failed.
pub(in crate::oci) fn to_io(err: pathrs::error::Error) -> io::Error {
    let kind = match err.kind() {
        pathrs::error::ErrorKind::OsError(Some(errno)) => {
            io::Error::from_raw_os_error(errno).kind()
        }
        pathrs::error::ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
        pathrs::error::ErrorKind::NotSupported | pathrs::error::ErrorKind::NotImplemented => {
            io::ErrorKind::Unsupported
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}
