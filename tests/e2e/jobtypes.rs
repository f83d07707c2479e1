//! Job types and scheduling with real processes: an orchestrator and one or two compute nodes over loopback.
//! `ops` runs once per node, `daemon` follows nodes that join and is restarted, `service` replaces ended
//! executions, updates by `Name` create versions, `Priority` orders queued jobs, `QueueTimeout` and
//! `TotalTimeout` fail jobs with reasons, and `job stop` ends long-running jobs.

use serde_json::{Value, json};

use crate::cluster::{compute, orchestrator};
use crate::fixtures::{BUSY, ENDLESS, HELLO};
use crate::harness::{Cod, DEADLINE, http, state, wait_until, wasm_job};

fn typed(kind: &str, wat: &str, extra: Value) -> Value {
    let mut job = wasm_job(wat, extra);
    job["Type"] = json!(kind);
    job
}

fn executions(body: &Value) -> Vec<Value> {
    body["Executions"]["Items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn is_state(v: &Value, names: &[&str], codes: &[u64]) -> bool {
    v.as_str().is_some_and(|s| names.contains(&s)) || v.as_u64().is_some_and(|c| codes.contains(&c))
}

/// Neither ended nor asked to stop.
fn live(e: &Value) -> bool {
    let ended = is_state(
        &e["ComputeState"]["StateType"],
        &[
            "AskForBidRejected",
            "BidRejected",
            "Completed",
            "Failed",
            "Cancelled",
        ],
        &[4, 8, 9, 10, 11],
    );
    let stopping = is_state(&e["DesiredState"]["StateType"], &["Stopped"], &[2]);
    !ended && !stopping
}

fn on_node<'a>(execs: &'a [Value], node: &str) -> Vec<&'a Value> {
    execs.iter().filter(|e| e["NodeID"] == node).collect()
}

fn connected(orch: &Cod, n: usize) {
    wait_until(&format!("{n} compute nodes connected"), DEADLINE, || {
        let (_, body) = orch.get("/api/v1/orchestrator/nodes");
        let count = body["Nodes"].as_array().map_or(0, |v| {
            v.iter().filter(|n| n["Connection"] == "CONNECTED").count()
        });
        (count == n).then_some(())
    });
}

fn stop(orch: &Cod, id: &str) {
    let r = http()
        .delete(format!("{}/api/v1/orchestrator/jobs/{id}", orch.api))
        .send()
        .expect("DELETE");
    assert!(r.status().is_success(), "stop failed: {}", r.status());
}

fn history_text(body: &Value) -> String {
    body["History"]["Items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|h| h["Event"]["Message"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn ops_runs_once_per_node_and_daemon_follows_joining_nodes_and_restarts() {
    let orch = orchestrator("orch", &[]);
    let a = compute("compute-a", &orch, &[]);
    connected(&orch, 1);

    // Daemon: one execution on a; BUSY exits after a few seconds and is replaced on the same node.
    let daemon = orch.submit(typed("daemon", BUSY, json!({})));
    wait_until("daemon runs on a", DEADLINE, || {
        let execs = executions(&orch.job(&daemon));
        (on_node(&execs, &a.node_id).len() == 1).then_some(())
    });

    // A node that joins later gets the daemon too.
    let b = compute("compute-b", &orch, &[]);
    connected(&orch, 2);
    wait_until("daemon lands on the joining node", DEADLINE, || {
        let execs = executions(&orch.job(&daemon));
        (!on_node(&execs, &b.node_id).is_empty()).then_some(())
    });
    wait_until(
        "daemon execution replaced on a after it exits",
        DEADLINE * 2,
        || {
            let execs = executions(&orch.job(&daemon));
            let mine = on_node(&execs, &a.node_id);
            (mine.len() >= 2 && mine.iter().filter(|e| live(e)).count() <= 1).then_some(())
        },
    );
    let body = orch.job(&daemon);
    assert_eq!(state(&body), "Running", "{body:#}");

    // Ops: once on every node, then Completed; nothing more runs later.
    let ops = orch.submit(typed("ops", HELLO, json!({})));
    let body = orch.wait_terminal(&ops, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let execs = executions(&body);
    assert_eq!(execs.len(), 2, "{body:#}");
    assert_eq!(on_node(&execs, &a.node_id).len(), 1);
    assert_eq!(on_node(&execs, &b.node_id).len(), 1);
    // Each node's run is its own result: one finishing first must not supersede or stop the other.
    // (Execution state 9 is Completed in Bacalhau's v1.6+ numbering.)
    for e in &execs {
        assert_eq!(e["ComputeState"]["StateType"], 9, "{body:#}");
    }

    // Stopping the daemon stops every execution and keeps it stopped (no replacement).
    stop(&orch, &daemon);
    let body = orch.wait_terminal(&daemon, DEADLINE);
    assert_eq!(state(&body), "Stopped", "{body:#}");
    wait_until("daemon executions all ended", DEADLINE, || {
        let execs = executions(&orch.job(&daemon));
        execs
            .iter()
            .all(|e| {
                !is_state(
                    &e["ComputeState"]["StateType"],
                    &["Running", "BidAccepted", "AskForBid"],
                    &[2, 5, 6],
                )
            })
            .then_some(execs.len())
    });
}

#[test]
fn service_replaces_ended_executions_and_updates_by_name_create_versions() {
    let orch = orchestrator("orch", &[]);
    let _a = compute("compute-a", &orch, &[]);
    let _b = compute("compute-b", &orch, &[]);
    connected(&orch, 2);

    let mut job = typed("service", BUSY, json!({}));
    job["Name"] = json!("svc");
    job["Count"] = json!(2);
    let id = orch.submit(job.clone());
    wait_until("two service executions on distinct nodes", DEADLINE, || {
        let execs: Vec<Value> = executions(&orch.job(&id))
            .into_iter()
            .filter(live)
            .collect();
        (execs.len() == 2 && execs[0]["NodeID"] != execs[1]["NodeID"]).then_some(())
    });
    // BUSY exits after a few seconds; the service replaces both and keeps Count running.
    wait_until("service executions replaced", DEADLINE * 2, || {
        let execs = executions(&orch.job(&id));
        (execs.len() >= 3 && execs.iter().filter(|e| live(e)).count() <= 2).then_some(())
    });
    assert_eq!(state(&orch.job(&id)), "Running");

    // Same spec again: no changes.
    let (status, body) = orch.put("/api/v1/orchestrator/jobs", &json!({ "Job": job }));
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("no changes"), "{body}");

    // A changed spec under the same name is version 2 of the same job; version 1 executions are stopped.
    job["Tasks"][0]["Env"] = json!({"VERSION": "2"});
    job["Count"] = json!(1);
    let id2 = orch.submit(job);
    assert_eq!(id2, id);
    let body = wait_until("version 2 running", DEADLINE, || {
        let body = orch.job(&id);
        let execs = executions(&body);
        let v2_live = execs
            .iter()
            .filter(|e| e["JobVersion"] == 2 && live(e))
            .count();
        let v1_live = execs
            .iter()
            .filter(|e| e["JobVersion"] == 1 && live(e))
            .count();
        (v2_live == 1 && v1_live == 0).then_some(body)
    });
    assert_eq!(body["Job"]["Version"], 2, "{body:#}");
    assert!(history_text(&body).contains("version 2"), "{body:#}");

    stop(&orch, &id);
    let body = orch.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Stopped");
}

#[test]
fn priority_orders_queued_jobs_and_timeouts_fail_them_with_reasons() {
    let orch = orchestrator("orch", &[]);
    let _a = compute("compute-a", &orch, &["--cpu", "1"]);
    connected(&orch, 1);
    let one_cpu = |wat: &str, extra: Value| {
        let mut merged = json!({"Resources": {"CPU": "1"}});
        if let (Some(m), Some(e)) = (merged.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        wasm_job(wat, merged)
    };

    // The blocker holds the node's only CPU.
    let blocker = orch.submit(one_cpu(ENDLESS, json!({})));
    wait_until("blocker placed", DEADLINE, || {
        (state(&orch.job(&blocker)) == "Running").then_some(())
    });

    // Queued with a short QueueTimeout: fails naming the node's reason.
    let impatient = orch.submit(one_cpu(HELLO, json!({"Timeouts": {"QueueTimeout": 2}})));
    let body = orch.wait_terminal(&impatient, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    let msg = body["Job"]["State"]["Message"].as_str().unwrap_or_default();
    assert!(msg.contains("not enough free capacity"), "{msg}");

    // Low priority first, then high: both queue; when capacity frees the high one runs first.
    let mut low_job = one_cpu(HELLO, json!({"Timeouts": {"QueueTimeout": 120}}));
    low_job["Priority"] = json!(0);
    let low = orch.submit(low_job);
    let mut high_job = one_cpu(HELLO, json!({"Timeouts": {"QueueTimeout": 120}}));
    high_job["Priority"] = json!(10);
    let high = orch.submit(high_job);
    for id in [&low, &high] {
        wait_until("queued", DEADLINE, || {
            (state(&orch.job(id)) == "Queued").then_some(())
        });
    }
    stop(&orch, &blocker);
    let low_body = orch.wait_terminal(&low, DEADLINE * 2);
    let high_body = orch.wait_terminal(&high, DEADLINE);
    assert_eq!(state(&low_body), "Completed", "{low_body:#}");
    assert_eq!(state(&high_body), "Completed", "{high_body:#}");
    let created = |b: &Value| executions(b)[0]["CreateTime"].as_i64().unwrap_or(i64::MAX);
    assert!(
        created(&high_body) < created(&low_body),
        "the high-priority job should get the freed capacity first"
    );

    // TotalTimeout: the whole job's deadline stops a job that would run forever.
    let forever = orch.submit(one_cpu(ENDLESS, json!({"Timeouts": {"TotalTimeout": 3}})));
    let body = orch.wait_terminal(&forever, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    let msg = body["Job"]["State"]["Message"].as_str().unwrap_or_default();
    assert!(msg.contains("TotalTimeout"), "{msg}");
    assert!(executions(&body).iter().all(|e| !live(e)), "{body:#}");
}

#[test]
fn a_node_policy_declining_ops_and_service_jobs_reaches_the_user() {
    let orch = orchestrator("orch", &[]);
    let _strict = compute("compute-strict", &orch, &["--reject-networked-jobs"]);
    connected(&orch, 1);
    let networked = json!({"Network": {"Type": "Host"}});
    let reason = "this node does not run networked jobs";

    // Ops: every node declined, so the job fails with the node's reason.
    let ops = orch.submit(typed("ops", HELLO, networked.clone()));
    let body = orch.wait_terminal(&ops, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    let msg = body["Job"]["State"]["Message"].as_str().unwrap_or_default();
    assert!(msg.contains(reason), "{msg}");

    // Service: the decline is in the history and, while it cannot place, in the job's message.
    let svc = orch.submit(typed(
        "service",
        HELLO,
        json!({"Network": {"Type": "Host"}, "Timeouts": {"QueueTimeout": 60}}),
    ));
    let body = wait_until("service says why it waits", DEADLINE, || {
        let body = orch.job(&svc);
        body["Job"]["State"]["Message"]
            .as_str()
            .is_some_and(|m| m.contains(reason))
            .then_some(body)
    });
    assert!(history_text(&body).contains(reason), "{body:#}");
    stop(&orch, &svc);
    assert_eq!(state(&orch.wait_terminal(&svc, DEADLINE)), "Stopped");
}

#[test]
fn concurrent_submissions_never_place_more_than_a_node_can_hold() {
    // Each submission plans on the store's writer thread against the capacity every earlier decision holds,
    // the ones committed in the same batch included: eight jobs that each need the node's only CPU, sent at
    // once, put exactly one execution on it; the rest queue without an execution (none asked of the node and
    // refused for want of capacity).
    let orch = orchestrator("orch", &[]);
    let _a = compute("compute-a", &orch, &["--cpu", "1"]);
    connected(&orch, 1);
    let job = || {
        wasm_job(
            ENDLESS,
            json!({"Resources": {"CPU": "1"}, "Timeouts": {"QueueTimeout": 300}}),
        )
    };
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| orch.submit(job()))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("submit thread"))
            .collect()
    });
    // Every job is decided: one runs, the others wait.
    let bodies = wait_until("one job running and seven queued", DEADLINE, || {
        let bodies: Vec<Value> = ids.iter().map(|id| orch.job(id)).collect();
        let running = bodies.iter().filter(|b| state(b) == "Running").count();
        let queued = bodies.iter().filter(|b| state(b) == "Queued").count();
        (running + queued == ids.len()).then_some(bodies)
    });
    let execs: Vec<Value> = bodies.iter().flat_map(executions).collect();
    assert_eq!(execs.len(), 1, "one execution in all: {execs:#?}");
    assert!(live(&execs[0]), "{:#}", execs[0]);
    assert_eq!(
        bodies.iter().filter(|b| state(b) == "Running").count(),
        1,
        "{bodies:#?}"
    );
    // The capacity comes back with the blocker gone: the next queued job runs, still one at a time.
    let running = bodies
        .iter()
        .position(|b| state(b) == "Running")
        .expect("a running job");
    stop(&orch, &ids[running]);
    wait_until("a queued job takes the freed CPU", DEADLINE, || {
        let placed: Vec<Value> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != running)
            .flat_map(|(_, id)| executions(&orch.job(id)))
            .collect();
        (!placed.is_empty()).then(|| assert_eq!(placed.len(), 1, "{placed:#?}"))
    });
    for (i, id) in ids.iter().enumerate() {
        if i != running {
            stop(&orch, id);
        }
    }
}
