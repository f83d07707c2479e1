//! The `nvidia-smi` probe: what Bacalhau does, for builds that cannot load NVML themselves (static musl).
//!
//! The tool is looked for under the driver root's `usr/bin`, then on `PATH`. Its CSV has no CUDA version and
//! no device minor number; the minor is read from procfs by bus id when the driver publishes it there, else the
//! index is taken (the driver numbers `/dev/nvidia<N>` in probe order, so they agree on ordinary hosts).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::probe::{GpuProbe, Inventory, ProbeError, ProbeSource, normalize_pci, under};
use super::procfs;
use super::{Gpu, GpuVendor};

/// The query, as Bacalhau's `nvidia-smi` provider plus the UUID, bus id and driver version.
const QUERY: &str = "--query-gpu=index,name,uuid,memory.total,pci.bus_id,driver_version";

/// Runs `nvidia-smi`.
#[derive(Debug)]
pub(super) struct SmiProbe {
    /// The driver root (`/` on a normal host).
    root: PathBuf,
}

impl SmiProbe {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn tool(&self) -> Option<PathBuf> {
        let in_root = under(&self.root, "/usr/bin/nvidia-smi");
        if in_root.is_file() {
            return Some(in_root);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nvidia-smi"))
                .find(|p| p.is_file())
        })
    }
}

impl GpuProbe for SmiProbe {
    fn source(&self) -> ProbeSource {
        ProbeSource::NvidiaSmi
    }

    fn probe(&self) -> Result<Inventory, ProbeError> {
        let tool = self
            .tool()
            .ok_or_else(|| ProbeError::Unavailable("nvidia-smi is not installed".into()))?;
        // Blocking, like every probe. A wedged driver can hang nvidia-smi for minutes: past the limit it is
        // killed and the node starts without GPUs (and says why) rather than not at all.
        let out = run_with_limit(
            Command::new(&tool).args([QUERY, "--format=csv,noheader,nounits"]),
            TOOL_LIMIT,
        )
        .map_err(|e| ProbeError::Failed(format!("cannot run {}: {e}", tool.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let said = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            return Err(ProbeError::Failed(format!(
                "{} exited with {}: {}",
                tool.display(),
                out.status,
                said.trim()
            )));
        }
        let mut inventory = parse(&String::from_utf8_lossy(&out.stdout))?;
        for gpu in &mut inventory.gpus {
            gpu.minor = procfs::minor_of(Path::new("/"), &gpu.pci_address).or(Some(gpu.index));
        }
        Ok(inventory)
    }
}

/// How long nvidia-smi may take (it answers in well under a second on a healthy driver).
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// Runs `cmd` to its end, or kills it after `limit` (`TimedOut`). Output is read on threads of its own so a
/// chatty child never blocks on a full pipe.
fn run_with_limit(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s; killed", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Parses the CSV of [`QUERY`] (`--format=csv,noheader,nounits`). Minor numbers are left `None`.
pub(super) fn parse(text: &str) -> Result<Inventory, ProbeError> {
    let mut gpus = Vec::new();
    let mut driver = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            ProbeError::Malformed(format!("nvidia-smi line {}: {why}: {line:?}", n + 1))
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 6 {
            return Err(bad("expected 6 fields"));
        }
        // A model name with a comma in it spreads over several fields; the other five are fixed.
        let k = fields.len();
        let index = fields[0]
            .parse::<u32>()
            .map_err(|_| bad("index is not a number"))?;
        let name = fields[1..k - 4].join(", ");
        let memory_mib = match fields[k - 3] {
            // "[N/A]" or "[Not Supported]" (integrated GPUs): unknown.
            m if m.starts_with('[') => 0,
            m => m
                .parse::<u64>()
                .map_err(|_| bad("memory.total is not a number"))?,
        };
        let version = fields[k - 1];
        if !version.is_empty() && !version.starts_with('[') {
            driver = Some(version.to_owned());
        }
        gpus.push(Gpu {
            index,
            name,
            vendor: GpuVendor::Nvidia,
            memory_bytes: memory_mib.saturating_mul(1 << 20),
            pci_address: normalize_pci(fields[k - 2]),
            uuid: fields[k - 4].to_owned(),
            minor: None,
        });
    }
    gpus.sort_by_key(|g| g.index);
    Ok(Inventory {
        gpus,
        driver_version: driver,
        cuda_version: None,
        source: ProbeSource::NvidiaSmi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a two-GPU host (A100 and T4 mixed, as on a test bench), with nvidia-smi's spacing.
    const TWO: &str = "\
0, NVIDIA A100-SXM4-40GB, GPU-5e3a1b2c-1111-2222-3333-444455556666, 40960, 00000000:3B:00.0, 550.54.15
1, Tesla T4, GPU-0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff, 15360, 00000000:AF:00.0, 550.54.15
";

    #[test]
    fn parses_captured_output() {
        let inv = parse(TWO).expect("parses");
        assert_eq!(inv.source, ProbeSource::NvidiaSmi);
        assert_eq!(inv.driver_version.as_deref(), Some("550.54.15"));
        assert_eq!(inv.cuda_version, None);
        assert_eq!(inv.gpus.len(), 2);
        let a = &inv.gpus[0];
        assert_eq!(a.index, 0);
        assert_eq!(a.name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(a.uuid, "GPU-5e3a1b2c-1111-2222-3333-444455556666");
        assert_eq!(a.memory_bytes, 40960 << 20);
        assert_eq!(a.pci_address, "0000:3B:00.0");
        assert_eq!(inv.gpus[1].name, "Tesla T4");
        assert_eq!(inv.gpus[1].memory_bytes, 15360 << 20);
    }

    #[test]
    fn tolerates_commas_in_names_unknown_memory_and_blank_lines() {
        let text = "\n1, Odd, Model, GPU-b, [N/A], 00000000:02:00.0, 535.1\n0, X, GPU-a, 10, 00000000:01:00.0, 535.1\n\n";
        let inv = parse(text).expect("parses");
        assert_eq!(inv.gpus[0].index, 0, "sorted by index");
        assert_eq!(inv.gpus[1].name, "Odd, Model");
        assert_eq!(inv.gpus[1].memory_bytes, 0);
        assert_eq!(inv.gpus[1].uuid, "GPU-b");
    }

    /// A driver root whose `usr/bin/nvidia-smi` is a script printing `body` and exiting with `code`.
    fn fake_tool(body: &str, code: i32) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("usr/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let tool = bin.join("nvidia-smi");
        std::fs::write(
            &tool,
            format!("#!/bin/sh\ncat <<'EOF'\n{body}EOF\nexit {code}\n"),
        )
        .expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        root
    }

    #[test]
    fn runs_the_tool_under_the_driver_root() {
        let root = fake_tool(TWO, 0);
        let inv = SmiProbe::new(root.path()).probe().expect("probe");
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(
            inv.gpus[1].minor,
            Some(1),
            "no procfs entry here: the index"
        );
        let broken = fake_tool(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
            9,
        );
        let e = SmiProbe::new(broken.path())
            .probe()
            .expect_err("driver down");
        assert!(matches!(e, ProbeError::Failed(_)), "{e}");
        assert!(e.to_string().contains("couldn't communicate"), "{e}");
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let e = parse("0, Tesla T4, GPU-a\n").expect_err("short");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse("zero, T4, GPU-a, 10, 0000:01:00.0, 1\n").expect_err("index");
        assert!(e.to_string().contains("index"), "{e}");
        let e = parse("0, T4, GPU-a, lots, 0000:01:00.0, 1\n").expect_err("memory");
        assert!(e.to_string().contains("memory"), "{e}");
        assert!(parse("").expect("empty is no GPU").gpus.is_empty());
    }

    #[test]
    fn a_hung_tool_is_killed_at_the_limit() {
        let started = Instant::now();
        let err = run_with_limit(
            Command::new("/bin/sh").args(["-c", "echo partial; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .expect_err("times out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let out = run_with_limit(
            Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(20),
        )
        .expect("runs");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }
}
