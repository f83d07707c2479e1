//! Hands back the mappings of code a quiet node is not running.
//!
//! The kernel maps a binary's code well ahead of use: a fault reads around the page, and every later fault maps
//! up to 64 KiB of cached neighbours. After start-up, a connected compute node running the static x86_64 edge
//! build had 6.7 of its 7.8 MiB of code mapped, while it touched 1.0–1.6 MiB of it in 5 s of idling (the
//! `Referenced` pages in smaps). Mapped code counts in the process's RSS, and the kernel is slow to reclaim
//! it: active executable pages get an extra round on the active list. Trimmed, that node settled at 6.6 MiB
//! RSS instead of 9.9 (code mapped 3.9 MiB instead of 6.7: what it touches, plus the neighbours each fault
//! maps).
//!
//! So whenever the process has been quiet for a whole [`WINDOW`] after being busy (start-up, a burst of jobs),
//! it unmaps its executable's read-only mappings with `MADV_DONTNEED`. The pages stay in the page cache; the
//! next call into them maps them again with a minor fault and no I/O, and what the node no longer calls is
//! plain page cache, reclaimed like any other.
//!
//! Only mappings that cannot hold private data are trimmed: the executable's own, never writable, and with no
//! anonymous (copy-on-write) pages in smaps. For those, `MADV_DONTNEED` drops nothing but page-table entries;
//! a writable or relocated mapping is never touched, since dropping its private pages would lose data.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often the process's CPU time is sampled; a whole window under [`QUIET_BELOW`] is quiet.
const WINDOW: Duration = Duration::from_secs(5);
/// CPU use, as a share of one core over a window, below which the process counts as quiet. An idle node's
/// heartbeats and timers stay under it even in a debug build (tests/e2e/hybrid.rs sees the first window trim).
const QUIET_BELOW: f64 = 0.01;

/// A mapping that may be trimmed: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    end: usize,
}

/// The read-only, private, untouched mappings of the file mapped at `anchor` (an address inside the
/// executable's code), read from the text of `/proc/self/smaps`.
fn trimmable(smaps: &str, anchor: usize) -> Vec<Range> {
    // Each mapping is a header line (`start-end perms offset dev inode path`) followed by `Key: value` lines.
    struct Mapping<'a> {
        range: Range,
        perms: &'a str,
        file: (&'a str, &'a str),
        anonymous_kib: Option<u64>,
    }
    let mut maps: Vec<Mapping<'_>> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let dev = fields.next().unwrap_or("");
            let inode = fields.next().unwrap_or("0");
            maps.push(Mapping {
                range: Range { start, end },
                perms,
                file: (dev, inode),
                anonymous_kib: None,
            });
        } else if first == "Anonymous:"
            && let Some(m) = maps.last_mut()
        {
            m.anonymous_kib = fields.next().and_then(|v| v.parse().ok());
        }
    }
    let Some(own) = maps
        .iter()
        .find(|m| m.range.start <= anchor && anchor < m.range.end)
        .map(|m| m.file)
    else {
        return Vec::new();
    };
    if own.1 == "0" {
        // Not a file mapping: nothing to identify the executable's other mappings by.
        return Vec::new();
    }
    maps.iter()
        .filter(|m| m.file == own)
        .filter(|m| {
            let p = m.perms.as_bytes();
            p.len() == 4 && p[0] == b'r' && p[1] == b'-' && p[3] == b'p'
        })
        // An unknown count (an old kernel without the field) is treated as private data: left alone.
        .filter(|m| m.anonymous_kib == Some(0))
        .map(|m| m.range)
        .collect()
}

/// An address inside this executable's code (this function's own), which names its mappings in smaps.
fn own_code() -> usize {
    own_code as fn() -> usize as usize
}

/// Unmaps the trimmable mappings of this executable; returns the bytes handed back to the page cache.
#[allow(unsafe_code)]
fn trim_now() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut bytes = 0;
    for r in trimmable(&smaps, own_code()) {
        // SAFETY: MADV_DONTNEED on a private file mapping discards its private (copy-on-write) pages, and
        // the next access reads the file's page instead; memory is lost only where such pages exist. `r` is a
        // whole mapping of this process's own executable that is not writable and holds no private page
        // (smaps: `Anonymous: 0 kB`), so only page-table entries go and the next access maps the same bytes.
        // JUSTIFICATION: no private page can appear in it between the smaps read and this call: a mapping
        // without write permission gains one only through mprotect (Cod never calls it on its executable) or
        // a debugger's ptrace write. Relocated read-only data (RELRO, a glibc build's `.data.rel.ro`) shows
        // private pages and is skipped by `trimmable`.
        unsafe {
            rustix::mm::madvise(
                r.start as *mut std::ffi::c_void,
                r.end - r.start,
                rustix::mm::Advice::LinuxDontNeed,
            )?;
        }
        bytes += r.end - r.start;
    }
    Ok(bytes)
}

/// This process's CPU time (user + system, all threads) from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_time_of(&stat, rustix::param::clock_ticks_per_second())
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line, in clock ticks. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_time_of(stat: &str, ticks_per_s: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_s.max(1) as f64,
    ))
}

/// Trims after each quiet window that follows a busy one, until `shutdown`.
pub(crate) async fn run(shutdown: CancellationToken) {
    let mut last = cpu_time();
    // Start-up was busy: the first quiet window trims.
    let mut busy_since_trim = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(WINDOW) => {}
        }
        let now = cpu_time();
        let (Some(before), Some(after)) = (last, now) else {
            return;
        };
        last = now;
        let used = after.saturating_sub(before).as_secs_f64() / WINDOW.as_secs_f64();
        if used >= QUIET_BELOW {
            busy_since_trim = true;
            continue;
        }
        if !busy_since_trim {
            continue;
        }
        busy_since_trim = false;
        match trim_now() {
            Ok(bytes) => debug!(bytes, "quiet: unmapped the executable's read-only pages"),
            Err(e) => {
                warn!(error = %e, "cannot trim the executable's mappings; not trying again");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0003000 r--p 00000000 fe:00 5775367                    /usr/bin/cod
Size:                 12 kB
Anonymous:             0 kB
55d0a0003000-55d0a07c7000 r-xp 00003000 fe:00 5775367                    /usr/bin/cod
Size:               7952 kB
Anonymous:             0 kB
55d0a07c7000-55d0a0942000 r--p 007c7000 fe:00 5775367                    /usr/bin/cod
Size:               1516 kB
Anonymous:           212 kB
55d0a0942000-55d0a09ce000 rw-p 00941000 fe:00 5775367                    /usr/bin/cod
Size:                560 kB
Anonymous:           100 kB
55d0a0a00000-55d0a0a10000 r-xp 00000000 fe:00 1111                       /usr/lib/other.so
Size:                 64 kB
Anonymous:             0 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Size:                132 kB
Anonymous:           132 kB
";

    #[test]
    fn only_untouched_read_only_mappings_of_the_executable_are_trimmed() {
        let got = trimmable(SMAPS, 0x55d0a0004000);
        assert_eq!(
            got,
            vec![
                Range {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0003000
                },
                Range {
                    start: 0x55d0a0003000,
                    end: 0x55d0a07c7000
                },
            ],
            "the relocated read-only mapping (private pages), the writable one and other files stay"
        );
    }

    #[test]
    fn an_anchor_outside_any_file_mapping_trims_nothing() {
        assert!(trimmable(SMAPS, 0x7f0000000100).is_empty());
        assert!(trimmable(SMAPS, 0x1000).is_empty());
    }

    #[test]
    fn a_mapping_without_an_anonymous_count_is_left_alone() {
        let old =
            "55d0a0003000-55d0a07c7000 r-xp 00003000 fe:00 5775367 /usr/bin/cod\nSize: 7952 kB\n";
        assert!(trimmable(old, 0x55d0a0004000).is_empty());
    }

    #[test]
    fn cpu_time_counts_after_the_command_name() {
        let stat = "4326 (cod (x) y) S 1 4326 4326 0 -1 4194560 1030 0 0 0 250 75 0 0 20 0 12 0";
        assert_eq!(cpu_time_of(stat, 100), Some(Duration::from_millis(3250)));
        assert_eq!(cpu_time_of("garbage", 100), None);
    }

    #[test]
    fn this_process_finds_its_own_code() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let anchor = own_code();
        let found = trimmable(&smaps, anchor);
        assert!(
            found.iter().any(|r| r.start <= anchor && anchor < r.end),
            "the code mapping holding own_code is among {found:?}"
        );
        assert!(cpu_time().is_some());
        // Trimming this very test binary while the other tests run: its code keeps working (it is mapped
        // again on use), which is the whole safety claim.
        let bytes = trim_now().expect("trim");
        assert!(bytes > 0);
        let again = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        assert_eq!(
            trimmable(&again, anchor),
            found,
            "the same mappings, still there"
        );
    }
}
