//! `cod wasm run`: build a batch job for a WebAssembly (WASI) module from flags, as `bacalhau wasm run` does.
//!
//! A local MODULE file is sent inline: a base64 `data:application/wasm;base64,…` input at `/main.wasm`, which
//! is also the engine's `EntryModule`. A MODULE that is a URI (`http(s)://`, `ipfs://`, `s3://`, optionally
//! `URI:/TARGET`) becomes an ordinary input instead. Import modules (`-I`) work the same way and land under
//! `/imports/`. The job has one task, `main`, publishes with `local` unless `-p` says otherwise (as Bacalhau's
//! CLI does on a local network, so `cod job get` works out of the box), and has the result path
//! `outputs:/outputs` unless `-o` is given. Everything is validated locally before submission.
//!
//! Arguments after MODULE are passed to the module. Flags for `cod` go before MODULE. From the first module
//! argument on, everything goes to the module, flags included (`cod wasm run m.wasm in.csv --verbose`); when
//! the first module argument itself starts with `-`, put `--` before it (`cod wasm run m.wasm -- --verbose`).

use std::path::Path;

use anyhow::Context as _;
use argh::FromArgs;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::input::{source_spec, split_target};
use super::spec_file::MAX_SPEC_BYTES;
use super::task_flags::{TaskFlags, build_job as build_task_job, submit_built};
use super::wait::RunOptions;
use super::{Context, Outcome, UsageError};
use crate::model::{InputSource, Job, SpecConfig};

/// Where the entry module is mounted when sent inline.
pub const MAIN_MODULE_TARGET: &str = "/main.wasm";
/// Most module bytes sent inline in total: base64 grows them by a third, and the whole request must stay under
/// the API's 10 MB body limit.
pub const MAX_INLINE_BYTES: u64 = MAX_SPEC_BYTES / 4 * 3 - 64 * 1024;

/// run WebAssembly modules
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "wasm")]
pub struct WasmArgs {
    /// the wasm command
    #[argh(subcommand)]
    pub command: WasmCommand,
}

/// The `wasm` commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum WasmCommand {
    /// `wasm run`
    Run(WasmRunArgs),
}

/// run a WebAssembly (WASI) module as a job; arguments after MODULE are passed to it
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "run")]
pub struct WasmRunArgs {
    /// the module: a local .wasm file (sent inline) or a URI (http(s)://, ipfs://, s3://), optionally URI:/TARGET
    #[argh(positional)]
    pub module: String,
    /// arguments for the module (argv[1..])
    #[argh(positional, greedy)]
    pub args: Vec<String>,
    /// environment variable for the module, NAME=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,
    /// input data, SOURCE[:TARGET] or src=URI,dst=PATH,opt=K=V (repeatable; target defaults to /inputs)
    #[argh(option, short = 'i')]
    pub input: Vec<String>,
    /// result folder NAME:/PATH, mounted at /NAME (repeatable; default outputs:/outputs)
    #[argh(option, short = 'o')]
    pub output: Vec<String>,
    /// module instantiated before MODULE: a local .wasm file or a URI (repeatable)
    #[argh(option, short = 'I')]
    pub import_module: Vec<String>,
    /// exported function to call (default _start)
    #[argh(option, default = "String::from(\"_start\")")]
    pub entry_point: String,
    /// memory limit, e.g. 64Mb
    #[argh(option)]
    pub memory: Option<String>,
    /// CPU request, e.g. 500m or 1
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
    /// network mode: none (default for wasm), host, full, http or bridge
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

/// Runs a `wasm` command.
pub async fn run(ctx: &Context, args: WasmArgs) -> anyhow::Result<Outcome> {
    let WasmCommand::Run(args) = args.command;
    let opts = RunOptions::from_flags(
        args.wait,
        args.no_wait,
        args.id_only,
        args.follow,
        args.wait_timeout_secs,
        false,
    )?;
    let (label, dry_run) = (args.module.clone(), args.dry_run);
    // Module files can be megabytes; read them off the runtime thread.
    let job = tokio::task::spawn_blocking(move || build_job(&args, |p| std::fs::read(p)))
        .await
        .context("building the job was interrupted")??;
    submit_built(ctx, &job, &label, dry_run, &opts).await
}

/// A module given on the command line, as an input at `default_target` (or the `:TARGET` it names).
fn module_input(
    text: &str,
    default_target: &str,
    load: &impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    inline_budget: &mut u64,
) -> anyhow::Result<InputSource> {
    if text.contains("://") {
        let (uri, target) = split_target(text);
        let source =
            source_spec(uri, &[]).map_err(|e| UsageError::new(format!("module {text:?}: {e}")))?;
        return Ok(InputSource {
            source,
            alias: uri.to_owned(),
            target: target.unwrap_or(default_target).to_owned(),
        });
    }
    // `path:/target` unless the whole text names a file (a path may contain a colon).
    let (path, target) = match split_target(text) {
        (p, Some(t)) if !Path::new(text).exists() => (p, t),
        _ => (text, default_target),
    };
    let bytes = load(Path::new(path)).with_context(|| format!("reading wasm module {path}"))?;
    if !bytes.starts_with(b"\0asm") {
        anyhow::bail!(
            "{path} is not a WebAssembly module (it lacks the \\0asm header; compile .wat files first)"
        );
    }
    let size = bytes.len() as u64;
    if size > *inline_budget {
        anyhow::bail!(
            "{path} is too large to send inline ({size} bytes; at most {MAX_INLINE_BYTES} bytes of modules fit in \
             one request): publish it at a URL and pass that instead"
        );
    }
    *inline_budget -= size;
    let url = format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    let mut params = Map::new();
    params.insert("URL".into(), Value::String(url));
    Ok(InputSource {
        source: SpecConfig {
            kind: "inline".into(),
            params,
        },
        alias: String::new(),
        target: target.to_owned(),
    })
}

/// Builds the job for `args`, reading local module files through `load`.
pub fn build_job(
    args: &WasmRunArgs,
    load: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> anyhow::Result<Job> {
    let mut budget = MAX_INLINE_BYTES;
    let mut inputs = vec![module_input(
        &args.module,
        MAIN_MODULE_TARGET,
        &load,
        &mut budget,
    )?];
    let entry_module = inputs[0].target.clone();
    let mut imports = Vec::new();
    for (i, module) in args.import_module.iter().enumerate() {
        let file_name = Path::new(split_target(module).0)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !module.contains("://") && n.ends_with(".wasm"))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("module_{i}.wasm"));
        let input = module_input(module, &format!("/imports/{file_name}"), &load, &mut budget)?;
        imports.push(Value::String(input.target.clone()));
        inputs.push(input);
    }
    let mut params = json!({
        "EntryModule": entry_module,
        "Entrypoint": args.entry_point,
        "Parameters": args.args,
    });
    if !imports.is_empty() {
        params["ImportModules"] = Value::Array(imports);
    }
    let engine = SpecConfig {
        kind: "wasm".into(),
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
    build_task_job(engine, inputs, &flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobType, ResultPath};

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn load(path: &Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("hello.wasm" | "/abs/lib.wasm") => Ok(MODULE.to_vec()),
            Some("notes.txt") => Ok(b"hello".to_vec()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            )),
        }
    }

    fn args(module: &str) -> WasmRunArgs {
        WasmRunArgs {
            module: module.into(),
            entry_point: "_start".into(),
            publisher: "local".into(),
            wait_timeout_secs: 600,
            ..WasmRunArgs::default()
        }
    }

    fn param<'a>(spec: &'a SpecConfig, key: &str) -> &'a Value {
        spec.params.get(key).unwrap_or(&Value::Null)
    }

    #[test]
    fn local_module_is_sent_inline_as_the_entry_module() {
        let mut a = args("hello.wasm");
        a.args = vec!["in.csv".into(), "--flag".into()];
        a.env = vec!["MODE=fast".into()];
        let job = build_job(&a, load).expect("builds");
        let task = &job.tasks[0];
        assert_eq!(task.name, "main");
        assert_eq!(job.job_type, JobType::Batch);
        let main = &task.input_sources[0];
        assert_eq!(main.target, "/main.wasm");
        assert_eq!(main.source.kind, "inline");
        assert_eq!(
            param(&main.source, "URL"),
            "data:application/wasm;base64,AGFzbQEAAAA="
        );
        assert_eq!(task.engine.kind, "wasm");
        assert_eq!(param(&task.engine, "EntryModule"), "/main.wasm");
        assert_eq!(param(&task.engine, "Entrypoint"), "_start");
        assert_eq!(
            param(&task.engine, "Parameters"),
            &json!(["in.csv", "--flag"])
        );
        assert_eq!(task.env.get("MODE").map(String::as_str), Some("fast"));
        assert_eq!(task.publisher.kind, "local");
        assert_eq!(
            task.result_paths,
            vec![ResultPath {
                name: "outputs".into(),
                path: "/outputs".into()
            }]
        );
    }

    #[test]
    fn inputs_imports_outputs_and_resources() {
        let mut a = args("hello.wasm");
        a.input = vec![
            "file:///srv/data:/data".into(),
            "https://x.org/a.csv".into(),
        ];
        a.import_module = vec!["/abs/lib.wasm".into(), "ipfs://QmLib".into()];
        a.output = vec!["results:/results".into()];
        a.memory = Some("64Mb".into());
        a.timeout = Some(30);
        a.publisher = "noop".into();
        a.labels = vec!["team=edge".into()];
        a.constraints = Some("os_arch=arm64".into());
        let job = build_job(&a, load).expect("builds");
        let task = &job.tasks[0];
        let targets: Vec<&str> = task
            .input_sources
            .iter()
            .map(|i| i.target.as_str())
            .collect();
        assert_eq!(
            targets,
            [
                "/main.wasm",
                "/imports/lib.wasm",
                "/imports/module_1.wasm",
                "/data",
                "/inputs"
            ]
        );
        assert_eq!(
            param(&task.engine, "ImportModules"),
            &json!(["/imports/lib.wasm", "/imports/module_1.wasm"])
        );
        assert_eq!(task.input_sources[2].source.kind, "ipfs");
        assert_eq!(task.input_sources[3].source.kind, "local");
        assert_eq!(task.input_sources[4].source.kind, "urlDownload");
        assert_eq!(task.result_paths[0].name, "results");
        assert_eq!(task.resources.memory, "64Mb");
        assert_eq!(task.timeouts.execution_timeout, 30);
        assert_eq!(task.publisher.kind, "noop");
        assert_eq!(job.labels.get("team").map(String::as_str), Some("edge"));
        assert_eq!(job.constraints.len(), 1);
    }

    #[test]
    fn uri_modules_are_inputs_with_their_own_target() {
        let job = build_job(&args("https://x.org/m.wasm:/app/m.wasm"), load).expect("builds");
        let task = &job.tasks[0];
        assert_eq!(task.input_sources[0].source.kind, "urlDownload");
        assert_eq!(task.input_sources[0].target, "/app/m.wasm");
        assert_eq!(param(&task.engine, "EntryModule"), "/app/m.wasm");
    }

    #[test]
    fn rejects_bad_modules_and_flags() {
        assert!(
            format!(
                "{:#}",
                build_job(&args("missing.wasm"), load).expect_err("missing")
            )
            .contains("missing.wasm")
        );
        assert!(
            format!(
                "{:#}",
                build_job(&args("notes.txt"), load).expect_err("not wasm")
            )
            .contains("\\0asm")
        );
        let mut a = args("hello.wasm");
        a.env = vec!["novalue".into()];
        assert!(build_job(&a, load).is_err());
        let mut a = args("hello.wasm");
        a.output = vec!["outputs".into()];
        assert!(build_job(&a, load).is_err());
        let mut a = args("hello.wasm");
        a.publisher = "ftp".into();
        assert!(build_job(&a, load).is_err());
        let mut a = args("hello.wasm");
        a.memory = Some("lots".into());
        let e = build_job(&a, load).expect_err("invalid memory");
        assert!(e.to_string().contains("Tasks[0].Resources.Memory"), "{e}");
    }

    #[test]
    fn dry_run_document_is_a_valid_job_spec() {
        let job = build_job(&args("hello.wasm"), load).expect("builds");
        let doc = crate::cli::spec_file::submission_document(&job).expect("encodes");
        let yaml = serde_yaml_ng::to_string(&doc).expect("yaml");
        let spec = crate::cli::spec_file::parse_spec(&yaml).expect("job run accepts it");
        assert_eq!(spec.job.tasks[0].input_sources[0].target, "/main.wasm");
    }

    #[test]
    fn parses_module_args_after_the_module() {
        // Parsed by the subcommand itself: edge builds have no `cod wasm` to reach it through.
        let parse = |argv: &[&str]| WasmArgs::from_args(&["cod", "wasm"], argv);
        let WasmArgs {
            command: WasmCommand::Run(a),
        } = parse(&["run", "-e", "A=1", "--no-wait", "m.wasm", "x", "--", "-y"]).expect("parses");
        assert_eq!(a.module, "m.wasm");
        assert_eq!(a.args, ["x", "--", "-y"]);
        assert_eq!(a.env, ["A=1"]);
        assert!(a.no_wait);
        for (argv, expected) in [
            (
                &["run", "m.wasm", "--", "--verbose"][..],
                &["--verbose"][..],
            ),
            (
                &["run", "m.wasm", "x", "--verbose"][..],
                &["x", "--verbose"][..],
            ),
        ] {
            let WasmArgs {
                command: WasmCommand::Run(a),
            } = parse(argv).expect("parses");
            assert_eq!(a.args, expected, "{argv:?}");
        }
        let e = parse(&["run", "m.wasm", "--verbose"]);
        assert!(
            e.is_err(),
            "an unknown flag right after MODULE is cod's, not the module's"
        );
    }
}
