//! Cod's own WASI preview 1 (`wasi_snapshot_preview1`): all 46 functions as typed wasmi host
//! functions that read and write guest memory through the caller.
//!
//! It replaces wasmtime's wasi-common (through `wasmi_wasi`), which pulled wiggle, cap-std and a
//! second rustix into the edge binary. What guests saw there is kept: the same errno for the same
//! failure, the same struct layouts, stdio as pipes, `proc_exit` codes below 126.
//!
//! # Layout
//! - this file: [`Errno`], the run's [`WasiCtx`], registration in the linker.
//! - `mem`: bounds-checked guest memory (`EFAULT` for any bad pointer or length).
//! - `abi`: preview-1 structs as bytes.
//! - `fd`: the descriptor table and the `fd_*` calls.
//! - `path`: the `path_*` calls, through the mount table (`super::fs`).
//! - `host`: host calls below a directory descriptor (`openat2`, `RESOLVE_BENEATH`).
//! - `clock`: clocks, random, `poll_oneoff`, `sched_yield`, `proc_*`, and the `sock_*` stubs.
//!
//! # Never
//! Panics on guest input, lets a guest path reach a host path outside its mount, or lets a
//! read-only mount change.

mod abi;
mod clock;
mod fd;
mod host;
mod mem;
mod path;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmi::{Caller, Extern, Linker};

use self::fd::FdTable;
pub(super) use self::host::open_beneath;
use self::mem::Mem;
use super::fs::MountTable;
use super::interrupt::Sleeper;
use super::stdio::CappedOutput;
use super::worker::Host;

/// The import module name of WASI preview 1.
pub(super) const MODULE: &str = "wasi_snapshot_preview1";

/// A preview-1 `errno` (only those this layer returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(super) enum Errno {
    TooBig = 1,
    Acces = 2,
    Again = 6,
    Badf = 8,
    Busy = 10,
    Dquot = 19,
    Exist = 20,
    Fault = 21,
    Fbig = 22,
    Ilseq = 25,
    Intr = 27,
    Inval = 28,
    Io = 29,
    Isdir = 31,
    Loop = 32,
    Mfile = 33,
    Mlink = 34,
    Nametoolong = 37,
    Nfile = 41,
    Nodev = 43,
    Noent = 44,
    Nomem = 48,
    Nospc = 51,
    Nosys = 52,
    Notdir = 54,
    Notempty = 55,
    Notsup = 58,
    Nxio = 60,
    Overflow = 61,
    Perm = 63,
    Pipe = 64,
    Range = 68,
    Rofs = 69,
    Spipe = 70,
    Txtbsy = 74,
    Xdev = 75,
    Notcapable = 76,
}

// === impl Errno ===

impl Errno {
    /// The errno of a failed host call made through std.
    pub(super) fn from_io(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(raw) => Errno::from(rustix::io::Errno::from_raw_os_error(raw)),
            None => Errno::Io,
        }
    }
}

/// For the executor's own reads through the mount table (the entry module), which report `io::Error`.
impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e {
            Errno::Noent => K::NotFound,
            Errno::Perm | Errno::Acces | Errno::Notcapable => K::PermissionDenied,
            Errno::Notdir => K::NotADirectory,
            Errno::Isdir => K::IsADirectory,
            Errno::Inval => K::InvalidInput,
            Errno::Ilseq => K::InvalidData,
            _ => return std::io::Error::other(format!("WASI errno {e:?}")),
        };
        std::io::Error::from(kind)
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        use rustix::io::Errno as E;
        match e {
            E::TOOBIG => Errno::TooBig,
            E::ACCESS => Errno::Acces,
            E::AGAIN => Errno::Again,
            E::BADF => Errno::Badf,
            E::BUSY => Errno::Busy,
            E::DQUOT => Errno::Dquot,
            E::EXIST => Errno::Exist,
            E::FAULT => Errno::Fault,
            E::FBIG => Errno::Fbig,
            E::ILSEQ => Errno::Ilseq,
            E::INTR => Errno::Intr,
            E::INVAL => Errno::Inval,
            E::ISDIR => Errno::Isdir,
            E::LOOP => Errno::Loop,
            E::MFILE => Errno::Mfile,
            E::MLINK => Errno::Mlink,
            E::NAMETOOLONG => Errno::Nametoolong,
            E::NFILE => Errno::Nfile,
            E::NODEV => Errno::Nodev,
            E::NOENT => Errno::Noent,
            E::NOMEM => Errno::Nomem,
            E::NOSPC => Errno::Nospc,
            E::NOSYS => Errno::Nosys,
            E::NOTDIR => Errno::Notdir,
            E::NOTEMPTY => Errno::Notempty,
            E::NOTSUP => Errno::Notsup,
            E::NXIO => Errno::Nxio,
            E::OVERFLOW => Errno::Overflow,
            E::PERM => Errno::Perm,
            E::PIPE => Errno::Pipe,
            E::RANGE => Errno::Range,
            E::ROFS => Errno::Rofs,
            E::SPIPE => Errno::Spipe,
            E::TXTBSY => Errno::Txtbsy,
            E::XDEV => Errno::Xdev,
            _ => Errno::Io,
        }
    }
}

/// How a WASI call fails: an errno for the guest, or a trap that ends the run (`proc_exit`, a
/// sleep cut short by the deadline or a cancel).
#[derive(Debug)]
pub(super) enum Fail {
    Errno(Errno),
    Trap(wasmi::Error),
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Fail::Errno(e)
    }
}

/// What a WASI call returns to the dispatcher.
pub(super) type Outcome = Result<(), Fail>;

/// The WASI state of one run.
pub(super) struct WasiCtx {
    /// argv, each NUL-terminated.
    args: Vec<Vec<u8>>,
    /// `KEY=value` strings, each NUL-terminated.
    env: Vec<Vec<u8>>,
    /// Open descriptors: stdio, the preopen `/`, what the guest opened.
    fds: FdTable,
    /// Where paths lead.
    mounts: Arc<MountTable>,
    /// The zero of the monotonic clock (and of absolute monotonic sleeps), as in wasi-common.
    started: Instant,
    /// Sleeps that end at the run's deadline or interrupt.
    sleeper: Sleeper,
}

/// Arguments or environment that WASI cannot carry.
#[derive(Debug, thiserror::Error)]
pub(super) enum CtxError {
    /// A C string cannot hold a NUL byte.
    #[error("{what} {value:?} contains a NUL byte, which WASI programs cannot receive; remove it")]
    Nul {
        /// "argument" or "environment variable".
        what: &'static str,
        /// The offending string.
        value: String,
    },
    /// More than WASI's `size` (u32) can count.
    #[error("arguments and environment exceed WASI's 4 GiB limit; pass less")]
    TooBig,
}

// === impl WasiCtx ===

impl WasiCtx {
    /// The context of a run: argv, the environment (already in the order the guest sees it),
    /// empty stdin, the capped outputs, and the mount table as the one preopen `/` (fd 3).
    pub(super) fn new(
        args: &[String],
        env: &BTreeMap<String, String>,
        stdout: CappedOutput,
        stderr: CappedOutput,
        mounts: Arc<MountTable>,
        sleeper: Sleeper,
    ) -> Result<Self, CtxError> {
        let c_string = |what, value: String| {
            if value.contains('\0') {
                return Err(CtxError::Nul { what, value });
            }
            let mut bytes = value.into_bytes();
            bytes.push(0);
            Ok(bytes)
        };
        let args = args
            .iter()
            .map(|a| c_string("argument", a.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env
            .iter()
            .map(|(k, v)| c_string("environment variable", format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let total: usize = args.iter().chain(&env).map(Vec::len).sum();
        if u32::try_from(total).is_err() {
            return Err(CtxError::TooBig);
        }
        Ok(WasiCtx {
            args,
            env,
            fds: FdTable::new(stdout, stderr),
            mounts,
            started: Instant::now(),
            sleeper,
        })
    }
}

/// `args_sizes_get` / `environ_sizes_get`.
fn sizes_get(list: &[Vec<u8>], mem: &mut Mem<'_>, count_out: u32, size_out: u32) -> Outcome {
    mem.write_size(count_out, list.len())?;
    mem.write_size(size_out, list.iter().map(Vec::len).sum())?;
    Ok(())
}

/// `args_get` / `environ_get`: the pointers at `ptrs`, the strings one after another at `buf`.
fn strings_get(list: &[Vec<u8>], mem: &mut Mem<'_>, ptrs: u32, buf: u32) -> Outcome {
    let mut at = buf;
    for (i, s) in list.iter().enumerate() {
        let slot = u32::try_from(i * 4)
            .ok()
            .and_then(|o| ptrs.checked_add(o))
            .ok_or(Errno::Fault)?;
        mem.write_u32(slot, at)?;
        mem.write(at, s)?;
        at = u32::try_from(s.len())
            .ok()
            .and_then(|n| at.checked_add(n))
            .ok_or(Errno::Fault)?;
    }
    Ok(())
}

fn args_sizes_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, count: u32, size: u32) -> Outcome {
    sizes_get(&ctx.args, mem, count, size)
}

fn args_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, ptrs: u32, buf: u32) -> Outcome {
    strings_get(&ctx.args, mem, ptrs, buf)
}

fn environ_sizes_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, count: u32, size: u32) -> Outcome {
    sizes_get(&ctx.env, mem, count, size)
}

fn environ_get(ctx: &mut WasiCtx, mem: &mut Mem<'_>, ptrs: u32, buf: u32) -> Outcome {
    strings_get(&ctx.env, mem, ptrs, buf)
}

/// Runs one WASI call against the caller's exported `memory` and the run's context.
fn dispatch(
    caller: &mut Caller<'_, Host>,
    call: impl FnOnce(&mut WasiCtx, &mut Mem<'_>) -> Outcome,
) -> Result<i32, wasmi::Error> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmi::Error::new(
            "the module calls WASI but exports no memory named \"memory\"",
        ));
    };
    let (data, host) = memory.data_and_store_mut(caller);
    match call(&mut host.wasi, &mut Mem(data)) {
        Ok(()) => Ok(0),
        Err(Fail::Errno(e)) => Ok(i32::from(e as u16)),
        Err(Fail::Trap(e)) => Err(e),
    }
}

/// Defines each listed function in the linker, all with the same shape:
/// `fn(&mut WasiCtx, &mut Mem, params...) -> Outcome`, returning the errno to the guest.
macro_rules! define {
    ($linker:ident: $( $name:ident ( $($arg:ident : $ty:ty),* ) => $imp:path; )*) => {
        $(
            $linker.func_wrap(
                MODULE,
                stringify!($name),
                |mut caller: Caller<'_, Host>, $($arg: $ty),*| -> Result<i32, wasmi::Error> {
                    dispatch(&mut caller, |ctx, mem| $imp(ctx, mem, $($arg),*))
                },
            )?;
        )*
    };
}

/// Defines every preview-1 function in `linker`. Done once per worker: runs clone the linker.
pub(super) fn add_to_linker(linker: &mut Linker<Host>) -> Result<(), wasmi::Error> {
    define! { linker:
        args_get(argv: u32, buf: u32) => args_get;
        args_sizes_get(count: u32, size: u32) => args_sizes_get;
        environ_get(environ: u32, buf: u32) => environ_get;
        environ_sizes_get(count: u32, size: u32) => environ_sizes_get;
        clock_res_get(id: u32, out: u32) => clock::res_get;
        clock_time_get(id: u32, precision: u64, out: u32) => clock::time_get;
        fd_advise(fd: u32, offset: u64, len: u64, advice: u32) => fd::advise;
        fd_allocate(fd: u32, offset: u64, len: u64) => fd::allocate;
        fd_close(fd: u32) => fd::close;
        fd_datasync(fd: u32) => fd::datasync;
        fd_fdstat_get(fd: u32, out: u32) => fd::fdstat_get;
        fd_fdstat_set_flags(fd: u32, flags: u32) => fd::fdstat_set_flags;
        fd_fdstat_set_rights(fd: u32, base: u64, inheriting: u64) => fd::fdstat_set_rights;
        fd_filestat_get(fd: u32, out: u32) => fd::filestat_get;
        fd_filestat_set_size(fd: u32, size: u64) => fd::filestat_set_size;
        fd_filestat_set_times(fd: u32, atim: u64, mtim: u64, flags: u32) => fd::filestat_set_times;
        fd_pread(fd: u32, iovs: u32, count: u32, offset: u64, out: u32) => fd::pread;
        fd_prestat_get(fd: u32, out: u32) => fd::prestat_get;
        fd_prestat_dir_name(fd: u32, buf: u32, len: u32) => fd::prestat_dir_name;
        fd_pwrite(fd: u32, iovs: u32, count: u32, offset: u64, out: u32) => fd::pwrite;
        fd_read(fd: u32, iovs: u32, count: u32, out: u32) => fd::read;
        fd_readdir(fd: u32, buf: u32, len: u32, cookie: u64, out: u32) => fd::readdir;
        fd_renumber(fd: u32, to: u32) => fd::renumber;
        fd_seek(fd: u32, offset: u64, whence: u32, out: u32) => fd::seek;
        fd_sync(fd: u32) => fd::sync;
        fd_tell(fd: u32, out: u32) => fd::tell;
        fd_write(fd: u32, iovs: u32, count: u32, out: u32) => fd::write;
        path_create_directory(fd: u32, path: u32, len: u32) => path::create_directory;
        path_filestat_get(fd: u32, flags: u32, path: u32, len: u32, out: u32) => path::filestat_get;
        path_filestat_set_times(fd: u32, flags: u32, path: u32, len: u32, atim: u64, mtim: u64, fst: u32) => path::filestat_set_times;
        path_link(old_fd: u32, old_flags: u32, old: u32, old_len: u32, new_fd: u32, new: u32, new_len: u32) => path::link;
        path_open(fd: u32, dirflags: u32, path: u32, len: u32, oflags: u32, base: u64, inheriting: u64, fdflags: u32, out: u32) => path::open;
        path_readlink(fd: u32, path: u32, len: u32, buf: u32, buf_len: u32, out: u32) => path::readlink;
        path_remove_directory(fd: u32, path: u32, len: u32) => path::remove_directory;
        path_rename(fd: u32, old: u32, old_len: u32, new_fd: u32, new: u32, new_len: u32) => path::rename;
        path_symlink(old: u32, old_len: u32, fd: u32, new: u32, new_len: u32) => path::symlink;
        path_unlink_file(fd: u32, path: u32, len: u32) => path::unlink_file;
        poll_oneoff(subs: u32, events: u32, count: u32, out: u32) => clock::poll_oneoff;
        proc_raise(signal: u32) => clock::proc_raise;
        sched_yield() => clock::sched_yield;
        random_get(buf: u32, len: u32) => clock::random_get;
        sock_accept(fd: u32, flags: u32, out: u32) => clock::sock_accept;
        sock_recv(fd: u32, iovs: u32, count: u32, flags: u32, out: u32, out_flags: u32) => clock::sock_recv;
        sock_send(fd: u32, iovs: u32, count: u32, flags: u32, out: u32) => clock::sock_send;
        sock_shutdown(fd: u32, how: u32) => clock::sock_shutdown;
    }
    // `proc_exit` returns nothing: it always ends the run, and needs no memory.
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |code: u32| -> Result<(), wasmi::Error> { Err(clock::proc_exit(code)) },
    )?;
    Ok(())
}
