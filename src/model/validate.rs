//! Submission validation. Like Bacalhau's `Job.ValidateSubmission`, it reports every problem at once, each
//! naming the field (`Tasks[0].Timeouts.ExecutionTimeout`), so a user fixes a spec in one round trip.

use std::collections::BTreeSet;
use std::fmt;

use super::constraint;
use super::job::{Job, JobType, NetworkType};
use super::resources;
use super::spec::{EngineSpec, InputSpec, PublisherSpec};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path (`Tasks[0].Engine.Type`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid job spec: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates a submitted job (before server defaults are applied).
pub fn validate_submission(job: &Job) -> Result<(), ValidationErrors> {
    let mut errs = Vec::new();
    let mut err = |field: String, msg: String| errs.push(FieldError::new(field, msg));

    if let JobType::Invalid(t) = &job.job_type {
        if t.trim().is_empty() {
            err(
                "Type".into(),
                "is required (batch, ops, daemon or service)".into(),
            );
        } else {
            err(
                "Type".into(),
                format!("{t:?} is not one of batch, ops, daemon, service"),
            );
        }
    }
    if let Some(n) = job.count {
        if n < 0 {
            err("Count".into(), format!("must not be negative (got {n})"));
        }
        if matches!(job.job_type, JobType::Ops | JobType::Daemon) && n > 1 {
            err(
                "Count".into(),
                format!("must be 0 or 1 for {} jobs (got {n})", job.job_type),
            );
        }
    }
    if job.name.contains('\0') {
        err("Name".into(), "must not contain NUL".into());
    }
    for (i, c) in job.constraints.iter().enumerate() {
        if let Err(e) = constraint::check(c) {
            err(format!("Constraints[{i}]"), e);
        }
    }
    if job.tasks.is_empty() {
        err("Tasks".into(), "at least one task is required".into());
    }
    for (ti, task) in job.tasks.iter().enumerate() {
        let t = format!("Tasks[{ti}]");
        if task.name.trim().is_empty() {
            err(format!("{t}.Name"), "is required".into());
        } else if task.name.contains('\0') {
            err(format!("{t}.Name"), "must not contain NUL".into());
        }
        for (name, value) in &task.env {
            if !valid_env_name(name) {
                err(
                    format!("{t}.Env.{name}"),
                    "names start with a letter and use only A-Z, 0-9 and _".into(),
                );
            } else if name.to_ascii_uppercase().starts_with("BACALHAU_") {
                err(
                    format!("{t}.Env.{name}"),
                    "names starting with BACALHAU_ are reserved".into(),
                );
            }
            if value.is_empty() {
                err(format!("{t}.Env.{name}"), "value must not be empty".into());
            }
        }
        if task.engine.is_empty() {
            err(
                format!("{t}.Engine.Type"),
                "is required (wasm or docker)".into(),
            );
        } else {
            match EngineSpec::parse(&task.engine, &format!("{t}.Engine")) {
                Err(e) => errs_push(&mut err, e),
                Ok(EngineSpec::Wasm(p)) => {
                    if p.entry_module.trim().is_empty() {
                        err(
                            format!("{t}.Engine.Params.EntryModule"),
                            "is required".into(),
                        );
                    }
                }
                Ok(EngineSpec::Docker(p)) => {
                    if p.image.trim().is_empty() {
                        err(format!("{t}.Engine.Params.Image"), "is required".into());
                    }
                    if !p.working_directory.is_empty() && !p.working_directory.starts_with('/') {
                        err(
                            format!("{t}.Engine.Params.WorkingDirectory"),
                            "must be an absolute path".into(),
                        );
                    }
                    for e in &p.environment_variables {
                        if e.split('=')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_uppercase()
                            .starts_with("BACALHAU_")
                        {
                            err(
                                format!("{t}.Engine.Params.EnvironmentVariables"),
                                format!("{e:?} is reserved"),
                            );
                        }
                    }
                }
                Ok(EngineSpec::Unknown(_)) => {}
            }
        }
        let to = &task.timeouts;
        for (name, v) in [
            ("ExecutionTimeout", to.execution_timeout),
            ("QueueTimeout", to.queue_timeout),
            ("TotalTimeout", to.total_timeout),
        ] {
            if v < 0 {
                err(
                    format!("{t}.Timeouts.{name}"),
                    format!("must not be negative (got {v})"),
                );
            }
        }
        // Saturating: the timeouts come from the client, and two near i64::MAX would overflow (a panic in
        // debug builds; in release a wrapped, negative sum that passes the check).
        if to.total_timeout > 0
            && to
                .execution_timeout
                .max(0)
                .saturating_add(to.queue_timeout.max(0))
                > to.total_timeout
        {
            err(
                format!("{t}.Timeouts"),
                "ExecutionTimeout + QueueTimeout must not exceed TotalTimeout".into(),
            );
        }
        let r = &task.resources;
        if !r.cpu.is_empty()
            && let Err(e) = resources::parse_cpu(&r.cpu)
        {
            err(format!("{t}.Resources.CPU"), e.to_string());
        }
        if !r.memory.is_empty()
            && let Err(e) = resources::parse_bytes("memory", &r.memory)
        {
            err(format!("{t}.Resources.Memory"), e.to_string());
        }
        if !r.disk.is_empty()
            && let Err(e) = resources::parse_bytes("disk", &r.disk)
        {
            err(format!("{t}.Resources.Disk"), e.to_string());
        }
        if !r.gpu.is_empty()
            && let Err(e) = resources::parse_gpu(&r.gpu)
        {
            err(format!("{t}.Resources.GPU"), e.to_string());
        }
        let mut aliases = BTreeSet::new();
        let mut targets = BTreeSet::new();
        for (ii, input) in task.input_sources.iter().enumerate() {
            let f = format!("{t}.InputSources[{ii}]");
            if input.target.trim().is_empty() {
                err(format!("{f}.Target"), "is required".into());
            } else if !targets.insert(input.target.trim_end_matches('/').to_owned()) {
                err(
                    format!("{f}.Target"),
                    format!("{:?} is used by another input", input.target),
                );
            }
            if input.target.split('/').any(|c| c == "..") {
                err(format!("{f}.Target"), "must not contain ..".into());
            }
            if !input.alias.is_empty() && !aliases.insert(input.alias.clone()) {
                err(
                    format!("{f}.Alias"),
                    format!("{:?} is used by another input", input.alias),
                );
            }
            if let Err(e) = InputSpec::parse(&input.source, &format!("{f}.Source")) {
                errs_push(&mut err, e);
            }
        }
        let mut names = BTreeSet::new();
        let mut paths = BTreeSet::new();
        for (ri, rp) in task.result_paths.iter().enumerate() {
            let f = format!("{t}.ResultPaths[{ri}]");
            if rp.name.trim().is_empty() {
                err(format!("{f}.Name"), "is required".into());
            } else if rp.name.contains('/') || rp.name == "." || rp.name == ".." {
                err(format!("{f}.Name"), "must be a plain folder name".into());
            } else if ["stdout", "stderr", "exitCode"].contains(&rp.name.as_str()) {
                err(
                    format!("{f}.Name"),
                    format!("{:?} clashes with the result's own files", rp.name),
                );
            } else if !names.insert(rp.name.clone()) {
                err(
                    format!("{f}.Name"),
                    format!("{:?} is used by another result path", rp.name),
                );
            }
            if rp.path.trim().is_empty() {
                err(format!("{f}.Path"), "is required".into());
            } else if !rp.path.starts_with('/') {
                err(format!("{f}.Path"), "must be an absolute path".into());
            } else if rp.path.split('/').any(|c| c == "..") {
                err(format!("{f}.Path"), "must not contain ..".into());
            } else if !paths.insert(rp.path.trim_end_matches('/').to_owned()) {
                err(
                    format!("{f}.Path"),
                    format!("{:?} is used by another result path", rp.path),
                );
            }
        }
        match PublisherSpec::parse(&task.publisher) {
            Some(PublisherSpec::Unsupported(p)) if p.is_empty() => {
                err(format!("{t}.Publisher.Type"), "is required".into());
            }
            Some(PublisherSpec::S3(p)) => {
                for (param, message) in p.problems() {
                    err(format!("{t}.Publisher.Params.{param}"), message);
                }
            }
            _ => {}
        }
        match &task.network.kind {
            NetworkType::Invalid(n) => {
                err(
                    format!("{t}.Network.Type"),
                    format!("{n:?} is not one of None, Host, Full, HTTP, Bridge"),
                );
            }
            NetworkType::Http => {}
            _ if !task.network.domains.is_empty() => {
                err(
                    format!("{t}.Network.Domains"),
                    "domains are only allowed with network type HTTP".into(),
                );
            }
            _ => {}
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errs))
    }
}

fn errs_push(err: &mut impl FnMut(String, String), e: FieldError) {
    err(e.field, e.message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ci;

    fn job(yaml: &str) -> Job {
        ci::from_value(ci::parse_document(yaml).expect("parses")).expect("decodes")
    }

    /// Found by the job_spec fuzz target (tests/fuzz/regressions/job_spec-timeout-sum-overflow.json): the
    /// timeout sum overflowed i64 (a panic with overflow checks on; a wrapped sum that passed otherwise).
    #[test]
    fn huge_timeouts_are_refused_without_overflow() {
        let j: Job = ci::from_value(
            serde_json::from_str(include_str!(
                "../../tests/fuzz/regressions/job_spec-timeout-sum-overflow.json"
            ))
            .expect("parses"),
        )
        .expect("decodes");
        let errs = validate_submission(&j).expect_err("the sum exceeds TotalTimeout");
        assert!(
            errs.0.iter().any(|e| e.field == "Tasks[0].Timeouts"),
            "{errs}"
        );
    }

    #[test]
    fn accepts_a_minimal_wasm_job() {
        let j = job(
            "Type: batch\nTasks:\n- Name: main\n  Engine: {Type: wasm, Params: {EntryModule: /m.wasm}}\n",
        );
        validate_submission(&j).expect("valid");
    }

    #[test]
    fn reports_every_problem_naming_its_field() {
        let j = job(
            "type: weekly\ncount: -1\ntasks:\n- name: ''\n  engine: {type: wasm}\n  env: {bad-name: x, BACALHAU_X: y}\n  timeouts: {executiontimeout: -5}\n  resources: {memory: lots}\n  resultpaths: [{name: out, path: rel}]\n  inputsources: [{source: {type: inline, params: {url: x}}}]\n",
        );
        let errs = validate_submission(&j).expect_err("invalid").0;
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "Type",
            "Count",
            "Tasks[0].Name",
            "Tasks[0].Env.bad-name",
            "Tasks[0].Env.BACALHAU_X",
            "Tasks[0].Engine.Params.EntryModule",
            "Tasks[0].Timeouts.ExecutionTimeout",
            "Tasks[0].Resources.Memory",
            "Tasks[0].ResultPaths[0].Path",
            "Tasks[0].InputSources[0].Target",
            "Tasks[0].InputSources[0].Source.Params.URL",
        ] {
            assert!(fields.contains(&f), "missing {f} in {fields:?}");
        }
    }

    #[test]
    fn unknown_engine_is_accepted_at_submission() {
        let j = job("Type: batch\nTasks:\n- Name: main\n  Engine: {Type: flibble}\n");
        validate_submission(&j).expect("accepted; scheduling fails it later");
    }
}
