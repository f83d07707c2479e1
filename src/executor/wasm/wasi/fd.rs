//! The descriptor table and the `fd_*` calls.
//!
//! fd 0 is an empty stdin, 1 and 2 the capped outputs, 3 the preopen `/` (the mount table). New
//! descriptors take the lowest free number. What each call does to each kind of descriptor, and
//! the errno when it cannot, follows wasi-common: file calls on a directory are `EBADF`, stdio is
//! a pipe (no seek, no stat beyond its type), a file from a read-only mount refuses every change
//! with `EROFS`.

use std::fs::File;
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

use super::abi::{self, FileType, Filestat};
use super::mem::Mem;
use super::{Errno, Outcome, WasiCtx, host};
use crate::executor::wasm::fs::virtual_inode;
use crate::executor::wasm::stdio::CappedOutput;

/// Most descriptors a guest may hold at once.
const MAX_FDS: usize = 4096;

/// The name of the one preopen.
pub(super) const PREOPEN: &str = "/";

/// `fdflags`.
pub(super) const FDFLAGS_APPEND: u16 = 1;
const FDFLAGS_DSYNC: u16 = 2;
const FDFLAGS_NONBLOCK: u16 = 4;
const FDFLAGS_RSYNC: u16 = 8;
const FDFLAGS_SYNC: u16 = 16;

/// `rights` bits.
mod rights {
    pub(super) const FD_DATASYNC: u64 = 1 << 0;
    pub(super) const FD_READ: u64 = 1 << 1;
    pub(super) const FD_SEEK: u64 = 1 << 2;
    pub(super) const FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
    pub(super) const FD_SYNC: u64 = 1 << 4;
    pub(super) const FD_TELL: u64 = 1 << 5;
    pub(super) const FD_WRITE: u64 = 1 << 6;
    pub(super) const FD_ADVISE: u64 = 1 << 7;
    pub(super) const FD_ALLOCATE: u64 = 1 << 8;
    pub(super) const FD_READDIR: u64 = 1 << 14;
    pub(super) const FD_FILESTAT_GET: u64 = 1 << 21;
    pub(super) const FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
    pub(super) const FD_FILESTAT_SET_TIMES: u64 = 1 << 23;
    pub(super) const POLL_FD_READWRITE: u64 = 1 << 27;
    /// Every `path_*` right (bits 9..=13, 15..=20, 24..=26).
    pub(super) const PATH_ALL: u64 = 0b111 << 24 | 0b11_1111 << 15 | 0b1_1111 << 9;
    /// What a readable file allows.
    pub(super) const FILE_READ: u64 = FD_READ
        | FD_SEEK
        | FD_TELL
        | FD_ADVISE
        | FD_FDSTAT_SET_FLAGS
        | FD_FILESTAT_GET
        | FD_SYNC
        | FD_DATASYNC
        | POLL_FD_READWRITE;
    /// What a writable file adds.
    pub(super) const FILE_WRITE: u64 = FD_WRITE
        | FD_ALLOCATE
        | FD_FILESTAT_SET_SIZE
        | FD_FILESTAT_SET_TIMES
        | FD_SYNC
        | FD_DATASYNC
        | FD_SEEK
        | FD_TELL
        | FD_FDSTAT_SET_FLAGS
        | FD_FILESTAT_GET
        | POLL_FD_READWRITE;
    /// A directory: everything on paths below it, listing and stat.
    pub(super) const DIR: u64 = PATH_ALL | FD_READDIR | FD_FILESTAT_GET | FD_FILESTAT_SET_TIMES;
}

/// What a descriptor refers to.
pub(super) enum Entry {
    /// Always at end of file.
    Stdin,
    /// stdout or stderr.
    Output(CappedOutput),
    /// A host file the guest opened.
    File(OpenFile),
    /// A directory: of the mount table, or on the host.
    Dir(OpenDir),
}

/// A host file the guest opened.
pub(super) struct OpenFile {
    pub(super) file: File,
    /// Opened with `FD_READ`.
    pub(super) read: bool,
    /// Opened with `FD_WRITE` (never on a read-only mount).
    pub(super) write: bool,
    /// On a read-only mount: times and size cannot change either.
    pub(super) read_only: bool,
}

/// A directory the guest holds.
pub(super) enum OpenDir {
    /// A directory of the mount table (`[]` is the preopen `/`).
    Virtual(Vec<String>),
    /// A host directory inside mount `mount`; paths from it stay below it.
    Host {
        dir: OwnedFd,
        mount: usize,
        writable: bool,
    },
}

/// The descriptors of one run, by number.
pub(super) struct FdTable {
    slots: Vec<Option<Entry>>,
}

// === impl FdTable ===

impl FdTable {
    pub(super) fn new(stdout: CappedOutput, stderr: CappedOutput) -> Self {
        FdTable {
            slots: vec![
                Some(Entry::Stdin),
                Some(Entry::Output(stdout)),
                Some(Entry::Output(stderr)),
                Some(Entry::Dir(OpenDir::Virtual(Vec::new()))),
            ],
        }
    }

    pub(super) fn get(&self, fd: u32) -> Result<&Entry, Errno> {
        self.slots
            .get(fd as usize)
            .and_then(Option::as_ref)
            .ok_or(Errno::Badf)
    }

    fn get_mut(&mut self, fd: u32) -> Result<&mut Entry, Errno> {
        self.slots
            .get_mut(fd as usize)
            .and_then(Option::as_mut)
            .ok_or(Errno::Badf)
    }

    /// The directory at `fd`; `EBADF` for anything else, as wasi-common's path calls.
    pub(super) fn dir(&self, fd: u32) -> Result<&OpenDir, Errno> {
        match self.get(fd)? {
            Entry::Dir(dir) => Ok(dir),
            _ => Err(Errno::Badf),
        }
    }

    fn file(&mut self, fd: u32) -> Result<&mut OpenFile, Errno> {
        match self.get_mut(fd)? {
            Entry::File(file) => Ok(file),
            _ => Err(Errno::Badf),
        }
    }

    /// Stores `entry` at the lowest free number.
    pub(super) fn insert(&mut self, entry: Entry) -> Result<u32, Errno> {
        let index = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.slots.len() < MAX_FDS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(Errno::Mfile),
        };
        self.slots[index] = Some(entry);
        u32::try_from(index).map_err(|_| Errno::Mfile)
    }

    /// Whether `fd` is the preopen (fd 3 while it holds the root it was opened with).
    fn preopen(&self, fd: u32) -> bool {
        fd == 3 && matches!(self.get(fd), Ok(Entry::Dir(OpenDir::Virtual(at))) if at.is_empty())
    }
}

// === the calls ===

pub(super) fn close(ctx: &mut WasiCtx, _mem: &mut Mem<'_>, fd: u32) -> Outcome {
    let slot = ctx
        .fds
        .slots
        .get_mut(fd as usize)
        .filter(|s| s.is_some())
        .ok_or(Errno::Badf)?;
    *slot = None;
    Ok(())
}

pub(super) fn renumber(ctx: &mut WasiCtx, _mem: &mut Mem<'_>, fd: u32, to: u32) -> Outcome {
    ctx.fds.get(fd)?;
    ctx.fds.get(to)?;
    if fd != to {
        let entry = ctx.fds.slots[fd as usize].take();
        ctx.fds.slots[to as usize] = entry;
    }
    Ok(())
}

pub(super) fn read(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    iovs: u32,
    count: u32,
    out: u32,
) -> Outcome {
    let iovs = mem.iovecs(iovs, count)?;
    let n = match ctx.fds.get_mut(fd)? {
        Entry::Stdin => 0,
        Entry::File(f) if f.read => {
            let mut total = 0usize;
            for (ptr, len) in iovs {
                let buf = mem.bytes_mut(ptr, len)?;
                let n = f.file.read(buf).map_err(Errno::from_io)?;
                total += n;
                if n < buf.len() {
                    break;
                }
            }
            total
        }
        _ => return Err(Errno::Badf.into()),
    };
    mem.write_size(out, n)?;
    Ok(())
}

pub(super) fn pread(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    iovs: u32,
    count: u32,
    offset: u64,
    out: u32,
) -> Outcome {
    let iovs = mem.iovecs(iovs, count)?;
    let f = ctx.fds.file(fd)?;
    if !f.read {
        return Err(Errno::Badf.into());
    }
    let mut total = 0usize;
    for (ptr, len) in iovs {
        let buf = mem.bytes_mut(ptr, len)?;
        let at = offset.checked_add(total as u64).ok_or(Errno::Overflow)?;
        let n = f.file.read_at(buf, at).map_err(Errno::from_io)?;
        total += n;
        if n < buf.len() {
            break;
        }
    }
    mem.write_size(out, total)?;
    Ok(())
}

pub(super) fn write(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    iovs: u32,
    count: u32,
    out: u32,
) -> Outcome {
    let iovs = mem.iovecs(iovs, count)?;
    let bufs = iovs
        .iter()
        .map(|&(ptr, len)| mem.bytes(ptr, len))
        .collect::<Result<Vec<_>, _>>()?;
    let n = match ctx.fds.get_mut(fd)? {
        Entry::Output(o) => o.write(&bufs).map_err(Errno::from_io)?,
        Entry::File(f) if f.write => {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            f.file.write_vectored(&slices).map_err(Errno::from_io)? as u64
        }
        Entry::File(f) if f.read_only => return Err(Errno::Rofs.into()),
        _ => return Err(Errno::Badf.into()),
    };
    mem.write_u32(out, u32::try_from(n).map_err(|_| Errno::Overflow)?)?;
    Ok(())
}

pub(super) fn pwrite(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    iovs: u32,
    count: u32,
    offset: u64,
    out: u32,
) -> Outcome {
    let iovs = mem.iovecs(iovs, count)?;
    let f = ctx.fds.file(fd)?;
    if !f.write {
        return Err(if f.read_only {
            Errno::Rofs
        } else {
            Errno::Badf
        }
        .into());
    }
    let slices = iovs
        .iter()
        .map(|&(ptr, len)| mem.bytes(ptr, len).map(IoSlice::new))
        .collect::<Result<Vec<_>, _>>()?;
    let n = rustix::io::pwritev(&f.file, &slices, offset).map_err(Errno::from)?;
    mem.write_size(out, n)?;
    Ok(())
}

pub(super) fn seek(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    offset: u64,
    whence: u32,
    out: u32,
) -> Outcome {
    // `filedelta` is signed; it arrives as the same 64 bits.
    let delta = offset as i64;
    let pos = match whence {
        0 => SeekFrom::Start(u64::try_from(delta).map_err(|_| Errno::Inval)?),
        1 => SeekFrom::Current(delta),
        2 => SeekFrom::End(delta),
        _ => return Err(Errno::Inval.into()),
    };
    let at = ctx.fds.file(fd)?.file.seek(pos).map_err(Errno::from_io)?;
    mem.write_u64(out, at)?;
    Ok(())
}

pub(super) fn tell(ctx: &mut WasiCtx, mem: &mut Mem<'_>, fd: u32, out: u32) -> Outcome {
    let at = ctx
        .fds
        .file(fd)?
        .file
        .stream_position()
        .map_err(Errno::from_io)?;
    mem.write_u64(out, at)?;
    Ok(())
}

pub(super) fn sync(ctx: &mut WasiCtx, _mem: &mut Mem<'_>, fd: u32) -> Outcome {
    match ctx.fds.get(fd)? {
        Entry::File(f) => f.file.sync_all().map_err(Errno::from_io)?,
        Entry::Stdin | Entry::Output(_) => {}
        Entry::Dir(_) => return Err(Errno::Badf.into()),
    }
    Ok(())
}

pub(super) fn datasync(ctx: &mut WasiCtx, _mem: &mut Mem<'_>, fd: u32) -> Outcome {
    match ctx.fds.get(fd)? {
        Entry::File(f) => f.file.sync_data().map_err(Errno::from_io)?,
        Entry::Stdin | Entry::Output(_) => {}
        Entry::Dir(_) => return Err(Errno::Badf.into()),
    }
    Ok(())
}

pub(super) fn advise(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    offset: u64,
    len: u64,
    advice: u32,
) -> Outcome {
    use rustix::fs::Advice;
    let advice = match advice {
        0 => Advice::Normal,
        1 => Advice::Sequential,
        2 => Advice::Random,
        3 => Advice::WillNeed,
        4 => Advice::DontNeed,
        5 => Advice::NoReuse,
        _ => return Err(Errno::Inval.into()),
    };
    let f = ctx.fds.file(fd)?;
    rustix::fs::fadvise(&f.file, offset, std::num::NonZeroU64::new(len), advice)
        .map_err(Errno::from)?;
    Ok(())
}

/// Not supported, as in wasi-common (it was dropped from WASI); `EBADF` for a non-file.
pub(super) fn allocate(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    _offset: u64,
    _len: u64,
) -> Outcome {
    match ctx.fds.get(fd)? {
        Entry::Dir(_) => Err(Errno::Badf.into()),
        _ => Err(Errno::Notsup.into()),
    }
}

pub(super) fn fdstat_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, fd: u32, out: u32) -> Outcome {
    let bytes = match ctx.fds.get(fd)? {
        Entry::Stdin => abi::fdstat(
            FileType::Unknown,
            0,
            rights::FD_READ | rights::POLL_FD_READWRITE,
            0,
        ),
        Entry::Output(_) => abi::fdstat(
            FileType::Unknown,
            0,
            rights::FD_WRITE | rights::POLL_FD_READWRITE,
            0,
        ),
        Entry::File(f) => {
            let filetype =
                FileType::from_mode(rustix::fs::fstat(&f.file).map_err(Errno::from)?.st_mode);
            let flags = file_fdflags(rustix::fs::fcntl_getfl(&f.file).map_err(Errno::from)?);
            let mut base = 0;
            if f.read {
                base |= rights::FILE_READ;
            }
            if f.write {
                base |= rights::FILE_WRITE;
            }
            abi::fdstat(filetype, flags, base, 0)
        }
        Entry::Dir(_) => abi::fdstat(
            FileType::Directory,
            0,
            rights::DIR,
            rights::DIR | rights::FILE_READ | rights::FILE_WRITE,
        ),
    };
    mem.write(out, &bytes)?;
    Ok(())
}

/// The `fdflags` of a host file's status flags.
fn file_fdflags(flags: OFlags) -> u16 {
    let mut out = 0;
    for (host, wasi) in [
        (OFlags::APPEND, FDFLAGS_APPEND),
        (OFlags::NONBLOCK, FDFLAGS_NONBLOCK),
        (OFlags::DSYNC, FDFLAGS_DSYNC),
        (OFlags::SYNC, FDFLAGS_SYNC),
        (OFlags::RSYNC, FDFLAGS_RSYNC),
    ] {
        if flags.contains(host) {
            out |= wasi;
        }
    }
    out
}

/// Only `APPEND` and `NONBLOCK` can change after opening, as in wasi-common.
pub(super) fn fdstat_set_flags(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    flags: u32,
) -> Outcome {
    let flags = u16::try_from(flags).map_err(|_| Errno::Inval)?;
    let f = ctx.fds.file(fd)?;
    if flags & (FDFLAGS_DSYNC | FDFLAGS_SYNC | FDFLAGS_RSYNC) != 0 {
        return Err(Errno::Inval.into());
    }
    if flags & FDFLAGS_APPEND != 0 && f.read_only {
        return Err(Errno::Rofs.into());
    }
    let mut host = OFlags::empty();
    if flags & FDFLAGS_APPEND != 0 {
        host |= OFlags::APPEND;
    }
    if flags & FDFLAGS_NONBLOCK != 0 {
        host |= OFlags::NONBLOCK;
    }
    rustix::fs::fcntl_setfl(&f.file, host).map_err(Errno::from)?;
    Ok(())
}

/// Rights are advisory in preview 1 practice: accepted on any open descriptor, as in wasi-common.
pub(super) fn fdstat_set_rights(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    _base: u64,
    _inheriting: u64,
) -> Outcome {
    ctx.fds.get(fd)?;
    Ok(())
}

pub(super) fn filestat_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, fd: u32, out: u32) -> Outcome {
    let stat = match ctx.fds.get(fd)? {
        Entry::Stdin | Entry::Output(_) => Filestat {
            dev: 0,
            ino: 0,
            filetype: FileType::Unknown,
            nlink: 0,
            size: 0,
            atim: 0,
            mtim: 0,
            ctim: 0,
        },
        Entry::File(f) => Filestat::of(&f.file.metadata().map_err(Errno::from_io)?),
        Entry::Dir(OpenDir::Host { dir, .. }) => Filestat::of(&host::fd_metadata(dir.as_fd())?),
        Entry::Dir(OpenDir::Virtual(at)) => virtual_stat(at),
    };
    mem.write(out, &stat.to_bytes())?;
    Ok(())
}

/// The stat of a directory of the mount table.
pub(super) fn virtual_stat(at: &[String]) -> Filestat {
    Filestat {
        dev: 0,
        ino: virtual_inode(at),
        filetype: FileType::Directory,
        nlink: 1,
        size: 0,
        atim: 0,
        mtim: 0,
        ctim: 0,
    }
}

pub(super) fn filestat_set_size(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    size: u64,
) -> Outcome {
    let f = ctx.fds.file(fd)?;
    if f.read_only {
        return Err(Errno::Rofs.into());
    }
    if !f.write {
        return Err(Errno::Badf.into());
    }
    f.file.set_len(size).map_err(Errno::from_io)?;
    Ok(())
}

pub(super) fn filestat_set_times(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    atim: u64,
    mtim: u64,
    flags: u32,
) -> Outcome {
    let times = timestamps(atim, mtim, flags)?;
    match ctx.fds.get(fd)? {
        Entry::File(f) if f.read_only => Err(Errno::Rofs.into()),
        Entry::File(f) => rustix::fs::futimens(&f.file, &times).map_err(|e| Errno::from(e).into()),
        Entry::Dir(
            OpenDir::Host {
                writable: false, ..
            }
            | OpenDir::Virtual(_),
        ) => Err(Errno::Rofs.into()),
        Entry::Dir(OpenDir::Host { dir, .. }) => {
            rustix::fs::futimens(dir, &times).map_err(|e| Errno::from(e).into())
        }
        Entry::Stdin | Entry::Output(_) => Err(Errno::Badf.into()),
    }
}

/// The host timestamps for `fstflags` (`ATIM` 1, `ATIM_NOW` 2, `MTIM` 4, `MTIM_NOW` 8).
pub(super) fn timestamps(
    atim: u64,
    mtim: u64,
    flags: u32,
) -> Result<rustix::fs::Timestamps, Errno> {
    let one = |value: u64, set: bool, now: bool| -> Result<rustix::fs::Timespec, Errno> {
        let (tv_sec, tv_nsec) = match (set, now) {
            (true, true) => return Err(Errno::Inval),
            (true, false) => (
                i64::try_from(value / 1_000_000_000).map_err(|_| Errno::Overflow)?,
                (value % 1_000_000_000) as _,
            ),
            (false, true) => (0, rustix::fs::UTIME_NOW),
            (false, false) => (0, rustix::fs::UTIME_OMIT),
        };
        Ok(rustix::fs::Timespec { tv_sec, tv_nsec })
    };
    Ok(rustix::fs::Timestamps {
        last_access: one(atim, flags & 1 != 0, flags & 2 != 0)?,
        last_modification: one(mtim, flags & 4 != 0, flags & 8 != 0)?,
    })
}

pub(super) fn prestat_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, fd: u32, out: u32) -> Outcome {
    ctx.fds.get(fd)?;
    if !ctx.fds.preopen(fd) {
        return Err(Errno::Badf.into());
    }
    mem.write(out, &abi::prestat_dir(PREOPEN.len() as u32))?;
    Ok(())
}

pub(super) fn prestat_dir_name(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    buf: u32,
    len: u32,
) -> Outcome {
    match ctx.fds.get(fd) {
        Ok(Entry::Dir(_)) => {}
        _ => return Err(Errno::Notdir.into()),
    }
    if !ctx.fds.preopen(fd) {
        return Err(Errno::Notsup.into());
    }
    if PREOPEN.len() > len as usize {
        return Err(Errno::Nametoolong.into());
    }
    mem.write(buf, PREOPEN.as_bytes())?;
    Ok(())
}

/// Lists a directory from `cookie` on: `.` and `..` first, then the entries; each dirent's
/// `d_next` is the cookie of the entry after it. Like wasi-common, a buffer that cannot hold
/// the next entry whole is filled up to its end, which tells libc to call again from the last
/// cookie it read completely.
pub(super) fn readdir(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    fd: u32,
    buf: u32,
    len: u32,
    cookie: u64,
    out: u32,
) -> Outcome {
    let entries = match ctx.fds.get(fd)? {
        Entry::Dir(OpenDir::Virtual(at)) => {
            let here = virtual_inode(at);
            let parent = virtual_inode(&at[..at.len().saturating_sub(1)]);
            let mut list = vec![
                (here, FileType::Directory, ".".to_owned()),
                (parent, FileType::Directory, "..".to_owned()),
            ];
            list.extend(ctx.mounts.virtual_children(at).into_iter().map(|e| {
                let filetype = if e.is_dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                (e.inode, filetype, e.name)
            }));
            list
        }
        Entry::Dir(OpenDir::Host { dir, .. }) => {
            let here = host::fd_metadata(dir.as_fd())?;
            let ino = std::os::unix::fs::MetadataExt::ino(&here);
            let mut list = vec![
                (ino, FileType::Directory, ".".to_owned()),
                (ino, FileType::Directory, "..".to_owned()),
            ];
            list.extend(host::entries(dir.as_fd())?);
            list
        }
        _ => return Err(Errno::Badf.into()),
    };
    let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
    let mut used: u32 = 0;
    for (index, (ino, filetype, name)) in entries.into_iter().enumerate().skip(skip) {
        let name_len = u32::try_from(name.len()).map_err(|_| Errno::Nametoolong)?;
        let head = abi::dirent(index as u64 + 1, ino, name_len, filetype);
        for part in [&head[..], name.as_bytes()] {
            let room = (len - used) as usize;
            let take = part.len().min(room);
            mem.write(buf.checked_add(used).ok_or(Errno::Fault)?, &part[..take])?;
            used += take as u32;
            if take < part.len() {
                mem.write_u32(out, len)?;
                return Ok(());
            }
        }
    }
    mem.write_u32(out, used)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_times_flags_map_to_host_timestamps() {
        let t = timestamps(1_500_000_000, 0, 1 | 8).unwrap();
        assert_eq!(t.last_access.tv_sec, 1);
        assert_eq!(t.last_access.tv_nsec, 500_000_000);
        assert_eq!(t.last_modification.tv_nsec, rustix::fs::UTIME_NOW);
        let t = timestamps(0, 0, 0).unwrap();
        assert_eq!(t.last_access.tv_nsec, rustix::fs::UTIME_OMIT);
        assert_eq!(timestamps(0, 0, 1 | 2).unwrap_err(), Errno::Inval);
    }
}
