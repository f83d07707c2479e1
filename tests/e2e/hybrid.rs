//! One hybrid node (orchestrator + compute in one process), the embedded default.

use serde_json::json;

use crate::fixtures::{ENDLESS, HELLO, MEMORY_BOMB};
use crate::harness::{Cod, DEADLINE, fetch_result, state, wait_until, wasm_job};

#[test]
fn wasm_job_runs_end_to_end_and_its_result_downloads() {
    let cod = Cod::start("hybrid", &[]);
    let job = wasm_job(
        HELLO,
        json!({"Env": {"GREETING": "hi"}, "Engine": {"Params": {"Parameters": ["a", "b"]}}}),
    );
    let id = cod.submit(job);
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let execs = body["Executions"]["Items"].as_array().expect("executions");
    assert_eq!(execs.len(), 1);
    let e = &execs[0];
    assert_eq!(
        e["ComputeState"]["StateType"], 9,
        "Completed is 9 in v1.6+ numbering"
    );
    assert_eq!(e["DesiredState"]["StateType"], 1);
    assert_eq!(e["NodeID"], cod.node_id.as_str());
    let stdout = e["RunOutput"]["Stdout"].as_str().expect("stdout");
    assert!(stdout.starts_with("hello a b\n"), "{stdout}");
    assert!(stdout.contains("GREETING=hi"), "{stdout}");
    assert!(
        stdout.contains(&format!("BACALHAU_JOB_ID={id}")),
        "{stdout}"
    );
    assert_eq!(e["RunOutput"]["stderr"], "warn\n");
    assert_eq!(e["RunOutput"]["ExitCode"], 0);

    let history = body["History"]["Items"].as_array().expect("history");
    let topics: Vec<&str> = history
        .iter()
        .filter_map(|h| h["Event"]["Topic"].as_str())
        .collect();
    for t in [
        "Submission",
        "Scheduling",
        "Running Execution",
        "Execution",
        "State Update",
    ] {
        assert!(topics.contains(&t), "missing {t} in {topics:?}");
    }

    let (status, results) = cod.get(&format!("/api/v1/orchestrator/jobs/{id}/results"));
    assert_eq!(status, 200);
    let items = results["Items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["Type"], "urlDownload");
    let dest = tempfile::tempdir().expect("tmp");
    fetch_result(&items[0], dest.path());
    let read = |p: &str| {
        std::fs::read_to_string(dest.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    assert!(read("stdout").starts_with("hello a b\n"));
    assert_eq!(read("stderr"), "warn\n");
    assert_eq!(read("exitCode"), "0");
    assert_eq!(read("outputs/out.txt"), "written\n");

    // The execution's folder is stripped once the result is recorded and published, and kept for the next
    // execution with nothing of this one's in it: no outputs, no inputs, empty stream files.
    let work = cod.dir.join("data/executions");
    let files_left = || {
        let mut kept = Vec::new();
        let mut stack = vec![work.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read the work dir") {
                let path = entry.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("meta");
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    kept.push((path, meta.len()));
                }
            }
        }
        kept
    };
    let kept = wait_until("work dir stripped", DEADLINE, || {
        let kept = files_left();
        kept.iter().all(|(_, len)| *len == 0).then_some(kept)
    });
    assert!(
        !kept.is_empty()
            && kept.iter().all(|(p, _)| ["stdout", "stderr", "exitCode"]
                .contains(&p.file_name().and_then(|n| n.to_str()).unwrap_or(""))),
        "a stripped folder keeps only its empty stream files: {kept:?}"
    );
}

/// The ready file promises a node that takes jobs: a hybrid writes it only once its compute half has joined,
/// on a fresh data dir and after a restart (where the orchestrator loads the node from its store as
/// disconnected). Asked the moment the file appears, with no waiting.
#[test]
fn a_hybrid_node_is_ready_only_once_its_compute_half_has_joined() {
    let mut cod = Cod::start("ready-joined", &[]);
    for round in ["fresh", "restarted"] {
        let (_, body) = cod.get("/api/v1/orchestrator/nodes");
        let nodes = body["Nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 1, "{round}: {body:#}");
        assert_eq!(nodes[0]["Connection"], "CONNECTED", "{round}: {body:#}");
        assert_eq!(nodes[0]["Membership"], "APPROVED", "{round}: {body:#}");
        if round == "fresh" {
            cod.restart();
        }
    }
    // No queueing: a job that found no node would fail at once.
    let id = cod.submit(wasm_job(HELLO, json!({})));
    assert_eq!(state(&cod.wait_terminal(&id, DEADLINE)), "Completed");
}

/// `RssFile` of a process, in KiB: the pages of files it has mapped (mostly its executable; LMDB's map too).
fn rss_file_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssFile")
}

#[test]
fn a_quiet_node_hands_back_its_code_mappings_and_still_runs_jobs() {
    let cod = Cod::start("trim", &[]);
    let after_start = rss_file_kib(cod.pid());
    // node/trim.rs: after a quiet 5-s window the node unmaps its executable's read-only mappings.
    let trimmed = wait_until("the quiet node to unmap most of its code", DEADLINE, || {
        let now = rss_file_kib(cod.pid());
        (now < after_start / 2).then_some(now)
    });
    eprintln!("RssFile {after_start} KiB after start, {trimmed} KiB once quiet");
    // The code comes back on use: a job runs end to end, and the node answers its API.
    let id = cod.submit(wasm_job(HELLO, json!({})));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert!(
        body["Executions"]["Items"][0]["RunOutput"]["Stdout"]
            .as_str()
            .is_some_and(|s| s.starts_with("hello")),
        "{body:#}"
    );
}

#[test]
fn non_zero_exit_is_recorded_not_an_error() {
    let cod = Cod::start("exit", &[]);
    let id = cod.submit(wasm_job(HELLO, json!({"Env": {"EXIT_CODE": "3"}})));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(body["Executions"]["Items"][0]["RunOutput"]["ExitCode"], 3);
}

#[test]
fn bad_jobs_fail_with_reasons_and_the_node_stays_healthy() {
    let cod = Cod::start("bad", &[]);

    // Malformed spec: 400 naming the fields, nothing stored.
    let (status, body) = cod.put(
        "/api/v1/orchestrator/jobs",
        &json!({"Job": {"Type": "batch", "Tasks": [{"Name": "", "Engine": {"Type": "wasm"}, "Timeouts": {"ExecutionTimeout": -1}}]}}),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["Message"].as_str().unwrap_or_default();
    for field in [
        "Tasks[0].Name",
        "Tasks[0].Engine.Params.EntryModule",
        "Tasks[0].Timeouts.ExecutionTimeout",
    ] {
        assert!(message.contains(field), "{field} not named in {body}");
    }
    let (_, list) = cod.get("/api/v1/orchestrator/jobs");
    assert_eq!(
        list["Items"].as_array().map(Vec::len),
        Some(0),
        "a rejected spec must not be stored"
    );

    // Unknown engine: accepted, then Failed with a reason naming it.
    let id = cod.submit(
        json!({"Type": "batch", "Tasks": [{"Name": "main", "Engine": {"Type": "flibble"}}]}),
    );
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Failed");
    assert!(
        body["Job"]["State"]["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("flibble"),
        "{body:#}"
    );

    // Not a WASM module.
    let mut job = wasm_job(HELLO, json!({}));
    job["Tasks"][0]["InputSources"][0]["Source"]["Params"]["URL"] =
        json!("data:application/wasm;base64,bm90IHdhc20=");
    let body = cod.wait_terminal(&cod.submit(job), DEADLINE);
    assert_eq!(state(&body), "Failed");
    let e = &body["Executions"]["Items"][0];
    assert_eq!(e["ComputeState"]["StateType"], 10, "{body:#}");
    assert!(
        e["ComputeState"]["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot run"),
        "{e:#}"
    );

    // Endless loop: stopped by its execution timeout.
    let body = cod.wait_terminal(
        &cod.submit(wasm_job(
            ENDLESS,
            json!({"Timeouts": {"ExecutionTimeout": 1}}),
        )),
        DEADLINE,
    );
    assert_eq!(state(&body), "Failed");
    let msg = body["Executions"]["Items"][0]["ComputeState"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("timed out"), "{msg}");

    // Memory bomb: stopped by its memory limit.
    let body = cod.wait_terminal(
        &cod.submit(wasm_job(
            MEMORY_BOMB,
            json!({"Resources": {"Memory": "4Mb"}}),
        )),
        DEADLINE,
    );
    assert_eq!(state(&body), "Failed");
    let msg = body["Executions"]["Items"][0]["ComputeState"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("memory"), "{msg}");

    // Still healthy: a good job runs.
    let body = cod.wait_terminal(&cod.submit(wasm_job(HELLO, json!({}))), DEADLINE);
    assert_eq!(state(&body), "Completed");
    let (status, _) = cod.get("/api/v1/agent/alive");
    assert_eq!(status, 200);
}

#[test]
fn stopping_a_running_job_cancels_its_execution() {
    let cod = Cod::start("stop", &[]);
    let id = cod.submit(wasm_job(ENDLESS, json!({})));
    wait_until("execution running", DEADLINE, || {
        let body = cod.job(&id);
        (body["Executions"]["Items"][0]["ComputeState"]["StateType"] == 6).then_some(())
    });
    let r = crate::harness::http()
        .delete(format!("{}/api/v1/orchestrator/jobs/{id}", cod.api))
        .json(&json!({"reason": "enough"}))
        .send()
        .expect("DELETE");
    assert_eq!(r.status().as_u16(), 200);
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Stopped");
    wait_until("execution cancelled", DEADLINE, || {
        (cod.job(&id)["Executions"]["Items"][0]["ComputeState"]["StateType"] == 11).then_some(())
    });
}

#[test]
fn local_inputs_need_the_allow_list_and_are_read_only() {
    let data = tempfile::tempdir().expect("tmp");
    std::fs::write(data.path().join("in.txt"), "payload").expect("write");
    let allowed = format!("{}:ro", data.path().display());
    let cod = Cod::start("local", &["--allow-listed-local-paths", &allowed]);
    let input = json!([{"Target": "/data", "Source": {"Type": "localDirectory", "Params": {"SourcePath": data.path().display().to_string()}}}]);
    let body = cod.wait_terminal(
        &cod.submit(wasm_job(HELLO, json!({"InputSources": input}))),
        DEADLINE,
    );
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("in.txt")).expect("read"),
        "payload"
    );
    assert!(
        !data.path().join("out.txt").exists(),
        "an input must not be writable"
    );

    let outside =
        json!([{"Target": "/data", "Source": {"Type": "local", "Params": {"SourcePath": "/etc"}}}]);
    let body = cod.wait_terminal(
        &cod.submit(wasm_job(HELLO, json!({"InputSources": outside}))),
        DEADLINE,
    );
    assert_eq!(state(&body), "Failed");
    let text = body.to_string();
    assert!(text.contains("not allowed"), "{body:#}");
}
