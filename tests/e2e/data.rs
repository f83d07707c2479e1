//! Inputs that go wrong, end to end: a URL that answers 404, one that never answers, one that sends more than
//! the node allows, one nobody listens on, and an inline tarball whose entries climb out of the input
//! directory. Each must fail its execution with a reason that says what happened, leave nothing behind
//! outside the execution, and leave the node able to run the next job.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::fixtures::HELLO;
use crate::harness::{Cod, DEADLINE, failure_reasons, free_port, state, wasm_job};
use crate::tarball::TarBuilder;

/// What the test server does with a request for a path.
#[derive(Clone, Copy)]
enum Reply {
    NotFound,
    /// Reads the request and then says nothing until the client gives up.
    Silent,
    /// `n` bytes of body (with a truthful Content-Length).
    Bytes(usize),
}

/// An HTTP/1.1 server on 127.0.0.1:0 whose replies are chosen by path; it serves until the test ends.
fn serve(routes: &'static [(&'static str, Reply)]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, routes));
        }
    });
    base
}

fn answer(mut stream: TcpStream, routes: &[(&str, Reply)]) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let reply = routes
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(Reply::NotFound, |(_, r)| *r);
    match reply {
        Reply::NotFound => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Reply::Silent => {
            // Hold the connection open without a byte until the client hangs up.
            let _ = reader.read(&mut [0u8; 1]);
        }
        Reply::Bytes(n) => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&vec![b'x'; n]);
        }
    }
}

/// A hybrid node with tight input limits, so failures show in seconds: one try, a 2 s read timeout, 1 KiB.
fn strict_node(name: &str, config_dir: &Path) -> Cod {
    let file = config_dir.join("node.yaml");
    std::fs::write(
        &file,
        "InputSources:\n  ReadTimeout: 2s\n  MaxRetryCount: 1\n  MaxSize: 1KiB\n",
    )
    .expect("config");
    Cod::start(name, &["--config", file.to_str().expect("path")])
}

fn url_job(url: &str) -> Value {
    wasm_job(
        HELLO,
        json!({"InputSources": [{"Target": "/data", "Source": {"Type": "urlDownload", "Params": {"URL": url}}}]}),
    )
}

fn failed_with(cod: &Cod, job: Value, expect: &[&str]) {
    let body = cod.wait_terminal(&cod.submit(job), DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    let reasons = failure_reasons(&body);
    for e in expect {
        assert!(reasons.contains(e), "{e:?} not in {reasons:?}");
    }
}

#[test]
fn broken_urls_fail_executions_with_their_reason() {
    static ROUTES: [(&str, Reply); 3] = [
        ("/small", Reply::Bytes(100)),
        ("/silent", Reply::Silent),
        ("/big", Reply::Bytes(64 * 1024)),
    ];
    let base = serve(&ROUTES);
    let config = tempfile::tempdir().expect("tmp");
    let cod = strict_node("data-urls", config.path());

    failed_with(
        &cod,
        url_job(&format!("{base}/missing")),
        &["/missing", "404"],
    );
    failed_with(
        &cod,
        url_job(&format!("{base}/big")),
        &["/big", "larger than the limit of 1024 bytes"],
    );
    failed_with(&cod, url_job(&format!("{base}/silent")), &["/silent"]);
    // Nobody listens on this port: refused at once, not hung.
    let closed = format!("http://127.0.0.1:{}/gone", free_port());
    failed_with(&cod, url_job(&closed), &["/gone"]);

    // The node is unharmed: a good input still works, within the same limits.
    let body = cod.wait_terminal(&cod.submit(url_job(&format!("{base}/small"))), DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
}

#[test]
fn an_inline_tarball_that_escapes_its_directory_is_refused() {
    let tar = TarBuilder::new()
        .file("ok.txt", b"fine", 0o644)
        .file("../escaped.txt", b"gotcha", 0o644)
        .build();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let url = format!(
        "data:application/gzip;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(gz)
    );
    let config = tempfile::tempdir().expect("tmp");
    let cod = strict_node("data-inline", config.path());
    let job = wasm_job(
        HELLO,
        json!({"InputSources": [{"Target": "/data", "Source": {"Type": "inline", "Params": {"URL": url}}}]}),
    );
    failed_with(&cod, job, &["../escaped.txt", "escapes"]);
    assert!(
        !contains_file(&cod.dir, "escaped.txt"),
        "the escaping entry was written somewhere under {:?}",
        cod.dir
    );
}

/// Whether a file called `name` exists anywhere below `dir` (symlinks not followed).
fn contains_file(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let path = e.path();
            e.file_name() == name
                || (e.file_type().is_ok_and(|t| t.is_dir()) && contains_file(&path, name))
        })
}
