//! Submitting a job and following it to the end: shared by `cod job run` and `cod wasm run`.
//!
//! Waiting is the default, as in Bacalhau (`--wait` defaults to true there). argh has no boolean flags that
//! default to true, so `--wait` is accepted and does nothing, and `--no-wait` opts out; giving both is a
//! usage error. With `--no-wait` only the job id is printed. `--id-only` prints only the id but still waits,
//! so a script gets the job's outcome from the exit code. While waiting, the job is polled with a backoff from
//! 100 ms to 1 s, bounded by `--wait-timeout-secs`; Ctrl-C stops the waiting, not the job.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{ApiClient, LogsQuery};
use super::output::{diag, emit, emit_line, short_id};
use super::{Context, Outcome, UsageError};
use crate::model::{Execution, ExecutionStateType, Job, JobStateType};

/// First poll interval: most edge jobs finish in well under a second.
const FIRST_POLL: Duration = Duration::from_millis(100);
/// Longest poll interval, so a finished job is noticed within a second.
const MAX_POLL: Duration = Duration::from_secs(1);
/// Most stdout shown per execution in the summary (the API keeps 2 KB anyway).
const SUMMARY_OUTPUT_CHARS: usize = 2048;

/// The runtime flags of a submitting command, after the `--wait`/`--no-wait` check.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Wait for the job to end.
    pub wait: bool,
    /// Print only the job id.
    pub id_only: bool,
    /// Stream the job's logs while it runs.
    pub follow: bool,
    /// Longest wait.
    pub wait_timeout: Duration,
    /// Ask the server to resubmit an unchanged named job.
    pub force: bool,
}

impl RunOptions {
    /// Builds the options from the flags, refusing `--wait` with `--no-wait`.
    pub fn from_flags(
        wait: bool,
        no_wait: bool,
        id_only: bool,
        follow: bool,
        wait_timeout_secs: u64,
        force: bool,
    ) -> Result<Self, UsageError> {
        if wait && no_wait {
            return Err(UsageError::new(
                "--wait and --no-wait contradict each other; give one",
            ));
        }
        if follow && no_wait {
            return Err(UsageError::new("--follow needs waiting; drop --no-wait"));
        }
        Ok(Self {
            wait: !no_wait,
            id_only,
            follow,
            wait_timeout: Duration::from_secs(wait_timeout_secs),
            force,
        })
    }
}

/// Submits `document` as a job and reports on it per `opts`. `label` names the job in messages (the spec
/// file, or the wasm module).
pub async fn submit(
    ctx: &Context,
    document: Value,
    label: &str,
    opts: &RunOptions,
) -> anyhow::Result<Outcome> {
    let publishes = has_publisher(&document);
    let response = ctx
        .client
        .put_job(document, opts.force)
        .await
        .with_context(|| format!("submitting job {label}"))?;
    for warning in &response.warnings {
        diag(&format!("warning: {warning}"));
    }
    let id = response.job_id;
    if !opts.wait || opts.id_only {
        emit_line(&id)?;
        if !opts.wait {
            return Ok(Outcome::Success);
        }
    } else {
        emit_line(&format!("Job successfully submitted. Job ID: {id}"))?;
    }
    let deadline = Instant::now() + opts.wait_timeout;
    let waited = tokio::select! {
        r = follow_and_wait(&ctx.client, &id, opts, deadline) => r?,
        _ = tokio::signal::ctrl_c() => {
            diag(&format!(
                "\nstopped waiting (the job is still running); check it with `cod job describe {id}` \
                 or stop it with `cod job stop {id}`"
            ));
            return Ok(Outcome::Success);
        }
    };
    let Some(state) = waited else {
        anyhow::bail!(
            "job {id} did not finish within {}s; it keeps running: check it with `cod job describe {id}` \
             (or wait longer with --wait-timeout-secs)",
            opts.wait_timeout.as_secs()
        );
    };
    let details = ctx
        .client
        .get_job(&id, &["executions"])
        .await
        .with_context(|| format!("fetching job {id}"))?;
    let executions = details.executions.map(|e| e.items).unwrap_or_default();
    if !opts.id_only {
        emit(&render_summary(&details.job, &executions, publishes))?;
    }
    if state == JobStateType::Completed {
        return Ok(Outcome::Success);
    }
    for line in failure_lines(&details.job, &executions) {
        diag(&line);
    }
    Ok(Outcome::JobFailed)
}

/// Streams logs when following, then waits for a terminal state. `None` when the deadline passed.
async fn follow_and_wait(
    client: &ApiClient,
    id: &str,
    opts: &RunOptions,
    deadline: Instant,
) -> anyhow::Result<Option<JobStateType>> {
    if opts.follow {
        // The logs endpoint needs an execution; wait until the job has left Pending before opening it.
        if wait_until(client, id, deadline, |s| s != JobStateType::Pending)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let query = LogsQuery {
            follow: true,
            ..LogsQuery::default()
        };
        match tokio::time::timeout_at(deadline, super::job::print_logs(client, id, &query)).await {
            Err(_) => return Ok(None),
            // Logs are a convenience here: the job's outcome still decides the exit code.
            Ok(Err(e)) => diag(&format!(
                "warning: following the logs of job {id} failed: {e:#}"
            )),
            Ok(Ok(())) => {}
        }
    }
    wait_until(client, id, deadline, JobStateType::is_terminal).await
}

/// Polls the job until `done(state)` or the deadline; returns the state, or `None` on timeout.
pub async fn wait_until(
    client: &ApiClient,
    id: &str,
    deadline: Instant,
    done: impl Fn(JobStateType) -> bool,
) -> anyhow::Result<Option<JobStateType>> {
    let mut interval = FIRST_POLL;
    loop {
        let job = client
            .get_job(id, &[])
            .await
            .with_context(|| format!("checking the state of job {id}"))?;
        let state = job.job.state.state_type;
        if done(state) {
            return Ok(Some(state));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep_until((now + interval).min(deadline)).await;
        interval = (interval * 2).min(MAX_POLL);
    }
}

/// True when the first task of a submitted document names a publisher (then `job get` is worth suggesting).
fn has_publisher(document: &Value) -> bool {
    let field = |v: &Value, name: &str| -> Option<Value> {
        v.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    field(document, "Tasks")
        .and_then(|t| t.as_array()?.first().cloned())
        .and_then(|t| field(&t, "Publisher"))
        .and_then(|p| field(&p, "Type"))
        .and_then(|t| {
            t.as_str()
                .map(|s| !s.trim().is_empty() && !s.eq_ignore_ascii_case("noop"))
        })
        .unwrap_or(false)
}

/// The end-of-run report: the job's state, one line per execution with its exit code and output, and the
/// commands to look further.
pub fn render_summary(job: &Job, executions: &[Execution], publishes: bool) -> String {
    let id = job.id.as_str();
    let mut out = format!("\nJob {id} {}", job.state.state_type);
    if !job.state.message.is_empty() {
        out.push_str(&format!(": {}", job.state.message));
    }
    out.push('\n');
    for e in executions {
        let run = e.run_output.clone().unwrap_or_default();
        out.push_str(&format!(
            "\nExecution {} on node {}: {}",
            short_id(e.id.as_str()),
            short_id(e.node_id.as_str()),
            e.compute_state.state_type.name()
        ));
        if e.compute_state.state_type == ExecutionStateType::Completed {
            out.push_str(&format!(", exit code {}", run.exit_code));
        }
        out.push('\n');
        let stdout: String = run.stdout.chars().take(SUMMARY_OUTPUT_CHARS).collect();
        if !stdout.is_empty() {
            out.push_str(&stdout);
            if !stdout.ends_with('\n') {
                out.push('\n');
            }
            if run.stdout_truncated {
                out.push_str("… (output truncated; `cod job get` has all of it)\n");
            }
        }
    }
    out.push_str(&format!(
        "\nTo get more details about the run, execute:\n\tcod job describe {id}\n"
    ));
    out.push_str(&format!(
        "\nTo get more details about the run executions, execute:\n\tcod job executions {id}\n"
    ));
    if publishes && job.state.state_type == JobStateType::Completed {
        out.push_str(&format!(
            "\nTo download the results, execute:\n\tcod job get {id}\n"
        ));
    }
    out
}

/// Why the job failed, for stderr: the job's message and each failed execution's error.
pub fn failure_lines(job: &Job, executions: &[Execution]) -> Vec<String> {
    let mut lines = vec![match job.state.message.trim() {
        "" => format!(
            "job {} {}",
            job.id,
            job.state.state_type.to_string().to_lowercase()
        ),
        m => format!(
            "job {} {}: {m}",
            job.id,
            job.state.state_type.to_string().to_lowercase()
        ),
    }];
    for e in executions
        .iter()
        .filter(|e| e.compute_state.state_type == ExecutionStateType::Failed)
    {
        let error = e
            .run_output
            .as_ref()
            .map(|r| r.error_msg.trim())
            .filter(|m| !m.is_empty());
        let reason = error.unwrap_or(e.compute_state.message.trim());
        lines.push(format!(
            "  execution {} on node {}: {reason}",
            short_id(e.id.as_str()),
            short_id(e.node_id.as_str())
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobState, RunCommandResult, State};
    use axum::routing::{get, put};
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn job(state: JobStateType, message: &str) -> Job {
        Job {
            id: "j-1a2b3c4d-0000-4000-8000-000000000000".to_owned().into(),
            state: JobState {
                state_type: state,
                message: message.into(),
            },
            ..Job::default()
        }
    }

    fn execution(state: ExecutionStateType, stdout: &str, error: &str) -> Execution {
        Execution {
            id: "e-5e6f7a8b-0000-4000-8000-000000000000".to_owned().into(),
            node_id: "12D3KooWNodeNodeNode".to_owned().into(),
            compute_state: State::new(state, ""),
            run_output: Some(RunCommandResult {
                stdout: stdout.into(),
                error_msg: error.into(),
                ..RunCommandResult::default()
            }),
            ..Execution::default()
        }
    }

    #[test]
    fn wait_flags_conflict() {
        assert!(RunOptions::from_flags(true, true, false, false, 600, false).is_err());
        assert!(RunOptions::from_flags(false, true, false, true, 600, false).is_err());
        let o = RunOptions::from_flags(false, false, true, false, 5, false).expect("ok");
        assert!(o.wait && o.id_only);
        assert!(
            !RunOptions::from_flags(false, true, false, false, 5, false)
                .expect("ok")
                .wait
        );
    }

    #[test]
    fn summary_shows_exit_code_output_and_next_steps() {
        let text = render_summary(
            &job(JobStateType::Completed, ""),
            &[execution(ExecutionStateType::Completed, "hello", "")],
            true,
        );
        assert!(
            text.contains("Job j-1a2b3c4d-0000-4000-8000-000000000000 Completed\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "Execution e-5e6f7a8b on node 12D3KooWNode: Completed, exit code 0\nhello\n"
            ),
            "{text}"
        );
        assert!(text.contains("cod job get j-1a2b3c4d"), "{text}");
    }

    #[test]
    fn failures_name_each_failed_execution() {
        let lines = failure_lines(
            &job(JobStateType::Failed, "no node could run it"),
            &[
                execution(ExecutionStateType::Failed, "", "wasm trap: unreachable"),
                execution(ExecutionStateType::Completed, "", ""),
            ],
        );
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with("failed: no node could run it"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("wasm trap: unreachable"), "{lines:?}");
    }

    #[test]
    fn publisher_detection_ignores_case_and_noop() {
        assert!(has_publisher(
            &json!({"tasks": [{"publisher": {"type": "local"}}]})
        ));
        assert!(!has_publisher(
            &json!({"Tasks": [{"Publisher": {"Type": "noop"}}]})
        ));
        assert!(!has_publisher(&json!({"Tasks": [{}]})));
    }

    /// A fake API whose job is Running for the first two polls, then ends in `end`.
    async fn api(end: &'static str) -> Context {
        let polls = Arc::new(AtomicUsize::new(0));
        let job = move || {
            let polls = polls.clone();
            async move {
                let state = if polls.fetch_add(1, Ordering::SeqCst) < 2 {
                    "Running"
                } else {
                    end
                };
                let execution = json!({"ID": "e-1", "NodeID": "n-1", "ComputeState": {"StateType": 10, "Message": ""},
                                       "RunOutput": {"ErrorMsg": "wasm trap: unreachable"}});
                axum::Json(
                    json!({"Job": {"ID": "j-1", "Type": "batch", "State": {"StateType": state}},
                                  "Executions": {"Items": [execution], "NextToken": ""}}),
                )
            }
        };
        let router = axum::Router::new()
            .route(
                "/api/v1/orchestrator/jobs",
                put(|| async { axum::Json(json!({"JobID": "j-1"})) }),
            )
            .route("/api/v1/orchestrator/jobs/{id}", get(job));
        Context {
            client: crate::cli::client::tests::fake_api(router).await,
            output: None,
        }
    }

    fn opts(wait_timeout_secs: u64) -> RunOptions {
        RunOptions::from_flags(false, false, true, false, wait_timeout_secs, false)
            .expect("options")
    }

    #[tokio::test]
    async fn waits_until_the_job_completes() {
        let ctx = api("Completed").await;
        let outcome = submit(&ctx, json!({"Type": "batch"}), "spec.yaml", &opts(10))
            .await
            .expect("submits");
        assert_eq!(outcome, Outcome::Success);
    }

    #[tokio::test]
    async fn a_failed_job_is_an_outcome_not_an_error() {
        let ctx = api("Failed").await;
        let outcome = submit(&ctx, json!({"Type": "batch"}), "spec.yaml", &opts(10))
            .await
            .expect("submits");
        assert_eq!(outcome, Outcome::JobFailed);
    }

    #[tokio::test]
    async fn gives_up_after_the_wait_timeout() {
        let ctx = api("Running").await;
        let e = submit(&ctx, json!({"Type": "batch"}), "spec.yaml", &opts(0))
            .await
            .expect_err("times out");
        assert!(e.to_string().contains("did not finish within 0s"), "{e}");
    }
}
