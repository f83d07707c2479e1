//! The `docker` engine with GPUs, one level below the node: an [`OciExecutor`] given a [`RunContext`] that
//! holds GPUs (what the compute node's allocation fills in) pulls busybox from a real registry on loopback and
//! runs it against a fake driver root (`Compute.GPU.DriverRoot`): device nodes made with `mknod` reusing
//! /dev/null's and /dev/zero's numbers, an empty `libnvidia-ml`, a shell-script `nvidia-smi`. Needs root, as
//! containers do. The process-level test (discovery, allocation, then this) is `gpu.rs`'s.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use cod::executor::oci::{IdMap, OciConfig, OciExecutor};
use cod::executor::{Executor, FailureReason, Limits, Progress, RunContext, RunOutcome};
use cod::gpu::{Gpu, GpuVendor};
use cod::model::{EngineSpec, NetworkConfig};
use cod::oci::registry::RegistryConfig;
use cod::store::Store;
use tokio_util::sync::CancellationToken;

use crate::harness::{DEADLINE, mknod_char};
use crate::registry::{PushOptions, TestRegistry};

const DRIVER: &str = "550.54.15";

/// Two GPUs (`nvidia0` reads like /dev/null, `nvidia1` like /dev/zero), the control node, NVML and
/// `nvidia-smi`, under `root`.
fn fake_driver_root(root: &Path) {
    fs::create_dir_all(root.join("dev")).expect("mkdir");
    for (name, major, minor) in [("nvidia0", 1, 3), ("nvidia1", 1, 5), ("nvidiactl", 1, 3)] {
        mknod_char(&root.join("dev").join(name), major, minor);
    }
    let lib = root.join("usr/lib64");
    fs::create_dir_all(&lib).expect("mkdir");
    fs::write(lib.join(format!("libnvidia-ml.so.{DRIVER}")), "fake nvml\n").expect("lib");
    symlink(
        format!("libnvidia-ml.so.{DRIVER}"),
        lib.join("libnvidia-ml.so.1"),
    )
    .expect("link");
    fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    let smi = root.join("usr/bin/nvidia-smi");
    fs::write(
        &smi,
        "#!/bin/sh\necho \"smi sees $(ls /dev/nvidia[0-9]*)\"\n",
    )
    .expect("smi");
    fs::set_permissions(&smi, fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn gpu(index: u32) -> Gpu {
    Gpu {
        index,
        name: "Fake GPU".to_owned(),
        vendor: GpuVendor::Nvidia,
        memory_bytes: 16 << 30,
        pci_address: format!("0000:0{index}:00.0"),
        uuid: format!("GPU-engine-{index}"),
        minor: Some(index),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    image: String,
    executor: OciExecutor,
    rt: tokio::runtime::Runtime,
    cgroup_root: String,
    _registry: TestRegistry,
}

impl Fixture {
    fn new() -> Fixture {
        // As `main` does: reqwest is built without a crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("cod-gpu-engine-")
            .tempdir()
            .expect("tempdir");
        // The container's root must traverse to the driver root's files.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fake_driver_root(&dir.path().join("driver"));
        let registry = TestRegistry::start();
        let image = registry
            .push_busybox("gpu/busybox", "1", &PushOptions::default())
            .reference;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio");
        let data = dir.path().join("data");
        let store = Store::open(&data.join("state"), &cod::store::Config::default()).expect("lmdb");
        let cgroup_root = format!("cod-e2e-gpu-engine-{}", std::process::id());
        let config = OciConfig {
            data_dir: data.clone(),
            work_dir: data.join("executions"),
            registry: RegistryConfig {
                insecure: vec![registry.host().to_owned()],
                ..RegistryConfig::default()
            },
            cache_bytes: 1 << 30,
            id_map: IdMap::default(),
            pids_limit: 64,
            cgroup_root: cgroup_root.clone(),
            allow_loopback_egress: false,
            helper_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_cod"))),
            gpu_driver_root: dir.path().join("driver"),
        };
        let executor = rt
            .block_on(OciExecutor::start(config, &store))
            .expect("docker engine starts");
        Fixture {
            dir,
            image,
            executor,
            rt,
            cgroup_root,
            _registry: registry,
        }
    }

    /// Runs `sh -c script` holding `gpus`; returns the outcome and stdout.
    fn run(
        &self,
        name: &str,
        gpus: Vec<Gpu>,
        env: &[(&str, &str)],
        script: &str,
    ) -> (RunOutcome, String) {
        let engine: EngineSpec = EngineSpec::Docker(
            serde_json::from_value(serde_json::json!({
                "Image": self.image,
                "Entrypoint": ["/bin/sh", "-c"],
                "Parameters": [script],
            }))
            .expect("docker params"),
        );
        let exec_dir = self.dir.path().join("data/executions").join(name);
        fs::create_dir_all(&exec_dir).expect("mkdir");
        let ctx = RunContext {
            execution_id: format!("e-{name}").into(),
            job_id: format!("j-{name}").into(),
            engine,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            inputs: vec![],
            outputs: vec![],
            stdout_path: exec_dir.join("stdout"),
            stderr_path: exec_dir.join("stderr"),
            scratch_dir: exec_dir.join("scratch"),
            limits: Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: None,
                timeout: Some(DEADLINE),
                max_output_bytes: 1 << 20,
            },
            network: NetworkConfig::default(),
            progress: Progress::default(),
            gpus,
        };
        let outcome = self
            .rt
            .block_on(self.executor.run(ctx, CancellationToken::new()))
            .expect("the executor runs docker tasks");
        let stdout = fs::read_to_string(exec_dir.join("stdout")).unwrap_or_default();
        let stderr = fs::read_to_string(exec_dir.join("stderr")).unwrap_or_default();
        (outcome, stdout + &stderr)
    }

    /// This executor's cgroup parent in every v1 hierarchy (or the v2 tree).
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join(&self.cgroup_root))
                    .chain([Path::new("/sys/fs/cgroup").join(&self.cgroup_root)])
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // libcontainer leaves the parents of its cgroups in place.
        for parent in self.cgroup_parents() {
            let _ = fs::remove_dir(parent);
        }
    }
}

const SCRIPT: &str = "echo \"dev $(ls /dev | grep nvidia | tr '\\n' ' ')\"; \
    echo \"read $(head -c 8 /dev/nvidia1 2>&1 | wc -c)\"; \
    nvidia-smi 2>&1 | head -1; \
    echo \"libs $(ls /usr/local/nvidia/lib64 2>&1 | tr '\\n' ' ')\"; \
    echo \"visible ${NVIDIA_VISIBLE_DEVICES-unset}\"; \
    echo \"path $PATH\"; echo \"ld ${LD_LIBRARY_PATH-unset}\"";

#[test]
fn a_docker_run_holding_gpu_1_gets_it_and_a_run_without_gpus_gets_nothing() {
    let fx = Fixture::new();
    // The job asks for every device; it gets the one it holds.
    let (outcome, out) = fx.run(
        "with-gpu",
        vec![gpu(1)],
        &[("NVIDIA_VISIBLE_DEVICES", "all")],
        SCRIPT,
    );
    assert!(
        matches!(outcome, RunOutcome::Exited { code: 0, .. }),
        "{outcome:?}: {out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        "dev nvidia1 nvidiactl ",
        "read 8",
        "smi sees /dev/nvidia1",
        &format!("libs libnvidia-ml.so.1 libnvidia-ml.so.{DRIVER} "),
        "visible GPU-engine-1",
        "path /usr/local/nvidia/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ld /usr/local/nvidia/lib64",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {out}");
    }

    // Nothing changes for a run without GPUs.
    let (outcome, out) = fx.run("no-gpu", vec![], &[], SCRIPT);
    assert!(
        matches!(outcome, RunOutcome::Exited { code: 0, .. }),
        "{outcome:?}: {out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        "dev ",
        "visible unset",
        "path /usr/sbin:/usr/bin:/sbin:/bin",
        "ld unset",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {out}");
    }

    // A GPU whose node the driver root lacks fails the run's setup, naming the node and the setting.
    let (outcome, out) = fx.run("missing", vec![gpu(7)], &[], "true");
    match outcome {
        RunOutcome::Failed(FailureReason::Setup(m)) => {
            assert!(m.contains("dev/nvidia7 is missing"), "{m}");
            assert!(m.contains("Compute.GPU.DriverRoot"), "{m}");
        }
        other => panic!("expected a setup failure, got {other:?}: {out}"),
    }
    // Every run's container and cgroup are gone.
    for parent in fx.cgroup_parents() {
        let left: Vec<_> = fs::read_dir(&parent)
            .expect("cgroup dir")
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            parent.display()
        );
    }
}
