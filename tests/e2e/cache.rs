//! The input cache and the result cache, end to end: URL inputs with a checksum served by a local HTTP server
//! that counts its requests, and jobs that opt in to reusing results.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, execution, run_stdout as stdout, state, wasm_job};

/// A plain HTTP/1.1 file server on 127.0.0.1:0 that counts GETs per path. It serves until the test process
/// ends (its thread blocks in accept; nothing else shares it).
struct FileServer {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl FileServer {
    fn start(files: &[(&str, &[u8])]) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let files: HashMap<String, Vec<u8>> = files
            .iter()
            .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
            .collect();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = Arc::clone(&hits);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Drain the headers; the body of a GET is empty.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                *counter
                    .lock()
                    .expect("hits")
                    .entry(path.clone())
                    .or_insert(0) += 1;
                let response = match files.get(&path) {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        FileServer { base, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The HELLO job with one URL input at /data (with `checksum` when given) and `meta` on the job.
fn job_with_url(url: &str, checksum: Option<&str>, meta: Value) -> Value {
    let mut params = json!({"URL": url});
    if let Some(c) = checksum {
        params["Checksum"] = json!(c);
    }
    let mut job = wasm_job(
        HELLO,
        json!({"InputSources": [{"Target": "/data", "Source": {"Type": "urlDownload", "Params": params}}]}),
    );
    job["Meta"] = meta;
    job
}

fn history_messages(body: &Value) -> Vec<String> {
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

#[test]
fn a_url_input_with_a_checksum_is_fetched_once_across_jobs() {
    let data = b"station,temp\nnorth,4\n";
    let server = FileServer::start(&[("/readings.csv", data)]);
    let cod = Cod::start("input-cache", &[]);
    let checksum = format!("sha256:{}", sha256(data));
    let url = server.url("/readings.csv");

    let first = cod.wait_terminal(
        &cod.submit(job_with_url(&url, Some(&checksum), json!({}))),
        DEADLINE,
    );
    assert_eq!(state(&first), "Completed", "{first:#}");
    assert_eq!(server.hits("/readings.csv"), 1);

    // The second job comes through the CLI's -i grammar; it is served from the cache.
    let module = crate::harness::wasm_file(&cod.dir, "hello.wasm", HELLO);
    let input = format!("{url}:/data,opt=checksum={checksum}");
    let id = cod.cli_ok(&[
        "wasm",
        "run",
        "--id-only",
        "-i",
        &input,
        module.to_str().expect("path"),
    ]);
    let second = cod.wait_terminal(id.trim(), DEADLINE);
    assert_eq!(state(&second), "Completed", "{second:#}");
    assert_eq!(server.hits("/readings.csv"), 1, "served from the cache");

    // Without a checksum the URL may change, so it is fetched every time.
    let third = cod.wait_terminal(&cod.submit(job_with_url(&url, None, json!({}))), DEADLINE);
    assert_eq!(state(&third), "Completed", "{third:#}");
    assert_eq!(server.hits("/readings.csv"), 2);

    // One entry for the CSV, one for the inline module; nothing half-written left behind.
    let entries = cod.dir.join("data/cache/inputs/entries");
    assert!(
        std::fs::read_dir(&entries).expect("entries").count() >= 2,
        "cache entries in {entries:?}"
    );
    let tmp = cod.dir.join("data/cache/inputs/tmp");
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}

#[test]
fn a_checksum_mismatch_fails_the_execution_naming_both_digests() {
    let server = FileServer::start(&[("/model.bin", b"not what you think")]);
    let cod = Cod::start("checksum", &[]);
    let wrong = "a".repeat(64);
    let body = cod.wait_terminal(
        &cod.submit(job_with_url(
            &server.url("/model.bin"),
            Some(&format!("sha256:{wrong}")),
            json!({}),
        )),
        DEADLINE,
    );
    assert_eq!(state(&body), "Failed", "{body:#}");
    let message = execution(&body)["ComputeState"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("/model.bin"), "{message}");
    assert!(message.contains(&wrong), "{message}");
    assert!(
        message.contains(&sha256(b"not what you think")),
        "{message}"
    );
    assert_eq!(server.hits("/model.bin"), 1, "a mismatch is not retried");

    // A malformed checksum is refused at submission, naming the field.
    let (status, body) = cod.put(
        "/api/v1/orchestrator/jobs",
        &json!({"Job": job_with_url(&server.url("/model.bin"), Some("md5:abc"), json!({}))}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("Params.Checksum"), "{body}");
}

#[test]
fn an_opted_in_job_reuses_an_earlier_result_without_running() {
    let data = b"x,y\n1,2\n";
    let server = FileServer::start(&[("/in.csv", data)]);
    // The input cache is off, so every run that prepares its inputs shows up at the server: a reused result
    // fetches nothing.
    let config = tempfile::tempdir().expect("tmp");
    let config_file = config.path().join("node.yaml");
    std::fs::write(&config_file, "compute:\n  inputCacheSize: \"0\"\n").expect("config");
    let cod = Cod::start(
        "result-cache",
        &["--config", config_file.to_str().expect("path")],
    );
    let url = server.url("/in.csv");
    let checksum = format!("sha256:{}", sha256(data));
    let opt_in = json!({"cod.result-cache": "true"});

    let first_id = cod.submit(job_with_url(&url, Some(&checksum), opt_in.clone()));
    let first = cod.wait_terminal(&first_id, DEADLINE);
    assert_eq!(state(&first), "Completed", "{first:#}");
    assert_eq!(server.hits("/in.csv"), 1);
    let first_execution = execution(&first)["ID"].as_str().expect("id").to_owned();

    let second_id = cod.submit(job_with_url(&url, Some(&checksum), opt_in.clone()));
    let second = cod.wait_terminal(&second_id, DEADLINE);
    assert_eq!(state(&second), "Completed", "{second:#}");
    assert_eq!(server.hits("/in.csv"), 1, "inputs were not fetched again");
    let reuse = format!("result reused from execution {first_execution} of job {first_id}");
    assert!(
        history_messages(&second).contains(&reuse),
        "{:#?}",
        history_messages(&second)
    );
    // The task did not run again: its output is the first run's, job id included.
    assert_eq!(stdout(&second), stdout(&first));
    assert!(
        stdout(&second).contains(&format!("BACALHAU_JOB_ID={first_id}")),
        "{}",
        stdout(&second)
    );
    assert_eq!(execution(&second)["RunOutput"]["ExitCode"], 0);

    // `cod job get` gives the same files for both, published through the second job's own publisher.
    let get = |id: &str| {
        let out = cod.dir.join(format!("out-{id}"));
        cod.cli_ok(&[
            "job",
            "get",
            id,
            "--output-dir",
            out.to_str().expect("path"),
        ]);
        out
    };
    let (a, b) = (get(&first_id), get(&second_id));
    for file in ["stdout", "stderr", "exitCode", "outputs/out.txt"] {
        let read = |dir: &std::path::Path| {
            std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
        };
        assert_eq!(read(&a), read(&b), "{file}");
    }
    let results = |id: &str| {
        cod.get(&format!("/api/v1/orchestrator/jobs/{id}/results"))
            .1
    };
    assert_ne!(
        results(&first_id)["Items"][0]["Params"]["URL"],
        results(&second_id)["Items"][0]["Params"]["URL"],
        "each execution publishes its own copy"
    );

    // A job that does not opt in runs again.
    let third_id = cod.submit(job_with_url(&url, Some(&checksum), json!({})));
    let third = cod.wait_terminal(&third_id, DEADLINE);
    assert_eq!(state(&third), "Completed", "{third:#}");
    assert_eq!(server.hits("/in.csv"), 2);
    assert!(stdout(&third).contains(&format!("BACALHAU_JOB_ID={third_id}")));

    // One that opts in with an input whose content cannot be pinned runs, and its history says why.
    let fourth = cod.wait_terminal(&cod.submit(job_with_url(&url, None, opt_in)), DEADLINE);
    assert_eq!(state(&fourth), "Completed", "{fourth:#}");
    assert_eq!(server.hits("/in.csv"), 3);
    let messages = history_messages(&fourth);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("result cache not used") && m.contains("no content identity")),
        "{messages:#?}"
    );
}
