//! `/api/v1/orchestrator/jobs…`: submit, list, get, history, executions, results, stop.
//!
//! Handlers only translate: query parameters and bodies into orchestrator calls, answers into Bacalhau's
//! response shapes. Lists the orchestrator returns whole (executions) are paged here by offset.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::model::constraint;
use crate::model::{Execution, Job, JobHistory, JobId, LabelSelectorRequirement, SpecConfig};
use crate::orchestrator::{HistoryFilter, HistoryPage};

use super::AppState;
use super::error::HttpError;
use super::extract::{Body, Orch, Params, PathId, client_older_than, page};

/// Body of `PUT`/`POST /jobs`. Other keys the clients send (`Namespace`, `IdempotencyToken`, `Credential`,
/// and their lower-case Python spellings) are ignored, as Bacalhau ignores them.
#[derive(Debug, Deserialize)]
struct PutJobRequest {
    #[serde(rename = "Job", default)]
    job: Option<Job>,
    #[serde(rename = "Force", default)]
    force: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct PutJobResponse {
    #[serde(rename = "JobID")]
    job_id: JobId,
    #[serde(rename = "EvaluationID")]
    evaluation_id: String,
    #[serde(rename = "Warnings")]
    warnings: Vec<String>,
}

/// `{Items, NextToken}`, Bacalhau's list envelope.
#[derive(Debug, Serialize)]
pub(super) struct List<T> {
    #[serde(rename = "Items")]
    items: Vec<T>,
    #[serde(rename = "NextToken")]
    next_token: String,
}

#[derive(Debug, Serialize)]
pub(super) struct GetJobResponse {
    #[serde(rename = "Job")]
    job: Job,
    #[serde(rename = "History", skip_serializing_if = "Option::is_none")]
    history: Option<List<HistoryItem>>,
    #[serde(rename = "Executions", skip_serializing_if = "Option::is_none")]
    executions: Option<List<Execution>>,
}

/// A history record, with the empty `JobState`/`ExecutionState` objects that pre-1.5 clients expect (their
/// history items had those fields; Bacalhau adds them for such clients too).
#[derive(Debug, Serialize)]
pub(super) struct HistoryItem {
    #[serde(flatten)]
    record: JobHistory,
    #[serde(rename = "JobState", skip_serializing_if = "Option::is_none")]
    job_state: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "ExecutionState", skip_serializing_if = "Option::is_none")]
    execution_state: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct StopRequest {
    #[serde(rename = "reason", default)]
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct StopResponse {
    #[serde(rename = "EvaluationID")]
    evaluation_id: String,
}

/// `PUT`/`POST /jobs`: validates, stores and schedules a job.
pub(super) async fn submit(Orch(o): Orch, body: Body) -> Result<Json<PutJobResponse>, HttpError> {
    let (job, force) = submitted_job(&body)?;
    let answer = o.submit(job, force).await?;
    Ok(Json(PutJobResponse {
        job_id: answer.job_id,
        evaluation_id: answer.evaluation_id.to_string(),
        warnings: answer.warnings,
    }))
}

/// The job and `Force` flag of a submission body. A bare spec (what `cod job run` reads from a file) is
/// accepted too, so `curl --data-binary @job.yaml` works; Bacalhau's envelope is the documented form.
pub(crate) fn submitted_job(body: &Body) -> Result<(Job, bool), HttpError> {
    let request: PutJobRequest = body.decode("job submission")?.ok_or_else(|| {
        HttpError::bad_request("request body is empty; send {\"Job\": {…}, \"Force\": false}")
    })?;
    let job = match request.job {
        Some(job) => job,
        None => match body.decode::<Job>("job spec")? {
            Some(job) if !job.tasks.is_empty() => job,
            _ => {
                return Err(HttpError::bad_request(
                    "request body has no Job; wrap the spec as {\"Job\": {…}}",
                ));
            }
        },
    };
    Ok((job, request.force))
}

/// `GET /jobs`: a page of jobs, newest first (`reverse` for oldest first).
///
/// `order_by` is accepted but jobs are always ordered by creation time. `labels` selectors filter each page,
/// so a page may hold fewer than `limit` jobs while `NextToken` says more follow.
pub(super) async fn list(Orch(o): Orch, params: Params) -> Result<Json<List<Job>>, HttpError> {
    let selectors = selectors(&params)?;
    let listing = o
        .list_jobs(
            params.namespace(),
            params.limit()?,
            params.text("next_token").unwrap_or_default(),
            params.flag("reverse")?,
        )
        .await?;
    let items = listing
        .items
        .into_iter()
        .filter(|j| selectors.iter().all(|s| constraint::matches(s, &j.labels)))
        .collect();
    Ok(Json(List {
        items,
        next_token: listing.next_token,
    }))
}

/// `GET /jobs/{id}`: the job, with its history and executions when `include` names them.
pub(super) async fn get(
    Orch(o): Orch,
    PathId(id): PathId,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<GetJobResponse>, HttpError> {
    let (mut with_history, mut with_executions) = (false, false);
    for part in params.all("include").into_iter().flat_map(|v| v.split(',')) {
        let part = part.trim();
        if part.eq_ignore_ascii_case("history") {
            with_history = true;
        } else if part.eq_ignore_ascii_case("executions") {
            with_executions = true;
        } else if !part.is_empty() {
            return Err(HttpError::bad_request(format!(
                "include={part:?} is not one of history, executions"
            )));
        }
    }
    let ns = params.namespace();
    let limit = params.limit()?;
    let job = o.job(&id, ns).await?;
    let history = if with_history {
        let filter = HistoryFilter {
            limit,
            ..HistoryFilter::default()
        };
        let page = o.history(job.id.as_str(), ns, filter).await?;
        Some(history_list(page, client_older_than(&headers, 1, 5), None))
    } else {
        None
    };
    let executions = if with_executions {
        let all = listing(o.executions(job.id.as_str(), ns).await?);
        let (items, next_token) = page(all, limit, None)?;
        Some(List { items, next_token })
    } else {
        None
    };
    Ok(Json(GetJobResponse {
        job,
        history,
        executions,
    }))
}

/// The longest `wait_seconds` a history request may ask for.
const MAX_HISTORY_WAIT: u64 = 60;

/// `GET /jobs/{id}/history`: a page of history. `NextToken` stays non-empty until the job is terminal and
/// every record has been read (Bacalhau's long-poll contract, which the CLI's progress display relies on).
///
/// `wait_seconds=N` (cod's extension; at most [`MAX_HISTORY_WAIT`]): when there is nothing new after
/// `next_token` and the job is not terminal, the answer waits up to N seconds for a record instead of coming
/// back empty at once, so a client follows a job with one request per change rather than polling. Without
/// it (as every Bacalhau client asks) the answer comes at once.
pub(super) async fn history(
    Orch(o): Orch,
    PathId(id): PathId,
    params: Params,
    headers: HeaderMap,
) -> Result<Json<List<HistoryItem>>, HttpError> {
    let after_seq = params.number("next_token")?.unwrap_or(0);
    let job_level = match params.text("event_type") {
        None => None,
        Some(t) if t.eq_ignore_ascii_case("all") => None,
        Some(t) if t.eq_ignore_ascii_case("job") => Some(true),
        Some(t) if t.eq_ignore_ascii_case("execution") => Some(false),
        Some(t) => {
            return Err(HttpError::bad_request(format!(
                "event_type={t:?} is not one of all, job, execution"
            )));
        }
    };
    let since = params.number("since")?;
    let filter = HistoryFilter {
        after_seq,
        limit: params.limit()?,
        job_level,
        execution_id: params.text("execution_id").map(str::to_owned),
    };
    let wait = params
        .number("wait_seconds")?
        .map(|s| std::time::Duration::from_secs(s.min(MAX_HISTORY_WAIT)));
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    // The wait is on the job's own bell, which rings only for commits that add to its history. The job's id
    // is known only after the first read (the request may name it by prefix or name), so that read is
    // covered by the orchestrator-wide signal, taken before it: a commit between the read and the listen
    // makes one more read.
    let mut any_commit = o.subscribe();
    let mut bell = None;
    loop {
        let page = o.history(&id, params.namespace(), filter.clone()).await?;
        let caught_up = page.items.is_empty() && !page.next_token.is_empty();
        if let Some(deadline) = deadline
            && caught_up
        {
            let ear = match &mut bell {
                Some(ear) => ear,
                None => {
                    let ear = bell.insert(o.listen_to_history(&page.job_id));
                    if any_commit.has_changed().unwrap_or(false) {
                        any_commit.mark_unchanged();
                        continue;
                    }
                    ear
                }
            };
            // An elapsed wait answers with the empty page.
            if tokio::time::timeout_at(deadline, ear.rung()).await.is_ok() {
                continue;
            }
        }
        return Ok(Json(history_list(
            page,
            client_older_than(&headers, 1, 5),
            since,
        )));
    }
}

/// `GET /jobs/{id}/executions`: the job's executions, without the job snapshot each one carries.
pub(super) async fn executions(
    Orch(o): Orch,
    PathId(id): PathId,
    params: Params,
) -> Result<Json<List<Execution>>, HttpError> {
    let by_modify_time = match params.text("order_by") {
        None => false,
        Some(o) if ["created_at", "create_time"].contains(&o) => false,
        Some(o) if ["modified_at", "modify_time"].contains(&o) => true,
        Some(o) => {
            return Err(HttpError::bad_request(format!(
                "order_by={o:?} is not one of created_at, modified_at"
            )));
        }
    };
    let mut all = listing(o.executions(&id, params.namespace()).await?);
    if by_modify_time {
        all.sort_by_key(|e| e.modify_time);
    } else {
        all.sort_by_key(|e| e.create_time);
    }
    if params.flag("reverse")? {
        all.reverse();
    }
    let (items, next_token) = page(all, params.limit()?, params.text("next_token"))?;
    Ok(Json(List { items, next_token }))
}

/// `GET /jobs/{id}/results`: where the completed executions published their results.
/// `s3` results get pre-signed download URLs, signed here with the orchestrator's own credentials (see
/// `crate::s3::ResultSigner`), unless `Publishers.Types.S3.PreSignedURLDisabled`.
pub(super) async fn results(
    State(shared): State<AppState>,
    Orch(o): Orch,
    PathId(id): PathId,
    params: Params,
) -> Result<Json<List<SpecConfig>>, HttpError> {
    #[allow(unused_mut)] // only the s3 signing below rewrites them
    let mut items = o.results(&id, params.namespace()).await?;
    #[cfg(feature = "storage-s3")]
    if let Some(signer) = &shared.state.result_signer {
        let mut signed = Vec::with_capacity(items.len());
        for item in items {
            signed.push(signer.sign(item).await);
        }
        items = signed;
    }
    #[cfg(not(feature = "storage-s3"))]
    let _ = shared;
    Ok(Json(List {
        items,
        next_token: String::new(),
    }))
}

/// `DELETE /jobs/{id}`: stops the job. The reason comes from the JSON body (`{"reason": …}`, as Bacalhau's
/// CLI sends it) or from the `reason` query parameter (as the Python client sends it).
pub(super) async fn stop(
    Orch(o): Orch,
    PathId(id): PathId,
    params: Params,
    body: Body,
) -> Result<Json<StopResponse>, HttpError> {
    let from_body = body
        .decode::<StopRequest>("stop request")?
        .and_then(|r| r.reason)
        .filter(|r| !r.trim().is_empty());
    let reason = from_body
        .as_deref()
        .or_else(|| params.text("reason"))
        .unwrap_or_default();
    let evaluation_id = o.stop(&id, params.namespace(), reason).await?;
    Ok(Json(StopResponse { evaluation_id }))
}

/// Label selectors from repeated `labels` parameters (`env in (a,b)`, `zone=north`).
fn selectors(params: &Params) -> Result<Vec<LabelSelectorRequirement>, HttpError> {
    let mut out = Vec::new();
    for text in params.all("labels") {
        out.extend(
            constraint::parse_selector(text)
                .map_err(|e| HttpError::bad_request(format!("labels={text:?}: {e}")))?,
        );
    }
    Ok(out)
}

/// Executions as listings show them: without the job snapshot (the client already has the job).
fn listing(mut executions: Vec<Execution>) -> Vec<Execution> {
    for e in &mut executions {
        e.job = None;
    }
    executions
}

/// A history page in the client's shape; `since` (Unix seconds) drops older records.
fn history_list(page: HistoryPage, legacy: bool, since: Option<u64>) -> List<HistoryItem> {
    let items = page
        .items
        .into_iter()
        .filter(|h| since.is_none_or(|s| recorded_at(h).is_none_or(|t| t >= s)))
        .map(|record| HistoryItem {
            record,
            job_state: legacy.then(serde_json::Map::new),
            execution_state: legacy.then(serde_json::Map::new),
        })
        .collect();
    List {
        items,
        next_token: page.next_token,
    }
}

/// When a record was written, in Unix seconds (`None` if its time does not parse: it is then kept).
fn recorded_at(h: &JobHistory) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(&h.time).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::api::testing::{TestServer, wasm_job};

    const JOBS: &str = "/api/v1/orchestrator/jobs";

    #[tokio::test]
    async fn submits_with_put_and_post_ignoring_client_extras() {
        let s = TestServer::start().await;
        let response = s
            .http
            .put(s.url(JOBS))
            .json(&json!({"Job": wasm_job("put-job", 0), "Force": false,
                          "Namespace": "default", "IdempotencyToken": "t-1", "Credential": null}))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["JobID"]
                .as_str()
                .is_some_and(|id| id.starts_with("j-")),
            "{body}"
        );
        assert!(
            body["EvaluationID"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{body}"
        );
        assert!(body["Warnings"].is_array(), "{body}");

        // The Python client's spelling: lower-case keys everywhere.
        let python = json!({
            "job": {"name": "post-job", "type": "batch", "count": 1,
                    "tasks": [{"name": "main", "engine": {"type": "wasm", "params": {"entrymodule": "/m.wasm"}}}]},
            "namespace": "default", "idempotencyToken": "t-2", "credential": null
        });
        let response = s
            .http
            .post(s.url(JOBS))
            .json(&python)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        let id = body["JobID"].as_str().expect("JobID");
        let (status, got) = s.get(&format!("{JOBS}/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(got["Job"]["Name"], "post-job");
    }

    #[tokio::test]
    async fn accepts_a_yaml_body() {
        let s = TestServer::start().await;
        let yaml = "Job:\n  Name: yaml-job\n  Type: batch\n  Tasks:\n  - Name: main\n    Engine: {Type: wasm, Params: {EntryModule: /m.wasm}}\n";
        let response = s
            .http
            .put(s.url(JOBS))
            .header("content-type", "application/yaml")
            .body(yaml)
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200);
        let (_, got) = s.get(&format!("{JOBS}/yaml-job")).await;
        assert_eq!(got["Job"]["Name"], "yaml-job");
    }

    #[tokio::test]
    async fn get_includes_executions_and_history() {
        let s = TestServer::start().await;
        let id = s.submit(wasm_job("fails", 0)).await;
        let (status, body) = s
            .get(&format!("{JOBS}/{id}?include=executions,history"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["Job"]["ID"], id.as_str());
        assert_eq!(body["Job"]["State"]["StateType"], "Failed");
        assert_eq!(body["Executions"], json!({"Items": [], "NextToken": ""}));
        let history = body["History"]["Items"].as_array().expect("history items");
        assert!(!history.is_empty(), "{body}");
        assert_eq!(body["History"]["NextToken"], "");

        // By name, without include: no History or Executions keys.
        let (status, body) = s.get(&format!("{JOBS}/fails")).await;
        assert_eq!(status, 200);
        assert_eq!(body["Job"]["ID"], id.as_str());
        assert!(body.get("History").is_none() && body.get("Executions").is_none());

        let (status, body) = s.get(&format!("{JOBS}/{id}?include=everything")).await;
        assert_eq!(status, 400, "{body}");
    }

    #[tokio::test]
    async fn invalid_spec_is_a_validation_error_naming_every_field() {
        let s = TestServer::start().await;
        let response = s
            .http
            .put(s.url(JOBS))
            .header("x-request-id", "req-42")
            .json(&json!({"Job": {"Type": "weekly", "Tasks": []}}))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["Code"], "ValidationError");
        assert_eq!(body["Status"], 400);
        assert_eq!(body["RequestID"], "req-42");
        let message = body["Message"].as_str().expect("message");
        assert!(
            message.contains("Type") && message.contains("Tasks"),
            "{message}"
        );
        let fields: Vec<&str> = body["Details"]["Fields"]
            .as_array()
            .expect("fields")
            .iter()
            .filter_map(|f| f["Field"].as_str())
            .collect();
        assert_eq!(fields, vec!["Type", "Tasks"]);
    }

    #[tokio::test]
    async fn malformed_bodies_are_bad_requests_naming_the_problem() {
        let s = TestServer::start().await;
        for (body, expected) in [
            ("{not json", "not valid JSON"),
            ("", "request body is empty"),
            ("{\"Force\": true}", "has no Job"),
            (
                "{\"Job\": {\"Count\": \"many\"}}",
                "not a valid job submission",
            ),
        ] {
            let response = s
                .http
                .put(s.url(JOBS))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("put");
            assert_eq!(response.status(), 400, "{body}");
            let err: Value = response.json().await.expect("json");
            assert_eq!(err["Code"], "BadRequest");
            let message = err["Message"].as_str().expect("message");
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let s = TestServer::start().await;
        let big = format!(
            "{{\"Job\": {{\"Name\": \"{}\"}}}}",
            "x".repeat(10 * 1024 * 1024)
        );
        let response = s
            .http
            .put(s.url(JOBS))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 413);
        let content_types = response.headers().get_all("content-type").iter().count();
        assert_eq!(content_types, 1);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["Message"]
                .as_str()
                .is_some_and(|m| m.contains("10 MiB")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn unknown_job_is_a_404_body() {
        let s = TestServer::start().await;
        for path in [
            "/j-nope",
            "/j-nope/history",
            "/j-nope/executions",
            "/j-nope/results",
        ] {
            let (status, body) = s.get(&format!("{JOBS}{path}")).await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(body["Code"], "NotFound");
            assert!(
                body["Message"]
                    .as_str()
                    .is_some_and(|m| m.contains("j-nope")),
                "{body}"
            );
            assert!(
                body["RequestID"].as_str().is_some_and(|r| !r.is_empty()),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn lists_jobs_in_pages() {
        let s = TestServer::start().await;
        for name in ["a", "b", "c"] {
            s.submit(wasm_job(name, 0)).await;
        }
        let (status, first) = s.get(&format!("{JOBS}?limit=2")).await;
        assert_eq!(status, 200);
        assert_eq!(first["Items"].as_array().map(Vec::len), Some(2));
        let token = first["NextToken"].as_str().expect("token");
        assert!(!token.is_empty());
        let (_, rest) = s.get(&format!("{JOBS}?limit=2&next_token={token}")).await;
        assert_eq!(rest["Items"].as_array().map(Vec::len), Some(1));
        assert_eq!(rest["NextToken"], "");
        let mut names: Vec<String> = first["Items"]
            .as_array()
            .into_iter()
            .chain(rest["Items"].as_array())
            .flatten()
            .filter_map(|j| j["Name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        assert_eq!(names, vec!["a", "b", "c"]);

        let (_, all) = s
            .get(&format!(
                "{JOBS}?namespace=*&order_by=created_at&reverse=true"
            ))
            .await;
        assert_eq!(all["Items"].as_array().map(Vec::len), Some(3));
        let (_, other) = s.get(&format!("{JOBS}?namespace=other")).await;
        assert_eq!(other["Items"], json!([]));
        let (_, labelled) = s.get(&format!("{JOBS}?labels=team%3Db")).await;
        assert_eq!(labelled["Items"].as_array().map(Vec::len), Some(1));
        let (status, _) = s.get(&format!("{JOBS}?limit=lots")).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn a_history_wait_answers_when_the_job_changes() {
        let s = TestServer::start().await;
        let queued = s.submit(wasm_job("waits", 600)).await;
        let (_, page) = s.get(&format!("{JOBS}/{queued}/history")).await;
        let token = page["NextToken"].as_str().expect("token").to_owned();
        assert!(!token.is_empty(), "{page}");
        let (status, _) = s
            .get(&format!(
                "{JOBS}/{queued}/history?next_token={token}&wait_seconds=soon"
            ))
            .await;
        assert_eq!(status, 400, "a wait that is not a number is refused");
        // Caught up: the wait holds the answer until the job changes (the stop below), far within its limit.
        let started = std::time::Instant::now();
        let url = s.url(&format!(
            "{JOBS}/{queued}/history?next_token={token}&wait_seconds=60&event_type=job"
        ));
        let waiting = tokio::spawn({
            let http = s.http.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .expect("get")
                    .json::<Value>()
                    .await
                    .expect("json")
            }
        });
        let (status, _) = s
            .stop(&queued, "", Some(json!({"Reason": "enough waiting"})))
            .await;
        assert_eq!(status, 200);
        let page = waiting.await.expect("answer");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{page}"
        );
        let states: Vec<&str> = page["Items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["Event"]["Details"]["NewState"].as_str())
            .collect();
        assert_eq!(states, ["Stopped"], "{page}");
    }

    #[tokio::test]
    async fn history_token_stays_until_the_job_is_terminal_and_read() {
        let s = TestServer::start().await;
        let queued = s.submit(wasm_job("waits", 600)).await;
        // Read everything there is, one record at a time.
        let mut token = String::new();
        loop {
            let (status, page) = s
                .get(&format!(
                    "{JOBS}/{queued}/history?limit=1&next_token={token}"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            token = page["NextToken"].as_str().expect("token").to_owned();
            assert!(
                !token.is_empty(),
                "a queued job keeps the long-poll open: {page}"
            );
            if page["Items"].as_array().is_none_or(Vec::is_empty) {
                break;
            }
        }
        // Stopping makes it terminal; the rest is read and the token goes empty.
        let (status, stopped) = s
            .stop(&queued, "", Some(json!({"Reason": "enough waiting"})))
            .await;
        assert_eq!(status, 200);
        assert!(
            stopped["EvaluationID"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
        );
        let (_, page) = s
            .get(&format!("{JOBS}/{queued}/history?next_token={token}"))
            .await;
        assert_eq!(page["NextToken"], "", "{page}");
        assert!(page.to_string().contains("enough waiting"), "{page}");
        // Stopping a stopped job is a no-op.
        let (status, again) = s.stop(&queued, "", None).await;
        assert_eq!(status, 200);
        assert_eq!(again["EvaluationID"], "");
    }

    #[tokio::test]
    async fn failed_job_history_says_why_and_ends() {
        let s = TestServer::start().await;
        let failed = s.submit(wasm_job("fails", 0)).await;
        let (_, page) = s.get(&format!("{JOBS}/{failed}/history")).await;
        assert_eq!(page["NextToken"], "");
        assert!(
            page.to_string().contains("no compute node is connected"),
            "{page}"
        );
        assert!(page["Items"][0].get("JobState").is_none());
        let (_, only_executions) = s
            .get(&format!("{JOBS}/{failed}/history?event_type=execution"))
            .await;
        assert_eq!(only_executions["Items"], json!([]));
        let (status, _) = s
            .get(&format!("{JOBS}/{failed}/history?event_type=sometimes"))
            .await;
        assert_eq!(status, 400);

        // Clients older than v1.5 get the old fields as empty objects.
        let old: Value = s
            .http
            .get(s.url(&format!("{JOBS}/{failed}/history")))
            .header("X-Bacalhau-Git-Version", "v1.4.0")
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(old["Items"][0]["JobState"], json!({}));
        assert_eq!(old["Items"][0]["ExecutionState"], json!({}));
    }

    #[tokio::test]
    async fn stopping_a_failed_job_is_a_conflict() {
        let s = TestServer::start().await;
        let failed = s.submit(wasm_job("fails", 0)).await;
        let (status, body) = s.stop(&failed, "reason=python", None).await;
        assert_eq!(status, 409);
        assert_eq!(body["Code"], "ResourceInUse");
    }

    #[tokio::test]
    async fn stop_reason_may_come_from_the_query() {
        let s = TestServer::start().await;
        let queued = s.submit(wasm_job("waits", 600)).await;
        let (status, _) = s.stop(&queued, "reason=from%20python", None).await;
        assert_eq!(status, 200);
        let (_, body) = s.get(&format!("{JOBS}/{queued}")).await;
        assert_eq!(body["Job"]["State"]["StateType"], "Stopped");
        assert_eq!(body["Job"]["State"]["Message"], "from python");
    }

    #[tokio::test]
    async fn executions_and_results_are_lists() {
        let s = TestServer::start().await;
        let failed = s.submit(wasm_job("fails", 0)).await;
        let (status, body) = s
            .get(&format!(
                "{JOBS}/{failed}/executions?order_by=modified_at&reverse=true&limit=5"
            ))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"Items": [], "NextToken": ""}));
        let (status, body) = s.get(&format!("{JOBS}/{failed}/results")).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"Items": [], "NextToken": ""}));
        let (status, _) = s
            .get(&format!("{JOBS}/{failed}/executions?order_by=size"))
            .await;
        assert_eq!(status, 400);
    }
}
