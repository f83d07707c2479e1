//! GPUs end to end without a GPU: a stand-in `libnvidia-ml.so.1` (fixtures/nvml_stub.c, compiled here with
//! `cc`) is loaded by the node's real NVML probe through `LD_LIBRARY_PATH`, and answers for
//! `COD_NVML_STUB_GPUS` fake GPUs. Discovery, advertising, scheduling and allocation are the real code paths;
//! only the library is fake. Exposure inside containers is the docker engine's (its own tests).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, failure_reasons, run_stdout, state, wait_until, wasm_job};

/// Compiles the NVML stub into `dir/libnvidia-ml.so.1` and returns `dir`.
fn nvml_stub(dir: &Path) -> PathBuf {
    compile_stub(&dir.join("libnvidia-ml.so.1"));
    dir.to_owned()
}

/// Compiles fixtures/nvml_stub.c into the shared object `dest`.
fn compile_stub(dest: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/nvml_stub.c");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(dest)
        .arg(&src)
        .output()
        .expect("cc is installed (tests/run.sh installs gcc)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fake driver root (`Compute.GPU.DriverRoot`) laid out as a host's: the NVML stub as
/// `usr/lib64/libnvidia-ml.so.550.54.15` (+ `.so.1`), found there by the node's NVML probe, and device nodes
/// `dev/nvidia0`, `dev/nvidia1`, `dev/nvidiactl` (char devices with /dev/null's numbers), which the docker
/// engine binds into containers holding those GPUs. Needs root (mknod), as containers do.
#[cfg(feature = "executor-oci")]
fn driver_root(root: &Path) -> PathBuf {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let lib = root.join("usr/lib64");
    std::fs::create_dir_all(&lib).expect("mkdir");
    compile_stub(&lib.join("libnvidia-ml.so.550.54.15"));
    symlink("libnvidia-ml.so.550.54.15", lib.join("libnvidia-ml.so.1")).expect("symlink");
    std::fs::create_dir_all(root.join("dev")).expect("mkdir");
    for node in ["nvidia0", "nvidia1", "nvidiactl"] {
        crate::harness::mknod_char(&root.join("dev").join(node), 1, 3);
    }
    // Containers run as a mapped uid and must traverse to these files.
    let mut dir = Some(root);
    while let Some(d) =
        dir.filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir())
    {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir = d.parent();
    }
    root.to_owned()
}

/// A hybrid node whose NVML is the stub with `gpus` GPUs.
fn gpu_node(name: &str, lib_dir: &Path, gpus: u32, extra: &[&str]) -> Cod {
    let lib = lib_dir.display().to_string();
    let n = gpus.to_string();
    Cod::start_with_env(
        name,
        extra,
        &[("LD_LIBRARY_PATH", &lib), ("COD_NVML_STUB_GPUS", &n)],
    )
}

/// The node's record at the orchestrator (`GET /api/v1/orchestrator/nodes`), once it has one.
fn node_record(orch: &Cod, node_id: &str) -> Value {
    wait_until("the node's record", DEADLINE, || {
        let (_, body) = orch.get("/api/v1/orchestrator/nodes");
        body["Nodes"]
            .as_array()?
            .iter()
            .find(|n| n["Info"]["NodeID"] == node_id)
            .cloned()
    })
}

/// Everything a user reads about why a job ended: its state message, the executions' messages and the
/// history.
fn reasons(body: &Value) -> String {
    let history: Vec<&str> = body["History"]["Items"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["Event"]["Message"].as_str())
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} | {} | {}",
        body["Job"]["State"]["Message"].as_str().unwrap_or_default(),
        failure_reasons(body),
        history.join(" | ")
    )
}

#[test]
fn a_node_with_nvml_advertises_its_gpus_and_schedules_by_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lib = nvml_stub(tmp.path());
    let cod = gpu_node("gpu", &lib, 2, &[]);
    let log = cod.log();
    assert!(
        log.lines()
            .any(|l| l.contains("NVIDIA GPUs found") && l.contains("NVML")),
        "discovery through NVML is logged:\n{log}"
    );

    // Bacalhau's shape: the count and the list (memory in MiB) in MaxCapacity and AvailableCapacity.
    let record = node_record(&cod, &cod.node_id);
    let info = &record["Info"];
    let max = &info["ComputeNodeInfo"]["MaxCapacity"];
    assert_eq!(max["GPU"], 2, "{info:#}");
    let gpus = max["GPUs"].as_array().expect("GPUs listed");
    assert_eq!(gpus.len(), 2, "{info:#}");
    assert_eq!(
        gpus[1],
        json!({"Index": 1, "Name": "NVIDIA Stub T4", "Vendor": "NVIDIA", "Memory": 16384,
               "PCIAddress": "0000:02:00.0"})
    );
    let available = &info["ComputeNodeInfo"]["AvailableCapacity"];
    assert_eq!(available["GPU"], 2);
    assert_eq!(available["GPUs"].as_array().map(Vec::len), Some(2));
    // Labels as Bacalhau writes them, plus Cod's driver and CUDA labels.
    let labels = &info["Labels"];
    assert_eq!(labels["GPU-0"], "NVIDIA-Stub-T4");
    assert_eq!(labels["GPU-1-Memory"], "16384-MiB");
    assert_eq!(labels["GPU-Driver-Version"], "550.54.15");
    assert_eq!(labels["GPU-CUDA-Version"], "12.4");
    // The CLI shows them.
    let shown = cod.cli_ok(&["agent", "node"]);
    assert!(
        shown.contains("GPUs")
            && shown.contains("1: NVIDIA Stub T4 (16384 MiB, 0000:02:00.0, free)"),
        "{shown}"
    );
    let described = cod.cli_ok(&["node", "describe", &cod.node_id]);
    assert!(described.contains("0: NVIDIA Stub T4"), "{described}");

    // More GPUs than any node has: not placed, and the user is told why.
    let mut job = wasm_job(HELLO, json!({"Resources": {"GPU": "3"}}));
    job["Tasks"][0]["Engine"] = json!({"Type": "docker", "Params": {"Image": "busybox:1"}});
    job["Tasks"][0]["InputSources"] = json!([]);
    let body = cod.wait_terminal(&cod.submit(job), DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(
        reasons(&body).contains("needs 3 GPUs; node has 2 free (of 2)"),
        "{}",
        reasons(&body)
    );

    // The wasm engine cannot use a GPU: the node declines with that reason.
    let body = cod.wait_terminal(
        &cod.submit(wasm_job(HELLO, json!({"Resources": {"GPU": "1"}}))),
        DEADLINE,
    );
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(
        reasons(&body).contains("the wasm engine cannot use GPUs"),
        "{}",
        reasons(&body)
    );

    // Everything else runs as before.
    let body = cod.wait_terminal(&cod.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
}

#[test]
fn a_node_without_a_gpu_says_so_and_runs_wasm_unchanged() {
    // The procfs and Tegra probes read the host's own /proc: on a machine with an NVIDIA driver this node
    // would (rightly) find its GPUs.
    if Path::new("/proc/driver/nvidia").exists()
        || Path::new("/proc/device-tree/compatible").exists()
    {
        eprintln!("skipped: this machine has an NVIDIA driver or a device tree");
        return;
    }
    let cod = Cod::start("nogpu", &[]);
    let log = cod.log();
    assert!(
        log.contains("no NVIDIA GPU found (NVML: not available"),
        "the reason is logged once:\n{log}"
    );
    let record = node_record(&cod, &cod.node_id);
    let cni = &record["Info"]["ComputeNodeInfo"];
    assert!(cni["MaxCapacity"].get("GPUs").is_none(), "{cni:#}");
    assert_eq!(cni["MaxCapacity"]["GPU"], 0);
    assert!(record["Info"]["Labels"].get("GPU-0").is_none());
    let body = cod.wait_terminal(&cod.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let body = cod.wait_terminal(
        &cod.submit(wasm_job(HELLO, json!({"Resources": {"GPU": "1"}}))),
        DEADLINE,
    );
    assert_eq!(state(&body), "Failed");
    assert!(
        reasons(&body).contains("needs 1 GPU; node has no GPU"),
        "{}",
        reasons(&body)
    );
}

#[test]
fn gpu_discovery_can_be_turned_off() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lib = nvml_stub(tmp.path());
    let lib = lib.display().to_string();
    let cod = Cod::start_with_env(
        "gpuoff",
        &[],
        &[
            ("LD_LIBRARY_PATH", &lib),
            ("COD_COMPUTE_GPU_ENABLED", "false"),
        ],
    );
    assert!(cod.log().contains("GPU discovery off"), "{}", cod.log());
    let record = node_record(&cod, &cod.node_id);
    assert_eq!(record["Info"]["ComputeNodeInfo"]["MaxCapacity"]["GPU"], 0);
}

/// The history messages of a job.
#[cfg(feature = "executor-oci")]
fn history(cod: &Cod, id: &str) -> Vec<String> {
    cod.job(id)["History"]["Items"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["Event"]["Message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `id`'s history has `n` events containing `text`.
#[cfg(feature = "executor-oci")]
fn wait_for_event(cod: &Cod, id: &str, text: &str, n: usize) {
    wait_until(
        &format!("{n} × {text:?} in job {id}'s history"),
        DEADLINE,
        || (history(cod, id).iter().filter(|m| m.contains(text)).count() >= n).then_some(()),
    );
}

/// Stops job `id` and waits until its execution has ended on the node (a job reads Stopped as soon as it
/// is asked to stop; the node frees the GPUs when the container is gone and reports it).
#[cfg(feature = "executor-oci")]
fn stop(cod: &Cod, id: &str) {
    cod.cli_ok(&["job", "stop", id]);
    wait_until(
        &format!("job {id}'s execution to be cancelled"),
        DEADLINE,
        || {
            let body = cod.job(id);
            let items = body["Executions"]["Items"].as_array()?.clone();
            // 11: Cancelled.
            (!items.is_empty() && items.iter().all(|e| e["ComputeState"]["StateType"] == 11))
                .then_some(())
        },
    );
}

/// The GPU indexes the node itself lists as free (`GET /api/v1/agent/node`).
#[cfg(feature = "executor-oci")]
fn free_gpus(cod: &Cod) -> Vec<u64> {
    let (_, info) = cod.get("/api/v1/agent/node");
    info["ComputeNodeInfo"]["AvailableCapacity"]["GPUs"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["Index"].as_u64()).collect())
        .unwrap_or_default()
}

/// Each execution gets its own GPUs (lowest free first), keeps them across a node restart, and gives them
/// back when it ends. Docker jobs, as only they can use GPUs; the containers run busybox from a loopback
/// registry. The node's NVML is the stub inside a fake driver root (found there, not on LD_LIBRARY_PATH),
/// which also holds the device nodes and the library the docker engine binds into containers holding GPUs.
#[cfg(feature = "executor-oci")]
#[test]
fn executions_hold_their_own_gpus_until_they_end_and_across_a_restart() {
    use crate::registry::{PushOptions, TestRegistry};

    let registry = TestRegistry::start();
    let image = registry.push_busybox("gpu/busybox", "1", &PushOptions::default());
    let tmp = tempfile::tempdir().expect("tmp");
    let root = driver_root(&tmp.path().join("driver"));
    let root = root.display().to_string();
    let mut cod = Cod::start_with_env(
        "gpu-alloc",
        &[],
        &[
            ("COD_COMPUTE_GPU_DRIVER_ROOT", &root),
            ("COD_NVML_STUB_GPUS", "2"),
        ],
    );
    let job = |script: &str, gpus: &str| {
        json!({"Type": "batch", "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "docker", "Params": {
                "Image": image.reference, "Entrypoint": ["/bin/sh", "-c"], "Parameters": [script]}},
            "Publisher": {"Type": "noop"},
            "Resources": {"GPU": gpus},
            "Timeouts": {"ExecutionTimeout": 900}
        }]})
    };
    let uuid = |i: u32| format!("GPU-00000000-0000-0000-0000-{i:012}");

    // Two long jobs, one GPU each: the lowest free one each time.
    let a = cod.submit(job("sleep 600", "1"));
    wait_for_event(
        &cod,
        &a,
        &format!("allocated GPU 0 (NVIDIA Stub T4, {})", uuid(0)),
        1,
    );
    let b = cod.submit(job("sleep 600", "1"));
    wait_for_event(
        &cod,
        &b,
        &format!("allocated GPU 1 (NVIDIA Stub T4, {})", uuid(1)),
        1,
    );
    assert!(
        !history(&cod, &b)
            .iter()
            .any(|m| m.contains("allocated GPU 0")),
        "{:?}",
        history(&cod, &b)
    );

    // Both held: a third is not placed, with the reason.
    let c = cod.wait_terminal(&cod.submit(job("true", "1")), DEADLINE);
    assert_eq!(state(&c), "Failed", "{c:#}");
    assert!(
        reasons(&c).contains("needs 1 GPU; node has 0 free (of 2)"),
        "{}",
        reasons(&c)
    );

    // Stopping A frees GPU 0; a restart gives B its GPU 1 again although 0 is now the lowest free.
    stop(&cod, &a);
    assert_eq!(free_gpus(&cod), vec![0], "A's GPU is free again");
    cod.restart();
    wait_for_event(&cod, &b, "allocated GPU 1", 2);
    assert_eq!(free_gpus(&cod), vec![0], "B holds GPU 1 after the restart");

    // GPU 0 is free for the next one, which ends by itself and frees it again. Inside, the container sees
    // its own device node and the control node, never B's GPU 1, and the driver library from the driver root.
    let sees =
        "ls /dev | grep nvidia; echo visible=$NVIDIA_VISIBLE_DEVICES; ls /usr/local/nvidia/lib64";
    let d = cod.wait_terminal(&cod.submit(job(sees, "1")), DEADLINE);
    assert_eq!(state(&d), "Completed", "{d:#}");
    assert!(reasons(&d).contains("allocated GPU 0"), "{}", reasons(&d));
    assert_eq!(
        run_stdout(&d),
        format!(
            "nvidia0\nnvidiactl\nvisible={}\nlibnvidia-ml.so.1\nlibnvidia-ml.so.550.54.15\n",
            uuid(0)
        )
    );

    // With B stopped too, a job can have both.
    stop(&cod, &b);
    assert_eq!(free_gpus(&cod), vec![0, 1]);
    let e = cod.wait_terminal(&cod.submit(job(sees, "2")), DEADLINE);
    assert_eq!(state(&e), "Completed", "{e:#}");
    assert!(
        run_stdout(&e).starts_with(&format!(
            "nvidia0\nnvidia1\nnvidiactl\nvisible={},{}\n",
            uuid(0),
            uuid(1)
        )),
        "{}",
        run_stdout(&e)
    );
    let said = reasons(&e);
    assert!(
        said.contains("allocated GPU 0") && said.contains("allocated GPU 1"),
        "{said}"
    );
}

/// Where NVML cannot be loaded (a static build, or a broken library) but `nvidia-smi` runs, its answer is used.
/// Both sit in a driver root, so a real driver on the test machine changes nothing.
#[test]
fn without_nvml_the_node_falls_back_to_nvidia_smi() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("usr/lib64")).expect("mkdir");
    std::fs::write(root.join("usr/lib64/libnvidia-ml.so.1"), "not a library\n").expect("write");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    let tool = root.join("usr/bin/nvidia-smi");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho '0, Tesla T4, GPU-0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff, 15360, 00000000:AF:00.0, 535.104.05'\n",
    )
    .expect("write");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = root.display().to_string();
    let cod = Cod::start_with_env("smi", &[], &[("COD_COMPUTE_GPU_DRIVER_ROOT", &root)]);
    let log = cod.log();
    assert!(
        log.lines()
            .any(|l| l.contains("NVIDIA GPUs found") && l.contains("nvidia-smi")),
        "{log}"
    );
    let record = node_record(&cod, &cod.node_id);
    let info = &record["Info"];
    assert_eq!(
        info["ComputeNodeInfo"]["MaxCapacity"]["GPUs"][0],
        json!({"Index": 0, "Name": "Tesla T4", "Vendor": "NVIDIA", "Memory": 15360,
               "PCIAddress": "0000:AF:00.0"})
    );
    assert_eq!(info["Labels"]["GPU-0"], "Tesla-T4");
    assert_eq!(info["Labels"]["GPU-Driver-Version"], "535.104.05");
    assert!(
        info["Labels"].get("GPU-CUDA-Version").is_none(),
        "nvidia-smi's CSV has none"
    );
}
