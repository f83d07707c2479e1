//! The `path_*` calls: a path from a directory descriptor is first placed in the mount table
//! (lexically, see `fs`), then continues on the host below the mount's directory (see `host`).
//!
//! What a guest may do where, and the errno when it may not, is the contract of `fs`: mutating a
//! read-only mount is `EROFS`, creating beside the mounts is `EROFS`, mount points cannot be
//! moved or removed (`EBUSY`), and moving or linking between two mounts is `EXDEV`.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::abi::Filestat;
use super::fd::{Entry, FDFLAGS_APPEND, OpenDir, OpenFile, timestamps, virtual_stat};
use super::mem::Mem;
use super::{Errno, Outcome, WasiCtx, host};
use crate::executor::wasm::fs::{MountKind, Resolved};

/// `lookupflags`: follow a symlink in the final component.
const SYMLINK_FOLLOW: u32 = 1;

/// `oflags`.
const O_CREAT: u32 = 1;
const O_DIRECTORY: u32 = 2;
const O_EXCL: u32 = 4;
const O_TRUNC: u32 = 8;

/// `rights` that decide how a file is opened.
const RIGHT_READ: u64 = 1 << 1;
const RIGHT_WRITE: u64 = 1 << 6;

/// Where a guest path leads.
enum Place<'a> {
    /// Below a host directory: `rest` from `base` (`.` is `base` itself).
    Host {
        base: BorrowedFd<'a>,
        rest: String,
        /// The mount it is on, by index.
        mount: usize,
        writable: bool,
        /// `rest` is the mount point itself, which the guest cannot remove or move.
        mount_point: bool,
    },
    /// At or below a file input.
    File {
        parent: BorrowedFd<'a>,
        name: &'a str,
        writable: bool,
        /// `.` for the file itself; anything else is below a file, hence `ENOTDIR`.
        rest: String,
        dir_only: bool,
    },
    /// A directory of the mount table.
    Virtual(Vec<String>),
    /// Nothing there.
    Missing { parent_virtual: bool },
}

/// Places `path`, taken relative to directory descriptor `fd`.
fn place<'a>(ctx: &'a WasiCtx, fd: u32, path: &str) -> Result<Place<'a>, Errno> {
    let dir = ctx.fds.dir(fd)?;
    if path.is_empty() {
        return Err(Errno::Noent);
    }
    match dir {
        OpenDir::Virtual(at) => {
            if path.starts_with('/') {
                // WASI paths are relative to a directory; wasi-libc strips the `/` itself.
                return Err(Errno::Notcapable);
            }
            Ok(match ctx.mounts.resolve(at, path) {
                Resolved::Mount {
                    index,
                    mount,
                    rest,
                    dir_only,
                } => match &mount.kind {
                    MountKind::Dir { dir, writable } => Place::Host {
                        base: dir.as_fd(),
                        mount_point: rest == ".",
                        rest,
                        mount: index,
                        writable: *writable,
                    },
                    MountKind::File {
                        parent,
                        name,
                        writable,
                    } => Place::File {
                        parent: parent.as_fd(),
                        name,
                        writable: *writable,
                        rest,
                        dir_only,
                    },
                },
                Resolved::Virtual(at) => Place::Virtual(at),
                Resolved::Missing { parent_virtual } => Place::Missing { parent_virtual },
            })
        }
        OpenDir::Host {
            dir,
            mount,
            writable,
        } => {
            if path.starts_with('/') {
                // Leaving the directory, as cap-std reported it.
                return Err(Errno::Perm);
            }
            Ok(Place::Host {
                base: dir.as_fd(),
                rest: path.to_owned(),
                mount: *mount,
                writable: *writable,
                mount_point: false,
            })
        }
    }
}

/// The error for any change to something read-only; wazero's read-only filesystem uses it too.
const READ_ONLY: Errno = Errno::Rofs;

#[allow(clippy::too_many_arguments)] // the preview-1 signature
pub(super) fn open(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    dirflags: u32,
    path: u32,
    len: u32,
    oflags: u32,
    rights: u64,
    _inheriting: u64,
    fdflags: u32,
    out: u32,
) -> Outcome {
    if let Entry::File(_) | Entry::Stdin | Entry::Output(_) = ctx.fds.get(fd)? {
        return Err(Errno::Notdir.into());
    }
    let path = mem.str(path, len)?;
    let read = rights & RIGHT_READ != 0;
    let write = rights & RIGHT_WRITE != 0;
    let fdflags = u16::try_from(fdflags).map_err(|_| Errno::Inval)?;
    let mutating =
        write || oflags & (O_CREAT | O_EXCL | O_TRUNC) != 0 || fdflags & FDFLAGS_APPEND != 0;
    let mut flags = match (read, write) {
        (true, true) => OFlags::RDWR,
        (false, true) => OFlags::WRONLY,
        _ => OFlags::RDONLY,
    };
    for (bit, host) in [
        (O_CREAT, OFlags::CREATE),
        (O_DIRECTORY, OFlags::DIRECTORY),
        (O_EXCL, OFlags::EXCL),
        (O_TRUNC, OFlags::TRUNC),
    ] {
        if oflags & bit != 0 {
            flags |= host;
        }
    }
    for (bit, host) in [
        (1u16, OFlags::APPEND),
        (2, OFlags::DSYNC),
        (4, OFlags::NONBLOCK),
        (8, OFlags::RSYNC),
        (16, OFlags::SYNC),
    ] {
        if fdflags & bit != 0 {
            flags |= host;
        }
    }
    if dirflags & SYMLINK_FOLLOW == 0 {
        flags |= OFlags::NOFOLLOW;
    }
    let entry = match place(ctx, fd, path)? {
        Place::Host {
            base,
            rest,
            mount,
            writable,
            ..
        } => {
            if mutating && !writable {
                return Err(READ_ONLY.into());
            }
            let opened = host::open_beneath(base, &rest, flags)?;
            let meta = host::fd_metadata(opened.as_fd())?;
            if meta.is_dir() {
                Entry::Dir(OpenDir::Host {
                    dir: opened,
                    mount,
                    writable,
                })
            } else {
                Entry::File(OpenFile {
                    file: opened.into(),
                    read,
                    write,
                    read_only: !writable,
                })
            }
        }
        Place::File {
            parent,
            name,
            writable,
            rest,
            dir_only,
        } => {
            if rest != "." || dir_only || oflags & O_DIRECTORY != 0 {
                return Err(Errno::Notdir.into());
            }
            if oflags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL {
                return Err(Errno::Exist.into());
            }
            if mutating && !writable {
                return Err(READ_ONLY.into());
            }
            Entry::File(OpenFile {
                file: host::open_beneath(parent, name, flags)?.into(),
                read,
                write,
                read_only: !writable,
            })
        }
        Place::Virtual(at) => {
            if oflags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL {
                return Err(Errno::Exist.into());
            }
            if write || oflags & O_TRUNC != 0 {
                return Err(Errno::Isdir.into());
            }
            Entry::Dir(OpenDir::Virtual(at))
        }
        Place::Missing { parent_virtual } => {
            return Err(if parent_virtual && oflags & O_CREAT != 0 {
                READ_ONLY
            } else {
                Errno::Noent
            }
            .into());
        }
    };
    let new = ctx.fds.insert(entry)?;
    mem.write_u32(out, new)?;
    Ok(())
}

pub(super) fn create_directory(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    path: u32,
    len: u32,
) -> Outcome {
    let path = mem.str(path, len)?;
    match place(ctx, fd, path)? {
        Place::Host {
            mount_point: true, ..
        }
        | Place::File { .. }
        | Place::Virtual(_) => Err(Errno::Exist.into()),
        Place::Host {
            writable: false, ..
        } => Err(READ_ONLY.into()),
        Place::Host { base, rest, .. } => {
            let (parent, name) = host::parent(base, &rest)?;
            rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o777))
                .map_err(|e| Errno::from(e).into())
        }
        Place::Missing {
            parent_virtual: true,
        } => Err(READ_ONLY.into()),
        Place::Missing { .. } => Err(Errno::Noent.into()),
    }
}

pub(super) fn remove_directory(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    path: u32,
    len: u32,
) -> Outcome {
    let path = mem.str(path, len)?;
    match place(ctx, fd, path)? {
        Place::Host {
            mount_point: true, ..
        } => Err(Errno::Busy.into()),
        Place::File { .. } => Err(Errno::Notdir.into()),
        Place::Host {
            writable: false, ..
        }
        | Place::Virtual(_) => Err(READ_ONLY.into()),
        Place::Host { base, rest, .. } => {
            let (parent, name) = host::parent(base, &rest)?;
            rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)
                .map_err(|e| Errno::from(e).into())
        }
        Place::Missing { .. } => Err(Errno::Noent.into()),
    }
}

pub(super) fn unlink_file(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    path: u32,
    len: u32,
) -> Outcome {
    let path = mem.str(path, len)?;
    match place(ctx, fd, path)? {
        Place::Host {
            mount_point: true, ..
        }
        | Place::Virtual(_) => Err(Errno::Isdir.into()),
        Place::File { .. } => Err(Errno::Busy.into()),
        Place::Host {
            writable: false, ..
        } => Err(READ_ONLY.into()),
        Place::Host { base, rest, .. } => {
            if rest.ends_with('/') {
                // `unlink("x/")` never removes a file: the slash says it must be a directory.
                let is_dir = host::stat(base, &rest, false)?.is_dir();
                return Err(if is_dir { Errno::Isdir } else { Errno::Notdir }.into());
            }
            let (parent, name) = host::parent(base, &rest)?;
            rustix::fs::unlinkat(&parent, name, AtFlags::empty()).map_err(|e| Errno::from(e).into())
        }
        Place::Missing { .. } => Err(Errno::Noent.into()),
    }
}

pub(super) fn symlink(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    old: u32,
    old_len: u32,
    fd: u32,
    new: u32,
    new_len: u32,
) -> Outcome {
    // The link's text is not resolved here; following it later stays below the mount.
    let target = mem.str(old, old_len)?;
    let path = mem.str(new, new_len)?;
    match place(ctx, fd, path)? {
        Place::Host {
            mount_point: true, ..
        }
        | Place::File { .. }
        | Place::Virtual(_) => Err(Errno::Exist.into()),
        Place::Host {
            writable: false, ..
        } => Err(READ_ONLY.into()),
        Place::Host { base, rest, .. } => {
            let (parent, name) = host::parent(base, &rest)?;
            rustix::fs::symlinkat(target, &parent, name).map_err(|e| Errno::from(e).into())
        }
        Place::Missing {
            parent_virtual: true,
        } => Err(READ_ONLY.into()),
        Place::Missing { .. } => Err(Errno::Noent.into()),
    }
}

#[allow(clippy::too_many_arguments)] // the preview-1 signature
pub(super) fn readlink(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    path: u32,
    len: u32,
    buf: u32,
    buf_len: u32,
    out: u32,
) -> Outcome {
    let path = mem.str(path, len)?;
    let link = match place(ctx, fd, path)? {
        Place::Host {
            mount_point: true, ..
        }
        | Place::File { .. }
        | Place::Virtual(_) => {
            return Err(Errno::Inval.into());
        }
        Place::Host { base, rest, .. } => {
            let (parent, name) = host::parent(base, &rest)?;
            rustix::fs::readlinkat(&parent, name, Vec::new()).map_err(Errno::from)?
        }
        Place::Missing { .. } => return Err(Errno::Noent.into()),
    };
    let link = link.into_string().map_err(|_| Errno::Ilseq)?;
    // Like readlink(2), a link longer than the buffer is cut short.
    let n = link.len().min(buf_len as usize);
    mem.write(buf, &link.as_bytes()[..n])?;
    mem.write_size(out, n)?;
    Ok(())
}

pub(super) fn filestat_get(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    flags: u32,
    path: u32,
    len: u32,
    out: u32,
) -> Outcome {
    let path = mem.str(path, len)?;
    let follow = flags & SYMLINK_FOLLOW != 0;
    let stat = match place(ctx, fd, path)? {
        Place::Host { base, rest, .. } => Filestat::of(&host::stat(base, &rest, follow)?),
        Place::File {
            parent,
            name,
            rest,
            dir_only,
            ..
        } => {
            if rest != "." || dir_only {
                return Err(Errno::Notdir.into());
            }
            Filestat::of(&host::stat(parent, name, follow)?)
        }
        Place::Virtual(at) => virtual_stat(&at),
        Place::Missing { .. } => return Err(Errno::Noent.into()),
    };
    mem.write(out, &stat.to_bytes())?;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the preview-1 signature
pub(super) fn filestat_set_times(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    flags: u32,
    path: u32,
    len: u32,
    atim: u64,
    mtim: u64,
    fst: u32,
) -> Outcome {
    let path = mem.str(path, len)?;
    let times = timestamps(atim, mtim, fst)?;
    let follow = flags & SYMLINK_FOLLOW != 0;
    match place(ctx, fd, path)? {
        Place::Host {
            writable: false, ..
        }
        | Place::Virtual(_) => Err(READ_ONLY.into()),
        Place::Host { base, rest, .. } => Ok(host::set_times(base, &rest, &times, follow)?),
        Place::File {
            parent,
            name,
            writable: true,
            rest,
            ..
        } if rest == "." => Ok(host::set_times(parent, name, &times, follow)?),
        Place::File { .. } => Err(READ_ONLY.into()),
        Place::Missing { .. } => Err(Errno::Noent.into()),
    }
}

/// The two ends of a rename or link, both strictly inside one writable directory mount:
/// `(from_base, from, to_base, to)`.
fn same_mount<'a>(
    from: Place<'a>,
    to: Place<'a>,
) -> Result<(BorrowedFd<'a>, String, BorrowedFd<'a>, String), Errno> {
    let (from_base, from_rest, mount, writable) = match from {
        Place::Missing { .. } => return Err(Errno::Noent),
        Place::Virtual(_)
        | Place::File { .. }
        | Place::Host {
            mount_point: true, ..
        } => return Err(Errno::Busy),
        Place::Host {
            base,
            rest,
            mount,
            writable,
            ..
        } => (base, rest, mount, writable),
    };
    let (to_base, to_rest) = match to {
        Place::Host {
            mount: same,
            mount_point,
            base,
            rest,
            ..
        } if same == mount => {
            if mount_point {
                return Err(Errno::Busy);
            }
            (base, rest)
        }
        Place::Host { .. } | Place::File { .. } | Place::Virtual(_) => return Err(Errno::Xdev),
        Place::Missing {
            parent_virtual: true,
        } => return Err(READ_ONLY),
        Place::Missing { .. } => return Err(Errno::Noent),
    };
    if !writable {
        return Err(READ_ONLY);
    }
    Ok((from_base, from_rest, to_base, to_rest))
}

#[allow(clippy::too_many_arguments)] // the preview-1 signature
pub(super) fn rename(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    old: u32,
    old_len: u32,
    new_fd: u32,
    new: u32,
    new_len: u32,
) -> Outcome {
    let old = mem.str(old, old_len)?;
    let new = mem.str(new, new_len)?;
    let (from_base, from, to_base, to) =
        same_mount(place(ctx, fd, old)?, place(ctx, new_fd, new)?)?;
    let (from_dir, from_name) = host::parent(from_base, &from)?;
    let (to_dir, to_name) = host::parent(to_base, &to)?;
    rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name).map_err(|e| Errno::from(e).into())
}

#[allow(clippy::too_many_arguments)] // the preview-1 signature
pub(super) fn link(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    old_fd: u32,
    old_flags: u32,
    old: u32,
    old_len: u32,
    new_fd: u32,
    new: u32,
    new_len: u32,
) -> Outcome {
    let old = mem.str(old, old_len)?;
    let new = mem.str(new, new_len)?;
    if old_flags & SYMLINK_FOLLOW != 0 {
        // As wasi-common: following would need linkat(AT_SYMLINK_FOLLOW), which could leave the mount.
        return Err(Errno::Inval.into());
    }
    let (from_base, from, to_base, to) =
        same_mount(place(ctx, old_fd, old)?, place(ctx, new_fd, new)?)?;
    let (from_dir, from_name) = host::parent(from_base, &from)?;
    let (to_dir, to_name) = host::parent(to_base, &to)?;
    rustix::fs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())
        .map_err(|e| Errno::from(e).into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::executor::wasm::fs::tests::table;
    use crate::executor::wasm::interrupt::{Interrupt, Sleeper};
    use crate::executor::wasm::stdio::CappedOutput;
    use crate::executor::wasm::wasi::{Fail, fd};

    /// A run's context over the test mount table (`/inputs` read-only with `x.csv`,
    /// `/data/nested`, `/outputs` writable), and 64 KiB of guest memory.
    struct Guest {
        dir: tempfile::TempDir,
        ctx: WasiCtx,
        memory: Vec<u8>,
    }

    /// Guest memory: paths go at 1024, results at 0..64, buffers from 4096.
    const PATH: u32 = 1024;
    const OUT: u32 = 0;
    const BUF: u32 = 4096;

    const READ: u64 = RIGHT_READ;
    const WRITE: u64 = RIGHT_WRITE;

    impl Guest {
        fn new() -> Self {
            let (dir, table) = table();
            let out = |name: &str| {
                CappedOutput::create(
                    &dir.path().join(name),
                    1 << 20,
                    Arc::new(crate::executor::wasm::stdio::Tap::default()),
                )
                .unwrap()
            };
            let sleeper = Sleeper {
                interrupt: Arc::new(Interrupt::default()),
                deadline: None,
            };
            let ctx = WasiCtx::new(
                &[String::new()],
                &Default::default(),
                out("stdout"),
                out("stderr"),
                Arc::new(table),
                sleeper,
            )
            .unwrap();
            Guest {
                dir,
                ctx,
                memory: vec![0; 64 * 1024],
            }
        }

        fn host(&self, path: &str) -> std::path::PathBuf {
            self.dir.path().join(path)
        }

        /// Runs `call` with `path` at `PATH`.
        fn with_path(
            &mut self,
            path: &str,
            call: impl FnOnce(&mut WasiCtx, &mut Mem<'_>, u32) -> Outcome,
        ) -> Result<(), Errno> {
            let mut mem = Mem(&mut self.memory);
            mem.write(PATH, path.as_bytes()).unwrap();
            match call(&mut self.ctx, &mut mem, path.len() as u32) {
                Ok(()) => Ok(()),
                Err(Fail::Errno(e)) => Err(e),
                Err(Fail::Trap(t)) => panic!("trap: {t}"),
            }
        }

        fn open(
            &mut self,
            dir: u32,
            path: &str,
            oflags: u32,
            rights: u64,
            fdflags: u32,
        ) -> Result<u32, Errno> {
            self.with_path(path, |ctx, mem, len| {
                open(
                    ctx,
                    mem,
                    dir,
                    SYMLINK_FOLLOW,
                    PATH,
                    len,
                    oflags,
                    rights,
                    0,
                    fdflags,
                    OUT,
                )
            })?;
            Ok(self.u32_at(OUT))
        }

        fn u32_at(&self, at: u32) -> u32 {
            let at = at as usize;
            u32::from_le_bytes(self.memory[at..at + 4].try_into().unwrap())
        }

        fn write(&mut self, fd: u32, data: &[u8]) -> Result<(), Errno> {
            let mut mem = Mem(&mut self.memory);
            mem.write(BUF, data).unwrap();
            mem.write_u32(8, BUF).unwrap();
            mem.write_u32(12, data.len() as u32).unwrap();
            fd::write(&mut self.ctx, &mut mem, fd, 8, 1, OUT).map_err(errno)
        }
    }

    fn errno(fail: Fail) -> Errno {
        match fail {
            Fail::Errno(e) => e,
            Fail::Trap(t) => panic!("trap: {t}"),
        }
    }

    #[test]
    fn opens_never_leave_the_mount() {
        let mut g = Guest::new();
        std::fs::write(g.host("secret"), "host").unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, g.host(&format!("in/{name}"))).unwrap()
        };
        link(g.host("secret").to_str().unwrap(), "abs-link");
        link("../secret", "rel-link");
        link("loop-b", "loop-a");
        link("loop-a", "loop-b");
        link("x.csv", "ok-link");
        std::fs::create_dir(g.host("in/sub")).unwrap();

        assert!(
            g.open(3, "inputs/ok-link", 0, READ, 0).is_ok(),
            "a link inside the mount works"
        );
        assert!(g.open(3, "inputs/sub/../x.csv", 0, READ, 0).is_ok());
        assert_eq!(g.open(3, "inputs/abs-link", 0, READ, 0), Err(Errno::Perm));
        assert_eq!(g.open(3, "inputs/rel-link", 0, READ, 0), Err(Errno::Perm));
        assert_eq!(g.open(3, "inputs/loop-a", 0, READ, 0), Err(Errno::Loop));
        assert_eq!(
            g.open(3, "../secret", 0, READ, 0),
            Err(Errno::Noent),
            "`..` stops at the root"
        );
        assert_eq!(
            g.open(3, "/inputs/x.csv", 0, READ, 0),
            Err(Errno::Notcapable)
        );
        // From a directory opened inside the mount, the directory is the limit.
        let sub = g.open(3, "inputs/sub", O_DIRECTORY, READ, 0).unwrap();
        assert!(
            g.open(sub, "../x.csv", 0, READ, 0)
                .is_err_and(|e| e == Errno::Perm)
        );
        assert_eq!(g.open(sub, "../../secret", 0, READ, 0), Err(Errno::Perm));
        assert_eq!(g.open(sub, "/etc/passwd", 0, READ, 0), Err(Errno::Perm));
        // A planted link in a writable mount, followed by a write: refused, nothing created outside.
        std::os::unix::fs::symlink(g.host("pwned"), g.host("out/evil")).unwrap();
        assert_eq!(
            g.open(3, "outputs/evil", O_CREAT, WRITE, 0),
            Err(Errno::Perm)
        );
        assert!(!g.host("pwned").exists());
        // Stat and set-times do not follow a link out either.
        let stat = g.with_path("inputs/abs-link", |ctx, mem, len| {
            filestat_get(ctx, mem, 3, SYMLINK_FOLLOW, PATH, len, OUT)
        });
        assert_eq!(stat, Err(Errno::Perm));
        let stat = g.with_path("inputs/abs-link", |ctx, mem, len| {
            filestat_get(ctx, mem, 3, 0, PATH, len, OUT)
        });
        assert_eq!(stat, Ok(()), "the link itself can be looked at");
        assert_eq!(g.memory[16], 7, "a symlink");
    }

    #[test]
    fn read_only_mounts_refuse_every_change() {
        let mut g = Guest::new();
        assert_eq!(g.open(3, "inputs/x.csv", 0, WRITE, 0), Err(Errno::Rofs));
        assert_eq!(
            g.open(3, "inputs/x.csv", 0, READ, FDFLAGS_APPEND as u32),
            Err(Errno::Rofs)
        );
        assert_eq!(g.open(3, "inputs/new", O_CREAT, READ, 0), Err(Errno::Rofs));
        assert_eq!(
            g.open(3, "new-top-level", O_CREAT, WRITE, 0),
            Err(Errno::Rofs)
        );
        let fd = g.open(3, "inputs/x.csv", 0, READ, 0).unwrap();
        assert_eq!(g.write(fd, b"x"), Err(Errno::Rofs));
        let mut mem = Mem(&mut g.memory);
        assert_eq!(
            fd::filestat_set_size(&mut g.ctx, &mut mem, fd, 0).map_err(errno),
            Err(Errno::Rofs)
        );
        assert_eq!(
            fd::filestat_set_times(&mut g.ctx, &mut mem, fd, 0, 0, 8).map_err(errno),
            Err(Errno::Rofs)
        );
        assert_eq!(
            fd::fdstat_set_flags(&mut g.ctx, &mut mem, fd, 1).map_err(errno),
            Err(Errno::Rofs)
        );
        let times = g.with_path("inputs/x.csv", |ctx, mem, len| {
            filestat_set_times(ctx, mem, 3, 0, PATH, len, 0, 0, 8)
        });
        assert_eq!(times, Err(Errno::Rofs));
        assert_eq!(std::fs::read_to_string(g.host("in/x.csv")).unwrap(), "data");
    }

    #[test]
    fn renames_stay_inside_one_writable_mount() {
        let mut g = Guest::new();
        std::fs::write(g.host("out/a"), "a").unwrap();
        let mut rename_to = |from: &str, to: &str| {
            let mut mem = Mem(&mut g.memory);
            mem.write(PATH, from.as_bytes()).unwrap();
            mem.write(PATH + 512, to.as_bytes()).unwrap();
            rename(
                &mut g.ctx,
                &mut mem,
                3,
                PATH,
                from.len() as u32,
                3,
                PATH + 512,
                to.len() as u32,
            )
            .map_err(errno)
        };
        assert_eq!(rename_to("outputs/a", "outputs/b"), Ok(()));
        assert_eq!(rename_to("outputs/b", "inputs/b"), Err(Errno::Xdev));
        assert_eq!(rename_to("inputs/x.csv", "inputs/y.csv"), Err(Errno::Rofs));
        assert_eq!(rename_to("outputs", "elsewhere"), Err(Errno::Busy));
        assert_eq!(rename_to("outputs/b", "outputs"), Err(Errno::Busy));
        assert!(g.host("out/b").exists());
        assert!(g.host("in/x.csv").exists());

        // A hard link from the read-only input into the outputs would make the input writable.
        let mut mem = Mem(&mut g.memory);
        mem.write(PATH, b"inputs/x.csv").unwrap();
        mem.write(PATH + 512, b"outputs/hard").unwrap();
        let linked = link(&mut g.ctx, &mut mem, 3, 0, PATH, 12, 3, PATH + 512, 12).map_err(errno);
        assert_eq!(linked, Err(Errno::Xdev));
    }

    #[test]
    fn readdir_cookies_resume_across_a_small_buffer() {
        let mut g = Guest::new();
        let names = ["a", "bb", "ccc", "dddd", "eeeee"];
        for name in names {
            std::fs::write(g.host(&format!("out/{name}")), "").unwrap();
        }
        let dir = g.open(3, "outputs", O_DIRECTORY, READ, 0).unwrap();
        let mut seen = Vec::new();
        let mut cookie = 0u64;
        // Fits one dirent and a short name at a time, as a libc with a tiny buffer would ask.
        let len = 30;
        loop {
            let mut mem = Mem(&mut g.memory);
            fd::readdir(&mut g.ctx, &mut mem, dir, BUF, len, cookie, OUT)
                .map_err(errno)
                .unwrap();
            let used = g.u32_at(OUT);
            let mut at = 0u32;
            let mut progressed = false;
            while at + 24 <= used {
                let base = (BUF + at) as usize;
                let next = u64::from_le_bytes(g.memory[base..base + 8].try_into().unwrap());
                let name_len = g.u32_at(BUF + at + 16);
                if at + 24 + name_len > used {
                    break;
                }
                let name = std::str::from_utf8(&g.memory[base + 24..base + 24 + name_len as usize])
                    .unwrap();
                seen.push(name.to_owned());
                cookie = next;
                progressed = true;
                at += 24 + name_len;
            }
            if used < len {
                break;
            }
            assert!(progressed, "a 30-byte buffer holds one entry");
        }
        let mut want: Vec<String> = [".", ".."]
            .iter()
            .chain(&names)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want);

        // The root lists the mounts.
        let mut mem = Mem(&mut g.memory);
        fd::readdir(&mut g.ctx, &mut mem, 3, BUF, 4096, 2, OUT)
            .map_err(errno)
            .unwrap();
        assert_eq!(g.u32_at(OUT), 3 * 24 + 4 + 6 + 7);
        assert_eq!(&g.memory[BUF as usize + 24..BUF as usize + 28], b"data");
    }

    #[test]
    fn renumber_moves_a_descriptor_and_append_writes_at_the_end() {
        let mut g = Guest::new();
        std::fs::write(g.host("out/log"), "ab").unwrap();
        let fd = g
            .open(3, "outputs/log", 0, WRITE | READ, FDFLAGS_APPEND as u32)
            .unwrap();
        assert_eq!(fd, 4, "the lowest free number");
        let mut mem = Mem(&mut g.memory);
        fd::seek(&mut g.ctx, &mut mem, fd, 0, 0, OUT)
            .map_err(errno)
            .unwrap();
        g.write(fd, b"cd").unwrap();
        assert_eq!(std::fs::read_to_string(g.host("out/log")).unwrap(), "abcd");

        let mut mem = Mem(&mut g.memory);
        fd::renumber(&mut g.ctx, &mut mem, fd, 1)
            .map_err(errno)
            .unwrap();
        assert_eq!(
            fd::close(&mut g.ctx, &mut mem, fd).map_err(errno),
            Err(Errno::Badf)
        );
        assert_eq!(
            fd::renumber(&mut g.ctx, &mut mem, 1, 99).map_err(errno),
            Err(Errno::Badf)
        );
        g.write(1, b"ef").unwrap();
        assert_eq!(
            std::fs::read_to_string(g.host("out/log")).unwrap(),
            "abcdef",
            "fd 1 is the file now"
        );
    }

    #[test]
    fn bad_guest_pointers_are_efault() {
        let mut g = Guest::new();
        let mut mem = Mem(&mut g.memory);
        let end = 64 * 1024;
        assert_eq!(
            open(&mut g.ctx, &mut mem, 3, 0, end - 2, 10, 0, READ, 0, 0, OUT).map_err(errno),
            Err(Errno::Fault)
        );
        mem.write(PATH, b"inputs").unwrap();
        assert_eq!(
            open(&mut g.ctx, &mut mem, 3, 0, PATH, 6, 0, READ, 0, 0, end).map_err(errno),
            Err(Errno::Fault)
        );
        assert_eq!(
            fd::write(&mut g.ctx, &mut mem, 1, end, 1, OUT).map_err(errno),
            Err(Errno::Fault)
        );
        mem.write_u32(8, end - 1).unwrap();
        mem.write_u32(12, 2).unwrap();
        assert_eq!(
            fd::write(&mut g.ctx, &mut mem, 1, 8, 1, OUT).map_err(errno),
            Err(Errno::Fault)
        );
        assert_eq!(
            fd::readdir(&mut g.ctx, &mut mem, 3, end - 8, 100, 0, OUT).map_err(errno),
            Err(Errno::Fault)
        );
        assert_eq!(
            fd::filestat_get(&mut g.ctx, &mut mem, 3, end - 63).map_err(errno),
            Err(Errno::Fault)
        );
        assert_eq!(
            fd::fdstat_get(&mut g.ctx, &mut mem, 3, u32::MAX).map_err(errno),
            Err(Errno::Fault)
        );
    }
}
