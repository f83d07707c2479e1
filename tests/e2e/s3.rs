//! S3 end to end: `s3` inputs, the `s3` publisher and `cod job get` through pre-signed URLs, against real
//! S3-compatible servers on loopback.
//!
//! [`S3Server::s3s`] runs `s3s-fs` (crates.io, the s3s project's file-system server) with one access key: it
//! verifies every SigV4 signature, in headers and in pre-signed query strings, and refuses anonymous
//! requests, so a wrong secret is rejected by the server itself (proven below with a URL signed by hand).
//! It has no versioning, so the `VersionID` test uses [`S3Server::moto`], `moto_server` (PyPI `moto[server]`)
//! without its IAM mode: moto's auth mode cannot check pre-signed query strings, which are all Cod sends.
//! Both are installed by tests/run.sh; a missing one fails the test with that hint, never a skip.
//!
//! Each server gets port 0 and a temp dir; the harness reads the bound address from its log (waiting with
//! [`wait_until`]), seeds buckets through the S3 API with requests signed by rusty-s3, and kills the server
//! on drop, printing its log if the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde_json::{Value, json};
use sha2::Digest;

use crate::fixtures::{CAT, HELLO, stdout_blocks};
use crate::harness::{
    Cod, DEADLINE, failure_reasons, http, run_stdout as stdout_of, state, wait_until, wasm_job,
};

const ACCESS_KEY: &str = "codtestkey";
const SECRET_KEY: &str = "codtestsecret-0123456789";
/// Jobs that fetch or upload need more than the default deadline on a busy 2-core machine.
const JOB_DEADLINE: Duration = Duration::from_secs(90);

/// A running S3-compatible server on loopback.
struct S3Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    endpoint: String,
    /// Storage and log.
    dir: tempfile::TempDir,
    name: &'static str,
}

impl S3Server {
    /// `s3s-fs`, checking every signature against [`ACCESS_KEY`]/[`SECRET_KEY`].
    fn s3s() -> S3Server {
        let bin = find_tool("s3s-fs", &[".cargo/bin/s3s-fs"]);
        let dir = tempdir("cod-s3s-");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--access-key",
            ACCESS_KEY,
        ])
        .args(["--secret-key", SECRET_KEY])
        .arg(&root)
        .env("RUST_LOG", "info");
        Self::spawn("s3s-fs", cmd, dir, "server is running at ")
    }

    /// `moto_server`, for versioning (signatures are not checked: see the module docs).
    fn moto() -> S3Server {
        let bin = find_tool("moto_server", &[]);
        let dir = tempdir("cod-moto-");
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", "0"]);
        Self::spawn("moto_server", cmd, dir, "Running on ")
    }

    fn spawn(
        name: &'static str,
        mut cmd: Command,
        dir: tempfile::TempDir,
        marker: &str,
    ) -> S3Server {
        let log_path = dir.path().join("log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut server = S3Server {
            child: Some(child),
            endpoint: String::new(),
            dir,
            name,
        };
        server.endpoint = wait_until(&format!("{name} to report its address"), DEADLINE, || {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{name} exited early ({status}):\n{}", server.log());
            }
            let text = std::fs::read_to_string(&log_path).ok()?;
            let at = text.find(marker)? + marker.len();
            let url: String = text[at..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect();
            url.starts_with("http://127.0.0.1:").then_some(url)
        });
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(
            self.endpoint.parse().expect("endpoint"),
            UrlStyle::Path,
            name.to_owned(),
            "us-east-1",
        )
        .expect("bucket")
    }

    fn creds(secret: &str) -> Credentials {
        Credentials::new(ACCESS_KEY, secret)
    }

    fn create_bucket(&self, name: &str) {
        let bucket = self.bucket(name);
        let creds = Self::creds(SECRET_KEY);
        let url = bucket.create_bucket(&creds).sign(Duration::from_secs(60));
        let r = http().put(url).body("").send().expect("create bucket");
        assert!(
            r.status().is_success(),
            "create bucket {name}: {}",
            r.status()
        );
    }

    /// Turns versioning on (a PUT `?versioning` with the XML body; rusty-s3 has no action for it, so
    /// CreateBucket's signed PUT carries the extra query parameter).
    fn enable_versioning(&self, name: &str) {
        let bucket = self.bucket(name);
        let creds = Self::creds(SECRET_KEY);
        let mut action = bucket.create_bucket(&creds);
        action.query_mut().insert("versioning", "");
        let body = r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
        let r = http()
            .put(action.sign(Duration::from_secs(60)))
            .body(body)
            .send()
            .expect("versioning");
        assert!(r.status().is_success(), "versioning {name}: {}", r.status());
    }

    /// Stores `body` at `key`; returns the version id on a versioned bucket.
    fn put(&self, bucket: &str, key: &str, body: &[u8]) -> Option<String> {
        let b = self.bucket(bucket);
        let creds = Self::creds(SECRET_KEY);
        let url = b
            .put_object(Some(&creds), key)
            .sign(Duration::from_secs(60));
        let r = http()
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .expect("put");
        assert!(r.status().is_success(), "put {key}: {}", r.status());
        r.headers()
            .get("x-amz-version-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The object's bytes, read with the right credentials.
    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let b = self.bucket(bucket);
        let creds = Self::creds(SECRET_KEY);
        let url = b
            .get_object(Some(&creds), key)
            .sign(Duration::from_secs(60));
        let r = http().get(url).send().expect("get");
        assert!(r.status().is_success(), "get {key}: {}", r.status());
        r.bytes().expect("body").to_vec()
    }

    /// A config file for a node using this server's access key with `secret`.
    fn node_config(&self, dir: &Path, secret: &str) -> PathBuf {
        let path = dir.join("cod-s3.yaml");
        let text = format!("S3:\n  AccessKeyID: {ACCESS_KEY}\n  SecretAccessKey: {secret}\n");
        std::fs::write(&path, text).expect("config");
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("===== log of {} =====\n{}", self.name, self.log());
        }
    }
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// A test tool on PATH or under $HOME; fails with the install hint when missing.
fn find_tool(name: &str, home_paths: &[&str]) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    let in_home = std::env::var_os("HOME").and_then(|home| {
        home_paths
            .iter()
            .map(|p| Path::new(&home).join(p))
            .find(|p| p.is_file())
    });
    on_path.or(in_home).unwrap_or_else(|| {
        panic!(
            "{name} is missing: run tests/run.sh, which installs the S3 test servers (s3s-fs, moto)"
        )
    })
}

/// A node whose S3 credentials are this server's key with `secret`.
fn node(server: &S3Server, name: &str, secret: &str) -> (Cod, tempfile::TempDir) {
    let conf_dir = tempdir("cod-s3-conf-");
    let config = server.node_config(conf_dir.path(), secret);
    let cod = Cod::start(name, &["--config", config.to_str().expect("utf-8 path")]);
    (cod, conf_dir)
}

/// An `s3` input at `target`.
fn s3_input(server: &S3Server, target: &str, params: Value) -> Value {
    let mut p = params;
    p["Endpoint"] = json!(server.endpoint);
    json!({"Target": target, "Source": {"Type": "s3", "Params": p}})
}

/// The CAT job printing `files`, with `inputs`.
fn cat_job(files: &[&str], inputs: Vec<Value>) -> Value {
    wasm_job(
        CAT,
        json!({"InputSources": inputs, "Engine": {"Params": {"Parameters": files}}}),
    )
}

/// `text` without terminal colour codes (the node logs with them).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

fn sha256_b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

#[test]
fn single_objects_and_filtered_prefixes_become_inputs() {
    let server = S3Server::s3s();
    server.create_bucket("data");
    server.put("data", "in/hello.txt", b"hello s3\n");
    server.put("data", "logs/a.log", b"A\n");
    server.put("data", "logs/sub/b.log", b"B\n");
    server.put("data", "logs/c.txt", b"C\n");
    server.put("data", "logs/app-1.log", b"P1\n");
    let (cod, _conf) = node(&server, "s3-inputs", SECRET_KEY);

    let hex: String = sha2::Sha256::digest(b"hello s3\n")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let job = cat_job(
        &[
            "in/hello.txt",
            "logs/a.log",
            "logs/sub/b.log",
            "logs/c.txt",
            "star/app-1.log",
        ],
        vec![
            s3_input(
                &server,
                "/in",
                json!({"Bucket": "data", "Key": "in/hello.txt", "ChecksumSHA256": hex}),
            ),
            s3_input(
                &server,
                "/logs",
                json!({"Bucket": "data", "Key": "logs/", "Filter": "\\.log$"}),
            ),
            s3_input(
                &server,
                "/star",
                json!({"Bucket": "data", "Key": "logs/app-*"}),
            ),
        ],
    );
    let body = cod.wait_terminal(&cod.submit(job), JOB_DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(
        stdout_of(&body),
        "hello s3\nA\nB\nmissing logs/c.txt\nP1\n",
        "c.txt is filtered out; the prefix's sub-folders are kept"
    );
}

#[test]
fn version_id_picks_the_old_version() {
    let server = S3Server::moto();
    server.create_bucket("versioned");
    server.enable_versioning("versioned");
    let old = server
        .put("versioned", "m.txt", b"old\n")
        .expect("moto returns version ids on a versioned bucket");
    server.put("versioned", "m.txt", b"new\n");
    let (cod, _conf) = node(&server, "s3-version", SECRET_KEY);

    let pinned = cat_job(
        &["v/m.txt"],
        vec![s3_input(
            &server,
            "/v",
            json!({"Bucket": "versioned", "Key": "m.txt", "VersionID": old}),
        )],
    );
    let latest = cat_job(
        &["v/m.txt"],
        vec![s3_input(
            &server,
            "/v",
            json!({"Bucket": "versioned", "Key": "m.txt"}),
        )],
    );
    let (pinned, latest) = (cod.submit(pinned), cod.submit(latest));
    let body = cod.wait_terminal(&pinned, JOB_DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    assert_eq!(stdout_of(&body), "old\n");
    let body = cod.wait_terminal(&latest, JOB_DEADLINE);
    assert_eq!(stdout_of(&body), "new\n");
}

#[test]
fn bad_checksums_and_missing_objects_fail_with_reasons() {
    let server = S3Server::s3s();
    server.create_bucket("data");
    server.put("data", "x.txt", b"x\n");
    let (cod, _conf) = node(&server, "s3-failures", SECRET_KEY);

    let wrong_sum = sha256_b64(b"something else");
    let cases = [
        (
            json!({"Bucket": "data", "Key": "x.txt", "ChecksumSHA256": wrong_sum}),
            "does not match its ChecksumSHA256",
        ),
        (
            json!({"Bucket": "data", "Key": "nope.txt"}),
            "input s3://data/nope.txt does not exist",
        ),
        (
            json!({"Bucket": "nobucket", "Key": "x.txt"}),
            "bucket \"nobucket\"",
        ),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(params, _)| {
            cod.submit(cat_job(
                &["i/x.txt"],
                vec![s3_input(&server, "/i", params.clone())],
            ))
        })
        .collect();
    for (id, (_, expected)) in ids.iter().zip(&cases) {
        let body = cod.wait_terminal(id, JOB_DEADLINE);
        assert_eq!(state(&body), "Failed", "{body:#}");
        let reasons = failure_reasons(&body);
        assert!(
            reasons.contains(expected),
            "{expected:?} not in {reasons:?}"
        );
    }
}

#[test]
fn results_publish_to_s3_and_download_through_presigned_urls() {
    let server = S3Server::s3s();
    server.create_bucket("results");
    let (cod, _conf) = node(&server, "s3-publish", SECRET_KEY);
    let publisher = |key: &str, encoding: &str| {
        json!({"Publisher": {"Type": "s3", "Params": {
            "Bucket": "results", "Key": key, "Encoding": encoding, "Endpoint": server.endpoint}}})
    };

    // gzip (the default): one tarball at Key + .tar.gz, with its checksum in the result.
    let gzip = cod.submit(wasm_job(HELLO, publisher("jobs/{jobID}/{executionID}", "")));
    let body = cod.wait_terminal(&gzip, JOB_DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let e = &body["Executions"]["Items"][0];
    let published = &e["PublishedResult"];
    assert_eq!(published["Type"], "s3", "{published:#}");
    let key = published["Params"]["Key"].as_str().expect("key").to_owned();
    assert_eq!(
        key,
        format!("jobs/{gzip}/{}.tar.gz", e["ID"].as_str().expect("id"))
    );
    let tarball = server.get("results", &key);
    assert_eq!(
        published["Params"]["ChecksumSHA256"].as_str(),
        Some(sha256_b64(&tarball).as_str())
    );
    let (status, results) = cod.get(&format!("/api/v1/orchestrator/jobs/{gzip}/results"));
    assert_eq!(status, 200);
    let item = &results["Items"][0];
    assert_eq!(item["Type"], "s3PreSigned", "{results:#}");
    let url = item["Params"]["PreSignedURL"].as_str().expect("url");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let out = cod.dir.join("gzip-out");
    cod.cli_ok(&[
        "job",
        "get",
        &gzip,
        "--output-dir",
        out.to_str().expect("path"),
    ]);
    assert!(
        std::fs::read_to_string(out.join("stdout"))
            .expect("stdout")
            .starts_with("hello")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("outputs/out.txt")).expect("out"),
        "written\n"
    );

    // plain: every file under Key/; a file larger than one part goes up as a multipart upload.
    let plain = cod.submit(wasm_job(HELLO, publisher("plain/{executionID}", "plain")));
    let big = cod.submit(wasm_job(
        // 1100 blocks of 8 KiB (9,011,200 bytes): a result file larger than one upload part.
        &stdout_blocks(1100, 8192, b'x'),
        publisher("big/{jobID}", "plain"),
    ));
    let body = cod.wait_terminal(&plain, JOB_DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let exec = body["Executions"]["Items"][0]["ID"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        server.get("results", &format!("plain/{exec}/outputs/out.txt")),
        b"written\n"
    );
    let out = cod.dir.join("plain-out");
    cod.cli_ok(&[
        "job",
        "get",
        &plain,
        "--output-dir",
        out.to_str().expect("path"),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("outputs/out.txt")).expect("out"),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("exitCode")).expect("exit"),
        "0\n"
    );

    let body = cod.wait_terminal(&big, JOB_DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let stdout = server.get("results", &format!("big/{big}/stdout"));
    assert_eq!(stdout.len(), 1100 * 8192);
    assert!(stdout.iter().all(|b| *b == b'x'));
    assert!(cod.log().contains("result published to s3"));
    let log = strip_ansi(&cod.log());
    assert!(
        log.contains(&format!(
            "multipart upload completed object=s3://results/big/{big}/stdout parts=2"
        )),
        "the 9 MiB stdout goes up as a multipart upload of two parts"
    );
}

#[test]
fn a_wrong_secret_is_rejected_by_the_server_and_fails_jobs_clearly() {
    let server = S3Server::s3s();
    server.create_bucket("data");
    server.put("data", "x.txt", b"x\n");

    // The server itself checks signatures, pre-signed URLs included: a URL signed with the wrong secret is
    // refused, the same URL signed with the right one is served.
    let bucket = server.bucket("data");
    let wrong = S3Server::creds("not-the-secret");
    let url = bucket
        .get_object(Some(&wrong), "x.txt")
        .sign(Duration::from_secs(60));
    let r = http().get(url).send().expect("get");
    assert_eq!(r.status().as_u16(), 403);
    assert!(
        r.text()
            .unwrap_or_default()
            .contains("SignatureDoesNotMatch")
    );
    let right = S3Server::creds(SECRET_KEY);
    let url = bucket
        .get_object(Some(&right), "x.txt")
        .sign(Duration::from_secs(60));
    assert_eq!(http().get(url).send().expect("get").status().as_u16(), 200);

    let (cod, _conf) = node(&server, "s3-bad-secret", "not-the-secret");
    let input = cod.submit(cat_job(
        &["i/x.txt"],
        vec![s3_input(
            &server,
            "/i",
            json!({"Bucket": "data", "Key": "x.txt"}),
        )],
    ));
    let publish = cod.submit(wasm_job(
        HELLO,
        json!({"Publisher": {"Type": "s3", "Params": {"Bucket": "data", "Key": "out", "Endpoint": server.endpoint}}}),
    ));
    for id in [input, publish] {
        let body = cod.wait_terminal(&id, JOB_DEADLINE);
        assert_eq!(state(&body), "Failed", "{body:#}");
        let reasons = failure_reasons(&body);
        assert!(
            reasons.contains("403 Forbidden (SignatureDoesNotMatch")
                && reasons.contains("S3.SecretAccessKey"),
            "{reasons}"
        );
        assert!(!reasons.contains("not-the-secret"), "{reasons}");
    }
    assert!(
        !cod.log().contains("not-the-secret"),
        "the secret must never be logged"
    );
}
