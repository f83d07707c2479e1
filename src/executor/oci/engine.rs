//! The `docker` executor: pull the image ([`crate::oci::store::ImageStore`]), stack its layers into the
//! execution's root filesystem ([`crate::oci::rootfs::RootFs`]), give it the network the job asked for
//! ([`super::netns`], [`super::egress`]) and run it in a sandboxed container ([`super::runtime`]).
//!
//! The image pull happens before the execution timeout starts (a slow link must not fail a job that runs in a
//! second), and is reported in the job's history. An image that has no variant for this node's platform is
//! remembered, so later bids for it are declined at once, as Bacalhau's manifest cache does.
//!
//! How Docker's run semantics map here: the entrypoint is `Entrypoint` or the image's; the command is
//! `Parameters`, else the image's `Cmd` unless `Entrypoint` was given (Docker clears `Cmd` when the entrypoint
//! is overridden). The environment is the image's `Env`, then `EnvironmentVariables`, then the task's `Env` and
//! the `BACALHAU_*` variables, later ones winning. The working directory is `WorkingDirectory`, else the
//! image's, else `/`. The user is the image's `USER`, resolved in the image's own `/etc/passwd`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::egress::{self, AllowList};
use super::gpu::{self, GpuExposure};
use super::netns::NetNs;
use super::runtime::{
    BindMount, ContainerExit, ContainerNetwork, ContainerRuntime, ContainerSpec, IdMap,
};
use super::stream::CappedStream;
use crate::executor::{Executor, ExecutorError, FailureReason, Progress, RunContext, RunOutcome};
use crate::model::spec::DockerParams;
use crate::model::{EngineKind, EngineSpec, NetworkType, Task};
use crate::oci::platform::Platform;
use crate::oci::reference::ImageRef;
use crate::oci::registry::{PullError, Registry, RegistryConfig};
use crate::oci::rootfs::RootFs;
use crate::oci::store::{ImageStore, ImageStoreConfig, PullProgress};
use crate::oci::unpack::{IdShift, UnpackLimits};
use crate::store::Store;

/// Where the `HTTP` egress proxy listens inside a container's network namespace.
const PROXY_ADDR: &str = "127.0.0.1:3128";
/// `PATH` for images that set none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `docker` executor's settings.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// The node's data dir: images live in `<data_dir>/oci`, container state in `<data_dir>/containers`.
    pub data_dir: PathBuf,
    /// Where executions keep their folders (swept for leftover root filesystem mounts at start).
    pub work_dir: PathBuf,
    /// Registries: insecure list and credentials.
    pub registry: RegistryConfig,
    /// Disk budget of the image cache.
    pub cache_bytes: u64,
    /// The containers' user namespace.
    pub id_map: IdMap,
    /// Most processes per container.
    pub pids_limit: u64,
    /// Parent cgroup of this node's containers (unique per node on a host).
    pub cgroup_root: String,
    /// Let `HTTP` jobs reach allowed names that resolve to the node itself (tests on loopback).
    pub allow_loopback_egress: bool,
    /// The binary re-executed as the container helper (default: the running one).
    pub helper_exe: Option<PathBuf>,
    /// Where the GPU driver's device nodes and libraries are (`Compute.GPU.DriverRoot`; `/` on a normal host).
    /// Read only for runs that hold GPUs.
    pub gpu_driver_root: PathBuf,
}

/// Why the `docker` executor cannot start on this node.
#[derive(Debug, thiserror::Error)]
pub enum OciStartError {
    /// The registry client cannot be built.
    #[error("docker engine: {0}")]
    Registry(String),
    /// The image store cannot be opened.
    #[error("docker engine: cannot open the image store: {0}")]
    Images(String),
    /// The container runtime cannot be set up.
    #[error("docker engine: {0}")]
    Runtime(String),
}

/// Runs `docker` tasks.
#[derive(Debug)]
pub struct OciExecutor {
    images: ImageStore,
    runtime: ContainerRuntime,
    platform: Platform,
    config: OciConfig,
    /// Images known to lack this node's platform, with the reason (declined at bid time).
    unsupported: Mutex<HashMap<String, String>>,
    /// One garbage collection at a time, after runs.
    gc_running: Arc<tokio::sync::Mutex<()>>,
}

impl OciExecutor {
    /// Opens the image store and clears what a crash left behind (containers, cgroups, root filesystem
    /// mounts), then is ready to run.
    pub async fn start(config: OciConfig, store: &Store) -> Result<Self, OciStartError> {
        let registry = Registry::new(config.registry.clone())
            .map_err(|e| OciStartError::Registry(e.to_string()))?;
        let shift = IdShift {
            base: config.id_map.host_base,
            size: config.id_map.size,
        };
        let images = ImageStore::open(
            &config.data_dir,
            store,
            registry,
            ImageStoreConfig {
                shift,
                limits: UnpackLimits {
                    max_bytes: config.cache_bytes,
                    max_entries: 1_000_000,
                },
            },
        )
        .await
        .map_err(|e| OciStartError::Images(e.to_string()))?;
        let mut runtime = ContainerRuntime::new(
            config.data_dir.join("containers"),
            config.cgroup_root.clone(),
        )
        .map_err(|e| OciStartError::Runtime(e.to_string()))?;
        if let Some(exe) = &config.helper_exe {
            runtime = runtime.with_helper_exe(exe);
        }
        match runtime.sweep().await {
            Ok(0) => {}
            Ok(n) => warn!(containers = n, "removed containers left by a previous run"),
            Err(e) => warn!(error = %e, "cannot sweep containers left by a previous run"),
        }
        let work_dir = config.work_dir.clone();
        match tokio::task::spawn_blocking(move || crate::oci::rootfs::sweep(&work_dir)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => warn!(
                mounts = n,
                "removed root filesystems left by a previous run"
            ),
            Ok(Err(e)) => warn!(error = %e, "cannot sweep root filesystems left by a previous run"),
            Err(e) => warn!(error = %e, "root filesystem sweep failed"),
        }
        Ok(Self {
            images,
            runtime,
            platform: Platform::host(),
            config,
            unsupported: Mutex::new(HashMap::new()),
            gc_running: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn known_unsupported(&self, image: &str) -> Option<String> {
        self.unsupported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
            .cloned()
    }

    fn remember_unsupported(&self, image: &str, reason: String) {
        self.unsupported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_owned(), reason);
    }

    /// Trims the image cache to its budget in the background (one at a time; cheap when under budget).
    fn collect_garbage(&self) {
        let Ok(guard) = self.gc_running.clone().try_lock_owned() else {
            return;
        };
        let (images, budget) = (self.images.clone(), self.config.cache_bytes);
        tokio::spawn(async move {
            let _guard = guard;
            match images.gc(budget).await {
                Ok(r) if r.images_removed + r.layers_removed > 0 => info!(
                    images = r.images_removed,
                    layers = r.layers_removed,
                    bytes = r.before_bytes - r.after_bytes,
                    "image cache trimmed"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "image cache garbage collection failed"),
            }
        });
    }

    async fn pull(
        &self,
        image: &ImageRef,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<crate::oci::store::Image, RunOutcome> {
        let name = image.to_string();
        let reporter = progress.clone();
        let announce = move |p: PullProgress| {
            if let PullProgress::Resolved {
                layers,
                download_bytes,
                from_cache,
                ..
            } = p
            {
                if from_cache {
                    reporter.report(
                        "Exec",
                        format!("registry unreachable: using the cached image {name}"),
                    );
                } else if download_bytes > 0 {
                    reporter.report(
                        "Exec",
                        format!(
                            "pulling image {name}: {layers} layers, {} to download",
                            human_bytes(download_bytes)
                        ),
                    );
                }
            }
        };
        let pulled = tokio::select! {
            r = self.images.pull(image, &self.platform, &announce) => r,
            () = cancel.cancelled() => return Err(RunOutcome::Failed(FailureReason::Cancelled)),
        };
        match pulled {
            Ok(img) => {
                if img.pulled_bytes > 0 {
                    progress.report(
                        "Exec",
                        format!(
                            "pulled image {image} ({}) in {:.1}s",
                            human_bytes(img.pulled_bytes),
                            img.took.as_secs_f64()
                        ),
                    );
                }
                Ok(img)
            }
            Err(e) => {
                let message = crate::errors::chain(&e);
                if matches!(e, PullError::PlatformMissing { .. }) {
                    self.remember_unsupported(&image.to_string(), message.clone());
                }
                Err(RunOutcome::Failed(FailureReason::Setup(message)))
            }
        }
    }
}

#[async_trait]
impl Executor for OciExecutor {
    fn engine(&self) -> EngineKind {
        EngineKind::Docker
    }

    fn validate(&self, task: &Task) -> Result<(), ExecutorError> {
        let unsupported = |reason: String| ExecutorError::Unsupported {
            engine: "docker",
            reason,
        };
        let params = match EngineSpec::parse(&task.engine, "Engine") {
            Ok(EngineSpec::Docker(p)) => p,
            Ok(_) => return Err(unsupported("not a docker task".into())),
            Err(e) => return Err(unsupported(e.to_string())),
        };
        let image: ImageRef = params
            .image
            .parse()
            .map_err(|e| unsupported(format!("Image {:?}: {e}", params.image)))?;
        if let Some(reason) = self.known_unsupported(&image.to_string()) {
            return Err(unsupported(reason));
        }
        match task.network.kind {
            NetworkType::Bridge => Err(unsupported(
                "Bridge networking is not available on Cod nodes; use None, Host or HTTP with Domains".into(),
            )),
            NetworkType::Http => AllowList::parse(&task.network.domains, false)
                .map(|_| ())
                .map_err(unsupported),
            NetworkType::Invalid(ref n) => Err(unsupported(format!("unknown network type {n:?}"))),
            _ => Ok(()),
        }
    }

    async fn run(
        &self,
        ctx: RunContext,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        let EngineSpec::Docker(params) = &ctx.engine else {
            return Err(ExecutorError::Unsupported {
                engine: "docker",
                reason: "not a docker task".into(),
            });
        };
        let setup = |m: String| Ok(RunOutcome::Failed(FailureReason::Setup(m)));
        let image: ImageRef = match params.image.parse() {
            Ok(i) => i,
            Err(e) => {
                return Ok(RunOutcome::Failed(FailureReason::InvalidProgram(format!(
                    "Image {:?}: {e}",
                    params.image
                ))));
            }
        };
        let pulled = match self.pull(&image, &ctx.progress, &cancel).await {
            Ok(i) => i,
            Err(outcome) => return Ok(outcome),
        };
        let scratch = ctx.scratch_dir.clone();
        let layers = pulled.layers.clone();
        let rootfs = {
            let scratch = scratch.clone();
            match tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&scratch)?;
                RootFs::prepare(&layers, &scratch)
            })
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return setup(format!("cannot prepare the root filesystem: {e}")),
                Err(e) => return setup(format!("cannot prepare the root filesystem: {e}")),
            }
        };
        let outcome = self
            .run_in_rootfs(&ctx, params, &pulled, &rootfs, cancel)
            .await;
        // Unmount before the lease goes: garbage collection may remove the layers once it is dropped.
        match tokio::task::spawn_blocking(move || rootfs.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot release the root filesystem; the next start sweeps it")
            }
            Err(e) => {
                warn!(error = %e, "cannot release the root filesystem; the next start sweeps it")
            }
        }
        drop(pulled.lease);
        self.collect_garbage();
        Ok(outcome)
    }
}

impl OciExecutor {
    /// What the container gets for the GPUs the run holds (nothing for none), read from the driver root.
    async fn gpu_exposure(&self, ctx: &RunContext) -> Result<GpuExposure, String> {
        if ctx.gpus.is_empty() {
            return Ok(GpuExposure::default());
        }
        let (gpus, root) = (ctx.gpus.clone(), self.config.gpu_driver_root.clone());
        match tokio::task::spawn_blocking(move || gpu::plan(&gpus, &root)).await {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(e)) => Err(format!(
                "cannot give the container its GPUs: {}",
                crate::errors::chain(&e)
            )),
            Err(e) => Err(format!("cannot give the container its GPUs: {e}")),
        }
    }

    async fn run_in_rootfs(
        &self,
        ctx: &RunContext,
        params: &DockerParams,
        image: &crate::oci::store::Image,
        rootfs: &RootFs,
        cancel: CancellationToken,
    ) -> RunOutcome {
        let setup = |m: String| RunOutcome::Failed(FailureReason::Setup(m));
        let id_map = self.config.id_map;
        // Result folders belong to container root, so the job can write them.
        let outputs: Vec<PathBuf> = ctx.outputs.iter().map(|o| o.host_dir.clone()).collect();
        let owned = tokio::task::spawn_blocking(move || {
            outputs.iter().try_for_each(|dir| {
                nix::unistd::chown(
                    dir,
                    Some(nix::unistd::Uid::from_raw(id_map.host_base)),
                    Some(nix::unistd::Gid::from_raw(id_map.host_base)),
                )
                .map_err(|e| format!("cannot hand {} to the container: {e}", dir.display()))
            })
        })
        .await;
        match owned {
            Ok(Ok(())) => {}
            Ok(Err(m)) => return setup(m),
            Err(e) => return setup(e.to_string()),
        }
        let config = &image.config;
        let entrypoint = if params.entrypoint.is_empty() {
            config.entrypoint.clone()
        } else {
            params.entrypoint.clone()
        };
        let cmd = if !params.parameters.is_empty() {
            params.parameters.clone()
        } else if params.entrypoint.is_empty() {
            config.cmd.clone()
        } else {
            Vec::new()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return RunOutcome::Failed(FailureReason::InvalidProgram(format!(
                "image {} has no entrypoint or command, and the job gives none (set Entrypoint or Parameters)",
                image.reference
            )));
        }
        let mut env = BTreeMap::new();
        env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
        let pairs = config
            .env
            .iter()
            .chain(params.environment_variables.iter())
            .filter_map(|kv| kv.split_once('='));
        for (k, v) in pairs {
            env.insert(k.to_owned(), v.to_owned());
        }
        env.extend(ctx.env.clone());
        let cwd = Some(params.working_directory.clone())
            .filter(|w| !w.is_empty())
            .or_else(|| config.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".to_owned());
        let user = match config.user.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(u) => match resolve_user(rootfs.path(), u) {
                Ok(ids) => Some(ids),
                Err(m) => return RunOutcome::Failed(FailureReason::InvalidProgram(m)),
            },
        };
        let mut mounts: Vec<BindMount> = ctx
            .inputs
            .iter()
            .map(|i| BindMount {
                source: i.host_path.clone(),
                target: i.target.clone(),
                read_only: i.read_only,
            })
            .collect();
        mounts.extend(ctx.outputs.iter().map(|o| BindMount {
            source: o.host_dir.clone(),
            target: o.path.clone(),
            read_only: false,
        }));
        let exposure = match self.gpu_exposure(ctx).await {
            Ok(e) => e,
            Err(m) => return setup(m),
        };
        exposure.apply_env(&mut env);
        mounts.extend(exposure.mounts);
        // The namespace and proxy live until the container is gone (dropped at the end of this function).
        let stop_proxy = CancellationToken::new();
        let _stop_proxy_on_exit = stop_proxy.clone().drop_guard();
        let (network, _netns) = match &ctx.network.kind {
            NetworkType::Host => (ContainerNetwork::Host, None),
            NetworkType::Http => {
                let allow =
                    match AllowList::parse(&ctx.network.domains, self.config.allow_loopback_egress)
                    {
                        Ok(a) => Arc::new(a),
                        Err(m) => return RunOutcome::Failed(FailureReason::InvalidProgram(m)),
                    };
                let made = tokio::task::spawn_blocking(|| {
                    NetNs::create(|| {
                        let l = std::net::TcpListener::bind(PROXY_ADDR)?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    })
                })
                .await;
                let (ns, listener) = match made {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return setup(format!("cannot create the job's network: {e}")),
                    Err(e) => return setup(format!("cannot create the job's network: {e}")),
                };
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return setup(format!("cannot start the egress proxy: {e}")),
                };
                egress::serve(listener, allow, stop_proxy.clone());
                let proxy = format!("http://{PROXY_ADDR}");
                // No NO_PROXY: every name, loopback included, goes through the allow-list.
                for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    env.insert(k.to_owned(), proxy.clone());
                }
                (ContainerNetwork::Join(ns.path()), Some(ns))
            }
            // The runtime's own empty namespace: only `lo`, and `/sys` shows only that.
            _ => (ContainerNetwork::None, None),
        };
        // Both streams pass through the node, which keeps `max_output_bytes` of each while the container runs.
        let cap = ctx.limits.max_output_bytes;
        let streams =
            CappedStream::start(ctx.scratch_dir.join("stdout.fifo"), &ctx.stdout_path, cap)
                .and_then(|out| {
                    let err = CappedStream::start(
                        ctx.scratch_dir.join("stderr.fifo"),
                        &ctx.stderr_path,
                        cap,
                    )?;
                    Ok((out, err))
                });
        let (stdout, stderr) = match streams {
            Ok(s) => s,
            Err(e) => return setup(format!("cannot set up the output streams: {e}")),
        };
        let spec = ContainerSpec {
            id: container_id(ctx),
            rootfs: rootfs.path().to_owned(),
            bundle_dir: ctx.scratch_dir.join("bundle"),
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            user,
            mounts,
            devices: exposure.devices,
            masked_paths: exposure.masked_paths,
            stdout: stdout.path().to_owned(),
            stderr: stderr.path().to_owned(),
            memory_bytes: ctx.limits.memory_bytes,
            cpu_millis: ctx.limits.cpu_millis,
            pids_limit: Some(self.config.pids_limit),
            network,
            id_map,
        };
        let exit = match self.runtime.run(spec, ctx.limits.timeout, cancel).await {
            Ok(e) => e,
            Err(e) => return setup(crate::errors::chain(&e)),
        };
        let mut truncated = false;
        for stream in [stdout, stderr] {
            match stream.finish().await {
                Ok(cut) => truncated |= cut,
                Err(e) => warn!(error = %e, "cannot collect the container's output"),
            }
        }
        match exit {
            ContainerExit::Exited { code } => RunOutcome::Exited {
                code,
                output_truncated: truncated,
                heads: None,
            },
            // As a shell and Docker report it.
            ContainerExit::Signaled { signal } => RunOutcome::Exited {
                code: 128 + signal,
                output_truncated: truncated,
                heads: None,
            },
            ContainerExit::OutOfMemory => RunOutcome::Failed(FailureReason::OutOfMemory {
                limit: ctx.limits.memory_bytes.unwrap_or(0),
            }),
            ContainerExit::TimedOut => RunOutcome::Failed(FailureReason::Timeout(
                ctx.limits.timeout.unwrap_or(Duration::ZERO),
            )),
            ContainerExit::Cancelled => RunOutcome::Failed(FailureReason::Cancelled),
        }
    }
}

/// A container id from the execution id: unique, and `[a-z0-9-]` as the runtime wants.
fn container_id(ctx: &RunContext) -> String {
    ctx.execution_id
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Resolves an image's `USER` (`uid`, `uid:gid`, `name`, `name:group`) to numeric ids; names are looked up
/// in the image's `/etc/passwd` and `/etc/group`, read through the root so a symlink cannot point outside.
fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |path: &str| -> String {
        pathrs::Root::open(rootfs)
            .and_then(|root| root.resolve(path))
            .and_then(|h| h.reopen(pathrs::flags::OpenFlags::O_RDONLY))
            .ok()
            .and_then(|mut f| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s)
                    .ok()
                    .map(|_| s)
            })
            .unwrap_or_default()
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = read("/etc/passwd")
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[2] == u)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => read("/etc/passwd")
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == u)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .ok_or_else(|| format!("the image's USER {u:?} is not in its /etc/passwd"))?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read("/etc/group")
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("the image's group {g:?} is not in its /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
