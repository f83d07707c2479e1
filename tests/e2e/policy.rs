//! The compute policy and `env:` secrets end to end: real nodes with a policy refuse jobs with a reason the
//! user sees (the job's final message and `cod job describe`), and a secret the node resolves reaches the job
//! but never its output, the API, the published result or the node's log.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fixtures::{ENDLESS, HELLO};
use crate::harness::{Cod, DEADLINE, fetch_result, state, wait_until, wasm_job};

/// The value of the node's secret: long enough to be scrubbed, unlikely anywhere by chance.
const SECRET: &str = "s3cr3t-Edge-Token-7f31c9";

/// Submits `job`, waits for it to end and returns the GET job body (executions and history included).
fn run(cod: &Cod, job: Value) -> (String, Value) {
    let id = cod.submit(job);
    let body = cod.wait_terminal(&id, DEADLINE);
    (id, body)
}

/// The job's final message (`Job.State.Message`), where a job no node would run says why.
fn final_message(body: &Value) -> String {
    body["Job"]["State"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the job failed and that `reason` is in its final message and in `cod job describe`.
fn assert_refused(cod: &Cod, id: &str, body: &Value, reason: &str) {
    assert_eq!(state(body), "Failed", "{body:#}");
    let message = final_message(body);
    assert!(
        message.contains(reason),
        "{reason:?} missing from {message:?}"
    );
    let described = cod.cli_ok(&["job", "describe", id]);
    assert!(
        described.contains(reason),
        "{reason:?} missing from cod job describe:\n{described}"
    );
}

#[test]
fn a_disabled_engine_fails_the_job_with_the_reason() {
    let cod = Cod::start("policy-engine", &["--disabled-engines", "wasm"]);
    let (id, body) = run(&cod, wasm_job(HELLO, json!({})));
    assert_refused(
        &cod,
        &id,
        &body,
        "engine \"wasm\" is disabled on this node (Engines.Disabled)",
    );
}

#[test]
fn a_job_over_the_per_job_maximum_is_refused() {
    let cod = Cod::start("policy-max", &["--max-job-memory", "32MiB"]);
    let (id, body) = run(
        &cod,
        wasm_job(HELLO, json!({"Resources": {"Memory": "64MiB"}})),
    );
    assert_refused(&cod, &id, &body, "per-job");
    // Within the maximum, the same node runs it.
    let (_, body) = run(
        &cod,
        wasm_job(HELLO, json!({"Resources": {"Memory": "16MiB"}})),
    );
    assert_eq!(state(&body), "Completed", "{body:#}");
}

#[test]
fn a_networked_job_is_refused() {
    let cod = Cod::start("policy-net", &["--reject-networked-jobs"]);
    let (id, body) = run(&cod, wasm_job(HELLO, json!({"Network": {"Type": "Host"}})));
    assert_refused(&cod, &id, &body, "this node does not run networked jobs");
}

/// A node that keeps `SECRET` in `EDGE_TOKEN` and lets jobs read `EDGE_*`.
fn secret_node(name: &str, extra: &[&str]) -> Cod {
    let mut args = vec!["--env-allow-list", "EDGE_*"];
    args.extend_from_slice(extra);
    Cod::start_with_env(
        name,
        &args,
        &[("EDGE_TOKEN", SECRET), ("OTHER_SECRET", SECRET)],
    )
}

/// Every file under `dir`, as text, with its path.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text =
                    String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned();
                out.push((path.display().to_string(), text));
            }
        }
    }
    out
}

/// Asserts `SECRET` is nowhere the job's user or the node's operator can see it.
fn assert_secret_nowhere(cod: &Cod, id: &str, body: &Value) {
    assert!(
        !body.to_string().contains(SECRET),
        "the API shows the secret: {body:#}"
    );
    let described = cod.cli_ok(&["job", "describe", id, "--output", "json"]);
    assert!(!described.contains(SECRET), "cod job describe shows it");
    let logs = cod.cli_ok(&["job", "logs", id]);
    assert!(!logs.contains(SECRET), "cod job logs shows it: {logs}");
    let log = cod.log();
    assert!(!log.contains(SECRET), "the node's log has the secret");
}

#[test]
fn an_allowed_env_secret_reaches_the_job_but_not_its_output() {
    let cod = secret_node("policy-secret", &[]);
    let (id, body) = run(
        &cod,
        wasm_job(
            HELLO,
            json!({"Env": {"TOKEN": "env:EDGE_TOKEN", "PLAIN": "visible-literal"}}),
        ),
    );
    assert_eq!(state(&body), "Completed", "{body:#}");
    let stdout = body["Executions"]["Items"][0]["RunOutput"]["Stdout"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // HELLO prints its environment: TOKEN held the secret (an unresolved reference would print
    // `TOKEN=env:EDGE_TOKEN`, and only the secret itself is masked), and literals stay as they are.
    assert!(stdout.contains("TOKEN=***\n"), "{stdout}");
    assert!(stdout.contains("PLAIN=visible-literal\n"), "{stdout}");
    assert!(!stdout.contains("env:EDGE_TOKEN"), "{stdout}");
    // The spec keeps the reference: that is all the orchestrator ever had.
    assert_eq!(
        body["Job"]["Tasks"][0]["Env"]["TOKEN"], "env:EDGE_TOKEN",
        "{body:#}"
    );
    let result = &body["Executions"]["Items"][0]["PublishedResult"];
    let dest = tempfile::tempdir().expect("tmp");
    fetch_result(result, dest.path());
    let files = files_under(dest.path());
    assert!(
        files
            .iter()
            .any(|(p, t)| p.ends_with("stdout") && t.contains("TOKEN=***")),
        "{files:?}"
    );
    for (path, text) in &files {
        assert!(
            !text.contains(SECRET),
            "the published {path} has the secret"
        );
    }
    assert_secret_nowhere(&cod, &id, &body);
}

#[test]
fn env_references_outside_the_allow_list_or_unset_are_refused() {
    let cod = secret_node("policy-secret-refused", &[]);
    let (id, body) = run(
        &cod,
        wasm_job(HELLO, json!({"Env": {"TOKEN": "env:OTHER_SECRET"}})),
    );
    assert_refused(
        &cod,
        &id,
        &body,
        "env var OTHER_SECRET is not in this node's Compute.Env.AllowList",
    );
    let (id, body) = run(
        &cod,
        wasm_job(HELLO, json!({"Env": {"TOKEN": "env:EDGE_UNSET"}})),
    );
    assert_refused(&cod, &id, &body, "env var EDGE_UNSET is allowed");
    assert!(final_message(&body).contains("not set"), "{body:#}");
    assert_secret_nowhere(&cod, &id, &body);
}

#[test]
fn a_job_accepted_before_a_stricter_restart_fails_with_the_policy_reason() {
    let mut cod = Cod::start("policy-restart", &[]);
    let id = cod.submit(wasm_job(ENDLESS, json!({})));
    wait_until("the job to run", DEADLINE, || {
        (cod.job(&id)["Executions"]["Items"][0]["ComputeState"]["StateType"] == 6).then_some(())
    });
    // The node comes back with the engine turned off: the execution it accepted is checked again before it
    // runs again, and fails with the reason a bid would have given.
    cod.restart_with(&["--disabled-engines", "wasm"]);
    let body = cod.wait_terminal(&id, Duration::from_secs(60));
    assert_refused(&cod, &id, &body, "Engines.Disabled");
}

#[test]
fn the_policy_shows_in_the_agent_config_and_config_secrets_do_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "Compute:\n  Env: {{AllowList: [\"EDGE_*\"]}}\n  Policy:\n    ImageAllowList: [alpine]\n    \
             MaxJob: {{Memory: 256MiB}}\n  Docker:\n    Credentials:\n      registry.lan:5000: \
             {{Username: ci, Password: {SECRET}}}\nS3: {{AccessKeyID: AKIA1, SecretAccessKey: {SECRET}}}\n\
             Engines: {{Disabled: [docker]}}\nJobAdmissionControl: {{RejectNetworkedJobs: true}}\n"
        ),
    )
    .expect("write config");
    let cod = Cod::start(
        "policy-config",
        &["--config", config.to_str().expect("path")],
    );
    let (status, body) = cod.get("/api/v1/agent/config");
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains(SECRET),
        "the agent config shows a secret: {text}"
    );
    let c = &body["config"];
    assert_eq!(c["Compute"]["Env"]["AllowList"], json!(["EDGE_*"]), "{c:#}");
    assert_eq!(
        c["Compute"]["Policy"]["ImageAllowList"],
        json!(["alpine"]),
        "{c:#}"
    );
    assert_eq!(
        c["Compute"]["Policy"]["MaxJob"]["Memory"], "256MiB",
        "{c:#}"
    );
    assert_eq!(c["Engines"]["Disabled"], json!(["docker"]), "{c:#}");
    assert_eq!(
        c["JobAdmissionControl"]["RejectNetworkedJobs"], true,
        "{c:#}"
    );
    let shown = cod.cli_ok(&["agent", "config"]);
    assert!(
        !shown.contains(SECRET) && shown.contains("AllowList"),
        "{shown}"
    );
    assert!(
        !cod.log().contains(SECRET),
        "the node's log has a config secret"
    );
    // The per-job maximum is what the node advertises to the orchestrator.
    let (_, node) = cod.get(&format!("/api/v1/orchestrator/nodes/{}", cod.node_id));
    let text = node.to_string();
    assert!(text.contains(&(256u64 << 20).to_string()), "{node:#}");
}

#[cfg(feature = "executor-oci")]
mod docker {
    use serde_json::json;

    use super::{SECRET, assert_refused, assert_secret_nowhere, run, secret_node};
    use crate::harness::{DEADLINE, state, wait_until};
    use crate::registry::{PushOptions, TestRegistry};

    fn sh_job(image: &str, script: &str, env: serde_json::Value) -> serde_json::Value {
        json!({"Type": "batch", "Count": 1, "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "docker", "Params": {
                "Image": image, "Entrypoint": ["/bin/sh", "-c"], "Parameters": [script]}},
            "Publisher": {"Type": "local"},
            "Env": env,
            "Timeouts": {"ExecutionTimeout": 60}
        }]})
    }

    #[test]
    fn images_off_the_allow_list_are_refused_and_secrets_reach_containers() {
        let registry = TestRegistry::start();
        let allowed = registry.push_busybox("allowed/busybox", "1", &PushOptions::default());
        let other = registry.push_busybox("other/busybox", "1", &PushOptions::default());
        // `*` stays within one component: any loopback port, any repository under allowed/.
        let cod = secret_node(
            "policy-docker",
            &["--image-allow-list", "127.0.0.1:*/allowed/*"],
        );

        let (id, body) = run(&cod, sh_job(&other.reference, "echo hi", json!({})));
        assert_refused(&cod, &id, &body, "is not on this node's image allow-list");

        let script = "echo \"t=$TOKEN\"; echo \"len=${#TOKEN}\"; printf %s \"$TOKEN\" | sha256sum";
        let (id, body) = run(
            &cod,
            sh_job(
                &allowed.reference,
                script,
                json!({"TOKEN": "env:EDGE_TOKEN"}),
            ),
        );
        assert_eq!(state(&body), "Completed", "{body:#}");
        let stdout = body["Executions"]["Items"][0]["RunOutput"]["Stdout"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(SECRET.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(stdout.contains("t=***\n"), "{stdout}");
        assert!(
            stdout.contains(&format!("len={}\n", SECRET.len())),
            "{stdout}"
        );
        assert!(
            stdout.contains(&hash),
            "the container got the value itself: {stdout}"
        );
        assert_secret_nowhere(&cod, &id, &body);
    }

    #[test]
    fn live_output_of_a_running_container_masks_the_secret() {
        let registry = TestRegistry::start();
        let image = registry.push_busybox("allowed/busybox", "1", &PushOptions::default());
        let cod = secret_node("policy-live", &[]);
        // The secret is printed in two writes, so that a live read may see only its first part.
        let script = "printf 't=%s' \"${TOKEN%????????}\"; printf '%s\\n' \"${TOKEN#????????????????}\"; \
                      echo done-printing; sleep 30";
        let id = cod.submit(sh_job(
            &image.reference,
            script,
            json!({"TOKEN": "env:EDGE_TOKEN"}),
        ));
        let live = wait_until("live output", DEADLINE, || {
            let out = cod.cli_ok(&["job", "logs", &id]);
            out.contains("done-printing").then_some(out)
        });
        assert!(
            !live.contains(SECRET),
            "live output shows the secret: {live}"
        );
        assert!(live.contains("t=*"), "{live}");
        cod.cli_ok(&["job", "stop", &id]);
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_secret_nowhere(&cod, &id, &body);
    }
}
