//! Where a container's cgroups live on this host, and the few things we do to them ourselves: read the OOM
//! kill counter, and remove leftovers that libcontainer no longer knows about.
//!
//! libcontainer creates and configures the cgroups; this module never writes a limit. It runs in the helper
//! process (and in the node only to ask whether swap is accounted). Paths are the spec's `cgroupsPath`
//! (`/<root>/<id>`), relative to each hierarchy's mount point.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use nix::unistd::Pid;

/// Where cgroup file systems are mounted on every distribution libcontainer supports.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroup hierarchies of this host.
#[derive(Debug, Clone)]
pub(super) enum Layout {
    /// cgroup v2 only: one tree at its root.
    Unified(PathBuf),
    /// cgroup v1 (alone or "hybrid" with an empty v2 tree beside it, which libcontainer ignores): one tree
    /// per mount, with the controllers it carries.
    Legacy(Vec<V1Mount>),
}

/// One cgroup v1 hierarchy.
#[derive(Debug, Clone)]
pub(super) struct V1Mount {
    /// Mount point.
    pub path: PathBuf,
    /// Controllers (and `name=` hierarchies) it carries.
    pub controllers: Vec<String>,
}

impl Layout {
    /// Finds this host's layout the way libcontainer does: v2 if `/sys/fs/cgroup` is a cgroup2 mount,
    /// otherwise the v1 mounts listed in `/proc/self/mountinfo`.
    pub(super) fn detect() -> io::Result<Layout> {
        let root = Path::new(CGROUP_MOUNT);
        if statfs(root)?.filesystem_type() == CGROUP2_SUPER_MAGIC {
            return Ok(Layout::Unified(root.to_owned()));
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Layout::Legacy(parse_v1_mounts(&mountinfo)))
    }

    /// Whether this is a cgroup v2 only host.
    pub(super) fn is_unified(&self) -> bool {
        matches!(self, Layout::Unified(_))
    }

    /// The directories of cgroup `rel` in every hierarchy (whether they exist or not).
    pub(super) fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Layout::Unified(root) => vec![root.join(rel)],
            Layout::Legacy(mounts) => mounts.iter().map(|m| m.path.join(rel)).collect(),
        }
    }

    /// The directory of cgroup `rel` in the memory controller, if the host has one.
    fn memory_dir(&self, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Layout::Unified(root) => Some(root.join(rel)),
            Layout::Legacy(mounts) => mounts
                .iter()
                .find(|m| m.controllers.iter().any(|c| c == "memory"))
                .map(|m| m.path.join(rel)),
        }
    }

    /// How many processes of cgroup `rel` the kernel killed for want of memory. v2 counts them in
    /// `memory.events`, v1 in `memory.oom_control` (kernel 4.13 and later): a count, unlike `failcnt`,
    /// which also rises when the cgroup merely reclaims page cache at its limit.
    pub(super) fn oom_kills(&self, rel: &str) -> io::Result<u64> {
        let Some(dir) = self.memory_dir(rel) else {
            return Ok(0);
        };
        let file = match self {
            Layout::Unified(_) => dir.join("memory.events"),
            Layout::Legacy(_) => dir.join("memory.oom_control"),
        };
        Ok(parse_oom_kill(&fs::read_to_string(file)?))
    }

    /// Whether the memory controller accounts swap, so that `memory.swap` can be limited: the swap files
    /// exist only then (v1: `memory.memsw.*` at the root; v2: `memory.swap.max` in every child with the
    /// memory controller, the root having none). Unknown (no v2 child with memory yet) counts as yes, the
    /// default of every kernel since 5.8.
    pub(super) fn swap_accounting(&self) -> bool {
        match self {
            Layout::Unified(root) => fs::read_dir(root)
                .ok()
                .and_then(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .find(|p| p.join("memory.max").exists())
                })
                .is_none_or(|child| child.join("memory.swap.max").exists()),
            Layout::Legacy(_) => self
                .memory_dir("")
                .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists()),
        }
    }

    /// Creates cgroup `rel` and its missing ancestors on a v2 host, where `rel` is a parent of containers.
    /// libcontainer's v2 manager creates each component of a container's path only after seeing it absent,
    /// two steps with a gap between them, so the first containers of a fresh node, created at the same
    /// moment, race for the shared parents and the loser fails with "File exists"; `create_dir_all` takes
    /// EEXIST as success. v1 needs nothing: libcontainer's v1 controllers use `create_dir_all` themselves,
    /// and creating the parents here would leave them in hierarchies no container uses.
    pub(super) fn create_parent(&self, rel: &str) -> io::Result<()> {
        match self {
            Layout::Unified(root) => fs::create_dir_all(root.join(rel.trim_start_matches('/'))),
            Layout::Legacy(_) => Ok(()),
        }
    }

    /// The names of the cgroups directly under `rel` in any hierarchy (a crash's leftovers, for the sweep).
    pub(super) fn children(&self, rel: &str) -> io::Result<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for dir in self.dirs(rel) {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir()
                    && let Some(name) = entry.file_name().to_str()
                {
                    names.insert(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    /// Kills every process in cgroup `rel` and removes it from every hierarchy. Missing directories are
    /// fine: this is the last resort after libcontainer's own delete, which may have done part of it.
    pub(super) fn remove(&self, rel: &str) -> io::Result<()> {
        for dir in self.dirs(rel) {
            if !dir.exists() {
                continue;
            }
            kill_all(&dir)?;
            remove_dir_patiently(&dir)?;
        }
        Ok(())
    }
}

/// SIGKILLs every process of the cgroup at `dir` (v2's `cgroup.kill` does it atomically where it exists).
fn kill_all(dir: &Path) -> io::Result<()> {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        return fs::write(kill_file, "1");
    }
    let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // ESRCH: it exited meanwhile, which is what we want.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    Ok(())
}

/// Removes an (emptied) cgroup directory. A killed process leaves its cgroup a moment after the signal,
/// and neither v1 nor every v2 kernel tells us when, so `EBUSY` is retried for about a second.
fn remove_dir_patiently(dir: &Path) -> io::Result<()> {
    let mut pause = Duration::from_millis(2);
    for _ in 0..10 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                // No event to wait for (see above); a bounded back-off in the single-threaded helper.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
                let _ = kill_all(dir);
            }
            Err(e) => return Err(e),
        }
    }
    fs::remove_dir(dir)
}

/// The v1 hierarchies in a `/proc/self/mountinfo` text.
fn parse_v1_mounts(mountinfo: &str) -> Vec<V1Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent major:minor root mount-point options [optional...] - fstype source super-options`
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            if right.next()? != "cgroup" {
                return None;
            }
            let super_options = right.nth(1)?;
            let path = left.split(' ').nth(4)?;
            Some(V1Mount {
                path: PathBuf::from(path),
                controllers: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The `oom_kill N` line of `memory.events` / `memory.oom_control` (0 if absent: kernels before 4.13).
fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_hierarchies_and_skips_the_rest() {
        let text = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory
38 35 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";
        let mounts = parse_v1_mounts(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].path, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(mounts[0].controllers.contains(&"memory".to_owned()));
        assert!(mounts[1].controllers.contains(&"cpuacct".to_owned()));
        let layout = Layout::Legacy(mounts);
        assert_eq!(
            layout.memory_dir("/cod/x"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/cod/x"))
        );
    }

    #[test]
    fn creates_a_parent_cgroup_on_v2_only_and_takes_one_already_there() {
        let root = tempfile::tempdir().unwrap();
        let unified = Layout::Unified(root.path().to_owned());
        // Twice: a parent that is already there (another container's create got there first) is success.
        unified.create_parent("/cod/peer").unwrap();
        unified.create_parent("/cod/peer").unwrap();
        assert!(root.path().join("cod/peer").is_dir());

        let legacy = Layout::Legacy(vec![V1Mount {
            path: root.path().join("memory"),
            controllers: vec!["memory".to_owned()],
        }]);
        legacy.create_parent("/cod/peer").unwrap();
        assert!(!root.path().join("memory").exists());
    }

    #[test]
    fn reads_the_oom_kill_counter_of_either_version() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            3
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }
}
