//! Container start, measured beside its peers in the same run (issue: "Cod's container start ≤ crun's"):
//! - bare start of `/bin/true` in a busybox bundle: Cod's runtime (helper process + libcontainer, user
//!   namespace, seccomp, cgroup limits) against `crun run` and `runc run` on the very same bundle (the
//!   `config.json` Cod's runtime wrote, with its user namespace, seccomp profile, capabilities and limits),
//!   and, as a floor, the peers with their own minimal `spec` template (no user namespace, no seccomp).
//!   Debian's crun 1.8 needs `/sys/fs/cgroup/unified` unmounted in a private mount namespace on a hybrid
//!   cgroup host, so it runs under `unshare -m`; that wrapper's exec is in its figure;
//! - a `docker` job of `true` on a hybrid node, submit → Completed, the image already cached.
//!
//! Run as root: `cargo bench --bench container`. Medians: the spread of a container start is ~2×.

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
    ContainerExit, ContainerNetwork, ContainerRuntime, ContainerSpec, IdMap,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 30;
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
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let cod = cod_start(dir);
    let same = dir.join("bundles/3");
    let crun = peer_start(dir, "crun", Some(&same));
    let runc = peer_start(dir, "runc", Some(&same));
    let crun_min = peer_start(dir, "crun", None);
    let runc_min = peer_start(dir, "runc", None);
    println!("bare container start of /bin/true, median of {RUNS} (p10-p90):");
    for (name, v) in [
        ("cod (libcontainer helper)", &cod),
        ("crun 1.8, same config", &crun),
        ("runc 1.1, same config", &runc),
        ("crun 1.8, minimal spec", &crun_min),
        ("runc 1.1, minimal spec", &runc_min),
    ] {
        match v {
            Some(v) => println!(
                "  {name:<26} {:7.2} ms ({:.2}-{:.2})",
                pct(v, 0.5),
                pct(v, 0.1),
                pct(v, 0.9)
            ),
            None => println!("  {name:<26} unavailable"),
        }
    }
    if let (Some(c), Some(k)) = (&cod, &crun) {
        println!(
            "  -> cod/crun = {:.2} (target <= 1.00)",
            pct(c, 0.5) / pct(k, 0.5)
        );
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

fn cod_start(dir: &Path) -> Option<Vec<f64>> {
    let root = rootfs(&dir.join("cod-rootfs"), BASE);
    let runtime = ContainerRuntime::new(
        dir.join("state"),
        format!("cod-bench-{}", std::process::id()),
    )
    .ok()?
    .with_helper_exe(env!("CARGO_BIN_EXE_cod"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let mut times = Vec::new();
    for i in 0..RUNS + 3 {
        let spec = ContainerSpec {
            id: format!("bench-{i}"),
            rootfs: root.clone(),
            bundle_dir: dir.join(format!("bundles/{i}")),
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: None,
            mounts: vec![],
            devices: vec![],
            masked_paths: vec![],
            stdout: dir.join("out"),
            stderr: dir.join("err"),
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
        let exit = rt.block_on(runtime.run(
            spec,
            Some(Duration::from_secs(30)),
            CancellationToken::new(),
        ));
        let took = t.elapsed().as_secs_f64() * 1e3;
        match exit {
            Ok(ContainerExit::Exited { code: 0 }) => {}
            other => {
                eprintln!("cod run failed: {other:?}");
                return None;
            }
        }
        if i >= 3 {
            times.push(took);
        }
    }
    times.sort_by(f64::total_cmp);
    Some(times)
}

/// `crun`/`runc` on the bundle Cod's runtime wrote (`same`), or on a bundle of the same busybox root from the
/// runtime's own minimal `spec` template.
fn peer_start(dir: &Path, runtime: &str, same: Option<&Path>) -> Option<Vec<f64>> {
    let flavor = if same.is_some() { "same" } else { "min" };
    let bundle = dir.join(format!("{runtime}-{flavor}-bundle"));
    let path = bundle.join("config.json");
    let mut config: Value = match same {
        Some(cod_bundle) => {
            std::fs::create_dir_all(&bundle).ok()?;
            serde_json::from_str(&std::fs::read_to_string(cod_bundle.join("config.json")).ok()?)
                .ok()?
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
            let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            c["linux"]["resources"] =
                json!({"memory": {"limit": 64u64 << 20}, "pids": {"limit": 64}});
            c
        }
    };
    config["process"]["args"] = json!(["/bin/true"]);
    config["process"]["terminal"] = json!(false);
    config["root"]["readonly"] = json!(true);
    // A cgroup of the peer's own (each run is deleted before the next, as Cod's are).
    config["linux"]["cgroupsPath"] = json!(format!("/cod-bench-{runtime}-{}", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&config).ok()?).ok()?;
    let mut times = Vec::new();
    for i in 0..RUNS + 3 {
        let id = format!("{runtime}-bench-{}-{i}", std::process::id());
        let b = bundle.display().to_string();
        let mut cmd = if runtime == "crun" {
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
                "{runtime} failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            return None;
        }
        if i >= 3 {
            times.push(took);
        }
    }
    times.sort_by(f64::total_cmp);
    Some(times)
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
