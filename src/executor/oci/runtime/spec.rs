//! The OCI runtime spec (`config.json`) for one [`ContainerSpec`]: Docker's defaults for an unprivileged
//! container, in a user namespace, with our limits.
//!
//! Every field is set explicitly: oci-spec's builders fall back to `Spec::default()`, whose process gets
//! inheritable and ambient capabilities and whose mounts are not Docker's, so nothing here may be left to a
//! default. Pure data: no I/O (the caller measures the host and passes a [`Host`]).

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{ContainerNetwork, ContainerSpec, DeviceKind, seccomp};

/// Docker's default capability set (moby `oci/caps/defaults.go`): enough to run package managers and
/// daemons that drop privileges, nothing that reaches outside the container's namespaces.
pub(super) const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Processes (and threads) per container when the caller sets no limit: a fork bomb stops here instead of
/// exhausting the node's pid space. 1024 is far above what a batch job needs and what a 512 MiB board can
/// hold anyway.
pub(super) const DEFAULT_PIDS_LIMIT: u64 = 1024;

/// Size cap of the container's `/tmp` (a tmpfs). Its pages are charged to the container's memory cgroup as
/// well, so a memory limit below this is the real cap.
pub(super) const TMP_SIZE_BYTES: u64 = 256 * 1024 * 1024;

/// CFS period for the CPU quota: the kernel's default (100 ms), as Docker uses.
pub(super) const CPU_PERIOD_US: u64 = 100_000;

/// Soft `RLIMIT_NOFILE`: 1024 keeps `select()`-based programs safe (glibc's FD_SETSIZE), programs that need
/// more raise it up to the hard limit themselves (systemd's reasoning for the same default).
pub(super) const NOFILE_SOFT: u64 = 1024;
/// Hard `RLIMIT_NOFILE` we aim for (systemd's default); lowered to the node's own hard limit, because a
/// process in a user namespace cannot raise it beyond what it inherited.
pub(super) const NOFILE_HARD: u64 = 524_288;

/// `PATH` when the image sets none (Docker's default). libcontainer refuses to start a process without one.
pub(super) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths hidden from the container (Docker's list): kernel memory, keyrings, timing side channels, firmware.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container may read but not write (Docker's list): kernel tunables and triggers.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the spec depends on that only the host can tell.
#[derive(Debug, Clone)]
pub(super) struct Host {
    /// Whether the memory controller accounts swap: only then can swap be limited (to nothing).
    pub swap_accounting: bool,
    /// Whether the host is cgroup v2 only: then the container gets its own cgroup namespace.
    pub cgroup_v2: bool,
    /// The node's hard `RLIMIT_NOFILE`, which the container's cannot exceed.
    pub nofile_hard: u64,
}

/// The capabilities the container's process holds: Docker's set, in all sets for root, bounding only for
/// other users (as containerd does for non-root users: an unprivileged user inside the container should not
/// start with privileges it never asked for, and `setuid` binaries stay bounded).
fn capabilities(root: bool) -> Result<oci_spec::runtime::LinuxCapabilities, OciSpecError> {
    let set: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    let granted = if root { set.clone() } else { HashSet::new() };
    LinuxCapabilitiesBuilder::default()
        .bounding(set)
        .effective(granted.clone())
        .permitted(granted)
        // Inheritable capabilities would survive exec of a file with inheritable file caps (CVE-2022-24769);
        // ambient ones would survive every exec. Neither is Docker's default any more.
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
}

/// Docker's standard mounts plus a size-capped `/tmp`.
fn system_mounts(spec: &ContainerSpec) -> Result<Vec<Mount>, OciSpecError> {
    let tmp_size = format!("size={}k", TMP_SIZE_BYTES / 1024);
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    mounts.push(match spec.network {
        // A fresh sysfs shows the network devices of the netns it is mounted in, and the kernel only lets a
        // user namespace mount one for a netns it owns: its own.
        ContainerNetwork::None => mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        // A netns we did not create belongs to the host's user namespace: sysfs cannot be mounted there, so
        // the node's /sys is bound read-only instead (what runc does in the same case).
        ContainerNetwork::Host | ContainerNetwork::Join(_) => mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"],
        )?,
    });
    // The container's own cgroup, read-only: runtimes (JVM, Go, Node) size themselves from these files.
    mounts.push(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    )?);
    mounts.push(mount(
        "/tmp",
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777", &tmp_size],
    )?);
    for m in &spec.mounts {
        mounts.push(
            MountBuilder::default()
                .destination(&m.target)
                .typ("bind")
                .source(&m.source)
                .options(vec![
                    "rbind".to_owned(),
                    "rprivate".to_owned(),
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                    if m.read_only { "ro" } else { "rw" }.to_owned(),
                ])
                .build()?,
        );
    }
    // After the /dev tmpfs, which they land on. No `nodev`: the node must open; the device cgroup still
    // decides what it may do.
    for d in &spec.devices {
        mounts.push(
            MountBuilder::default()
                .destination(&d.target)
                .typ("bind")
                .source(&d.source)
                .options(vec![
                    "rbind".to_owned(),
                    "rprivate".to_owned(),
                    "nosuid".to_owned(),
                    "noexec".to_owned(),
                    "rw".to_owned(),
                ])
                .build()?,
        );
    }
    Ok(mounts)
}

/// The device cgroup: deny everything, then allow each of the spec's device nodes by its own numbers.
/// libcontainer adds its standard set (null, zero, full, tty, random, urandom, the ptys) after these.
fn device_rules(spec: &ContainerSpec) -> Result<Vec<LinuxDeviceCgroup>, OciSpecError> {
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ];
    for d in &spec.devices {
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(match d.kind {
                    DeviceKind::Char => LinuxDeviceType::C,
                    DeviceKind::Block => LinuxDeviceType::B,
                })
                .major(i64::try_from(d.major).unwrap_or(i64::MAX))
                .minor(i64::try_from(d.minor).unwrap_or(i64::MAX))
                .access("rwm")
                .build()?,
        );
    }
    Ok(rules)
}

fn namespace(typ: LinuxNamespaceType) -> Result<LinuxNamespace, OciSpecError> {
    LinuxNamespaceBuilder::default().typ(typ).build()
}

/// The container's environment: the caller's, plus Docker's `PATH` if it has none.
fn environment(spec: &ContainerSpec) -> Vec<String> {
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_owned());
    }
    env
}

/// The hostname: the container id, cut to the kernel's 64-byte limit.
fn hostname(id: &str) -> String {
    id.chars().take(63).collect()
}

/// The seccomp profile of every container: Docker's default for Docker's capability set (a non-root user
/// has the same bounding set). Not part of [`build`]'s spec: the node compiles it once and the container's
/// init installs the program (see `bpf`), where libcontainer, finding it in `config.json`, would compile it
/// again in every container.
pub(super) fn seccomp_profile() -> LinuxSeccomp {
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    seccomp::docker_default(&caps)
}

/// The full OCI runtime spec for `spec`, with cgroups at `cgroups_path` (relative to each hierarchy's root),
/// except for the seccomp profile ([`seccomp_profile`]).
pub(super) fn build(
    spec: &ContainerSpec,
    cgroups_path: &str,
    host: &Host,
) -> Result<Spec, OciSpecError> {
    let (uid, gid) = spec.user.unwrap_or((0, 0));
    let nofile_hard = NOFILE_HARD.min(host.nofile_hard);
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(Vec::<u32>::new())
                .build()?,
        )
        .args(spec.args.clone())
        .env(environment(spec))
        .cwd(&spec.cwd)
        .capabilities(capabilities(uid == 0)?)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(NOFILE_SOFT.min(nofile_hard))
                .hard(nofile_hard)
                .build()?,
        ])
        .no_new_privileges(true)
        .build()?;

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid)?,
        namespace(LinuxNamespaceType::Mount)?,
        namespace(LinuxNamespaceType::Ipc)?,
        namespace(LinuxNamespaceType::Uts)?,
        namespace(LinuxNamespaceType::User)?,
    ];
    // Host and Join share the helper's netns: for Join, the helper enters the named one before creating the
    // container, because a process already inside the new user namespace may not enter a netns owned by the
    // host's.
    if spec.network == ContainerNetwork::None {
        namespaces.push(namespace(LinuxNamespaceType::Network)?);
    }
    // On cgroup v2, as Docker does there: the container's cgroup is the root of its view, so
    // /proc/self/cgroup reads `0::/` instead of naming the node's cgroup tree (and its peer id), and
    // /sys/fs/cgroup is a cgroup2 mount of its own. Without it libcontainer falls back to binding the
    // host's directory of the container's cgroup. v1 keeps the host's namespace (Docker's v1 default).
    if host.cgroup_v2 {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup)?);
    }
    let mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(spec.id_map.host_base)
        .size(spec.id_map.size)
        .build()?;

    let mut memory = LinuxMemoryBuilder::default();
    if let Some(bytes) = spec.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        memory = memory.limit(bytes);
        // `swap` is memory + swap: equal to the limit, the container cannot page its way past it.
        if host.swap_accounting {
            memory = memory.swap(bytes);
        }
    }
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(millis) = spec.cpu_millis {
        let quota = millis.saturating_mul(CPU_PERIOD_US) / 1000;
        cpu = cpu
            .quota(i64::try_from(quota).unwrap_or(i64::MAX))
            .period(CPU_PERIOD_US);
    }
    let pids = spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT);
    let resources = LinuxResourcesBuilder::default()
        .devices(device_rules(spec)?)
        .memory(memory.build()?)
        .cpu(cpu.build()?)
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::try_from(pids).unwrap_or(i64::MAX))
                .build()?,
        )
        .build()?;

    let linux = LinuxBuilder::default()
        .uid_mappings(vec![mapping])
        .gid_mappings(vec![mapping])
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .chain(spec.masked_paths.iter().cloned())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>(),
        )
        .build()?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&spec.rootfs)
                .readonly(true)
                .build()?,
        )
        .hostname(hostname(&spec.id))
        .process(process)
        .mounts(system_mounts(spec)?)
        .linux(linux)
        .build()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use oci_spec::runtime::LinuxSeccompAction;

    use super::*;
    use crate::executor::oci::runtime::{BindMount, DeviceNode, IdMap};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "job-1".to_owned(),
            rootfs: PathBuf::from("/var/lib/cod/rootfs"),
            bundle_dir: PathBuf::from("/var/lib/cod/bundle"),
            args: vec!["sh".to_owned(), "-c".to_owned(), "true".to_owned()],
            env: vec!["A=1".to_owned()],
            cwd: "/work".to_owned(),
            user: None,
            mounts: vec![BindMount {
                source: PathBuf::from("/data/in"),
                target: "/inputs".to_owned(),
                read_only: true,
            }],
            devices: vec![],
            masked_paths: vec![],
            stdout: PathBuf::from("/o"),
            stderr: PathBuf::from("/e"),
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids_limit: None,
            network: ContainerNetwork::None,
            id_map: IdMap {
                host_base: 100_000,
                size: 65_536,
            },
        }
    }

    fn host() -> Host {
        Host {
            swap_accounting: true,
            cgroup_v2: false,
            nofile_hard: 1 << 20,
        }
    }

    fn json(spec: &ContainerSpec, host: &Host) -> serde_json::Value {
        serde_json::to_value(build(spec, "/cod/job-1", host).expect("spec builds"))
            .expect("serializes")
    }

    #[test]
    fn limits_land_in_resources() {
        let v = json(&spec(), &host());
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["memory"]["swap"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], DEFAULT_PIDS_LIMIT);
        assert_eq!(r["devices"][0]["allow"], false);
        assert_eq!(v["linux"]["cgroupsPath"], "/cod/job-1");
    }

    fn namespace_types(v: &serde_json::Value) -> Vec<String> {
        v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| n["type"].as_str().expect("type").to_owned())
            .collect()
    }

    #[test]
    fn a_cgroup_namespace_on_v2_only() {
        let v1 = namespace_types(&json(&spec(), &host()));
        assert!(!v1.contains(&"cgroup".to_owned()), "{v1:?}");
        let v2 = namespace_types(&json(
            &spec(),
            &Host {
                cgroup_v2: true,
                ..host()
            },
        ));
        assert!(v2.contains(&"cgroup".to_owned()), "{v2:?}");
        assert_eq!(v2.len(), v1.len() + 1, "{v1:?} {v2:?}");
    }

    #[test]
    fn no_swap_limit_without_swap_accounting() {
        let v = json(
            &spec(),
            &Host {
                swap_accounting: false,
                ..host()
            },
        );
        assert!(v["linux"]["resources"]["memory"].get("swap").is_none());
    }

    #[test]
    fn root_gets_dockers_capabilities_and_no_inheritable_or_ambient() {
        let v = json(&spec(), &host());
        let caps = &v["process"]["capabilities"];
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(caps[set].as_array().expect(set).len(), 14, "{set}");
        }
        assert_eq!(
            caps["inheritable"].as_array().expect("inheritable").len(),
            0
        );
        assert_eq!(caps["ambient"].as_array().expect("ambient").len(), 0);
        assert_eq!(v["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn non_root_user_keeps_only_the_bounding_set() {
        let mut s = spec();
        s.user = Some((1000, 1000));
        let v = json(&s, &host());
        let caps = &v["process"]["capabilities"];
        assert_eq!(caps["bounding"].as_array().expect("bounding").len(), 14);
        assert_eq!(caps["effective"].as_array().expect("effective").len(), 0);
        assert_eq!(v["process"]["user"]["uid"], 1000);
    }

    #[test]
    fn user_namespace_maps_root_to_the_base() {
        let v = json(&spec(), &host());
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| n["type"].as_str().expect("type"))
            .collect();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts", "user", "network"]);
        let m = &v["linux"]["uidMappings"][0];
        assert_eq!(
            (
                m["containerID"].as_u64(),
                m["hostID"].as_u64(),
                m["size"].as_u64()
            ),
            (Some(0), Some(100_000), Some(65_536))
        );
        assert_eq!(v["linux"]["gidMappings"], v["linux"]["uidMappings"]);
    }

    #[test]
    fn host_network_shares_the_netns_and_binds_sys() {
        let mut s = spec();
        s.network = ContainerNetwork::Host;
        let v = json(&s, &host());
        let ns = v["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(ns.iter().all(|n| n["type"] != "network"));
        let sys = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/sys")
            .expect("/sys");
        assert_eq!(sys["type"], "bind");
    }

    #[test]
    fn read_only_root_with_bind_mounts_and_tmp() {
        let v = json(&spec(), &host());
        assert_eq!(v["root"]["readonly"], true);
        let mounts = v["mounts"].as_array().expect("mounts");
        let inputs = mounts
            .iter()
            .find(|m| m["destination"] == "/inputs")
            .expect("/inputs");
        let opts: Vec<&str> = inputs["options"]
            .as_array()
            .expect("options")
            .iter()
            .map(|o| o.as_str().expect("str"))
            .collect();
        assert!(opts.contains(&"ro") && opts.contains(&"rbind") && opts.contains(&"nosuid"));
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/tmp" && m["type"] == "tmpfs")
        );
    }

    #[test]
    fn path_is_added_only_when_missing() {
        let v = json(&spec(), &host());
        assert_eq!(
            v["process"]["env"],
            serde_json::json!(["A=1", DEFAULT_PATH])
        );
        let mut s = spec();
        s.env = vec!["PATH=/bin".to_owned()];
        assert_eq!(
            json(&s, &host())["process"]["env"],
            serde_json::json!(["PATH=/bin"])
        );
    }

    #[test]
    fn nofile_never_exceeds_the_nodes_hard_limit() {
        let v = json(
            &spec(),
            &Host {
                nofile_hard: 4096,
                ..host()
            },
        );
        let r = &v["process"]["rlimits"][0];
        assert_eq!(
            (r["soft"].as_u64(), r["hard"].as_u64()),
            (Some(1024), Some(4096))
        );
    }

    #[test]
    fn device_nodes_are_bound_without_nodev_and_allowed_by_their_numbers() {
        let mut s = spec();
        s.devices = vec![DeviceNode {
            source: PathBuf::from("/dev/nvidia1"),
            target: "/dev/nvidia1".to_owned(),
            kind: DeviceKind::Char,
            major: 195,
            minor: 1,
        }];
        let v = json(&s, &host());
        let mounts = v["mounts"].as_array().expect("mounts");
        let dev_at = mounts
            .iter()
            .position(|m| m["destination"] == "/dev")
            .expect("/dev");
        let node_at = mounts
            .iter()
            .position(|m| m["destination"] == "/dev/nvidia1")
            .expect("/dev/nvidia1");
        assert!(node_at > dev_at, "bound onto the /dev tmpfs, not under it");
        let node = &mounts[node_at];
        assert_eq!(node["source"], "/dev/nvidia1");
        let opts = node["options"].as_array().expect("options");
        assert!(!opts.iter().any(|o| o == "nodev"), "{opts:?}");
        assert!(opts.iter().any(|o| o == "nosuid"), "{opts:?}");
        let rules = v["linux"]["resources"]["devices"]
            .as_array()
            .expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["allow"], false);
        assert_eq!(
            rules[1],
            serde_json::json!({"allow": true, "type": "c", "major": 195, "minor": 1, "access": "rwm"})
        );
        let mut s = spec();
        s.masked_paths = vec!["/proc/driver/nvidia/gpus/0000:3b:00.0".to_owned()];
        let masked = json(&s, &host())["linux"]["maskedPaths"].clone();
        let masked = masked.as_array().expect("masked paths");
        assert_eq!(masked.len(), MASKED_PATHS.len() + 1);
        assert_eq!(
            masked[MASKED_PATHS.len()],
            "/proc/driver/nvidia/gpus/0000:3b:00.0"
        );
        // Other bind mounts keep nodev.
        let inputs = mounts
            .iter()
            .find(|m| m["destination"] == "/inputs")
            .expect("/inputs");
        assert!(
            inputs["options"]
                .as_array()
                .expect("options")
                .iter()
                .any(|o| o == "nodev")
        );
    }

    #[test]
    fn seccomp_is_left_to_the_precompiled_program() {
        let s = build(&spec(), "/cod/job-1", &host()).expect("spec builds");
        let linux = s.linux().as_ref().expect("linux");
        assert!(
            linux.seccomp().is_none(),
            "libcontainer would compile the profile again in every container"
        );
        assert_eq!(
            seccomp_profile().default_action(),
            LinuxSeccompAction::ScmpActErrno
        );
    }
}
