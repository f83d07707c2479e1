//! The hostile-job suite: jobs that try to escape, exhaust or take over the node they run on, in WASM and in
//! containers. This is the one place that proves containment. Every case asserts four things:
//! - the attack is contained, with a proof observed from the host (a marker file unread and untouched, no
//!   listener connection, no process left, a host file owned by the unprivileged mapped uid);
//! - the job's outcome is clear (Failed naming the limit, or Completed with the attempt visibly refused);
//! - the node is still healthy (`/agent/alive`, a normal job still runs);
//! - its data is intact (LMDB and libp2p key unchanged in place, an earlier result still downloads).
//!
//! Container cases need root (CI runs as root) and the test registry's tools, as `docker.rs` does; the
//! privilege-escalation probe is a small static C program compiled here with the system `cc`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::harness::{
    Cod, DEADLINE, execution, failure_reasons, fetch_result, run_stdout as stdout_of, state,
    wait_until, wasm_job,
};

/// A secret on the host that no job may read or change.
const SECRET: &str = "host-secret-7f3a";

/// A host-side secret in a fresh temp dir, with its path.
struct Marker {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Marker {
    fn new() -> Marker {
        let dir = tempfile::Builder::new()
            .prefix("cod-hostile-marker-")
            .tempdir()
            .expect("tmp");
        let file = dir.path().join("secret.txt");
        std::fs::write(&file, SECRET).expect("marker");
        Marker { dir, file }
    }

    /// The marker is unchanged and nothing was added next to it.
    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.file).expect("marker"),
            SECRET,
            "the host marker was changed"
        );
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("marker dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["secret.txt"], "a job wrote next to the host marker");
    }
}

/// What of a node's data must survive any job: its LMDB file and libp2p key, byte for byte where they must
/// not change, and one finished job whose result must still download.
struct NodeData {
    key: Vec<u8>,
    lmdb: PathBuf,
    earlier_job: String,
}

impl NodeData {
    /// Runs a normal WASM job to completion and records the node's data.
    fn record(cod: &Cod) -> NodeData {
        let earlier_job = cod.submit(wasm_job(crate::fixtures::HELLO, json!({})));
        let body = cod.wait_terminal(&earlier_job, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let data = cod.dir.join("data");
        NodeData {
            key: std::fs::read(data.join("identity.key")).expect("libp2p key"),
            lmdb: data.join("state/data.mdb"),
            earlier_job,
        }
    }

    /// The node answers, runs a normal job, and its data is intact.
    fn assert_intact(&self, cod: &Cod) {
        let (status, _) = cod.get("/api/v1/agent/alive");
        assert_eq!(status, 200, "the node is alive");
        let ok = cod.submit(wasm_job(crate::fixtures::HELLO, json!({})));
        let body = cod.wait_terminal(&ok, DEADLINE);
        assert_eq!(
            state(&body),
            "Completed",
            "a normal job still runs: {body:#}"
        );
        let data = cod.dir.join("data");
        assert_eq!(
            std::fs::read(data.join("identity.key")).expect("libp2p key"),
            self.key,
            "the libp2p key is unchanged"
        );
        let lmdb = std::fs::metadata(&self.lmdb).expect("the LMDB file is in place");
        assert!(lmdb.len() > 0);
        // The earlier job is still in the store and its result still downloads.
        let (status, results) = cod.get(&format!(
            "/api/v1/orchestrator/jobs/{}/results",
            self.earlier_job
        ));
        assert_eq!(status, 200, "{results}");
        let dest = tempfile::tempdir().expect("tmp");
        fetch_result(&results["Items"][0], dest.path());
        let stdout = std::fs::read_to_string(dest.path().join("stdout")).expect("stdout");
        assert!(stdout.starts_with("hello"), "{stdout}");
    }
}

/// The node's peak resident memory (`VmHWM`) in bytes.
fn peak_rss(cod: &Cod) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", cod.pid())).expect("node status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Bytes under `dir` (files only, links not followed).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// `cod job get` into a fresh dir: the CLI's status, its stderr, and the dir.
fn job_get(cod: &Cod, id: &str) -> (bool, String, tempfile::TempDir) {
    let dest = tempfile::tempdir().expect("tmp");
    let out = cod.cli(&[
        "job",
        "get",
        id,
        "--output-dir",
        &dest.path().display().to_string(),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dest,
    )
}

/// Nothing under `dir` holds the host secret, and every symlink there stays inside `dir`.
fn assert_no_host_content(dir: &Path) {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let meta = std::fs::symlink_metadata(e.path()).expect("meta");
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(e.path()).expect("link");
                assert!(
                    target.is_relative() && !target.starts_with(".."),
                    "a downloaded symlink leaves the result: {} -> {}",
                    e.path().display(),
                    target.display()
                );
            } else {
                let text = std::fs::read(e.path()).expect("read");
                assert!(
                    !String::from_utf8_lossy(&text).contains(SECRET),
                    "{} holds the host secret",
                    e.path().display()
                );
            }
        }
    }
}

// ===== WASM =====

/// Runs file operations named by its arguments against the WASI root preopen and prints one line each:
/// `r<path>` opens and reads (prints `OPEN r<path> <first bytes>`), `w<path>` creates and writes `pwned`,
/// `s<path>` makes a symlink at `<path>` whose target is the next argument, `h<path>` a hard link to the
/// file the next argument names. A refused operation prints
/// `DENY <arg> <errno>`. Ends with `END`.
const PROBE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink" (func $path_symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_link" (func $path_link (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "OPEN ")
  (data (i32.const 8) "DENY ")
  (data (i32.const 16) " ")
  (data (i32.const 24) "\n")
  (data (i32.const 32) "pwned")
  (data (i32.const 40) "END\n")
  ;; iov at 256, nwritten at 264, nread at 268, opened fd at 272, digits end at 320, read buffer at 4096,
  ;; argv pointers at 1024, argv strings at 8192.
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 256) (local.get $ptr))
    (i32.store (i32.const 260) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 256) (i32.const 1) (i32.const 264))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $n))
  (func $num (param $n i32) (local $p i32)
    (local.set $p (i32.const 320))
    (loop $l
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $l (local.get $n)))
    (call $write (local.get $p) (i32.sub (i32.const 320) (local.get $p))))
  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
  (func (export "_start")
    (local $argc i32) (local $i i32) (local $arg i32) (local $len i32) (local $op i32) (local $err i32) (local $target i32)
    (drop (call $args_sizes_get (i32.const 512) (i32.const 516)))
    (local.set $argc (i32.load (i32.const 512)))
    (drop (call $args_get (i32.const 1024) (i32.const 8192)))
    (local.set $i (i32.const 1))
    (block $end (loop $l
      (br_if $end (i32.ge_u (local.get $i) (local.get $argc)))
      (local.set $arg (call $arg (local.get $i)))
      (local.set $len (call $strlen (local.get $arg)))
      (local.set $op (i32.load8_u (local.get $arg)))
      (i32.store (i32.const 268) (i32.const 0))
      (if (i32.eq (local.get $op) (i32.const 104))
        (then
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (local.set $target (call $arg (local.get $i)))
          (local.set $err (call $path_link
            (i32.const 3) (i32.const 0) (local.get $target) (call $strlen (local.get $target)) (i32.const 3)
            (i32.add (local.get $arg) (i32.const 1)) (i32.sub (local.get $len) (i32.const 1))))))
      (if (i32.eq (local.get $op) (i32.const 115))
        (then
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (local.set $target (call $arg (local.get $i)))
          (local.set $err (call $path_symlink
            (local.get $target) (call $strlen (local.get $target)) (i32.const 3)
            (i32.add (local.get $arg) (i32.const 1)) (i32.sub (local.get $len) (i32.const 1)))))
        (else (if (i32.eq (local.get $op) (i32.const 104)) (then) (else (if (i32.eq (local.get $op) (i32.const 119))
          (then
            (local.set $err (call $path_open (i32.const 3) (i32.const 1)
              (i32.add (local.get $arg) (i32.const 1)) (i32.sub (local.get $len) (i32.const 1))
              (i32.const 9) (i64.const 0x40) (i64.const 0) (i32.const 0) (i32.const 272)))
            (if (i32.eqz (local.get $err)) (then
              (i32.store (i32.const 256) (i32.const 32))
              (i32.store (i32.const 260) (i32.const 5))
              (local.set $err (call $fd_write (i32.load (i32.const 272)) (i32.const 256) (i32.const 1) (i32.const 264)))
              (drop (call $fd_close (i32.load (i32.const 272)))))))
          (else
            (local.set $err (call $path_open (i32.const 3) (i32.const 1)
              (i32.add (local.get $arg) (i32.const 1)) (i32.sub (local.get $len) (i32.const 1))
              (i32.const 0) (i64.const 0x2) (i64.const 0) (i32.const 0) (i32.const 272)))
            (if (i32.eqz (local.get $err)) (then
              (i32.store (i32.const 256) (i32.const 4096))
              (i32.store (i32.const 260) (i32.const 64))
              (local.set $err (call $fd_read (i32.load (i32.const 272)) (i32.const 256) (i32.const 1) (i32.const 268)))
              (drop (call $fd_close (i32.load (i32.const 272))))))))))))
      (if (local.get $err)
        (then
          (call $write (i32.const 8) (i32.const 5))
          (call $write (local.get $arg) (local.get $len))
          (call $write (i32.const 16) (i32.const 1))
          (call $num (local.get $err)))
        (else
          (call $write (i32.const 0) (i32.const 5))
          (call $write (local.get $arg) (local.get $len))
          (if (i32.eq (local.get $op) (i32.const 114)) (then
            (call $write (i32.const 16) (i32.const 1))
            (call $write (i32.const 4096) (i32.load (i32.const 268)))))))
      (call $write (i32.const 24) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $write (i32.const 40) (i32.const 4))))
"#;

/// The probe's verdict on `arg`: `Some(true)` opened, `Some(false)` refused, `None` not reported.
fn probe_result(out: &str, arg: &str) -> Option<bool> {
    out.lines().find_map(|l| {
        if l.strip_prefix("OPEN ")
            .is_some_and(|r| r == arg || r.starts_with(&format!("{arg} ")))
        {
            Some(true)
        } else if l
            .strip_prefix("DENY ")
            .is_some_and(|r| r.starts_with(&format!("{arg} ")))
        {
            Some(false)
        } else {
            None
        }
    })
}

#[test]
fn wasm_escapes_are_contained() {
    let marker = Marker::new();
    let input = tempfile::tempdir().expect("tmp");
    std::fs::write(input.path().join("in.txt"), "input data").expect("input");
    // Links a user might have in an allow-listed folder, pointing out of it.
    std::os::unix::fs::symlink(&marker.file, input.path().join("abs-link")).expect("link");
    let up = format!(
        "{}{}",
        "../".repeat(input.path().components().count()),
        marker.file.display().to_string().trim_start_matches('/')
    );
    std::os::unix::fs::symlink(&up, input.path().join("rel-link")).expect("link");
    let allow = format!("{}:ro", input.path().display());
    let cod = Cod::start("hostile-wasm", &["--allow-listed-local-paths", &allow]);
    let data = NodeData::record(&cod);
    let node_data = cod.dir.join("data");
    let secret = marker.file.display().to_string();
    let dotdot = format!("../../../../../..{secret}");
    let key = node_data.join("identity.key").display().to_string();
    let lmdb = node_data.join("state/data.mdb").display().to_string();
    let escape_dir = marker.dir.path().join("pwned").display().to_string();
    // wasi-libc strips a leading `/` and resolves against the root preopen; a raw absolute path is tried too.
    let rel = |p: &str| p.trim_start_matches('/').to_owned();
    let reads = [
        format!("r{secret}"),
        format!("r{}", rel(&secret)),
        format!("r{dotdot}"),
        format!("rinputs/../..{secret}"),
        "r/etc/shadow".to_owned(),
        "retc/shadow".to_owned(),
        "r../etc/shadow".to_owned(),
        format!("r{}", rel(&key)),
        format!("r{}", rel(&lmdb)),
        "rinputs/abs-link".to_owned(),
        "rinputs/rel-link".to_owned(),
        "routputs/abs".to_owned(),
        "routputs/rel".to_owned(),
    ];
    let writes = [
        format!("w{escape_dir}"),
        format!("w{}", rel(&escape_dir)),
        format!("w../../../../..{escape_dir}"),
        "winputs/new".to_owned(),
        "winputs/in.txt".to_owned(),
        "wetc/cod-pwned".to_owned(),
        "wcod-pwned".to_owned(),
        "woutputs/../../cod-pwned".to_owned(),
    ];
    let mut args: Vec<String> = vec![
        // Symlinks the guest plants in its outputs, read back through the guest and later by the publisher.
        "soutputs/abs".into(),
        secret.clone(),
        "soutputs/rel".into(),
        dotdot.clone(),
        "rinputs/in.txt".into(),
        "woutputs/ok.txt".into(),
    ];
    args.extend(reads.iter().cloned());
    args.extend(writes.iter().cloned());
    // A hard link from a read-only input into the writable outputs would make the input writable.
    args.extend(["houtputs/hard".to_owned(), "inputs/in.txt".to_owned()]);
    args.push("woutputs/hard".to_owned());
    let id = cod.submit(wasm_job(
        PROBE,
        json!({
            "Engine": {"Params": {"Parameters": args}},
            "InputSources": [{"Target": "/inputs", "Source": {"Type": "localDirectory",
                "Params": {"SourcePath": input.path().display().to_string()}}}],
        }),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Completed", "{body:#}");
    let out = stdout_of(&body);
    assert!(out.ends_with("END\n"), "the probe ran to the end: {out}");
    // The legitimate operations work (so a broken probe cannot pass as containment).
    assert_eq!(probe_result(&out, "rinputs/in.txt"), Some(true), "{out}");
    assert!(out.contains("OPEN rinputs/in.txt input data"), "{out}");
    assert_eq!(probe_result(&out, "woutputs/ok.txt"), Some(true), "{out}");
    for arg in reads.iter().chain(&writes) {
        assert_eq!(
            probe_result(&out, arg),
            Some(false),
            "{arg} must be refused: {out}"
        );
    }
    assert_eq!(probe_result(&out, "houtputs/hard"), Some(false), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    marker.assert_untouched();
    assert!(!Path::new("/cod-pwned").exists() && !Path::new("/etc/cod-pwned").exists());
    assert_eq!(
        std::fs::read_to_string(input.path().join("in.txt")).expect("input"),
        "input data"
    );
    assert!(!input.path().join("new").exists());

    // The planted links are published as links; `cod job get` leaves out links that leave the download,
    // says so, and nothing of the host comes with the result.
    let (ok, stderr, dest) = job_get(&cod, &id);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("left out of the result") && stderr.contains("symlink"),
        "a clear warning: {stderr}"
    );
    assert_no_host_content(dest.path());
    data.assert_intact(&cod);
}

/// Grows memory by 64 KiB pages until refused, then traps.
const MEMORY_BOMB: &str = crate::fixtures::MEMORY_BOMB;

/// Appends 64 KiB blocks to `outputs/fill` until a write fails (at most 3 GiB), then exits 1.
const DISK_BOMB: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 32) "outputs/fill")
  (func (export "_start") (local $i i32) (local $fd i32)
    (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 32) (i32.const 12)
      (i32.const 1) (i64.const 0x40) (i64.const 0) (i32.const 0) (i32.const 64)))
    (local.set $fd (i32.load (i32.const 64)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (block $end (loop $l
      (br_if $end (i32.ge_u (local.get $i) (i32.const 49152)))
      (br_if $end (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    unreachable)
)
"#;

#[test]
fn wasm_bombs_are_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("cod.yaml");
    std::fs::write(
        &config,
        "Compute:\n  MaxOutput: 16MiB\n  MaxOutputSize: 32MiB\n",
    )
    .expect("config");
    let cod = Cod::start(
        "hostile-wasm-bombs",
        &["--config", &config.display().to_string()],
    );
    let data = NodeData::record(&cod);

    // memory.grow past the limit: refused, the trap fails the job naming memory.
    let id = cod.submit(wasm_job(
        MEMORY_BOMB,
        json!({"Resources": {"Memory": "64Mb"}}),
    ));
    let body = cod.wait_terminal(&id, DEADLINE);
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(
        failure_reasons(&body).contains("memory"),
        "{}",
        failure_reasons(&body)
    );

    // 1.5 GiB of stdout: the node keeps 16 MiB and says it cut the rest. (The peak is taken after the memory
    // bomb, whose 64 MiB of guest memory the node did hold.)
    let rss_before = peak_rss(&cod);
    let started = std::time::Instant::now();
    let id = cod.submit(wasm_job(
        // 24,000 blocks of 64 KiB: 1.5 GiB.
        &crate::fixtures::stdout_blocks(24_000, 65_536, b'y'),
        json!({"Timeouts": {"ExecutionTimeout": 120}}),
    ));
    let body = cod.wait_terminal(&id, Duration::from_secs(150));
    let took = started.elapsed();
    assert_eq!(state(&body), "Completed", "{body:#}");
    let run = &execution(&body)["RunOutput"];
    assert_eq!(run["StdoutTruncated"], true, "{run:#}");
    assert!(
        run["ErrorMsg"]
            .as_str()
            .unwrap_or_default()
            .contains("cut at 16777216 bytes"),
        "{run:#}"
    );
    let (ok, stderr, dest) = job_get(&cod, &id);
    assert!(ok, "{stderr}");
    let len = std::fs::metadata(dest.path().join("stdout"))
        .expect("stdout")
        .len();
    assert_eq!(len, 16 << 20, "stdout is cut at MaxOutput");

    // Filling the outputs: stopped at MaxOutputSize, the reason names the key.
    let id = cod.submit(wasm_job(
        DISK_BOMB,
        json!({"Timeouts": {"ExecutionTimeout": 120}}),
    ));
    let body = cod.wait_terminal(&id, Duration::from_secs(150));
    assert_eq!(state(&body), "Failed", "{body:#}");
    assert!(
        failure_reasons(&body).contains("Compute.MaxOutputSize"),
        "{}",
        failure_reasons(&body)
    );
    let on_disk = du(&cod.dir.join("data"));
    assert!(
        on_disk < 512 << 20,
        "the node's data dir holds {on_disk} bytes"
    );

    let rss_after = peak_rss(&cod);
    eprintln!(
        "wasm bombs: stdout bomb took {took:?}; node VmHWM {} MiB before, {} MiB after; data dir {} MiB",
        rss_before >> 20,
        rss_after >> 20,
        on_disk >> 20
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "node memory stays bounded: VmHWM {rss_before} -> {rss_after}"
    );
    data.assert_intact(&cod);
}

// ===== Validation =====

#[test]
fn escaping_paths_in_specs_are_refused_at_submit() {
    let cod = Cod::start("hostile-spec", &[]);
    let cases = [
        (
            json!({"ResultPaths": [{"Name": "outputs", "Path": "/outputs/../../etc"}]}),
            "ResultPaths[0].Path: must not contain ..",
        ),
        (
            json!({"ResultPaths": [{"Name": "../../escape", "Path": "/outputs"}]}),
            "ResultPaths[0].Name: must be a plain folder name",
        ),
        (
            json!({"ResultPaths": [{"Name": "/etc", "Path": "/outputs"}]}),
            "ResultPaths[0].Name: must be a plain folder name",
        ),
        (
            json!({"ResultPaths": [{"Name": "..", "Path": "/outputs"}]}),
            "ResultPaths[0].Name: must be a plain folder name",
        ),
        (
            json!({"ResultPaths": [{"Name": "outputs", "Path": "outputs"}]}),
            "ResultPaths[0].Path: must be an absolute path",
        ),
        (
            json!({"InputSources": [{"Target": "/inputs/../../etc", "Source": {"Type": "inline",
                "Params": {"URL": "data:,x"}}}]}),
            "InputSources[1].Target: must not contain ..",
        ),
        (
            json!({"InputSources": [{"Target": "../x", "Source": {"Type": "inline",
                "Params": {"URL": "data:,x"}}}]}),
            "InputSources[1].Target: must not contain ..",
        ),
    ];
    for (extra, want) in cases {
        let (status, body) = cod.put(
            "/api/v1/orchestrator/jobs",
            &json!({"Job": wasm_job(crate::fixtures::HELLO, extra.clone())}),
        );
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(
            body.to_string().contains(want),
            "{extra}: want {want:?} in {body}"
        );
    }
    let (status, list) = cod.get("/api/v1/orchestrator/jobs");
    assert_eq!(status, 200);
    assert_eq!(
        list["Items"].as_array().map_or(0, Vec::len),
        0,
        "nothing refused was stored: {list}"
    );
}

// ===== Containers =====

#[cfg(feature = "executor-oci")]
mod container {
    use std::io::{Read, Write};
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::Value;

    use super::*;
    use crate::registry::{PushOptions, RawImage, TestRegistry};
    use crate::tarball::TarBuilder;

    /// `sh -c SCRIPT` in `image`, with `extra` task fields.
    fn sh(image: &str, script: &str, extra: Value) -> Value {
        let mut task = json!({
            "Name": "main",
            "Engine": {"Type": "docker", "Params": {"Image": image, "Entrypoint": ["/bin/sh", "-c"],
                       "Parameters": [script]}},
            "Publisher": {"Type": "local"},
            "ResultPaths": [{"Name": "outputs", "Path": "/outputs"}],
            "Timeouts": {"ExecutionTimeout": 60}
        });
        if let (Some(t), Some(e)) = (task.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                t.insert(k.clone(), v.clone());
            }
        }
        json!({"Type": "batch", "Count": 1, "Tasks": [task]})
    }

    fn local_input(target: &str, dir: &Path) -> Value {
        json!({"Target": target, "Source": {"Type": "localDirectory",
               "Params": {"SourcePath": dir.display().to_string()}}})
    }

    /// Host processes whose command line contains `token`.
    fn processes_with(token: &str) -> usize {
        let ps = Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("ps");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(token) && !l.contains("ps -eo"))
            .count()
    }

    #[test]
    fn container_escapes_are_contained() {
        let registry = TestRegistry::start();
        let image = registry.push_busybox("hostile/escape", "1", &PushOptions::default());
        let marker = Marker::new();
        let input = tempfile::tempdir().expect("tmp");
        std::fs::write(input.path().join("in.txt"), "input data").expect("input");
        std::os::unix::fs::symlink(&marker.file, input.path().join("abs-link")).expect("link");
        let gate = tempfile::tempdir().expect("tmp");
        let allow = format!("{}:ro,{}:ro", input.path().display(), gate.path().display());
        let cod = Cod::start("hostile-oci", &["--allow-listed-local-paths", &allow]);
        let data = NodeData::record(&cod);
        let node_data = cod.dir.join("data");
        let secret = marker.file.display().to_string();
        let script = format!(
            "try() {{ if eval \"$2\" >/dev/null 2>&1; then echo \"ESCAPED $1\"; else echo \"refused $1\"; fi; }}; \
             try proc1-root 'cat /proc/1/root{secret}'; \
             try proc-self-root 'cat /proc/self/root{secret}'; \
             try direct 'cat {secret}'; \
             try shadow 'cat /etc/shadow'; \
             try input-abs-link 'cat /inputs/abs-link'; \
             try node-key 'cat {key}'; \
             try node-lmdb 'cat {lmdb}'; \
             try write-rootfs 'echo x > /etc/pwned'; \
             try write-root 'echo x > /pwned'; \
             try write-inputs 'echo x > /inputs/new'; \
             try overwrite-input 'echo x > /inputs/in.txt'; \
             try hardlink-input 'ln /inputs/in.txt /outputs/hard'; \
             try write-host 'echo x > {escape}'; \
             cat /inputs/in.txt; echo; \
             ln -s {secret} /outputs/abs-link; ln -s /etc/passwd /outputs/passwd; \
             ln -s ../../../../../../../..{secret} /outputs/rel-link; \
             id -u > /outputs/owned; grep NoNewPrivs /proc/self/status; \
             while [ ! -e /gate/go ]; do sleep 0.1; done; echo done",
            key = node_data.join("identity.key").display(),
            lmdb = node_data.join("state/data.mdb").display(),
            escape = marker.dir.path().join("pwned").display(),
        );
        let id = cod.submit(sh(
            &image.reference,
            &script,
            json!({"InputSources": [local_input("/inputs", input.path()), local_input("/gate", gate.path())]}),
        ));
        // While it waits at the gate, its output file is on the host: owned by the mapped uid, not root.
        let executions = node_data.join("executions");
        let owned = wait_until("the job's output file on the host", DEADLINE, || {
            std::fs::read_dir(&executions)
                .ok()?
                .flatten()
                .map(|e| e.path().join("result/outputs/owned"))
                .find(|p| p.exists())
        });
        let meta = std::fs::metadata(&owned).expect("owned");
        assert_ne!(meta.uid(), 0, "container root is not host root");
        assert!(meta.uid() >= 100_000, "the mapped uid: {}", meta.uid());
        std::fs::write(gate.path().join("go"), "").expect("open the gate");
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let out = stdout_of(&body);
        assert!(out.contains("input data"), "{out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{out}");
        assert!(out.ends_with("done\n"), "{out}");
        assert!(!out.contains("ESCAPED"), "{out}");
        assert_eq!(out.matches("refused ").count(), 13, "{out}");
        assert!(!out.contains(SECRET), "{out}");
        marker.assert_untouched();
        assert!(!Path::new("/pwned").exists() && !Path::new("/etc/pwned").exists());
        assert!(!input.path().join("new").exists());

        // The links in /outputs go out as links, never as the host files they name.
        let (ok, stderr, dest) = job_get(&cod, &id);
        assert!(ok, "{stderr}");
        assert!(
            stderr.contains("left out of the result") && stderr.contains("symlink"),
            "a clear warning: {stderr}"
        );
        assert!(
            dest.path().join("stdout").exists(),
            "the rest of the result is there"
        );
        assert_no_host_content(dest.path());
        assert!(!dest.path().join("outputs/hard").exists());
        data.assert_intact(&cod);
    }

    /// Mount points reached through symlinks in the image: the runtime must resolve result paths and input
    /// targets inside the root filesystem, never on the host it sees while it sets the container up.
    #[test]
    fn mount_points_through_image_symlinks_stay_inside() {
        let registry = TestRegistry::start();
        let marker = Marker::new();
        let input = tempfile::tempdir().expect("tmp");
        std::fs::write(input.path().join("in.txt"), "input data").expect("input");
        let host_dir = marker.dir.path().display().to_string();
        let layer = TarBuilder::new()
            .dir("bin", 0o755)
            .file(
                "bin/busybox",
                &std::fs::read("/bin/busybox").expect("busybox"),
                0o755,
            )
            .symlink("evil", &host_dir)
            .symlink("evil-rel", &format!("../../../../../..{host_dir}"))
            .build();
        let image =
            registry.push_raw_image("hostile/mount-links", "1", &RawImage::new(vec![layer]));
        let allow = format!("{}:ro", input.path().display());
        let cod = Cod::start("hostile-mounts", &["--allow-listed-local-paths", &allow]);
        let data = NodeData::record(&cod);
        for (result_path, target) in [("/evil/out", "/evil/in"), ("/evil-rel/out", "/evil-rel/in")]
        {
            let id = cod.submit(json!({"Type": "batch", "Count": 1, "Tasks": [{
                "Name": "main",
                "Engine": {"Type": "docker", "Params": {"Image": image.reference,
                           "Entrypoint": ["/bin/busybox", "sh", "-c"],
                           "Parameters": [format!("/bin/busybox cat {target}/in.txt; \
                                                  echo pwned > {result_path}/x; /bin/busybox ls {host_dir}")]}},
                "InputSources": [local_input(target, input.path())],
                "Publisher": {"Type": "local"},
                "ResultPaths": [{"Name": "outputs", "Path": result_path}],
                "Timeouts": {"ExecutionTimeout": 60}
            }]}));
            let body = cod.wait_terminal(&id, DEADLINE);
            // libcontainer resolves mount points with pathrs and refuses to pass through any symlink in the
            // root filesystem, so the job fails at setup, naming the mount, before anything runs.
            assert_eq!(state(&body), "Failed", "{body:#}");
            let reason = failure_reasons(&body);
            assert!(reason.contains("could not be set up"), "{reason}");
            assert!(reason.contains(target), "names the mount: {reason}");
            marker.assert_untouched();
        }
        data.assert_intact(&cod);
    }

    #[test]
    fn container_bombs_are_bounded() {
        let registry = TestRegistry::start();
        let image = registry.push_busybox("hostile/bombs", "1", &PushOptions::default());
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join("cod.yaml");
        std::fs::write(
            &config,
            "Compute:\n  MaxOutput: 64MiB\n  MaxOutputSize: 64MiB\n",
        )
        .expect("config");
        let cod = Cod::start(
            "hostile-oci-bombs",
            &["--config", &config.display().to_string()],
        );
        let data = NodeData::record(&cod);
        let rss_before = peak_rss(&cod);

        // A classic fork bomb: the pids limit holds it, the timeout ends it, nothing of it survives.
        let token = format!("forkbomb{}", std::process::id());
        let id = cod.submit(sh(
            &image.reference,
            &format!("b() {{ b | b & }}; b; sleep 30; echo {token}"),
            json!({"Timeouts": {"ExecutionTimeout": 5}, "Resources": {"Memory": "512Mb"}}),
        ));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Failed", "{body:#}");
        assert!(
            failure_reasons(&body).contains("timed out"),
            "{}",
            failure_reasons(&body)
        );
        wait_until("the fork bomb's processes to go", DEADLINE, || {
            (processes_with(&token) == 0).then_some(())
        });

        // Memory: the kernel's OOM kill is reported as such.
        let id = cod.submit(sh(
            &image.reference,
            "dd if=/dev/zero of=/dev/null bs=200M count=1",
            json!({"Resources": {"Memory": "32Mb"}}),
        ));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Failed", "{body:#}");
        assert!(
            failure_reasons(&body).contains("out of memory"),
            "{}",
            failure_reasons(&body)
        );

        // /tmp is a tmpfs with a size: a job filling it gets ENOSPC at 256 MiB, not the node's memory.
        let id = cod.submit(sh(
            &image.reference,
            "dd if=/dev/zero of=/tmp/fill bs=1M count=400 2>&1 | grep -m1 'No space'; du -m /tmp/fill",
            json!({"Resources": {"Memory": "1Gb"}}),
        ));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let out = stdout_of(&body);
        assert!(out.contains("No space left on device"), "{out}");
        let mb: u64 = out
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a size: {out}"));
        assert!(mb <= 256, "/tmp holds {mb} MiB");

        // Filling /outputs: stopped at MaxOutputSize, the node's disk keeps its space.
        let id = cod.submit(sh(
            &image.reference,
            "dd if=/dev/zero of=/outputs/fill bs=1M count=3000",
            json!({"Resources": {"Memory": "1Gb"}}),
        ));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Failed", "{body:#}");
        assert!(
            failure_reasons(&body).contains("Compute.MaxOutputSize"),
            "{}",
            failure_reasons(&body)
        );
        let on_disk = du(&cod.dir.join("data"));
        assert!(
            on_disk < 1 << 30,
            "the node's data dir holds {on_disk} bytes"
        );

        // The same limit holds for a sparse file (100 GiB of zeros the publisher would pack) and for a
        // swarm of 20,000 empty files (inodes): each counts its length, at least 4 KiB.
        for bomb in [
            "dd if=/dev/zero of=/outputs/sparse bs=1 count=1 seek=107374182400; sleep 100",
            "cd /outputs && seq 1 20000 | xargs touch; sleep 100",
        ] {
            let started = std::time::Instant::now();
            let id = cod.submit(sh(
                &image.reference,
                bomb,
                json!({"Timeouts": {"ExecutionTimeout": 110}}),
            ));
            // Generous: tens of thousands of file creations are slow on a busy 2-core machine.
            let body = cod.wait_terminal(&id, Duration::from_secs(120));
            eprintln!("{bomb}: {} after {:?}", state(&body), started.elapsed());
            assert_eq!(state(&body), "Failed", "{bomb}: {body:#}");
            assert!(
                failure_reasons(&body).contains("Compute.MaxOutputSize"),
                "{bomb}: {}",
                failure_reasons(&body)
            );
        }

        // 1.1 GiB on stdout: the node keeps MaxOutput of it while the job runs and says it cut the rest.
        // (1 MiB writes: busybox `head` writes 4 KiB at a time, which on 2 busy cores takes minutes.)
        let started = std::time::Instant::now();
        let id = cod.submit(sh(
            &image.reference,
            "dd if=/dev/zero bs=1M count=1100 2>/dev/null; echo finished >&2",
            json!({"Timeouts": {"ExecutionTimeout": 120}}),
        ));
        let stdout_file = wait_until("the stdout bomb to start", DEADLINE, || {
            std::fs::read_dir(cod.dir.join("data/executions"))
                .ok()?
                .flatten()
                .map(|e| e.path().join("result/stdout"))
                .find(|p| p.exists())
        });
        let mut largest = 0;
        let body = wait_until("the stdout bomb to end", Duration::from_secs(150), || {
            largest = largest.max(std::fs::metadata(&stdout_file).map_or(0, |m| m.len()));
            let body = cod.job(&id);
            ["Completed", "Failed"]
                .contains(&state(&body).as_str())
                .then_some(body)
        });
        let took = started.elapsed();
        assert_eq!(state(&body), "Completed", "{body:#}");
        let run = &execution(&body)["RunOutput"];
        assert_eq!(run["StdoutTruncated"], true, "{run:#}");
        assert_eq!(
            run["stderr"], "finished\n",
            "the job ran to its end: {run:#}"
        );
        assert!(
            run["ErrorMsg"]
                .as_str()
                .unwrap_or_default()
                .contains("cut at 67108864 bytes"),
            "{run:#}"
        );
        assert!(
            largest <= 64 << 20,
            "the stdout file never held more than the cap: {largest}"
        );
        let (ok, stderr, dest) = job_get(&cod, &id);
        assert!(ok, "{stderr}");
        let len = std::fs::metadata(dest.path().join("stdout"))
            .expect("stdout")
            .len();
        assert_eq!(len, 64 << 20, "stdout is cut at MaxOutput");
        let rss_after = peak_rss(&cod);
        eprintln!(
            "container bombs: stdout bomb took {took:?}; node VmHWM {} MiB before, {} MiB after; \
             data dir {} MiB after the disk bomb",
            rss_before >> 20,
            rss_after >> 20,
            on_disk >> 20
        );
        assert!(
            rss_after < rss_before + (64 << 20),
            "node memory stays bounded: VmHWM {rss_before} -> {rss_after}"
        );
        data.assert_intact(&cod);
    }

    /// A host-side address on a veth pair (this kernel has no `dummy` links) with an `unreachable` route for
    /// the rest of its subnet, removed on drop.
    struct Dummy {
        name: &'static str,
    }

    const DUMMY_ADDR: &str = "10.213.77.1";

    impl Dummy {
        fn create() -> Dummy {
            let name = "codhostile0";
            let peer = "codhostile1";
            // A link left by a killed run of this test.
            let _ = Command::new("ip")
                .args(["link", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
            for args in [
                vec!["link", "add", name, "type", "veth", "peer", "name", peer],
                vec!["addr", "add", &format!("{DUMMY_ADDR}/32"), "dev", name],
                vec!["link", "set", name, "up"],
                vec!["link", "set", peer, "up"],
            ] {
                let ok = Command::new("ip").args(&args).status().expect("ip");
                assert!(ok.success(), "ip {args:?} (needs root)");
            }
            let _ = Command::new("ip")
                .args(["route", "replace", "unreachable", "10.213.77.0/24"])
                .status();
            Dummy { name }
        }
    }

    impl Drop for Dummy {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", self.name]).status();
            let _ = Command::new("ip")
                .args(["route", "del", "unreachable", "10.213.77.0/24"])
                .status();
        }
    }

    /// A TCP listener counting connections, in a thread.
    fn tcp_counter(addr: &str) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((addr, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut s) = s {
                    let _ = s.write_all(b"LEAKED\n");
                    let mut b = [0u8; 16];
                    let _ = s.read(&mut b);
                }
            }
        });
        (port, seen)
    }

    /// A UDP socket counting datagrams, in a thread.
    fn udp_counter(addr: &str) -> (u16, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind((addr, 0)).expect("bind");
        let port = socket.local_addr().expect("addr").port();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while socket.recv_from(&mut b).is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        (port, seen)
    }

    #[test]
    fn network_none_reaches_nothing() {
        let _dummy = Dummy::create();
        let registry = TestRegistry::start();
        let image = registry.push_busybox("hostile/net", "1", &PushOptions::default());
        let cod = Cod::start("hostile-net", &[]);
        let data = NodeData::record(&cod);
        let (lo_port, lo_seen) = tcp_counter("127.0.0.1");
        let (dummy_port, dummy_seen) = tcp_counter(DUMMY_ADDR);
        let (udp_port, udp_seen) = udp_counter(DUMMY_ADDR);
        let (udp_lo_port, udp_lo_seen) = udp_counter("127.0.0.1");
        // The listeners work from the host (so silence below means containment, not a dead listener).
        std::net::TcpStream::connect((DUMMY_ADDR, dummy_port)).expect("host connect");
        wait_until("the host's own connection", DEADLINE, || {
            (dummy_seen.load(Ordering::SeqCst) == 1).then_some(())
        });
        let script = format!(
            "try() {{ if eval \"$2\" >/dev/null 2>&1; then echo \"ESCAPED $1\"; else echo \"refused $1\"; fi; }}; \
             try tcp-lo 'echo hi | nc -w 2 127.0.0.1 {lo_port} | grep LEAKED'; \
             try tcp-host 'echo hi | nc -w 2 {DUMMY_ADDR} {dummy_port} | grep LEAKED'; \
             try tcp-api 'echo hi | nc -w 2 127.0.0.1 {api}'; \
             echo x | nc -u -w 1 {DUMMY_ADDR} {udp_port}; echo x | nc -u -w 1 127.0.0.1 {udp_lo_port}; \
             try dns 'nslookup example.com'; \
             try dns-host 'nslookup example.com {DUMMY_ADDR}'; \
             try ping 'ping -c 1 -W 1 {DUMMY_ADDR}'; \
             ls /sys/class/net | tr '\\n' ' '; echo",
            api = cod.port(),
        );
        let id = cod.submit(sh(&image.reference, &script, json!({})));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let out = stdout_of(&body);
        assert!(!out.contains("ESCAPED"), "{out}");
        assert_eq!(out.matches("refused ").count(), 6, "{out}");
        assert_eq!(out.lines().last(), Some("lo "), "only loopback: {out}");
        assert_eq!(
            lo_seen.load(Ordering::SeqCst),
            0,
            "no connection to host loopback"
        );
        assert_eq!(
            dummy_seen.load(Ordering::SeqCst),
            1,
            "only the host's own connection"
        );
        // A datagram sent before the job ended would be here by now: it would cross only the host's stack.
        assert_eq!(
            udp_seen.load(Ordering::SeqCst),
            0,
            "no datagram to the host address"
        );
        assert_eq!(
            udp_lo_seen.load(Ordering::SeqCst),
            0,
            "no datagram to host loopback"
        );
        data.assert_intact(&cod);
    }

    /// Tries each privileged operation and prints `name=ALLOWED` or `name=<errno name>`, then `done`. Takes
    /// the host path of a secret and a host pid (the node's) as arguments.
    const PRIVESC_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *what, long rc) {
    if (rc >= 0) printf("%s=ALLOWED\n", what);
    else printf("%s=%s\n", what, strerrorname_np(errno));
    fflush(stdout);
}

static long open_rw(const char *path, int flags) {
    int fd = open(path, flags);
    if (fd < 0) return -1;
    if ((flags & O_ACCMODE) != O_RDONLY && write(fd, "1", 1) < 0) { close(fd); return -1; }
    char b[1];
    if ((flags & O_ACCMODE) == O_RDONLY && read(fd, b, 1) < 0) { close(fd); return -1; }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "ids") == 0) {
        /* Run as a setuid-root file by an unprivileged user: no-new-privileges must keep it unprivileged. */
        printf("euid=%d uid=%d\n", (int)geteuid(), (int)getuid());
        report("setuid-0", setuid(0));
        printf("done\n");
        return 0;
    }
    const char *secret = argv[1];
    pid_t host_pid = atoi(argv[2]);
    report("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
    report("mount-proc", mount("proc", "/tmp", "proc", 0, NULL));
    report("remount-root-rw", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    report("ptrace-host", ptrace(PTRACE_ATTACH, host_pid, 0, 0));
    report("kill-host", kill(host_pid, 0));
    report("mknod-mem", mknod("/tmp/mem", S_IFCHR | 0600, makedev(1, 1)) < 0 ? -1 : open_rw("/tmp/mem", O_RDONLY));
    report("dev-mem", open_rw("/dev/mem", O_RDONLY));
    report("dev-kmem", open_rw("/dev/kmem", O_RDONLY));
    report("dev-port", open_rw("/dev/port", O_RDONLY));
    report("dev-kmsg", open_rw("/dev/kmsg", O_RDONLY));
    report("dev-sda", open_rw("/dev/sda", O_RDONLY));
    report("proc-sys-write", open_rw("/proc/sys/kernel/hostname", O_WRONLY));
    report("proc-sys-vm", open_rw("/proc/sys/vm/drop_caches", O_WRONLY));
    report("sysrq", open_rw("/proc/sysrq-trigger", O_WRONLY));
    report("sys-write", open_rw("/sys/kernel/uevent_helper", O_WRONLY));
    report("sys-cgroup-write", open_rw("/sys/fs/cgroup/memory/memory.limit_in_bytes", O_WRONLY));
    report("add-key", syscall(SYS_add_key, "user", "cod", "v", 1, -2));
    report("keyctl-join", syscall(SYS_keyctl, 1, 0));
    report("init-module", syscall(SYS_init_module, NULL, 0, ""));
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("open-by-handle", syscall(SYS_open_by_handle_at, AT_FDCWD, NULL, O_RDONLY));
    report("setns", syscall(SYS_setns, 0, CLONE_NEWNET));
    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    long sent = -1;
    if (raw >= 0) {
        struct sockaddr_in to = { .sin_family = AF_INET };
        inet_pton(AF_INET, argv[3], &to.sin_addr);
        struct icmphdr ping = { .type = ICMP_ECHO };
        sent = sendto(raw, &ping, sizeof ping, 0, (struct sockaddr *)&to, sizeof to);
    }
    report("raw-send", sent);
    /* A sibling inside the same container: reported, not asserted (Docker's profile allows ptrace; the
       kernel's Yama setting decides, and it stays inside the container either way). */
    pid_t sib = fork();
    if (sib == 0) { pause(); _exit(0); }
    pid_t tracer = fork();
    if (tracer == 0) { report("ptrace-sibling", ptrace(PTRACE_ATTACH, sib, 0, 0)); _exit(0); }
    waitpid(tracer, NULL, 0);
    kill(sib, SIGKILL);
    waitpid(sib, NULL, 0);
    /* In children: these change the process for good. */
    pid_t c = fork();
    if (c == 0) {
        report("unshare-user", unshare(CLONE_NEWUSER));
        report("unshare-mount", unshare(CLONE_NEWNS));
        _exit(0);
    }
    waitpid(c, NULL, 0);
    c = fork();
    if (c == 0) {
        /* The classic chroot escape: chroot into a subdirectory, climb out with .., chroot to it. */
        mkdir("/tmp/jail", 0755);
        if (chroot("/tmp/jail") == 0) {
            for (int i = 0; i < 64; i++) chdir("..");
            chroot(".");
        }
        report("chroot-escape-read", open_rw(secret, O_RDONLY));
        _exit(0);
    }
    waitpid(c, NULL, 0);
    printf("done\n");
    return 0;
}
"#;

    #[test]
    fn privilege_escalation_is_refused() {
        let _dummy = Dummy::create();
        let tools = tempfile::tempdir().expect("tmp");
        let src = tools.path().join("privesc.c");
        std::fs::write(&src, PRIVESC_C).expect("source");
        let bin = tools.path().join("privesc");
        let cc = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("cc (tests/run.sh installs gcc and libc6-dev)");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let registry = TestRegistry::start();
        let image = registry.push_busybox("hostile/privesc", "1", &PushOptions::default());
        let marker = Marker::new();
        let allow = format!("{}:ro", tools.path().display());
        let cod = Cod::start("hostile-privesc", &["--allow-listed-local-paths", &allow]);
        let data = NodeData::record(&cod);
        let id = cod.submit(sh(
            &image.reference,
            &format!(
                "/tools/privesc {} {} {DUMMY_ADDR}",
                marker.file.display(),
                cod.pid()
            ),
            json!({"InputSources": [local_input("/tools", tools.path())]}),
        ));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let out = stdout_of(&body);
        assert!(out.ends_with("done\n"), "the probe ran to the end: {out}");
        let verdict = |name: &str| -> String {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} not reported: {out}"))
                .to_owned()
        };
        for name in [
            "mount",
            "mount-proc",
            "remount-root-rw",
            "ptrace-host",
            "kill-host",
            "mknod-mem",
            "dev-mem",
            "dev-kmem",
            "dev-port",
            "dev-kmsg",
            "dev-sda",
            "proc-sys-write",
            "proc-sys-vm",
            "sysrq",
            "sys-write",
            "sys-cgroup-write",
            "add-key",
            "keyctl-join",
            "init-module",
            "bpf",
            "open-by-handle",
            "setns",
            "raw-send",
            "unshare-user",
            "unshare-mount",
            "chroot-escape-read",
        ] {
            assert_ne!(verdict(name), "ALLOWED", "{name}: {out}");
        }
        // The host's pid is not even visible from the container's pid namespace.
        assert_eq!(verdict("kill-host"), "ESRCH", "{out}");
        eprintln!("privilege escalation probe:\n{out}");

        // A setuid-root file in the image, run by an unprivileged user, stays unprivileged.
        let layer = TarBuilder::new()
            .dir("bin", 0o755)
            .file("bin/privesc", &std::fs::read(&bin).expect("binary"), 0o4755)
            .build();
        let setuid_image = registry.push_raw_image(
            "hostile/setuid",
            "1",
            &RawImage::new(vec![layer]).with_config(json!({"config": {"User": "65534:65534"}})),
        );
        let id = cod.submit(json!({"Type": "batch", "Count": 1, "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "docker", "Params": {"Image": setuid_image.reference,
                       "Entrypoint": ["/bin/privesc", "ids"]}},
            "Publisher": {"Type": "noop"},
            "Timeouts": {"ExecutionTimeout": 60}
        }]}));
        let body = cod.wait_terminal(&id, DEADLINE);
        assert_eq!(state(&body), "Completed", "{body:#}");
        let out = stdout_of(&body);
        assert!(out.contains("euid=65534 uid=65534\n"), "{out}");
        assert!(out.contains("setuid-0=EPERM\n"), "{out}");
        marker.assert_untouched();
        data.assert_intact(&cod);
    }
}
