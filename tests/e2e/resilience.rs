//! Edge resilience with real processes: compute nodes and orchestrators killed mid-job, links cut for a short
//! and a long outage (the compute node runs in its own network namespace behind a veth pair; the cut is an
//! iptables DROP inside that namespace), and a reboot while offline. Every test checks that no job is lost and
//! no result is duplicated: one Completed execution per partition and one result from `GET …/results`.
//!
//! Jobs here wait for a gate file (a `local` input bound into the task as it is), so the test decides when
//! they finish instead of racing a timer.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cluster::{compute, orchestrator};
use crate::harness::{Cod, DEADLINE, free_port, state, wait_until, wasm_job};

/// Polls for `gate/open` (the root preopen is fd 3) every 20 ms; when it exists, prints "gate opened" and exits 0.
const GATE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "gate/open")
  (data (i32.const 600) "gate opened\n")
  (func (export "_start")
    ;; a 20 ms relative monotonic clock subscription at 0 (events at 64, count at 128)
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 20000000))
    (block $open (loop $wait
      (br_if $open (i32.eqz (call $path_open (i32.const 3) (i32.const 0) (i32.const 512) (i32.const 9)
                                             (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 700))))
      (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $wait)))
    (i32.store (i32.const 256) (i32.const 600))
    (i32.store (i32.const 260) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 256) (i32.const 1) (i32.const 264)))))
"#;

const RUNNING: u64 = 6;
const COMPLETED: u64 = 9;
const FAILED: u64 = 10;
const CANCELLED: u64 = 11;

/// A directory holding the gate; `open` lets every job waiting on it finish.
struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Gate {
        let dir = tempfile::Builder::new()
            .prefix("cod-gate-")
            .tempdir()
            .expect("tempdir");
        Gate { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The compute flag that lets jobs read the gate.
    fn allow(&self) -> String {
        format!("{}/**:ro", self.path().display())
    }

    fn job(&self) -> Value {
        let input = json!([{"Target": "/gate", "Source": {"Type": "local", "Params": {"SourcePath": self.path().display().to_string()}}}]);
        wasm_job(GATE, json!({"InputSources": input}))
    }

    fn open(&self) {
        std::fs::write(self.path().join("open"), b"").expect("open the gate");
    }
}

/// A network namespace joined to the host by a veth pair on 10.231.`n`.0/30 (host .1, namespace .2). The whole
/// 10.231.0.0/16 gets an `unreachable` route on the host first, so a mistake never leaves the machine (the
/// connected /30 is more specific and still works). Dropping it deletes the namespace, which takes its end of
/// the veth pair (and so the host's end) and its iptables rules with it.
struct Island {
    ns: String,
    host_if: String,
    host_ip: String,
}

impl Island {
    fn create(n: u8, tag: &str) -> Island {
        let ns = format!("cod-{tag}");
        let host_if = format!("cod{tag}h");
        let ns_if = format!("cod{tag}n");
        let host_ip = format!("10.231.{n}.1");
        let ns_ip = format!("10.231.{n}.2");
        // The guard route stays: other tests may be using the range, and it only blocks what must not leave.
        run(&["ip", "route", "replace", "unreachable", "10.231.0.0/16"]);
        // Leftovers of a killed run of this test.
        quiet(&["ip", "netns", "del", &ns]);
        quiet(&["ip", "link", "del", &host_if]);
        let island = Island {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        run(&["ip", "netns", "add", &ns]);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["ip", "link", "set", &ns_if, "netns", &ns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        run(&["ip", "-n", &ns, "link", "set", &ns_if, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        island
    }

    /// The orchestrator's listen address on the host side.
    fn listen(&self) -> String {
        format!("/ip4/{}/tcp/{}", self.host_ip, free_port())
    }

    /// What compute nodes in the namespace run under.
    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns]
    }

    /// Cuts the link: every packet in or out of the namespace is dropped, loopback aside (no resets: a real
    /// outage). The rules live in the namespace and go with it.
    fn cut(&self) {
        let ns = self.ns.as_str();
        for rule in [
            ["INPUT", "-i", "lo", "-j", "ACCEPT"].as_slice(),
            &["INPUT", "-j", "DROP"],
            &["OUTPUT", "-o", "lo", "-j", "ACCEPT"],
            &["OUTPUT", "-j", "DROP"],
        ] {
            let mut args = vec!["ip", "netns", "exec", ns, "iptables", "-A"];
            args.extend_from_slice(rule);
            run(&args);
        }
    }

    /// Restores the link.
    fn heal(&self) {
        run(&["ip", "netns", "exec", &self.ns, "iptables", "-F"]);
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        quiet(&["ip", "netns", "del", &self.ns]);
        quiet(&["ip", "link", "del", &self.host_if]);
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (needs root, iproute2 and iptables)"));
    assert!(status.success(), "{args:?} failed (needs root)");
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn executions(body: &Value) -> Vec<Value> {
    body["Executions"]["Items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn history(body: &Value) -> Vec<String> {
    body["History"]["Items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|h| h["Event"]["Message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// No job lost, no result duplicated: the job completed, each of its `count` partitions has exactly one
/// Completed execution, and the results endpoint lists exactly `count` results.
fn assert_exactly_once(orch: &Cod, id: &str, count: u64) -> Value {
    let body = orch.job(id);
    assert_eq!(state(&body), "Completed", "{body:#}");
    for partition in 0..count {
        let completed = executions(&body)
            .iter()
            .filter(|e| {
                e["PartitionIndex"] == partition && e["ComputeState"]["StateType"] == COMPLETED
            })
            .count();
        assert_eq!(completed, 1, "partition {partition}: {body:#}");
    }
    let (status, results) = orch.get(&format!("/api/v1/orchestrator/jobs/{id}/results"));
    assert_eq!(status, 200, "{results}");
    assert_eq!(
        results["Items"].as_array().map(Vec::len),
        Some(count as usize),
        "{results:#}"
    );
    body
}

fn node_state(orch: &Cod, node_id: &str) -> Value {
    let (_, body) = orch.get(&format!("/api/v1/orchestrator/nodes/{node_id}"));
    body["Node"].clone()
}

fn wait_connection(orch: &Cod, node: &Cod, connection: &str) {
    wait_until(&format!("{} {connection}", node.name), DEADLINE, || {
        (node_state(orch, &node.node_id)["Connection"] == connection).then_some(())
    });
}

/// Waits until the job has an execution in `state_type` and returns it.
fn wait_execution(orch: &Cod, id: &str, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, DEADLINE, || {
        executions(&orch.job(id)).into_iter().find(|e| pick(e))
    })
}

fn node_args<'a>(gate: &'a str, orch_addr: &'a str) -> Vec<&'a str> {
    vec![
        "--compute",
        "--orchestrators",
        orch_addr,
        "--allow-listed-local-paths",
        gate,
    ]
}

/// An orchestrator on the host side of island `n` (with the given `--disconnect-timeout` and
/// `--node-lost-after`) and a compute node inside the island, connected, allowed to read the gate.
struct Outage {
    island: Island,
    orch: Cod,
    gate: Gate,
    allow: String,
    edge: Cod,
}

fn outage(n: u8, tag: &str, disconnect_timeout: &str, lost_after: &str) -> Outage {
    let island = Island::create(n, tag);
    let listen = island.listen();
    let orch = orchestrator(
        &format!("orch-{tag}"),
        &[
            "--listen",
            &listen,
            "--disconnect-timeout",
            disconnect_timeout,
            "--node-lost-after",
            lost_after,
        ],
    );
    let gate = Gate::new();
    let allow = gate.allow();
    let edge = Cod::start_wrapped(
        &format!("edge-{tag}"),
        &island.wrapper(),
        &node_args(&allow, &orch.p2p[0]),
    );
    wait_connection(&orch, &edge, "CONNECTED");
    Outage {
        island,
        orch,
        gate,
        allow,
        edge,
    }
}

/// Submits `job` and waits until an execution of it runs on `node` (any node when `None`).
fn submit_running(orch: &Cod, job: Value, node: Option<&Cod>) -> String {
    let id = orch.submit(job);
    wait_execution(orch, &id, "execution running", |e| {
        node.is_none_or(|n| e["NodeID"] == n.node_id.as_str())
            && e["ComputeState"]["StateType"] == RUNNING
    });
    id
}

#[test]
fn a_short_outage_changes_nothing_the_same_execution_delivers_once() {
    let Outage {
        island,
        orch,
        gate,
        edge: node,
        ..
    } = outage(1, "short", "2s", "10m");
    let id = submit_running(&orch, gate.job(), None);

    island.cut();
    wait_connection(&orch, &node, "DISCONNECTED");
    // Finishes and publishes while offline; the report waits in the node's outbox.
    gate.open();
    wait_until("the offline node finished", DEADLINE, || {
        node.log().contains("execution completed").then_some(())
    });
    island.heal();

    orch.wait_terminal(&id, DEADLINE * 2);
    let body = assert_exactly_once(&orch, &id, 1);
    assert_eq!(
        executions(&body).len(),
        1,
        "no execution was replaced: {body:#}"
    );
    wait_connection(&orch, &node, "CONNECTED");
}

#[test]
fn a_long_outage_moves_the_work_and_the_late_result_is_discarded() {
    let Outage {
        island,
        orch,
        gate,
        allow,
        edge,
    } = outage(2, "long", "1s", "3s");
    let id = submit_running(&orch, gate.job(), Some(&edge));
    // The second node joins only now, so the first placement was on the edge node.
    let spare = compute("spare-long", &orch, &["--allow-listed-local-paths", &allow]);
    wait_connection(&orch, &spare, "CONNECTED");

    island.cut();
    // Lost after NodeLostAfter: its execution fails and the partition is placed on the spare node.
    let replacement = wait_execution(&orch, &id, "replacement running on the spare node", |e| {
        e["NodeID"] == spare.node_id.as_str() && e["ComputeState"]["StateType"] == RUNNING
    });
    let lost = node_state(&orch, &edge.node_id);
    assert_eq!(lost["Connection"], "DISCONNECTED", "{lost:#}");
    assert!(
        lost["ConnectionState"]["LastError"]
            .as_str()
            .unwrap_or_default()
            .starts_with("lost:"),
        "{lost:#}"
    );

    // Both finish: the spare at once, the edge node offline (its result waits in its outbox).
    gate.open();
    orch.wait_terminal(&id, DEADLINE);
    wait_until("the offline node finished", DEADLINE, || {
        edge.log().contains("execution completed").then_some(())
    });
    island.heal();
    // The late result arrives and is discarded: the edge execution ends superseded.
    let late = wait_execution(&orch, &id, "the late result to be settled", |e| {
        e["NodeID"] == edge.node_id.as_str() && e["ComputeState"]["StateType"] == CANCELLED
    });
    assert!(
        late["ComputeState"]["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("superseded"),
        "{late:#}"
    );
    let body = assert_exactly_once(&orch, &id, 1);
    let done: Vec<Value> = executions(&body)
        .into_iter()
        .filter(|e| e["ComputeState"]["StateType"] == COMPLETED)
        .collect();
    assert_eq!(done[0]["ID"], replacement["ID"], "{body:#}");
    let history = history(&body);
    for needle in [
        "lost: disconnected for longer than NodeLostAfter",
        "superseded",
    ] {
        assert!(
            history.iter().any(|h| h.contains(needle)),
            "{needle}: {history:#?}"
        );
    }
}

#[test]
fn a_late_result_is_kept_and_the_unfinished_replacement_stopped() {
    let Outage {
        island,
        orch,
        gate: edge_gate,
        allow,
        edge,
    } = outage(3, "keep", "1s", "3s");
    // The frozen spare node is lost too before the edge node is back: the job must wait for a node, not fail.
    let mut job = edge_gate.job();
    job["Tasks"][0]["Timeouts"] = json!({"QueueTimeout": 600});
    let id = submit_running(&orch, job, Some(&edge));
    let spare = compute("spare-keep", &orch, &["--allow-listed-local-paths", &allow]);
    wait_connection(&orch, &spare, "CONNECTED");
    island.cut();
    let replacement = wait_execution(&orch, &id, "replacement running on the spare node", |e| {
        e["NodeID"] == spare.node_id.as_str() && e["ComputeState"]["StateType"] == RUNNING
    });
    // Freeze the spare node (its replacement cannot finish), let the edge node finish offline, then heal.
    spare.signal("STOP");
    edge_gate.open();
    wait_until("the offline node finished", DEADLINE, || {
        edge.log().contains("execution completed").then_some(())
    });
    island.heal();
    let body = orch.wait_terminal(&id, DEADLINE);
    let kept: Vec<Value> = executions(&body)
        .into_iter()
        .filter(|e| e["ComputeState"]["StateType"] == COMPLETED)
        .collect();
    assert_eq!(kept.len(), 1, "{body:#}");
    assert_eq!(kept[0]["NodeID"], edge.node_id.as_str(), "{body:#}");
    let stopped = executions(&body)
        .into_iter()
        .find(|e| e["ID"] == replacement["ID"])
        .expect("replacement");
    assert_eq!(
        stopped["DesiredState"]["StateType"], 2,
        "asked to stop: {body:#}"
    );
    // The spare wakes up; whatever it reports (cancelled, or a result that lost the race) changes nothing.
    spare.signal("CONT");
    wait_until("the replacement ended", DEADLINE, || {
        executions(&orch.job(&id))
            .into_iter()
            .find(|e| e["ID"] == replacement["ID"])
            .filter(|e| {
                [FAILED, CANCELLED].contains(&e["ComputeState"]["StateType"].as_u64().unwrap_or(0))
            })
    });
    let body = assert_exactly_once(&orch, &id, 1);
    let history = history(&body);
    assert!(
        history.iter().any(|h| h.contains("late result")),
        "{history:#?}"
    );
    // The replacement was stopped because the late result won, or (if the frozen spare was lost first) failed
    // with its node.
    let spare_lost = format!("node {} lost", spare.node_id);
    assert!(
        history
            .iter()
            .any(|h| h.contains("stopping execution") || h.contains(&spare_lost)),
        "{history:#?}"
    );
}

#[test]
fn a_node_rebooted_while_offline_resumes_and_reports_once() {
    let Outage {
        island,
        orch,
        gate,
        edge: mut node,
        ..
    } = outage(4, "boot", "2s", "10m");
    let id = submit_running(&orch, gate.job(), None);

    island.cut();
    node.kill9();
    wait_connection(&orch, &node, "DISCONNECTED");
    node.restart();
    wait_until("the execution resumed offline", DEADLINE, || {
        node.log()
            .contains("resuming an execution accepted before the restart")
            .then_some(())
    });
    gate.open();
    wait_until("the offline node finished", DEADLINE, || {
        node.log().contains("execution completed").then_some(())
    });
    island.heal();
    orch.wait_terminal(&id, DEADLINE * 2);
    let body = assert_exactly_once(&orch, &id, 1);
    assert_eq!(executions(&body).len(), 1, "{body:#}");
}

#[test]
fn a_compute_node_killed_mid_job_is_lost_and_its_work_moves() {
    let orch = orchestrator(
        "orch-kill",
        &["--disconnect-timeout", "1s", "--node-lost-after", "2s"],
    );
    let gate = Gate::new();
    let allow = gate.allow();
    let mut first = compute("kill-first", &orch, &["--allow-listed-local-paths", &allow]);
    wait_connection(&orch, &first, "CONNECTED");
    let id = orch.submit(gate.job());
    let doomed = wait_execution(&orch, &id, "execution running", |e| {
        e["ComputeState"]["StateType"] == RUNNING
    });
    let second = compute(
        "kill-second",
        &orch,
        &["--allow-listed-local-paths", &allow],
    );
    wait_connection(&orch, &second, "CONNECTED");
    first.kill9();
    wait_execution(&orch, &id, "replacement on the second node", |e| {
        e["NodeID"] == second.node_id.as_str() && e["ComputeState"]["StateType"] == RUNNING
    });
    gate.open();
    orch.wait_terminal(&id, DEADLINE);
    // The killed node comes back with the execution it accepted: it is stopped at the handshake, or its result
    // (if it finished first) is discarded.
    first.restart();
    wait_until("the old execution settled", DEADLINE, || {
        let body = orch.job(&id);
        history(&body)
            .iter()
            .any(|h| {
                h.contains(&format!(
                    "still runs execution {}",
                    doomed["ID"].as_str().unwrap_or("?")
                )) || h.contains("superseded")
            })
            .then_some(())
    });
    assert_exactly_once(&orch, &id, 1);
    // The cluster takes new work.
    let next = orch.submit(gate.job());
    orch.wait_terminal(&next, DEADLINE);
    assert_exactly_once(&orch, &next, 1);
}

#[test]
fn an_orchestrator_killed_mid_job_completes_it_once_after_restart() {
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut orch = orchestrator("orch-restart", &["--listen", &listen]);
    let gate = Gate::new();
    let allow = gate.allow();
    let node = compute(
        "orch-restart-node",
        &orch,
        &["--allow-listed-local-paths", &allow],
    );
    wait_connection(&orch, &node, "CONNECTED");
    let id = orch.submit(gate.job());
    wait_execution(&orch, &id, "execution running", |e| {
        e["ComputeState"]["StateType"] == RUNNING
    });
    orch.kill9();
    gate.open();
    wait_until(
        "the node finished while its orchestrator was down",
        DEADLINE,
        || node.log().contains("execution completed").then_some(()),
    );
    orch.restart();
    orch.wait_terminal(&id, DEADLINE);
    let body = assert_exactly_once(&orch, &id, 1);
    assert_eq!(executions(&body).len(), 1, "{body:#}");
}

#[test]
fn a_node_that_lost_its_state_has_its_forgotten_work_placed_again() {
    let orch = orchestrator(
        "orch-wipe",
        &["--disconnect-timeout", "2s", "--node-lost-after", "10m"],
    );
    let gate = Gate::new();
    let allow = gate.allow();
    let mut node = compute("wiped", &orch, &["--allow-listed-local-paths", &allow]);
    wait_connection(&orch, &node, "CONNECTED");
    let id = orch.submit(gate.job());
    let forgotten = wait_execution(&orch, &id, "execution running", |e| {
        e["ComputeState"]["StateType"] == RUNNING
    });
    // The board's storage is replaced: everything but its identity is gone.
    node.kill9();
    for entry in std::fs::read_dir(node.dir.join("data")).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "identity.key") {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("wipe");
            } else {
                std::fs::remove_file(&path).expect("wipe");
            }
        }
    }
    node.restart();
    // The reconciliation fails the execution the node no longer has and places the partition again, on the
    // same node (it is not to blame).
    let again = wait_execution(&orch, &id, "the partition placed again", |e| {
        e["ID"] != forgotten["ID"] && e["NodeID"] == node.node_id.as_str()
    });
    gate.open();
    orch.wait_terminal(&id, DEADLINE);
    let body = assert_exactly_once(&orch, &id, 1);
    let first = executions(&body)
        .into_iter()
        .find(|e| e["ID"] == forgotten["ID"])
        .expect("first execution");
    assert_eq!(first["ComputeState"]["StateType"], FAILED, "{body:#}");
    assert!(
        first["ComputeState"]["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("no longer has execution"),
        "{body:#}"
    );
    assert_ne!(again["ID"], forgotten["ID"]);
    let history = history(&body);
    assert!(
        history
            .iter()
            .any(|h| h.contains("no longer has execution")),
        "{history:#?}"
    );
}
