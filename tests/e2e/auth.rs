//! API authentication and TLS: real nodes with `API.Auth.Users`, the generated `api-token` of a
//! non-loopback API, and HTTPS with a self-signed certificate, driven over HTTP and through the `cod` CLI.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, bin, http, wait_until, wasm_file, wasm_job};

const READER_KEY: &str = "reader-key-0123456789abcdef";
const SUBMIT_KEY: &str = "submit-key-0123456789abcdef";
const ADMIN_KEY: &str = "admin-key-0123456789abcdefgh";
const ALICE_PASSWORD: &str = "alice-password-42";

/// Runs the CLI against `cod` with exactly the credential variables in `env`: the developer's own
/// `COD_API_KEY` or `~/.cod/api-token` must not leak into these tests, so the data dir is the node's own
/// unless `env` says otherwise.
fn cli(cod: &Cod, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin());
    command
        .args(args)
        .env("COD_API_HOST", "127.0.0.1")
        .env("COD_API_PORT", cod.port())
        .env("COD_DATA_DIR", cod.dir.join("no-such-data-dir"))
        .current_dir(&cod.dir);
    for name in [
        "COD_API_KEY",
        "BACALHAU_API_KEY",
        "COD_API_USERNAME",
        "COD_API_PASSWORD",
        "BACALHAU_API_USERNAME",
        "BACALHAU_API_PASSWORD",
        "COD_API_TLS",
        "COD_API_CACERT",
        "COD_API_TLS_INSECURE",
        "BACALHAU_API_TLS_USETLS",
        "BACALHAU_API_TLS_CACERT",
        "BACALHAU_API_TLS_INSECURE",
        "BACALHAU_API_HOST",
        "BACALHAU_API_PORT",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("run cli")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cod auth hash-password`, fed on stdin.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(bin())
        .args(["auth", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(hash.starts_with("$2b$"), "{hash}");
    hash
}

/// A blocking HTTP call with an optional `Authorization` value; returns status, headers and JSON body.
fn call(
    method: reqwest::Method,
    url: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http().request(method, url);
    if let Some(a) = auth {
        request = request.header("authorization", a);
    }
    if let Some(b) = body {
        request = request.json(b);
    }
    let response = request.send().expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().unwrap_or(Value::Null))
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn users_config(dir: &Path) -> std::path::PathBuf {
    let hash = hash_password(ALICE_PASSWORD);
    let config = json!({"API": {"Auth": {"Users": [
        {"Alias": "reader", "APIKey": READER_KEY, "Capabilities": [{"Actions": ["read"]}]},
        {"Alias": "submitter", "APIKey": SUBMIT_KEY, "Capabilities": [{"Actions": ["submit"]}]},
        {"Alias": "admin", "APIKey": ADMIN_KEY, "Capabilities": [{"Actions": ["*"]}]},
        {"Alias": "alice", "Username": "alice", "Password": hash,
         "Capabilities": [{"Actions": ["read:*", "write:job"]}]},
    ]}}});
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("auth.json");
    std::fs::write(&path, config.to_string()).expect("config");
    path
}

#[test]
fn users_keys_and_capabilities_gate_the_api_and_the_cli() {
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let config = users_config(conf_dir.path());
    let orch = Cod::start(
        "auth-orch",
        &[
            "--orchestrator",
            "--manual-approval",
            "--config",
            config.to_str().expect("path"),
        ],
    );
    let addr = orch.p2p.first().expect("p2p").clone();
    let node = Cod::start("auth-compute", &["--compute", "--orchestrators", &addr]);
    let jobs = format!("{}/api/v1/orchestrator/jobs", orch.api);
    let nodes = format!("{}/api/v1/orchestrator/nodes", orch.api);

    // No credential, or a wrong one: 401 with Bacalhau's body and a challenge.
    let (status, headers, body) = call(reqwest::Method::GET, &jobs, None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["Code"], "Unauthorized");
    assert_eq!(body["Message"], "Request Unauthorized");
    assert!(body["RequestID"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, _) = call(
        reqwest::Method::GET,
        &jobs,
        Some(&bearer("not-a-key-0123456789abc")),
        None,
    );
    assert_eq!(status, 401);

    // Open paths stay open; the rest of /agent does not.
    for path in [
        "/api/v1/agent/alive",
        "/api/v1/agent/version",
        "/api/v1/auth",
    ] {
        let (status, _, body) = call(
            reqwest::Method::GET,
            &format!("{}{path}", orch.api),
            None,
            None,
        );
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, _, methods) = call(
        reqwest::Method::GET,
        &format!("{}/api/v1/auth", orch.api),
        None,
        None,
    );
    assert!(
        methods["Methods"].get("basic").is_some() && methods["Methods"].get("apikey").is_some(),
        "{methods}"
    );
    let info = ok(
        cli(&orch, &["auth", "info"], &[]),
        "auth info without a credential",
    );
    assert!(info.contains("basic") && info.contains("apikey"), "{info}");
    for path in ["/api/v1/agent/node", "/api/v1/agent/config"] {
        let (status, _, _) = call(
            reqwest::Method::GET,
            &format!("{}{path}", orch.api),
            None,
            None,
        );
        assert_eq!(status, 401, "{path}");
    }
    // The config shows users without their secrets.
    let (_, _, config) = call(
        reqwest::Method::GET,
        &format!("{}/api/v1/agent/config", orch.api),
        Some(&bearer(ADMIN_KEY)),
        None,
    );
    let text = config.to_string();
    assert!(
        !text.contains(ADMIN_KEY) && !text.contains("$2b$"),
        "{text}"
    );
    assert!(text.contains("<redacted>"), "{text}");

    // A reader can read but not submit.
    let job = json!({"Job": wasm_job(HELLO, json!({}))});
    let (status, _, _) = call(reqwest::Method::GET, &jobs, Some(&bearer(READER_KEY)), None);
    assert_eq!(status, 200);
    let (status, _, body) = call(
        reqwest::Method::PUT,
        &jobs,
        Some(&bearer(READER_KEY)),
        Some(&job),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["Code"], "Forbidden");
    assert_eq!(body["Message"], "Request Forbidden");

    // Only an admin approves nodes.
    let pending = wait_until("compute node registered", DEADLINE, || {
        let (_, _, body) = call(
            reqwest::Method::GET,
            &nodes,
            Some(&bearer(READER_KEY)),
            None,
        );
        body["Nodes"].as_array().and_then(|n| n.first().cloned())
    });
    assert_eq!(pending["Membership"], "PENDING");
    let approve = json!({"Action": "approve", "Message": "", "NodeID": node.node_id});
    let node_url = format!("{nodes}/{}", node.node_id);
    let (status, _, _) = call(
        reqwest::Method::PUT,
        &node_url,
        Some(&bearer(SUBMIT_KEY)),
        Some(&approve),
    );
    assert_eq!(status, 403);
    let out = cli(
        &orch,
        &["node", "approve", &node.node_id],
        &[("COD_API_KEY", SUBMIT_KEY)],
    );
    let err = failed(out, "node approve with a submit key");
    assert!(
        err.contains("Request Forbidden") && err.contains("COD_API_KEY"),
        "{err}"
    );
    ok(
        cli(
            &orch,
            &["--api-key", ADMIN_KEY, "node", "approve", &node.node_id],
            &[],
        ),
        "node approve as admin",
    );

    // A submit key runs a job end to end through the CLI: submit, wait, logs (WebSocket), results.
    let module = wasm_file(&orch.dir, "hello.wasm", HELLO);
    let id = ok(
        cli(
            &orch,
            &[
                "wasm",
                "run",
                "--id-only",
                module.to_str().expect("path"),
                "hi",
            ],
            &[("BACALHAU_API_KEY", SUBMIT_KEY)],
        ),
        "wasm run with BACALHAU_API_KEY",
    );
    let id = id.trim().to_owned();
    let logs = ok(
        cli(&orch, &["--api-key", SUBMIT_KEY, "job", "logs", &id], &[]),
        "job logs",
    );
    assert!(logs.contains("hello hi"), "{logs}");
    // The CLI's config file, with the credential in it, stands in for the variables.
    let client_config = conf_dir.path().join("client.yaml");
    std::fs::write(
        &client_config,
        format!("api:\n  auth:\n    apikey: {SUBMIT_KEY}\n"),
    )
    .expect("client config");
    let client_config = client_config.to_str().expect("path");
    let listed = ok(
        cli(
            &orch,
            &["job", "describe", &id],
            &[("COD_CLIENT_CONFIG", client_config)],
        ),
        "job describe with a client config",
    );
    assert!(listed.contains(&id), "{listed}");
    let err = failed(
        cli(
            &orch,
            &["job", "describe", &id],
            &[("COD_CLIENT_CONFIG", "/nonexistent/client.yaml")],
        ),
        "a missing named client config",
    );
    assert!(err.contains("/nonexistent/client.yaml"), "{err}");
    let out_dir = orch.dir.join("results");
    ok(
        cli(
            &orch,
            &[
                "job",
                "get",
                &id,
                "--output-dir",
                out_dir.to_str().expect("path"),
            ],
            &[("COD_API_KEY", SUBMIT_KEY)],
        ),
        "job get",
    );
    let stdout = std::fs::read_to_string(out_dir.join("stdout")).expect("stdout");
    assert!(stdout.starts_with("hello hi"), "{stdout}");

    // Basic auth, from flags and from Bacalhau's variables.
    let described = ok(
        cli(
            &orch,
            &[
                "--username",
                "alice",
                "--password",
                ALICE_PASSWORD,
                "job",
                "describe",
                &id,
            ],
            &[],
        ),
        "describe as alice",
    );
    assert!(described.contains("Completed"), "{described}");
    ok(
        cli(
            &orch,
            &["job", "list"],
            &[
                ("BACALHAU_API_USERNAME", "alice"),
                ("BACALHAU_API_PASSWORD", ALICE_PASSWORD),
            ],
        ),
        "list as alice",
    );
    let err = failed(
        cli(
            &orch,
            &[
                "--username",
                "alice",
                "--password",
                "wrong-password-1",
                "job",
                "list",
            ],
            &[],
        ),
        "wrong password",
    );
    assert!(
        err.contains("Request Unauthorized") && err.contains("--username/--password"),
        "{err}"
    );

    // No credential: every path the CLI uses says what to pass, the log WebSocket included.
    for args in [vec!["job", "list"], vec!["job", "logs", id.as_str()]] {
        let err = failed(cli(&orch, &args, &[]), "no credential");
        assert!(
            err.contains("Request Unauthorized") && err.contains("--api-key"),
            "{args:?}: {err}"
        );
    }
    // The reader's CLI submit is refused with the capability named.
    let err = failed(
        cli(
            &orch,
            &[
                "--api-key",
                READER_KEY,
                "wasm",
                "run",
                module.to_str().expect("path"),
            ],
            &[],
        ),
        "reader submit",
    );
    assert!(err.contains("write:job"), "{err}");

    // Secrets never reach the log.
    let log = orch.log();
    for secret in [READER_KEY, SUBMIT_KEY, ADMIN_KEY, ALICE_PASSWORD] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn non_loopback_api_without_users_is_locked_by_a_generated_token() {
    let cod = Cod::start("auth-token", &["--api-host", "0.0.0.0"]);
    let data = cod.dir.join("data");
    let token_path = data.join("api-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_path)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_path).expect("token");
    let token = token.trim();
    assert!(!cod.log().contains(token), "the key must not be logged");
    assert!(cod.log().contains("api-token"), "the path is logged");

    let jobs = format!("http://127.0.0.1:{}/api/v1/orchestrator/jobs", cod.port());
    let (status, _, _) = call(reqwest::Method::GET, &jobs, None, None);
    assert_eq!(status, 401);
    let (status, _, _) = call(reqwest::Method::GET, &jobs, Some(&bearer(token)), None);
    assert_eq!(status, 200);

    // The CLI on this machine finds the token in the node's data dir by itself.
    let data_dir = data.to_str().expect("path");
    let module = wasm_file(&cod.dir, "hello.wasm", HELLO);
    let out = ok(
        cli(
            &cod,
            &["wasm", "run", module.to_str().expect("path"), "local"],
            &[("COD_DATA_DIR", data_dir)],
        ),
        "wasm run with the token file",
    );
    assert!(out.contains("hello local"), "{out}");
    let err = failed(cli(&cod, &["job", "list"], &[]), "no token");
    assert!(err.contains("Request Unauthorized"), "{err}");

    // After a restart the same key still works (scripts that copied it keep working).
    let mut cod = cod;
    cod.restart();
    let again = std::fs::read_to_string(&token_path).expect("token");
    assert_eq!(again.trim(), token);
    ok(
        cli(&cod, &["job", "list"], &[("COD_DATA_DIR", data_dir)]),
        "job list after restart",
    );

    // Explicitly disabled: open, no token file, and a warning.
    let open = Cod::start(
        "auth-disabled",
        &["--api-host", "0.0.0.0", "--api-auth-disabled"],
    );
    let (status, _, _) = call(
        reqwest::Method::GET,
        &format!("http://127.0.0.1:{}/api/v1/orchestrator/jobs", open.port()),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert!(!open.dir.join("data/api-token").exists());
    assert!(open.log().contains("API.Auth.Disabled"), "{}", open.log());
}

#[test]
#[cfg(feature = "tls-self-signed")]
fn tls_with_a_self_signed_certificate() {
    let cod = Cod::start("auth-tls", &["--api-tls-self-signed"]);
    let cert = cod.dir.join("data/tls/api-cert.pem");
    assert!(cert.exists());
    let cert_arg = cert.to_str().expect("path");

    // --cacert: the whole CLI path, the log WebSocket (wss) included.
    let module = wasm_file(&cod.dir, "hello.wasm", HELLO);
    let id = ok(
        cli(
            &cod,
            &[
                "--cacert",
                cert_arg,
                "wasm",
                "run",
                "--id-only",
                module.to_str().expect("path"),
                "tls",
            ],
            &[],
        ),
        "wasm run over TLS",
    );
    let logs = ok(
        cli(&cod, &["--cacert", cert_arg, "job", "logs", id.trim()], &[]),
        "job logs over wss",
    );
    assert!(logs.contains("hello tls"), "{logs}");
    ok(
        cli(
            &cod,
            &["job", "list"],
            &[("BACALHAU_API_TLS_CACERT", cert_arg)],
        ),
        "BACALHAU_API_TLS_CACERT",
    );
    // Same machine: --tls alone trusts the node's own certificate from its data dir.
    let data = cod.dir.join("data");
    ok(
        cli(
            &cod,
            &["--tls", "job", "list"],
            &[("COD_DATA_DIR", data.to_str().expect("path"))],
        ),
        "--tls with the node's data dir",
    );
    ok(cli(&cod, &["--insecure", "job", "list"], &[]), "--insecure");

    // Unverified: system roots do not know the certificate.
    let err = failed(cli(&cod, &["--tls", "job", "list"], &[]), "unverified TLS");
    assert!(
        err.contains("TLS connection") && err.contains("--cacert"),
        "{err}"
    );
    // Plain HTTP to the HTTPS port: told to use HTTPS.
    let err = failed(cli(&cod, &["job", "list"], &[]), "plain HTTP");
    assert!(err.contains("HTTPS") && err.contains("--tls"), "{err}");

    // The pair is made once: a restart keeps the certificate clients already trust.
    let before = std::fs::read(&cert).expect("cert");
    let mut cod = cod;
    cod.restart();
    assert_eq!(std::fs::read(&cert).expect("cert"), before);
    ok(
        cli(&cod, &["--cacert", cert_arg, "job", "list"], &[]),
        "after restart",
    );
}

#[test]
fn invalid_users_stop_the_node_with_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.json");
    std::fs::write(
        &config,
        json!({"API": {"Auth": {"Users": [
            {"Alias": "short", "APIKey": "too-short", "Capabilities": [{"Actions": ["read"]}]}
        ]}}})
        .to_string(),
    )
    .expect("config");
    let out = Command::new(bin())
        .args([
            "serve",
            "--config",
            config.to_str().expect("path"),
            "--api-port",
            "0",
        ])
        .args([
            "--data-dir",
            dir.path().join("data").to_str().expect("path"),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("API.Auth.Users[0] (short)") && err.contains("APIKey"),
        "{err}"
    );
}
