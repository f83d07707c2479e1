//! Docker's default seccomp profile, as data, resolved for one container's capability set and this build's
//! CPU architecture into an OCI `linux.seccomp` section.
//!
//! The policy is the one Docker ships (moby `profiles/seccomp/default.json`): everything not listed fails with
//! `EPERM`; a large allow-list covers what ordinary programs use; a few syscalls are allowed only for some
//! argument values (`personality`, `socket`, `clone`), only on some architectures, or only when the container
//! holds a capability that makes them meaningful (`mount` with `CAP_SYS_ADMIN`, `chroot` with
//! `CAP_SYS_CHROOT`...). We keep Docker's decisions so that images behave as they do under Docker, but the
//! structure here is ours: the allow-list is grouped by what the calls are for, and each conditional rule says
//! in one place when it applies.
//!
//! Invariant: this module never widens Docker's policy. A change must keep the unit tests' syscall count in
//! step with a deliberate review of the upstream profile.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `EPERM`: what a denied call returns, as under Docker (programs handle it better than `ENOSYS` or a kill).
const EPERM: u32 = 1;
/// `ENOSYS`: `clone3` pretends not to exist, so that libcs fall back to `clone`, whose flags a filter can
/// inspect (`clone3` passes them in memory, out of a filter's reach).
const ENOSYS: u32 = 38;
/// `AF_VSOCK`: sockets to the hypervisor are not the container's business.
const AF_VSOCK: u64 = 40;
/// The `clone` flags that create namespaces (`CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`): a plain fork or thread has none of them.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values Docker lets through: `PER_LINUX`, `PER_LINUX32`, `UNAME26`, `PER_LINUX32|UNAME26`,
/// and the query `0xffffffff`. Others (e.g. `ADDR_NO_RANDOMIZE`) would weaken ASLR and friends.
const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

// === The allow-list, by purpose ===

/// Opening, reading, writing and closing files and descriptors.
const FILE_IO: &[&str] = &[
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "flock",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "_llseek",
    "lseek",
    "open",
    "openat",
    "openat2",
    "pipe",
    "pipe2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readv",
    "sendfile",
    "sendfile64",
    "splice",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "vmsplice",
    "write",
    "writev",
];

/// The directory tree: paths, links, metadata, ownership, extended attributes, watches.
const FILE_TREE: &[&str] = &[
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "faccessat",
    "faccessat2",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fgetxattr",
    "flistxattr",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lsetxattr",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "name_to_handle_at",
    "newfstatat",
    "readlink",
    "readlinkat",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "setxattr",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
];

/// Waiting on many descriptors and on events.
const MULTIPLEXING: &[&str] = &[
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "_newselect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
];

/// Asynchronous I/O: the old AIO interface and io_uring.
const ASYNC_IO: &[&str] = &[
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
];

/// Address space management.
const MEMORY: &[&str] = &[
    "brk",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
];

/// Creating, running and reaping processes and threads (`clone` itself is conditional, below).
const PROCESSES: &[&str] = &[
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_time64",
    "futex_waitv",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "pidfd_open",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "rseq",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setpgid",
    "setpriority",
    "setrlimit",
    "setsid",
    "ugetrlimit",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
];

/// Scheduling policy and CPU affinity.
const SCHEDULING: &[&str] = &[
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
];

/// Users, groups and capabilities of the calling process.
const CREDENTIALS: &[&str] = &[
    "capget",
    "capset",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getuid",
    "getuid32",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setuid",
    "setuid32",
];

/// Signals.
const SIGNALS: &[&str] = &[
    "kill",
    "pause",
    "pidfd_send_signal",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "tkill",
];

/// Clocks, timers and sleeping. (`adjtimex`/`clock_adjtime` only change the clock with `CAP_SYS_TIME`.)
const TIME: &[&str] = &[
    "adjtimex",
    "alarm",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "getitimer",
    "gettimeofday",
    "nanosleep",
    "setitimer",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "times",
];

/// Sockets (`socket` itself is conditional, below).
const SOCKETS: &[&str] = &[
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
];

/// System V IPC and POSIX message queues (both are namespaced by the container's IPC namespace).
const IPC: &[&str] = &[
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
];

/// Everything else: randomness, system information, self-sandboxing.
const MISC: &[&str] = &[
    "getrandom",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "sysinfo",
    "uname",
];

/// Allowed without conditions.
const ALWAYS_ALLOWED: &[&[&str]] = &[
    FILE_IO,
    FILE_TREE,
    MULTIPLEXING,
    ASYNC_IO,
    MEMORY,
    PROCESSES,
    SCHEDULING,
    CREDENTIALS,
    SIGNALS,
    TIME,
    SOCKETS,
    IPC,
    MISC,
];

// === Conditional rules ===

/// A CPU family, as far as the profile distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cpu {
    X86_64,
    X86,
    Arm,
    Aarch64,
    Ppc64le,
    S390x,
    Riscv64,
    Other,
}

/// What a matching call gets.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Allow,
    Fail(u32),
}

/// A check on one argument of the call.
#[derive(Debug, Clone, Copy)]
enum ArgIs {
    /// `arg == value`.
    Equal(u64),
    /// `arg != value`.
    NotEqual(u64),
    /// `arg & mask == 0`.
    NoBitsOf(u64),
}

/// One conditional rule: `names` get `verdict` when every condition holds.
#[derive(Debug)]
struct Rule {
    names: &'static [&'static str],
    verdict: Verdict,
    /// Only on these CPU families (empty: on all).
    only_on: &'static [Cpu],
    /// Never on these CPU families.
    never_on: &'static [Cpu],
    /// Only for containers holding this capability.
    needs: Option<Capability>,
    /// Only for containers lacking this capability.
    unless: Option<Capability>,
    /// Only when argument `.0` passes `.1`.
    arg: Option<(usize, ArgIs)>,
}

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        verdict: Verdict::Allow,
        only_on: &[],
        never_on: &[],
        needs: None,
        unless: None,
        arg: None,
    }
}

const fn fail(names: &'static [&'static str], errno: u32) -> Rule {
    Rule {
        verdict: Verdict::Fail(errno),
        ..allow(names)
    }
}

impl Rule {
    const fn on(self, cpus: &'static [Cpu]) -> Self {
        Rule {
            only_on: cpus,
            ..self
        }
    }
    const fn not_on(self, cpus: &'static [Cpu]) -> Self {
        Rule {
            never_on: cpus,
            ..self
        }
    }
    const fn needs(self, cap: Capability) -> Self {
        Rule {
            needs: Some(cap),
            ..self
        }
    }
    const fn unless(self, cap: Capability) -> Self {
        Rule {
            unless: Some(cap),
            ..self
        }
    }
    const fn arg(self, index: usize, check: ArgIs) -> Self {
        Rule {
            arg: Some((index, check)),
            ..self
        }
    }

    /// Whether the rule belongs in the filter of a container holding `caps`, on `cpu`.
    fn applies(&self, caps: &HashSet<Capability>, cpu: Cpu) -> bool {
        (self.only_on.is_empty() || self.only_on.contains(&cpu))
            && !self.never_on.contains(&cpu)
            && self.needs.is_none_or(|c| caps.contains(&c))
            && self.unless.is_none_or(|c| !caps.contains(&c))
    }
}

use Capability as Cap;

/// The rules that depend on arguments, architecture or capabilities, in Docker's terms.
const RULES: &[Rule] = &[
    // Debugging another process of the same container: since kernel 4.8 ptrace can no longer be used to
    // escape seccomp, which is why Docker allows it; every kernel libcontainer supports is newer.
    allow(&["process_vm_readv", "process_vm_writev", "ptrace"]),
    allow(&["socket"]).arg(0, ArgIs::NotEqual(AF_VSOCK)),
    // A seccomp rule compares an argument with one value, so each allowed value is a rule of its own.
    allow(&["personality"]).arg(0, ArgIs::Equal(PERSONALITY_ALLOWED[0])),
    allow(&["personality"]).arg(0, ArgIs::Equal(PERSONALITY_ALLOWED[1])),
    allow(&["personality"]).arg(0, ArgIs::Equal(PERSONALITY_ALLOWED[2])),
    allow(&["personality"]).arg(0, ArgIs::Equal(PERSONALITY_ALLOWED[3])),
    allow(&["personality"]).arg(0, ArgIs::Equal(PERSONALITY_ALLOWED[4])),
    allow(&["sync_file_range2", "swapcontext"]).on(&[Cpu::Ppc64le]),
    allow(&[
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ])
    .on(&[Cpu::Arm, Cpu::Aarch64]),
    allow(&["arch_prctl"]).on(&[Cpu::X86_64]),
    allow(&["modify_ldt"]).on(&[Cpu::X86_64, Cpu::X86]),
    allow(&[
        "s390_pci_mmio_read",
        "s390_pci_mmio_write",
        "s390_runtime_instr",
    ])
    .on(&[Cpu::S390x]),
    allow(&["riscv_flush_icache"]).on(&[Cpu::Riscv64]),
    allow(&["open_by_handle_at"]).needs(Cap::DacReadSearch),
    allow(&[
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
    ])
    .needs(Cap::SysAdmin),
    // Without CAP_SYS_ADMIN, forks and threads are fine but new namespaces are not. s390x's `clone` takes
    // its flags second.
    allow(&["clone"])
        .unless(Cap::SysAdmin)
        .not_on(&[Cpu::S390x])
        .arg(0, ArgIs::NoBitsOf(CLONE_NAMESPACE_FLAGS)),
    allow(&["clone"])
        .unless(Cap::SysAdmin)
        .on(&[Cpu::S390x])
        .arg(1, ArgIs::NoBitsOf(CLONE_NAMESPACE_FLAGS)),
    fail(&["clone3"], ENOSYS).unless(Cap::SysAdmin),
    allow(&["reboot"]).needs(Cap::SysBoot),
    allow(&["chroot"]).needs(Cap::SysChroot),
    allow(&["delete_module", "init_module", "finit_module"]).needs(Cap::SysModule),
    allow(&["acct"]).needs(Cap::SysPacct),
    allow(&[
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ])
    .needs(Cap::SysPtrace),
    allow(&["iopl", "ioperm"]).needs(Cap::SysRawio),
    allow(&["settimeofday", "stime", "clock_settime", "clock_settime64"]).needs(Cap::SysTime),
    allow(&["vhangup"]).needs(Cap::SysTtyConfig),
    allow(&[
        "get_mempolicy",
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
    ])
    .needs(Cap::SysNice),
    allow(&["syslog"]).needs(Cap::Syslog),
    allow(&["bpf"]).needs(Cap::Bpf),
    allow(&["perf_event_open"]).needs(Cap::Perfmon),
];

/// The CPU family this binary runs on.
const fn this_cpu() -> Cpu {
    if cfg!(target_arch = "x86_64") {
        Cpu::X86_64
    } else if cfg!(target_arch = "x86") {
        Cpu::X86
    } else if cfg!(target_arch = "aarch64") {
        Cpu::Aarch64
    } else if cfg!(target_arch = "arm") {
        Cpu::Arm
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        Cpu::Ppc64le
    } else if cfg!(target_arch = "s390x") {
        Cpu::S390x
    } else if cfg!(target_arch = "riscv64") {
        Cpu::Riscv64
    } else {
        Cpu::Other
    }
}

/// The seccomp architectures the filter covers: the native one plus the compat ABIs the kernel also accepts
/// on it (32-bit x86 and x32 on x86_64, 32-bit ARM on aarch64). Without the compat entries a 32-bit binary
/// would get the default action for every call.
fn architectures(cpu: Cpu) -> Vec<Arch> {
    match cpu {
        Cpu::X86_64 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        Cpu::Aarch64 => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        Cpu::S390x => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        Cpu::X86 => vec![Arch::ScmpArchX86],
        Cpu::Arm => vec![Arch::ScmpArchArm],
        Cpu::Ppc64le => vec![Arch::ScmpArchPpc64le],
        Cpu::Riscv64 => vec![Arch::ScmpArchRiscv64],
        Cpu::Other => vec![Arch::ScmpArchNative],
    }
}

/// One OCI syscall entry.
fn syscall(names: &[&str], verdict: Verdict, arg: Option<(usize, ArgIs)>) -> LinuxSyscall {
    let mut builder = LinuxSyscallBuilder::default().names(
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<Vec<String>>(),
    );
    builder = match verdict {
        Verdict::Allow => builder.action(LinuxSeccompAction::ScmpActAllow),
        Verdict::Fail(errno) => builder
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno),
    };
    if let Some((index, check)) = arg {
        let arg = LinuxSeccompArgBuilder::default().index(index);
        let arg = match check {
            ArgIs::Equal(v) => arg.op(LinuxSeccompOperator::ScmpCmpEq).value(v),
            ArgIs::NotEqual(v) => arg.op(LinuxSeccompOperator::ScmpCmpNe).value(v),
            // libcontainer 0.7 hands `valueTwo` to libseccomp as the mask and `value` as the expected result,
            // the reverse of runc's reading of the OCI field (value = mask). Written runc's way, the mask
            // would be 0 and every `clone` allowed, namespaces included (measured). We write what
            // libcontainer executes; the e2e test `seccomp_allows_forks_but_not_new_namespaces` fails if
            // this is wrong either way (no fork works, or a namespace can be created).
            ArgIs::NoBitsOf(mask) => arg
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .value(0u64)
                .value_two(mask),
        };
        builder = builder
            .args(vec![arg.build().expect(
                "index, value and op are set: the builder cannot fail",
            )]);
    }
    builder
        .build()
        .expect("names and action are set: the builder cannot fail")
}

/// Docker's default profile for a container holding `caps` (its bounding set), on this build's CPU.
pub(super) fn docker_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    profile_for(caps, this_cpu())
}

fn profile_for(caps: &HashSet<Capability>, cpu: Cpu) -> LinuxSeccomp {
    let always: Vec<&str> = ALWAYS_ALLOWED
        .iter()
        .flat_map(|group| group.iter().copied())
        .collect();
    let mut syscalls = vec![syscall(&always, Verdict::Allow, None)];
    syscalls.extend(
        RULES
            .iter()
            .filter(|r| r.applies(caps, cpu))
            .map(|r| syscall(r.names, r.verdict, r.arg)),
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures(cpu))
        .syscalls(syscalls)
        .build()
        .expect("default action and syscalls are set: the builder cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_caps() -> HashSet<Capability> {
        crate::executor::oci::runtime::spec::DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .collect()
    }

    fn allowed_unconditionally(profile: &LinuxSeccomp) -> HashSet<String> {
        profile
            .syscalls()
            .as_ref()
            .expect("syscalls")
            .iter()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().iter().cloned())
            .collect()
    }

    #[test]
    fn allow_list_has_dockers_349_calls_once_each() {
        let all: Vec<&str> = ALWAYS_ALLOWED
            .iter()
            .flat_map(|g| g.iter().copied())
            .collect();
        let unique: HashSet<&str> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "a call is listed twice");
        assert_eq!(all.len(), 349);
    }

    #[test]
    fn denies_by_default_with_eperm() {
        let p = profile_for(&docker_caps(), Cpu::X86_64);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
    }

    #[test]
    fn escapes_stay_denied_with_dockers_capabilities() {
        let allowed = allowed_unconditionally(&profile_for(&docker_caps(), Cpu::X86_64));
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "bpf",
            "init_module",
            "kexec_load",
            "open_by_handle_at",
            "clone",
            "clone3",
            "reboot",
            "swapon",
            "pivot_root",
            "userfaultfd",
        ] {
            assert!(!allowed.contains(name), "{name} must not be allowed");
        }
        // CAP_SYS_CHROOT is in Docker's set, so chroot is allowed.
        assert!(allowed.contains("chroot"));
        assert!(allowed.contains("arch_prctl"));
        assert!(!allowed.contains("cacheflush"));
    }

    #[test]
    fn clone_allows_only_calls_without_namespace_flags() {
        let p = profile_for(&docker_caps(), Cpu::X86_64);
        let clone: Vec<&LinuxSyscall> = p
            .syscalls()
            .as_ref()
            .expect("syscalls")
            .iter()
            .filter(|s| s.names().iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().expect("args")[0];
        assert_eq!(arg.index(), 0);
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value_two(), Some(CLONE_NAMESPACE_FLAGS));
        let clone3 = p
            .syscalls()
            .as_ref()
            .expect("syscalls")
            .iter()
            .find(|s| s.names().iter().any(|n| n == "clone3"))
            .expect("clone3 rule");
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn sys_admin_unlocks_mount_and_plain_clone() {
        let mut caps = docker_caps();
        caps.insert(Capability::SysAdmin);
        let allowed = allowed_unconditionally(&profile_for(&caps, Cpu::X86_64));
        assert!(allowed.contains("mount"));
        assert!(allowed.contains("clone"));
    }

    #[test]
    fn arm_gets_its_own_calls_and_compat_arch() {
        let p = profile_for(&docker_caps(), Cpu::Aarch64);
        let allowed = allowed_unconditionally(&p);
        assert!(allowed.contains("cacheflush"));
        assert!(!allowed.contains("arch_prctl"));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
    }

    #[test]
    fn personality_allows_exactly_five_values() {
        let p = profile_for(&docker_caps(), Cpu::X86_64);
        let values: Vec<u64> = p
            .syscalls()
            .as_ref()
            .expect("syscalls")
            .iter()
            .filter(|s| s.names() == &["personality".to_owned()])
            .map(|s| s.args().as_ref().expect("args")[0].value())
            .collect();
        assert_eq!(values, PERSONALITY_ALLOWED);
    }
}
