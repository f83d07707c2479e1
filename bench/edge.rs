//! Edge budgets, measured at the process level and printed beside their comparison from the same run:
//! - binary size (stripped release build),
//! - idle RSS of a compute node connected to an orchestrator (target ≤ 5 MiB),
//! - hello-WASM submit → Completed latency, p50 and p99 over 100 jobs on a hybrid node, against this disk's
//!   fsync latency measured now (target p50 ≤ 3 × fsync).
//!
//! Run: `cargo bench --bench edge`. Numbers vary with the machine; compare runs on the same one only.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const JOBS: usize = 100;

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8)) (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))))"#;

struct Node {
    child: Child,
    api: String,
    p2p: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, extra: &[&str]) -> Node {
    let ready = dir.join(format!("{name}.ready"));
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--api-host".into(),
        "127.0.0.1".into(),
        "--api-port".into(),
        "0".into(),
        "--publisher-port".into(),
        "0".into(),
        "--listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--ready-file".into(),
        ready.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let child = Command::new(env!("CARGO_BIN_EXE_cod"))
        .args(&args)
        .env("COD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cod");
    // Owned by `Node` at once, so every exit path (a panic included) kills and reaps it.
    let mut node = Node {
        child,
        api: String::new(),
        p2p: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            node.p2p = v["p2p"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            node.api = format!("http://{}", v["api"].as_str().expect("api"));
            return node;
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fsync_ms(dir: &Path) -> (f64, f64) {
    let path = dir.join("fsync.probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("probe");
    let block = vec![7u8; 4096];
    let mut times = Vec::new();
    for i in 0..200u64 {
        f.write_all_at(&block, (i % 16) * 4096).expect("write");
        let t = Instant::now();
        f.sync_data().expect("fdatasync");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn main() {
    // `cargo bench` passes flags like --bench; this harness takes none.
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    // reqwest is built without a bundled crypto provider; plain HTTP to loopback still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::new();
    let mut out = std::io::stdout().lock();

    let size = std::fs::metadata(env!("CARGO_BIN_EXE_cod"))
        .map(|m| m.len())
        .unwrap_or(0);
    writeln!(
        out,
        "binary size (bench profile = release, stripped): {:.2} MiB",
        size as f64 / 1048576.0
    )
    .ok();

    // Idle RSS of a connected compute node, beside its orchestrator's.
    {
        let orch = start(dir, "orch", &["--orchestrator"]);
        let addr = orch.p2p.first().expect("p2p").clone();
        let compute = start(
            dir,
            "compute",
            &[
                "--compute",
                "--orchestrators",
                &addr,
                "--heartbeat-interval",
                "1s",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes: Value = client
                .get(format!("{}/api/v1/orchestrator/nodes", orch.api))
                .send()
                .and_then(|r| r.json())
                .unwrap_or(Value::Null);
            if nodes["Nodes"][0]["Connection"] == "CONNECTED" {
                break;
            }
            assert!(Instant::now() < deadline, "compute node did not connect");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let start-up allocations settle into the idle state (heartbeats keep flowing).
        std::thread::sleep(Duration::from_secs(3));
        let mib = |kib: u64| kib as f64 / 1024.0;
        let (pid, opid) = (compute.child.id(), orch.child.id());
        writeln!(
            out,
            "idle RSS, connected compute node: {:.2} MiB (target <= 5 MiB) = {:.2} MiB anonymous (heap, stacks) + {:.2} MiB file-backed (the executable and shared libraries, clean and reclaimable); its orchestrator: {:.2} MiB",
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "RssAnon")),
            mib(status_kib(pid, "RssFile")),
            mib(status_kib(opid, "VmRSS")),
        )
        .ok();
    }

    // Submit -> Completed on a hybrid node.
    let node = start(dir, "hybrid", &[]);
    let module = wat::parse_str(HELLO).expect("wat");
    use base64::Engine;
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(module)
    );
    let job = json!({"Job": {"Type": "batch", "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/main.wasm"}},
        "InputSources": [{"Target": "/main.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}],
        "Publisher": {"Type": "noop"}}]}});
    let mut latencies = Vec::new();
    for i in 0..(JOBS + 5) {
        let t = Instant::now();
        let r: Value = client
            .put(format!("{}/api/v1/orchestrator/jobs", node.api))
            .json(&job)
            .send()
            .and_then(|r| r.json())
            .expect("submit");
        let id = r["JobID"].as_str().expect("JobID").to_owned();
        loop {
            let j: Value = client
                .get(format!("{}/api/v1/orchestrator/jobs/{id}", node.api))
                .send()
                .and_then(|r| r.json())
                .expect("get");
            match j["Job"]["State"]["StateType"].as_str() {
                Some("Completed") => break,
                Some("Failed") | Some("Stopped") => panic!("job failed: {j}"),
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        if i >= 5 {
            // The first few warm up connections and caches.
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (f50, f99) = fsync_ms(dir);
    writeln!(
        out,
        "hello-WASM submit -> Completed over {JOBS} jobs: p50 {p50:.2} ms, p99 {p99:.2} ms"
    )
    .ok();
    writeln!(out, "this disk's fdatasync: p50 {f50:.3} ms, p99 {f99:.3} ms -> target p50 <= {:.2} ms ({:.1}x fsync measured)", 3.0 * f50, p50 / f50).ok();
}
