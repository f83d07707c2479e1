//! `cod docker run`: build a batch job for an OCI image from flags, as `bacalhau docker run` does.
//!
//! `cod docker run [flags] IMAGE [CMD ARGS..]`: the words after IMAGE become the engine's `Parameters` (the
//! container's command, replacing the image's `Cmd`); `--entrypoint` replaces the image's entrypoint (repeat it
//! for an entrypoint with arguments: `--entrypoint /bin/sh --entrypoint -c`). From IMAGE on, everything belongs
//! to the container, flags included; put `--` before a first argument that starts with `-`. The shared job and
//! task flags are those of `cod wasm run` ([`super::task_flags`]); a docker job's network defaults to `None`.

use argh::FromArgs;
use serde_json::{Value, json};

use super::task_flags::{TaskFlags, build_job as build_task_job, submit_built};
use super::wait::RunOptions;
use super::{Context, Outcome, UsageError};
use crate::model::{Job, SpecConfig};

/// run OCI (Docker) images
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "docker")]
pub struct DockerArgs {
    /// the docker command
    #[argh(subcommand)]
    pub command: DockerCommand,
}

/// The `docker` commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum DockerCommand {
    /// `docker run`
    Run(DockerRunArgs),
}

/// run an OCI image as a job; words after IMAGE are the container's command
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "run")]
pub struct DockerRunArgs {
    /// the image, e.g. busybox:1.36, registry.local:5000/team/tool@sha256:…
    #[argh(positional)]
    pub image: String,
    /// the command and its arguments (replace the image's Cmd)
    #[argh(positional, greedy)]
    pub command: Vec<String>,
    /// replace the image's entrypoint (repeat for arguments)
    #[argh(option)]
    pub entrypoint: Vec<String>,
    /// working directory inside the container (absolute)
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,
    /// environment variable, NAME=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,
    /// input data, SOURCE[:TARGET] or src=URI,dst=PATH,opt=K=V (repeatable; target defaults to /inputs)
    #[argh(option, short = 'i')]
    pub input: Vec<String>,
    /// result folder NAME:/PATH (repeatable; default outputs:/outputs)
    #[argh(option, short = 'o')]
    pub output: Vec<String>,
    /// memory limit, e.g. 256Mb
    #[argh(option)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 500m or 1
    #[argh(option)]
    pub cpu: Option<String>,
    /// disk request, e.g. 1Gb
    #[argh(option)]
    pub disk: Option<String>,
    /// longest run of one execution, in seconds
    #[argh(option)]
    pub timeout: Option<i64>,
    /// longest wait for a node, in seconds
    #[argh(option)]
    pub queue_timeout: Option<i64>,
    /// where results go: local (default), noop, ipfs, or s3://BUCKET/KEY with opt=region=…, opt=endpoint=…, opt=encoding=gzip|plain
    #[argh(option, short = 'p', default = "String::from(\"local\")")]
    pub publisher: String,
    /// network mode: none (default), host, full, http or bridge
    #[argh(option)]
    pub network: Option<String>,
    /// a domain the job may reach with --network http (repeatable)
    #[argh(option)]
    pub domain: Vec<String>,
    /// job name (resubmitting a name updates that job)
    #[argh(option)]
    pub name: Option<String>,
    /// number of executions (default 1)
    #[argh(option)]
    pub count: Option<i64>,
    /// job label KEY=VALUE (repeatable)
    #[argh(option, short = 'l')]
    pub labels: Vec<String>,
    /// node selector, e.g. "os_arch=arm64,zone in (a,b)"
    #[argh(option)]
    pub constraints: Option<String>,
    /// wait for the job to finish (the default; see --no-wait)
    #[argh(switch)]
    pub wait: bool,
    /// print the job id and return without waiting
    #[argh(switch)]
    pub no_wait: bool,
    /// print only the job id (still waits, and the exit code tells the outcome)
    #[argh(switch)]
    pub id_only: bool,
    /// stream the job's logs while it runs
    #[argh(switch, short = 'f')]
    pub follow: bool,
    /// longest time to wait, in seconds (default 600)
    #[argh(option, default = "600")]
    pub wait_timeout_secs: u64,
    /// print the job spec as YAML instead of submitting it
    #[argh(switch)]
    pub dry_run: bool,
}

/// Runs a `docker` command.
pub async fn run(ctx: &Context, args: DockerArgs) -> anyhow::Result<Outcome> {
    let DockerCommand::Run(args) = args.command;
    let opts = RunOptions::from_flags(
        args.wait,
        args.no_wait,
        args.id_only,
        args.follow,
        args.wait_timeout_secs,
        false,
    )?;
    let job = build_job(&args)?;
    submit_built(ctx, &job, &args.image, args.dry_run, &opts).await
}

/// Builds the job for `args`.
pub fn build_job(args: &DockerRunArgs) -> anyhow::Result<Job> {
    let image = args.image.trim();
    if image.is_empty() || image.starts_with('-') {
        return Err(UsageError::new(format!(
            "{:?} is not an image reference (e.g. busybox:1.36)",
            args.image
        ))
        .into());
    }
    if let Some(w) = &args.workdir
        && !w.starts_with('/')
    {
        return Err(UsageError::new(format!("-w {w:?} must be an absolute path")).into());
    }
    let mut params = json!({ "Image": image, "Parameters": args.command });
    if !args.entrypoint.is_empty() {
        params["Entrypoint"] = json!(args.entrypoint);
    }
    if let Some(w) = &args.workdir {
        params["WorkingDirectory"] = Value::String(w.clone());
    }
    let engine = SpecConfig {
        kind: "docker".into(),
        params: params.as_object().cloned().unwrap_or_default(),
    };
    let flags = TaskFlags {
        env: &args.env,
        input: &args.input,
        output: &args.output,
        memory: args.memory.as_deref(),
        cpu: args.cpu.as_deref(),
        disk: args.disk.as_deref(),
        timeout: args.timeout,
        queue_timeout: args.queue_timeout,
        publisher: &args.publisher,
        network: args.network.as_deref(),
        domains: &args.domain,
        name: args.name.as_deref(),
        count: args.count,
        labels: &args.labels,
        constraints: args.constraints.as_deref(),
    };
    build_task_job(engine, Vec::new(), &flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkType;

    /// `argv` from `docker` on, parsed by the subcommand itself (edge builds have no `cod docker` to reach
    /// it through).
    fn parse(argv: &[&str]) -> DockerRunArgs {
        assert_eq!(argv[0], "docker");
        let DockerArgs {
            command: DockerCommand::Run(a),
        } = DockerArgs::from_args(&["cod", "docker"], &argv[1..]).expect("parses");
        a
    }

    #[test]
    fn command_after_the_image_belongs_to_the_container() {
        let a = parse(&[
            "docker",
            "run",
            "-e",
            "A=1",
            "--memory",
            "64Mb",
            "-w",
            "/work",
            "busybox:1.36",
            "sh",
            "-c",
            "echo hi",
        ]);
        let job = build_job(&a).expect("builds");
        let task = &job.tasks[0];
        assert_eq!(task.engine.kind, "docker");
        assert_eq!(task.engine.params["Image"], "busybox:1.36");
        assert_eq!(
            task.engine.params["Parameters"],
            json!(["sh", "-c", "echo hi"])
        );
        assert_eq!(task.engine.params["WorkingDirectory"], "/work");
        assert!(task.engine.params.get("Entrypoint").is_none());
        assert_eq!(task.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(task.resources.memory, "64Mb");
        assert_eq!(task.publisher.kind, "local");
        assert_eq!(task.network.kind, NetworkType::Default);
        assert_eq!(task.result_paths[0].path, "/outputs");
    }

    #[test]
    fn entrypoint_network_and_outputs() {
        let a = parse(&[
            "docker",
            "run",
            "--entrypoint",
            "/bin/sh",
            "--entrypoint",
            "-c",
            "--network",
            "http",
            "--domain",
            "example.org",
            "-o",
            "results:/results",
            "-i",
            "https://x.org/a.csv",
            "img",
            "--",
            "-x",
        ]);
        assert_eq!(a.command, ["-x"]);
        let job = build_job(&a).expect("builds");
        let task = &job.tasks[0];
        assert_eq!(task.engine.params["Entrypoint"], json!(["/bin/sh", "-c"]));
        assert_eq!(task.network.kind, NetworkType::Http);
        assert_eq!(task.network.domains, ["example.org"]);
        assert_eq!(task.result_paths[0].name, "results");
        assert_eq!(task.input_sources[0].source.kind, "urlDownload");
    }

    #[test]
    fn rejects_bad_flags() {
        for argv in [
            &["docker", "run", "-w", "rel", "img"][..],
            &["docker", "run", "-e", "novalue", "img"][..],
            &["docker", "run", "--network", "wifi", "img"][..],
            &["docker", "run", "-p", "ftp", "img"][..],
        ] {
            assert!(build_job(&parse(argv)).is_err(), "{argv:?}");
        }
    }
}
