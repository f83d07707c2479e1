//! The container runtime layer (`cod::executor::oci::runtime`) against the real kernel: busybox rootfs
//! built from Debian's `busybox-static`, real libcontainer in the real helper (`cod __oci-shim`), real
//! cgroups. Needs root (CI runs as root) and, for the seccomp test's probe, a C compiler with a static libc
//! (`cc`, libc6-dev). Each test has its own state root and cgroup root, so tests run in parallel; each
//! checks that nothing is left behind.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cod::executor::oci::runtime::{
    BindMount, ContainerExit, ContainerNetwork, ContainerRuntime, ContainerSpec, IdMap,
    RuntimeError,
};
use tokio_util::sync::CancellationToken;

use crate::harness::{DEADLINE, mknod_char, wait_until};

/// The busybox applets the tests call.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "ip", "ifconfig", "sleep", "yes", "dd", "true", "false",
    "env", "pwd", "touch", "mount", "unshare", "grep", "wc", "head", "seq", "hostname", "stat",
    "printf", "mkdir", "rm", "kill", "chroot", "tr", "cut", "sed",
];

const BASE: u32 = 100_000;

fn assert_root() {
    let uid = fs::metadata("/proc/self").expect("stat /proc/self").uid();
    assert_eq!(uid, 0, "container tests must run as root (CI does)");
}

/// A temp dir with a busybox rootfs, a state root and a cgroup root of its own, and a runtime on them.
struct Fixture {
    name: String,
    dir: tempfile::TempDir,
    runtime: ContainerRuntime,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        assert_root();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cod-ctr-{name}-"))
            .tempdir()
            .expect("tempdir");
        // The container's root (host uid 100000) must traverse to its rootfs and mounts.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let rootfs = dir.path().join("rootfs");
        for d in [
            "bin", "etc", "proc", "dev", "sys", "tmp", "mnt", "inputs", "outputs", "work",
        ] {
            fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
        chown_tree(&rootfs, BASE);
        let cgroup_root = format!("cod-e2e-{name}-{}", std::process::id());
        let runtime = ContainerRuntime::new(dir.path().join("state"), cgroup_root)
            .expect("runtime")
            .with_helper_exe(env!("CARGO_BIN_EXE_cod"))
            .with_kill_grace(Duration::from_secs(5));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio");
        Fixture {
            name: name.to_owned(),
            dir,
            runtime,
            rt,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A spec running `script` with `sh -c`, output to `<id>.out` / `<id>.err`.
    fn spec(&self, id: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.to_owned(),
            rootfs: self.path("rootfs"),
            bundle_dir: self.path(&format!("bundles/{id}")),
            args: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            env: vec![],
            cwd: "/".to_owned(),
            user: None,
            mounts: vec![],
            devices: vec![],
            masked_paths: vec![],
            stdout: self.path(&format!("{id}.out")),
            stderr: self.path(&format!("{id}.err")),
            memory_bytes: Some(64 << 20),
            cpu_millis: None,
            pids_limit: Some(64),
            network: ContainerNetwork::None,
            id_map: IdMap {
                host_base: BASE,
                size: 65_536,
            },
        }
    }

    fn run_with(
        &self,
        spec: ContainerSpec,
        timeout: Option<Duration>,
    ) -> Result<ContainerExit, RuntimeError> {
        self.rt
            .block_on(self.runtime.run(spec, timeout, CancellationToken::new()))
    }

    /// Runs `spec` and returns its exit, stdout and stderr; also checks nothing is left behind.
    fn run(&self, spec: ContainerSpec) -> (ContainerExit, String, String) {
        let (id, out, err, bundle) = (
            spec.id.clone(),
            spec.stdout.clone(),
            spec.stderr.clone(),
            spec.bundle_dir.clone(),
        );
        let exit = self.run_with(spec, Some(DEADLINE)).unwrap_or_else(|e| {
            panic!(
                "run {id} failed: {e}\nhelper log:\n{}",
                fs::read_to_string(bundle.join("helper.log")).unwrap_or_default()
            )
        });
        self.assert_clean();
        (
            exit,
            fs::read_to_string(out).unwrap_or_default(),
            fs::read_to_string(err).unwrap_or_default(),
        )
    }

    /// The cgroup dirs of container `id` (all hierarchies).
    fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|(mp, _)| mp.join(self.runtime.cgroup_root()).join(id))
            .collect()
    }

    /// No state dir and no cgroup is left under this fixture's roots.
    fn assert_clean(&self) {
        let state: Vec<_> = fs::read_dir(self.runtime.state_root())
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(state.is_empty(), "state left behind: {state:?}");
        for (mp, _) in cgroup_mounts() {
            let root = mp.join(self.runtime.cgroup_root());
            let left: Vec<_> = fs::read_dir(&root)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.file_name())
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                left.is_empty(),
                "cgroups left behind in {}: {left:?}",
                root.display()
            );
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The per-test cgroup roots themselves (libcontainer leaves parents in place).
        for (mp, _) in cgroup_mounts() {
            let _ = fs::remove_dir(mp.join(self.runtime.cgroup_root()));
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "fixture {} kept for inspection: {}",
                self.name,
                self.dir.path().display()
            );
        }
    }
}

fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).expect("lchown");
    if fs::symlink_metadata(path).expect("stat").is_dir() {
        for entry in fs::read_dir(path).expect("readdir") {
            chown_tree(&entry.expect("entry").path(), id);
        }
    }
}

/// Every cgroup hierarchy: (mount point, is v2). On a v1 or hybrid host the v1 ones, as libcontainer uses.
fn cgroup_mounts() -> Vec<(PathBuf, bool)> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut v1 = Vec::new();
    let mut unified_root = false;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mp = left.split(' ').nth(4).unwrap_or_default();
        match right.split(' ').next() {
            Some("cgroup") => v1.push((PathBuf::from(mp), false)),
            Some("cgroup2") if mp == "/sys/fs/cgroup" => unified_root = true,
            _ => {}
        }
    }
    if unified_root {
        vec![(PathBuf::from("/sys/fs/cgroup"), true)]
    } else {
        v1
    }
}

/// The dir of container `id` in the hierarchy carrying `controller` (v2: the one tree).
fn controller_dir(fx: &Fixture, id: &str, controller: &str) -> PathBuf {
    let mounts = cgroup_mounts();
    let mp = if mounts.len() == 1 && mounts[0].1 {
        mounts[0].0.clone()
    } else {
        mounts
            .into_iter()
            .map(|(mp, _)| mp)
            .find(|mp| {
                mp.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.split(',').any(|c| c == controller))
            })
            .unwrap_or_else(|| panic!("no {controller} hierarchy"))
    };
    mp.join(fx.runtime.cgroup_root()).join(id)
}

fn is_v2() -> bool {
    let m = cgroup_mounts();
    m.len() == 1 && m[0].1
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn echo_exit_code_and_stderr() {
    let fx = Fixture::new("echo");
    let (exit, out, err) = fx.run(fx.spec("echo", "echo hello; echo oops >&2; exit 3"));
    assert_eq!(exit, ContainerExit::Exited { code: 3 });
    assert_eq!(out, "hello\n");
    assert_eq!(err, "oops\n");
    let (exit, _, _) = fx.run(fx.spec("true", "true"));
    assert_eq!(exit, ContainerExit::Exited { code: 0 });
}

#[test]
fn env_cwd_and_args_reach_the_process() {
    let fx = Fixture::new("env");
    let mut spec = fx.spec("env", r#"echo "$FOO|$(pwd)|$0|$1|$PATH""#);
    spec.args.extend(["zero".to_owned(), "one".to_owned()]);
    spec.env = vec!["FOO=bar baz".to_owned()];
    spec.cwd = "/work".to_owned();
    let (exit, out, _) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 });
    assert_eq!(
        out.trim(),
        "bar baz|/work|zero|one|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
}

#[test]
fn mounts_rootfs_and_tmp_permissions() {
    let fx = Fixture::new("mounts");
    let inputs = fx.path("in");
    let outputs = fx.path("out");
    fs::create_dir_all(&inputs).expect("mkdir");
    fs::write(inputs.join("data.txt"), "input data\n").expect("write");
    fs::create_dir_all(&outputs).expect("mkdir");
    // Output dirs belong to the mapped root, as the executor will prepare them.
    chown_tree(&outputs, BASE);
    let mut spec = fx.spec(
        "mounts",
        "cat /inputs/data.txt; \
         touch /inputs/new 2>/dev/null && echo INPUT-WRITABLE; \
         echo result > /outputs/result.txt && echo out-ok; \
         touch /newfile 2>/dev/null && echo ROOT-WRITABLE; \
         echo scratch > /tmp/s && cat /tmp/s",
    );
    spec.mounts = vec![
        BindMount {
            source: inputs.clone(),
            target: "/inputs".to_owned(),
            read_only: true,
        },
        BindMount {
            source: outputs.clone(),
            target: "/outputs".to_owned(),
            read_only: false,
        },
    ];
    let (exit, out, err) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    assert_eq!(out, "input data\nout-ok\nscratch\n");
    assert!(!inputs.join("new").exists());
    let meta = fs::metadata(outputs.join("result.txt")).expect("result written");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (BASE, BASE),
        "owned by the mapped root"
    );
    assert!(!fx.path("rootfs/newfile").exists());
}

#[test]
fn root_inside_is_the_mapped_uid_outside() {
    let fx = Fixture::new("ids");
    let (exit, out, _) = fx.run(fx.spec("ids", "id -u; id -g; cat /proc/self/uid_map; hostname"));
    assert_eq!(exit, ContainerExit::Exited { code: 0 });
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"]);
    assert_eq!(lines[1], ["0"]);
    assert_eq!(lines[2], ["0", "100000", "65536"]);
    assert_eq!(lines[3], ["ids"]);
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let fx = Fixture::new("netnone");
    let (exit, out, err) = fx.run(fx.spec("netnone", "ls /sys/class/net; ip -o link; ip -o addr"));
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo"));
    let links: Vec<&str> = out.lines().filter(|l| l.contains(": <")).collect();
    assert_eq!(links.len(), 1, "{out}");
    assert!(links[0].contains("lo:") && links[0].contains("UP"), "{out}");
    assert!(out.contains("127.0.0.1"), "{out}");
}

#[test]
fn host_network_sees_the_nodes_interfaces() {
    let fx = Fixture::new("nethost");
    let mut spec = fx.spec("nethost", "ls /sys/class/net");
    spec.network = ContainerNetwork::Host;
    let (exit, out, err) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let inside: BTreeSet<&str> = out.lines().collect();
    let host_names: Vec<String> = fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let host: BTreeSet<&str> = host_names.iter().map(String::as_str).collect();
    assert_eq!(inside, host);
}

#[test]
fn joins_a_prepared_network_namespace() {
    let fx = Fixture::new("netjoin");
    // A persistent netns bound to a file, with a marker address only it has (busybox on the host).
    let ns = fx.path("netns");
    fs::write(&ns, "").expect("touch");
    let ns_arg = format!("--net={}", ns.display());
    let ok = |args: &[&str]| {
        let status = Command::new("/bin/busybox")
            .args(args)
            .status()
            .expect("busybox");
        assert!(status.success(), "busybox {args:?}");
    };
    ok(&["unshare", &ns_arg, "true"]);
    ok(&[
        "nsenter",
        &ns_arg,
        "/bin/busybox",
        "ip",
        "addr",
        "add",
        "10.77.0.1/32",
        "dev",
        "lo",
    ]);
    let mut spec = fx.spec("netjoin", "ip -o addr; ls /sys/class/net");
    spec.network = ContainerNetwork::Join(ns.clone());
    let result = fx.run_with(spec, Some(DEADLINE));
    let _ = nix::mount::umount(&ns);
    assert_eq!(result.expect("run"), ContainerExit::Exited { code: 0 });
    fx.assert_clean();
    let out = fs::read_to_string(fx.path("netjoin.out")).expect("stdout");
    assert!(out.contains("10.77.0.1/32"), "{out}");
    assert!(out.lines().any(|l| l == "lo"), "{out}");
}

#[test]
fn memory_bomb_is_out_of_memory() {
    let fx = Fixture::new("oom");
    let mut spec = fx.spec("oom", "a=0123456789abcdef; while true; do a=$a$a; done");
    spec.memory_bytes = Some(32 << 20);
    let (exit, _, _) = fx.run(spec);
    assert_eq!(exit, ContainerExit::OutOfMemory);
}

#[test]
fn pids_limit_bounds_a_fork_bomb() {
    let fx = Fixture::new("pids");
    // Deterministic: the 20th process cannot be forked.
    let mut spec = fx.spec(
        "pids",
        "for i in $(seq 1 40); do sleep 1000 & done; echo never",
    );
    spec.pids_limit = Some(20);
    let (exit, out, err) = fx.run(spec);
    assert!(
        matches!(exit, ContainerExit::Exited { code } if code != 0),
        "{exit:?}"
    );
    assert!(!out.contains("never"));
    assert!(err.contains("can't fork"), "stderr: {err}");

    // A real fork bomb runs until its timeout, and the node (this test) survives it.
    let mut spec = fx.spec("bomb", "f() { f | f & }; f; sleep 1000");
    spec.pids_limit = Some(32);
    let started = Instant::now();
    let exit = fx
        .run_with(spec, Some(Duration::from_secs(2)))
        .expect("run");
    assert_eq!(exit, ContainerExit::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    fx.assert_clean();
}

#[test]
fn endless_loop_times_out() {
    let fx = Fixture::new("timeout");
    let started = Instant::now();
    let exit = fx
        .run_with(
            fx.spec("spin", "while :; do :; done"),
            Some(Duration::from_secs(1)),
        )
        .expect("run");
    let took = started.elapsed();
    assert_eq!(exit, ContainerExit::TimedOut);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    fx.assert_clean();
}

#[test]
fn cancel_stops_a_running_container_whose_cgroup_shows_the_limits() {
    let fx = Fixture::new("cancel");
    let mut spec = fx.spec("cancel", "sleep 1000");
    spec.memory_bytes = Some(48 << 20);
    spec.cpu_millis = Some(500);
    spec.pids_limit = Some(77);
    let cancel = CancellationToken::new();
    let task = fx.rt.spawn({
        let runtime = fx.runtime.clone();
        let cancel = cancel.clone();
        async move { runtime.run(spec, None, cancel).await }
    });
    let pids_dir = controller_dir(&fx, "cancel", "pids");
    let pid = wait_for_exec(&fx, "cancel", "sleep");
    // Root inside, uid 100000 outside.
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("100000"),
        "{uid_line}"
    );
    // The limits, as the kernel holds them.
    assert_eq!(read(&pids_dir.join("pids.max")), "77");
    if is_v2() {
        assert_eq!(
            read(&pids_dir.join("memory.max")),
            (48u64 << 20).to_string()
        );
        assert_eq!(read(&pids_dir.join("cpu.max")), "50000 100000");
    } else {
        let mem = controller_dir(&fx, "cancel", "memory");
        assert_eq!(
            read(&mem.join("memory.limit_in_bytes")),
            (48u64 << 20).to_string()
        );
        assert_eq!(
            read(&mem.join("memory.memsw.limit_in_bytes")),
            (48u64 << 20).to_string()
        );
        let cpu = controller_dir(&fx, "cancel", "cpu");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    }
    let started = Instant::now();
    cancel.cancel();
    let exit = fx.rt.block_on(task).expect("join").expect("run");
    assert_eq!(exit, ContainerExit::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived"
    );
    fx.assert_clean();
}

#[test]
fn cgroup_limits_are_visible_inside() {
    let fx = Fixture::new("cgin");
    let script = if is_v2() {
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"
    } else {
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
    };
    let mut spec = fx.spec("cgin", script);
    spec.memory_bytes = Some(40 << 20);
    spec.pids_limit = Some(55);
    let (exit, out, err) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    assert_eq!(out, format!("{}\n55\n", 40u64 << 20));
}

/// A static probe calling raw `clone` with no, user-namespace and mount-namespace flags, printing
/// `<flags> ok` or `<flags> <error>` for each: busybox has no applet that passes namespace flags to `clone`,
/// and that argument check is the part of Docker's profile most easily got wrong.
const CLONE_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    long flags[] = {SIGCHLD, CLONE_NEWUSER | SIGCHLD, CLONE_NEWNS | SIGCHLD};
    for (int i = 0; i < 3; i++) {
        long pid = syscall(SYS_clone, flags[i], 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        if (pid < 0) { printf("%lx %s\n", flags[i], strerror(errno)); continue; }
        waitpid(pid, 0, 0);
        printf("%lx ok\n", flags[i]);
    }
    return 0;
}
"#;

/// Builds [`CLONE_PROBE`] statically into `dest` (CI installs a C compiler and libc6-dev).
fn build_clone_probe(dir: &Path, dest: &Path) {
    let src = dir.join("clone_probe.c");
    fs::write(&src, CLONE_PROBE).expect("write probe");
    let status = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(dest)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed to build the clone probe");
    assert!(status.success(), "cc failed to build the clone probe");
}

#[test]
fn seccomp_allows_forks_but_not_new_namespaces() {
    let fx = Fixture::new("seccomp");
    let probe = fx.path("rootfs/bin/clone_probe");
    build_clone_probe(fx.dir.path(), &probe);
    chown_tree(&probe, BASE);
    // Controls on the host: the probe and busybox's unshare work where nothing filters them.
    let host = Command::new(&probe).output().expect("run probe");
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        "11 ok\n10000011 ok\n20011 ok\n"
    );
    let host = Command::new("/bin/busybox")
        .args(["unshare", "-U", "true"])
        .status()
        .expect("busybox unshare");
    assert!(host.success(), "busybox unshare -U works on the host");
    // Inside, a user namespace needs no capability, so only the filter can refuse one.
    let (exit, out, err) = fx.run(fx.spec(
        "seccomp",
        "grep -E '^Seccomp(_filters)?:' /proc/self/status; \
         (true & wait) && echo fork-ok; \
         unshare -U true; echo unshare=$?; \
         clone_probe",
    ));
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"],
        "{out}"
    );
    assert!(
        lines[1].starts_with("Seccomp_filters:") && !lines[1].ends_with(" 0"),
        "{out}"
    );
    assert_eq!(lines[2], "fork-ok");
    assert_eq!(lines[3], "unshare=1", "{out}");
    assert!(err.contains("Operation not permitted"), "stderr: {err}");
    assert_eq!(
        lines[4..],
        [
            "11 ok",
            "10000011 Operation not permitted",
            "20011 Operation not permitted"
        ],
        "{out}"
    );
}

#[test]
fn capabilities_are_dockers_and_mount_is_denied() {
    let fx = Fixture::new("caps");
    let (exit, out, err) = fx.run(fx.spec(
        "caps",
        "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status; \
         mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?",
    ));
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let fields: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{k} missing in {out}"))
    };
    // Docker's 14 default capabilities; CAP_SYS_ADMIN (bit 21) is not among them.
    const DOCKER: &str = "00000000a80425fb";
    assert_eq!(get("CapEff"), DOCKER);
    assert_eq!(get("CapPrm"), DOCKER);
    assert_eq!(get("CapBnd"), DOCKER);
    assert_eq!(get("CapInh"), "0000000000000000");
    assert_eq!(get("CapAmb"), "0000000000000000");
    assert_eq!(get("NoNewPrivs"), "1");
    let eff = u64::from_str_radix(get("CapEff"), 16).expect("hex");
    assert_eq!(eff & (1 << 21), 0);
    assert!(out.contains("mount=") && !out.contains("mount=0"), "{out}");
}

#[test]
fn signals_are_neither_blocked_nor_ignored() {
    let fx = Fixture::new("signals");
    // The helper blocks SIGCHLD for itself and Rust ignores SIGPIPE in every binary it starts: neither may
    // reach the container (`yes | head -1` must end). `cat` is the init itself, so no shell changes anything.
    let mut spec = fx.spec("signals", "");
    spec.args = vec!["cat".to_owned(), "/proc/self/status".to_owned()];
    let (exit, out, _) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 });
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{k} missing"))
            .to_owned()
    };
    assert_eq!(field("SigBlk:"), "0000000000000000");
    // Whatever the node's own launcher ignores is inherited, as with any runtime; SIGPIPE must not be.
    let ignored = u64::from_str_radix(&field("SigIgn:"), 16).expect("hex");
    assert_eq!(
        ignored & (1 << (13 - 1)),
        0,
        "SIGPIPE is ignored: {ignored:x}"
    );
    let (exit, out, _) = fx.run(fx.spec("pipe", "yes | head -1"));
    assert_eq!(
        (exit, out.as_str()),
        (ContainerExit::Exited { code: 0 }, "y\n")
    );
}

#[test]
fn masked_and_readonly_paths_and_devices() {
    let fx = Fixture::new("masked");
    // Masked files read as empty inside; /proc/interrupts is world-readable and never empty on a host.
    let host_size = fs::read("/proc/interrupts")
        .expect("/proc/interrupts")
        .len();
    assert!(host_size > 0);
    let (exit, out, err) = fx.run(fx.spec(
        "masked",
        "for p in /proc/interrupts /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $p ] && echo \"$p $(wc -c < $p)\"; \
         done; \
         echo \"firmware $(ls /sys/firmware | wc -l)\"; \
         echo 1 > /proc/sysrq-trigger 2>/dev/null; echo \"sysrq $?\"; \
         echo \"dev $(ls /dev | tr '\\n' ' ')\"",
    ));
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let mut seen = BTreeSet::new();
    for line in out.lines() {
        let (key, value) = line.split_once(' ').expect("key value");
        seen.insert(key);
        match key {
            "sysrq" => assert_ne!(value, "0", "/proc/sysrq-trigger is read-only"),
            "dev" => {
                let dev: BTreeSet<&str> = value.split_whitespace().collect();
                for d in [
                    "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
                ] {
                    assert!(dev.contains(d), "/dev/{d} missing: {dev:?}");
                }
            }
            masked => assert_eq!(value.trim(), "0", "{masked} is masked: {out}"),
        }
    }
    assert!(
        seen.contains("/proc/interrupts") && seen.contains("firmware"),
        "{out}"
    );
}

/// Where the runtime writes the helper request of container `id` (the sweep finds helpers by it).
fn request_of(fx: &Fixture, id: &str) -> PathBuf {
    fx.runtime.state_root().join(format!("{id}.request.json"))
}

/// Waits until container `id` runs its command (exec'd, so no longer a clone of the helper); its pid.
fn wait_for_exec(fx: &Fixture, id: &str, command: &str) -> u32 {
    let pids_dir = controller_dir(fx, id, "pids");
    wait_until(&format!("{id} to run {command}"), DEADLINE, || {
        let procs = fs::read_to_string(pids_dir.join("cgroup.procs")).ok()?;
        procs
            .lines()
            .filter_map(|l| l.parse::<u32>().ok())
            .find(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(command.as_bytes()))
            })
    })
}

/// The processes running the helper request `request`: the helper, and libcontainer's clones of it until
/// they exec (live ones only, in pid order).
fn processes_of(request: &Path) -> Vec<i32> {
    let needle = request.to_string_lossy();
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let live = !stat.contains(") Z ");
            (live && String::from_utf8_lossy(&cmdline).contains(needle.as_ref())).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The parent of `pid`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// The pid of the helper running `request`: the one of its processes whose parent is not another one.
fn find_helper(request: &Path) -> nix::unistd::Pid {
    let pids = processes_of(request);
    let helper = pids
        .iter()
        .copied()
        .find(|p| parent_of(*p).is_some_and(|pp| !pids.contains(&pp)))
        .unwrap_or_else(|| panic!("no helper for {}", request.display()));
    nix::unistd::Pid::from_raw(helper)
}

fn wait_dead(pid: u32) {
    wait_until(&format!("process {pid} to die"), DEADLINE, || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // Gone, or a zombie waiting for the host's init to reap it.
        (stat.is_none() || stat.is_some_and(|s| s.contains(") Z "))).then_some(())
    });
}

#[test]
fn sweep_removes_what_a_killed_helper_left() {
    let fx = Fixture::new("sweep");
    // A node that dies mid-run: its own runtime, torn down with the helper stopped, then the helper killed.
    let node = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let spec = fx.spec("orphan", "sleep 1000");
    node.spawn({
        let runtime = fx.runtime.clone();
        async move { runtime.run(spec, None, CancellationToken::new()).await }
    });
    let init = wait_for_exec(&fx, "orphan", "sleep");
    let helper = find_helper(&request_of(&fx, "orphan"));
    // Stopped, the helper cannot act on its kill pipe closing when the node's runtime goes.
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    node.shutdown_background();
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    // We are the helper's parent now that the runtime is gone: reap it.
    let _ = nix::sys::wait::waitpid(helper, None);
    assert!(
        Path::new(&format!("/proc/{init}")).exists(),
        "the container outlived its helper"
    );
    assert!(fx.runtime.state_root().join("orphan").exists());

    let swept = fx.rt.block_on(fx.runtime.sweep()).expect("sweep");
    assert_eq!(swept, 1);
    fx.assert_clean();
    for dir in fx.cgroup_dirs("orphan") {
        assert!(!dir.exists(), "{} survived", dir.display());
    }
    wait_dead(init);
    // A second sweep finds nothing.
    assert_eq!(fx.rt.block_on(fx.runtime.sweep()).expect("sweep"), 0);
}

fn spawn_run(
    fx: &Fixture,
    runtime: ContainerRuntime,
    spec: ContainerSpec,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<ContainerExit, RuntimeError>> {
    fx.rt
        .spawn(async move { runtime.run(spec, None, cancel).await })
}

#[test]
fn a_dead_helper_is_reported_and_its_container_removed() {
    let fx = Fixture::new("helperdied");
    let task = spawn_run(
        &fx,
        fx.runtime.clone(),
        fx.spec("victim", "sleep 1000"),
        CancellationToken::new(),
    );
    let init = wait_for_exec(&fx, "victim", "sleep");
    let helper = find_helper(&request_of(&fx, "victim"));
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    match fx.rt.block_on(task).expect("join") {
        Err(RuntimeError::HelperDied { status, .. }) => assert!(status.contains("9"), "{status}"),
        other => panic!("expected HelperDied, got {other:?}"),
    }
    fx.assert_clean();
    wait_dead(init);
}

#[test]
fn a_helper_killed_while_creating_leaves_nothing() {
    let fx = Fixture::new("midcreate");
    // Kill the helper as soon as libcontainer has cloned it: a clone then waits forever for a uid map or a
    // start signal that will never come, holding the helper's pipes, possibly outside any cgroup yet. The
    // window is milliseconds wide, so some rounds miss it (and kill a running container's helper instead,
    // which must be just as clean); enough rounds must hit it.
    let mut hits = 0;
    for round in 0..8 {
        let id = format!("early{round}");
        let request = request_of(&fx, &id);
        let task = spawn_run(
            &fx,
            fx.runtime.clone(),
            fx.spec(&id, "sleep 1000"),
            CancellationToken::new(),
        );
        let pids_dir = controller_dir(&fx, &id, "pids");
        let (helper, hit) = wait_until("a clone of the helper, or the container", DEADLINE, || {
            let pids = processes_of(&request);
            if pids.len() >= 2 {
                return Some((find_helper(&request), true));
            }
            let running = fs::read_to_string(pids_dir.join("cgroup.procs")).is_ok_and(|p| {
                p.lines().any(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
                })
            });
            (running && !pids.is_empty()).then(|| (find_helper(&request), false))
        });
        nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        hits += usize::from(hit);
        let result = fx.rt.block_on(task).expect("join");
        assert!(
            matches!(result, Err(RuntimeError::HelperDied { .. })),
            "{result:?}"
        );
        fx.assert_clean();
        wait_until("the helper's clones to die", DEADLINE, || {
            processes_of(&request).is_empty().then_some(())
        });
    }
    assert!(
        hits >= 2,
        "only {hits} of 8 rounds caught the helper while creating"
    );
}

#[test]
fn a_stuck_helper_is_killed_after_the_grace() {
    let fx = Fixture::new("stuck");
    let runtime = fx
        .runtime
        .clone()
        .with_kill_grace(Duration::from_millis(500));
    let cancel = CancellationToken::new();
    let task = spawn_run(&fx, runtime, fx.spec("stuck", "sleep 1000"), cancel.clone());
    wait_for_exec(&fx, "stuck", "sleep");
    let helper = find_helper(&request_of(&fx, "stuck"));
    // A stopped helper cannot act on the kill request: only the grace ends this run.
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let started = Instant::now();
    cancel.cancel();
    let exit = fx.rt.block_on(task).expect("join").expect("run");
    assert_eq!(exit, ContainerExit::Cancelled);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    fx.assert_clean();
}

#[test]
fn rejects_bad_specs_before_touching_anything() {
    let fx = Fixture::new("invalid");
    let mut spec = fx.spec("Bad_Id", "true");
    spec.cwd = "relative".to_owned();
    match fx.run_with(spec, None) {
        Err(RuntimeError::InvalidSpec { problems, .. }) => {
            assert_eq!(problems.len(), 2, "{problems:?}")
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    // A missing command is libcontainer's to find; its cause reaches the error.
    let spec = fx.spec("nocmd", "true");
    let spec = ContainerSpec {
        args: vec!["/bin/does-not-exist".to_owned()],
        ..spec
    };
    let err = fx.run_with(spec, None).expect_err("cannot start");
    assert!(matches!(err, RuntimeError::Start { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    fx.assert_clean();
}

/// Median wall time of `run()` for `true`, printed for the record (`--nocapture`); bounded so a
/// regression to seconds fails.
#[test]
fn run_true_latency() {
    let fx = Fixture::new("latency");
    let mut times = Vec::new();
    for i in 0..20 {
        let spec = fx.spec(&format!("t{i}"), "true");
        let started = Instant::now();
        let exit = fx.run_with(spec, None).expect("run");
        times.push(started.elapsed());
        assert_eq!(exit, ContainerExit::Exited { code: 0 });
    }
    fx.assert_clean();
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "run(true) x{}: median {:?}, min {:?}, max {:?}",
        times.len(),
        median,
        times[0],
        times[times.len() - 1]
    );
    assert!(median < Duration::from_secs(2), "median {median:?}");
}

// === GPUs: a fake driver root, exposed by the real plan and runtime ===

/// Driver version of the fake driver root's libraries.
const FAKE_DRIVER: &str = "535.104.05";

/// A fake driver root under the fixture: `dev/<name>` nodes with the given numbers, `libnvidia-ml` with its
/// soname link, and an `nvidia-smi` that lists the GPU nodes it sees and the visible devices it was told.
fn fake_driver_root(fx: &Fixture, nodes: &[(&str, u64, u64)]) -> PathBuf {
    let root = fx.path("driver");
    fs::create_dir_all(root.join("dev")).expect("mkdir");
    for (name, major, minor) in nodes {
        mknod_char(&root.join("dev").join(name), *major, *minor);
    }
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&lib).expect("mkdir");
    fs::write(
        lib.join(format!("libnvidia-ml.so.{FAKE_DRIVER}")),
        "fake nvml\n",
    )
    .expect("lib");
    symlink(
        format!("libnvidia-ml.so.{FAKE_DRIVER}"),
        lib.join("libnvidia-ml.so.1"),
    )
    .expect("soname link");
    let bin = root.join("usr/bin");
    fs::create_dir_all(&bin).expect("mkdir");
    fs::write(
        bin.join("nvidia-smi"),
        "#!/bin/sh\nls /dev/nvidia[0-9]*\necho \"visible $NVIDIA_VISIBLE_DEVICES\"\n",
    )
    .expect("nvidia-smi");
    fs::set_permissions(bin.join("nvidia-smi"), fs::Permissions::from_mode(0o755)).expect("chmod");
    root
}

fn fake_gpu(index: u32) -> cod::gpu::Gpu {
    cod::gpu::Gpu {
        index,
        name: "Fake GPU".to_owned(),
        vendor: cod::gpu::GpuVendor::Nvidia,
        memory_bytes: 16 << 30,
        pci_address: format!("0000:0{index}:00.0"),
        uuid: format!("GPU-fake-{index}"),
        minor: Some(index),
    }
}

/// `spec` with the exposure of `gpus` from `driver_root` applied, as the engine does.
fn with_gpus(mut spec: ContainerSpec, gpus: &[cod::gpu::Gpu], driver_root: &Path) -> ContainerSpec {
    let exposure = cod::executor::oci::gpu::plan(gpus, driver_root).expect("plan");
    let mut env: std::collections::BTreeMap<String, String> = spec
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.insert(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    );
    exposure.apply_env(&mut env);
    spec.env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    spec.mounts.extend(exposure.mounts);
    spec.devices = exposure.devices;
    spec.masked_paths = exposure.masked_paths;
    spec
}

#[test]
fn a_container_given_gpu_1_of_2_sees_only_it_with_the_driver_files() {
    let fx = Fixture::new("gpu");
    // /dev/null's and /dev/zero's numbers: the fake nodes read like them.
    let root = fake_driver_root(
        &fx,
        &[
            ("nvidia0", 1, 3),
            ("nvidia1", 1, 5),
            ("nvidiactl", 1, 3),
            ("nvidia-uvm", 1, 3),
        ],
    );
    let spec = with_gpus(
        fx.spec(
            "gpu",
            "echo \"dev $(ls /dev | grep nvidia | tr '\\n' ' ')\"; \
             echo \"read $(head -c 16 /dev/nvidia1 | wc -c)\"; \
             echo \"smi $(command -v nvidia-smi)\"; nvidia-smi; \
             echo \"lib $(cat /usr/local/nvidia/lib64/libnvidia-ml.so.1)\"; \
             echo \"libs $(ls /usr/local/nvidia/lib64 | tr '\\n' ' ')\"; \
             echo \"ld $LD_LIBRARY_PATH\"; echo \"caps $NVIDIA_DRIVER_CAPABILITIES\"; \
             echo \"cuda ${CUDA_VISIBLE_DEVICES-unset}\"; \
             echo \"mount $(grep ' /dev/nvidia1 ' /proc/self/mounts | cut -d' ' -f4)\"",
        ),
        &[fake_gpu(1)],
        &root,
    );
    let (exit, out, err) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"dev nvidia-uvm nvidia1 nvidiactl "),
        "only the given GPU's node and the control nodes: {out}"
    );
    for expected in [
        "read 16",
        "smi /usr/local/nvidia/bin/nvidia-smi",
        "/dev/nvidia1",
        "visible GPU-fake-1",
        "lib fake nvml",
        &format!("libs libnvidia-ml.so.1 libnvidia-ml.so.{FAKE_DRIVER} "),
        "ld /usr/local/nvidia/lib64",
        "caps compute,utility",
        "cuda unset",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {out}");
    }
    // nvidia-smi's listing has exactly one GPU node.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("/dev/nvidia"))
            .count(),
        1,
        "{out}"
    );
    let mount = lines
        .iter()
        .find_map(|l| l.strip_prefix("mount "))
        .expect("mount line");
    assert!(
        mount.contains("nosuid") && !mount.contains("nodev"),
        "device bound without nodev: {mount}"
    );
}

/// A character major no driver of this host has registered (`/proc/devices`): nodes with it open past the
/// device cgroup and then fail with ENXIO, while the cgroup refuses with EPERM.
fn unregistered_char_major() -> u64 {
    let devices = fs::read_to_string("/proc/devices").expect("/proc/devices");
    let used: BTreeSet<u64> = devices
        .lines()
        .take_while(|l| !l.starts_with("Block"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    (200..=239)
        .rev()
        .find(|m| !used.contains(m))
        .expect("a free character major in 200..=239")
}

#[test]
fn the_device_cgroup_allows_only_the_given_gpus_numbers() {
    if is_v2() {
        eprintln!("cgroup v2: device rules need eBPF, which the runtime does not use; skipped");
        return;
    }
    let fx = Fixture::new("gpucg");
    let major = unregistered_char_major();
    let root = fake_driver_root(
        &fx,
        &[
            ("nvidia0", major, 0),
            ("nvidia1", major, 1),
            ("nvidiactl", major, 255),
        ],
    );
    // Copies of both GPUs' nodes in the image itself, where the container can reach them: the same file
    // system and mode for both, so only the device cgroup tells them apart.
    let mnt = fx.path("rootfs/mnt");
    mknod_char(&mnt.join("copy0"), major, 0);
    mknod_char(&mnt.join("copy1"), major, 1);
    let spec = with_gpus(
        fx.spec(
            "gpucg",
            "for d in /dev/nvidia1 /mnt/copy1 /mnt/copy0; do \
               echo \"$d $(cat $d 2>&1 >/dev/null | sed 's/.*: //')\"; \
             done; \
             echo \"rules $(grep ' rwm' /sys/fs/cgroup/devices/devices.list | grep -c \"^c $0:\")\"",
        ),
        &[fake_gpu(1)],
        &root,
    );
    // `$0` of `sh -c script name`: the major, so the script can count the rules with it.
    let spec = ContainerSpec {
        args: [spec.args.clone(), vec![major.to_string()]].concat(),
        ..spec
    };
    let (exit, out, err) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        "/dev/nvidia1 No such device or address",
        "/mnt/copy1 No such device or address",
        "/mnt/copy0 Operation not permitted",
        // nvidia1 and nvidiactl, never nvidia0.
        "rules 2",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {out}");
    }
}

#[test]
fn an_integrated_gpu_gets_the_files_jetpacks_lists_name() {
    let fx = Fixture::new("tegra");
    let root = fx.path("driver");
    let csv_dir = root.join(cod::executor::oci::gpu::TEGRA_CSV_DIR);
    fs::create_dir_all(&csv_dir).expect("mkdir");
    fs::create_dir_all(root.join("dev")).expect("mkdir");
    mknod_char(&root.join("dev/nvhost-ctrl"), 1, 5);
    let lib = root.join("usr/lib/aarch64-linux-gnu");
    fs::create_dir_all(lib.join("tegra")).expect("mkdir");
    fs::write(lib.join("tegra/libcuda.so.1.1"), "fake tegra cuda\n").expect("lib");
    fs::write(lib.join("tegra/libnvrm_gpu.so"), "fake nvrm\n").expect("lib");
    symlink("tegra/libcuda.so.1.1", lib.join("libcuda.so")).expect("link");
    fs::write(
        csv_dir.join("l4t.csv"),
        "dev, /dev/nvhost-ctrl\n\
         dev, /dev/nvhost-ctrl-gpu\n\
         lib, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1\n\
         sym, /usr/lib/aarch64-linux-gnu/libcuda.so\n\
         dir, /usr/lib/aarch64-linux-gnu/tegra\n",
    )
    .expect("csv");
    let orin = cod::gpu::Gpu {
        minor: None,
        pci_address: String::new(),
        name: "Orin (nvgpu)".to_owned(),
        ..fake_gpu(0)
    };
    let spec = with_gpus(
        fx.spec(
            "tegra",
            "echo \"dev $(ls /dev | grep nv | tr '\\n' ' ')\"; \
             echo \"read $(head -c 4 /dev/nvhost-ctrl | wc -c)\"; \
             echo \"sym $(cat /usr/lib/aarch64-linux-gnu/libcuda.so)\"; \
             echo \"dir $(ls /usr/lib/aarch64-linux-gnu/tegra | tr '\\n' ' ')\"; \
             echo \"ld $LD_LIBRARY_PATH\"; echo \"visible $NVIDIA_VISIBLE_DEVICES\"",
        ),
        &[orin],
        &root,
    );
    let (exit, out, err) = fx.run(spec);
    assert_eq!(exit, ContainerExit::Exited { code: 0 }, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        "dev nvhost-ctrl ",
        "read 4",
        "sym fake tegra cuda",
        "dir libcuda.so.1.1 libnvrm_gpu.so ",
        "ld /usr/lib/aarch64-linux-gnu/tegra",
        "visible GPU-fake-0",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {out}");
    }
}
