//! Container start, measured beside its peers in the same run (issue: "Cod's container start ≤ crun's"):
//! - bare start of `/bin/true` in a busybox bundle: Cod's runtime (helper process + libcontainer, user
//!   namespace, seccomp, cgroup limits) against `crun run` and `runc run` on the very same bundle (the
//!   `config.json` Cod's runtime wrote, with its user namespace, capabilities and limits, plus the seccomp
//!   profile that Cod's bundle carries precompiled),
//!   and, as a floor, the peers with their own minimal `spec` template (no user namespace, no seccomp).
//!   Debian's crun 1.8 needs `/sys/fs/cgroup/unified` unmounted in a private mount namespace on a hybrid
//!   cgroup host, so it runs under `unshare -m`; that wrapper's exec is in its figure.
//!   The runners alternate, one start each per round, in an order that rotates every round: on a shared
//!   machine, load drifts over a run, and blocks of one runner after the other would hand the drift to
//!   whichever ran last;
//! - a `docker` job of `true` on a hybrid node, submit → Completed, the image already cached.
//!
//! Run as root: `cargo bench --bench container`. Medians: the spread of a container start is ~2×.
//! `COD_BENCH_RUNS` (default 60) sets the starts per runner; `COD_BENCH_ONLY=start` skips the job latency;
//! `COD_BENCH_KEEP=1` keeps (and prints) the work dir, whose `bundles/` and `*-bundle/` serve for profiling.

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;
#[path = "../tests/e2e/registry.rs"]
mod registry;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cod::executor::oci::runtime::{
    self, ContainerExit, ContainerNetwork, ContainerRuntime, ContainerSpec, IdMap,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Starts per runner (after the warm-up) unless `COD_BENCH_RUNS` says otherwise.
const RUNS: usize = 60;
/// Starts per runner before the measured ones (page cache, first cgroup creation).
const WARMUP: usize = 3;
const JOBS: usize = 30;
const BASE: u32 = 100_000;

fn main() {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        println!("container bench skipped: containers need root");
        return;
    }
    let runs = std::env::var("COD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = if std::env::var("COD_BENCH_KEEP").is_ok_and(|v| v == "1") {
        let kept = tmp.keep();
        println!("work dir kept: {}", kept.display());
        kept
    } else {
        tmp.path().to_owned()
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // Cod first, once: the peers' "same config" bundle is the one it writes.
    let mut cod = CodRunner::new(&dir);
    let first = cod.once();
    let mut runners: Vec<Box<dyn Runner>> = vec![Box::new(cod)];
    if first.is_some() {
        let same = dir.join("bundles/0");
        for peer in ["crun", "runc"] {
            if let Some(p) = PeerRunner::new(&dir, peer, Some(&same)) {
                runners.push(Box::new(p));
            }
        }
    }
    for peer in ["crun", "runc"] {
        if let Some(p) = PeerRunner::new(&dir, peer, None) {
            runners.push(Box::new(p));
        }
    }
    let mut times: Vec<Option<Vec<f64>>> = runners.iter().map(|_| Some(Vec::new())).collect();
    if first.is_none() {
        times[0] = None;
    }
    for round in 0..WARMUP + runs {
        for k in 0..runners.len() {
            let i = (round + k) % runners.len();
            let Some(v) = times[i].as_mut() else {
                continue;
            };
            match runners[i].once() {
                Some(t) if round >= WARMUP => v.push(t),
                Some(_) => {}
                None => times[i] = None,
            }
        }
    }
    println!("bare container start of /bin/true, median of {runs}, runners alternated (p10-p90):");
    let mut medians = Vec::new();
    for (runner, v) in runners.iter().zip(&mut times) {
        let name = runner.name();
        match v {
            Some(v) => {
                v.sort_by(f64::total_cmp);
                medians.push((name.clone(), pct(v, 0.5)));
                println!(
                    "  {name:<26} {:7.2} ms ({:.2}-{:.2})",
                    pct(v, 0.5),
                    pct(v, 0.1),
                    pct(v, 0.9)
                );
            }
            None => println!("  {name:<26} unavailable"),
        }
    }
    let median = |n: &str| medians.iter().find(|(m, _)| m == n).map(|(_, t)| *t);
    if let (Some(c), Some(k)) = (median(COD), median(&peer_name("crun", true))) {
        println!("  -> cod/crun = {:.2} (target <= 1.00)", c / k);
    }

    if std::env::var("COD_BENCH_ONLY").is_ok_and(|v| v == "start") {
        return;
    }
    let (p50, p99) = job_latency();
    println!(
        "docker job `true`, image cached, submit -> Completed over {JOBS} jobs: p50 {p50:.1} ms, p99 {p99:.1} ms"
    );
}

fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// One way of starting `/bin/true` in a container, timed start to end.
trait Runner {
    fn name(&self) -> String;
    /// Runs one container to its end; its wall time in ms, or `None` (after saying why) if it failed.
    fn once(&mut self) -> Option<f64>;
}

/// A busybox root filesystem owned by `uid`.
fn rootfs(at: &Path, uid: u32) -> PathBuf {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(at.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", at.join("bin/busybox")).expect("busybox-static installed");
    symlink("busybox", at.join("bin/true")).expect("symlink");
    symlink("busybox", at.join("bin/sh")).expect("symlink");
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}"), &at.display().to_string()])
        .status()
        .expect("chown");
    assert!(status.success());
    at.to_owned()
}

const COD: &str = "cod (libcontainer helper)";

/// Cod's runtime, as the `docker` executor calls it: a fresh bundle per run (`bundles/<n>`).
struct CodRunner {
    dir: PathBuf,
    root: PathBuf,
    runtime: ContainerRuntime,
    rt: tokio::runtime::Runtime,
    n: usize,
}

impl CodRunner {
    fn new(dir: &Path) -> Self {
        let root = rootfs(&dir.join("cod-rootfs"), BASE);
        let runtime = ContainerRuntime::new(
            dir.join("state"),
            format!("cod-bench-{}", std::process::id()),
        )
        .expect("runtime")
        .with_helper_exe(env!("CARGO_BIN_EXE_cod"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio");
        CodRunner {
            dir: dir.to_owned(),
            root,
            runtime,
            rt,
            n: 0,
        }
    }
}

impl Runner for CodRunner {
    fn name(&self) -> String {
        COD.to_owned()
    }

    fn once(&mut self) -> Option<f64> {
        let i = self.n;
        self.n += 1;
        let spec = ContainerSpec {
            id: format!("bench-{i}"),
            rootfs: self.root.clone(),
            bundle_dir: self.dir.join(format!("bundles/{i}")),
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: None,
            mounts: vec![],
            devices: vec![],
            masked_paths: vec![],
            stdout: self.dir.join("out"),
            stderr: self.dir.join("err"),
            memory_bytes: Some(64 << 20),
            cpu_millis: None,
            pids_limit: Some(64),
            network: ContainerNetwork::None,
            id_map: IdMap {
                host_base: BASE,
                size: 65_536,
            },
        };
        let t = Instant::now();
        let exit = self.rt.block_on(self.runtime.run(
            spec,
            Some(Duration::from_secs(30)),
            CancellationToken::new(),
        ));
        let took = t.elapsed().as_secs_f64() * 1e3;
        match exit {
            Ok(ContainerExit::Exited { code: 0 }) => Some(took),
            other => {
                eprintln!("cod run failed: {other:?}");
                None
            }
        }
    }
}

fn peer_name(runtime: &str, same: bool) -> String {
    let version = if runtime == "crun" { "1.8" } else { "1.1" };
    let flavor = if same { "same config" } else { "minimal spec" };
    format!("{runtime} {version}, {flavor}")
}

/// `crun`/`runc` on the bundle Cod's runtime wrote (`same`), or on a bundle of the same busybox root from the
/// runtime's own minimal `spec` template.
struct PeerRunner {
    runtime: &'static str,
    same: bool,
    bundle: PathBuf,
    n: usize,
}

impl PeerRunner {
    fn new(dir: &Path, runtime: &'static str, same: Option<&Path>) -> Option<Self> {
        let flavor = if same.is_some() { "same" } else { "min" };
        let bundle = dir.join(format!("{runtime}-{flavor}-bundle"));
        let path = bundle.join("config.json");
        let mut config: Value = match same {
            Some(cod_bundle) => {
                std::fs::create_dir_all(&bundle).ok()?;
                let mut c: Value = serde_json::from_str(
                    &std::fs::read_to_string(cod_bundle.join("config.json")).ok()?,
                )
                .ok()?;
                // Cod's bundle carries its seccomp profile compiled (`seccomp.bpf`); a peer compiles it
                // from the spec, as it would be given it.
                c["linux"]["seccomp"] = serde_json::to_value(runtime::seccomp_profile()).ok()?;
                c
            }
            None => {
                rootfs(&bundle.join("rootfs"), 0);
                let made = Command::new(runtime)
                    .args(["spec"])
                    .current_dir(&bundle)
                    .status()
                    .ok()?;
                if !made.success() {
                    return None;
                }
                let mut c: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
                c["linux"]["resources"] =
                    json!({"memory": {"limit": 64u64 << 20}, "pids": {"limit": 64}});
                c
            }
        };
        config["process"]["args"] = json!(["/bin/true"]);
        config["process"]["terminal"] = json!(false);
        config["root"]["readonly"] = json!(true);
        // A cgroup of the peer's own (each run is deleted before the next, as Cod's are).
        config["linux"]["cgroupsPath"] = json!(format!(
            "/cod-bench-{runtime}-{flavor}-{}",
            std::process::id()
        ));
        std::fs::write(&path, serde_json::to_vec(&config).ok()?).ok()?;
        Some(PeerRunner {
            runtime,
            same: same.is_some(),
            bundle,
            n: 0,
        })
    }
}

impl Runner for PeerRunner {
    fn name(&self) -> String {
        peer_name(self.runtime, self.same)
    }

    fn once(&mut self) -> Option<f64> {
        let flavor = if self.same { "same" } else { "min" };
        let id = format!(
            "{}-{flavor}-bench-{}-{}",
            self.runtime,
            std::process::id(),
            self.n
        );
        self.n += 1;
        let b = self.bundle.display().to_string();
        let mut cmd = if self.runtime == "crun" {
            let mut c = Command::new("unshare");
            c.args([
                "-m",
                "sh",
                "-c",
                &format!(
                    "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle {b} {id}"
                ),
            ]);
            c
        } else {
            let mut c = Command::new("runc");
            c.args(["run", "--bundle", &b, &id]);
            c
        };
        let t = Instant::now();
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .ok()?;
        let took = t.elapsed().as_secs_f64() * 1e3;
        if !status.status.success() {
            eprintln!(
                "{} failed: {}",
                self.runtime,
                String::from_utf8_lossy(&status.stderr)
            );
            return None;
        }
        Some(took)
    }
}

fn job_latency() -> (f64, f64) {
    let registry = registry::TestRegistry::start();
    let image = registry.push_busybox("bench/busybox", "1", &registry::PushOptions::default());
    let node = harness::Cod::start("bench-docker", &[]);
    let client = harness::http();
    let job = json!({"Job": {"Type": "batch", "Tasks": [{"Name": "main",
        "Engine": {"Type": "docker", "Params": {"Image": image.reference, "Entrypoint": ["/bin/true"]}},
        "Publisher": {"Type": "noop"}}]}});
    let mut latencies = Vec::new();
    for i in 0..JOBS + 2 {
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
                _ => std::thread::sleep(Duration::from_micros(500)),
            }
        }
        // The first pulls the image; the next warms up.
        if i >= 2 {
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    (pct(&latencies, 0.5), pct(&latencies, 0.99))
}
