//! Per-execution root filesystems built from unpacked layers ([`crate::oci::unpack`] output, overlayfs format).
//!
//! Where overlayfs works, `<work>/rootfs` is an overlay mount: the layers are its lower dirs (top first), and
//! `<work>/rootfs.upper` and `<work>/rootfs.work` its upper and work dirs. The upper dir is writable so the
//! runtime can create mount points; the container itself gets a read-only root from its spec. The upper dir's
//! root takes the top layer's root owner and mode (the merged root shows the upper's), and the mount is
//! `volatile` where the kernel has it (5.10+): the upper dir dies with the execution, so it is never synced.
//!
//! Whether overlay mounting works is probed once per process (it needs root in the initial user namespace, a
//! kernel with overlayfs, and an upper-capable file system under `work`). Where it does not, or a mount fails
//! anyway, the layers are merged bottom to top into a plain directory at `<work>/rootfs`: a 0/0 character
//! device deletes what lower layers put at its path, an opaque directory first clears it, and files are copied
//! with owner, mode and time (hard links become separate copies). Every write of the copy is resolved inside
//! the rootfs by `pathrs`, so a symlink from a lower layer can never redirect an upper layer's write outside it.
//!
//! Either way the layer directories are never written. Zero layers give an empty `rootfs` directory.
//!
//! Invariant: a [`RootFs`] owns `<work>/rootfs`, `<work>/rootfs.upper` and `<work>/rootfs.work` and nothing else
//! under `work`. Dropping one without [`RootFs::release`] leaves its mount behind; [`sweep`] removes such
//! leftovers after a crash.
//!
//! This is blocking code: async callers run it in `spawn_blocking`.

use std::ffi::OsString;
use std::fs::{self, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use pathrs::InodeType;

use super::unpack::inroot::{InRoot, Kind, Meta, OPAQUE_XATTR};

/// Name of the root filesystem (the mount point, or the copy) under `work`.
const ROOTFS: &str = "rootfs";
/// Overlay upper dir under `work`.
const UPPER: &str = "rootfs.upper";
/// Overlay work dir under `work`.
const WORKDIR: &str = "rootfs.work";

/// Mount options must fit in one page with the kernel's own additions; beyond this the lower dirs are passed
/// as short `/proc/self/fd/N` paths instead.
const MAX_MOUNT_OPTIONS: usize = 3800;

/// Whether overlay mounts work in this process, probed once: `None` if not, else the options to use.
static OVERLAY: OnceLock<Option<Overlay>> = OnceLock::new();

/// Overlay mount options that depend on the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overlay {
    /// `volatile` (Linux 5.10): the upper dir is thrown away with the execution, so it is never synced. Without
    /// it every unmount syncs the upper file system, which took up to 0.35 s here and means pointless writes
    /// to an edge device's SD card.
    volatile: bool,
}

/// A prepared root filesystem; call [`RootFs::release`] when the container is gone.
#[derive(Debug)]
pub struct RootFs {
    /// `<work>/rootfs`, what the runtime gets.
    path: PathBuf,
    /// The execution directory, where the overlay's upper and work dirs live.
    work: PathBuf,
    /// Whether `path` is an overlay mount (else a plain directory).
    mounted: bool,
}

/// How to build the rootfs; tests force each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// An overlay mount. `fd_paths` passes the directories as `/proc/self/fd/N`; `fallback` copies the layers
    /// if the mount fails (else the error is returned).
    Overlay { fd_paths: bool, fallback: bool },
    /// A merged copy.
    Copy,
}

// === impl RootFs ===

impl RootFs {
    /// Builds a root filesystem at `<work>/rootfs` from `layers` (unpacked layer directories, bottom first).
    /// `work` is the execution's own directory and must exist; `<work>/rootfs`, `<work>/rootfs.upper` and
    /// `<work>/rootfs.work` must not. On error nothing of these is left behind.
    pub fn prepare(layers: &[PathBuf], work: &Path) -> io::Result<RootFs> {
        let strategy = if !layers.is_empty() && probe_once(work).is_some() {
            Strategy::Overlay {
                fd_paths: false,
                fallback: true,
            }
        } else {
            Strategy::Copy
        };
        prepare_with(layers, work, strategy)
    }

    /// The directory to give the runtime.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the root filesystem is an overlay mount (`false`: a merged copy).
    pub fn is_overlay(&self) -> bool {
        self.mounted
    }

    /// Unmounts the overlay (lazily if it is still busy) and removes `<work>/rootfs`, `<work>/rootfs.upper`
    /// and `<work>/rootfs.work`. The rest of `work` is the caller's.
    pub fn release(self) -> io::Result<()> {
        if self.mounted {
            unmount(&self.path)?;
        }
        remove_owned_dirs(&self.work)
    }
}

fn prepare_with(layers: &[PathBuf], work: &Path, strategy: Strategy) -> io::Result<RootFs> {
    let path = work.join(ROOTFS);
    fs::create_dir(&path).map_err(ctx("create the rootfs directory", &path))?;
    let mut rootfs = RootFs {
        path,
        work: work.to_owned(),
        mounted: false,
    };
    if layers.is_empty() {
        return Ok(rootfs);
    }
    if let Strategy::Overlay { fd_paths, fallback } = strategy {
        // Where the probe failed, a forced overlay (tests) still tries the plainest mount, to report its error.
        let flavor = probe_once(work).unwrap_or(Overlay { volatile: false });
        match mount_overlay(layers, work, &rootfs.path, fd_paths, flavor) {
            Ok(()) => {
                rootfs.mounted = true;
                return Ok(rootfs);
            }
            Err(err) => {
                discard(work);
                if !fallback {
                    return Err(err);
                }
                tracing::warn!(
                    work = %work.display(),
                    error = %err,
                    "overlay mount failed although overlayfs works here; copying the layers instead"
                );
                fs::create_dir(&rootfs.path)
                    .map_err(ctx("create the rootfs directory", &rootfs.path))?;
            }
        }
    }
    let copied = InRoot::open(&rootfs.path)
        .map_err(ctx("open the rootfs directory", &rootfs.path))
        .and_then(|tree| {
            layers
                .iter()
                .try_for_each(|layer| merge_layer(layer, &tree))
        });
    if let Err(err) = copied {
        discard(work);
        return Err(err);
    }
    Ok(rootfs)
}

/// Whether this process can mount overlays, probed (in a scratch directory under `std::env::temp_dir()`) the
/// first time anything asks, then cached. [`RootFs::prepare`] shares the cache, probing under its `work` if it
/// asks first.
pub fn overlay_supported() -> bool {
    probe_once(&std::env::temp_dir()).is_some()
}

fn probe_once(base: &Path) -> Option<Overlay> {
    *OVERLAY.get_or_init(|| {
        let mut last = None;
        for flavor in [Overlay { volatile: true }, Overlay { volatile: false }] {
            let scratch = base.join(format!(".cod-overlay-probe-{}", std::process::id()));
            let result = probe(&scratch, flavor);
            if let Err(err) = fs::remove_dir_all(&scratch) {
                tracing::warn!(dir = %scratch.display(), error = %err, "could not remove the overlay probe directory");
            }
            match result {
                Ok(()) => return Some(flavor),
                Err(err) => last = Some(err),
            }
        }
        if let Some(err) = last {
            tracing::info!(error = %err, "overlayfs is not usable; root filesystems will be copies of the layers");
        }
        None
    })
}

/// Mounts a one-layer overlay in `scratch` and reads a lower file through it.
fn probe(scratch: &Path, flavor: Overlay) -> io::Result<()> {
    let lower = scratch.join("lower");
    let work = scratch.join("work");
    fs::create_dir_all(&lower)?;
    fs::create_dir(&work)?;
    fs::write(lower.join("probe"), b"ok")?;
    let merged = work.join(ROOTFS);
    fs::create_dir(&merged)?;
    mount_overlay(&[lower], &work, &merged, false, flavor)?;
    let seen = fs::read(merged.join("probe"));
    unmount(&merged)?;
    if seen? != b"ok" {
        return Err(io::Error::other(
            "a file of the lower dir reads differently through the overlay",
        ));
    }
    Ok(())
}

/// Mounts the overlay of `layers` (bottom first) at `target`, creating the upper and work dirs under `work`.
/// The upper dir's root takes the top layer's root owner and mode, since the merged root shows the upper's.
fn mount_overlay(
    layers: &[PathBuf],
    work: &Path,
    target: &Path,
    fd_paths: bool,
    flavor: Overlay,
) -> io::Result<()> {
    let upper = work.join(UPPER);
    let workdir = work.join(WORKDIR);
    fs::create_dir(&upper).map_err(ctx("create the overlay upper directory", &upper))?;
    fs::create_dir(&workdir).map_err(ctx("create the overlay work directory", &workdir))?;
    if let Some(top) = layers.last() {
        let md = fs::metadata(top).map_err(ctx("stat the top layer", top))?;
        std::os::unix::fs::chown(&upper, Some(md.uid()), Some(md.gid()))
            .map_err(ctx("chown the overlay upper directory", &upper))?;
        fs::set_permissions(&upper, Permissions::from_mode(md.mode() & 0o7777))
            .map_err(ctx("chmod the overlay upper directory", &upper))?;
    }
    // Overlay's option parser splits on ',' and ':' (and treats '\' as an escape); a path containing one, or a
    // stack too long for one page, goes in as an O_PATH descriptor's /proc path instead. The descriptors only
    // need to live until mount(2) has resolved them.
    let lowers: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
    let plain = overlay_options(&lowers, &upper, &workdir, flavor);
    let awkward = [upper.as_path(), workdir.as_path()]
        .into_iter()
        .chain(lowers.iter().copied())
        .any(|p| p.as_os_str().as_bytes().iter().any(|b| b",:\\".contains(b)));
    let mut held = Vec::new();
    let options = if fd_paths || awkward || plain.len() > MAX_MOUNT_OPTIONS {
        let mut fd_path = |p: &Path| -> io::Result<PathBuf> {
            let dir = fs::OpenOptions::new()
                .read(true)
                .custom_flags(
                    nix::fcntl::OFlag::O_PATH.bits() | nix::fcntl::OFlag::O_DIRECTORY.bits(),
                )
                .open(p)
                .map_err(ctx("open layer directory", p))?;
            let proc = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            held.push(dir);
            Ok(proc)
        };
        let lowers = lowers
            .iter()
            .map(|p| fd_path(p))
            .collect::<io::Result<Vec<_>>>()?;
        let upper = fd_path(&upper)?;
        let workdir = fd_path(&workdir)?;
        let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        overlay_options(&lowers, &upper, &workdir, flavor)
    } else {
        plain
    };
    if options.len() > MAX_MOUNT_OPTIONS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers are too many to stack in one overlay mount",
                layers.len()
            ),
        ));
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_os_str()),
    )
    .map_err(io::Error::from)
    .map_err(ctx("mount overlay at", target))
}

fn overlay_options(lowers: &[&Path], upper: &Path, workdir: &Path, flavor: Overlay) -> OsString {
    let mut out = b"lowerdir=".to_vec();
    for (i, lower) in lowers.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        out.extend_from_slice(lower.as_os_str().as_bytes());
    }
    out.extend_from_slice(b",upperdir=");
    out.extend_from_slice(upper.as_os_str().as_bytes());
    out.extend_from_slice(b",workdir=");
    out.extend_from_slice(workdir.as_os_str().as_bytes());
    if flavor.volatile {
        out.extend_from_slice(b",volatile");
    }
    OsString::from_vec(out)
}

/// Applies one layer directory on top of the copy in `tree` (see the module docs).
fn merge_layer(layer: &Path, tree: &InRoot) -> io::Result<()> {
    enum Step {
        /// Copy the children of this directory.
        Visit(PathBuf),
        /// All children copied: now the directory's own owner, mode and time (its time changed as they came).
        Finish(PathBuf, Meta),
    }
    let root_md = fs::symlink_metadata(layer).map_err(ctx("stat layer", layer))?;
    let mut stack = vec![
        Step::Finish(PathBuf::new(), meta_of(&root_md)),
        Step::Visit(PathBuf::new()),
    ];
    while let Some(step) = stack.pop() {
        let rel = match step {
            Step::Finish(rel, meta) => {
                tree.set_meta(&rel, meta)
                    .map_err(ctx("set owner, mode and time of", &tree.dir().join(&rel)))?;
                continue;
            }
            Step::Visit(rel) => rel,
        };
        let src_dir = layer.join(&rel);
        for child in fs::read_dir(&src_dir).map_err(ctx("list layer directory", &src_dir))? {
            let child = child.map_err(ctx("list layer directory", &src_dir))?;
            let rel = rel.join(child.file_name());
            let src = layer.join(&rel);
            let dst = tree.dir().join(&rel);
            let md = fs::symlink_metadata(&src).map_err(ctx("stat layer entry", &src))?;
            let kind = md.file_type();
            if kind.is_char_device() && md.rdev() == 0 {
                tree.remove(&rel).map_err(ctx("apply whiteout at", &dst))?;
                continue;
            }
            if kind.is_dir() {
                // Overlay ignores an opaque xattr on a layer's root (checked on Linux 6.18), so only
                // subdirectories are looked at.
                let opaque = xattr::get(&src, OPAQUE_XATTR)
                    .map_err(ctx("read the opaque xattr of", &src))?
                    .is_some_and(|v| v == b"y");
                let existing = tree.lstat(&rel).map_err(ctx("stat", &dst))?;
                let keep = !opaque && existing.is_some_and(|st| Kind::of(&st) == Kind::Dir);
                if !keep {
                    tree.remove(&rel).map_err(ctx("remove", &dst))?;
                    tree.create(&rel, &InodeType::Directory(Permissions::from_mode(0o700)))
                        .map_err(ctx("create directory", &dst))?;
                }
                stack.push(Step::Finish(rel.clone(), meta_of(&md)));
                stack.push(Step::Visit(rel));
                continue;
            }
            tree.remove(&rel).map_err(ctx("remove", &dst))?;
            if kind.is_file() {
                let mut from = fs::File::open(&src).map_err(ctx("open layer file", &src))?;
                let mut to = tree.create_file(&rel).map_err(ctx("create file", &dst))?;
                io::copy(&mut from, &mut to).map_err(ctx("copy layer file to", &dst))?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&src).map_err(ctx("read layer symlink", &src))?;
                tree.create(&rel, &InodeType::Symlink(target))
                    .map_err(ctx("create symlink", &dst))?;
            } else if kind.is_fifo() {
                tree.create(&rel, &InodeType::Fifo(Permissions::from_mode(0o600)))
                    .map_err(ctx("create fifo", &dst))?;
            } else {
                return Err(ctx("copy", &src)(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "layers may hold only files, directories, symlinks, fifos and whiteouts",
                )));
            }
            tree.set_meta(&rel, meta_of(&md))
                .map_err(ctx("set owner, mode and time of", &dst))?;
        }
    }
    Ok(())
}

fn meta_of(md: &fs::Metadata) -> Meta {
    Meta {
        uid: md.uid(),
        gid: md.gid(),
        mode: (!md.file_type().is_symlink()).then_some(md.mode() & 0o7777),
        mtime: Some(md.mtime()),
    }
}

/// Unmounts `target`, lazily if it is busy. Not being a mount point (any more) is fine.
fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) => Ok(()),
        Err(Errno::EBUSY) => {
            tracing::warn!(rootfs = %target.display(), "root filesystem still busy; detaching it lazily");
            nix::mount::umount2(target, MntFlags::MNT_DETACH)
                .map_err(io::Error::from)
                .map_err(ctx("unmount", target))
        }
        Err(err) => Err(ctx("unmount", target)(err.into())),
    }
}

/// Removes what a failed `prepare` made. The caller returns the error that made it fail; this one would only
/// hide it, so it is logged.
fn discard(work: &Path) {
    if let Err(err) = remove_owned_dirs(work) {
        tracing::warn!(work = %work.display(), error = %err, "could not remove a half-built root filesystem");
    }
}

/// Removes `<work>/rootfs`, `<work>/rootfs.upper` and `<work>/rootfs.work`, whichever exist. `rootfs` must no
/// longer be a mount point.
fn remove_owned_dirs(work: &Path) -> io::Result<()> {
    for name in [ROOTFS, UPPER, WORKDIR] {
        let dir = work.join(name);
        match fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(ctx("remove", &dir)(err));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Unmounts every mount below `dir` (not `dir` itself), deepest first, as a node does at start-up after a
/// crash left executions' root filesystems mounted, and removes `rootfs`, `rootfs.upper` and `rootfs.work` next
/// to each unmounted `rootfs`. Returns how many mounts were unmounted. Copy-mode leftovers are plain
/// directories: the caller removes them with the execution directories. A missing `dir` sweeps nothing.
pub fn sweep(dir: &Path) -> io::Result<usize> {
    let dir = match fs::canonicalize(dir) {
        Ok(dir) => dir,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(ctx("resolve the sweep directory", dir)(err)),
    };
    if dir.parent().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to sweep every mount below /",
        ));
    }
    let below = |mounts: Vec<PathBuf>| -> Vec<PathBuf> {
        mounts
            .into_iter()
            .filter(|p| p.starts_with(&dir) && *p != dir)
            .collect()
    };
    let mut points = below(mount_points()?);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut swept = 0;
    let mut failed = None;
    for point in &points {
        // Keep going: one stuck mount must not keep the others around.
        match unmount(point) {
            Ok(()) => swept += 1,
            Err(err) => {
                failed.get_or_insert(err);
            }
        }
    }
    // Only once nothing is mounted there any more: removing a still-mounted rootfs would delete through it.
    let still = below(mount_points()?);
    let mut works: Vec<&Path> = points
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == ROOTFS))
        .filter(|p| !still.iter().any(|s| s.starts_with(p)))
        .filter_map(|p| p.parent())
        .collect();
    works.dedup();
    for work in works {
        if let Err(err) = remove_owned_dirs(work) {
            failed.get_or_insert(err);
        }
    }
    match failed {
        Some(err) => Err(err),
        None => Ok(swept),
    }
}

/// Mount points of this process's mount namespace, from `/proc/self/mountinfo`.
fn mount_points() -> io::Result<Vec<PathBuf>> {
    let path = Path::new("/proc/self/mountinfo");
    let info = fs::read(path).map_err(ctx("read", path))?;
    Ok(info
        .split(|&b| b == b'\n')
        // Fields: id, parent id, major:minor, root, mount point, ...
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_mountinfo(field))))
        .collect())
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as `\ooo` octal escapes.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let escaped = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escaped {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Wraps an error with the operation and path it concerns, keeping its kind (`io::Result` is this module's
/// interface) and the cause as its source.
fn ctx<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |source| {
        io::Error::new(
            source.kind(),
            PathError {
                op,
                path: path.to_owned(),
                source,
            },
        )
    }
}

/// An I/O error with the operation and path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path:?}")]
struct PathError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;
    use crate::oci::unpack::tests::{LIMITS, LayerTar, MTIME, Sandbox};
    use crate::oci::unpack::{IdShift, apply_layer};

    const SHIFT: IdShift = IdShift {
        base: 100_000,
        size: 65_536,
    };

    /// Three layers exercising every merge rule, unpacked under `sb`; returns their directories, bottom first.
    fn three_layers(sb: &Sandbox) -> Vec<PathBuf> {
        let outside = sb.outside();
        let outside = outside.to_str().expect("utf-8 temp path");
        let tars = [
            LayerTar::new()
                .dir("etc/", 0o755)
                .file("etc/passwd", "root:x:0:0")
                .file("etc/hosts", "localhost")
                .hardlink("etc/passwd-link", "etc/passwd")
                .file("opt/app/old", "old")
                .file("usr/lib/libc.so", "libc")
                .symlink("lib", "usr/lib")
                .file("var/log/syslog", "log")
                .file("keep", "k1")
                .file_as("bin/su", "su", 0o4755, (0, 0))
                .fifo("run/fifo")
                .symlink("esc", outside)
                .symlink("up", "../../../.."),
            LayerTar::new()
                .whiteout("etc/.wh.hosts")
                .file_as("etc/new", "new", 0o640, (1000, 1000))
                .dir("opt/app/", 0o750)
                .whiteout("opt/app/.wh..wh..opq")
                .file("opt/app/b", "b")
                .dir("lib/", 0o755)
                .file("lib/own.so", "own")
                .file("esc/pwn", "p")
                .file("up/pwn", "p"),
            LayerTar::new()
                .file("keep", "k3")
                .whiteout(".wh.var")
                .file("opt/app/c", "c"),
        ];
        tars.into_iter()
            .enumerate()
            .map(|(i, tar)| {
                let dir = sb.tmp.path().join(format!("layer{i}"));
                fs::create_dir(&dir).expect("layer dir");
                apply_layer(tar.finish().as_slice(), &dir, SHIFT, LIMITS).expect("unpack layer");
                dir
            })
            .collect()
    }

    /// Everything visible below `root` (not its own time), one line per entry, keyed by path.
    fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).expect("stat");
            let kind = md.file_type();
            let what = if kind.is_dir() {
                for child in fs::read_dir(&path).expect("list") {
                    todo.push(rel.join(child.expect("entry").file_name()));
                }
                "dir".to_owned()
            } else if kind.is_file() {
                format!("file {:?}", fs::read_to_string(&path).expect("read"))
            } else if kind.is_symlink() {
                format!("symlink -> {:?}", fs::read_link(&path).expect("readlink"))
            } else if kind.is_fifo() {
                "fifo".to_owned()
            } else {
                format!("other (rdev {})", md.rdev())
            };
            let mtime = if rel.as_os_str().is_empty() {
                0
            } else {
                md.mtime()
            };
            let mode = if kind.is_symlink() {
                0
            } else {
                md.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} {mode:o} {}:{} t={mtime}", md.uid(), md.gid()),
            );
        }
        out
    }

    fn assert_merged(rootfs: &Path, sb: &Sandbox) {
        let seen = listing(rootfs);
        let has = |p: &str| seen.contains_key(Path::new(p));
        let line = |p: &str| seen.get(Path::new(p)).cloned().unwrap_or_default();
        assert!(
            line("etc/passwd").starts_with("file \"root:x:0:0\" 644 100000:100000"),
            "{seen:#?}"
        );
        assert!(
            line("etc/passwd-link").starts_with("file \"root:x:0:0\""),
            "{seen:#?}"
        );
        assert!(!has("etc/hosts"), "whiteout deletes: {seen:#?}");
        assert!(
            line("etc/new").starts_with("file \"new\" 640 101000:101000"),
            "{seen:#?}"
        );
        assert!(
            !has("opt/app/old"),
            "opaque dir hides lower content: {seen:#?}"
        );
        assert!(has("opt/app/b") && has("opt/app/c"), "{seen:#?}");
        assert!(
            line("opt/app").starts_with("dir 755"),
            "top layer's dir wins: {seen:#?}"
        );
        assert!(
            line("lib").starts_with("dir"),
            "a real dir replaces a lower symlink: {seen:#?}"
        );
        assert!(has("lib/own.so") && !has("lib/libc.so"), "{seen:#?}");
        assert!(has("usr/lib/libc.so"), "{seen:#?}");
        assert!(line("keep").starts_with("file \"k3\""), "{seen:#?}");
        assert!(
            !has("var") && !has("var/log/syslog"),
            "whiteout deletes a dir: {seen:#?}"
        );
        assert!(
            line("bin/su").starts_with("file \"su\" 4755 100000:100000"),
            "{seen:#?}"
        );
        assert_eq!(
            line("bin/su"),
            format!("file \"su\" 4755 100000:100000 t={MTIME}")
        );
        assert!(line("run/fifo").starts_with("fifo"), "{seen:#?}");
        assert!(
            line("esc").starts_with("dir") && has("esc/pwn"),
            "{seen:#?}"
        );
        assert!(line("up").starts_with("dir") && has("up/pwn"), "{seen:#?}");
        assert!(
            seen.values().all(|l| !l.starts_with("other")),
            "no whiteout device is visible: {seen:#?}"
        );
        sb.assert_outside_untouched();
    }

    fn is_mount_point(path: &Path) -> bool {
        mount_points().expect("mountinfo").iter().any(|p| p == path)
    }

    #[test]
    fn overlay_and_copy_show_the_same_tree() {
        let sb = Sandbox::new();
        let layers = three_layers(&sb);
        let mut trees = Vec::new();
        for (name, strategy) in [
            (
                "overlay",
                Strategy::Overlay {
                    fd_paths: false,
                    fallback: false,
                },
            ),
            (
                "overlay-fds",
                Strategy::Overlay {
                    fd_paths: true,
                    fallback: false,
                },
            ),
            ("copy", Strategy::Copy),
        ] {
            let work = sb.tmp.path().join(name);
            fs::create_dir(&work).expect("work");
            let rootfs = prepare_with(&layers, &work, strategy).expect(name);
            assert_eq!(rootfs.is_overlay(), strategy != Strategy::Copy, "{name}");
            assert_eq!(is_mount_point(rootfs.path()), rootfs.is_overlay(), "{name}");
            assert_merged(rootfs.path(), &sb);
            trees.push((name, listing(rootfs.path())));
            rootfs.release().expect("release");
            assert!(!is_mount_point(&work.join(ROOTFS)), "{name}");
            let left: Vec<_> = fs::read_dir(&work).expect("work").collect();
            assert!(left.is_empty(), "{name}: release left {left:?}");
        }
        let (first, expected) = &trees[0];
        for (name, tree) in &trees[1..] {
            assert_eq!(tree, expected, "{name} differs from {first}");
        }
        // The layers themselves were never written.
        assert!(layers[0].join("etc/hosts").exists());
        assert!(!layers[2].join("opt/app/b").exists());
    }

    #[test]
    fn the_overlay_root_is_writable_and_writes_stay_in_the_upper_dir() {
        let sb = Sandbox::new();
        let layers = three_layers(&sb);
        let work = sb.tmp.path().join("work");
        fs::create_dir(&work).expect("work");
        let rootfs = RootFs::prepare(&layers, &work).expect("prepare");
        assert!(
            rootfs.is_overlay(),
            "overlayfs works here (we are root), so prepare must use it"
        );
        fs::create_dir(rootfs.path().join("proc")).expect("mount point");
        assert!(work.join(UPPER).join("proc").is_dir());
        assert!(layers.iter().all(|l| !l.join("proc").exists()));
        let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == rootfs.path().to_str())
            .expect("the rootfs is mounted");
        assert!(
            line.contains("volatile"),
            "the upper dir is never synced: {line}"
        );
        let root = fs::metadata(rootfs.path()).expect("root");
        assert_eq!(
            (root.uid(), root.gid()),
            (100_000, 100_000),
            "the top layer's root owner shows"
        );
        rootfs.release().expect("release");
    }

    #[test]
    fn zero_layers_give_an_empty_directory() {
        let sb = Sandbox::new();
        let rootfs = RootFs::prepare(&[], sb.tmp.path()).expect("prepare");
        assert!(!rootfs.is_overlay());
        assert_eq!(fs::read_dir(rootfs.path()).expect("list").count(), 0);
        let path = rootfs.path().to_owned();
        rootfs.release().expect("release");
        assert!(!path.exists());
    }

    #[test]
    fn prepare_refuses_a_used_work_dir_and_cleans_up_a_failed_copy() {
        let sb = Sandbox::new();
        let layers = three_layers(&sb);
        fs::create_dir(sb.tmp.path().join(ROOTFS)).expect("leftover");
        let err = RootFs::prepare(&layers, sb.tmp.path()).expect_err("rootfs exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("rootfs"), "{err}");

        // A layer holding something a layer never has (a real device) fails the copy, which is removed.
        let work = sb.tmp.path().join("work");
        fs::create_dir(&work).expect("work");
        let bad = sb.tmp.path().join("bad");
        fs::create_dir(&bad).expect("bad");
        nix::sys::stat::mknod(
            &bad.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .expect("mknod");
        let err = prepare_with(&[bad], &work, Strategy::Copy).expect_err("device");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(fs::read_dir(&work).expect("work").count(), 0);
    }

    #[test]
    fn sweep_unmounts_and_removes_leftover_rootfs_mounts() {
        let sb = Sandbox::new();
        let layers = three_layers(&sb);
        let executions = sb.tmp.path().join("executions");
        let mut works = Vec::new();
        for name in ["a", "b with space"] {
            let work = executions.join(name);
            fs::create_dir_all(&work).expect("work");
            let rootfs = prepare_with(
                &layers,
                &work,
                Strategy::Overlay {
                    fd_paths: false,
                    fallback: false,
                },
            )
            .expect("prepare");
            // The node "crashes": the RootFs is dropped without release.
            drop(rootfs);
            assert!(is_mount_point(&work.join(ROOTFS)));
            works.push(work);
        }
        assert_eq!(sweep(&executions).expect("sweep"), 2);
        for work in &works {
            assert!(!is_mount_point(&work.join(ROOTFS)));
            assert_eq!(fs::read_dir(work).expect("work").count(), 0, "{work:?}");
        }
        assert_eq!(sweep(&executions).expect("sweep again"), 0);
        assert_eq!(sweep(&sb.tmp.path().join("missing")).expect("missing"), 0);
        assert_eq!(
            sweep(Path::new("/")).expect_err("/").kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn overlay_is_supported_here() {
        // Tests and CI run as root on kernels with overlayfs: a false here means the probe is broken.
        assert!(overlay_supported());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c\011"), b"/a b\\c\t");
        assert_eq!(unescape_mountinfo(br"/x\09"), br"/x\09");
    }
}
