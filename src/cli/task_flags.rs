//! The job and task flags that `cod wasm run` and `cod docker run` share (Bacalhau's "shared job flags" and
//! "task flags"), and the one function that turns them and an engine spec into a validated batch job.

use anyhow::Context as _;

use super::input::parse_input;
use super::output::{emit, to_yaml};
use super::publisher::parse_publisher;
use super::spec_file::submission_document;
use super::wait::{RunOptions, submit};
use super::{Context, Outcome, UsageError};
use crate::model::constraint::parse_selector;
use crate::model::validate::validate_submission;
use crate::model::{
    InputSource, Job, JobType, NetworkConfig, NetworkType, ResultPath, SpecConfig, Task,
};

/// The shared flags, borrowed from a command's argh struct (argh cannot flatten structs).
#[derive(Debug, Default)]
pub struct TaskFlags<'a> {
    /// `-e NAME=VALUE`: the task's environment.
    pub env: &'a [String],
    /// `-i`: inputs.
    pub input: &'a [String],
    /// `-o NAME:/PATH`: result folders (default `outputs:/outputs`).
    pub output: &'a [String],
    /// `--memory`.
    pub memory: Option<&'a str>,
    /// `--cpu`.
    pub cpu: Option<&'a str>,
    /// `--disk`.
    pub disk: Option<&'a str>,
    /// `--timeout` seconds.
    pub timeout: Option<i64>,
    /// `--queue-timeout` seconds.
    pub queue_timeout: Option<i64>,
    /// `-p` (see [`parse_publisher`]).
    pub publisher: &'a str,
    /// `--network`.
    pub network: Option<&'a str>,
    /// `--domain` (repeatable).
    pub domains: &'a [String],
    /// `--name`.
    pub name: Option<&'a str>,
    /// `--count`.
    pub count: Option<i64>,
    /// `-l KEY=VALUE`.
    pub labels: &'a [String],
    /// `--constraints`.
    pub constraints: Option<&'a str>,
}

/// Parses `NAME=VALUE`.
pub fn key_value(flag: &str, text: &str) -> Result<(String, String), UsageError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(UsageError::new(format!(
            "{flag} {text:?} must be NAME=VALUE"
        ))),
    }
}

/// Parses `-o NAME:/PATH`.
fn result_path(text: &str) -> Result<ResultPath, UsageError> {
    match text.split_once(':') {
        Some((name, path)) if !name.trim().is_empty() && path.starts_with('/') => Ok(ResultPath {
            name: name.trim().to_owned(),
            path: path.to_owned(),
        }),
        _ => Err(UsageError::new(format!(
            "-o {text:?} must be NAME:/PATH, e.g. outputs:/outputs"
        ))),
    }
}

/// Parses `--network`: Bacalhau's names, case-insensitive (`full` is `Host`).
fn network(text: &str, domains: &[String]) -> Result<NetworkConfig, UsageError> {
    let kind = NetworkType::from(text.trim());
    if let NetworkType::Invalid(other) = &kind {
        return Err(UsageError::new(format!(
            "--network {other:?} is not a network mode (use none, host, full, http or bridge)"
        )));
    }
    if !domains.is_empty() && kind != NetworkType::Http {
        return Err(UsageError::new(
            "--domain only applies to --network http".to_owned(),
        ));
    }
    Ok(NetworkConfig {
        kind,
        domains: domains.to_vec(),
    })
}

/// Builds the one-task batch job: `engine` plus everything the flags say, with `inputs` (engine-specific, e.g.
/// an inline module) before the `-i` ones. Validated as the server would.
pub fn build_job(
    engine: SpecConfig,
    mut inputs: Vec<InputSource>,
    flags: &TaskFlags<'_>,
) -> anyhow::Result<Job> {
    for value in flags.input {
        inputs.push(parse_input(value)?);
    }
    let publisher = parse_publisher(flags.publisher)?;
    let result_paths = if flags.output.is_empty() {
        vec![ResultPath {
            name: "outputs".into(),
            path: "/outputs".into(),
        }]
    } else {
        flags
            .output
            .iter()
            .map(|o| result_path(o))
            .collect::<Result<_, _>>()?
    };
    let network = match flags.network {
        Some(n) => network(n, flags.domains)?,
        None if !flags.domains.is_empty() => network("http", flags.domains)?,
        None => NetworkConfig::default(),
    };
    let mut task = Task {
        name: "main".into(),
        engine,
        publisher,
        input_sources: inputs,
        result_paths,
        network,
        ..Task::default()
    };
    for e in flags.env {
        let (k, v) = key_value("-e", e)?;
        task.env.insert(k, v);
    }
    task.resources.memory = flags.memory.unwrap_or_default().to_owned();
    task.resources.cpu = flags.cpu.unwrap_or_default().to_owned();
    task.resources.disk = flags.disk.unwrap_or_default().to_owned();
    task.timeouts.execution_timeout = flags.timeout.unwrap_or(0);
    task.timeouts.queue_timeout = flags.queue_timeout.unwrap_or(0);

    let mut job = Job {
        name: flags.name.unwrap_or_default().to_owned(),
        job_type: JobType::Batch,
        count: flags.count,
        tasks: vec![task],
        ..Job::default()
    };
    for l in flags.labels {
        let (k, v) = key_value("-l", l)?;
        job.labels.insert(k, v);
    }
    if let Some(c) = flags.constraints {
        job.constraints =
            parse_selector(c).map_err(|e| UsageError::new(format!("--constraints {c:?}: {e}")))?;
    }
    validate_submission(&job).map_err(|e| UsageError::new(e.to_string()))?;
    Ok(job)
}

/// Prints `job` as YAML with `dry_run`, else submits it and reports on it per `opts` (`label` names it in
/// messages).
pub async fn submit_built(
    ctx: &Context,
    job: &Job,
    label: &str,
    dry_run: bool,
    opts: &RunOptions,
) -> anyhow::Result<Outcome> {
    let document = submission_document(job)?;
    if dry_run {
        return emit(&to_yaml(&document)?).map(|()| Outcome::Success);
    }
    let document = serde_json::to_value(&document).context("encoding the job spec")?;
    submit(ctx, document, label, opts).await
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn engine() -> SpecConfig {
        SpecConfig {
            kind: "docker".into(),
            params: Map::new(),
        }
    }

    #[test]
    fn network_flags() {
        let f = TaskFlags {
            publisher: "local",
            network: Some("FULL"),
            ..TaskFlags::default()
        };
        let mut e = engine();
        e.params.insert("Image".into(), "busybox".into());
        let job = build_job(e.clone(), vec![], &f).expect("builds");
        assert_eq!(job.tasks[0].network.kind, NetworkType::Host);

        let domains = vec!["example.org".to_owned()];
        let f = TaskFlags {
            publisher: "local",
            domains: &domains,
            ..TaskFlags::default()
        };
        let job = build_job(e.clone(), vec![], &f).expect("domain implies http");
        assert_eq!(job.tasks[0].network.kind, NetworkType::Http);
        assert_eq!(job.tasks[0].network.domains, domains);

        for bad in [
            TaskFlags {
                publisher: "local",
                network: Some("wifi"),
                ..TaskFlags::default()
            },
            TaskFlags {
                publisher: "local",
                network: Some("none"),
                domains: &domains,
                ..TaskFlags::default()
            },
        ] {
            assert!(build_job(e.clone(), vec![], &bad).is_err(), "{bad:?}");
        }
    }
}
