//! Reading a job spec file for `cod job run`, with the checks Bacalhau's CLI makes before it submits.
//!
//! The file is YAML or JSON (≤10 MB, `-` = stdin), keys match case-insensitively. Like `bacalhau job run`,
//! only the submittable top-level keys are accepted, and the server-owned ones (ID, State, Version, …) are
//! refused with a message saying so, since a spec copied from `cod job describe --output yaml` would
//! otherwise be silently half-ignored. Then [`validate_submission`] runs locally, so every field error is
//! shown at once without a round trip.
//!
//! What is sent is the document itself, not the decoded [`Job`] re-encoded: the server may understand fields
//! this client's model does not, and re-encoding would drop them.

use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use crate::model::spec::normalize_legacy_wasm;
use crate::model::validate::validate_submission;
use crate::model::{Job, ci};

/// Largest spec accepted (Bacalhau's limit, and the API's body limit).
pub const MAX_SPEC_BYTES: u64 = 10 * 1024 * 1024;

/// Top-level keys a submitted job may have.
pub const ALLOWED_KEYS: [&str; 9] = [
    "Name",
    "Namespace",
    "Type",
    "Priority",
    "Count",
    "Constraints",
    "Meta",
    "Labels",
    "Tasks",
];

/// Top-level keys the server sets.
pub const SERVER_OWNED_KEYS: [&str; 6] = [
    "ID",
    "State",
    "Version",
    "Revision",
    "CreateTime",
    "ModifyTime",
];

/// Every problem found in a spec, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_problems(.0))]
pub struct SpecProblems(pub Vec<String>);

fn render_problems(problems: &[String]) -> String {
    let mut text = String::from("the job spec is invalid:");
    for p in problems {
        text.push_str("\n  - ");
        text.push_str(p);
    }
    text
}

/// A checked spec: the document to submit and its decoded form.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The document as written (sent as the `Job` of the PUT body).
    pub document: Value,
    /// The decoded job, for local checks and messages.
    pub job: Job,
}

/// Reads the spec at `path` (`-` for stdin), refusing files over [`MAX_SPEC_BYTES`].
pub async fn read_spec(path: &str) -> anyhow::Result<String> {
    let owned = path.to_owned();
    let bytes = tokio::task::spawn_blocking(move || read_limited(&owned))
        .await
        .context("reading the job spec was interrupted")??;
    String::from_utf8(bytes).with_context(|| format!("job spec {path} is not UTF-8 text"))
}

fn read_limited(path: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let limit = MAX_SPEC_BYTES + 1;
    if path == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)
            .context("reading the job spec from stdin")?;
    } else {
        let file = std::fs::File::open(Path::new(path))
            .with_context(|| format!("opening job spec {path}"))?;
        file.take(limit)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading job spec {path}"))?;
    }
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        anyhow::bail!("job spec {path} is larger than {MAX_SPEC_BYTES} bytes");
    }
    Ok(bytes)
}

/// Parses and checks a spec's text, reporting every problem at once.
pub fn parse_spec(text: &str) -> Result<JobSpec, SpecProblems> {
    let document = ci::parse_document(text).map_err(|e| SpecProblems(vec![e.to_string()]))?;
    let Value::Object(map) = &document else {
        return Err(SpecProblems(vec![
            "the document must be a mapping of job fields (Name, Type, Tasks, …)".into(),
        ]));
    };
    let mut problems = Vec::new();
    for key in map.keys() {
        if let Some(owned) = SERVER_OWNED_KEYS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(key))
        {
            problems.push(format!(
                "{owned}: is set by the server and must not be in a submitted spec; remove it"
            ));
        } else if !ALLOWED_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            problems.push(format!(
                "{key}: unknown field (allowed: {})",
                ALLOWED_KEYS.join(", ")
            ));
        }
    }
    let job: Job = match ci::from_value(document.clone()) {
        Ok(job) => job,
        Err(e) => {
            problems.push(format!("the spec does not match the job format: {e}"));
            return Err(SpecProblems(problems));
        }
    };
    // The server rewrites pre-1.7 wasm specs; validate the rewritten form so such specs are not refused here.
    let mut normalized = job.clone();
    normalize_legacy_wasm(&mut normalized);
    if let Err(errors) = validate_submission(&normalized) {
        problems.extend(errors.0.iter().map(ToString::to_string));
    }
    if problems.is_empty() {
        Ok(JobSpec { document, job })
    } else {
        Err(SpecProblems(problems))
    }
}

/// Encodes a job built by the CLI (`cod wasm run`) as a submittable spec: the server-owned fields are dropped,
/// and so are empty or default parts, so the result reads like a hand-written spec and `cod job run` accepts
/// it back (it is what `--dry-run` prints). It is a YAML value because YAML mappings keep the fields in the
/// model's order (Name, Type, …, Tasks), which JSON maps here would sort alphabetically.
pub fn submission_document(job: &Job) -> anyhow::Result<serde_yaml_ng::Value> {
    use serde_yaml_ng::Value as Yaml;
    let mut value = serde_yaml_ng::to_value(job).context("encoding the job spec")?;
    if let Some(map) = value.as_mapping_mut() {
        map.retain(|key, v| {
            let key = key.as_str().unwrap_or_default();
            ALLOWED_KEYS.contains(&key)
                && !is_blank(v)
                && !(key == "Priority" && v.as_i64() == Some(0))
        });
        if let Some(tasks) = map.get_mut("Tasks").and_then(Yaml::as_sequence_mut) {
            for task in tasks.iter_mut().filter_map(Yaml::as_mapping_mut) {
                task.retain(|key, v| match key.as_str().unwrap_or_default() {
                    "Network" => {
                        v.get("Type").and_then(Yaml::as_str) != Some("Default")
                            || v.get("Domains").is_some_and(|d| !is_blank(d))
                    }
                    "Timeouts" => v
                        .as_mapping()
                        .is_some_and(|t| t.values().any(|n| n.as_i64() != Some(0))),
                    _ => !is_blank(v),
                });
            }
        }
    }
    Ok(value)
}

/// Null, empty text, or an empty list or map.
fn is_blank(v: &serde_yaml_ng::Value) -> bool {
    use serde_yaml_ng::Value as Yaml;
    match v {
        Yaml::Null => true,
        Yaml::String(s) => s.is_empty(),
        Yaml::Sequence(a) => a.is_empty(),
        Yaml::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "\
name: hello
type: batch
tasks:
  - name: main
    engine: {type: wasm, params: {EntryModule: /main.wasm}}
    inputSources:
      - {target: /main.wasm, source: {type: inline, params: {url: 'data:application/wasm;base64,AGFzbQEAAAA='}}}
";

    #[test]
    fn accepts_a_valid_spec_and_keeps_the_document() {
        let spec = parse_spec(VALID).expect("valid");
        assert_eq!(spec.job.name, "hello");
        assert_eq!(
            spec.document["name"], "hello",
            "the document is sent as written"
        );
    }

    #[test]
    fn rejects_unknown_top_level_keys() {
        let text = format!("{VALID}Colour: blue\n");
        let e = parse_spec(&text).expect_err("unknown key");
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(e.0[0].starts_with("Colour: unknown field"), "{e}");
    }

    #[test]
    fn rejects_server_owned_keys_case_insensitively() {
        let text = format!("{VALID}id: j-123\nstate: {{StateType: Running}}\n");
        let e = parse_spec(&text).expect_err("server-owned keys");
        let text = e.to_string();
        assert!(text.contains("ID: is set by the server"), "{text}");
        assert!(text.contains("State: is set by the server"), "{text}");
    }

    #[test]
    fn reports_key_and_validation_problems_together() {
        let e = parse_spec("Type: batch\nVersion: 3\nTasks:\n- Name: main\n  Engine: {}\n")
            .expect_err("invalid");
        let text = e.to_string();
        assert!(text.starts_with("the job spec is invalid:\n  - "), "{text}");
        assert!(text.contains("Version: is set by the server"), "{text}");
        assert!(text.contains("Tasks[0].Engine.Type: is required"), "{text}");
    }

    #[test]
    fn accepts_json_and_legacy_wasm() {
        let json = r#"{"Type":"batch","Tasks":[{"Name":"main","Engine":{"Type":"wasm","Params":{
            "EntryModule":{"Source":{"Type":"inline","Params":{"URL":"data:,x"}}},"EntryPoint":"_start"}}}]}"#;
        parse_spec(json).expect("legacy wasm spec is accepted");
    }

    #[test]
    fn submission_documents_round_trip_through_the_checks() {
        let spec = parse_spec(VALID).expect("valid");
        let doc = submission_document(&spec.job).expect("encodes");
        let keys: Vec<&str> = doc
            .as_mapping()
            .expect("map")
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            ["Name", "Type", "Tasks"],
            "the model's order, not alphabetical"
        );
        let task = &doc["Tasks"][0];
        assert!(
            task.get("Network").is_none()
                && task.get("Timeouts").is_none()
                && task.get("Resources").is_none()
        );
        let yaml = serde_yaml_ng::to_string(&doc).expect("yaml");
        parse_spec(&yaml).expect("cod job run accepts what --dry-run prints");
    }

    #[test]
    fn rejects_non_mapping_documents() {
        assert!(parse_spec("- a\n- b\n").is_err());
        assert!(parse_spec("{not json").is_err());
    }
}
