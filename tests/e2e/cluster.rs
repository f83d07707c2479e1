//! One orchestrator and two compute nodes, each its own process, talking libp2p over loopback.

use serde_json::{Value, json};

use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, state, wait_until, wasm_job};

pub fn orchestrator(name: &str, extra: &[&str]) -> Cod {
    let mut args = vec!["--orchestrator"];
    args.extend_from_slice(extra);
    Cod::start(name, &args)
}

pub fn compute(name: &str, orch: &Cod, extra: &[&str]) -> Cod {
    let addr = orch.p2p.first().expect("orchestrator listens").clone();
    let mut args = vec!["--compute", "--orchestrators", addr.as_str()];
    args.extend_from_slice(extra);
    Cod::start(name, &args)
}

fn connected_nodes(orch: &Cod) -> Vec<Value> {
    let (_, body) = orch.get("/api/v1/orchestrator/nodes");
    body["Nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter(|n| n["Connection"] == "CONNECTED")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn jobs_spread_over_compute_nodes_by_count_and_constraints() {
    let orch = orchestrator("orch", &[]);
    let a = compute("compute-a", &orch, &["--labels", "zone=north,tier=1"]);
    let b = compute("compute-b", &orch, &["--labels", "zone=south,tier=2"]);
    let nodes = wait_until("two compute nodes connected", DEADLINE, || {
        let n = connected_nodes(&orch);
        (n.len() == 2).then_some(n)
    });
    for n in &nodes {
        assert_eq!(n["Membership"], "APPROVED");
        assert!(
            n["Info"]["ComputeNodeInfo"]["ExecutionEngines"]
                .as_array()
                .is_some_and(|e| e.contains(&json!("wasm")))
        );
    }

    // Count 2 → one execution on each node.
    let mut job = wasm_job(HELLO, json!({}));
    job["Count"] = json!(2);
    let body = orch.wait_terminal(&orch.submit(job), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let mut ran_on: Vec<String> = body["Executions"]["Items"]
        .as_array()
        .expect("execs")
        .iter()
        .map(|e| e["NodeID"].as_str().unwrap_or("").to_owned())
        .collect();
    ran_on.sort();
    let mut expected = vec![a.node_id.clone(), b.node_id.clone()];
    expected.sort();
    assert_eq!(ran_on, expected);

    // A hard constraint picks the node with the label.
    let mut job = wasm_job(HELLO, json!({}));
    job["Constraints"] = json!([{"Key": "zone", "Operator": "=", "Values": ["south"]}]);
    let body = orch.wait_terminal(&orch.submit(job), DEADLINE);
    assert_eq!(state(&body), "Completed");
    assert_eq!(body["Executions"]["Items"][0]["NodeID"], b.node_id.as_str());

    // No node matches: fails at once (QueueTimeout 0) naming every node's reason.
    let mut job = wasm_job(HELLO, json!({}));
    job["Constraints"] = json!([{"Key": "tier", "Operator": "gt", "Values": ["5"]}]);
    let body = orch.wait_terminal(&orch.submit(job), DEADLINE);
    assert_eq!(state(&body), "Failed");
    let msg = body["Job"]["State"]["Message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&a.node_id) && msg.contains(&b.node_id),
        "{msg}"
    );
}

#[test]
fn a_declined_or_failed_execution_is_retried_on_another_node() {
    let data = tempfile::tempdir().expect("tmp");
    std::fs::write(data.path().join("in.txt"), "x").expect("write");
    let allowed = format!("{}:ro", data.path().display());
    let orch = orchestrator("orch-retry", &[]);
    // Only b may read the directory; the scheduler cannot know, so whichever node it asks first and
    // declines, the job must end on b.
    // Node a dials the bare address (no /p2p/<id>): the orchestrator's identity is learnt on connect.
    let bare = orch.p2p[0]
        .split("/p2p/")
        .next()
        .expect("address")
        .to_owned();
    let a = Cod::start("retry-a", &["--compute", "--orchestrators", &bare]);
    let b = compute("retry-b", &orch, &["--allow-listed-local-paths", &allowed]);
    wait_until("two nodes", DEADLINE, || {
        (connected_nodes(&orch).len() == 2).then_some(())
    });
    for _ in 0..2 {
        let input = json!([{"Target": "/data", "Source": {"Type": "local", "Params": {"SourcePath": data.path().display().to_string()}}}]);
        let body = orch.wait_terminal(
            &orch.submit(wasm_job(HELLO, json!({"InputSources": input}))),
            DEADLINE,
        );
        assert_eq!(state(&body), "Completed", "{body:#}");
        let execs = body["Executions"]["Items"].as_array().expect("execs");
        let done: Vec<&Value> = execs
            .iter()
            .filter(|e| e["ComputeState"]["StateType"] == 9)
            .collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["NodeID"], b.node_id.as_str());
        for e in execs.iter().filter(|e| e["NodeID"] == a.node_id.as_str()) {
            assert_eq!(
                e["ComputeState"]["StateType"], 4,
                "a declined (AskForBidRejected): {e:#}"
            );
            assert!(
                e["ComputeState"]["Message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("not allowed"),
                "{e:#}"
            );
        }
    }
}

#[test]
fn a_silent_node_is_marked_disconnected_and_rejoins_when_it_speaks_again() {
    let orch = orchestrator("orch-silent", &["--disconnect-timeout", "1s"]);
    let node = compute("silent", &orch, &["--heartbeat-interval", "200ms"]);
    let connection = || {
        let (_, body) = orch.get(&format!("/api/v1/orchestrator/nodes/{}", node.node_id));
        body["Node"]["Connection"].as_str().map(str::to_owned)
    };
    wait_until("connected", DEADLINE, || {
        (connection().as_deref() == Some("CONNECTED")).then_some(())
    });
    // Frozen: its TCP connection stays open, but heartbeats stop.
    node.signal("STOP");
    wait_until("marked disconnected", DEADLINE, || {
        (connection().as_deref() == Some("DISCONNECTED")).then_some(())
    });
    let body = orch.wait_terminal(&orch.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(
        state(&body),
        "Failed",
        "no work goes to a disconnected node: {body:#}"
    );
    node.signal("CONT");
    wait_until("connected again", DEADLINE, || {
        (connection().as_deref() == Some("CONNECTED")).then_some(())
    });
    let body = orch.wait_terminal(&orch.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
}

/// Under load the orchestrator's outbox sends several `AskForBid`s in one `Deliver`; the compute node runs
/// them together on its short-job path (one transaction, one Ack). Here the batch is made certain: the node
/// is frozen while the jobs are placed on it, so all but the first wait in the outbox together.
#[test]
fn asks_delivered_together_run_together_and_each_job_once() {
    let orch = orchestrator("orch-batch", &[]);
    let node = compute("batch", &orch, &[]);
    wait_until("connected", DEADLINE, || {
        (connected_nodes(&orch).len() == 1).then_some(())
    });
    node.signal("STOP");
    let ids: Vec<String> = (0..8)
        .map(|_| orch.submit(wasm_job(HELLO, json!({}))))
        .collect();
    // Every job placed (its execution exists) before the node wakes: they are all in the outbox now.
    for id in &ids {
        wait_until("execution placed", DEADLINE, || {
            let (_, body) = orch.get(&format!(
                "/api/v1/orchestrator/jobs/{id}?include=executions"
            ));
            (body["Executions"]["Items"].as_array().map_or(0, Vec::len) == 1).then_some(())
        });
    }
    node.signal("CONT");
    for id in &ids {
        let body = orch.wait_terminal(id, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let executions = body["Executions"]["Items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(executions.len(), 1, "one execution per job: {body:#}");
        assert!(
            crate::harness::run_stdout(&body).starts_with("hello"),
            "{body:#}"
        );
    }
    // The node's own account: one short-job batch carried several executions.
    let most = node
        .log()
        .lines()
        .filter(|l| l.contains("short-job path"))
        .filter_map(|l| {
            let n = l.split("executions=").nth(1)?;
            n.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most >= 2,
        "no batch of asks on the short-job path:\n{}",
        node.log()
    );
}

#[test]
fn manual_approval_holds_work_until_the_operator_approves() {
    let orch = orchestrator("orch-approval", &["--manual-approval"]);
    let mut node = compute("pending", &orch, &[]);
    let pending = wait_until("node registered", DEADLINE, || {
        let (_, body) = orch.get("/api/v1/orchestrator/nodes");
        body["Nodes"].as_array().and_then(|n| n.first().cloned())
    });
    assert_eq!(pending["Membership"], "PENDING");
    let mut job = wasm_job(HELLO, json!({"Timeouts": {"QueueTimeout": 120}}));
    job["Name"] = json!("waits-for-approval");
    let id = orch.submit(job);
    wait_until("job queued", DEADLINE, || {
        (state(&orch.job(&id)) == "Queued").then_some(())
    });
    orch.cli_ok(&["node", "approve", &node.node_id]);
    let body = orch.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");

    // Rejected: no more work, and the reason says so.
    orch.cli_ok(&["node", "reject", &node.node_id, "-m", "decommissioned"]);
    let listed = orch.cli_ok(&["node", "list", "--output", "json"]);
    assert!(listed.contains("REJECTED"), "{listed}");
    let body = orch.wait_terminal(&orch.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Failed");
    assert!(
        body["Job"]["State"]["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected"),
        "{body:#}"
    );

    // Deleted: forgotten by the orchestrator. The node process goes first: a live node that is deleted
    // handshakes again on its next reconnect and comes back as a new pending node (deleting forgets the
    // rejection too), which would race this check.
    let node_id = node.node_id.clone();
    node.kill9();
    orch.cli_ok(&["node", "delete", &node_id]);
    let (status, _) = orch.get(&format!("/api/v1/orchestrator/nodes/{node_id}"));
    assert_eq!(status, 404);
}
