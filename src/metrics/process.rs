//! The standard `process_*` families, read from `/proc/self` at scrape time (a few small files, no syscall
//! beyond open/read; skipped where `/proc` is absent).
//!
//! Kernel clock ticks are `USER_HZ`, which Linux fixes at 100 for every userland ABI, so no `sysconf` (and no
//! `unsafe`) is needed to convert them.

use super::exposition::{Encoder, Kind};

/// `USER_HZ`: the unit of the tick counts in `/proc/<pid>/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// Writes `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds` and
/// `process_cpu_seconds_total`, each only when it could be read.
pub fn render(e: &mut Encoder) {
    if let Some(rss) = read("/proc/self/status").as_deref().and_then(vm_rss_bytes) {
        #[allow(clippy::cast_precision_loss)]
        e.single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            Kind::Gauge,
            rss as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        #[allow(clippy::cast_precision_loss)]
        let n = dir.count().saturating_sub(1) as f64; // the read_dir handle itself
        e.single(
            "process_open_fds",
            "Number of open file descriptors",
            Kind::Gauge,
            n,
        );
    }
    let stat = read("/proc/self/stat");
    let fields = stat.as_deref().and_then(stat_fields);
    if let Some((utime, stime, start_ticks)) = fields {
        e.single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
            Kind::Counter,
            (utime + stime) / TICKS_PER_SECOND,
        );
        if let Some(boot) = read("/proc/stat").as_deref().and_then(boot_time) {
            e.single(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                Kind::Gauge,
                boot + start_ticks / TICKS_PER_SECOND,
            );
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `VmRSS:   1234 kB` in `/proc/self/status`.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime, stime and starttime (fields 14, 15 and 22) of `/proc/self/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn stat_fields(stat: &str) -> Option<(f64, f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let at = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    Some((at(14)?, at(15)?, at(22)?))
}

/// `btime <seconds>` in `/proc/stat`.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            vm_rss_bytes("Name:\tcod\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        let stat = "42 (co d) (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 12345 0 0";
        assert_eq!(stat_fields(stat), Some((250.0, 50.0, 12345.0)));
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_reports_its_figures() {
        let mut e = Encoder::new();
        render(&mut e);
        let text = e.finish();
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
        }
    }
}
