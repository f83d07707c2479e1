//! Host filesystem calls below one directory descriptor, which is how a guest path reaches the
//! host: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so neither `..` nor a symlink
//! (absolute or relative) leads outside the directory, the same rule cap-std applied before.
//! Calls that take a final name (mkdir, unlink, rename, ...) resolve its parent that way and then
//! act on the single name in it, which the kernel never follows.
//!
//! A resolution that would leave the directory is `EPERM`, as cap-std's escape error was.
//!
//! Kernels before 5.6 have no `openat2` (`ENOSYS`): there [`walk`] resolves the path one
//! component at a time with `O_NOFOLLOW`, reading symlinks itself and keeping `..` on its own
//! stack of directories, as cap-std did, with the same outcome for every path.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::Errno;

/// How a walk below a mount may go: never above it, never through `/proc` magic links.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` below `base`. `EXDEV` (the path would leave `base`) becomes `EPERM`; `EAGAIN`
/// (a concurrent rename raced the walk) is retried a few times.
pub(in crate::executor::wasm) fn open_beneath(
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
            Err(rustix::io::Errno::NOSYS) => return walk(base, path, flags, mode),
            Err(e) => return Err(Errno::from(e)),
        }
    }
}

/// Most symlinks one resolution follows, as Linux's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// [`open_beneath`] without `openat2`: every component is opened with `O_NOFOLLOW` below a
/// descriptor this walk holds; a symlink's text is spliced into the rest of the path (an
/// absolute one is an escape); `..` pops the walk's own stack and never goes above `base`.
/// Trailing slashes never reach the kernel (it would follow a final symlink for them): they
/// become `O_DIRECTORY`.
pub(super) fn walk(
    base: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    if path.starts_with('/') {
        return Err(Errno::Perm);
    }
    let follow = !flags.contains(OFlags::NOFOLLOW);
    let flags = flags | OFlags::NOFOLLOW;
    let mut pending = VecDeque::new();
    splice(&mut pending, path);
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some((name, dir_only)) = pending.pop_front() {
        let cur = stack.last().map_or(base, |fd| fd.as_fd());
        if name == ".." {
            stack.pop().ok_or(Errno::Perm)?;
            continue;
        }
        let last = pending.is_empty();
        let attempt = if last {
            let flags = if dir_only {
                flags | OFlags::DIRECTORY
            } else {
                flags
            };
            rustix::fs::openat(cur, name.as_str(), flags, mode)
        } else {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(cur, name.as_str(), flags, Mode::empty())
        };
        let is_link = match &attempt {
            // O_PATH | O_NOFOLLOW opens a final link itself.
            Ok(fd) => {
                last && flags.contains(OFlags::PATH)
                    && rustix::fs::fstat(fd).is_ok_and(|s| {
                        rustix::fs::FileType::from_raw_mode(s.st_mode)
                            == rustix::fs::FileType::Symlink
                    })
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                rustix::fs::readlinkat(cur, name.as_str(), Vec::new()).is_ok()
            }
            Err(_) => false,
        };
        if is_link && (follow || !last || dir_only) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::Loop);
            }
            let target =
                rustix::fs::readlinkat(cur, name.as_str(), Vec::new()).map_err(Errno::from)?;
            let target = target.to_str().map_err(|_| Errno::Ilseq)?;
            if target.starts_with('/') {
                return Err(Errno::Perm);
            }
            let target = if dir_only {
                format!("{target}/")
            } else {
                target.to_owned()
            };
            splice(&mut pending, &target);
            continue;
        }
        let fd = attempt.map_err(Errno::from)?;
        if last {
            return Ok(fd);
        }
        stack.push(fd);
    }
    // The path ended at a directory of the walk (`.`, `..`, a link to one).
    let cur = stack.last().map_or(base, |fd| fd.as_fd());
    rustix::fs::openat(cur, ".", flags, mode).map_err(Errno::from)
}

/// Puts the components of `text` in front of `pending`, as `(name, followed by a slash)`.
fn splice(pending: &mut VecDeque<(String, bool)>, text: &str) {
    let parts: Vec<&str> = text.split('/').collect();
    let mut front = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == "." {
            continue;
        }
        let slash = parts[i + 1..].iter().any(|p| p.is_empty() || *p == ".") && i + 1 < parts.len();
        front.push((part.to_string(), slash));
    }
    for item in front.into_iter().rev() {
        pending.push_front(item);
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
            rustix::fs::FileType::Unknown => {
                // Some file systems leave d_type out; ask for this one name (never followed).
                rustix::fs::statat(
                    dir,
                    entry.file_name(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_or(FileType::Unknown, |s| FileType::from_mode(s.st_mode))
            }
            kind => FileType::from_host(kind),
        };
        list.push((entry.ino(), filetype, name));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `walk` (old kernels) and `openat2` agree on every escape and every legitimate path.
    #[test]
    fn the_walk_without_openat2_contains_like_openat2() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mount");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("x"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "host").unwrap();
        let link =
            |target: &str, name: &str| std::os::unix::fs::symlink(target, root.join(name)).unwrap();
        link(dir.path().join("secret").to_str().unwrap(), "abs");
        link("../secret", "rel");
        link("sub/../x", "inside");
        link("sub", "to-sub");
        link("loop2", "loop1");
        link("loop1", "loop2");
        link("..", "up");
        let base =
            rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let read = OFlags::RDONLY;
        let cases: [(&str, OFlags, Result<(), Errno>); 16] = [
            ("x", read, Ok(())),
            ("sub/../x", read, Ok(())),
            ("inside", read, Ok(())),
            ("to-sub/deeper", read, Ok(())),
            ("to-sub/", read, Ok(())),
            ("sub/deeper/../..", read, Ok(())),
            ("abs", read, Err(Errno::Perm)),
            ("rel", read, Err(Errno::Perm)),
            ("up/secret", read, Err(Errno::Perm)),
            ("up", read, Err(Errno::Perm)),
            ("..", read, Err(Errno::Perm)),
            ("sub/../../secret", read, Err(Errno::Perm)),
            ("loop1", read, Err(Errno::Loop)),
            ("abs", read | OFlags::NOFOLLOW, Err(Errno::Loop)),
            ("x/", read, Err(Errno::Notdir)),
            ("missing", read, Err(Errno::Noent)),
        ];
        for (path, flags, want) in cases {
            let walked = walk(base.as_fd(), path, flags | OFlags::CLOEXEC, Mode::empty()).map(drop);
            assert_eq!(walked, want, "walk {path}");
            let beneath = open_beneath(base.as_fd(), path, flags).map(drop);
            assert_eq!(beneath, want, "openat2 {path}");
        }
        // A link opened as a link (O_PATH | O_NOFOLLOW) is the link, on both ways.
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        assert!(walk(base.as_fd(), "abs", flags, Mode::empty()).is_ok());
        assert!(open_beneath(base.as_fd(), "abs", flags).is_ok());
        // Creating through a dangling link inside the mount creates inside it.
        link("made", "dangling");
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC;
        walk(base.as_fd(), "dangling", create, Mode::from_raw_mode(0o644)).unwrap();
        assert!(root.join("made").exists());
        assert!(!dir.path().join("made").exists());
    }
}
