//! What a container needs to use the GPUs it holds, and nothing more: the exposure plan ([`GpuExposure`]).
//!
//! This is the NVIDIA container toolkit's job (libnvidia-container's `nvc_info.c` lists what to expose), done in
//! Cod's own runtime because it has no prestart hooks and no `ldconfig` run inside the image:
//!
//! - **Discrete GPUs** (`Gpu::minor` set): `/dev/nvidia<minor>` of each allocated GPU only, the shared control
//!   nodes (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset`) that exist, the driver's utility and
//!   compute libraries at `/usr/local/nvidia/lib64` (the directory CUDA images already put in
//!   `LD_LIBRARY_PATH`) and its tools at `/usr/local/nvidia/bin`.
//! - **Integrated (Tegra) GPUs** (`minor: None`): the L4T way, the files listed in JetPack's
//!   `etc/nvidia-container-runtime/host-files-for-container.d/*.csv`, bound at the same paths.
//!
//! Everything is looked up under the driver root (`Compute.GPU.DriverRoot`, `/` on a normal host): device nodes in
//! `<root>/dev`, libraries in `<root>/usr/lib/...`. Device nodes are bound, not created (a user namespace may not
//! `mknod`), and their numbers are read from the host's nodes for the device cgroup.
//!
//! Reads the driver root (blocking file I/O; call from `spawn_blocking`) and returns data: the runtime does the
//! binding.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::gpu::{DRIVER_LIB_DIRS, Gpu};

use super::runtime::{BindMount, DeviceKind, DeviceNode};

/// Where the driver's libraries appear in the container: CUDA images (`nvidia/cuda`) set
/// `LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64`, so they find them there without `ldconfig`.
pub const CONTAINER_LIB_DIR: &str = "/usr/local/nvidia/lib64";
/// Where the driver's tools appear in the container (also on CUDA images' `PATH`).
pub const CONTAINER_BIN_DIR: &str = "/usr/local/nvidia/bin";

/// The driver root's tool directories, in search order.
const BIN_DIRS: &[&str] = &["usr/bin", "usr/sbin", "bin", "sbin"];

/// Device nodes every discrete GPU shares: the control device (required: without it the driver answers no
/// one), unified memory (created by `nvidia-modprobe` on first CUDA use, so it may be missing until then) and
/// modesetting. Exposed when present.
const CONTROL_NODES: &[&str] = &[
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];
/// The one control node without which no GPU works.
const REQUIRED_CONTROL_NODE: &str = "nvidiactl";

/// The driver's libraries for the `utility` and `compute` capabilities (libnvidia-container's `utility_libs`
/// and `compute_libs`). Graphics, video and display libraries are left out: batch jobs do not draw.
const DRIVER_LIBS: &[&str] = &[
    // utility
    "libnvidia-ml.so",
    "libnvidia-cfg.so",
    "libnvidia-nscq.so",
    // compute
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so",
];
/// The libraries whose versioned file names the driver version, in order of preference: every other
/// library is taken only in that version, so an old driver's leftovers are never mixed in.
const VERSION_LIBS: &[&str] = &["libnvidia-ml.so", "libcuda.so"];

/// The driver's tools for the `utility` capability.
const TOOLS: &[&str] = &["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"];

/// JetPack's lists of the host files a container needs on a Tegra board (package `nvidia-container-csv-*`).
pub const TEGRA_CSV_DIR: &str = "etc/nvidia-container-runtime/host-files-for-container.d";

/// The driver's per-GPU information (model, bus id, IRQ...): one directory per GPU, named by PCI bus id. Global
/// in every procfs, so the GPUs a run does not hold are masked, as the toolkit hides them.
const PROC_GPUS: &str = "/proc/driver/nvidia/gpus";

/// `NVIDIA_DRIVER_CAPABILITIES` when the job sets none: what the exposed files serve.
const DEFAULT_CAPABILITIES: &str = "compute,utility";

/// Why the GPUs a run holds cannot be exposed to its container. Each names the missing piece and the setting
/// that says where it is looked for.
#[derive(Debug, thiserror::Error)]
pub enum GpuExposureError {
    /// An allocated GPU's device node is missing or is not a device.
    #[error(
        "GPU {index} ({uuid}): device node {} {problem}; is the NVIDIA driver loaded? \
         (looked under Compute.GPU.DriverRoot = {})",
        path.display(), root.display()
    )]
    Device {
        /// The GPU's index.
        index: u32,
        /// Its UUID.
        uuid: String,
        /// The node looked for.
        path: PathBuf,
        /// "is missing", "is not a device node".
        problem: &'static str,
        /// The driver root.
        root: PathBuf,
    },
    /// The driver's libraries are not there.
    #[error(
        "the NVIDIA driver's libraries are missing: no libnvidia-ml.so.<version> or libcuda.so.<version> in {} \
         under Compute.GPU.DriverRoot = {}; install the driver, or set Compute.GPU.DriverRoot to where it is",
        DRIVER_LIB_DIRS.join(", "), root.display()
    )]
    NoDriverLibraries {
        /// The driver root.
        root: PathBuf,
    },
    /// An integrated GPU without JetPack's lists of files.
    #[error(
        "integrated GPU {index}: no {}/*.csv under Compute.GPU.DriverRoot = {} lists the files a container \
         needs; install JetPack's nvidia-container-csv packages, or set Compute.GPU.DriverRoot to where they are",
        TEGRA_CSV_DIR, root.display()
    )]
    NoTegraCsv {
        /// The GPU's index.
        index: u32,
        /// The driver root.
        root: PathBuf,
    },
    /// A CSV list is malformed.
    #[error("{}:{line}: {problem}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A file of the driver root cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What a container gets for its GPUs: device nodes, read-only bind mounts and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuExposure {
    /// Device nodes to bind and allow in the device cgroup.
    pub devices: Vec<DeviceNode>,
    /// Libraries, tools and (Tegra) directories, all read-only.
    pub mounts: Vec<BindMount>,
    /// The UUIDs of the GPUs, in allocation order (`NVIDIA_VISIBLE_DEVICES`).
    pub uuids: Vec<String>,
    /// Directories to put first on `LD_LIBRARY_PATH`.
    pub library_path: Vec<String>,
    /// Directories to put first on `PATH`.
    pub path: Vec<String>,
    /// Container paths to hide: the other GPUs' [`PROC_GPUS`] entries.
    pub masked_paths: Vec<String>,
}

/// The exposure of `gpus` (what a run holds) from the driver under `driver_root`. Empty for no GPUs.
pub fn plan(gpus: &[Gpu], driver_root: &Path) -> Result<GpuExposure, GpuExposureError> {
    plan_with(gpus, driver_root, Path::new(PROC_GPUS))
}

/// [`plan`], with the host's [`PROC_GPUS`] at `proc_gpus` (tests).
fn plan_with(
    gpus: &[Gpu],
    driver_root: &Path,
    proc_gpus: &Path,
) -> Result<GpuExposure, GpuExposureError> {
    let mut plan = GpuExposure {
        uuids: gpus.iter().map(|g| g.uuid.clone()).collect(),
        ..GpuExposure::default()
    };
    let discrete: Vec<(&Gpu, u32)> = gpus
        .iter()
        .filter_map(|g| g.minor.map(|m| (g, m)))
        .collect();
    if let Some((first, _)) = discrete.first() {
        for (gpu, minor) in &discrete {
            let node = format!("nvidia{minor}");
            plan.devices.push(
                device(driver_root, &node)?.ok_or_else(|| device_error(gpu, driver_root, &node))?,
            );
        }
        for node in CONTROL_NODES {
            match device(driver_root, node)? {
                Some(d) => plan.devices.push(d),
                None if *node == REQUIRED_CONTROL_NODE => {
                    return Err(device_error(first, driver_root, node));
                }
                None => {}
            }
        }
        plan.mounts.extend(libraries(driver_root)?);
        plan.library_path.push(CONTAINER_LIB_DIR.to_owned());
        let tools = tools(driver_root);
        if !tools.is_empty() {
            plan.path.push(CONTAINER_BIN_DIR.to_owned());
        }
        plan.mounts.extend(tools);
        // Only when every held GPU's bus id is known: otherwise its own entry could not be told apart.
        if discrete
            .iter()
            .all(|(g, _)| bus_id(&g.pci_address).is_some())
        {
            plan.masked_paths = names(proc_gpus)?
                .into_iter()
                .filter(|bus| !discrete.iter().any(|(g, _)| same_bus(&g.pci_address, bus)))
                .map(|bus| format!("{PROC_GPUS}/{bus}"))
                .collect();
            plan.masked_paths.sort();
        }
    }
    if let Some(gpu) = gpus.iter().find(|g| g.minor.is_none()) {
        tegra(gpu, driver_root, &mut plan)?;
    }
    Ok(plan)
}

// === impl GpuExposure ===

impl GpuExposure {
    /// Adds the GPU variables to a container's environment (the image's and the job's, already merged).
    pub fn apply_env(&self, env: &mut BTreeMap<String, String>) {
        if self.uuids.is_empty() {
            return;
        }
        // Always ours: the container holds exactly these devices, whatever the job asked for (`all` would be a
        // lie that tools then act on). CUDA_VISIBLE_DEVICES is left alone: the container sees only its own
        // device nodes, so CUDA numbers them from 0 anyway, and a job that sets it means it.
        env.insert("NVIDIA_VISIBLE_DEVICES".to_owned(), self.uuids.join(","));
        env.entry("NVIDIA_DRIVER_CAPABILITIES".to_owned())
            .or_insert_with(|| DEFAULT_CAPABILITIES.to_owned());
        prepend(env, "LD_LIBRARY_PATH", &self.library_path);
        prepend(env, "PATH", &self.path);
    }
}

/// Puts `dirs` first on the `:` list `key`, keeping what it had (without duplicates of `dirs`).
fn prepend(env: &mut BTreeMap<String, String>, key: &str, dirs: &[String]) {
    if dirs.is_empty() {
        return;
    }
    let old = env.get(key).map(String::as_str).unwrap_or_default();
    let kept = old
        .split(':')
        .filter(|d| !d.is_empty() && !dirs.iter().any(|n| n == d));
    let value: Vec<&str> = dirs.iter().map(String::as_str).chain(kept).collect();
    env.insert(key.to_owned(), value.join(":"));
}

/// A PCI bus id as (domain, `bus:device.function` in lower case): NVML writes `00000000:3B:00.0`, procfs
/// `0000:3b:00.0`.
fn bus_id(id: &str) -> Option<(u32, String)> {
    let (domain, rest) = id.split_once(':')?;
    Some((
        u32::from_str_radix(domain, 16).ok()?,
        rest.to_ascii_lowercase(),
    ))
}

/// Whether two PCI bus ids name the same device.
fn same_bus(a: &str, b: &str) -> bool {
    matches!((bus_id(a), bus_id(b)), (Some(x), Some(y)) if x == y)
}

fn device_error(gpu: &Gpu, root: &Path, node: &str) -> GpuExposureError {
    let path = root.join("dev").join(node);
    let problem = if path.exists() {
        "is not a device node"
    } else {
        "is missing"
    };
    GpuExposureError::Device {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        path,
        problem,
        root: root.to_owned(),
    }
}

/// The device node `<root>/dev/<name>` as `/dev/<name>` in the container, if it exists and is a device.
fn device(root: &Path, name: &str) -> Result<Option<DeviceNode>, GpuExposureError> {
    let source = root.join("dev").join(name);
    device_at(&source, &format!("/dev/{name}"))
}

/// The device node at host path `source`, bound at `target`; `None` if it is missing or not a device.
fn device_at(source: &Path, target: &str) -> Result<Option<DeviceNode>, GpuExposureError> {
    let meta = match fs::metadata(source) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source_err) => {
            return Err(GpuExposureError::Read {
                path: source.to_owned(),
                source: source_err,
            });
        }
    };
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    Ok(Some(DeviceNode {
        source: source.to_owned(),
        target: target.to_owned(),
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
    }))
}

/// File names in `dir` (empty if it does not exist).
fn names(dir: &Path) -> Result<Vec<String>, GpuExposureError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(Vec::new())
        }
        Err(source) => Err(GpuExposureError::Read {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The version in `lib.so.<version>` when it is a driver version (`535.104.05`: dotted digits, at least one
/// dot, so the soname link `.so.1` is not one).
fn driver_version<'a>(file: &'a str, lib: &str) -> Option<&'a str> {
    let version = file.strip_prefix(lib)?.strip_prefix('.')?;
    let numeric = version
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric && version.contains('.')).then_some(version)
}

/// Compares dotted versions numerically (`550.54.15` > `535.104.05`).
fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The driver's libraries: each [`DRIVER_LIBS`] entry in the driver's version, from the first library
/// directory that has it, mounted at [`CONTAINER_LIB_DIR`] under its versioned name and under the names of
/// the host's links to it (the soname, `libcuda.so.1`), as `ldconfig` would have made them.
fn libraries(root: &Path) -> Result<Vec<BindMount>, GpuExposureError> {
    let mut listing = Vec::new();
    for dir in DRIVER_LIB_DIRS {
        let path = root.join(dir);
        let files = names(&path)?;
        listing.push((path, files));
    }
    let version = VERSION_LIBS
        .iter()
        .find_map(|lib| {
            listing
                .iter()
                .flat_map(|(dir, files)| files.iter().map(move |f| (dir, f)))
                .filter(|(dir, f)| dir.join(f).is_file())
                .filter_map(|(_, f)| driver_version(f, lib))
                .max_by_key(|v| version_key(v))
        })
        .ok_or_else(|| GpuExposureError::NoDriverLibraries {
            root: root.to_owned(),
        })?
        .to_owned();
    let mut mounts = Vec::new();
    for lib in DRIVER_LIBS {
        let versioned = format!("{lib}.{version}");
        let Some((dir, files)) = listing
            .iter()
            .find(|(dir, _)| dir.join(&versioned).is_file())
        else {
            continue;
        };
        let source = dir.join(&versioned);
        let mut links: Vec<&String> = files
            .iter()
            .filter(|f| f.starts_with(&format!("{lib}.")) && **f != versioned)
            .filter(|f| {
                fs::read_link(dir.join(f))
                    .is_ok_and(|t| t.file_name().is_some_and(|n| n == versioned.as_str()))
            })
            .collect();
        links.sort();
        let soname = format!("{lib}.1");
        let mut targets = vec![versioned.clone()];
        if links.is_empty() {
            // No links (ldconfig never ran on the host): the soname every driver library but nvvm uses.
            targets.push(soname);
        } else {
            targets.extend(links.into_iter().cloned());
        }
        mounts.extend(targets.into_iter().map(|name| BindMount {
            source: source.clone(),
            target: format!("{CONTAINER_LIB_DIR}/{name}"),
            read_only: true,
        }));
    }
    Ok(mounts)
}

/// The driver's tools that exist, mounted at [`CONTAINER_BIN_DIR`].
fn tools(root: &Path) -> Vec<BindMount> {
    TOOLS
        .iter()
        .filter_map(|tool| {
            BIN_DIRS
                .iter()
                .map(|d| root.join(d).join(tool))
                .find(|p| p.is_file())
                .map(|source| BindMount {
                    source,
                    target: format!("{CONTAINER_BIN_DIR}/{tool}"),
                    read_only: true,
                })
        })
        .collect()
}

/// One line of a JetPack CSV list: what kind of host file, and its absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvEntry {
    /// A device node (`dev, /dev/nvhost-ctrl`).
    Dev(String),
    /// A library (`lib, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1`).
    Lib(String),
    /// A symbolic link (`sym, /usr/lib/aarch64-linux-gnu/libcuda.so`).
    Sym(String),
    /// A directory (`dir, /usr/lib/aarch64-linux-gnu/tegra`).
    Dir(String),
}

/// Parses one CSV list: `kind, /absolute/path` per line; blank lines and `#` comments are skipped. Errors carry
/// the 1-based line number.
pub fn parse_csv(text: &str) -> Result<Vec<CsvEntry>, (usize, String)> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((kind, path)) = line.split_once(',') else {
            return Err((n + 1, format!("{line:?} is not `kind, /path`")));
        };
        let path = path.trim().to_owned();
        if !path.starts_with('/') || path.split('/').any(|s| s == "..") {
            return Err((
                n + 1,
                format!("path {path:?} must be absolute, without '..'"),
            ));
        }
        entries.push(match kind.trim() {
            "dev" => CsvEntry::Dev(path),
            "lib" => CsvEntry::Lib(path),
            "sym" => CsvEntry::Sym(path),
            "dir" => CsvEntry::Dir(path),
            other => {
                return Err((
                    n + 1,
                    format!("unknown kind {other:?} (expected dev, lib, sym or dir)"),
                ));
            }
        });
    }
    Ok(entries)
}

/// An integrated GPU's files, from JetPack's CSV lists: each listed file that exists is bound at its own path
/// (the lists cover every board of a release, so missing ones are normal), device nodes as devices. Library
/// directories go on `LD_LIBRARY_PATH`, since no `ldconfig` runs in the container.
fn tegra(gpu: &Gpu, root: &Path, plan: &mut GpuExposure) -> Result<(), GpuExposureError> {
    let csv_dir = root.join(TEGRA_CSV_DIR);
    let mut lists: Vec<String> = names(&csv_dir)?
        .into_iter()
        .filter(|n| n.ends_with(".csv"))
        .collect();
    lists.sort();
    if lists.is_empty() {
        return Err(GpuExposureError::NoTegraCsv {
            index: gpu.index,
            root: root.to_owned(),
        });
    }
    for list in lists {
        let path = csv_dir.join(list);
        let text = fs::read_to_string(&path).map_err(|source| GpuExposureError::Read {
            path: path.clone(),
            source,
        })?;
        let entries = parse_csv(&text).map_err(|(line, problem)| GpuExposureError::Csv {
            path: path.clone(),
            line,
            problem,
        })?;
        for entry in entries {
            let (CsvEntry::Dev(p) | CsvEntry::Lib(p) | CsvEntry::Sym(p) | CsvEntry::Dir(p)) =
                &entry;
            let source = root.join(p.trim_start_matches('/'));
            // Lists overlap (a base list and a board's); each path is bound once.
            if plan.devices.iter().any(|d| d.target == *p)
                || plan.mounts.iter().any(|m| m.target == *p)
            {
                continue;
            }
            match entry {
                CsvEntry::Dev(_) => plan.devices.extend(device_at(&source, p)?),
                _ if !source.exists() => {}
                CsvEntry::Lib(_) | CsvEntry::Sym(_) | CsvEntry::Dir(_) => {
                    if let CsvEntry::Lib(_) = entry
                        && let Some(dir) = Path::new(p).parent().and_then(Path::to_str)
                        && !plan.library_path.iter().any(|d| d == dir)
                    {
                        plan.library_path.push(dir.to_owned());
                    }
                    plan.mounts.push(BindMount {
                        source,
                        target: p.clone(),
                        read_only: true,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::gpu::GpuVendor;

    const VERSION: &str = "535.104.05";

    fn gpu(index: u32, minor: Option<u32>) -> Gpu {
        Gpu {
            index,
            name: "NVIDIA T4".to_owned(),
            vendor: GpuVendor::Nvidia,
            memory_bytes: 16 << 30,
            pci_address: format!("0000:0{index}:00.0"),
            uuid: format!("GPU-{index}"),
            minor,
        }
    }

    /// A driver root: device nodes as links to /dev/null and /dev/zero (real character devices, no root
    /// needed), libraries as empty files with their soname links, `nvidia-smi`.
    fn driver_root(nodes: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("dev")).expect("mkdir");
        for (i, node) in nodes.iter().enumerate() {
            let target = if i % 2 == 0 { "/dev/null" } else { "/dev/zero" };
            symlink(target, root.join("dev").join(node)).expect("symlink");
        }
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).expect("mkdir");
        for name in ["libnvidia-ml.so", "libcuda.so", "libnvidia-nvvm.so"] {
            fs::write(lib.join(format!("{name}.{VERSION}")), "").expect("lib");
        }
        symlink(
            format!("libnvidia-ml.so.{VERSION}"),
            lib.join("libnvidia-ml.so.1"),
        )
        .expect("link");
        symlink(format!("libcuda.so.{VERSION}"), lib.join("libcuda.so.1")).expect("link");
        symlink("libcuda.so.1", lib.join("libcuda.so")).expect("dev link");
        symlink(
            format!("libnvidia-nvvm.so.{VERSION}"),
            lib.join("libnvidia-nvvm.so.4"),
        )
        .expect("link");
        // An old driver's leftover, which must not be mixed in.
        fs::write(lib.join("libnvidia-cfg.so.470.1.2"), "").expect("old lib");
        fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        fs::write(root.join("usr/bin/nvidia-smi"), "#!/bin/sh\n").expect("tool");
        dir
    }

    fn targets(plan: &GpuExposure) -> Vec<&str> {
        plan.mounts.iter().map(|m| m.target.as_str()).collect()
    }

    #[test]
    fn no_gpus_expose_nothing() {
        assert_eq!(
            plan(&[], Path::new("/nonexistent")).expect("plan"),
            GpuExposure::default()
        );
    }

    #[test]
    fn discrete_gpu_gets_its_own_node_the_control_nodes_libraries_and_tools() {
        let root = driver_root(&["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"]);
        let p = plan(&[gpu(1, Some(1))], root.path()).expect("plan");
        let devices: Vec<&str> = p.devices.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(
            devices,
            ["/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]
        );
        // nvidia1 links to /dev/zero (1:5): the numbers are read from the host node.
        assert_eq!((p.devices[0].major, p.devices[0].minor), (1, 5));
        assert_eq!(p.devices[0].kind, DeviceKind::Char);
        assert_eq!(p.devices[0].source, root.path().join("dev/nvidia1"));
        assert_eq!(
            targets(&p),
            [
                format!("/usr/local/nvidia/lib64/libnvidia-ml.so.{VERSION}").as_str(),
                "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
                &format!("/usr/local/nvidia/lib64/libcuda.so.{VERSION}"),
                "/usr/local/nvidia/lib64/libcuda.so.1",
                &format!("/usr/local/nvidia/lib64/libnvidia-nvvm.so.{VERSION}"),
                "/usr/local/nvidia/lib64/libnvidia-nvvm.so.4",
                "/usr/local/nvidia/bin/nvidia-smi",
            ]
        );
        let lib = root.path().join("usr/lib/x86_64-linux-gnu");
        assert_eq!(
            p.mounts[1].source,
            lib.join(format!("libnvidia-ml.so.{VERSION}"))
        );
        assert!(p.mounts.iter().all(|m| m.read_only));
        assert_eq!(p.uuids, ["GPU-1"]);
        assert_eq!(p.library_path, [CONTAINER_LIB_DIR]);
        assert_eq!(p.path, [CONTAINER_BIN_DIR]);
    }

    #[test]
    fn the_other_gpus_proc_entries_are_masked() {
        let root = driver_root(&["nvidia0", "nvidia1", "nvidiactl"]);
        let proc = tempfile::tempdir().expect("tempdir");
        for bus in ["0000:01:00.0", "0000:3b:00.0"] {
            fs::create_dir(proc.path().join(bus)).expect("mkdir");
        }
        let mut held = gpu(1, Some(1));
        held.pci_address = "00000000:3B:00.0".to_owned();
        let p = plan_with(&[held], root.path(), proc.path()).expect("plan");
        assert_eq!(p.masked_paths, ["/proc/driver/nvidia/gpus/0000:01:00.0"]);
        // A held GPU without a bus id: its own entry is unknown, so nothing is masked.
        let mut unknown = gpu(1, Some(1));
        unknown.pci_address = String::new();
        let p = plan_with(&[unknown], root.path(), proc.path()).expect("plan");
        assert!(p.masked_paths.is_empty());
        // No driver proc dir (or no driver loaded yet): nothing to mask.
        let p =
            plan_with(&[gpu(1, Some(1))], root.path(), &proc.path().join("none")).expect("plan");
        assert!(p.masked_paths.is_empty());
        assert!(same_bus("0000:3B:00.0", "0000:3b:00.0"));
        assert!(!same_bus("0000:3B:00.0", "0001:3b:00.0"));
        assert!(!same_bus("", ""));
    }

    #[test]
    fn two_gpus_get_both_nodes_and_never_another() {
        let root = driver_root(&["nvidia0", "nvidia1", "nvidia2", "nvidiactl"]);
        let p = plan(&[gpu(0, Some(0)), gpu(2, Some(2))], root.path()).expect("plan");
        let devices: Vec<&str> = p.devices.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(devices, ["/dev/nvidia0", "/dev/nvidia2", "/dev/nvidiactl"]);
        assert_eq!(p.uuids, ["GPU-0", "GPU-2"]);
    }

    #[test]
    fn a_missing_node_names_itself_and_the_driver_root_setting() {
        let root = driver_root(&["nvidia0", "nvidiactl"]);
        let err = plan(&[gpu(1, Some(1))], root.path()).expect_err("nvidia1 is missing");
        let msg = err.to_string();
        assert!(msg.contains("dev/nvidia1 is missing"), "{msg}");
        assert!(msg.contains("Compute.GPU.DriverRoot"), "{msg}");

        let root = driver_root(&["nvidia0"]);
        let msg = plan(&[gpu(0, Some(0))], root.path())
            .expect_err("no nvidiactl")
            .to_string();
        assert!(msg.contains("nvidiactl is missing"), "{msg}");

        // A regular file where the node should be is not a device.
        let root = driver_root(&["nvidiactl"]);
        fs::write(root.path().join("dev/nvidia0"), "").expect("file");
        let msg = plan(&[gpu(0, Some(0))], root.path())
            .expect_err("not a device")
            .to_string();
        assert!(msg.contains("is not a device node"), "{msg}");
    }

    #[test]
    fn no_driver_libraries_is_a_clear_error() {
        let root = driver_root(&["nvidia0", "nvidiactl"]);
        fs::remove_dir_all(root.path().join("usr/lib")).expect("rm");
        let err = plan(&[gpu(0, Some(0))], root.path()).expect_err("no libraries");
        assert!(
            matches!(err, GpuExposureError::NoDriverLibraries { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("install the driver"), "{err}");
    }

    #[test]
    fn the_newest_driver_version_wins_and_libs_without_links_get_the_soname() {
        let root = driver_root(&["nvidia0", "nvidiactl"]);
        let lib = root.path().join("usr/lib64");
        fs::create_dir_all(&lib).expect("mkdir");
        fs::write(lib.join("libnvidia-ml.so.550.54.15"), "").expect("lib");
        fs::write(lib.join("libnvidia-cfg.so.550.54.15"), "").expect("lib");
        let p = plan(&[gpu(0, Some(0))], root.path()).expect("plan");
        assert_eq!(
            targets(&p)[..4],
            [
                "/usr/local/nvidia/lib64/libnvidia-ml.so.550.54.15",
                "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
                "/usr/local/nvidia/lib64/libnvidia-cfg.so.550.54.15",
                "/usr/local/nvidia/lib64/libnvidia-cfg.so.1",
            ]
        );
        assert_eq!(
            p.mounts.len(),
            5,
            "535 libraries are left out: {:?}",
            targets(&p)
        );
    }

    #[test]
    fn driver_versions_are_dotted_numbers() {
        assert_eq!(
            driver_version("libcuda.so.535.104.05", "libcuda.so"),
            Some("535.104.05")
        );
        assert_eq!(driver_version("libcuda.so.1", "libcuda.so"), None);
        assert_eq!(driver_version("libcuda.so", "libcuda.so"), None);
        assert_eq!(
            driver_version("libcudadebugger.so.535.1", "libcuda.so"),
            None
        );
        assert_eq!(driver_version("libcuda.so.535.x", "libcuda.so"), None);
        assert!(version_key("550.54.15") > version_key("535.104.05"));
    }

    #[test]
    fn env_sets_devices_and_capabilities_and_prepends_paths() {
        let p = GpuExposure {
            uuids: vec!["GPU-a".to_owned(), "GPU-b".to_owned()],
            library_path: vec![CONTAINER_LIB_DIR.to_owned()],
            path: vec![CONTAINER_BIN_DIR.to_owned()],
            ..GpuExposure::default()
        };
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            (
                "LD_LIBRARY_PATH".to_owned(),
                "/usr/local/nvidia/lib:/usr/local/nvidia/lib64".to_owned(),
            ),
            ("NVIDIA_VISIBLE_DEVICES".to_owned(), "all".to_owned()),
        ]);
        p.apply_env(&mut env);
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(env["NVIDIA_DRIVER_CAPABILITIES"], "compute,utility");
        assert_eq!(env["PATH"], "/usr/local/nvidia/bin:/usr/bin:/bin");
        assert_eq!(
            env["LD_LIBRARY_PATH"],
            "/usr/local/nvidia/lib64:/usr/local/nvidia/lib"
        );
        assert!(!env.contains_key("CUDA_VISIBLE_DEVICES"));

        let mut env = BTreeMap::from([(
            "NVIDIA_DRIVER_CAPABILITIES".to_owned(),
            "utility".to_owned(),
        )]);
        p.apply_env(&mut env);
        assert_eq!(
            env["NVIDIA_DRIVER_CAPABILITIES"], "utility",
            "the job's choice stays"
        );
        assert_eq!(env["LD_LIBRARY_PATH"], CONTAINER_LIB_DIR);

        let mut env = BTreeMap::new();
        GpuExposure::default().apply_env(&mut env);
        assert!(env.is_empty(), "no GPUs, no variables");
    }

    #[test]
    fn csv_lines_parse_and_errors_carry_the_line() {
        let text = "# JetPack\n\ndev, /dev/nvhost-ctrl\nlib, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1\n\
                    sym,/usr/lib/aarch64-linux-gnu/libcuda.so\ndir, /usr/lib/aarch64-linux-gnu/tegra\n";
        assert_eq!(
            parse_csv(text).expect("parses"),
            [
                CsvEntry::Dev("/dev/nvhost-ctrl".to_owned()),
                CsvEntry::Lib("/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1".to_owned()),
                CsvEntry::Sym("/usr/lib/aarch64-linux-gnu/libcuda.so".to_owned()),
                CsvEntry::Dir("/usr/lib/aarch64-linux-gnu/tegra".to_owned()),
            ]
        );
        assert_eq!(parse_csv("dev, /dev/a\nfoo, /x\n").unwrap_err().0, 2);
        assert_eq!(parse_csv("lib /usr/lib/x\n").unwrap_err().0, 1);
        assert_eq!(parse_csv("lib, usr/lib/x\n").unwrap_err().0, 1);
        assert_eq!(parse_csv("dir, /usr/../etc\n").unwrap_err().0, 1);
    }

    #[test]
    fn tegra_binds_the_listed_files_that_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join(TEGRA_CSV_DIR)).expect("mkdir");
        fs::create_dir_all(root.join("dev")).expect("mkdir");
        symlink("/dev/null", root.join("dev/nvhost-ctrl")).expect("node");
        let tegra = root.join("usr/lib/aarch64-linux-gnu/tegra");
        fs::create_dir_all(&tegra).expect("mkdir");
        fs::write(tegra.join("libcuda.so.1.1"), "").expect("lib");
        fs::write(
            root.join(TEGRA_CSV_DIR).join("l4t.csv"),
            "dev, /dev/nvhost-ctrl\ndev, /dev/nvhost-gpu-missing\n\
             lib, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1\nlib, /usr/lib/missing.so\n\
             dir, /usr/lib/aarch64-linux-gnu/tegra\n",
        )
        .expect("csv");
        fs::write(root.join(TEGRA_CSV_DIR).join("README"), "not a list").expect("other file");
        let p = plan(&[gpu(0, None)], root).expect("plan");
        let devices: Vec<&str> = p.devices.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(devices, ["/dev/nvhost-ctrl"]);
        assert_eq!(
            targets(&p),
            [
                "/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1",
                "/usr/lib/aarch64-linux-gnu/tegra"
            ]
        );
        assert_eq!(p.mounts[0].source, tegra.join("libcuda.so.1.1"));
        assert_eq!(p.library_path, ["/usr/lib/aarch64-linux-gnu/tegra"]);
        assert!(p.path.is_empty());
    }

    #[test]
    fn tegra_without_lists_or_with_a_bad_one_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = plan(&[gpu(0, None)], dir.path()).expect_err("no csv");
        assert!(matches!(err, GpuExposureError::NoTegraCsv { .. }), "{err}");
        fs::create_dir_all(dir.path().join(TEGRA_CSV_DIR)).expect("mkdir");
        fs::write(
            dir.path().join(TEGRA_CSV_DIR).join("a.csv"),
            "dev, /dev/x\nbad line\n",
        )
        .expect("csv");
        let msg = plan(&[gpu(0, None)], dir.path())
            .expect_err("bad csv")
            .to_string();
        assert!(msg.contains("a.csv:2:"), "{msg}");
    }
}
