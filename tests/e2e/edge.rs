//! The compute-only (edge) build, without the `orchestrator` feature (issue 5): it refuses the orchestrator
//! role before it opens anything, and a compute node still serves its own API while every orchestrator path
//! answers the 404 a compute node of a full build gives. Built only in that flavor; tests/run.sh runs it with
//! `cargo test --no-default-features --features compute,… --test e2e edge::`.

use std::process::{Command, Stdio};

use crate::harness::{Cod, DEADLINE, bin, free_port, http, wait_until};

/// `cod serve` with `role_flags` in a fresh data dir; returns its exit code and stderr once it has exited.
fn serve_until_exit(role_flags: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = Command::new(bin())
        .arg("serve")
        .args(["--data-dir", &data.display().to_string()])
        .args(["--api-host", "127.0.0.1", "--api-port", "0"])
        .args(["--publisher-port", "0"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(role_flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cod");
    let status = wait_until("cod serve to exit", DEADLINE, || {
        child.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        !data.join("state").exists(),
        "the refused node opened its state database"
    );
    (status.code(), stderr)
}

#[test]
fn the_orchestrator_role_is_refused_with_what_to_run_instead() {
    // `cod serve` alone asks for both roles (a hybrid node), so it is refused too.
    for flags in [
        &["--orchestrator"][..],
        &[][..],
        &["--orchestrator", "--compute"][..],
    ] {
        let (code, stderr) = serve_until_exit(flags);
        assert_eq!(code, Some(64), "cod serve {flags:?}: {stderr}");
        assert!(
            stderr.contains("without the `orchestrator` feature")
                && stderr.contains("--compute --orchestrators"),
            "cod serve {flags:?} did not say what to run instead: {stderr}"
        );
    }
}

#[test]
fn a_compute_node_serves_its_api_and_no_orchestrator_endpoints() {
    // Nothing listens there: the node keeps dialling with backoff, which this test does not need.
    let orchestrator = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let node = Cod::start("edge", &["--compute", "--orchestrators", &orchestrator]);

    let (status, alive) = node.get("/api/v1/agent/alive");
    assert_eq!(status, 200, "{alive}");
    let (status, info) = node.get("/api/v1/agent/node");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["NodeID"], node.node_id.as_str(), "{info}");

    for path in [
        "/api/v1/orchestrator/jobs",
        "/api/v1/orchestrator/jobs/j-1/logs",
        "/api/v1/orchestrator/nodes",
        "/api/v1/orchestrator",
    ] {
        let (status, body) = node.get(path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["Message"]
                .as_str()
                .is_some_and(|m| m.contains("not an orchestrator")),
            "{path}: {body}"
        );
    }
    let (status, body) = node.put(
        "/api/v1/orchestrator/jobs",
        &serde_json::json!({"Job": {"Type": "batch"}}),
    );
    assert_eq!(status, 404, "{body}");

    let scrape = http()
        .get(format!("{}/metrics", node.api))
        .send()
        .expect("GET /metrics");
    assert_eq!(scrape.status().as_u16(), 200);
    let text = scrape.text().expect("metrics text");
    assert!(
        text.contains("cod_outbox_messages{role=\"compute\"}"),
        "{text}"
    );
    assert!(
        !text.contains("cod_orchestrator_") && !text.contains("role=\"orchestrator\""),
        "an edge node reported orchestrator families:\n{text}"
    );

    let build = text
        .lines()
        .find(|l| l.starts_with("cod_build_info{"))
        .unwrap_or_default();
    assert!(
        build.contains("compute") && !build.contains("orchestrator"),
        "not an edge build: {build}"
    );

    // `cod version` (a client of the node's own API, and in every build) reports the edge features.
    let version = node.cli_ok(&["version"]);
    assert!(!version.contains("orchestrator"), "{version}");
}

#[test]
fn the_client_verbs_are_left_out_and_say_where_to_run_them() {
    for args in [
        &["job", "list"][..],
        &["wasm", "run", "tests/e2e/fixtures/hello.wasm"],
        &["node", "list"],
    ] {
        let out = Command::new(bin())
            .args(["--api-port", "1"])
            .args(args)
            .output()
            .expect("run cod");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "cod {args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("`cod {}` is not in this build", args[0]))
                && stderr.contains("full build"),
            "cod {args:?}: {stderr}"
        );
    }
}
