//! Edge budgets, measured at the process level and printed beside their comparison from the same run:
//! - binary size (stripped release build),
//! - idle RSS of a compute node connected to an orchestrator (target ≤ 5 MiB), and a CPU-bound WASM job on
//!   that node (the interpreter as that build compiled it: the static edge build beside the host build),
//! - hello-WASM submit → Completed latency, p50 and p99 over 100 jobs on a hybrid node, against this disk's
//!   fsync latency measured now (target p50 ≤ 3 × fsync).
//!
//! - `cod serve` start → ready (the ready file written), against the floor of exec'ing the same binary
//!   (`cod --help`),
//! - jobs/s through one orchestrator with 10 compute nodes (real processes on loopback), against one hybrid
//!   node driven the same way and the disk's fsync ceiling,
//! - binary sizes of the builds named in `COD_BENCH_SIZES` (`label=path,…`), against the 8 MiB edge budget,
//! - a queue draining: 1,000 jobs submitted at once to a node with room for 10 at a time, against 100 jobs
//!   the same way (the CPU per job must not grow with the queue).
//!
//! Run: `cargo bench --bench edge`, or `bench/run.sh`, which builds the static binaries first and keeps the
//! results. Environment: `COD_BENCH_COMPUTE_BIN` = a second binary (the static edge build) whose connected
//! compute node's idle RSS is measured beside this build's; `COD_BENCH_JSON` = write every figure there;
//! `COD_BENCH_ONLY=jobs` = only the jobs/s figures and the fsync ceiling (no JSON written);
//! `COD_BENCH_ONLY=queue` = only the queue-drain figures (no JSON written);
//! `COD_BENCH_FLEET_JOBS` = jobs per throughput run (default 1000); `COD_BENCH_FLEET_COMPUTE_BIN` = the binary
//! the fleet's 10 compute nodes run (default: this build; the static edge build is what boards run);
//! `COD_BENCH_WAIT=poll` = clients poll `GET /jobs/{id}` every 200 µs instead of long-polling the history (the
//! client before the long-poll).
//! Numbers vary with the machine; compare runs on the same one only.

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

/// A CPU-bound module: 30 million rounds of a multiply, an add and a store. Its run time is the interpreter's
/// speed as the build under test compiled it; a size setting that slows the interpreter (x86_64's machine
/// outliner halved it) shows here, beside the host build.
const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32) (local $h i32)
    (local.set $h (i32.const 7))
    (block $done (loop $next
      (local.set $h (i32.add (i32.mul (local.get $h) (i32.const 1103515245)) (i32.const 12345)))
      (i32.store (i32.and (local.get $h) (i32.const 0xfffc)) (local.get $h))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $done (i32.ge_u (local.get $i) (i32.const 30000000)))
      (br $next)))))"#;

/// Spin jobs per node in the CPU-bound figure (the median is reported).
const SPINS: usize = 5;

/// Compute nodes behind the one orchestrator in the throughput run.
const FLEET: usize = 10;
/// Jobs in each throughput run (unless `COD_BENCH_FLEET_JOBS`), and the clients submitting them
/// concurrently (each submits, waits for Completed, submits the next).
const FLEET_JOBS: usize = 1000;
const CLIENTS: usize = 16;

/// Clients in each throughput run: [`CLIENTS`] unless `COD_BENCH_CLIENTS`.
fn clients() -> usize {
    std::env::var("COD_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(CLIENTS)
}
/// The kernel's clock ticks per second in `/proc/<pid>/stat` (USER_HZ: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

fn fleet_jobs() -> usize {
    std::env::var("COD_BENCH_FLEET_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(FLEET_JOBS)
}

/// CPU seconds (user + system, all threads, reaped children excluded) `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / USER_HZ
}
/// The edge budget for the stripped static binary (issue 5).
const SIZE_BUDGET: u64 = 8 << 20;

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
    start_with(env!("CARGO_BIN_EXE_cod"), dir, name, extra)
}

fn start_with(bin: &str, dir: &Path, name: &str, extra: &[&str]) -> Node {
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
    let child = Command::new(bin)
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

/// One row of the summary table, also written to the JSON results.
struct Row {
    measure: String,
    value: String,
    comparison: String,
    target: String,
}

fn row(
    measure: impl Into<String>,
    value: impl Into<String>,
    comparison: impl Into<String>,
    target: impl Into<String>,
) -> Row {
    Row {
        measure: measure.into(),
        value: value.into(),
        comparison: comparison.into(),
        target: target.into(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn hello_job() -> Value {
    wasm_job(HELLO)
}

/// A batch job running `wat` inline, asking for a tiny share of the node.
fn wasm_job(wat: &str) -> Value {
    let module = wat::parse_str(wat).expect("wat");
    use base64::Engine;
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(module)
    );
    // A tiny job asks for a tiny share (10 mCPU): 16 in flight must not fill a 2-core node's capacity, or a
    // client that submits the moment it sees Completed can find the previous job's share not yet released
    // (the orchestrator updates its capacity view just after the commit a client can already read).
    json!({"Job": {"Type": "batch", "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/main.wasm"}},
        "Resources": {"CPU": "10m", "Memory": "16Mb"},
        "InputSources": [{"Target": "/main.wasm", "Source": {"Type": "inline", "Params": {"URL": url}}}],
        "Publisher": {"Type": "noop"}}]}})
}

/// Submits `job` and waits until it is Completed; the time it took. The wait long-polls the job's history
/// (job-level records, `wait_seconds`): one request per state change. `COD_BENCH_WAIT=poll` polls the job
/// every 200 µs instead, as this bench did before the long-poll existed.
fn run_job(client: &reqwest::blocking::Client, api: &str, job: &Value) -> Duration {
    let t = Instant::now();
    let id = submit(client, api, job);
    if std::env::var("COD_BENCH_WAIT").is_ok_and(|v| v == "poll") {
        poll_job(client, api, &id);
    } else {
        follow_history(client, api, &id);
    }
    t.elapsed()
}

/// Submits `job` through `api`; its id.
fn submit(client: &reqwest::blocking::Client, api: &str, job: &Value) -> String {
    let r: Value = client
        .put(format!("{api}/api/v1/orchestrator/jobs"))
        .json(job)
        .send()
        .and_then(|r| r.json())
        .expect("submit");
    r["JobID"].as_str().expect("JobID").to_owned()
}

/// Long-polls job `id`'s job-level history until a record says Completed.
fn follow_history(client: &reqwest::blocking::Client, api: &str, id: &str) {
    let mut token = String::new();
    loop {
        let page: Value = client
            .get(history_url(api, id, &token))
            .send()
            .and_then(|r| r.json())
            .expect("history");
        if completed(&page) {
            return;
        }
        token = next_token(&page);
    }
}

/// [`run_job`] for the throughput clients, on an async client (`COD_BENCH_WAIT=poll` too).
async fn run_job_async(client: &reqwest::Client, api: &str, job: &Value) {
    let r: Value = client
        .put(format!("{api}/api/v1/orchestrator/jobs"))
        .json(job)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("submit answer");
    let id = r["JobID"].as_str().expect("JobID").to_owned();
    if std::env::var("COD_BENCH_WAIT").is_ok_and(|v| v == "poll") {
        loop {
            let j: Value = client
                .get(format!("{api}/api/v1/orchestrator/jobs/{id}"))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("job");
            if job_completed(&j) {
                return;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut token = String::new();
    loop {
        let page: Value = client
            .get(history_url(api, &id, &token))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("history page");
        if completed(&page) {
            return;
        }
        token = next_token(&page);
    }
}

/// The long-poll of job `id`'s job-level history after `token`.
fn history_url(api: &str, id: &str, token: &str) -> String {
    format!(
        "{api}/api/v1/orchestrator/jobs/{id}/history?event_type=job&wait_seconds=30&next_token={token}"
    )
}

/// The token of the history page after `page`; panics if there is none (the history ended unfinished).
fn next_token(page: &Value) -> String {
    let token = page["NextToken"].as_str().unwrap_or_default().to_owned();
    assert!(!token.is_empty(), "history ended without Completed: {page}");
    token
}

/// Whether a `GET /jobs/{id}` answer says the job completed; panics if it failed or stopped.
fn job_completed(j: &Value) -> bool {
    match j["Job"]["State"]["StateType"].as_str() {
        Some("Completed") => true,
        Some("Failed") | Some("Stopped") => panic!("job failed: {j}"),
        _ => false,
    }
}

/// Whether a history page says the job completed; panics if it says the job failed or stopped.
fn completed(page: &Value) -> bool {
    for item in page["Items"].as_array().into_iter().flatten() {
        match item["Event"]["Details"]["NewState"].as_str() {
            Some("Completed") => return true,
            Some("Failed" | "Stopped") => panic!("job failed: {page}"),
            _ => {}
        }
    }
    false
}

/// Polls job `id` every 200 µs until it is Completed.
fn poll_job(client: &reqwest::blocking::Client, api: &str, id: &str) {
    loop {
        let j: Value = client
            .get(format!("{api}/api/v1/orchestrator/jobs/{id}"))
            .send()
            .and_then(|r| r.json())
            .expect("get");
        if job_completed(&j) {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until the orchestrator lists `n` connected compute nodes.
fn wait_connected(client: &reqwest::blocking::Client, api: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes: Value = client
            .get(format!("{api}/api/v1/orchestrator/nodes"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        let connected = nodes["Nodes"]
            .as_array()
            .map(|a| a.iter().filter(|n| n["Connection"] == "CONNECTED").count())
            .unwrap_or(0);
        if connected >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{connected} of {n} compute nodes connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

impl Rss {
    fn of(pid: u32) -> Rss {
        Rss {
            total: status_kib(pid, "VmRSS"),
            anon: status_kib(pid, "RssAnon"),
            file: status_kib(pid, "RssFile"),
        }
    }

    /// "6.68 MiB (1.02 anon + 5.66 file)".
    fn show(self) -> String {
        format!(
            "{:.2} MiB ({:.2} anon + {:.2} file)",
            self.total as f64 / 1024.0,
            self.anon as f64 / 1024.0,
            self.file as f64 / 1024.0
        )
    }
}

/// Idle RSS of a compute node (running `bin`) connected to an orchestrator: 3 s after it connected, and settled
/// (12 s after: past the first quiet window in which a node hands back its code mappings, src/node/trim.rs);
/// the orchestrator's total; then the run time of a CPU-bound job on that node.
fn idle_rss(client: &reqwest::blocking::Client, dir: &Path, bin: &str, tag: &str) -> Idle {
    let orch = start(dir, &format!("orch-{tag}"), &["--orchestrator"]);
    let addr = orch.p2p.first().expect("p2p").clone();
    let compute = start_with(
        bin,
        dir,
        &format!("compute-{tag}"),
        &[
            "--compute",
            "--orchestrators",
            &addr,
            "--heartbeat-interval",
            "1s",
        ],
    );
    wait_connected(client, &orch.api, 1);
    // Let start-up allocations settle into the idle state (heartbeats keep flowing).
    std::thread::sleep(Duration::from_secs(3));
    let connected = Rss::of(compute.child.id());
    std::thread::sleep(Duration::from_secs(9));
    let settled = Rss::of(compute.child.id());
    let orchestrator_kib = status_kib(orch.child.id(), "VmRSS");
    // Then the CPU-bound job on the same node (after the RSS readings, which it would disturb).
    let spin = wasm_job(SPIN);
    let mut runs: Vec<f64> = (0..SPINS)
        .map(|_| run_job(client, &orch.api, &spin).as_secs_f64() * 1e3)
        .collect();
    runs.sort_by(f64::total_cmp);
    Idle {
        connected,
        settled,
        orchestrator_kib,
        spin_ms: percentile(&runs, 0.5),
    }
}

/// What [`idle_rss`] measures of one compute node.
struct Idle {
    /// 3 s after connecting.
    connected: Rss,
    /// 12 s after connecting, past the first quiet window.
    settled: Rss,
    orchestrator_kib: u64,
    /// Median submit -> Completed of [`SPINS`] [`SPIN`] jobs on the node, in ms.
    spin_ms: f64,
}

/// Median and p90 of `cod serve` (hybrid) start → ready file, over `runs` fresh data dirs.
fn start_to_ready(dir: &Path, runs: usize) -> (f64, f64) {
    let mut times = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let node = start(dir, &format!("ready-{i}"), &[]);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(node);
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.9))
}

/// Median of exec'ing the binary for `--help`: what any start costs before Cod does anything.
fn exec_floor(runs: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_cod"))
            .arg("--help")
            .stdout(Stdio::null())
            .status()
            .expect("cod --help");
        assert!(status.success());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

/// A throughput run's figures.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    jobs_per_s: f64,
    /// CPU time of every process involved (the `cod` processes and this client) per job, in ms.
    cpu_ms_per_job: f64,
    /// Of that: the first `cod` process (the orchestrator, or the hybrid node), the others (compute nodes),
    /// and this client.
    split_ms: [f64; 3],
}

/// [`clients`] closed-loop clients running [`fleet_jobs`] hello jobs through `api`; `pids` are the `cod`
/// processes serving them, whose CPU time is counted with this process's own.
fn throughput(api: &str, job: &Value, pids: &[u32]) -> Throughput {
    let jobs = fleet_jobs();
    let cpu = || -> [f64; 3] {
        [
            pids.first().map_or(0.0, |p| cpu_seconds(*p)),
            pids.iter().skip(1).map(|p| cpu_seconds(*p)).sum(),
            cpu_seconds(std::process::id()),
        ]
    };
    // The clients are tasks on one thread of a current-thread runtime sharing one connection pool: a load
    // generator's own CPU is counted against the jobs, and blocking clients (a runtime thread each, a
    // hand-off per request) cost 0.6 ms a job, more than half the 1 ms budget of 2,000 jobs/s on 2 cores.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients())
        .build()
        .expect("client");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let cpu_before = cpu();
    let t = Instant::now();
    runtime.block_on(async {
        let clients = (0..clients()).map(|_| async {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                run_job_async(&client, api, job).await;
            }
        });
        futures::future::join_all(clients).await;
    });
    let elapsed = t.elapsed().as_secs_f64();
    let cpu_after = cpu();
    let split_ms: [f64; 3] =
        std::array::from_fn(|i| (cpu_after[i] - cpu_before[i]) * 1e3 / jobs as f64);
    Throughput {
        jobs_per_s: jobs as f64 / elapsed,
        cpu_ms_per_job: split_ms.iter().sum(),
        split_ms,
    }
}

/// The jobs/s figures (fleet, single hybrid node), printed and added to `rows`. Reuses `hybrid` if given
/// (the latency run's node) so its warm caches are the same as before this was split out.
fn jobs_per_second(
    out: &mut impl Write,
    rows: &mut Vec<Row>,
    client: &reqwest::blocking::Client,
    dir: &Path,
    hybrid: Option<Node>,
    f50: f64,
) -> (Throughput, Throughput) {
    let node = hybrid.unwrap_or_else(|| start(dir, "hybrid", &[]));
    let job = hello_job();
    let single = throughput(&node.api, &job, &[node.child.id()]);
    drop(node);
    let orch = start(dir, "fleet-orch", &["--orchestrator"]);
    let addr = orch.p2p.first().expect("p2p").clone();
    // Boards run the edge build (opt-level z), not this one (opt-level 2): it can stand in for the fleet's nodes.
    let compute_bin = std::env::var("COD_BENCH_FLEET_COMPUTE_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let fleet: Vec<Node> = (0..FLEET)
        .map(|i| {
            start_with(
                compute_bin.as_deref().unwrap_or(env!("CARGO_BIN_EXE_cod")),
                dir,
                &format!("fleet-{i}"),
                &[
                    "--compute",
                    "--orchestrators",
                    &addr,
                    "--heartbeat-interval",
                    "1s",
                ],
            )
        })
        .collect();
    wait_connected(client, &orch.api, FLEET);
    let pids: Vec<u32> = std::iter::once(&orch)
        .chain(&fleet)
        .map(|n| n.child.id())
        .collect();
    let many = throughput(&orch.api, &job, &pids);
    drop(fleet);
    let jobs = fleet_jobs();
    let nodes_bin = compute_bin
        .map(|b| {
            format!(
                " ({})",
                Path::new(&b).file_name().unwrap_or_default().display()
            )
        })
        .unwrap_or_default();
    writeln!(
        out,
        "jobs/s, {} clients x {jobs} hello jobs: 1 orchestrator + {FLEET} compute nodes{nodes_bin} {:.1}/s ({:.2} ms CPU/job: orchestrator {:.2}, compute nodes {:.2}, client {:.2}); 1 hybrid node {:.1}/s ({:.2} ms CPU/job: node {:.2}, client {:.2}); fsync ceiling {:.0} commits/s",
        clients(),
        many.jobs_per_s,
        many.cpu_ms_per_job,
        many.split_ms[0],
        many.split_ms[1],
        many.split_ms[2],
        single.jobs_per_s,
        single.cpu_ms_per_job,
        single.split_ms[0],
        single.split_ms[2],
        1e3 / f50
    )
    .ok();
    rows.push(row(
        format!("jobs/s, 1 orchestrator + {FLEET} compute nodes"),
        format!(
            "{:.1} jobs/s, {:.2} ms CPU/job",
            many.jobs_per_s, many.cpu_ms_per_job
        ),
        format!(
            "1 hybrid node: {:.1} jobs/s, {:.2} ms CPU/job; fsync ceiling {:.0} commits/s",
            single.jobs_per_s,
            single.cpu_ms_per_job,
            1e3 / f50
        ),
        "",
    ));
    (many, single)
}

/// Jobs in the big queue-drain run (the small one has a tenth), and how many of them fit on the node at once.
const QUEUED: usize = 1000;
const QUEUE_SLOTS: usize = 10;

/// A queue-drain run's figures.
#[derive(Debug, Clone, Copy)]
struct Drain {
    /// From the first submission to the last job's completion.
    seconds: f64,
    /// The node's CPU time per job, in ms.
    cpu_ms_per_job: f64,
}

/// `n` hello jobs submitted at once (8 submitters) to a hybrid node with 1 CPU, each asking for a tenth of
/// it and willing to queue: all but [`QUEUE_SLOTS`] wait, and each one that ends frees room for the next.
fn queue_drain(client: &reqwest::blocking::Client, dir: &Path, n: usize) -> Drain {
    let node = start(dir, &format!("queue-{n}"), &["--cpu", "1"]);
    let mut job = hello_job();
    let task = &mut job["Job"]["Tasks"][0];
    // The node's one CPU in QUEUE_SLOTS shares.
    task["Resources"]["CPU"] = json!(format!("{}m", 1000 / QUEUE_SLOTS));
    task["Timeouts"] = json!({"QueueTimeout": 600});
    let cpu_before = cpu_seconds(node.child.id());
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ids: Vec<String> = std::thread::scope(|s| {
        let submitters: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut ids = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        ids.push(submit(client, &node.api, &job));
                    }
                    ids
                })
            })
            .collect();
        submitters
            .into_iter()
            .flat_map(|h| h.join().expect("submitter"))
            .collect()
    });
    // In submission order, each long-poll answers at once for a job already done.
    for id in &ids {
        follow_history(client, &node.api, id);
    }
    let seconds = t.elapsed().as_secs_f64();
    Drain {
        seconds,
        cpu_ms_per_job: (cpu_seconds(node.child.id()) - cpu_before) * 1e3 / n as f64,
    }
}

/// The queue-drain figures: [`QUEUED`] jobs against a tenth of them, printed and added to `rows`. Waking
/// every queued job whenever one ended made the big run's CPU per job ten times the small one's.
fn queue_drains(
    out: &mut impl Write,
    rows: &mut Vec<Row>,
    client: &reqwest::blocking::Client,
    dir: &Path,
) -> (Drain, Drain) {
    let small = queue_drain(client, dir, QUEUED / 10);
    let big = queue_drain(client, dir, QUEUED);
    writeln!(
        out,
        "queue drain, {QUEUE_SLOTS} slots: {QUEUED} jobs submitted at once done in {:.1} s ({:.2} ms node CPU/job); {} jobs in {:.1} s ({:.2} ms/job)",
        big.seconds,
        big.cpu_ms_per_job,
        QUEUED / 10,
        small.seconds,
        small.cpu_ms_per_job
    )
    .ok();
    rows.push(row(
        format!("queue drain: {QUEUED} jobs at once, {QUEUE_SLOTS} slots (hybrid)"),
        format!(
            "{:.1} s, {:.2} ms node CPU/job",
            big.seconds, big.cpu_ms_per_job
        ),
        format!(
            "{} jobs: {:.1} s, {:.2} ms/job",
            QUEUED / 10,
            small.seconds,
            small.cpu_ms_per_job
        ),
        "CPU/job flat in the queue's length",
    ));
    (big, small)
}

fn main() {
    // `cargo bench` passes flags like --bench; this harness takes none.
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    // reqwest is built without a bundled crypto provider; plain HTTP to loopback still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::new();
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();

    // `COD_BENCH_ONLY=jobs`: the jobs/s figures and the fsync ceiling they are compared with, nothing else.
    if std::env::var("COD_BENCH_ONLY").is_ok_and(|v| v == "jobs") {
        let (f50, _) = fsync_ms(dir);
        jobs_per_second(&mut out, &mut rows, &client, dir, None, f50);
        print_table(&mut out, &rows);
        return;
    }
    if std::env::var("COD_BENCH_ONLY").is_ok_and(|v| v == "queue") {
        queue_drains(&mut out, &mut rows, &client, dir);
        print_table(&mut out, &rows);
        return;
    }

    let size = std::fs::metadata(env!("CARGO_BIN_EXE_cod"))
        .map(|m| m.len())
        .unwrap_or(0);
    writeln!(
        out,
        "binary size (bench profile = release, stripped): {:.2} MiB",
        mib(size)
    )
    .ok();
    // The builds bench/run.sh made, each beside the budget and this (glibc, all features) build.
    for item in std::env::var("COD_BENCH_SIZES")
        .unwrap_or_default()
        .split(',')
    {
        let Some((label, path)) = item.split_once('=') else {
            continue;
        };
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let edge = label.contains("edge");
        rows.push(row(
            format!("binary size, {label}"),
            format!("{:.2} MiB", mib(bytes)),
            format!("host glibc build, all features: {:.2} MiB", mib(size)),
            if edge {
                format!("<= {:.0} MiB", mib(SIZE_BUDGET))
            } else {
                String::new()
            },
        ));
    }
    if rows.is_empty() {
        rows.push(row(
            "binary size, host glibc, all features",
            format!("{:.2} MiB", mib(size)),
            "",
            "",
        ));
    }

    // Idle RSS of a connected compute node, beside its orchestrator's.
    let Idle {
        connected,
        settled,
        orchestrator_kib: orss,
        spin_ms: host_spin_ms,
    } = idle_rss(&client, dir, env!("CARGO_BIN_EXE_cod"), "host");
    writeln!(
        out,
        "idle RSS, connected compute node: {} settled (target <= 5 MiB; anon = heap and stacks, file = the executable's mapped pages, clean and reclaimable), {} 3 s after connecting; its orchestrator: {:.2} MiB",
        settled.show(),
        connected.show(),
        orss as f64 / 1024.0,
    )
    .ok();
    let mut edge_rss = Value::Null;
    match std::env::var("COD_BENCH_COMPUTE_BIN") {
        Ok(bin) if !bin.is_empty() => {
            let Idle {
                connected: edge_connected,
                settled: edge,
                spin_ms,
                ..
            } = idle_rss(&client, dir, &bin, "edge");
            edge_rss = json!({
                "binary": &bin, "total": edge.total, "anon": edge.anon, "file": edge.file,
                "connected_3s": {"total": edge_connected.total, "anon": edge_connected.anon, "file": edge_connected.file},
                "spin_ms": spin_ms, "host_spin_ms": host_spin_ms,
            });
            let name = Path::new(&bin)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(bin.clone());
            writeln!(
                out,
                "idle RSS, connected compute node running {name}: {} settled, {} 3 s after connecting",
                edge.show(),
                edge_connected.show(),
            )
            .ok();
            rows.push(row(
                format!("idle RSS, connected compute node ({name}), settled"),
                edge.show(),
                format!(
                    "3 s after connecting: {}; host glibc build settled: {}",
                    edge_connected.show(),
                    settled.show()
                ),
                "<= 5 MiB",
            ));
            writeln!(
                out,
                "CPU-bound WASM job (30 M rounds) on that node: {spin_ms:.0} ms; on the host build's node: {host_spin_ms:.0} ms"
            )
            .ok();
            rows.push(row(
                format!("CPU-bound WASM job on {name} (median of {SPINS})"),
                format!("{spin_ms:.0} ms"),
                format!("host glibc build: {host_spin_ms:.0} ms"),
                "",
            ));
        }
        _ => {
            rows.push(row(
                "idle RSS, connected compute node (host build), settled",
                settled.show(),
                format!(
                    "3 s after connecting: {}; its orchestrator: {:.2} MiB",
                    connected.show(),
                    orss as f64 / 1024.0
                ),
                "<= 5 MiB",
            ));
            rows.push(row(
                format!("CPU-bound WASM job on the host build (median of {SPINS})"),
                format!("{host_spin_ms:.0} ms"),
                "set COD_BENCH_COMPUTE_BIN to compare a static build",
                "",
            ));
        }
    }

    // Start -> ready, beside the cost of exec'ing the binary at all.
    let (ready50, ready90) = start_to_ready(dir, 10);
    let floor = exec_floor(20);
    writeln!(out, "cod serve start -> ready (hybrid, fresh data dir): p50 {ready50:.1} ms, p90 {ready90:.1} ms; exec floor (cod --help): {floor:.1} ms").ok();
    rows.push(row(
        "cod serve start -> ready (hybrid, fresh dir)",
        format!("p50 {ready50:.1} ms, p90 {ready90:.1} ms"),
        format!("exec floor (cod --help): {floor:.1} ms"),
        "",
    ));

    // Submit -> Completed on a hybrid node.
    let node = start(dir, "hybrid", &[]);
    let job = hello_job();
    let mut latencies = Vec::new();
    for i in 0..(JOBS + 5) {
        let took = run_job(&client, &node.api, &job);
        if i >= 5 {
            // The first few warm up connections and caches.
            latencies.push(took.as_secs_f64() * 1e3);
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
    rows.push(row(
        format!("hello-WASM submit -> Completed ({JOBS} jobs, hybrid)"),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
        format!(
            "fdatasync p50 {f50:.3} ms, p99 {f99:.3} ms ({:.1}x)",
            p50 / f50
        ),
        format!("p50 <= {:.2} ms (3x fsync)", 3.0 * f50),
    ));

    // Throughput: the same closed loop through the hybrid node, then through an orchestrator with a fleet.
    let (many, single) = jobs_per_second(&mut out, &mut rows, &client, dir, Some(node), f50);
    let (drain_big, drain_small) = queue_drains(&mut out, &mut rows, &client, dir);
    // Slots for the comparisons that arrive with their issues.
    rows.push(row(
        "container start (docker engine)",
        "see the container bench (bench/container.rs), run next",
        "crun, runc (same bundle, same limits)",
        "",
    ));
    rows.push(row(
        "IPFS import",
        "pending: data issue (IPFS storage)",
        "Kubo",
        "",
    ));

    print_table(&mut out, &rows);
    if let Ok(path) = std::env::var("COD_BENCH_JSON")
        && !path.is_empty()
    {
        let doc = json!({
            "host": std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "rows": rows.iter().map(|r| json!({"measure": r.measure, "value": r.value, "comparison": r.comparison, "target": r.target})).collect::<Vec<_>>(),
            "raw": {
                "host_binary_bytes": size,
                "idle_rss_kib": {
                    "total": settled.total, "anon": settled.anon, "file": settled.file, "orchestrator": orss,
                    "connected_3s": {"total": connected.total, "anon": connected.anon, "file": connected.file},
                },
                "idle_rss_edge_kib": edge_rss,
                "start_to_ready_ms": {"p50": ready50, "p90": ready90, "exec_floor_p50": floor},
                "submit_to_completed_ms": {"p50": p50, "p99": p99},
                "fdatasync_ms": {"p50": f50, "p99": f99},
                "jobs_per_s": {"fleet": many.jobs_per_s, "fleet_nodes": FLEET, "single_hybrid": single.jobs_per_s, "clients": clients(), "jobs": fleet_jobs()},
                "cpu_ms_per_job": {"fleet": many.cpu_ms_per_job, "single_hybrid": single.cpu_ms_per_job},
                "queue_drain": {
                    "slots": QUEUE_SLOTS,
                    "big": {"jobs": QUEUED, "seconds": drain_big.seconds, "cpu_ms_per_job": drain_big.cpu_ms_per_job},
                    "small": {"jobs": QUEUED / 10, "seconds": drain_small.seconds, "cpu_ms_per_job": drain_small.cpu_ms_per_job},
                },
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write results");
    }
}

fn print_table(out: &mut impl Write, rows: &[Row]) {
    let w = |f: fn(&Row) -> &str, h: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .chain([h.len()])
            .max()
            .unwrap_or(0)
    };
    let (a, b, c) = (
        w(|r| &r.measure, "measure"),
        w(|r| &r.value, "value"),
        w(|r| &r.comparison, "comparison (same run)"),
    );
    writeln!(out).ok();
    writeln!(
        out,
        "{:a$} | {:b$} | {:c$} | target",
        "measure", "value", "comparison (same run)"
    )
    .ok();
    writeln!(out, "{}", "-".repeat(a + b + c + 16)).ok();
    for r in rows {
        writeln!(
            out,
            "{:a$} | {:b$} | {:c$} | {}",
            r.measure, r.value, r.comparison, r.target
        )
        .ok();
    }
}
