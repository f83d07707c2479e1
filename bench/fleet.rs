//! Fleet scale: one orchestrator (a real `cod serve --orchestrator`) with `COD_BENCH_FLEET_NODES` (default
//! 10,000) compute nodes simulated over the real protocol in child processes of this bench (bench/fleet_sim.rs:
//! each node has its own identity and TCP + Noise + Yamux connection, handshakes, heartbeats and reports).
//! Prints, each beside its target or comparison:
//! - orchestrator RSS with 0, 1,000, 5,000 and all nodes connected, against the 1 GiB budget, and per node;
//! - time until every node is connected and approved;
//! - heartbeats handled per second over a window, with heartbeats missed or late and nodes wrongly marked
//!   disconnected (a failure when not zero);
//! - submit → Completed of a job with Count 100 spread over the fleet.
//!
//! Run: `cargo bench --bench fleet` (a few minutes), `COD_BENCH_FLEET_NODES=1000` for a quick run;
//! `COD_BENCH_FLEET_HEARTBEAT` (default 10s) sets the nodes' heartbeat interval, `COD_BENCH_FLEET_PER_PROCESS`
//! (default 1,000) the nodes per simulator process; `COD_BENCH_JSON` = write every figure there (bench/run.sh
//! writes bench/results/<date>-<host>-fleet.json). Numbers vary with the machine; compare runs on the same one.

#[path = "fleet_sim.rs"]
mod fleet_sim;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use fleet_sim::{LINE_PREFIX, SimConfig};

/// The orchestrator's RSS budget with 10,000 nodes (issue 6).
const RSS_BUDGET: u64 = 1 << 30;
/// Partitions of the spread job.
const COUNT: usize = 100;
/// Nodes started per second by each simulator process.
const CONNECT_RATE: u32 = 400;

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The latest counters line of every simulator process, by process index.
type Latest = Arc<Mutex<Vec<Value>>>;

fn sum(latest: &Latest, key: &str) -> u64 {
    latest
        .lock()
        .expect("lock")
        .iter()
        .map(|v| v[key].as_u64().unwrap_or(0))
        .sum()
}

fn spawn_sim(config: &SimConfig, index: usize, latest: &Latest) -> Proc {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(fleet_sim::ENV, config.to_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start simulator");
    let stdout = child.stdout.take().expect("stdout");
    latest.lock().expect("lock").push(Value::Null);
    let latest = latest.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(j) = line.strip_prefix(LINE_PREFIX)
                && let Ok(v) = serde_json::from_str(j)
            {
                latest.lock().expect("lock")[index] = v;
            }
        }
    });
    Proc(child)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (connected and approved, total) nodes as the orchestrator lists them.
fn listed(client: &reqwest::blocking::Client, api: &str) -> (usize, usize) {
    let nodes: Value = client
        .get(format!("{api}/api/v1/orchestrator/nodes?limit=0"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null);
    let all = nodes["Nodes"].as_array().cloned().unwrap_or_default();
    let ok = all
        .iter()
        .filter(|n| n["Connection"] == "CONNECTED" && n["Membership"] == "APPROVED")
        .count();
    (ok, all.len())
}

fn spread_job() -> Value {
    let module = wat::parse_str(HELLO).expect("wat");
    use base64::Engine;
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(module)
    );
    json!({"Job": {"Type": "batch", "Count": COUNT, "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/main.wasm"}},
        "InputSources": [{"Target": "/main.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}],
        "Publisher": {"Type": "noop"}}]}})
}

fn main() {
    if let Some(config) = SimConfig::from_env() {
        fleet_sim::run_process(config);
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks
    }
    let nodes: usize = env_or("COD_BENCH_FLEET_NODES", 10_000);
    let per: usize = env_or("COD_BENCH_FLEET_PER_PROCESS", 1_000).max(1);
    let heartbeat = Duration::from_secs_f64(env_or("COD_BENCH_FLEET_HEARTBEAT", 10.0));
    cod::cli::fd_limit::raise_to_hard();

    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("orchestrator.yaml");
    // Disconnect after three missed heartbeats (Bacalhau's ratio), so a late heartbeat shows as a failure.
    std::fs::write(
        &config_path,
        format!(
            "Orchestrator:\n  DisconnectTimeout: {}ms\n",
            (heartbeat * 3).as_millis()
        ),
    )
    .expect("config");
    let (orch, api, p2p) = start_orchestrator(dir.path(), &config_path);
    let pid = orch.0.id();
    // reqwest is built without a default crypto provider (the crate picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    // Each row is printed as soon as it is measured (a run cut short still shows how far it got) and again in
    // the final table.
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut json_out = serde_json::Map::new();
    let rss0 = rss_kib(pid);
    emit(
        &mut rows,
        (
            "orchestrator RSS, 0 nodes".into(),
            format!("{:.1} MiB", rss0 as f64 / 1024.0),
            String::new(),
        ),
    );
    json_out.insert("rss_kib_0".into(), json!(rss0));

    let latest: Latest = Arc::default();
    let mut sims = Vec::new();
    let started = Instant::now();
    let checkpoints: Vec<usize> = [1_000, 5_000]
        .into_iter()
        .filter(|&c| c < nodes)
        .chain([nodes])
        .collect();
    let mut connect_time = Duration::ZERO;
    let mut rss_at = Vec::new();
    let mut spawned = 0;
    for &target in &checkpoints {
        while spawned < target {
            let n = per.min(target - spawned);
            let config = SimConfig {
                orchestrator: p2p.clone(),
                nodes: n,
                heartbeat,
                connect_rate: CONNECT_RATE,
                group: format!("sim{}", sims.len()),
            };
            sims.push(spawn_sim(&config, sims.len(), &latest));
            spawned += n;
        }
        wait_for(
            &format!("{target} nodes welcomed"),
            Duration::from_secs(600),
            || sum(&latest, "welcomed") >= target as u64,
        );
        if target == nodes {
            connect_time = started.elapsed();
        }
        // Let the handshake burst settle (allocator high-water marks, queued writes) before reading RSS.
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(pid);
        rss_at.push((target, rss));
        json_out.insert(format!("rss_kib_{target}"), json!(rss));
        emit(
            &mut rows,
            (
                format!("orchestrator RSS, {target} nodes"),
                format!("{:.1} MiB", rss as f64 / 1024.0),
                format!(
                    "{:.1} KiB/node over idle; budget {} MiB at 10,000",
                    (rss.saturating_sub(rss0)) as f64 / target as f64,
                    RSS_BUDGET >> 20
                ),
            ),
        );
    }
    let (approved, total) = listed(&client, &api);
    assert_eq!(
        (approved, total),
        (nodes, nodes),
        "the orchestrator lists every node connected and approved"
    );
    emit(
        &mut rows,
        (
            format!("connect + approve {nodes} nodes"),
            format!("{:.1} s", connect_time.as_secs_f64()),
            format!("{CONNECT_RATE} nodes/s per simulator process ramp"),
        ),
    );
    json_out.insert("connect_s".into(), json!(connect_time.as_secs_f64()));

    // Heartbeats over two intervals, with every node connected.
    let window = heartbeat * 2;
    let (ok0, missed0, late0, disc0) = (
        sum(&latest, "heartbeats_ok"),
        sum(&latest, "heartbeats_missed"),
        sum(&latest, "heartbeats_late"),
        sum(&latest, "disconnects"),
    );
    std::thread::sleep(window);
    let ok = sum(&latest, "heartbeats_ok") - ok0;
    let missed = sum(&latest, "heartbeats_missed") - missed0;
    let late = sum(&latest, "heartbeats_late") - late0;
    let (approved_after, _) = listed(&client, &api);
    let wrongly_disconnected = nodes - approved_after;
    let disconnects = sum(&latest, "disconnects") - disc0;
    let rate = ok as f64 / window.as_secs_f64();
    emit(
        &mut rows,
        (
            "heartbeats handled".into(),
            format!("{rate:.0} /s"),
            format!(
                "expected {:.0} /s ({nodes} nodes every {:?})",
                nodes as f64 / heartbeat.as_secs_f64(),
                heartbeat
            ),
        ),
    );
    emit(
        &mut rows,
        (
            "heartbeats missed / late".into(),
            format!("{missed} / {late}"),
            "target 0 / 0".into(),
        ),
    );
    emit(
        &mut rows,
        (
            "nodes wrongly disconnected".into(),
            format!("{wrongly_disconnected} (links closed: {disconnects})"),
            "target 0".into(),
        ),
    );
    json_out.insert("heartbeats_per_s".into(), json!(rate));
    json_out.insert("heartbeats_missed".into(), json!(missed));
    json_out.insert("heartbeats_late".into(), json!(late));
    json_out.insert(
        "nodes_wrongly_disconnected".into(),
        json!(wrongly_disconnected),
    );

    // One job spread over the fleet.
    let t = Instant::now();
    let r: Value = client
        .put(format!("{api}/api/v1/orchestrator/jobs"))
        .json(&spread_job())
        .send()
        .and_then(|r| r.json())
        .expect("submit");
    let id = r["JobID"].as_str().expect("JobID").to_owned();
    let mut state = String::new();
    wait_for("the spread job", Duration::from_secs(300), || {
        let j: Value = client
            .get(format!("{api}/api/v1/orchestrator/jobs/{id}"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        state = j["Job"]["State"]["StateType"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(
            !matches!(state.as_str(), "Failed" | "Stopped"),
            "job ended {state}: {j}"
        );
        state == "Completed"
    });
    let job_time = t.elapsed();
    emit(
        &mut rows,
        (
            format!("job Count {COUNT}: submit -> Completed"),
            format!("{:.2} s", job_time.as_secs_f64()),
            format!("over {nodes} nodes"),
        ),
    );
    json_out.insert("job_count100_s".into(), json!(job_time.as_secs_f64()));
    let rss_end = rss_kib(pid);
    json_out.insert("rss_kib_end".into(), json!(rss_end));
    emit(
        &mut rows,
        (
            "orchestrator RSS at the end".into(),
            format!("{:.1} MiB", rss_end as f64 / 1024.0),
            format!(
                "{} the {} MiB budget",
                if rss_end * 1024 <= RSS_BUDGET {
                    "within"
                } else {
                    "OVER"
                },
                RSS_BUDGET >> 20
            ),
        ),
    );
    json_out.insert("nodes".into(), json!(nodes));
    // Connect time and heartbeat rates depend on the build (`cargo bench` is release; a dev build's crypto is
    // slower), RSS much less.
    json_out.insert(
        "profile".into(),
        json!(if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }),
    );
    json_out.insert("heartbeat_s".into(), json!(heartbeat.as_secs_f64()));

    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{:<40} {:>14}  comparison", "measure", "value").expect("stdout");
    for (m, v, c) in &rows {
        writeln!(out, "{m:<40} {v:>14}  {c}").expect("stdout");
    }
    if let Ok(path) = std::env::var("COD_BENCH_JSON") {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&Value::Object(json_out)).expect("json"),
        )
        .expect("write results");
        writeln!(out, "results: {path}").expect("stdout");
    }
    drop(sims);
    drop(orch);
}

fn emit(rows: &mut Vec<(String, String, String)>, row: (String, String, String)) {
    println!("{:<40} {:>14}  {}", row.0, row.1, row.2);
    rows.push(row);
}

fn start_orchestrator(dir: &Path, config: &Path) -> (Proc, String, String) {
    let ready = dir.join("orch.ready");
    let child = Command::new(env!("CARGO_BIN_EXE_cod"))
        .args(["serve", "--orchestrator", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("orch"))
        .args([
            "--api-host",
            "127.0.0.1",
            "--api-port",
            "0",
            "--publisher-port",
            "0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--ready-file",
        ])
        .arg(&ready)
        .env("COD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cod");
    let proc = Proc(child);
    let mut v = Value::Null;
    wait_for("the orchestrator", Duration::from_secs(30), || {
        v = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        !v.is_null()
    });
    let api = format!("http://{}", v["api"].as_str().expect("api"));
    let p2p = v["p2p"][0].as_str().expect("p2p address").to_owned();
    (proc, api, p2p)
}
