//! `cod job …`: submit, inspect, follow, stop and fetch jobs through the API.

use std::time::SystemTime;

use anyhow::Context as _;
use argh::FromArgs;

use super::client::{
    ApiClient, GetJobResponse, HistoryQuery, ListJobsQuery, ListResponse, LogSource, LogsQuery,
    label_selector_params,
};
use super::output::{
    OutputFormat, Table, created, date_time, diag, elapsed, emit, emit_line, emit_stderr,
    key_values, render_structured, short_id,
};
use super::spec_file::{parse_spec, read_spec};
use super::wait::{RunOptions, submit};
use super::{Context, Outcome, results};
use crate::model::{Execution, ExecutionStateType, HistoryType, Job, JobHistory, JobType};

/// Page size when collecting every page of a list (the server's default for history).
const PAGE_LIMIT: u32 = 100;
/// Guard against a server that keeps handing out new tokens with no items.
const MAX_PAGES: usize = 1000;

/// submit, inspect and manage jobs
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "job")]
pub struct JobArgs {
    /// the job command
    #[argh(subcommand)]
    pub command: JobCommand,
}

/// The `job` commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum JobCommand {
    /// `job run`
    Run(RunArgs),
    /// `job describe`
    Describe(DescribeArgs),
    /// `job list`
    List(ListArgs),
    /// `job history`
    History(HistoryArgs),
    /// `job executions`
    Executions(ExecutionsArgs),
    /// `job logs`
    Logs(LogsArgs),
    /// `job stop`
    Stop(StopArgs),
    /// `job get`
    Get(results::GetArgs),
}

/// submit a job spec (YAML or JSON) and, by default, wait for it to finish
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// the job spec file; stdin when left out (or given as `-- -`)
    #[argh(positional)]
    pub file: Option<String>,
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
    /// submit even when a job with this name already has the same spec
    #[argh(switch)]
    pub force: bool,
}

/// show a job, its executions and history
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "describe")]
pub struct DescribeArgs {
    /// job id, short id or name
    #[argh(positional)]
    pub id: String,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// list jobs
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// how many jobs to show (default 10)
    #[argh(option, default = "10")]
    pub limit: u32,
    /// continue from a previous listing
    #[argh(option)]
    pub next_token: Option<String>,
    /// reverse the order
    #[argh(switch)]
    pub reverse: bool,
    /// order by id or created_at
    #[argh(option)]
    pub order_by: Option<String>,
    /// label selector, e.g. "env=prod,tier in (a,b)"
    #[argh(option)]
    pub labels: Option<String>,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// show a job's history of events
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "history")]
pub struct HistoryArgs {
    /// job id, short id or name
    #[argh(positional)]
    pub id: String,
    /// which events: all, job or execution (default all)
    #[argh(option)]
    pub event_type: Option<String>,
    /// only the events of this execution
    #[argh(option)]
    pub execution_id: Option<String>,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// list a job's executions
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "executions")]
pub struct ExecutionsArgs {
    /// job id, short id or name
    #[argh(positional)]
    pub id: String,
    /// output format: table, json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
}

/// print a job's logs (stdout to stdout, stderr to stderr)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub struct LogsArgs {
    /// job id, short id or name
    #[argh(positional)]
    pub id: String,
    /// keep streaming while the job runs
    #[argh(switch, short = 'f')]
    pub follow: bool,
    /// only this execution's logs
    #[argh(option, short = 'e')]
    pub execution_id: Option<String>,
    /// start from the end of the log
    #[argh(switch, short = 't')]
    pub tail: bool,
}

/// stop a job
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stop")]
pub struct StopArgs {
    /// job id, short id or name
    #[argh(positional)]
    pub id: String,
    /// why it is stopped (kept in the job's history)
    #[argh(option, default = "String::from(\"stopped by user\")")]
    pub reason: String,
    /// print nothing on success
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

/// Runs a `job` command.
pub async fn run(ctx: &Context, args: JobArgs) -> anyhow::Result<Outcome> {
    match args.command {
        JobCommand::Run(a) => run_spec(ctx, a).await,
        JobCommand::Describe(a) => describe(ctx, a).await.map(|()| Outcome::Success),
        JobCommand::List(a) => list(ctx, a).await.map(|()| Outcome::Success),
        JobCommand::History(a) => history(ctx, a).await.map(|()| Outcome::Success),
        JobCommand::Executions(a) => executions(ctx, a).await.map(|()| Outcome::Success),
        JobCommand::Logs(a) => logs(ctx, a).await.map(|()| Outcome::Success),
        JobCommand::Stop(a) => stop(ctx, a).await.map(|()| Outcome::Success),
        JobCommand::Get(a) => results::get(ctx, a).await.map(|()| Outcome::Success),
    }
}

async fn run_spec(ctx: &Context, args: RunArgs) -> anyhow::Result<Outcome> {
    let opts = RunOptions::from_flags(
        args.wait,
        args.no_wait,
        args.id_only,
        args.follow,
        args.wait_timeout_secs,
        args.force,
    )?;
    // argh takes a bare `-` for a flag, so stdin is also what an absent FILE means (as in Bacalhau).
    let file = args.file.unwrap_or_else(|| "-".to_owned());
    let label = if file == "-" {
        "from stdin".to_owned()
    } else {
        file.clone()
    };
    let text = read_spec(&file).await?;
    let spec = parse_spec(&text).with_context(|| format!("checking job spec {label}"))?;
    submit(ctx, spec.document, &label, &opts).await
}

async fn describe(ctx: &Context, args: DescribeArgs) -> anyhow::Result<()> {
    let response = ctx
        .client
        .get_job(&args.id, &["executions", "history"])
        .await
        .with_context(|| format!("fetching job {}", args.id))?;
    let format = ctx.format(args.output);
    match render_structured(&response, format)? {
        Some(text) => emit(&text),
        None => emit(&render_describe(&response, SystemTime::now())),
    }
}

async fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<()> {
    let labels = match &args.labels {
        Some(l) => label_selector_params(l)?,
        None => Vec::new(),
    };
    let query = ListJobsQuery {
        limit: args.limit,
        next_token: args.next_token.clone(),
        reverse: args.reverse,
        order_by: args.order_by.clone(),
        labels,
    };
    let page = ctx.client.list_jobs(&query).await.context("listing jobs")?;
    match render_structured(&page.items, ctx.format(args.output))? {
        Some(text) => emit(&text)?,
        None => emit(&render_job_list(&page.items, SystemTime::now()))?,
    }
    if !page.next_token.is_empty() {
        diag(&format!(
            "\nTo fetch more records use `--next-token {}`",
            page.next_token
        ));
    }
    Ok(())
}

async fn history(ctx: &Context, args: HistoryArgs) -> anyhow::Result<()> {
    let client = &ctx.client;
    let id = args.id.as_str();
    let query = HistoryQuery {
        limit: PAGE_LIMIT,
        next_token: None,
        event_type: args.event_type.clone(),
        execution_id: args.execution_id.clone(),
    };
    let items = collect_pages(|token| {
        let q = HistoryQuery {
            next_token: token,
            ..query.clone()
        };
        async move { client.job_history(id, &q).await }
    })
    .await
    .with_context(|| format!("fetching the history of job {id}"))?;
    match render_structured(&items, ctx.format(args.output))? {
        Some(text) => emit(&text),
        None => emit(&render_history(&items, true)),
    }
}

async fn executions(ctx: &Context, args: ExecutionsArgs) -> anyhow::Result<()> {
    let client = &ctx.client;
    let id = args.id.as_str();
    let items =
        collect_pages(|token| async move { client.job_executions(id, token.as_deref()).await })
            .await
            .with_context(|| format!("fetching the executions of job {id}"))?;
    match render_structured(&items, ctx.format(args.output))? {
        Some(text) => emit(&text),
        None => emit(&render_executions(&items, SystemTime::now())),
    }
}

async fn logs(ctx: &Context, args: LogsArgs) -> anyhow::Result<()> {
    let query = LogsQuery {
        execution_id: args.execution_id,
        follow: args.follow,
        tail: args.tail,
    };
    print_logs(&ctx.client, &args.id, &query).await
}

async fn stop(ctx: &Context, args: StopArgs) -> anyhow::Result<()> {
    let response = ctx
        .client
        .stop_job(&args.id, &args.reason)
        .await
        .with_context(|| format!("stopping job {}", args.id))?;
    if args.quiet {
        return Ok(());
    }
    if response.evaluation_id.is_empty() {
        emit_line(&format!(
            "Job {} had already ended; nothing to stop.",
            args.id
        ))
    } else {
        emit_line(&format!(
            "Job stop successfully submitted with evaluation ID: {}",
            response.evaluation_id
        ))
    }
}

/// Streams a job's logs to stdout/stderr until the server closes the stream. Lines are written as sent
/// (Bacalhau's carry their own newline); a final newline is added if the last one had none, so the shell
/// prompt starts on its own line.
pub async fn print_logs(client: &ApiClient, id: &str, query: &LogsQuery) -> anyhow::Result<()> {
    let context = || format!("reading the logs of job {id}");
    let mut stream = client.job_logs(id, query).await.with_context(context)?;
    let (mut out_open, mut err_open) = (false, false);
    while let Some(line) = stream.next_line().await.with_context(context)? {
        let open = !line.line.ends_with('\n');
        match line.source {
            LogSource::Stdout => {
                emit(&line.line)?;
                out_open = open;
            }
            LogSource::Stderr => {
                emit_stderr(&line.line)?;
                err_open = open;
            }
        }
    }
    if out_open {
        emit("\n")?;
    }
    if err_open {
        emit_stderr("\n")?;
    }
    Ok(())
}

/// Fetches every page of a token-paged list. Stops when the token is empty, or when the server hands back the
/// same token with no new items: Bacalhau's history is a long poll whose token stays set while a job runs.
pub async fn collect_pages<T, F, Fut, E>(mut fetch: F) -> Result<Vec<T>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<ListResponse<T>, E>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = fetch(token.clone()).await?;
        let new = page.items.len();
        items.extend(page.items);
        let repeated = token.as_deref() == Some(page.next_token.as_str());
        if page.next_token.is_empty() || (new == 0 && repeated) {
            break;
        }
        token = Some(page.next_token);
    }
    Ok(items)
}

fn engine_type(job: &Job) -> String {
    job.task()
        .map(|t| t.engine.kind.clone())
        .unwrap_or_default()
}

/// The `job list` table: Bacalhau's columns plus the name.
pub fn render_job_list(jobs: &[Job], now: SystemTime) -> String {
    let mut t = Table::new(&["created", "id", "name", "job", "type", "state"]);
    for j in jobs {
        t.row(vec![
            created(j.create_time, now),
            short_id(j.id.as_str()),
            j.name.clone(),
            engine_type(j),
            j.job_type.to_string(),
            j.state.state_type.to_string(),
        ]);
    }
    t.render()
}

/// History as a table; `with_execution` adds the level and execution columns.
pub fn render_history(items: &[JobHistory], with_execution: bool) -> String {
    let headers: &[&str] = if with_execution {
        &["time", "level", "exec. id", "topic", "event"]
    } else {
        &["time", "topic", "event"]
    };
    let mut t = Table::new(headers);
    for h in items {
        let time = h.event.timestamp.clone();
        let time = if time.is_empty() {
            h.time.clone()
        } else {
            time
        };
        let time = time
            .split('.')
            .next()
            .unwrap_or_default()
            .replacen('T', " ", 1)
            .trim_end_matches('Z')
            .to_owned();
        let mut event = h.event.message.clone();
        if let Some(hint) = h.event.details.get("Hint").filter(|s| !s.is_empty()) {
            event.push_str(&format!(" (hint: {hint})"));
        }
        let mut row = vec![time];
        if with_execution {
            row.push(
                match h.kind {
                    HistoryType::JobLevel => "Job",
                    HistoryType::ExecutionLevel => "Execution",
                }
                .to_owned(),
            );
            row.push(
                h.execution_id
                    .as_ref()
                    .map(|e| short_id(e.as_str()))
                    .unwrap_or_default(),
            );
        }
        row.push(h.event.topic.clone());
        row.push(event);
        t.row(row);
    }
    t.render()
}

/// The `job executions` table (Bacalhau's columns).
pub fn render_executions(items: &[Execution], now: SystemTime) -> String {
    let mut t = Table::new(&[
        "created", "modified", "id", "node id", "rev.", "state", "desired",
    ]);
    for e in items {
        t.row(vec![
            elapsed(e.create_time, now),
            elapsed(e.modify_time, now),
            short_id(e.id.as_str()),
            short_id(e.node_id.as_str()),
            e.revision.to_string(),
            e.compute_state.state_type.name().to_owned(),
            e.desired_state.state_type.name().to_owned(),
        ]);
    }
    t.render()
}

/// The `job describe` text: header, execution summary, job history, executions, per-execution history and
/// the executions' captured stdout, in Bacalhau's order.
pub fn render_describe(response: &GetJobResponse, now: SystemTime) -> String {
    let job = &response.job;
    let mut pairs = vec![
        ("ID", job.id.to_string()),
        ("Name", job.name.clone()),
        ("Namespace", job.namespace.clone()),
        ("Type", job.job_type.to_string()),
        ("State", job.state.state_type.to_string()),
        ("Message", job.state.message.clone()),
    ];
    if matches!(job.job_type, JobType::Batch | JobType::Service) {
        pairs.push(("Count", job.effective_count().to_string()));
    }
    pairs.push(("Created Time", date_time(job.create_time)));
    pairs.push(("Modified Time", date_time(job.modify_time)));
    pairs.push(("Version", job.version.to_string()));
    let mut out = key_values(&pairs);

    let mut executions = response
        .executions
        .as_ref()
        .map(|e| e.items.clone())
        .unwrap_or_default();
    executions.sort_by_key(|e| std::cmp::Reverse(e.create_time));
    let history = response
        .history
        .as_ref()
        .map(|h| h.items.as_slice())
        .unwrap_or_default();

    let mut counts: Vec<(ExecutionStateType, usize)> = Vec::new();
    for e in &executions {
        match counts
            .iter_mut()
            .find(|(s, _)| *s == e.compute_state.state_type)
        {
            Some((_, n)) => *n += 1,
            None => counts.push((e.compute_state.state_type, 1)),
        }
    }
    counts.sort_by_key(|(s, _)| s.code());
    let summary: Vec<(&str, String)> = counts
        .iter()
        .map(|(s, n)| (s.name(), n.to_string()))
        .collect();
    out.push_str("\nSummary\n");
    out.push_str(&key_values(&summary));

    let job_history: Vec<JobHistory> = history
        .iter()
        .filter(|h| h.kind == HistoryType::JobLevel)
        .cloned()
        .collect();
    if !job_history.is_empty() {
        out.push_str("\nJob History\n");
        out.push_str(&render_history(&job_history, false));
    }

    out.push_str("\nExecutions\n");
    let mut t = Table::new(&[
        "id", "node id", "state", "desired", "rev.", "created", "modified", "comment",
    ]);
    for e in &executions {
        t.row(vec![
            short_id(e.id.as_str()),
            short_id(e.node_id.as_str()),
            e.compute_state.state_type.name().to_owned(),
            e.desired_state.state_type.name().to_owned(),
            e.revision.to_string(),
            elapsed(e.create_time, now),
            elapsed(e.modify_time, now),
            e.compute_state.message.clone(),
        ]);
    }
    out.push_str(&t.render());

    for e in &executions {
        let own: Vec<JobHistory> = history
            .iter()
            .filter(|h| h.execution_id.as_ref() == Some(&e.id))
            .cloned()
            .collect();
        if !own.is_empty() {
            out.push_str(&format!(
                "\nExecution {} History\n",
                short_id(e.id.as_str())
            ));
            out.push_str(&render_history(&own, false));
        }
    }

    let outputs: Vec<(&Execution, String)> = executions
        .iter()
        .filter_map(|e| {
            let r = e.run_output.as_ref()?;
            let mut text = r.stdout.clone();
            if !r.stderr.is_empty() {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&r.stderr);
            }
            if r.stdout_truncated || r.stderr_truncated {
                text.push_str("\n...\nOutput truncated");
            }
            (!text.is_empty()).then_some((e, text))
        })
        .collect();
    if !outputs.is_empty() {
        out.push_str("\nStandard Output\n");
        let several = outputs.len() > 1;
        for (e, text) in outputs {
            if several {
                out.push_str(&format!("Execution {}:\n", short_id(e.id.as_str())));
            }
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, JobState, JobStateType, RunCommandResult, State, ci};
    use std::time::{Duration, UNIX_EPOCH};

    const NOW_SECS: u64 = 1_700_000_100;
    const CREATED_NS: i64 = 1_700_000_000_000_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn job() -> Job {
        let mut j: Job = ci::from_value(serde_json::json!({
            "ID": "j-1a2b3c4d-0000-4000-8000-000000000000", "Name": "hello", "Namespace": "default",
            "Type": "batch", "Tasks": [{"Name": "main", "Engine": {"Type": "wasm"}}],
        }))
        .expect("decodes");
        j.create_time = CREATED_NS;
        j.modify_time = CREATED_NS;
        j.version = 1;
        j.state = JobState {
            state_type: JobStateType::Completed,
            message: String::new(),
        };
        j
    }

    #[test]
    fn job_list_table() {
        let text = render_job_list(&[job()], now());
        let expected = "\
CREATED   ID          NAME   JOB   TYPE   STATE
22:13:20  j-1a2b3c4d  hello  wasm  batch  Completed
";
        assert_eq!(text, expected);
    }

    #[test]
    fn describe_shows_header_executions_history_and_output() {
        let execution = Execution {
            id: "e-5e6f7a8b-0000-4000-8000-000000000000".to_owned().into(),
            node_id: "12D3KooWNodeNodeNode".to_owned().into(),
            compute_state: State::new(ExecutionStateType::Completed, ""),
            run_output: Some(RunCommandResult {
                stdout: "hello\n".into(),
                ..RunCommandResult::default()
            }),
            create_time: CREATED_NS,
            modify_time: CREATED_NS,
            ..Execution::default()
        };
        let history = JobHistory {
            seq_num: 1,
            kind: HistoryType::JobLevel,
            job_id: job().id,
            job_version: 1,
            execution_id: None,
            event: Event {
                message: "Job submitted".into(),
                topic: "Submission".into(),
                timestamp: "2023-11-14T22:13:20.5Z".into(),
                ..Event::default()
            },
            time: "2023-11-14T22:13:20.5Z".into(),
        };
        let response = GetJobResponse {
            job: job(),
            history: Some(ListResponse {
                items: vec![history],
                next_token: String::new(),
            }),
            executions: Some(ListResponse {
                items: vec![execution],
                next_token: String::new(),
            }),
        };
        let text = render_describe(&response, now());
        assert!(
            text.starts_with("ID            = j-1a2b3c4d-0000-4000-8000-000000000000\n"),
            "{text}"
        );
        assert!(text.contains("Count         = 1\n"), "{text}");
        assert!(text.contains("\nSummary\nCompleted = 1\n"), "{text}");
        assert!(text.contains("\nJob History\nTIME                 TOPIC       EVENT\n2023-11-14 22:13:20  Submission  Job submitted\n"), "{text}");
        assert!(
            text.contains("e-5e6f7a8b  12D3KooWNode  Completed  Pending  0     1m ago   1m ago"),
            "{text}"
        );
        assert!(text.ends_with("\nStandard Output\nhello\n"), "{text}");
    }

    #[test]
    fn executions_table() {
        let e = Execution {
            id: "e-5e6f7a8b-0000-4000-8000-000000000000".to_owned().into(),
            node_id: "node-1".to_owned().into(),
            compute_state: State::new(ExecutionStateType::Running, ""),
            revision: 3,
            create_time: CREATED_NS,
            modify_time: CREATED_NS,
            ..Execution::default()
        };
        let text = render_executions(&[e], now());
        assert_eq!(
            text,
            "CREATED  MODIFIED  ID          NODE ID  REV.  STATE    DESIRED\n1m ago   1m ago    e-5e6f7a8b  node-1   3     Running  Pending\n"
        );
    }

    #[tokio::test]
    async fn paging_stops_on_empty_or_repeated_token() {
        let pages = std::cell::RefCell::new(vec![
            ListResponse {
                items: vec![1, 2],
                next_token: "a".to_owned(),
            },
            ListResponse {
                items: vec![3],
                next_token: "b".to_owned(),
            },
            ListResponse {
                items: vec![],
                next_token: "b".to_owned(),
            },
            ListResponse {
                items: vec![99],
                next_token: String::new(),
            },
        ]);
        let items = collect_pages(|_| {
            let page = pages.borrow_mut().remove(0);
            async move { Ok::<_, ()>(page) }
        })
        .await
        .expect("pages");
        assert_eq!(items, vec![1, 2, 3]);

        let pages = std::cell::RefCell::new(vec![
            ListResponse {
                items: vec![1],
                next_token: "a".to_owned(),
            },
            ListResponse {
                items: vec![2],
                next_token: String::new(),
            },
        ]);
        let items = collect_pages(|_| {
            let page = pages.borrow_mut().remove(0);
            async move { Ok::<_, ()>(page) }
        })
        .await
        .expect("pages");
        assert_eq!(items, vec![1, 2]);
    }
}
