//! Clocks, randomness, `poll_oneoff`, `sched_yield`, `proc_exit`/`proc_raise`, and the `sock_*`
//! calls (no sockets are ever open, so they fail as wasi-common's did on files).
//!
//! Clocks: `REALTIME` is the host's wall clock, `MONOTONIC` counts from the start of the run (as
//! wasi-common's), the CPU-time clocks are `EBADF` (wasi-common did not support them either).
//! Sleeps end early, with a trap, at the run's deadline or interrupt (see `interrupt`).

use std::time::{Duration, Instant, SystemTime};

use super::abi::{self, Subscription, SubscriptionKind};
use super::fd::Entry;
use super::mem::Mem;
use super::{Errno, Fail, Outcome, WasiCtx};

const REALTIME: u32 = 0;
const MONOTONIC: u32 = 1;
const PROCESS_CPUTIME: u32 = 2;
const THREAD_CPUTIME: u32 = 3;

/// Both clocks tick in nanoseconds.
const RESOLUTION_NS: u64 = 1;

fn check_clock(id: u32) -> Result<(), Errno> {
    match id {
        REALTIME | MONOTONIC => Ok(()),
        PROCESS_CPUTIME | THREAD_CPUTIME => Err(Errno::Badf),
        _ => Err(Errno::Inval),
    }
}

pub(super) fn res_get(_ctx: &mut WasiCtx, mem: &mut Mem<'_>, id: u32, out: u32) -> Outcome {
    check_clock(id)?;
    mem.write_u64(out, RESOLUTION_NS)?;
    Ok(())
}

pub(super) fn time_get(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    id: u32,
    _precision: u64,
    out: u32,
) -> Outcome {
    check_clock(id)?;
    let since = if id == REALTIME {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Errno::Overflow)?
    } else {
        ctx.started.elapsed()
    };
    mem.write_u64(
        out,
        u64::try_from(since.as_nanos()).map_err(|_| Errno::Overflow)?,
    )?;
    Ok(())
}

pub(super) fn random_get(_ctx: &mut WasiCtx, mem: &mut Mem<'_>, buf: u32, len: u32) -> Outcome {
    use ring::rand::SecureRandom;
    let dest = mem.bytes_mut(buf, len)?;
    ring::rand::SystemRandom::new()
        .fill(dest)
        .map_err(|_| Errno::Io)?;
    Ok(())
}

pub(super) fn sched_yield(_ctx: &mut WasiCtx, _mem: &mut Mem<'_>) -> Outcome {
    std::thread::yield_now();
    Ok(())
}

/// Ends the run with `code`. Codes from 126 on are not valid WASI exit codes: wasi-common trapped
/// on them, so the run exits 1, and so does this.
pub(super) fn proc_exit(code: u32) -> wasmi::Error {
    match i32::try_from(code) {
        Ok(code) if code < 126 => wasmi::Error::i32_exit(code),
        _ => wasmi::Error::new("exit with invalid exit status outside of [0..126)"),
    }
}

/// Signals are not supported: a trap, as in wasi-common.
pub(super) fn proc_raise(_ctx: &mut WasiCtx, _mem: &mut Mem<'_>, _signal: u32) -> Outcome {
    Err(Fail::Trap(wasmi::Error::new("proc_raise unsupported")))
}

/// No descriptor is ever a socket: `EBADF`, wasi-common's answer for files and missing fds alike.
fn not_a_socket(ctx: &WasiCtx, fd: u32) -> Outcome {
    ctx.fds.get(fd)?;
    Err(Errno::Badf.into())
}

pub(super) fn sock_accept(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    _flags: u32,
    _out: u32,
) -> Outcome {
    not_a_socket(ctx, fd)
}

#[allow(clippy::too_many_arguments)] // the preview-1 signature
pub(super) fn sock_recv(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    _iovs: u32,
    _count: u32,
    _flags: u32,
    _out: u32,
    _out_flags: u32,
) -> Outcome {
    not_a_socket(ctx, fd)
}

pub(super) fn sock_send(
    ctx: &mut WasiCtx,
    _mem: &mut Mem<'_>,
    fd: u32,
    _iovs: u32,
    _count: u32,
    _flags: u32,
    _out: u32,
) -> Outcome {
    not_a_socket(ctx, fd)
}

pub(super) fn sock_shutdown(ctx: &mut WasiCtx, _mem: &mut Mem<'_>, fd: u32, _how: u32) -> Outcome {
    not_a_socket(ctx, fd)
}

/// Waits for the subscriptions, as wasi-common's synchronous scheduler did: descriptors are
/// regular files, stdio or directories, all ready at once, so with any fd subscription every one
/// of them is reported and nothing waits; with clocks only, the call sleeps until the earliest
/// and reports that one.
pub(super) fn poll_oneoff(
    ctx: &mut WasiCtx,
    mem: &mut Mem<'_>,
    subs: u32,
    events: u32,
    count: u32,
    out: u32,
) -> Outcome {
    if count == 0 {
        return Err(Errno::Inval.into());
    }
    let size = count
        .checked_mul(abi::SUBSCRIPTION_SIZE)
        .ok_or(Errno::Fault)?;
    let raw = mem.bytes(subs, size)?;
    let subs: Vec<Subscription> = raw
        .chunks_exact(abi::SUBSCRIPTION_SIZE as usize)
        .map(Subscription::parse)
        .collect();

    let now = Instant::now();
    let mut earliest: Option<(Instant, u64)> = None;
    let mut ready: Vec<[u8; 32]> = Vec::new();
    for sub in &subs {
        match sub.kind {
            SubscriptionKind::Clock {
                id,
                timeout,
                absolute,
            } => {
                let wait = Duration::from_nanos(timeout);
                let at = match (id, absolute) {
                    (MONOTONIC, true) => ctx.started.checked_add(wait),
                    (MONOTONIC | REALTIME, false) => now.checked_add(wait),
                    (REALTIME, true) => return Err(Errno::Notsup.into()),
                    _ => return Err(Errno::Inval.into()),
                }
                .ok_or(Errno::Overflow)?;
                if earliest.is_none_or(|(e, _)| at < e) {
                    earliest = Some((at, sub.userdata));
                }
            }
            SubscriptionKind::Read(fd) | SubscriptionKind::Write(fd) => {
                let kind = if matches!(sub.kind, SubscriptionKind::Read(_)) {
                    abi::EVENT_FD_READ
                } else {
                    abi::EVENT_FD_WRITE
                };
                let nbytes = match ctx.fds.get(fd)? {
                    Entry::Dir(_) => return Err(Errno::Badf.into()),
                    Entry::File(f) if kind == abi::EVENT_FD_READ => {
                        // What is left to read, as wasi-common reported for files.
                        let len = f.file.metadata().map_or(0, |m| m.len());
                        let pos = rustix::fs::tell(&f.file).unwrap_or(len);
                        len.saturating_sub(pos)
                    }
                    _ => 0,
                };
                ready.push(abi::event(sub.userdata, 0, kind, nbytes));
            }
            SubscriptionKind::Unknown(_) => return Err(Errno::Inval.into()),
        }
    }
    if ready.is_empty() {
        let Some((at, userdata)) = earliest else {
            return Err(Errno::Inval.into());
        };
        ctx.sleeper.sleep_until(Some(at)).map_err(Fail::Trap)?;
        ready.push(abi::event(userdata, 0, abi::EVENT_CLOCK, 0));
    } else if let Some((at, userdata)) = earliest
        && at <= now
    {
        ready.push(abi::event(userdata, 0, abi::EVENT_CLOCK, 0));
    }
    let mut at = events;
    for event in &ready {
        mem.write(at, event)?;
        at = at.checked_add(32).ok_or(Errno::Fault)?;
    }
    mem.write_size(out, ready.len())?;
    Ok(())
}
