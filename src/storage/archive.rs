//! Safe unpacking of gzip-compressed tarballs that come from someone else: inline inputs (a job author) and
//! published results (a compute node, unpacked by `cod job get`).
//!
//! It must never create, overwrite or expose anything outside the destination directory. The rules:
//! - entry paths must be relative and free of `..`; absolute paths and `..` are refused, never rewritten;
//! - device nodes, FIFOs and sparse files are refused: an input is data, not a way to reach host devices;
//! - nothing is ever written through a symlink: every parent of a created path must be a real directory, and an
//!   existing symlink in the way of a new entry is replaced, not followed;
//! - symlink targets must be relative and stay inside the destination. Each target is checked when it is read
//!   (lexically) and again after the whole archive is unpacked (resolving every link on disk), because a link
//!   can be aimed through another link created later (`y -> x/..` then `x -> .`);
//! - hard links must name a regular file already unpacked from the same archive;
//! - the total unpacked size, counting 512 bytes per entry header, is capped, which also bounds gzip bombs made
//!   of many empty entries.
//!
//! This is blocking code: async callers run it in `spawn_blocking`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use tar::EntryType;

/// What every entry costs against the size cap besides its data: the size of a tar header block.
const HEADER_COST: u64 = 512;

/// How many symlinks one resolution may pass through before it counts as a loop (Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: u32 = 40;

/// A tarball that could not be unpacked safely.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry (or a link's target) would land outside the destination.
    #[error("archive entry {entry:?} {reason}; refusing to unpack it")]
    Unsafe {
        /// The entry's path as stored in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry of a type that inputs and results may not contain.
    #[error(
        "archive entry {entry:?} is a {kind}; only files, directories and links may be unpacked"
    )]
    Forbidden {
        /// The entry's path as stored in the archive.
        entry: String,
        /// Its tar type, in words.
        kind: &'static str,
    },
    /// The archive unpacks to more than the cap.
    #[error("the archive unpacks to more than {limit} bytes")]
    TooLarge {
        /// The cap in bytes.
        limit: u64,
    },
    /// The stream is not a valid gzip-compressed tar archive.
    #[error("the archive is not a valid gzip-compressed tar stream")]
    Corrupt {
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation on the destination failed.
    #[error("{op} {path:?} failed while unpacking")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
        move |source| ArchiveError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn unsafe_entry(entry: &Path, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::Unsafe {
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// Unpacks the gzip-compressed tarball read from `reader` into `dest` (an existing directory), refusing
/// anything that could escape it (see the module docs), and returns the bytes unpacked (data plus 512 per
/// entry). Fails with [`ArchiveError::TooLarge`] once more than `limit` bytes would be unpacked.
///
/// On error, what was already unpacked stays in `dest` (the caller owns it and removes it), except symlinks
/// found to escape, which are removed before returning.
pub fn unpack_tar_gz(reader: impl Read, dest: &Path, limit: u64) -> Result<u64, ArchiveError> {
    unpack(reader, dest, limit, EscapingLinks::Refuse).map(|u| u.bytes)
}

/// What [`unpack_tar_gz_skipping_links`] did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Bytes unpacked (data plus 512 per entry).
    pub bytes: u64,
    /// Symlinks left out because they point outside the destination, with why.
    pub skipped_links: Vec<String>,
}

/// Like [`unpack_tar_gz`], but a symlink that would point outside `dest` (absolute, or climbing out through
/// `..` or other links) is left out and reported instead of failing the whole archive. For job results: a
/// job's output may hold such links (a Python virtualenv has absolute ones), and losing every other file for
/// them would be worse than losing the links. Everything else is refused as [`unpack_tar_gz`] refuses it.
pub fn unpack_tar_gz_skipping_links(
    reader: impl Read,
    dest: &Path,
    limit: u64,
) -> Result<Unpacked, ArchiveError> {
    unpack(reader, dest, limit, EscapingLinks::Skip)
}

/// What to do with a symlink that points outside the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EscapingLinks {
    /// Fail the archive.
    Refuse,
    /// Leave the link out and report it.
    Skip,
}

fn unpack(
    reader: impl Read,
    dest: &Path,
    limit: u64,
    escaping: EscapingLinks,
) -> Result<Unpacked, ArchiveError> {
    let mut skipped_links = Vec::new();
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let entries = archive
        .entries()
        .map_err(|source| ArchiveError::Corrupt { source })?;
    let mut total: u64 = 0;
    let mut symlinks: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|source| ArchiveError::Corrupt { source })?;
        let raw = entry
            .path()
            .map_err(|source| ArchiveError::Corrupt { source })?
            .into_owned();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // PAX global headers carry defaults for later entries (the tar crate applies what it understands);
            // they are not files.
            continue;
        }
        total = total
            .saturating_add(HEADER_COST)
            .saturating_add(entry.size());
        if total > limit {
            return Err(ArchiveError::TooLarge { limit });
        }
        let rel = safe_relative(&raw)?;
        if rel.as_os_str().is_empty() {
            // `./` (the archive's own root): dest already exists and keeps its own permissions.
            continue;
        }
        let target = dest.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644);
        match kind {
            EntryType::Directory => {
                ensure_parents(dest, &rel, &raw)?;
                unpack_dir(&target)?;
                // Owner rwx stays so that later entries can be written inside and the caller can delete it.
                set_mode(&target, (mode & 0o777) | 0o700)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                ensure_parents(dest, &rel, &raw)?;
                clear_path(&target)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(ArchiveError::io("creating file", &target))?;
                copy_entry(&mut entry, &mut file, &target)?;
                // setuid/setgid/sticky bits are dropped: an input has no business granting privileges.
                file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
                    .map_err(ArchiveError::io("setting permissions of", &target))?;
                if let Ok(mtime) = entry.header().mtime() {
                    // Best effort: a wrong timestamp is not worth failing a job over.
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
                }
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|source| ArchiveError::Corrupt { source })?
                    .ok_or_else(|| {
                        ArchiveError::unsafe_entry(&raw, "is a symlink without a target")
                    })?
                    .into_owned();
                if let Err(e) = check_link_lexically(&raw, &rel, &link) {
                    if escaping == EscapingLinks::Refuse {
                        return Err(e);
                    }
                    skipped_links.push(e.to_string());
                    continue;
                }
                ensure_parents(dest, &rel, &raw)?;
                clear_path(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(ArchiveError::io("creating symlink", &target))?;
                symlinks.push(rel);
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|source| ArchiveError::Corrupt { source })?
                    .ok_or_else(|| {
                        ArchiveError::unsafe_entry(&raw, "is a hard link without a target")
                    })?
                    .into_owned();
                let link_rel = safe_relative(&link).map_err(|_| {
                    ArchiveError::unsafe_entry(&raw, format!("is a hard link to {link:?}"))
                })?;
                // The target must be reachable through real directories only and be a regular file, so the
                // new name can only ever alias data this archive wrote.
                check_parents(dest, &link_rel, &raw)?;
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.file_type().is_file() => {}
                    _ => {
                        return Err(ArchiveError::unsafe_entry(
                            &raw,
                            format!(
                                "is a hard link to {link:?}, which is not a file unpacked earlier"
                            ),
                        ));
                    }
                }
                ensure_parents(dest, &rel, &raw)?;
                clear_path(&target)?;
                fs::hard_link(&source, &target)
                    .map_err(ArchiveError::io("creating hard link", &target))?;
            }
            EntryType::Char => return Err(forbidden(&raw, "character device")),
            EntryType::Block => return Err(forbidden(&raw, "block device")),
            EntryType::Fifo => return Err(forbidden(&raw, "FIFO")),
            EntryType::GNUSparse => return Err(forbidden(&raw, "sparse file")),
            _ => return Err(forbidden(&raw, "entry of an unknown type")),
        }
    }
    let escaped = audit_symlinks(dest, &symlinks);
    match escaping {
        EscapingLinks::Refuse => {
            if let Some(first) = escaped.into_iter().next() {
                return Err(first);
            }
        }
        EscapingLinks::Skip => skipped_links.extend(escaped.iter().map(ToString::to_string)),
    }
    Ok(Unpacked {
        bytes: total,
        skipped_links,
    })
}

fn forbidden(raw: &Path, kind: &'static str) -> ArchiveError {
    ArchiveError::Forbidden {
        entry: raw.display().to_string(),
        kind,
    }
}

/// The entry's path as plain relative components, or an error for absolute paths and `..`.
fn safe_relative(raw: &Path) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArchiveError::unsafe_entry(raw, "has a '..' component"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::unsafe_entry(raw, "has an absolute path"));
            }
        }
    }
    Ok(out)
}

/// Makes every parent of `rel` a real directory under `dest`, creating missing ones. A symlink or a file in the
/// way is refused: writing through a symlink is exactly how archives escape their destination.
fn ensure_parents(dest: &Path, rel: &Path, raw: &Path) -> Result<(), ArchiveError> {
    walk_parents(dest, rel, raw, true)
}

/// Like [`ensure_parents`], without creating anything: a missing parent is refused.
fn check_parents(dest: &Path, rel: &Path, raw: &Path) -> Result<(), ArchiveError> {
    walk_parents(dest, rel, raw, false)
}

fn walk_parents(dest: &Path, rel: &Path, raw: &Path, create: bool) -> Result<(), ArchiveError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut current = dest.to_path_buf();
    for component in parent.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ArchiveError::unsafe_entry(
                    raw,
                    format!(
                        "would be written through the symlink {:?}",
                        current.strip_prefix(dest).unwrap_or(&current)
                    ),
                ));
            }
            Ok(_) => {
                return Err(ArchiveError::Io {
                    op: "creating directory",
                    path: current,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a non-directory is in the way",
                    ),
                });
            }
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current)
                    .map_err(ArchiveError::io("creating directory", &current))?;
            }
            Err(source) => {
                return Err(ArchiveError::Io {
                    op: "inspecting",
                    path: current,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Copies an entry's data, telling a broken archive (read side) from a failing disk (write side).
fn copy_entry(
    entry: &mut impl Read,
    file: &mut fs::File,
    target: &Path,
) -> Result<(), ArchiveError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ArchiveError::Corrupt { source }),
        };
        file.write_all(&buf[..n])
            .map_err(ArchiveError::io("writing", target))?;
    }
}

/// Creates the directory `target` unless it already is one; a symlink in its place is replaced, not followed.
fn unpack_dir(target: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_dir() => return Ok(()),
        Ok(_) => clear_path(target)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ArchiveError::Io {
                op: "inspecting",
                path: target.to_owned(),
                source,
            });
        }
    }
    fs::create_dir(target).map_err(ArchiveError::io("creating directory", target))
}

/// Removes a file or symlink at `target` so that a later entry with the same name replaces it (tar's
/// last-one-wins rule). `remove_file` unlinks a symlink itself, never what it points to. A directory in the
/// way is an error: replacing it would silently drop what earlier entries put in it.
fn clear_path(target: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_dir() => Err(ArchiveError::Io {
            op: "replacing",
            path: target.to_owned(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
        }),
        Ok(_) => fs::remove_file(target).map_err(ArchiveError::io("replacing", target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ArchiveError::Io {
            op: "inspecting",
            path: target.to_owned(),
            source,
        }),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ArchiveError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ArchiveError::io("setting permissions of", path))
}

/// First check of a symlink, on the archive alone: the target must be relative and, read as plain path
/// components from the link's directory, stay inside the destination. Catches the plain hostile cases early,
/// with a clear message; [`audit_symlinks`] catches links aimed through other links.
fn check_link_lexically(raw: &Path, rel: &Path, link: &Path) -> Result<(), ArchiveError> {
    if link.has_root() {
        return Err(ArchiveError::unsafe_entry(
            raw,
            format!("is a symlink to the absolute path {link:?}"),
        ));
    }
    let mut depth = rel.parent().map(|p| p.components().count()).unwrap_or(0);
    for component in link.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    ArchiveError::unsafe_entry(
                        raw,
                        format!("is a symlink to {link:?}, outside the archive"),
                    )
                })?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::unsafe_entry(
                    raw,
                    format!("is a symlink to the absolute path {link:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Second check of every symlink, once the tree is final: resolve each one on disk, following links inside
/// `dest` the way the kernel would, and report every one that climbs above `dest`. Offending links are removed
/// so that nothing escaping is left behind.
fn audit_symlinks(dest: &Path, symlinks: &[PathBuf]) -> Vec<ArchiveError> {
    let mut escaped = Vec::new();
    for rel in symlinks {
        let path = dest.join(rel);
        // A link replaced by a later entry is no longer there (or no longer a link).
        let is_link = fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            continue;
        }
        if let Err(reason) = resolves_inside(dest, rel) {
            // Removal failing would leave the link in place, which the caller's cleanup of `dest` handles; the
            // error below already refuses the archive.
            let _ = fs::remove_file(&path);
            escaped.push(ArchiveError::unsafe_entry(rel, reason));
        }
    }
    escaped
}

/// Resolves the symlink at `dest/rel` component by component, following links found on disk, and reports
/// whether the result stays inside `dest`. Components that do not exist are taken as plain names: nothing more
/// will be created, so they cannot turn into links later.
fn resolves_inside(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut stack: Vec<OsString> = rel
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    let first = fs::read_link(dest.join(rel))
        .map_err(|e| format!("is a symlink that cannot be read: {e}"))?;
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut hops = 0u32;
    push_front_components(&mut pending, &first)
        .map_err(|()| format!("is a symlink to the absolute path {first:?}"))?;
    while let Some(part) = pending.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            if stack.pop().is_none() {
                return Err(format!(
                    "is a symlink to {first:?}, which leads outside the archive through other links"
                ));
            }
            continue;
        }
        stack.push(part);
        let current: PathBuf = stack.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let is_link = fs::symlink_metadata(&current)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if is_link {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(format!("is a symlink to {first:?}, which loops"));
            }
            let next = fs::read_link(&current)
                .map_err(|e| format!("is a symlink through {current:?}, unreadable: {e}"))?;
            stack.pop();
            push_front_components(&mut pending, &next).map_err(|()| {
                format!("is a symlink to {first:?}, which leads to the absolute path {next:?}")
            })?;
        }
    }
    Ok(())
}

/// Queues `link`'s components ahead of what is still pending; `Err` for an absolute link.
fn push_front_components(pending: &mut VecDeque<OsString>, link: &Path) -> Result<(), ()> {
    if link.has_root() {
        return Err(());
    }
    for component in link.components().rev() {
        pending.push_front(component.as_os_str().to_owned());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// One entry of a hand-built (possibly hostile) tarball. Paths are written into the raw header bytes so that
    /// the tar crate's own safety checks on the writing side do not stop us from building bad archives.
    pub(crate) enum TestEntry<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// Builds a gzip-compressed tarball from `entries`.
    pub(crate) fn build_tar_gz(entries: &[TestEntry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            let (name, data, kind, link): (&str, &[u8], EntryType, Option<&str>) = match entry {
                TestEntry::File(n, d) => (n, d, EntryType::Regular, None),
                TestEntry::Dir(n) => (n, b"", EntryType::Directory, None),
                TestEntry::Symlink(n, t) => (n, b"", EntryType::Symlink, Some(t)),
                TestEntry::HardLink(n, t) => (n, b"", EntryType::Link, Some(t)),
                TestEntry::Fifo(n) => (n, b"", EntryType::Fifo, None),
            };
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder.into_inner().expect("tar").finish().expect("gzip")
    }

    fn unpack(entries: &[TestEntry<'_>]) -> (tempfile::TempDir, Result<u64, ArchiveError>) {
        let root = tempfile::tempdir().expect("tempdir");
        let dest = root.path().join("dest");
        fs::create_dir(&dest).expect("dest");
        let result = unpack_tar_gz(build_tar_gz(entries).as_slice(), &dest, 1 << 20);
        (root, result)
    }

    /// Everything under `root` except `root/dest/**`, so tests can assert that nothing landed outside.
    fn outside_entries(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root)
            .expect("read root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest")
            .collect();
        names.sort();
        names
    }

    #[test]
    fn unpacks_files_dirs_and_inner_links() {
        let (root, result) = unpack(&[
            TestEntry::Dir("d/"),
            TestEntry::File("d/a.txt", b"hello"),
            TestEntry::File("./top", b"x"),
            TestEntry::Symlink("d/link", "a.txt"),
            TestEntry::Symlink("up", "d/../top"),
            TestEntry::HardLink("d/hard", "d/a.txt"),
        ]);
        result.expect("unpack");
        let dest = root.path().join("dest");
        assert_eq!(fs::read(dest.join("d/a.txt")).expect("a"), b"hello");
        assert_eq!(fs::read(dest.join("d/link")).expect("link"), b"hello");
        assert_eq!(fs::read(dest.join("d/hard")).expect("hard"), b"hello");
        assert_eq!(fs::read(dest.join("up")).expect("up"), b"x");
    }

    #[test]
    fn refuses_parent_components_and_writes_nothing_outside() {
        let (root, result) = unpack(&[TestEntry::File("../evil", b"x")]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
        assert!(outside_entries(root.path()).is_empty());
    }

    #[test]
    fn refuses_absolute_paths() {
        let (_root, result) = unpack(&[TestEntry::File("/tmp/cod-evil", b"x")]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
        assert!(!Path::new("/tmp/cod-evil").exists());
    }

    #[test]
    fn refuses_symlink_escape_and_never_writes_through_it() {
        let (root, result) = unpack(&[
            TestEntry::Symlink("esc", ".."),
            TestEntry::File("esc/evil", b"x"),
        ]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
        assert!(outside_entries(root.path()).is_empty());

        let (root, result) = unpack(&[TestEntry::Symlink("abs", "/etc")]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
        assert!(!root.path().join("dest/abs").exists());
    }

    #[test]
    fn result_mode_leaves_escaping_links_out_and_keeps_the_rest() {
        let root = tempfile::tempdir().expect("tempdir");
        let dest = root.path().join("dest");
        fs::create_dir(&dest).expect("dest");
        let archive = build_tar_gz(&[
            TestEntry::File("keep.txt", b"kept"),
            TestEntry::Symlink("abs", "/etc/passwd"),
            TestEntry::Symlink("up", "../../x"),
            TestEntry::Symlink("y", "x/.."),
            TestEntry::Symlink("x", "."),
            TestEntry::Symlink("inner", "keep.txt"),
        ]);
        let unpacked =
            unpack_tar_gz_skipping_links(archive.as_slice(), &dest, 1 << 20).expect("unpacks");
        assert_eq!(fs::read(dest.join("keep.txt")).expect("kept"), b"kept");
        assert_eq!(fs::read(dest.join("inner")).expect("inner link"), b"kept");
        for gone in ["abs", "up", "y"] {
            assert!(
                fs::symlink_metadata(dest.join(gone)).is_err(),
                "{gone} is left out"
            );
        }
        assert_eq!(
            unpacked.skipped_links.len(),
            3,
            "{:?}",
            unpacked.skipped_links
        );
        assert!(unpacked.skipped_links[0].contains("/etc/passwd"));
        assert!(outside_entries(root.path()).is_empty());

        // Everything else is refused as before.
        let archive = build_tar_gz(&[TestEntry::File("../evil", b"x")]);
        assert!(unpack_tar_gz_skipping_links(archive.as_slice(), &dest, 1 << 20).is_err());
    }

    #[test]
    fn refuses_writing_through_an_inner_symlink() {
        // The link itself stays inside, but writing through links is never done.
        let (_root, result) = unpack(&[
            TestEntry::Dir("d/"),
            TestEntry::Symlink("l", "d"),
            TestEntry::File("l/f", b"x"),
        ]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn refuses_links_aimed_through_later_links() {
        // `y -> x/..` looks harmless until `x -> .` exists: then y is dest's parent.
        let (root, result) = unpack(&[
            TestEntry::Symlink("y", "x/.."),
            TestEntry::Symlink("x", "."),
        ]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
        assert!(
            fs::symlink_metadata(root.path().join("dest/y")).is_err(),
            "the escaping link is removed"
        );
    }

    #[test]
    fn refuses_hard_links_outside_or_to_nothing() {
        let (_root, result) = unpack(&[TestEntry::HardLink("h", "../../etc/passwd")]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
        let (_root, result) = unpack(&[TestEntry::HardLink("h", "missing")]);
        assert!(
            matches!(result, Err(ArchiveError::Unsafe { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn refuses_special_files() {
        let (_root, result) = unpack(&[TestEntry::Fifo("pipe")]);
        assert!(
            matches!(result, Err(ArchiveError::Forbidden { kind: "FIFO", .. })),
            "{result:?}"
        );
    }

    #[test]
    fn stops_at_the_size_cap() {
        let root = tempfile::tempdir().expect("tempdir");
        let big = vec![0u8; 10_000];
        let data = build_tar_gz(&[TestEntry::File("big", &big)]);
        let result = unpack_tar_gz(data.as_slice(), root.path(), 4096);
        assert!(
            matches!(result, Err(ArchiveError::TooLarge { limit: 4096 })),
            "{result:?}"
        );
        assert!(!root.path().join("big").exists());
    }

    #[test]
    fn rejects_garbage() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&[7u8; 1000]).expect("write");
        let data = gz.finish().expect("gzip");
        let result = unpack_tar_gz(data.as_slice(), root.path(), 1 << 20);
        assert!(
            matches!(result, Err(ArchiveError::Corrupt { .. })),
            "{result:?}"
        );
        let result = unpack_tar_gz(&b"not gzip"[..], root.path(), 1 << 20);
        assert!(
            matches!(result, Err(ArchiveError::Corrupt { .. })),
            "{result:?}"
        );
    }
}
