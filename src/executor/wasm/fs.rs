//! The guest's filesystem: Bacalhau's mount table, exposed as the single WASI preopen `/`.
//!
//! Bacalhau (wazero) gives a wasm task one filesystem as its WASI root: each input is mounted at
//! its `Target` (a directory read-only, a file input as that single file), each result folder is
//! mounted writable at `/<Name>`. Guests address `inputs/x.csv` or `/inputs/x.csv`; wasi-libc and
//! Go strip the leading `/` and resolve both against the preopen named `/`. We do the same:
//! The table is a virtual directory tree made only of mount points, and a path that enters a
//! mount continues below that mount's directory descriptor, where `openat2` with
//! `RESOLVE_BENEATH` keeps the guest inside it, symlinks included (see `wasi::host`). One preopen
//! also means `ls /` lists the mounts, as on Bacalhau. The WASI calls themselves are in `wasi`.
//!
//! A file input is served from a descriptor on its parent directory, filtered to that one name:
//! the guest can open, stat and read it, nothing else in that directory is reachable.
//!
//! Must never: let a guest change a read-only input (every mutating call fails with `EROFS`, as on
//! wazero's read-only filesystem, and files are opened without write access), or reach a host path
//! outside the mounts.
//!
//! Paths are normalized lexically before the mount lookup (`a/../b` is `b`), so `..` never leaves
//! the root and may walk from one mount to another through the virtual tree; this differs from
//! POSIX only when the component before `..` is a symlink. Inside a mount the kernel applies its
//! own rules, below the mount's directory.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

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
pub(super) struct Mount {
    /// Guest path components (`["inputs"]` for `/inputs`); never empty.
    at: Vec<String>,
    /// What is mounted there.
    pub(super) kind: MountKind,
}

/// The host side of a mount.
pub(super) enum MountKind {
    /// A host directory.
    Dir {
        /// The directory, opened read-only: every guest path below the mount starts here.
        dir: OwnedFd,
        /// Whether the guest may change anything in it (result folders and `ReadWrite` inputs).
        writable: bool,
    },
    /// A single host file, reached through its parent directory.
    File {
        /// The parent directory; only `name` is ever looked up in it.
        parent: OwnedFd,
        /// The file's name in `parent`.
        name: String,
        /// Whether the guest may write to it (a `local` input with `ReadWrite`).
        writable: bool,
    },
}

/// Where a guest path leads.
pub(super) enum Resolved<'a> {
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

/// A child of a virtual directory, as listed to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VirtualEntry {
    /// Its name.
    pub(super) name: String,
    /// A directory (a directory mount or another virtual directory), else a file input.
    pub(super) is_dir: bool,
    /// A stable made-up inode number.
    pub(super) inode: u64,
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
            let dir = open_dir(&output.host_dir, &at)?;
            table.push(Mount {
                at,
                kind: MountKind::Dir {
                    dir,
                    writable: true,
                },
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

    /// Resolves the relative, non-empty `path` against the virtual directory `base`.
    pub(super) fn resolve(&self, base: &[String], path: &str) -> Resolved<'_> {
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
            return Resolved::Mount {
                index,
                mount,
                rest,
                dir_only,
            };
        }
        if self.is_virtual(&full) {
            return Resolved::Virtual(full);
        }
        let parent_virtual = match full.split_last() {
            Some((_, parent)) => self.is_virtual(parent),
            None => true,
        };
        Resolved::Missing { parent_virtual }
    }

    /// Whether `at` is a directory of the table itself: the root or a strict parent of a mount.
    fn is_virtual(&self, at: &[String]) -> bool {
        at.is_empty()
            || self
                .mounts
                .iter()
                .any(|m| m.at.len() > at.len() && m.at.starts_with(at))
    }

    /// The children of the virtual directory `at`, by name. A mount exactly at a child name
    /// decides its type; otherwise the child is a virtual directory.
    pub(super) fn virtual_children(&self, at: &[String]) -> Vec<VirtualEntry> {
        let depth = at.len();
        let mut children: BTreeMap<&str, (bool, u64)> = BTreeMap::new();
        for mount in &self.mounts {
            if mount.at.len() <= depth || !mount.at.starts_with(at) {
                continue;
            }
            let name = mount.at[depth].as_str();
            if mount.at.len() == depth + 1 {
                let is_dir = matches!(mount.kind, MountKind::Dir { .. });
                children.insert(name, (is_dir, virtual_inode(&mount.at)));
            } else {
                children
                    .entry(name)
                    .or_insert((true, virtual_inode(&mount.at[..=depth])));
            }
        }
        children
            .into_iter()
            .map(|(name, (is_dir, inode))| VirtualEntry {
                name: name.to_owned(),
                is_dir,
                inode,
            })
            .collect()
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
        if relative.is_empty() {
            return Err(not_mounted());
        }
        match self.resolve(&[], relative) {
            Resolved::Mount { mount, rest, .. } => match &mount.kind {
                MountKind::Dir { dir, .. } => {
                    let fd = open_below(dir.as_fd(), &rest, OFlags::RDONLY).map_err(io_err)?;
                    let mut file = std::fs::File::from(fd);
                    if !file.metadata().map_err(io_err)?.is_dir() {
                        return read_all(&mut file).map_err(io_err);
                    }
                    let mut found = Vec::new();
                    let mut entries = rustix::fs::Dir::read_from(&file)
                        .map_err(|e| io_err(io::Error::from(e)))?;
                    while let Some(entry) = entries.read() {
                        let entry = entry.map_err(|e| io_err(io::Error::from(e)))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.ends_with(".wasm")
                            && entry.file_type() != rustix::fs::FileType::Directory
                        {
                            found.push(name);
                        }
                    }
                    match found.as_slice() {
                        [one] => {
                            let fd =
                                open_below(file.as_fd(), one, OFlags::RDONLY).map_err(io_err)?;
                            read_all(&mut std::fs::File::from(fd)).map_err(io_err)
                        }
                        _ => {
                            found.sort();
                            Err(ModuleReadError::NotOneWasm { path, found })
                        }
                    }
                }
                MountKind::File { parent, name, .. } => {
                    if rest != "." {
                        return Err(io_err(io::Error::from(io::ErrorKind::NotADirectory)));
                    }
                    let fd = open_below(parent.as_fd(), name, OFlags::RDONLY).map_err(io_err)?;
                    read_all(&mut std::fs::File::from(fd)).map_err(io_err)
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

fn read_all(file: &mut std::fs::File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens `path` below `base` and never outside it: the guest's own rule and resolution (`wasi::host`,
/// `openat2` or, where the kernel lacks it, the component walk).
fn open_below(base: BorrowedFd<'_>, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    super::wasi::open_beneath(base, path, flags).map_err(io::Error::from)
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
    // Not followed first: a plain file (the usual input, a cache entry's) needs no resolving at all, where
    // `canonicalize` costs a readlink per component of its path on every run.
    let own = std::fs::symlink_metadata(&input.host_path).map_err(open_err)?;
    let link = own.file_type().is_symlink();
    let meta = if link {
        std::fs::metadata(&input.host_path).map_err(open_err)?
    } else {
        own
    };
    if meta.is_dir() {
        return Ok(MountKind::Dir {
            dir: open_dir(&input.host_path, at)?,
            writable: !input.read_only,
        });
    }
    // The input may itself be a symlink (a `local` source); its target's parent is what we open. A plain
    // file whose path names its parent is opened where it is.
    let plain = !link
        && input
            .host_path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty());
    let real = if plain {
        std::borrow::Cow::Borrowed(input.host_path.as_path())
    } else {
        std::borrow::Cow::Owned(std::fs::canonicalize(&input.host_path).map_err(open_err)?)
    };
    let (Some(parent), Some(name)) = (real.parent(), real.file_name().and_then(|n| n.to_str()))
    else {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the file has no parent directory or its name is not UTF-8",
        )));
    };
    Ok(MountKind::File {
        parent: open_dir(parent, at)?,
        name: name.to_owned(),
        writable: !input.read_only,
    })
}

fn open_dir(host: &Path, at: &[String]) -> Result<OwnedFd, MountError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(host, flags, Mode::empty()).map_err(|e| MountError::Open {
        guest: at.join("/"),
        host: host.to_owned(),
        source: io::Error::from(e),
    })
}

/// A stable inode number for a virtual directory.
pub(super) fn virtual_inode(at: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    at.hash(&mut h);
    h.finish()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `/inputs` (read-only, holding `x.csv`), `/data/nested` (read-only) and `/outputs`
    /// (writable), in a temp dir.
    pub(in crate::executor::wasm) fn table() -> (tempfile::TempDir, MountTable) {
        let dir = tempfile::tempdir().unwrap();
        let inputs = dir.path().join("in");
        let nested = dir.path().join("nested");
        let outputs = dir.path().join("out");
        for d in [&inputs, &nested, &outputs] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(inputs.join("x.csv"), "data").unwrap();
        let table = MountTable::new(
            &[
                PreparedInput {
                    target: "/inputs".into(),
                    host_path: inputs,
                    read_only: true,
                },
                PreparedInput {
                    target: "/data/nested".into(),
                    host_path: nested,
                    read_only: true,
                },
            ],
            &[OutputDir {
                name: "outputs".into(),
                path: "/outputs".into(),
                host_dir: outputs,
            }],
        )
        .unwrap();
        (dir, table)
    }

    #[test]
    fn paths_resolve_lexically_and_never_above_the_root() {
        let (_dir, table) = table();
        let at = |path| match table.resolve(&[], path) {
            Resolved::Mount { mount, rest, .. } => format!("{}:{rest}", mount.at.join("/")),
            Resolved::Virtual(at) => format!("virtual:/{}", at.join("/")),
            Resolved::Missing { parent_virtual } => format!("missing:{parent_virtual}"),
        };
        assert_eq!(at("inputs/x.csv"), "inputs:x.csv");
        assert_eq!(at("./inputs/sub/../x.csv"), "inputs:x.csv");
        assert_eq!(at("../../inputs"), "inputs:.");
        assert_eq!(at("inputs/../outputs/y"), "outputs:y");
        assert_eq!(at("outputs/y/"), "outputs:y/");
        assert_eq!(at(".."), "virtual:/");
        assert_eq!(at("data"), "virtual:/data");
        assert_eq!(at("nothing/here"), "missing:false");
        assert_eq!(at("nothing"), "missing:true");
    }

    #[test]
    fn virtual_directories_list_their_mounts() {
        let (_dir, table) = table();
        let names = |at: &[String]| -> Vec<(String, bool)> {
            table
                .virtual_children(at)
                .into_iter()
                .map(|e| (e.name, e.is_dir))
                .collect()
        };
        assert_eq!(
            names(&[]),
            [
                ("data".to_owned(), true),
                ("inputs".to_owned(), true),
                ("outputs".to_owned(), true)
            ]
        );
        assert_eq!(names(&["data".to_owned()]), [("nested".to_owned(), true)]);
    }

    #[test]
    fn modules_are_read_from_inside_their_mount_only() {
        let (dir, table) = table();
        std::fs::write(dir.path().join("secret.wasm"), "host").unwrap();
        std::os::unix::fs::symlink("../secret.wasm", dir.path().join("in/link.wasm")).unwrap();
        assert_eq!(table.read_module("/inputs/x.csv").unwrap(), b"data");
        let escaped = table.read_module("/inputs/link.wasm").unwrap_err();
        assert!(matches!(escaped, ModuleReadError::Io { .. }), "{escaped}");
        assert!(matches!(
            table.read_module("/elsewhere.wasm").unwrap_err(),
            ModuleReadError::NotMounted { .. }
        ));
    }

    /// A file input mounts the file; one that is a host-side symlink (a `local` source's) mounts its target,
    /// wherever the link sits.
    #[test]
    fn file_inputs_mount_the_file_or_the_links_target() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let links = dir.path().join("links");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(real.join("mod.wasm"), "module").unwrap();
        std::os::unix::fs::symlink("../real/mod.wasm", links.join("link.wasm")).unwrap();
        let input = |target: &str, host_path: PathBuf| PreparedInput {
            target: target.into(),
            host_path,
            read_only: true,
        };
        let table = MountTable::new(
            &[
                input("/plain.wasm", real.join("mod.wasm")),
                input("/linked.wasm", links.join("link.wasm")),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(table.read_module("/plain.wasm").unwrap(), b"module");
        assert_eq!(table.read_module("/linked.wasm").unwrap(), b"module");
    }
}
