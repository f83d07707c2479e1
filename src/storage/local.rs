//! The `local` source (legacy name `localDirectory`): a host path bound into the task as it is, without a copy.
//!
//! Only paths under the node's allow-list (`Compute.AllowListedLocalPaths` in Bacalhau, entries
//! `PATH[:ro|:rw]`) may be used, and write access needs an `:rw` entry. An empty allow-list disables the
//! source. The check runs on the *canonical* path, with every symlink resolved, so a link inside an allowed
//! directory cannot reach outside it.
//!
//! Must never tell a job whether a path outside the allow-list exists: a missing path is reported as missing
//! only when the allow-list would have allowed it.
//!
//! Matching, as Bacalhau's doublestar globs do for the forms it documents: `PATH` allows exactly that path,
//! `PATH/*` anything strictly under it, `PATH/**` the path itself and anything under it. Other glob
//! characters are refused when the list is parsed rather than silently taken literally.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;

use super::{StorageError, StorageSource, Volume};
use crate::model::{InputSpec, SourceKind};

/// How much of the tree an allow-list entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathScope {
    /// Exactly the path.
    Exact,
    /// Anything strictly under the path (`PATH/*`).
    Under,
    /// The path and anything under it (`PATH/**`).
    SelfAndUnder,
}

/// One allow-list entry, parsed from `PATH[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPath {
    /// The entry as the operator wrote it, for messages.
    raw: String,
    /// The base path without its glob suffix, canonicalized when it exists so that it compares equal to the
    /// canonical paths checked against it.
    base: PathBuf,
    /// How much under `base` is allowed.
    scope: PathScope,
    /// Whether tasks may write (`:rw`).
    read_write: bool,
}

/// An allow-list entry that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "allow-listed local path {entry:?} is invalid: {reason}; use an absolute PATH[:ro|:rw], optionally ending in /* or /**"
)]
pub struct AllowedPathError {
    /// The entry.
    pub entry: String,
    /// Why.
    pub reason: &'static str,
}

// === impl AllowedPath ===

impl AllowedPath {
    /// The base path (without a glob suffix).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// How much under [`AllowedPath::base`] the entry covers.
    pub fn scope(&self) -> PathScope {
        self.scope
    }

    /// Whether the entry grants write access.
    pub fn read_write(&self) -> bool {
        self.read_write
    }

    /// Replaces the base with its canonical form when it exists: `/data` may itself be a symlink to
    /// `/mnt/data`, and requests are compared after canonicalization.
    fn canonicalized(mut self) -> Self {
        if let Ok(canonical) = std::fs::canonicalize(&self.base) {
            self.base = canonical;
        }
        self
    }

    fn matches(&self, path: &Path) -> bool {
        match self.scope {
            PathScope::Exact => path == self.base,
            PathScope::Under => path != self.base && path.starts_with(&self.base),
            PathScope::SelfAndUnder => path.starts_with(&self.base),
        }
    }
}

impl FromStr for AllowedPath {
    type Err = AllowedPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AllowedPathError {
            entry: s.to_owned(),
            reason,
        };
        let (path, read_write) = if let Some(p) = s.strip_suffix(":rw") {
            (p, true)
        } else if let Some(p) = s.strip_suffix(":ro") {
            (p, false)
        } else {
            (s, false)
        };
        let (path, scope) = if let Some(p) = path.strip_suffix("/**") {
            (p, PathScope::SelfAndUnder)
        } else if let Some(p) = path.strip_suffix("/*") {
            (p, PathScope::Under)
        } else {
            (path, PathScope::Exact)
        };
        // `/*` strips to "", which means the root directory.
        let path = if path.is_empty() && scope != PathScope::Exact {
            "/"
        } else {
            path
        };
        if !path.starts_with('/') {
            return Err(err("the path is not absolute"));
        }
        if path.contains(['*', '?', '[', '{']) {
            return Err(err("only a trailing /* or /** glob is supported"));
        }
        Ok(Self {
            raw: s.to_owned(),
            base: normalize(Path::new(path)),
            scope,
            read_write,
        })
    }
}

impl fmt::Display for AllowedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Settings of the local source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalSourceConfig {
    /// The allow-list; empty disables the source.
    pub allowed_paths: Vec<AllowedPath>,
}

impl LocalSourceConfig {
    /// Parses allow-list entries (`PATH[:ro|:rw]`), reporting the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowedPathError> {
        let allowed_paths = entries
            .iter()
            .map(|e| e.as_ref().trim().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed_paths })
    }
}

/// Prepares `local` inputs; see the module docs.
#[derive(Debug, Default)]
pub struct LocalSource {
    /// The allow-list with canonical bases; empty means the source is disabled. Shared so that `prepare` can
    /// hand it to a blocking task cheaply.
    allowed: Arc<[AllowedPath]>,
}

// === impl LocalSource ===

impl LocalSource {
    /// A local source with the given allow-list. Entry bases are canonicalized now (blocking, once at
    /// startup); a base that does not exist yet is kept as written.
    pub fn new(config: LocalSourceConfig) -> Self {
        Self {
            allowed: config
                .allowed_paths
                .into_iter()
                .map(AllowedPath::canonicalized)
                .collect(),
        }
    }

    /// Whether any local path is allowed: Bacalhau only "installs" the source when the list is non-empty.
    pub fn is_enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    fn allowed_text(&self) -> String {
        if self.allowed.is_empty() {
            return "none, local inputs are disabled on this node".to_owned();
        }
        self.allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn not_allowed(&self, path: &str, extra: &str) -> StorageError {
        StorageError::NotAllowed {
            path: path.to_owned(),
            allowed: format!("{}{extra}", self.allowed_text()),
        }
    }

    /// The full check: returns the canonical path if `spec` may be used. Blocking (canonicalize).
    fn check(&self, spec: &InputSpec) -> Result<PathBuf, StorageError> {
        let (source_path, read_write) = match spec {
            InputSpec::Local {
                source_path,
                read_write,
            } => (source_path.as_str(), *read_write),
            other => {
                return Err(StorageError::WrongKind {
                    kind: other.type_name().to_owned(),
                    backend: SourceKind::Local.as_str(),
                });
            }
        };
        if self.allowed.is_empty() {
            return Err(self.not_allowed(source_path, ""));
        }
        let requested = Path::new(source_path);
        if !requested.is_absolute() {
            return Err(self.not_allowed(source_path, "; SourcePath must be absolute"));
        }
        let canonical = match std::fs::canonicalize(requested) {
            Ok(path) => path,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Say "missing" only where the allow-list would allow the path (compared lexically, the best
                // we can do without the file); elsewhere existence is none of the job's business.
                let lexical = normalize(requested);
                return if self.allowed.iter().any(|a| a.matches(&lexical)) {
                    Err(StorageError::NotFound {
                        what: format!("local path {source_path:?}"),
                    })
                } else {
                    Err(self.not_allowed(source_path, ""))
                };
            }
            Err(source) => {
                return Err(StorageError::Io {
                    op: "resolving local path",
                    path: requested.to_owned(),
                    source,
                });
            }
        };
        let matching: Vec<&AllowedPath> = self
            .allowed
            .iter()
            .filter(|a| a.matches(&canonical))
            .collect();
        if matching.is_empty() {
            // The hint only for paths the list seems to allow (a symlink inside an allowed directory): for
            // others it would tell the job where arbitrary host paths lead.
            let lexical = normalize(requested);
            let extra = if canonical != lexical && self.allowed.iter().any(|a| a.matches(&lexical))
            {
                format!("; it resolves to {canonical:?} through a symlink")
            } else {
                String::new()
            };
            return Err(self.not_allowed(source_path, &extra));
        }
        if read_write && !matching.iter().any(|a| a.read_write) {
            return Err(self.not_allowed(
                source_path,
                "; read-write access needs an entry ending in :rw",
            ));
        }
        Ok(canonical)
    }
}

#[async_trait]
impl StorageSource for LocalSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Local
    }

    /// Costs a `canonicalize` (a few `stat`s); cheap enough for bidding, unlike a copy.
    fn validate(&self, spec: &InputSpec) -> Result<(), StorageError> {
        self.check(spec).map(|_| ())
    }

    /// Checks again (the path may have changed since the bid) and returns the canonical host path itself.
    async fn prepare(&self, spec: &InputSpec, _scratch: &Path) -> Result<Volume, StorageError> {
        let (read_write, path) = match spec {
            InputSpec::Local {
                read_write,
                source_path,
            } => (*read_write, PathBuf::from(source_path)),
            _ => (false, PathBuf::new()),
        };
        let checker = Self {
            allowed: Arc::clone(&self.allowed),
        };
        let spec = spec.clone();
        let host_path = tokio::task::spawn_blocking(move || checker.check(&spec))
            .await
            .map_err(|e| StorageError::Io {
                op: "checking local path",
                path,
                source: io::Error::other(e),
            })??;
        Ok(Volume {
            host_path,
            read_only: !read_write,
        })
    }
}

/// Resolves `.` and `..` lexically, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn spec(path: &Path, read_write: bool) -> InputSpec {
        InputSpec::Local {
            source_path: path.display().to_string(),
            read_write,
        }
    }

    fn source(entries: &[String]) -> LocalSource {
        LocalSource::new(LocalSourceConfig::parse(entries).expect("allow-list"))
    }

    #[test]
    fn parses_entries() {
        let a: AllowedPath = "/data/**:rw".parse().expect("parse");
        assert_eq!(
            (a.base(), a.scope(), a.read_write()),
            (Path::new("/data"), PathScope::SelfAndUnder, true)
        );
        let a: AllowedPath = "/data/*".parse().expect("parse");
        assert_eq!((a.scope(), a.read_write()), (PathScope::Under, false));
        let a: AllowedPath = "/data:ro".parse().expect("parse");
        assert_eq!(a.scope(), PathScope::Exact);
        assert!("data/*".parse::<AllowedPath>().is_err());
        assert!("/data/*.csv".parse::<AllowedPath>().is_err());
    }

    #[tokio::test]
    async fn allows_read_only_and_returns_the_canonical_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("in.txt");
        fs::write(&file, "x").expect("write");
        let local = source(&[format!("{}/*", root.path().display())]);
        local.validate(&spec(&file, false)).expect("allowed");
        let volume = local
            .prepare(&spec(&file, false), Path::new("/nonexistent"))
            .await
            .expect("prepare");
        assert_eq!(
            volume,
            Volume {
                host_path: fs::canonicalize(&file).expect("canon"),
                read_only: true
            }
        );
        // `/*` does not cover the directory itself; `/**` does.
        assert!(local.validate(&spec(root.path(), false)).is_err());
        source(&[format!("{}/**", root.path().display())])
            .validate(&spec(root.path(), false))
            .expect("allowed");
    }

    #[tokio::test]
    async fn read_write_needs_an_rw_entry() {
        let root = tempfile::tempdir().expect("tempdir");
        let ro = source(&[format!("{}/**:ro", root.path().display())]);
        let err = ro
            .validate(&spec(root.path(), true))
            .expect_err("rw refused");
        assert!(matches!(err, StorageError::NotAllowed { .. }), "{err:?}");
        assert!(err.to_string().contains(":rw"), "{err}");
        let rw = source(&[format!("{}/**:rw", root.path().display())]);
        let volume = rw
            .prepare(&spec(root.path(), true), root.path())
            .await
            .expect("rw allowed");
        assert!(!volume.read_only);
    }

    #[test]
    fn refuses_symlinks_that_leave_the_allowed_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let allowed = root.path().join("allowed");
        let secret = root.path().join("secret");
        fs::create_dir(&allowed).expect("allowed");
        fs::write(&secret, "s").expect("secret");
        std::os::unix::fs::symlink(&secret, allowed.join("link")).expect("symlink");
        let local = source(&[format!("{}/**", allowed.display())]);
        let err = local
            .validate(&spec(&allowed.join("link"), false))
            .expect_err("escape");
        assert!(matches!(err, StorageError::NotAllowed { .. }), "{err:?}");
        assert!(err.to_string().contains("through a symlink"), "{err}");
        let err = local
            .validate(&spec(&allowed.join("../secret"), false))
            .expect_err("dotdot");
        assert!(matches!(err, StorageError::NotAllowed { .. }), "{err:?}");
    }

    #[test]
    fn an_empty_allow_list_disables_the_source() {
        let local = LocalSource::default();
        assert!(!local.is_enabled());
        let err = local
            .validate(&spec(Path::new("/tmp"), false))
            .expect_err("disabled");
        assert!(err.to_string().contains("disabled"), "{err}");
    }

    #[test]
    fn reports_missing_paths_only_inside_the_allow_list() {
        let root = tempfile::tempdir().expect("tempdir");
        let local = source(&[format!("{}/*", root.path().display())]);
        let err = local
            .validate(&spec(&root.path().join("missing"), false))
            .expect_err("missing");
        assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
        let err = local
            .validate(&spec(Path::new("/cod-surely-missing/x"), false))
            .expect_err("outside");
        assert!(matches!(err, StorageError::NotAllowed { .. }), "{err:?}");
    }

    #[test]
    fn refuses_other_kinds() {
        let err = LocalSource::default().validate(&InputSpec::Inline {
            url: "data:,x".to_owned(),
        });
        assert!(matches!(err, Err(StorageError::WrongKind { .. })));
    }
}
