//! A fleet on one orchestrator: hundreds of compute nodes simulated over the real protocol (bench/fleet_sim.rs:
//! own identity and TCP + Noise + Yamux connection per node) in two child processes, against a real
//! `cod serve --orchestrator`. The simulator processes are this test binary run again with only
//! [`simulator_process`] selected, so CI builds nothing extra.

#[path = "../../bench/fleet_sim.rs"]
mod fleet_sim;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fixtures::HELLO;
use crate::harness::{Cod, state, wait_until, wasm_job};
use fleet_sim::SimConfig;

/// Nodes per simulator process, and processes.
const PER_PROCESS: usize = 100;
const PROCESSES: usize = 2;

/// Not a test: the entry point of the simulator processes [`a_fleet_connects_runs_a_spread_job_and_loses_a_process`]
/// starts. It does nothing unless their settings are in the environment.
#[test]
#[ignore = "entry point of the fleet test's simulator processes, which select it themselves"]
fn simulator_process() {
    if let Some(config) = SimConfig::from_env() {
        fleet_sim::run_process(config);
    }
}

/// A simulator process, killed (SIGKILL) on drop.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim(config: &SimConfig) -> Sim {
    let child = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "fleet::simulator_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(fleet_sim::ENV, config.to_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start simulator");
    Sim(child)
}

/// Node connection states by simulator group (the `fleet` label), e.g. {"sim0": {"CONNECTED": 100}}.
fn by_group(orch: &Cod) -> HashMap<String, HashMap<String, usize>> {
    let (status, body) = orch.get("/api/v1/orchestrator/nodes?limit=0");
    assert_eq!(status, 200, "{body}");
    let mut groups: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for n in body["Nodes"].as_array().expect("nodes") {
        let group = n["Info"]["Labels"]["fleet"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let mut key = n["Connection"].as_str().unwrap_or("?").to_owned();
        if n["Membership"] != "APPROVED" {
            key.push_str("/not approved");
        }
        *groups.entry(group).or_default().entry(key).or_default() += 1;
    }
    groups
}

fn count(groups: &HashMap<String, HashMap<String, usize>>, group: &str, state: &str) -> usize {
    groups
        .get(group)
        .and_then(|g| g.get(state))
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_fleet_connects_runs_a_spread_job_and_loses_a_process() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("orchestrator.yaml");
    // Heartbeats every 500 ms, disconnect after 5 s of silence: a node marked disconnected while its process
    // lives is a failure of the orchestrator, not of a slow CI machine.
    std::fs::write(&config, "Orchestrator:\n  DisconnectTimeout: 5s\n").expect("config");
    let orch = Cod::start(
        "fleet-orch",
        &[
            "--orchestrator",
            "--config",
            config.to_str().expect("utf-8 path"),
        ],
    );
    let mut sims: Vec<Sim> = (0..PROCESSES)
        .map(|i| {
            start_sim(&SimConfig {
                orchestrator: orch.p2p[0].clone(),
                nodes: PER_PROCESS,
                heartbeat: Duration::from_millis(500),
                connect_rate: 200,
                group: format!("sim{i}"),
            })
        })
        .collect();

    // Every node shows up connected and approved.
    wait_until(
        "every simulated node connected and approved",
        Duration::from_secs(120),
        || {
            let groups = by_group(&orch);
            (0..PROCESSES)
                .all(|i| count(&groups, &format!("sim{i}"), "CONNECTED") == PER_PROCESS)
                .then_some(())
        },
    );

    // A job with Count 50 completes across them: one completed execution per partition, each on its own node.
    let mut job = wasm_job(HELLO, json!({}));
    job["Count"] = json!(50);
    let id = orch.submit(job);
    let body = orch.wait_terminal(&id, Duration::from_secs(120));
    assert_eq!(state(&body), "Completed", "{body:#}");
    let execs = body["Executions"]["Items"].as_array().expect("executions");
    let completed: Vec<&Value> = execs
        .iter()
        .filter(|e| e["ComputeState"]["StateType"] == 9)
        .collect();
    assert_eq!(completed.len(), 50, "{body:#}");
    let partitions: HashSet<u64> = completed
        .iter()
        .map(|e| e["PartitionIndex"].as_u64().expect("partition"))
        .collect();
    assert_eq!(partitions.len(), 50, "one result per partition: {body:#}");
    let nodes: HashSet<&str> = completed
        .iter()
        .map(|e| e["NodeID"].as_str().expect("node id"))
        .collect();
    assert_eq!(nodes.len(), 50, "each partition on its own node: {body:#}");

    // Killing one simulator process disconnects exactly its nodes.
    drop(sims.remove(0));
    wait_until(
        "the killed process's nodes disconnected, the others still connected",
        Duration::from_secs(60),
        || {
            let groups = by_group(&orch);
            (count(&groups, "sim0", "DISCONNECTED") == PER_PROCESS
                && count(&groups, "sim1", "CONNECTED") == PER_PROCESS)
                .then_some(())
        },
    );
}
