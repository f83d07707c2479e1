//! The `docker` engine end to end: a hybrid node pulls from a real registry on loopback (Debian's
//! `docker-registry`) and runs the image through libcontainer. Needs root, as containers do (CI runs as root).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Cod, DEADLINE, execution, run_stdout as stdout, state, wait_until};
use crate::registry::{PushOptions, RawImage, TestRegistry, busybox};
use crate::tarball::TarBuilder;

/// A hybrid node for container jobs.
fn node(name: &str, extra: &[&str]) -> Cod {
    Cod::start(name, extra)
}

/// A one-task docker batch job.
fn docker_job(image: &str, entrypoint: &[&str], params: &[&str], task_extra: Value) -> Value {
    let mut task = json!({
        "Name": "main",
        "Engine": {"Type": "docker", "Params": {"Image": image, "Parameters": params}},
        "Publisher": {"Type": "local"},
        "ResultPaths": [{"Name": "outputs", "Path": "/outputs"}],
        "Timeouts": {"ExecutionTimeout": 60}
    });
    if !entrypoint.is_empty() {
        task["Engine"]["Params"]["Entrypoint"] = json!(entrypoint);
    }
    merge(&mut task, task_extra);
    json!({"Type": "batch", "Count": 1, "Tasks": [task]})
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `sh -c SCRIPT` in the busybox image.
fn sh(image: &str, script: &str, task_extra: Value) -> Value {
    docker_job(image, &["/bin/sh", "-c"], &[script], task_extra)
}

fn exit_code(body: &Value) -> i64 {
    execution(body)["RunOutput"]["ExitCode"]
        .as_i64()
        .unwrap_or(-999)
}

fn failure(body: &Value) -> String {
    format!(
        "{} {}",
        body["Job"]["State"]["Message"].as_str().unwrap_or_default(),
        execution(body)["ComputeState"]["Message"]
            .as_str()
            .unwrap_or_default()
    )
}

fn history_text(body: &Value) -> String {
    body["History"]["Items"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["Event"]["Message"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn container_job_runs_from_a_registry_and_its_result_downloads() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("tools/busybox", "1", &PushOptions::default());
    let cod = node("docker", &[]);
    let script = "echo hello $GREETING; echo oops >&2; cat /hello.txt; \
                  test ! -e /etc/remove-me && echo whiteout-ok; \
                  echo data > /outputs/out.txt; id -u; pwd; exit 3";
    let id = cod.submit(sh(
        &image.reference,
        script,
        json!({"Env": {"GREETING": "edge"}, "Engine": {"Params": {"WorkingDirectory": "/tmp"}}}),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(
        exit_code(&body),
        3,
        "a non-zero exit is recorded, not an error"
    );
    let out = stdout(&body);
    for want in [
        "hello edge\n",
        busybox::ADDED.1,
        "whiteout-ok\n",
        "0\n",
        "/tmp\n",
    ] {
        assert!(out.contains(want), "{want:?} missing from {out:?}");
    }
    assert_eq!(execution(&body)["RunOutput"]["stderr"], "oops\n");
    assert!(
        history_text(&body).contains("pulled image"),
        "the pull is in the history:\n{}",
        history_text(&body)
    );

    // `cod job get` downloads stdout, stderr, exitCode and the outputs, as Bacalhau lays them out.
    let dest = tempfile::tempdir().expect("tmp");
    cod.cli_ok(&[
        "job",
        "get",
        &id,
        "--output-dir",
        &dest.path().display().to_string(),
    ]);
    let read = |p: &str| std::fs::read_to_string(dest.path().join(p)).unwrap_or_default();
    assert_eq!(read("exitCode").trim(), "3");
    assert!(read("stdout").starts_with("hello edge\n"));
    assert_eq!(read("outputs/out.txt"), "data\n");

    // The second run of the same image downloads nothing.
    let blob_gets = registry.requests("GET", "/blobs/");
    let again = cod.submit(sh(&image.reference, "echo again", json!({})));
    let body = cod.wait_terminal(&again, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(stdout(&body), "again\n");
    assert_eq!(registry.requests("GET", "/blobs/"), blob_gets);
}

#[test]
fn cli_docker_run_waits_and_prints_the_output() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("cli/busybox", "1", &PushOptions::default());
    let cod = node("docker-cli", &[]);
    let out = cod.cli_ok(&[
        "docker",
        "run",
        "-e",
        "WHO=cli",
        &image.reference,
        "--",
        "sh",
        "-c",
        "echo from $WHO",
    ]);
    assert!(out.contains("from cli"), "{out}");
}

#[test]
fn inputs_are_read_only_and_the_sandbox_holds() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("sandbox/busybox", "1", &PushOptions::default());
    let data = tempfile::tempdir().expect("tmp");
    std::fs::write(data.path().join("in.txt"), "input data\n").expect("write");
    let secret = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(secret.path(), "host secret").expect("write");
    let allow = format!("{}:ro", data.path().display());
    let cod = node("docker-sandbox", &["--allow-listed-local-paths", &allow]);
    let script = format!(
        "cat /inputs/in.txt; \
         echo x > /inputs/new 2>/dev/null && echo input-writable; \
         echo x > /etc/new 2>/dev/null && echo rootfs-writable; \
         echo x > /tmp/new && echo tmp-ok; \
         cat {secret} 2>/dev/null && echo host-visible; \
         ls /sys/class/net | tr '\\n' ' '; echo; \
         echo | nc -w 2 127.0.0.1 {api} 2>/dev/null && echo api-reachable; \
         grep CapEff /proc/self/status; \
         mount -t tmpfs none /mnt 2>/dev/null && echo mounted; \
         cat /proc/kcore 2>/dev/null | head -c 1 | wc -c",
        secret = secret.path().display(),
        api = cod.port(),
    );
    let id = cod.submit(sh(
        &image.reference,
        &script,
        json!({"InputSources": [{"Target": "/inputs", "Source": {"Type": "localDirectory",
                 "Params": {"SourcePath": data.path().display().to_string()}}}]}),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let out = stdout(&body);
    assert!(out.contains("input data"), "{out}");
    assert!(out.contains("tmp-ok"), "{out}");
    for bad in [
        "input-writable",
        "rootfs-writable",
        "host-visible",
        "api-reachable",
        "mounted",
    ] {
        assert!(!out.contains(bad), "{bad}: {out}");
    }
    // Docker's default capabilities: no CAP_SYS_ADMIN (bit 21).
    let cap_eff = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff line");
    assert_eq!(cap_eff & (1 << 21), 0, "{out}");
    assert!(out.contains("lo "), "only lo: {out}");
    assert!(!out.contains("eth"), "only lo: {out}");
    assert!(
        out.trim_end().ends_with('0'),
        "/proc/kcore is masked: {out}"
    );
}

#[test]
fn runaway_containers_fail_with_reasons_and_the_node_survives() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("runaway/busybox", "1", &PushOptions::default());
    let cod = node("docker-runaway", &[]);

    let bomb = cod.submit(sh(
        &image.reference,
        "dd if=/dev/zero of=/dev/null bs=256M count=1",
        json!({"Resources": {"Memory": "32Mb"}}),
    ));
    let endless = cod.submit(sh(
        &image.reference,
        "while :; do :; done",
        json!({"Timeouts": {"ExecutionTimeout": 2}}),
    ));
    let forks = cod.submit(sh(
        &image.reference,
        "(i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo $#",
        json!({"Timeouts": {"ExecutionTimeout": 30}, "Resources": {"Memory": "1Gb"}}),
    ));
    let body = cod.wait_terminal(&bomb, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(failure(&body).contains("memory"), "{}", failure(&body));
    let body = cod.wait_terminal(&endless, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(failure(&body).contains("timed out"), "{}", failure(&body));
    // The pids limit stops the forks; the script goes on and ends (the sleeps die with the container). It
    // counts with shell builtins only: at the limit, even `ls` cannot start (and the subshell that hit the
    // limit has died of it).
    let body = cod.wait_terminal(&forks, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let processes: u32 = stdout(&body)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a process count: {:#}", execution(&body)));
    assert!(
        (900..=1024).contains(&processes),
        "the default pids limit (1024) holds: {processes} processes"
    );

    // Still healthy.
    let ok = cod.submit(sh(&image.reference, "echo still-here", json!({})));
    let body = cod.wait_terminal(&ok, DEADLINE);
    assert_eq!(stdout(&body), "still-here\n", "{body:#}");
}

#[test]
fn stopping_a_job_kills_its_container() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("stop/busybox", "1", &PushOptions::default());
    let cod = node("docker-stop", &[]);
    let id = cod.submit(sh(
        &image.reference,
        "echo started; sleep 600",
        json!({"Timeouts": {"ExecutionTimeout": 900}}),
    ));
    wait_until("the container to start", DEADLINE, || {
        let body = cod.job(&id);
        (execution(&body)["ComputeState"]["StateType"] == 6).then_some(())
    });
    cod.cli_ok(&["job", "stop", &id]);
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Stopped", "{body:#}");
    // Nothing of it is left running.
    wait_until("the container's processes to go", DEADLINE, || {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&ps.stdout).contains("sleep 600")).then_some(())
    });
}

#[test]
fn bad_images_fail_with_a_message_naming_them() {
    let registry = TestRegistry::start();
    let cod = node("docker-bad", &[]);

    let missing = registry.reference("nope/missing", "1");
    let id = cod.submit(sh(&missing, "true", json!({})));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(
        failure(&body).contains("nope/missing"),
        "{}",
        failure(&body)
    );

    // A layer that climbs out of the image root.
    let hostile = TarBuilder::new()
        .file("../../../../tmp/cod-escaped", b"pwned", 0o644)
        .build();
    let pushed = registry.push_raw_image("evil/escape", "1", &RawImage::new(vec![hostile]));
    let id = cod.submit(sh(&pushed.reference, "true", json!({})));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(failure(&body).contains("escapes"), "{}", failure(&body));
    assert!(!std::path::Path::new("/tmp/cod-escaped").exists());

    // The node is fine.
    let (status, _) = cod.get("/api/v1/agent/alive");
    assert_eq!(status, 200);
}

/// A one-request HTTP server on loopback, answering `body`.
fn http_origin(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn http_network_reaches_only_allowed_domains() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("net/busybox", "1", &PushOptions::default());
    let port = http_origin("allowed-origin");
    let cod = node("docker-http", &[]);
    // busybox's wget crashes on proxied answers, so the requests are written by hand: an absolute-form GET
    // (plain HTTP through a proxy) and a CONNECT tunnel (how HTTPS goes through one).
    let script = format!(
        "PROXY=$(echo $http_proxy | sed 's|http://||; s|:| |'); \
         printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | nc -w 5 $PROXY; echo; \
         printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.1\\r\\n\\r\\n' | nc -w 5 $PROXY; echo; \
         printf 'GET http://localhost:{port}/ HTTP/1.1\\r\\n\\r\\n' | nc -w 5 $PROXY; \
         echo | nc -w 2 127.0.0.1 {port} || echo no-direct-route"
    );
    let id = cod.submit(sh(
        &image.reference,
        &script,
        json!({"Network": {"Type": "HTTP", "Domains": ["127.0.0.1"]}}),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let out = stdout(&body);
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    assert_eq!(out.matches("allowed-origin").count(), 2, "{out}");
    assert!(out.contains("HTTP/1.1 200 Connection Established"), "{out}");
    assert!(out.contains("403 Forbidden"), "{out}");
    assert!(
        out.contains("localhost is not in this job's Network.Domains"),
        "{out}"
    );
    assert!(out.contains("no-direct-route"), "{out}");

    // Without HTTP networking the same request has no route at all.
    let id = cod.submit(sh(
        &image.reference,
        &format!("echo | nc -w 2 127.0.0.1 {port} || echo no-route"),
        json!({}),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert!(stdout(&body).contains("no-route"), "{body:#}");
    let _ = Duration::ZERO;
}

#[test]
fn job_logs_follow_streams_a_running_container() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("logs/busybox", "1", &PushOptions::default());
    // Prints a line, then waits for the test to let it finish (a file the test creates in an input).
    let gate = tempfile::tempdir().expect("tmp");
    let allow = format!("{}:ro", gate.path().display());
    let cod = node("docker-logs", &["--allow-listed-local-paths", &allow]);
    let id = cod.submit(sh(
        &image.reference,
        "echo first line; echo to stderr >&2; while [ ! -e /gate/go ]; do sleep 0.1; done; echo last line",
        json!({"InputSources": [{"Target": "/gate", "Source": {"Type": "localDirectory",
                 "Params": {"SourcePath": gate.path().display().to_string()}}}],
               "Timeouts": {"ExecutionTimeout": 120}}),
    ));
    let mut follower = std::process::Command::new(crate::harness::bin())
        .args(["job", "logs", "--follow", &id])
        .env("COD_API_HOST", "127.0.0.1")
        .env("COD_API_PORT", cod.port())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cod job logs");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    wait_until("the running container's first line", DEADLINE, || {
        seen.extend(rx.try_iter());
        seen.iter().any(|l| l.contains("first line")).then_some(())
    });
    assert_eq!(
        state(&cod.job(&id)),
        "Running",
        "the line came while the job ran"
    );
    std::fs::write(gate.path().join("go"), "").expect("open the gate");
    let status = wait_until("the follower to end with the job", DEADLINE, || {
        seen.extend(rx.try_iter());
        follower.try_wait().ok().flatten()
    });
    seen.extend(rx.try_iter());
    assert!(status.success(), "{seen:?}");
    let first = seen.iter().filter(|l| l.contains("first line")).count();
    assert_eq!(first, 1, "streamed once, not again at the end: {seen:?}");
    assert!(seen.iter().any(|l| l.contains("last line")), "{seen:?}");
}

#[test]
fn a_node_can_refuse_networked_jobs() {
    let registry = TestRegistry::start();
    let image = registry.push_busybox("policy/busybox", "1", &PushOptions::default());
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("cod.yaml");
    std::fs::write(&config, "Compute:\n  RejectNetworkedJobs: true\n").expect("config");
    let cod = node(
        "docker-policy",
        &["--config", &config.display().to_string()],
    );
    let id = cod.submit(sh(
        &image.reference,
        "echo online",
        json!({"Network": {"Type": "Host"}}),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(
        failure(&body).contains("does not run networked jobs"),
        "{}",
        failure(&body)
    );
    // Jobs without a network still run.
    let id = cod.submit(sh(&image.reference, "echo offline", json!({})));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(stdout(&body), "offline\n", "{body:#}");
}
