//! Host filesystem calls below one directory descriptor, which is how a guest path reaches the
//! host: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so neither `..` nor a symlink
//! (absolute or relative) leads outside the directory, the same rule cap-std applied before.
//! Calls that take a final name (mkdir, unlink, rename, ...) resolve its parent that way and then
//! act on the single name in it, which the kernel never follows.
//!
//! A resolution that would leave the directory is `EPERM`, as cap-std's escape error was.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::Errno;

/// How a walk below a mount may go: never above it, never through `/proc` magic links.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` below `base`. `EXDEV` (the path would leave `base`) becomes `EPERM`; `EAGAIN`
/// (a concurrent rename raced the walk) is retried a few times.
pub(super) fn open_beneath(
    base: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    // openat2 refuses flags that mean nothing for O_PATH (EINVAL), unlike openat.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    };
    // openat2 refuses a mode without O_CREAT (EINVAL), unlike openat.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(0o666)
    } else {
        Mode::empty()
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(base, path, flags, mode, BENEATH) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::AGAIN) if tries < 8 => tries += 1,
            Err(rustix::io::Errno::XDEV) => return Err(Errno::Perm),
            Err(e) => return Err(Errno::from(e)),
        }
    }
}

/// The parent directory of `path` (below `base`) and the final name to act on in it. A path
/// ending in `.` or `..` acts on `.` of the directory it names, so the kernel answers as POSIX
/// does (`EEXIST` for mkdir, `EINVAL` for rmdir, ...).
pub(super) fn parent<'p>(base: BorrowedFd<'_>, path: &'p str) -> Result<(OwnedFd, &'p str), Errno> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        // "" is ENOENT; "/" (absolute) never reaches here.
        return Err(Errno::Noent);
    }
    let (dir, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (".", trimmed),
    };
    if name == "." || name == ".." {
        return Ok((
            open_beneath(base, trimmed, OFlags::PATH | OFlags::DIRECTORY)?,
            ".",
        ));
    }
    let dir = if dir.is_empty() { "." } else { dir };
    Ok((
        open_beneath(base, dir, OFlags::PATH | OFlags::DIRECTORY)?,
        name,
    ))
}

/// The metadata of `path` below `base`, of the link itself unless `follow`.
pub(super) fn stat(
    base: BorrowedFd<'_>,
    path: &str,
    follow: bool,
) -> Result<std::fs::Metadata, Errno> {
    let flags = if follow {
        OFlags::PATH
    } else {
        OFlags::PATH | OFlags::NOFOLLOW
    };
    let fd = open_beneath(base, path, flags)?;
    fd_metadata(fd.as_fd())
}

/// The metadata of an open descriptor (an `O_PATH` one included).
pub(super) fn fd_metadata(fd: BorrowedFd<'_>) -> Result<std::fs::Metadata, Errno> {
    let file = std::fs::File::from(fd.try_clone_to_owned().map_err(Errno::from_io)?);
    file.metadata().map_err(Errno::from_io)
}

/// Sets the times of `path` below `base`: through an open descriptor when following links, so a
/// link can never point the kernel outside `base`; on the link itself otherwise.
pub(super) fn set_times(
    base: BorrowedFd<'_>,
    path: &str,
    times: &rustix::fs::Timestamps,
    follow: bool,
) -> Result<(), Errno> {
    if follow {
        let fd = open_beneath(base, path, OFlags::RDONLY)?;
        return rustix::fs::futimens(&fd, times).map_err(Errno::from);
    }
    let (dir, name) = parent(base, path)?;
    rustix::fs::utimensat(&dir, name, times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map_err(Errno::from)
}

/// The entries of the directory `dir` as `(inode, type, name)`, without `.` and `..`, in the
/// kernel's order (stable while the directory does not change, which the cookies rely on).
pub(super) fn entries(
    dir: BorrowedFd<'_>,
) -> Result<Vec<(u64, super::abi::FileType, String)>, Errno> {
    use super::abi::FileType;
    let mut list = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir).map_err(Errno::from)?;
    while let Some(entry) = reader.read() {
        let entry = entry.map_err(Errno::from)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let filetype = match entry.file_type() {
            rustix::fs::FileType::RegularFile => FileType::RegularFile,
            rustix::fs::FileType::Directory => FileType::Directory,
            rustix::fs::FileType::Symlink => FileType::SymbolicLink,
            rustix::fs::FileType::CharacterDevice => FileType::CharacterDevice,
            rustix::fs::FileType::BlockDevice => FileType::BlockDevice,
            rustix::fs::FileType::Socket => FileType::SocketStream,
            rustix::fs::FileType::Unknown => {
                // Some file systems leave d_type out; ask for this one name (never followed).
                rustix::fs::statat(
                    dir,
                    entry.file_name(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_or(FileType::Unknown, |s| FileType::from_mode(s.st_mode))
            }
            _ => FileType::Unknown,
        };
        list.push((entry.ino(), filetype, name));
    }
    Ok(list)
}
