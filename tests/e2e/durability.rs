//! kill -9 at awkward moments loses no accepted job and no result.

use serde_json::json;

use crate::cluster::{compute, orchestrator};
use crate::fixtures::{BUSY, HELLO};
use crate::harness::{Cod, DEADLINE, free_port, state, wait_until, wasm_job};

#[test]
fn a_hybrid_node_killed_after_accepting_a_job_finishes_it_after_restart() {
    let mut cod = Cod::start("kill-hybrid", &[]);
    let id = cod.submit(wasm_job(BUSY, json!({})));
    // Killed right after the submission was acknowledged: the job is durable, so it must finish.
    cod.restart();
    let body = cod.wait_terminal(&id, DEADLINE * 2);
    assert_eq!(state(&body), "Completed", "{body:#}");
    // The restarted node answers for old jobs and takes new ones.
    let body = cod.wait_terminal(&cod.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed");
}

#[test]
fn results_finished_while_the_orchestrator_was_down_are_delivered_when_it_returns() {
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut orch = orchestrator("kill-orch", &["--listen", &listen]);
    let node = compute("survivor", &orch, &[]);
    wait_until("node connected", DEADLINE, || {
        let (_, b) = orch.get("/api/v1/orchestrator/nodes");
        (b["Nodes"][0]["Connection"] == "CONNECTED").then_some(())
    });
    let id = orch.submit(wasm_job(BUSY, json!({})));
    wait_until("execution running", DEADLINE, || {
        (orch.job(&id)["Executions"]["Items"][0]["ComputeState"]["StateType"] == 6).then_some(())
    });
    orch.kill9();
    // The compute node finishes while its orchestrator is gone and keeps the report in its outbox.
    wait_until(
        "execution finished on the compute node",
        DEADLINE * 2,
        || node.log().contains("execution completed").then_some(()),
    );
    orch.restart();
    let body = orch.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(body["Executions"]["Items"][0]["RunOutput"]["ExitCode"], 0);
}

#[test]
fn a_compute_node_killed_mid_job_runs_it_again_after_restart() {
    let orch = orchestrator("orch-k", &[]);
    let mut node = compute("killed", &orch, &[]);
    wait_until("node connected", DEADLINE, || {
        let (_, b) = orch.get("/api/v1/orchestrator/nodes");
        (b["Nodes"][0]["Connection"] == "CONNECTED").then_some(())
    });
    let id = orch.submit(wasm_job(BUSY, json!({})));
    wait_until("execution running", DEADLINE, || {
        (orch.job(&id)["Executions"]["Items"][0]["ComputeState"]["StateType"] == 6).then_some(())
    });
    assert!(
        !node.log().contains("execution completed"),
        "the job must still be running when the node is killed"
    );
    node.restart();
    let body = orch.wait_terminal(&id, DEADLINE * 2);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert!(
        node.log()
            .contains("resuming an execution accepted before the restart"),
        "{}",
        node.log()
    );
}
