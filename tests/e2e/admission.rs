//! Compute node admission (join token, allow-list, operator approval, rejection) and the libp2p private
//! network, with an orchestrator and compute nodes in separate processes on loopback.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cluster::{compute, orchestrator};
use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, free_port, state, wait_until, wasm_job};

const TOKEN: &str = "e2e-join-token-0123456789abcdef";
const WRONG_TOKEN: &str = "e2e-wrong-token-fedcba9876543210";

/// Writes `text` to a file in a fresh directory that lives as long as the returned guard.
fn secret_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write secret file");
    (dir, path)
}

fn swarm_key_file(hex_digit: char) -> (tempfile::TempDir, PathBuf) {
    let hex: String = std::iter::repeat_n(hex_digit, 64).collect();
    secret_file(
        "swarm.key",
        &format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n"),
    )
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// The orchestrator's record of `node`, if any.
fn node_record(orch: &Cod, node: &Cod) -> Option<Value> {
    let (status, body) = orch.get(&format!("/api/v1/orchestrator/nodes/{}", node.node_id));
    (status == 200).then(|| body["Node"].clone())
}

/// Waits until `node`'s record has this membership and connection, and returns it.
fn wait_for_node(orch: &Cod, node: &Cod, membership: &str, connection: &str) -> Value {
    wait_until(
        &format!("{} {membership} and {connection}", node.name),
        DEADLINE,
        || {
            node_record(orch, node)
                .filter(|n| n["Membership"] == membership && n["Connection"] == connection)
        },
    )
}

/// How often `needle` appears in `cod`'s log.
fn log_count(cod: &Cod, needle: &str) -> usize {
    cod.log().matches(needle).count()
}

fn queued_job(orch: &Cod, name: &str) -> String {
    let mut job = wasm_job(HELLO, json!({"Timeouts": {"QueueTimeout": 300}}));
    job["Name"] = json!(name);
    let id = orch.submit(job);
    wait_until(&format!("{name} queued"), DEADLINE, || {
        (state(&orch.job(&id)) == "Queued").then_some(())
    });
    id
}

fn ran_on(body: &Value) -> Vec<String> {
    body["Executions"]["Items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| e["NodeID"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_join_token_admits_and_a_wrong_one_is_refused() {
    let (_t, token) = secret_file("token", &format!("{TOKEN}\n"));
    let (_w, wrong) = secret_file("wrong", WRONG_TOKEN);
    // The orchestrator has the token inline in its config file, the nodes in token files.
    let (_c, config) = secret_file(
        "orch.yaml",
        &format!("Orchestrator:\n  Auth:\n    Token: {TOKEN}\n"),
    );
    let orch = orchestrator("orch-token", &["--config", &arg(&config)]);
    let bad = compute("bad-token", &orch, &["--auth-token-file", &arg(&wrong)]);
    let good = compute("good-token", &orch, &["--auth-token-file", &arg(&token)]);

    let record = wait_for_node(&orch, &good, "APPROVED", "CONNECTED");
    assert_eq!(record["Admission"], "TOKEN", "{record:#}");
    let body = orch.wait_terminal(&orch.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(ran_on(&body), vec![good.node_id.clone()]);

    // The wrong token: refused with the reason on both sides, more than once (it keeps retrying), and never
    // recorded, so it can get no work.
    wait_until("the bad node refused twice", DEADLINE, || {
        (log_count(&bad, "invalid join token") >= 2).then_some(())
    });
    assert!(
        log_count(&orch, "compute node refused") >= 2,
        "{}",
        orch.log()
    );
    assert!(node_record(&orch, &bad).is_none());
    let (_, listed) = orch.get("/api/v1/orchestrator/nodes");
    assert_eq!(
        listed["Nodes"].as_array().map(Vec::len),
        Some(1),
        "{listed:#}"
    );

    // The token never shows: not in logs, not in the config the API serves.
    for cod in [&orch, &good, &bad] {
        assert!(!cod.log().contains(TOKEN), "{} logged the token", cod.name);
    }
    let (_, config) = orch.get("/api/v1/agent/config");
    assert!(!config.to_string().contains(TOKEN), "{config:#}");
    assert!(config.to_string().contains("<redacted>"), "{config:#}");
    let shown = orch.cli_ok(&["agent", "config"]);
    assert!(!shown.contains(TOKEN), "{shown}");
}

#[test]
fn a_hybrid_node_runs_its_own_jobs_under_a_strict_policy() {
    let (_t, token) = secret_file("token", TOKEN);
    let hybrid = Cod::start(
        "hybrid-strict",
        &["--auth-token-file", &arg(&token), "--require-token"],
    );
    let body = hybrid.wait_terminal(&hybrid.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let record = node_record(&hybrid, &hybrid).expect("the local half is registered");
    assert_eq!(record["Admission"], "LOCAL", "{record:#}");
}

#[test]
fn nodes_without_a_token_wait_for_approval_and_rejected_ones_stay_out() {
    let (_t, token) = secret_file("token", TOKEN);
    // One node at most may wait without credentials.
    let (_c, config) = secret_file(
        "orch.yaml",
        "Orchestrator:\n  Auth:\n    MaxPendingNodes: 1\n",
    );
    let orch = orchestrator(
        "orch-pending",
        &["--config", &arg(&config), "--auth-token-file", &arg(&token)],
    );
    let mut node = compute("no-token", &orch, &[]);

    let record = wait_for_node(&orch, &node, "PENDING", "CONNECTED");
    assert_eq!(record["Admission"], "NONE", "{record:#}");
    let second = compute("no-token-2", &orch, &[]);
    wait_until("the second tokenless node refused", DEADLINE, || {
        (log_count(&second, "too many nodes are waiting for approval") >= 1).then_some(())
    });
    assert!(node_record(&orch, &second).is_none());
    let id = queued_job(&orch, "waits-for-approval");
    orch.cli_ok(&["node", "approve", &node.node_id]);
    // Its place in the queue freed, the second node gets in on its next try.
    wait_for_node(&orch, &second, "PENDING", "CONNECTED");
    let body = orch.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let record = wait_for_node(&orch, &node, "APPROVED", "CONNECTED");
    assert_eq!(record["Admission"], "OPERATOR", "{record:#}");
    let described = orch.cli_ok(&["node", "describe", &node.node_id]);
    assert!(described.contains("OPERATOR"), "{described}");

    // Rejected while connected: disconnected at once, and refused when it comes back by itself.
    let refusals = log_count(&node, "rejected by the orchestrator's operator");
    orch.cli_ok(&["node", "reject", &node.node_id]);
    wait_for_node(&orch, &node, "REJECTED", "DISCONNECTED");
    wait_until("the rejected node refused on its redial", DEADLINE, || {
        (log_count(&node, "rejected by the orchestrator's operator") > refusals).then_some(())
    });
    // And after a restart of the node process.
    let refusals = log_count(&node, "rejected by the orchestrator's operator");
    node.restart();
    wait_until("the restarted node refused", DEADLINE, || {
        (log_count(&node, "rejected by the orchestrator's operator") > refusals).then_some(())
    });
    wait_for_node(&orch, &node, "REJECTED", "DISCONNECTED");
    let body = orch.wait_terminal(&orch.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(
        state(&body),
        "Failed",
        "no work for a rejected node: {body:#}"
    );
}

#[test]
fn allow_listed_nodes_join_without_a_token_and_others_are_refused() {
    let (_t, token) = secret_file("token", TOKEN);
    // The node starts first so that its id can go on the orchestrator's allow-list; it redials the
    // orchestrator's port until the orchestrator is up.
    let port = free_port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let listed = Cod::start("listed", &["--compute", "--orchestrators", &addr]);
    let orch = orchestrator(
        "orch-allow",
        &[
            "--listen",
            &addr,
            "--auth-token-file",
            &arg(&token),
            "--require-token",
            "--allowed-nodes",
            &listed.node_id,
        ],
    );
    let record = wait_for_node(&orch, &listed, "APPROVED", "CONNECTED");
    assert_eq!(record["Admission"], "ALLOW_LIST", "{record:#}");
    let body = orch.wait_terminal(&orch.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");

    // RequireToken: a node with neither the token nor a place on the list is refused, not kept pending.
    let stranger = compute("stranger", &orch, &[]);
    wait_until("the stranger refused", DEADLINE, || {
        (log_count(&stranger, "admits only nodes with its join token") >= 1).then_some(())
    });
    assert!(node_record(&orch, &stranger).is_none());
}

#[test]
fn a_private_network_needs_the_same_swarm_key() {
    let (_a, key_a) = swarm_key_file('a');
    let (_b, key_b) = swarm_key_file('b');
    let orch = orchestrator("orch-pnet", &["--swarm-key-file", &arg(&key_a)]);
    let outsider = compute("pnet-outsider", &orch, &["--swarm-key-file", &arg(&key_b)]);
    let id = queued_job(&orch, "needs-an-insider");

    // The outsider keeps failing to connect, saying why it might be, and never appears.
    wait_until("the outsider failed to connect twice", DEADLINE, || {
        (log_count(&outsider, "do not share the same Transport.SwarmKeyFile") >= 2).then_some(())
    });
    assert!(node_record(&orch, &outsider).is_none());
    assert_eq!(state(&orch.job(&id)), "Queued");

    let insider = compute("pnet-insider", &orch, &["--swarm-key-file", &arg(&key_a)]);
    let body = orch.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(ran_on(&body), vec![insider.node_id.clone()]);
    assert!(node_record(&orch, &outsider).is_none());
}
