//! Process harness: starts real `cod` processes on loopback with fresh data dirs and port 0, waits for their
//! ready files, talks to them over HTTP and through the CLI, and kills them on drop. Logs go to files that
//! are printed when a test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The one polling helper: evaluates `condition` until it yields a value or `timeout` passes (then panics with
/// `what`). Everything else in these tests waits through this.
pub fn wait_until<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = condition() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Default deadline for things that happen in milliseconds when all is well.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A free loopback TCP port (for an orchestrator that must come back on the same address after a kill).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running `cod serve`.
pub struct Cod {
    pub name: String,
    pub dir: PathBuf,
    args: Vec<String>,
    /// Variables added to the process's environment (a node's own secrets, say).
    envs: Vec<(String, String)>,
    /// A command the process runs under (`ip netns exec NS`), which must exec `cod` in its place.
    wrapper: Vec<String>,
    child: Option<Child>,
    pub api: String,
    pub node_id: String,
    pub p2p: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cod")
}

impl Cod {
    /// Starts `cod serve` with `extra` flags in a fresh temp dir.
    pub fn start(name: &str, extra: &[&str]) -> Cod {
        Self::start_with_env(name, extra, &[])
    }

    /// Starts `cod serve` with `extra` flags under `wrapper` (e.g. `ip netns exec NS`: it must exec `cod`, so
    /// that kill -9 and restarts reach the node itself).
    pub fn start_wrapped(name: &str, wrapper: &[&str], extra: &[&str]) -> Cod {
        Self::start_full(name, wrapper, extra, &[])
    }

    /// Starts `cod serve` with `extra` flags and `envs` added to its environment.
    pub fn start_with_env(name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Cod {
        Self::start_full(name, &[], extra, envs)
    }

    fn start_full(name: &str, wrapper: &[&str], extra: &[&str], envs: &[(&str, &str)]) -> Cod {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("cod-{name}-"))
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut cod = Cod {
            name: name.to_owned(),
            dir,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            wrapper: wrapper.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            api: String::new(),
            node_id: String::new(),
            p2p: vec![],
            _tmp: Some(tmp),
        };
        cod.spawn();
        cod
    }

    fn spawn(&mut self) {
        let ready = self.dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("log");
        let mut args = vec![
            "serve".to_owned(),
            "--data-dir".into(),
            self.dir.join("data").display().to_string(),
            "--api-port".into(),
            "0".into(),
            "--publisher-port".into(),
            "0".into(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        if !self.args.iter().any(|a| a == "--heartbeat-interval") {
            args.extend(["--heartbeat-interval".into(), "500ms".into()]);
        }
        // Loopback unless a test asks otherwise (the auth tests check what a non-loopback API does).
        if !self.args.iter().any(|a| a == "--api-host") {
            args.extend(["--api-host".into(), "127.0.0.1".into()]);
        }
        if !self.args.iter().any(|a| a == "--listen") {
            args.extend(["--listen".into(), "/ip4/127.0.0.1/tcp/0".into()]);
        }
        args.extend(self.args.iter().cloned());
        let mut command = match self.wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(&args)
            .env("COD_LOG", "info,cod=debug")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn cod");
        self.child = Some(child);
        let info: Value = wait_until(&format!("{} ready file", self.name), DEADLINE, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited early ({status}):\n{}", self.name, self.log());
            }
            let text = std::fs::read_to_string(&ready).ok()?;
            serde_json::from_str(&text).ok()
        });
        self.api = format!("http://{}", info["api"].as_str().expect("api"));
        self.node_id = info["node_id"].as_str().expect("node id").to_owned();
        self.p2p = info["p2p"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
    }

    /// Kills the process with SIGKILL (no clean shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the process (`STOP` freezes it with its connections open: a silent node).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Starts the process again on the same data dir and flags.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the process again on the same data dir with other flags (a changed configuration).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        self.args = extra.iter().map(|s| (*s).to_owned()).collect();
        self.spawn();
    }

    /// The process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn port(&self) -> &str {
        self.api.rsplit(':').next().expect("port")
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("COD_API_HOST", "127.0.0.1")
            .env("COD_API_PORT", self.port())
            .env_remove("BACALHAU_API_HOST")
            .env_remove("BACALHAU_API_PORT")
            .current_dir(&self.dir)
            .output()
            .expect("run cli")
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cod {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = http()
            .get(format!("{}{path}", self.api))
            .send()
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = http()
            .put(format!("{}{path}", self.api))
            .json(body)
            .send()
            .expect("PUT");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Submits `job` and returns its id.
    pub fn submit(&self, job: Value) -> String {
        let (status, body) = self.put("/api/v1/orchestrator/jobs", &json!({ "Job": job }));
        assert_eq!(status, 200, "submit failed: {body}");
        body["JobID"].as_str().expect("JobID").to_owned()
    }

    pub fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!(
            "/api/v1/orchestrator/jobs/{id}?include=executions,history"
        ));
        assert_eq!(status, 200, "get job failed: {body}");
        body
    }

    /// Waits for the job to reach a terminal state and returns the GET job body.
    pub fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        wait_until(
            &format!("job {id} to finish on {}", self.name),
            timeout,
            || {
                let body = self.job(id);
                let state = body["Job"]["State"]["StateType"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                ["Completed", "Failed", "Stopped"]
                    .contains(&state.as_str())
                    .then_some(body)
            },
        )
    }
}

impl Drop for Cod {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("===== log of {} =====\n{}", self.name, self.log());
        }
    }
}

pub fn http() -> reqwest::blocking::Client {
    // reqwest is built without a bundled crypto provider (as in the binary); plain HTTP still needs one set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The first execution of a job fetched with `include=executions`.
pub fn execution(body: &Value) -> &Value {
    &body["Executions"]["Items"][0]
}

/// The first execution's captured stdout (empty when there is none).
pub fn run_stdout(body: &Value) -> String {
    execution(body)["RunOutput"]["Stdout"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every execution's ComputeState message, joined (the reason a failed job gives).
pub fn failure_reasons(body: &Value) -> String {
    body["Executions"]["Items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|e| e["ComputeState"]["Message"].as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

pub fn state(job: &Value) -> String {
    job["Job"]["State"]["StateType"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A WASM module from text, as a base64 data: URL.
pub fn wasm_data_url(wat: &str) -> String {
    use base64::Engine;
    let bytes = wat::parse_str(wat).expect("valid wat");
    format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Writes a WASM module from text into `dir` and returns its path.
pub fn wasm_file(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat).expect("valid wat")).expect("write wasm");
    path
}

/// A batch wasm job running `wat` inline, with extra task fields merged in.
pub fn wasm_job(wat: &str, task_extra: Value) -> Value {
    let mut task = json!({
        "Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/main.wasm"}},
        "InputSources": [{"Target": "/main.wasm", "Source": {"Type": "inline", "Params": {"URL": wasm_data_url(wat)}}}],
        "Publisher": {"Type": "local"},
        "ResultPaths": [{"Name": "outputs", "Path": "/outputs"}],
    });
    if let (Some(t), Some(extra)) = (task.as_object_mut(), task_extra.as_object()) {
        for (k, v) in extra {
            if k == "Engine" {
                if let Some(p) = v["Params"].as_object() {
                    for (pk, pv) in p {
                        t["Engine"]["Params"][pk] = pv.clone();
                    }
                }
            } else if k == "InputSources" {
                if let (Some(list), Some(more)) = (t["InputSources"].as_array_mut(), v.as_array()) {
                    list.extend(more.iter().cloned());
                }
            } else {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    json!({"Type": "batch", "Tasks": [task]})
}

/// Downloads and unpacks a published result (a `urlDownload` tarball) into `dest`.
pub fn fetch_result(result: &Value, dest: &Path) {
    let url = result["Params"]["URL"].as_str().expect("result URL");
    let mut body = Vec::new();
    http()
        .get(url)
        .send()
        .expect("download")
        .read_to_end(&mut body)
        .expect("read");
    let gz = flate2::read::GzDecoder::new(&body[..]);
    tar::Archive::new(gz).unpack(dest).expect("unpack");
}

/// A character device node at `path` with numbers `major:minor`, mode 0666 (as the driver makes its nodes).
#[cfg(feature = "executor-oci")]
pub fn mknod_char(path: &Path, major: u64, minor: u64) {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    use std::os::unix::fs::PermissionsExt;
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
    // mknod is subject to the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
}
