//! The container's seccomp filter as a BPF program: compiled once per node process, carried in the bundle
//! (`seccomp.bpf`), installed by the container's init right before it executes the payload.
//!
//! Why not let libcontainer do it: given the profile in `config.json`, libcontainer has libseccomp compile
//! Docker's ~350-call profile inside every container's init, for x86_64 and its two compat ABIs: 10 to 11 ms
//! of CPU per container on the 2-core test VM (1.5 ms for one ABI alone), a sixth of a container's whole
//! start. The profile is the same for every container of a node, so the node compiles it once, with the same
//! libseccomp and the same translation as libcontainer's `seccomp::initialize_seccomp` (same default action,
//! architectures, rules and argument checks, added in the same order; no filter flags), and the init only
//! hands the finished program to the kernel.
//!
//! Order in the init: libcontainer would load the filter after dropping capabilities and before telling the
//! helper it is ready; [`SeccompExecutor`] loads it later still, after the start signal, just before
//! `execvp`. The process has `no_new_privs` set by then (the spec always asks for it), which is what lets an
//! unprivileged process install a filter.

use std::io::{self, Read, Seek};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, Spec};
use seccompiler::sock_filter;

use super::spec;

/// Bytes of one BPF instruction (`struct sock_filter`: u16 code, u8 jt, u8 jf, u32 k).
const INSTRUCTION: usize = 8;
/// The kernel refuses longer programs (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;
/// What an errno rule without its own errno returns (libcontainer's default).
const EPERM: i32 = 1;

/// Why the profile could not be turned into a program, or a program file not loaded.
#[derive(Debug, thiserror::Error)]
pub(super) enum BpfError {
    /// The profile asks for something this compiler does not translate (ours never does).
    #[error("the seccomp profile uses {0}, which cod does not compile; keep to allow/errno rules")]
    Unsupported(String),
    /// libseccomp refused a step.
    #[error("libseccomp could not {step}: {source}")]
    Libseccomp {
        step: &'static str,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// Writing or reading the program failed.
    #[error("seccomp program {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The program is not whole instructions, empty, or too long for the kernel.
    #[error(
        "seccomp program of {0} bytes is not 1 to {MAX_INSTRUCTIONS} whole {INSTRUCTION}-byte instructions; \
         the bundle is damaged: run the container again"
    )]
    Malformed(usize),
}

fn scmp(step: &'static str) -> impl FnOnce(libseccomp::error::SeccompError) -> BpfError {
    move |source| BpfError::Libseccomp { step, source }
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, BpfError> {
    // libcontainer's default errno, for an errno action without one.
    let errno = errno.map_or(EPERM, |e| e as i32);
    match action {
        LinuxSeccompAction::ScmpActAllow => Ok(ScmpAction::Allow),
        LinuxSeccompAction::ScmpActErrno => Ok(ScmpAction::Errno(errno)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Ok(ScmpAction::KillThread)
        }
        LinuxSeccompAction::ScmpActKillProcess => Ok(ScmpAction::KillProcess),
        LinuxSeccompAction::ScmpActLog => Ok(ScmpAction::Log),
        // Trap needs a SIGSYS handler, trace a tracer and notify a listener: none exists in a cod container.
        other => Err(BpfError::Unsupported(format!("the action {other:?}"))),
    }
}

fn arch(arch: Arch) -> Result<ScmpArch, BpfError> {
    Ok(match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        other => return Err(BpfError::Unsupported(format!("the architecture {other:?}"))),
    })
}

/// libcontainer's reading of the operators: for a masked comparison, `valueTwo` is the mask (see
/// `seccomp::syscall`, which writes the profile that way).
fn operator(op: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

/// The filter `profile` describes, as libseccomp builds it for libcontainer.
fn filter(profile: &LinuxSeccomp) -> Result<ScmpFilterContext, BpfError> {
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(BpfError::Unsupported("filter flags".to_owned()));
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(scmp("create a filter"))?;
    for &a in profile.architectures().iter().flatten() {
        ctx.add_arch(arch(a)?)
            .map_err(scmp("add an architecture"))?;
    }
    // Whether to set no_new_privs is the spec's business, not the filter's.
    ctx.set_ctl_nnp(false)
        .map_err(scmp("clear SCMP_FLTATR_CTL_NNP"))?;
    for rule in profile.syscalls().iter().flatten() {
        let verdict = action(rule.action(), rule.errno_ret())?;
        if verdict == default {
            continue;
        }
        for name in rule.names() {
            // A name this libseccomp does not know is a call this kernel generation lacks: nothing to allow.
            let Ok(call) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let checks: Vec<ScmpArgCompare> = rule
                .args()
                .iter()
                .flatten()
                .map(|a| {
                    ScmpArgCompare::new(
                        a.index() as u32,
                        operator(a.op(), a.value_two()),
                        a.value(),
                    )
                })
                .collect();
            let mut indexes: Vec<u32> = rule
                .args()
                .iter()
                .flatten()
                .map(|a| a.index() as u32)
                .collect();
            indexes.sort_unstable();
            indexes.dedup();
            if checks.is_empty() {
                ctx.add_rule(verdict, call).map_err(scmp("add a rule"))?;
            } else if indexes.len() == checks.len() {
                ctx.add_rule_conditional(verdict, call, &checks)
                    .map_err(scmp("add a conditional rule"))?;
            } else {
                // Two checks of one argument cannot share a rule: each is a rule of its own (runc's reading).
                for check in &checks {
                    ctx.add_rule_conditional(verdict, call, std::slice::from_ref(check))
                        .map_err(scmp("add a conditional rule"))?;
                }
            }
        }
    }
    Ok(ctx)
}

/// Compiles `profile` to the raw program the kernel takes.
pub(super) fn compile(profile: &LinuxSeccomp) -> Result<Vec<u8>, BpfError> {
    let ctx = filter(profile)?;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| BpfError::Io { what, source }
    };
    // libseccomp exports to a file descriptor; an anonymous memory file keeps it off the disk.
    let fd = nix::sys::memfd::memfd_create(
        c"cod-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| io("memfd")(io::Error::from(e)))?;
    ctx.export_bpf(&fd).map_err(scmp("export the program"))?;
    let mut file = std::fs::File::from(fd);
    file.rewind().map_err(io("rewind"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io("read back"))?;
    instructions(&bytes)?;
    Ok(bytes)
}

/// The program of [`spec::seccomp_profile`], once compiled in this process.
static PROGRAM: OnceLock<Arc<[u8]>> = OnceLock::new();

/// The program every container of this node runs under: the profile never changes within a process, so it
/// is compiled by the first container start (a failure is not kept: the next start tries again).
pub(super) fn program() -> Result<Arc<[u8]>, BpfError> {
    if let Some(program) = PROGRAM.get() {
        return Ok(Arc::clone(program));
    }
    let program: Arc<[u8]> = compile(&spec::seccomp_profile())?.into();
    // Two first starts at once may both compile; they get the same bytes and one of them is kept.
    Ok(Arc::clone(PROGRAM.get_or_init(|| program)))
}

/// The instructions in `bytes`, checked for the kernel's limits.
fn instructions(bytes: &[u8]) -> Result<Vec<sock_filter>, BpfError> {
    let count = bytes.len() / INSTRUCTION;
    if !bytes.len().is_multiple_of(INSTRUCTION) || count == 0 || count > MAX_INSTRUCTIONS {
        return Err(BpfError::Malformed(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(INSTRUCTION)
        .map(|i| sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

/// libcontainer's default executor (find `args[0]` in `PATH`, `execvp` it), with the seccomp program
/// installed first.
#[derive(Clone)]
pub(super) struct SeccompExecutor {
    program: Arc<Vec<sock_filter>>,
}

impl std::fmt::Debug for SeccompExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeccompExecutor({} instructions)", self.program.len())
    }
}

impl SeccompExecutor {
    /// The executor installing the program in file `path` (written by [`program`]'s caller).
    pub(super) fn read(path: &Path) -> Result<Self, BpfError> {
        let bytes = std::fs::read(path).map_err(|source| BpfError::Io {
            what: path.display().to_string(),
            source,
        })?;
        Ok(SeccompExecutor {
            program: Arc::new(instructions(&bytes)?),
        })
    }
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        seccompiler::apply_filter(&self.program)
            .map_err(|e| ExecutorError::Other(format!("cannot install the seccomp filter: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_profile_compiles_to_a_program_the_kernel_takes() {
        let bytes = compile(&spec::seccomp_profile()).expect("compiles");
        let program = instructions(&bytes).expect("whole instructions");
        // Three ABIs on x86_64, each with its ~350 calls and argument checks.
        assert!(program.len() > 350, "{} instructions", program.len());
        // A seccomp program ends in returns: the default action's is `SECCOMP_RET_ERRNO | EPERM`.
        const BPF_RET: u16 = 0x06;
        assert!(
            program
                .iter()
                .any(|i| i.code & 0x07 == BPF_RET && i.k == 0x0005_0001),
            "no `return EPERM` in the program"
        );
    }

    #[test]
    fn the_profile_compiles_once() {
        let a = program().expect("compiles");
        let b = program().expect("compiles");
        assert!(Arc::ptr_eq(&a, &b));
        // The program is libseccomp's, byte for byte, whichever call built it.
        assert_eq!(
            &*a,
            &compile(&spec::seccomp_profile()).expect("compiles")[..]
        );
    }

    #[test]
    fn damaged_programs_are_refused() {
        for len in [0, 7, 9, (MAX_INSTRUCTIONS + 1) * INSTRUCTION] {
            assert!(
                matches!(instructions(&vec![0; len]), Err(BpfError::Malformed(l)) if l == len),
                "{len} bytes"
            );
        }
        assert_eq!(instructions(&[0; 16]).expect("two").len(), 2);
    }

    #[test]
    fn actions_a_cod_container_cannot_serve_are_refused() {
        let mut p = spec::seccomp_profile();
        p.set_default_action(LinuxSeccompAction::ScmpActNotify);
        assert!(matches!(filter(&p), Err(BpfError::Unsupported(_))));
    }
}
