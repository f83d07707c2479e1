//! The `cod` CLI against a running node: Bacalhau's verbs end to end.

use std::path::Path;

use serde_json::Value;

use crate::fixtures::{ENDLESS, HELLO};
use crate::harness::{Cod, DEADLINE, wait_until, wasm_data_url, wasm_file};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/fixtures"))
}

/// The YAML job spec of the README's quick start, around the inline module.
fn hello_yaml() -> String {
    format!(
        "# A hello-world WASM job: the module travels inline (base64); its outputs folder is published by the\n\
         # node's local publisher. Submit it with `cod job run hello.yaml`.\n\
         Type: batch\n\
         Tasks:\n\
         \x20 - Name: main\n\
         \x20   Engine:\n\
         \x20     Type: wasm\n\
         \x20     Params:\n\
         \x20       EntryModule: /main.wasm\n\
         \x20       Parameters: [from, yaml]\n\
         \x20   Env: {{GREETING: hello}}\n\
         \x20   InputSources:\n\
         \x20     - Target: /main.wasm\n\
         \x20       Source: {{Type: inline, Params: {{URL: \"{}\"}}}}\n\
         \x20   ResultPaths: [{{Name: outputs, Path: /outputs}}]\n\
         \x20   Publisher: {{Type: local}}\n\
         \x20   Resources: {{Memory: 32Mb}}\n\
         \x20   Timeouts: {{ExecutionTimeout: 30}}\n",
        wasm_data_url(HELLO)
    )
}

/// The quick start in the README uses these committed files; they must stay what their sources say.
/// `COD_BLESS=1 cargo test --test e2e committed_fixtures` rewrites them.
#[test]
fn committed_fixtures_match_their_sources() {
    if std::env::var_os("COD_BLESS").is_some() {
        std::fs::write(
            fixtures().join("hello.wasm"),
            wat::parse_str(HELLO).expect("wat"),
        )
        .expect("write");
        std::fs::write(fixtures().join("hello.yaml"), hello_yaml()).expect("write");
    }
    let wasm = std::fs::read(fixtures().join("hello.wasm")).expect("hello.wasm");
    assert_eq!(
        wasm,
        wat::parse_str(HELLO).expect("wat"),
        "regenerate tests/e2e/fixtures/hello.wasm from fixtures::HELLO"
    );
    let spec = std::fs::read_to_string(fixtures().join("hello.yaml")).expect("hello.yaml");
    assert_eq!(
        spec,
        hello_yaml(),
        "regenerate tests/e2e/fixtures/hello.yaml"
    );
}

#[test]
fn wasm_run_then_get_describe_list_history_logs() {
    let cod = Cod::start("cli", &[]);
    let module = fixtures().join("hello.wasm");
    let id = cod.cli_ok(&[
        "wasm",
        "run",
        "-e",
        "GREETING=cli",
        "--id-only",
        module.to_str().expect("path"),
        "x",
        "y",
    ]);
    let id = id.trim().to_owned();
    assert!(id.starts_with("j-"), "{id}");

    let out = cod.dir.join("out");
    cod.cli_ok(&[
        "job",
        "get",
        &id,
        "--output-dir",
        out.to_str().expect("path"),
    ]);
    let stdout = std::fs::read_to_string(out.join("stdout")).expect("stdout");
    assert!(
        stdout.starts_with("hello x y\n") && stdout.contains("GREETING=cli"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("exitCode"))
            .expect("exitCode")
            .trim(),
        "0"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("outputs/out.txt")).expect("out.txt"),
        "written\n"
    );

    let described: Value =
        serde_json::from_str(&cod.cli_ok(&["job", "describe", &id, "--output", "json"]))
            .expect("json");
    assert_eq!(
        described["Job"]["State"]["StateType"], "Completed",
        "{described:#}"
    );
    let yaml = cod.cli_ok(&["job", "describe", &id, "--output", "yaml"]);
    assert!(yaml.contains("Completed"), "{yaml}");

    let list = cod.cli_ok(&["job", "list"]);
    assert!(list.contains(&id[..10]), "{list}");
    let history = cod.cli_ok(&["job", "history", &id]);
    assert!(
        history.contains("Submission") && history.contains("Completed"),
        "{history}"
    );
    let executions = cod.cli_ok(&["job", "executions", &id]);
    assert!(executions.contains("Completed"), "{executions}");
    let logs = cod.cli_ok(&["job", "logs", &id]);
    assert!(logs.contains("hello x y"), "{logs}");

    let nodes = cod.cli_ok(&["node", "list"]);
    assert!(nodes.contains(&cod.node_id[..8]), "{nodes}");
    let agent_node = cod.cli_ok(&["agent", "node"]);
    assert!(
        agent_node.contains(&cod.node_id) && agent_node.contains("/p2p/"),
        "{agent_node}"
    );
    let version = cod.cli_ok(&["agent", "version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    assert!(
        cod.cli_ok(&["agent", "alive"])
            .to_lowercase()
            .contains("ok")
    );
}

#[test]
fn job_run_takes_a_yaml_spec_and_reports_failure_in_its_exit_code() {
    let cod = Cod::start("cli-run", &[]);
    let id = cod.cli_ok(&[
        "job",
        "run",
        fixtures().join("hello.yaml").to_str().expect("path"),
        "--id-only",
    ]);
    assert!(id.trim().starts_with("j-"));

    let bad = cod.dir.join("bad.yaml");
    std::fs::write(&bad, "Type: batch\nTasks:\n  - Name: main\n    Engine: {Type: wasm}\n    Timeouts: {ExecutionTimeout: -3}\n").expect("write");
    let out = cod.cli(&["job", "run", bad.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EntryModule") && err.contains("ExecutionTimeout"),
        "{err}"
    );

    let failing = cod.dir.join("failing.yaml");
    std::fs::write(
        &failing,
        "Type: batch\nTasks:\n  - Name: main\n    Engine: {Type: flibble}\n",
    )
    .expect("write");
    let out = cod.cli(&["job", "run", failing.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a failed job exits 2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn job_stop_stops_a_running_job() {
    let cod = Cod::start("cli-stop", &[]);
    let module = wasm_file(&cod.dir, "endless.wasm", ENDLESS);
    let id = cod
        .cli_ok(&[
            "wasm",
            "run",
            "--no-wait",
            "--id-only",
            module.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    wait_until("running", DEADLINE, || {
        (cod.job(&id)["Executions"]["Items"][0]["ComputeState"]["StateType"] == 6).then_some(())
    });
    cod.cli_ok(&["job", "stop", &id]);
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(body["Job"]["State"]["StateType"], "Stopped");
}

#[test]
fn cli_explains_an_unreachable_api() {
    let out = std::process::Command::new(crate::harness::bin())
        .args(["job", "list"])
        .env("COD_API_HOST", "127.0.0.1")
        .env("COD_API_PORT", crate::harness::free_port().to_string())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cod serve"), "{err}");
}
