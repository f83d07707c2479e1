//! The HTTP client for a node's Bacalhau-shaped REST API (`/api/v1/orchestrator/*`, `/api/v1/agent/*`).
//!
//! Responses are parsed into a `serde_json::Value` first and decoded through [`crate::model::ci`], so key
//! case does not matter (Go servers and ours may differ, as Bacalhau's own v1.4 node structs did). Non-2xx
//! answers carry Bacalhau's error body `{Status, Message, Code, RequestID, Hint}`; its `Message` and `Hint`
//! are what the user sees. Job logs are a WebSocket, as in Bacalhau.
//!
//! This client never retries: every call is a single request, and the commands decide what to do on error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite;

use super::UsageError;
use crate::model::constraint::{check, parse_selector};
use crate::model::{
    BuildVersionInfo, Execution, Job, JobHistory, NodeInfo, NodeState, SpecConfig, ci,
};

/// How long to wait for a TCP connection: the API is on the LAN or loopback, so a slow connect means down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a single API call; Bacalhau's server has a 30 s handler timeout, so longer waits are pointless.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default API port (Bacalhau's).
pub const DEFAULT_API_PORT: u16 = 1234;

/// Where the API is: `--api-host`/`--api-port`, else `COD_API_*`, else `BACALHAU_API_*`, else `127.0.0.1:1234`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAddress {
    /// Host name or IP to dial (never a wildcard address).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ApiAddress {
    /// Resolves the address from the flags and an environment lookup (`std::env::var` in production; a fake
    /// in tests, so they never touch the process environment). Empty variables count as unset.
    pub fn resolve(
        host_flag: Option<&str>,
        port_flag: Option<u16>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, UsageError> {
        let from_env = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                env(name)
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v))
            })
        };
        let host = match host_flag {
            Some(h) => normalize_host(h, "--api-host")?,
            None => match from_env(["COD_API_HOST", "BACALHAU_API_HOST"]) {
                Some((name, h)) => normalize_host(&h, name)?,
                None => "127.0.0.1".to_owned(),
            },
        };
        let port = match port_flag {
            Some(0) => {
                return Err(UsageError::new(
                    "--api-port 0 is not a port number (use 1-65535)",
                ));
            }
            Some(p) => p,
            None => match from_env(["COD_API_PORT", "BACALHAU_API_PORT"]) {
                Some((name, p)) => match p.parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => {
                        return Err(UsageError::new(format!(
                            "{name}={p:?} is not a port number (use 1-65535)"
                        )));
                    }
                },
                None => DEFAULT_API_PORT,
            },
        };
        Ok(Self { host, port })
    }

    /// `http://host:port`, with IPv6 literals bracketed.
    pub fn base_url(&self) -> String {
        self.url_with_scheme("http")
    }

    /// `scheme://host:port`.
    fn url_with_scheme(&self, scheme: &str) -> String {
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ApiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base_url())
    }
}

/// Cleans a host given by the user. A node listens on `0.0.0.0` by default and users copy that into the
/// client config (Bacalhau's CLI reads the same `API.Host` key), so wildcard addresses mean "this machine".
fn normalize_host(raw: &str, source: &str) -> Result<String, UsageError> {
    let mut host = raw.trim();
    if let Some(rest) = host.strip_prefix("http://") {
        host = rest;
    } else if host.contains("://") {
        return Err(UsageError::new(format!(
            "{source} {raw:?} must be a host name or IP address (for HTTPS add --tls)"
        )));
    }
    let host = host.trim_end_matches('/');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(UsageError::new(format!(
            "{source} {raw:?} is not a host name or IP address"
        )));
    }
    Ok(match host {
        "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "::1".to_owned(),
        other => other.to_owned(),
    })
}

/// A failed API call. Messages say what failed and what to do; they do not repeat the operation, which the
/// caller adds as context (`submitting job spec.yaml: …`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error(
        "cannot reach the Cod API at {base} ({reason}): is `cod serve` running? \
         (set --api-host/--api-port or COD_API_HOST/COD_API_PORT)"
    )]
    Unreachable {
        /// The API's base URL.
        base: String,
        /// The innermost cause (`Connection refused (os error 111)`).
        reason: String,
    },
    /// A published result's server (the compute node's local publisher, say) does not answer.
    #[error(
        "cannot reach {url} ({reason}): the node that published this result must be reachable from here \
         (for the local publisher, check the address the compute node advertises)"
    )]
    ResultUnreachable {
        /// The result URL.
        url: String,
        /// The innermost cause.
        reason: String,
    },
    /// The API refused the credential (401) or its capabilities (403).
    #[error(
        "{}; {}",
        api_error_text(.status, .code, .message, .hint),
        denied_advice(*.status, .sent)
    )]
    Denied {
        /// 401 or 403.
        status: u16,
        /// `Unauthorized` or `Forbidden`.
        code: String,
        /// The server's message.
        message: String,
        /// The server's hint.
        hint: String,
        /// Where the credential sent came from (`--api-key`, a file), if one was sent.
        sent: Option<String>,
    },
    /// The TLS connection failed (an untrusted certificate, or a server that does not speak TLS).
    #[error(
        "TLS connection to {base} failed ({reason}): for a self-signed or private CA pass --cacert FILE \
         (or --insecure to skip the check); if the node serves plain HTTP, drop --tls"
    )]
    Tls {
        /// The API's base URL.
        base: String,
        /// The innermost cause.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{}", api_error_text(.status, .code, .message, .hint))]
    Api {
        /// HTTP status.
        status: u16,
        /// Bacalhau's error code (`NotFound`, `ValidationError`), if any.
        code: String,
        /// The server's message.
        message: String,
        /// The server's hint on what to do, if any.
        hint: String,
        /// The request id, for server logs.
        request_id: String,
    },
    /// The request did not finish in time.
    #[error("no answer from {url} within {secs}s")]
    Timeout {
        /// The URL called.
        url: String,
        /// The limit.
        secs: u64,
    },
    /// Any other HTTP failure (connection reset, malformed response).
    #[error("request to {url} failed")]
    Http {
        /// The URL called.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer is not the JSON shape expected.
    #[error("the answer from {url} could not be decoded")]
    Decode {
        /// The URL called.
        url: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The log WebSocket failed.
    #[error("the log stream from {url} failed")]
    WebSocket {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The server ended the log stream with an error frame.
    #[error("the server ended the log stream: {0}")]
    LogStream(String),
    /// A URL given by the server (a result location) that does not parse.
    #[error("{url:?} is not a valid URL: {reason}")]
    BadUrl {
        /// The text.
        url: String,
        /// Why.
        reason: String,
    },
    /// Writing a download to disk failed.
    #[error("{op} {path:?} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn api_error_text(status: &u16, code: &str, message: &str, hint: &str) -> String {
    let message = if message.trim().is_empty() {
        "the API answered with an error"
    } else {
        message.trim()
    };
    let mut text = if code.is_empty() {
        format!("{message} ({status})")
    } else {
        format!("{message} ({status} {code})")
    };
    if !hint.trim().is_empty() {
        text.push_str(&format!("; hint: {}", hint.trim()));
    }
    text
}

/// What to do about a 401/403, given what was sent.
fn denied_advice(status: u16, sent: &Option<String>) -> String {
    match (status, sent) {
        (401, None) => "no credential was sent: pass --api-key (or COD_API_KEY), or --username and \
                        --password; on the node's machine, COD_DATA_DIR pointing at its data dir lets the \
                        CLI read the api-token file"
            .to_owned(),
        (401, Some(source)) => format!("the credential from {source} was refused: check it"),
        (_, Some(source)) => format!(
            "the credential from {source} is valid but not allowed to do this: use one with the \
             capability"
        ),
        (_, None) => "pass a credential that has the capability".to_owned(),
    }
}

impl ClientError {
    /// True when the API said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// Decodes a JSON `null` (Go's nil slice or map) as the type's default.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Bacalhau's error body.
#[derive(Debug, Default, Deserialize)]
struct ApiErrorBody {
    #[serde(rename = "Status", default)]
    status: Option<u16>,
    #[serde(rename = "Message", default, deserialize_with = "nullable")]
    message: String,
    #[serde(rename = "Code", default, deserialize_with = "nullable")]
    code: String,
    #[serde(rename = "Hint", default, deserialize_with = "nullable")]
    hint: String,
    #[serde(rename = "RequestID", default, deserialize_with = "nullable")]
    request_id: String,
    /// The 403 "client too old" answer uses `Error` instead of `Message`.
    #[serde(rename = "Error", default, deserialize_with = "nullable")]
    error: String,
}

/// `PUT /jobs` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutJobResponse {
    /// The new job's id.
    #[serde(rename = "JobID", default, deserialize_with = "nullable")]
    pub job_id: String,
    /// The evaluation scheduling it.
    #[serde(rename = "EvaluationID", default, deserialize_with = "nullable")]
    pub evaluation_id: String,
    /// Things the server changed or ignored.
    #[serde(rename = "Warnings", default, deserialize_with = "nullable")]
    pub warnings: Vec<String>,
}

/// A page of a list: `{Items, NextToken}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct ListResponse<T> {
    /// The page.
    #[serde(rename = "Items", default = "Vec::new", deserialize_with = "nullable")]
    pub items: Vec<T>,
    /// Token for the next page; empty when there is none.
    #[serde(rename = "NextToken", default, deserialize_with = "nullable")]
    pub next_token: String,
}

impl<T> Default for ListResponse<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            next_token: String::new(),
        }
    }
}

/// `GET /jobs/{id}` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetJobResponse {
    /// The job.
    #[serde(rename = "Job")]
    pub job: Job,
    /// Its history, with `include=history`.
    #[serde(rename = "History", default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ListResponse<JobHistory>>,
    /// Its executions, with `include=executions`.
    #[serde(
        rename = "Executions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub executions: Option<ListResponse<Execution>>,
}

/// `DELETE /jobs/{id}` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopJobResponse {
    /// The evaluation that stops it; empty when the job had already ended.
    #[serde(rename = "EvaluationID", default, deserialize_with = "nullable")]
    pub evaluation_id: String,
}

/// `GET /nodes` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListNodesResponse {
    /// The nodes.
    #[serde(rename = "Nodes", default, deserialize_with = "nullable")]
    pub nodes: Vec<NodeState>,
    /// Token for the next page.
    #[serde(rename = "NextToken", default, deserialize_with = "nullable")]
    pub next_token: String,
}

/// `GET /nodes/{id}` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetNodeResponse {
    /// The node.
    #[serde(rename = "Node")]
    pub node: NodeState,
}

/// `PUT /nodes/{id}` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutNodeResponse {
    /// Whether the action was applied.
    #[serde(rename = "Success", default)]
    pub success: bool,
    /// Why not.
    #[serde(rename = "Error", default, deserialize_with = "nullable")]
    pub error: String,
}

/// `GET /agent/alive` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AliveResponse {
    /// `OK` when the node is up.
    #[serde(rename = "Status", default, deserialize_with = "nullable")]
    pub status: String,
}

/// What `PUT /nodes/{id}` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Admit a pending node.
    Approve,
    /// Refuse it (and disconnect it).
    Reject,
    /// Forget it.
    Delete,
}

impl NodeAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Delete => "delete",
        }
    }
}

/// Query of `GET /jobs`.
#[derive(Debug, Clone, Default)]
pub struct ListJobsQuery {
    /// Page size (0 = server default).
    pub limit: u32,
    /// Token from the previous page.
    pub next_token: Option<String>,
    /// Reverse the order.
    pub reverse: bool,
    /// `id` or `created_at`.
    pub order_by: Option<String>,
    /// Label selector requirements, one `labels` parameter each.
    pub labels: Vec<String>,
}

/// Query of `GET /jobs/{id}/history`.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Page size (0 = server default).
    pub limit: u32,
    /// Token from the previous page.
    pub next_token: Option<String>,
    /// `all`, `job` or `execution`.
    pub event_type: Option<String>,
    /// Only this execution's events.
    pub execution_id: Option<String>,
}

/// Query of `GET /nodes`.
#[derive(Debug, Clone, Default)]
pub struct ListNodesQuery {
    /// `PENDING`, `APPROVED` or `REJECTED`.
    pub filter_approval: Option<String>,
    /// `CONNECTED` or `DISCONNECTED`.
    pub filter_status: Option<String>,
    /// Label selector requirements.
    pub labels: Vec<String>,
}

/// Query of the logs WebSocket.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    /// Only this execution.
    pub execution_id: Option<String>,
    /// Keep streaming while the execution runs.
    pub follow: bool,
    /// Start from the end of the log.
    pub tail: bool,
}

/// Splits a `--labels` selector into one string per requirement (one `labels` query parameter each, as Bacalhau's
/// client sends them), rejecting a malformed one before any request.
pub fn label_selector_params(text: &str) -> Result<Vec<String>, UsageError> {
    let reqs =
        parse_selector(text).map_err(|e| UsageError::new(format!("--labels {text:?}: {e}")))?;
    for r in &reqs {
        check(r).map_err(|e| UsageError::new(format!("--labels {text:?}: {e}")))?;
    }
    Ok(reqs.iter().map(requirement_string).collect())
}

fn requirement_string(r: &crate::model::LabelSelectorRequirement) -> String {
    let op = r.operator.to_ascii_lowercase();
    match op.as_str() {
        "exists" => r.key.clone(),
        "!" => format!("!{}", r.key),
        "in" | "notin" => format!("{} {op} ({})", r.key, r.values.join(",")),
        "gt" | "lt" => format!("{} {op} {}", r.key, r.values.join(",")),
        _ => format!("{}{}{}", r.key, r.operator, r.values.join(",")),
    }
}

/// A client of one node's API. Cheap to clone (reqwest shares its pool).
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// The connection pool for the API: its TLS settings (a private CA, say) are the API's.
    api_http: reqwest::Client,
    /// The pool for everything else (result downloads from S3 or another node's publisher): system roots,
    /// and never the API's credential.
    http: reqwest::Client,
    /// `http(s)://host:port/`.
    base: Url,
    /// Sent as `Authorization` to the API's origin only.
    credential: Option<super::security::ClientCredential>,
    /// The TLS config, for the log WebSocket (which does not go through reqwest).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Host and port, for the log WebSocket's connection.
    address: ApiAddress,
}

// === impl ApiClient ===

impl ApiClient {
    /// A client for the open API at `address` (plain HTTP, no credential). Builds no connection yet.
    pub fn new(address: &ApiAddress) -> anyhow::Result<Self> {
        Self::with_security(address, &super::security::ClientSecurity::default())
    }

    /// A client for the API at `address` that sends `security`'s credential and checks certificates as it
    /// says.
    pub fn with_security(
        address: &ApiAddress,
        security: &super::security::ClientSecurity,
    ) -> anyhow::Result<Self> {
        // reqwest is built with `rustls-no-provider` and panics when building a client without a process-wide
        // crypto provider. `main` installs ring first thing; doing it here too (a no-op when already set) keeps
        // the client usable from tests and other library callers.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = super::security::client_config(&security.tls)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = address.url_with_scheme(scheme);
        let base = Url::parse(&format!("{base_url}/"))
            .map_err(|e| UsageError::new(format!("{base_url} is not a valid API address: {e}")))?;
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("cod/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder()
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        let api_http = match &tls {
            Some(config) => builder()
                .use_preconfigured_tls(rustls::ClientConfig::clone(config))
                .build()
                .map_err(|e| anyhow::anyhow!("building the HTTPS client: {e}"))?,
            None => http.clone(),
        };
        Ok(Self {
            api_http,
            http,
            base,
            credential: security.credential.clone(),
            tls,
            address: address.clone(),
        })
    }

    /// Whether `url` is on the API's own origin (scheme, host, port), the only place the credential goes.
    fn is_api_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// Where the credential sent came from, for denial messages.
    fn sent(&self) -> Option<String> {
        self.credential.as_ref().map(|c| c.source.clone())
    }

    /// Maps a non-2xx answer, turning 401/403 into [`ClientError::Denied`].
    fn answer_error(&self, status: u16, body: &[u8]) -> ClientError {
        match api_error(status, body) {
            ClientError::Api {
                status: s @ (401 | 403),
                code,
                message,
                hint,
                ..
            } => ClientError::Denied {
                status: s,
                code,
                message,
                hint,
                sent: self.sent(),
            },
            other => other,
        }
    }

    /// The API's base URL, for messages.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `base/api/v1/<segments…>?<query>`, each segment percent-encoded (job names may contain anything).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        // An http(s) URL always has path segments; the error case is for `data:`-like URLs only.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    fn map_send_error(&self, url: &Url, timeout: Duration, e: reqwest::Error) -> ClientError {
        if self.tls.is_some() && is_tls_failure(&e) {
            ClientError::Tls {
                base: self.base().to_owned(),
                reason: root_cause(&e),
            }
        } else if e.is_connect() {
            ClientError::Unreachable {
                base: self.base().to_owned(),
                reason: root_cause(&e),
            }
        } else if e.is_timeout() {
            ClientError::Timeout {
                url: url.to_string(),
                secs: timeout.as_secs(),
            }
        } else {
            ClientError::Http {
                url: url.to_string(),
                source: e,
            }
        }
    }

    /// One API call; returns the JSON answer (`null` for an empty body).
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .api_http
            .request(method, url.clone())
            .timeout(REQUEST_TIMEOUT);
        if let Some(c) = &self.credential {
            request = request.header(reqwest::header::AUTHORIZATION, authorization(c));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.map_send_error(&url, REQUEST_TIMEOUT, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.map_send_error(&url, REQUEST_TIMEOUT, e))?;
        if !status.is_success() {
            return Err(self.answer_error(status.as_u16(), &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            url: url.to_string(),
            source,
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let url = self.url(segments, query);
        let value = self.call(Method::GET, url.clone(), None).await?;
        decode(value, &url)
    }

    /// `PUT /api/v1/orchestrator/jobs` with `{"Job": job, "Force": force}`.
    pub async fn put_job(&self, job: Value, force: bool) -> Result<PutJobResponse, ClientError> {
        let url = self.url(&["orchestrator", "jobs"], &[]);
        let value = self
            .call(
                Method::PUT,
                url.clone(),
                Some(json!({"Job": job, "Force": force})),
            )
            .await?;
        decode(value, &url)
    }

    /// `GET /api/v1/orchestrator/jobs`.
    pub async fn list_jobs(&self, q: &ListJobsQuery) -> Result<ListResponse<Job>, ClientError> {
        let mut query = Vec::new();
        if q.limit > 0 {
            query.push(("limit", q.limit.to_string()));
        }
        if let Some(t) = q.next_token.as_ref().filter(|t| !t.is_empty()) {
            query.push(("next_token", t.clone()));
        }
        if q.reverse {
            query.push(("reverse", "true".to_owned()));
        }
        if let Some(o) = &q.order_by {
            query.push(("order_by", o.clone()));
        }
        query.extend(q.labels.iter().map(|l| ("labels", l.clone())));
        self.get(&["orchestrator", "jobs"], &query).await
    }

    /// `GET /api/v1/orchestrator/jobs/{id}`; `include` lists what to embed (`executions`, `history`).
    pub async fn get_job(&self, id: &str, include: &[&str]) -> Result<GetJobResponse, ClientError> {
        let query = if include.is_empty() {
            vec![]
        } else {
            vec![("include", include.join(","))]
        };
        self.get(&["orchestrator", "jobs", id], &query).await
    }

    /// `GET /api/v1/orchestrator/jobs/{id}/history` (one page).
    pub async fn job_history(
        &self,
        id: &str,
        q: &HistoryQuery,
    ) -> Result<ListResponse<JobHistory>, ClientError> {
        let mut query = Vec::new();
        if q.limit > 0 {
            query.push(("limit", q.limit.to_string()));
        }
        if let Some(t) = q.next_token.as_ref().filter(|t| !t.is_empty()) {
            query.push(("next_token", t.clone()));
        }
        if let Some(t) = &q.event_type {
            query.push(("event_type", t.clone()));
        }
        if let Some(e) = &q.execution_id {
            query.push(("execution_id", e.clone()));
        }
        self.get(&["orchestrator", "jobs", id, "history"], &query)
            .await
    }

    /// `GET /api/v1/orchestrator/jobs/{id}/executions` (one page).
    pub async fn job_executions(
        &self,
        id: &str,
        next_token: Option<&str>,
    ) -> Result<ListResponse<Execution>, ClientError> {
        let mut query = Vec::new();
        if let Some(t) = next_token.filter(|t| !t.is_empty()) {
            query.push(("next_token", t.to_owned()));
        }
        self.get(&["orchestrator", "jobs", id, "executions"], &query)
            .await
    }

    /// `GET /api/v1/orchestrator/jobs/{id}/results`: where each completed execution published its result.
    pub async fn job_results(&self, id: &str) -> Result<ListResponse<SpecConfig>, ClientError> {
        self.get(&["orchestrator", "jobs", id, "results"], &[])
            .await
    }

    /// `DELETE /api/v1/orchestrator/jobs/{id}` with `{"reason": reason}`.
    pub async fn stop_job(&self, id: &str, reason: &str) -> Result<StopJobResponse, ClientError> {
        let url = self.url(&["orchestrator", "jobs", id], &[]);
        let value = self
            .call(Method::DELETE, url.clone(), Some(json!({"reason": reason})))
            .await?;
        decode(value, &url)
    }

    /// Opens `GET /api/v1/orchestrator/jobs/{id}/logs` as a WebSocket.
    pub async fn job_logs(&self, id: &str, q: &LogsQuery) -> Result<LogStream, ClientError> {
        let mut query = vec![("follow", q.follow.to_string())];
        if let Some(e) = &q.execution_id {
            query.push(("execution_id", e.clone()));
        }
        if q.tail {
            query.push(("tail", "true".to_owned()));
        }
        let mut url = self.url(&["orchestrator", "jobs", id, "logs"], &query);
        // Only the scheme changes; `set_scheme` refuses nothing between http(s) and ws(s).
        let _ = url.set_scheme(if self.tls.is_some() { "wss" } else { "ws" });
        let unreachable = |e: std::io::Error| ClientError::Unreachable {
            base: self.base().to_owned(),
            reason: e.to_string(),
        };
        let tcp = tokio::net::TcpStream::connect((self.address.host.as_str(), self.address.port))
            .await
            .map_err(unreachable)?;
        let io: Box<dyn LogIo> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.address.host.clone())
                    .map_err(|e| ClientError::BadUrl {
                        url: self.base().to_owned(),
                        reason: e.to_string(),
                    })?;
                let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Tls {
                        base: self.base().to_owned(),
                        reason: root_cause(&e),
                    })?;
                Box::new(stream)
            }
        };
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
            .map_err(|e| ClientError::WebSocket {
                url: url.to_string(),
                source: Box::new(e),
            })?;
        if let Some(c) = &self.credential {
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, authorization(c));
        }
        let (ws, _) = tokio_tungstenite::client_async(request, io)
            .await
            .map_err(|e| match e {
                tungstenite::Error::Io(io) if is_connect_failure(&io) => unreachable(io),
                tungstenite::Error::Http(response) => self.answer_error(
                    response.status().as_u16(),
                    response.body().as_deref().unwrap_or_default(),
                ),
                other => ClientError::WebSocket {
                    url: url.to_string(),
                    source: Box::new(other),
                },
            })?;
        Ok(LogStream {
            ws,
            url: url.to_string(),
        })
    }

    /// `GET /api/v1/orchestrator/nodes`.
    pub async fn list_nodes(&self, q: &ListNodesQuery) -> Result<ListNodesResponse, ClientError> {
        let mut query = Vec::new();
        if let Some(a) = &q.filter_approval {
            query.push(("filter-approval", a.clone()));
        }
        if let Some(s) = &q.filter_status {
            query.push(("filter-status", s.clone()));
        }
        query.extend(q.labels.iter().map(|l| ("labels", l.clone())));
        self.get(&["orchestrator", "nodes"], &query).await
    }

    /// `GET /api/v1/orchestrator/nodes/{id}`.
    pub async fn get_node(&self, id: &str) -> Result<NodeState, ClientError> {
        let r: GetNodeResponse = self.get(&["orchestrator", "nodes", id], &[]).await?;
        Ok(r.node)
    }

    /// `PUT /api/v1/orchestrator/nodes/{id}` with `{Action, Message, NodeID}`.
    pub async fn update_node(
        &self,
        id: &str,
        action: NodeAction,
        message: &str,
    ) -> Result<PutNodeResponse, ClientError> {
        let url = self.url(&["orchestrator", "nodes", id], &[]);
        let body = json!({"Action": action.as_str(), "Message": message, "NodeID": id});
        let value = self.call(Method::PUT, url.clone(), Some(body)).await?;
        decode(value, &url)
    }

    /// `GET /api/v1/agent/alive`.
    pub async fn agent_alive(&self) -> Result<AliveResponse, ClientError> {
        self.get(&["agent", "alive"], &[]).await
    }

    /// `GET /api/v1/agent/version`.
    pub async fn agent_version(&self) -> Result<BuildVersionInfo, ClientError> {
        self.get(&["agent", "version"], &[]).await
    }

    /// `GET /api/v1/agent/node`.
    pub async fn agent_node(&self) -> Result<NodeInfo, ClientError> {
        self.get(&["agent", "node"], &[]).await
    }

    /// `GET /api/v1/auth`: the auth methods the node takes, as raw JSON.
    pub async fn auth_methods(&self) -> Result<Value, ClientError> {
        let url = self.url(&["auth"], &[]);
        self.call(Method::GET, url, None).await
    }

    /// `GET /api/v1/agent/config`: the node's configuration, secrets redacted by the server. Kept as raw JSON:
    /// its shape belongs to the server's config module.
    pub async fn agent_config(&self) -> Result<Value, ClientError> {
        let url = self.url(&["agent", "config"], &[]);
        self.call(Method::GET, url, None).await
    }

    /// Downloads `url` (a published result, not necessarily on this API's host) into the file `dest`,
    /// streaming, and returns the byte count. `timeout` bounds the whole transfer.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let parsed = Url::parse(url).map_err(|e| ClientError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let unreachable = |e: reqwest::Error| {
            if e.is_connect() {
                ClientError::ResultUnreachable {
                    url: url.to_owned(),
                    reason: root_cause(&e),
                }
            } else if e.is_timeout() {
                ClientError::Timeout {
                    url: url.to_owned(),
                    secs: timeout.as_secs(),
                }
            } else {
                ClientError::Http {
                    url: url.to_owned(),
                    source: e,
                }
            }
        };
        // A result on the API's own origin is served by the node and needs the credential; anywhere else
        // (S3, another node's publisher) the credential must not go.
        let own = self.is_api_origin(&parsed);
        let mut request = if own { &self.api_http } else { &self.http }
            .get(parsed)
            .timeout(timeout);
        if own && let Some(c) = &self.credential {
            request = request.header(reqwest::header::AUTHORIZATION, authorization(c));
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(if own {
                self.answer_error(status.as_u16(), &body)
            } else {
                api_error(status.as_u16(), &body)
            });
        }
        let io = |op: &'static str| {
            move |source| ClientError::Io {
                op,
                path: dest.to_owned(),
                source,
            }
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(io("creating"))?;
        let mut stream = response.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unreachable)?;
            total += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io("writing"))?;
        }
        file.flush().await.map_err(io("writing"))?;
        Ok(total)
    }
}

/// Decodes an API answer case-insensitively.
fn decode<T: DeserializeOwned>(value: Value, url: &Url) -> Result<T, ClientError> {
    ci::from_value(value).map_err(|source| ClientError::Decode {
        url: url.to_string(),
        source,
    })
}

/// Turns a non-2xx answer into [`ClientError::Api`], using Bacalhau's error body when there is one.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .and_then(|v| ci::from_value(v).ok());
    match parsed {
        Some(b) => ClientError::Api {
            status: b.status.filter(|s| *s != 0).unwrap_or(status),
            code: b.code,
            message: if b.message.is_empty() {
                b.error
            } else {
                b.message
            },
            hint: b.hint,
            request_id: b.request_id,
        },
        None => {
            // Not Bacalhau's shape (a proxy's HTML page, say): show the start of the text.
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            ClientError::Api {
                status,
                code: String::new(),
                message: text,
                hint: String::new(),
                request_id: String::new(),
            }
        }
    }
}

/// The `Authorization` header for `c`, marked sensitive so HTTP debug output leaves it out.
fn authorization(c: &super::security::ClientCredential) -> reqwest::header::HeaderValue {
    // A header built from a key with control characters would be refused by the server anyway; send an
    // empty one and let the 401 explain.
    let mut value = reqwest::header::HeaderValue::from_str(c.header.expose())
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Whether a request failed in the TLS layer (rustls is somewhere in its cause chain).
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        current = err.source();
    }
    // hyper-util boxes the connector's error, which hides its type from the checks above; rustls's own
    // messages still name it.
    let cause = root_cause(e);
    [
        "invalid peer certificate",
        "received corrupt message",
        "received fatal alert",
        "peer is incompatible",
        "peer misbehaved",
    ]
    .iter()
    .any(|m| cause.contains(m))
}

/// The innermost cause of an error, which for a refused connection is the useful part.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn is_connect_failure(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable | TimedOut
    )
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// Type 1.
    Stdout,
    /// Type 2.
    Stderr,
}

/// One frame of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// stdout or stderr.
    pub source: LogSource,
    /// The text as the server sent it (Bacalhau's lines carry their own newline).
    pub line: String,
}

#[derive(Debug, Deserialize)]
struct LogFrame {
    #[serde(rename = "value", default)]
    value: Option<LogValue>,
    #[serde(rename = "error", default, deserialize_with = "nullable")]
    error: String,
}

#[derive(Debug, Deserialize)]
struct LogValue {
    #[serde(rename = "Type", default)]
    kind: i64,
    #[serde(rename = "Line", default, deserialize_with = "nullable")]
    line: String,
}

/// Parses one text frame; `Ok(None)` for a frame without a line.
fn parse_log_frame(text: &str) -> Result<Option<LogLine>, ClientError> {
    let value: Value = serde_json::from_str(text).map_err(|source| ClientError::Decode {
        url: "the log stream".to_owned(),
        source,
    })?;
    let frame: LogFrame = ci::from_value(value).map_err(|source| ClientError::Decode {
        url: "the log stream".to_owned(),
        source,
    })?;
    if !frame.error.trim().is_empty() {
        return Err(ClientError::LogStream(frame.error.trim().to_owned()));
    }
    Ok(frame.value.map(|v| LogLine {
        source: if v.kind == 2 {
            LogSource::Stderr
        } else {
            LogSource::Stdout
        },
        line: v.line,
    }))
}

/// The byte stream under a log WebSocket: TCP, or TLS over TCP.
trait LogIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> LogIo for T {}

/// An open log WebSocket.
pub struct LogStream {
    /// The socket.
    ws: tokio_tungstenite::WebSocketStream<Box<dyn LogIo>>,
    /// For messages.
    url: String,
}

impl fmt::Debug for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl LogStream {
    /// The next line, or `None` when the server closed the stream. Cancel-safe: a frame is consumed only when
    /// this returns it.
    pub async fn next_line(&mut self) -> Result<Option<LogLine>, ClientError> {
        loop {
            let Some(message) = self.ws.next().await else {
                return Ok(None);
            };
            let message = message.map_err(|e| ClientError::WebSocket {
                url: self.url.clone(),
                source: Box::new(e),
            })?;
            let text = match message {
                tungstenite::Message::Text(t) => t.as_str().to_owned(),
                tungstenite::Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                tungstenite::Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite itself.
                _ => continue,
            };
            if let Some(line) = parse_log_frame(&text)? {
                return Ok(Some(line));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
    use axum::http::StatusCode;
    use axum::routing::{get, put};
    use std::collections::HashMap;

    /// Serves `router` on a fresh loopback port (a stand-in for the API server, which lives in another
    /// module) and returns a client for it. The server task ends with the test's runtime.
    pub(crate) async fn fake_api(router: axum::Router) -> ApiClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        ApiClient::new(&ApiAddress {
            host: "127.0.0.1".into(),
            port,
        })
        .expect("client")
    }

    #[tokio::test]
    async fn server_errors_surface_message_and_code() {
        let router = axum::Router::new().route(
            "/api/v1/orchestrator/jobs",
            put(|| async {
                let body = json!({"Status": 400, "Message": "job spec is invalid: Tasks[0].Engine.Type: is required",
                                  "Code": "ValidationError", "RequestID": "r-1"});
                (StatusCode::BAD_REQUEST, axum::Json(body))
            }),
        );
        let client = fake_api(router).await;
        let e = client
            .put_job(json!({"Type": "batch"}), false)
            .await
            .expect_err("400");
        assert_eq!(
            e.to_string(),
            "job spec is invalid: Tasks[0].Engine.Type: is required (400 ValidationError)"
        );
    }

    #[tokio::test]
    async fn submits_and_decodes_case_insensitively() {
        let router = axum::Router::new().route(
            "/api/v1/orchestrator/jobs",
            put(|axum::Json(body): axum::Json<Value>| async move {
                assert_eq!(body["Job"]["Type"], "batch");
                assert_eq!(body["Force"], false);
                axum::Json(json!({"jobID": "j-1", "evaluationId": "ev-1", "warnings": null}))
            }),
        );
        let client = fake_api(router).await;
        let r = client
            .put_job(json!({"Type": "batch"}), false)
            .await
            .expect("submitted");
        assert_eq!(
            (r.job_id.as_str(), r.evaluation_id.as_str()),
            ("j-1", "ev-1")
        );
        assert!(r.warnings.is_empty());
    }

    #[tokio::test]
    async fn logs_stream_over_a_websocket_until_close() {
        let router = axum::Router::new().route(
            "/api/v1/orchestrator/jobs/{id}/logs",
            get(|ws: WebSocketUpgrade, axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                assert_eq!(q.as_deref(), Some("follow=true&execution_id=e-1"));
                ws.on_upgrade(|mut socket| async move {
                    for frame in [
                        json!({"value": {"Type": 1, "Line": "hello\n"}, "error": ""}),
                        json!({"value": {"Type": 2, "Line": "warn\n"}, "error": ""}),
                    ] {
                        let _ = socket.send(WsMessage::Text(frame.to_string().into())).await;
                    }
                    let _ = socket.send(WsMessage::Close(None)).await;
                })
            }),
        );
        let client = fake_api(router).await;
        let query = LogsQuery {
            execution_id: Some("e-1".into()),
            follow: true,
            tail: false,
        };
        let mut stream = client.job_logs("j-1", &query).await.expect("opens");
        let first = stream.next_line().await.expect("ok").expect("line");
        assert_eq!(
            first,
            LogLine {
                source: LogSource::Stdout,
                line: "hello\n".into()
            }
        );
        let second = stream.next_line().await.expect("ok").expect("line");
        assert_eq!(second.source, LogSource::Stderr);
        assert!(
            stream.next_line().await.expect("ok").is_none(),
            "close ends the stream"
        );
    }

    #[tokio::test]
    async fn logs_of_a_missing_job_report_the_api_error() {
        let router = axum::Router::new().route(
            "/api/v1/orchestrator/jobs/{id}/logs",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(
                        json!({"Status": 404, "Message": "job j-9 not found", "Code": "NotFound"}),
                    ),
                )
            }),
        );
        let client = fake_api(router).await;
        let e = client
            .job_logs("j-9", &LogsQuery::default())
            .await
            .expect_err("404");
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.to_string(), "job j-9 not found (404 NotFound)");
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_to_local_port_1234() {
        let a = ApiAddress::resolve(None, None, env(&[])).expect("resolves");
        assert_eq!(a.base_url(), "http://127.0.0.1:1234");
    }

    #[test]
    fn flags_beat_cod_env_which_beats_bacalhau_env() {
        let all = env(&[
            ("COD_API_HOST", "cod.local"),
            ("COD_API_PORT", "2000"),
            ("BACALHAU_API_HOST", "bac.local"),
            ("BACALHAU_API_PORT", "3000"),
        ]);
        let a = ApiAddress::resolve(Some("flag.local"), Some(4000), &all).expect("resolves");
        assert_eq!((a.host.as_str(), a.port), ("flag.local", 4000));
        let a = ApiAddress::resolve(None, None, &all).expect("resolves");
        assert_eq!((a.host.as_str(), a.port), ("cod.local", 2000));
        let bac = env(&[
            ("BACALHAU_API_HOST", "bac.local"),
            ("BACALHAU_API_PORT", "3000"),
            ("COD_API_HOST", " "),
        ]);
        let a = ApiAddress::resolve(None, None, bac).expect("resolves");
        assert_eq!((a.host.as_str(), a.port), ("bac.local", 3000));
    }

    #[test]
    fn wildcard_hosts_dial_loopback() {
        let a = ApiAddress::resolve(Some("0.0.0.0"), None, env(&[])).expect("resolves");
        assert_eq!(a.host, "127.0.0.1");
        let a =
            ApiAddress::resolve(None, None, env(&[("COD_API_HOST", "[::]")])).expect("resolves");
        assert_eq!(a.base_url(), "http://[::1]:1234");
        let a = ApiAddress::resolve(Some("http://10.0.0.5/"), None, env(&[])).expect("resolves");
        assert_eq!(a.host, "10.0.0.5");
    }

    #[test]
    fn bad_port_or_host_is_a_usage_error_naming_its_source() {
        let e = ApiAddress::resolve(None, None, env(&[("COD_API_PORT", "http")]))
            .expect_err("bad port");
        assert!(e.0.contains("COD_API_PORT"), "{e}");
        let e = ApiAddress::resolve(None, None, env(&[("BACALHAU_API_PORT", "70000")]))
            .expect_err("bad port");
        assert!(e.0.contains("BACALHAU_API_PORT"), "{e}");
        let e = ApiAddress::resolve(Some("https://x"), None, env(&[])).expect_err("tls");
        assert!(e.0.contains("--api-host"), "{e}");
    }

    #[test]
    fn api_errors_show_message_code_and_hint() {
        let body = br#"{"Status":400,"Message":"job spec is invalid: Tasks[0].Engine.Type: is required","Code":"ValidationError","RequestID":"r1"}"#;
        assert_eq!(
            api_error(400, body).to_string(),
            "job spec is invalid: Tasks[0].Engine.Type: is required (400 ValidationError)"
        );
        let body = br#"{"status":404,"message":"job j-1 not found","code":"NotFound","hint":"check the id"}"#;
        let e = api_error(404, body);
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "job j-1 not found (404 NotFound); hint: check the id"
        );
        assert_eq!(
            api_error(502, b"<html>bad gateway</html>").to_string(),
            "<html>bad gateway</html> (502)"
        );
    }

    #[test]
    fn log_frames_decode_and_error_frames_end_the_stream() {
        let l = parse_log_frame(r#"{"value":{"Type":2,"Line":"oops\n"},"error":""}"#)
            .expect("ok")
            .expect("line");
        assert_eq!(
            l,
            LogLine {
                source: LogSource::Stderr,
                line: "oops\n".into()
            }
        );
        let l = parse_log_frame(r#"{"Value":{"type":1,"line":"hi"}}"#)
            .expect("ok")
            .expect("line");
        assert_eq!(l.source, LogSource::Stdout);
        assert!(
            parse_log_frame(r#"{"value":null,"error":""}"#)
                .expect("ok")
                .is_none()
        );
        let e = parse_log_frame(r#"{"value":null,"error":"execution not found"}"#)
            .expect_err("error frame");
        assert!(e.to_string().contains("execution not found"));
    }

    #[test]
    fn list_responses_accept_null_items() {
        let r: ListResponse<Job> =
            ci::from_value(json!({"Items": null, "NextToken": ""})).expect("decodes");
        assert!(r.items.is_empty());
    }

    #[test]
    fn urls_encode_path_segments() {
        let c = ApiClient::new(&ApiAddress {
            host: "127.0.0.1".into(),
            port: 1,
        })
        .expect("client");
        let u = c.url(
            &["orchestrator", "jobs", "my job/1"],
            &[("include", "executions,history".into())],
        );
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:1/api/v1/orchestrator/jobs/my%20job%2F1?include=executions%2Chistory"
        );
    }

    #[test]
    fn selectors_are_split_into_requirements() {
        let s = label_selector_params("env=prod, tier in (a,b),!gpu").expect("parses");
        assert_eq!(s, vec!["env=prod", "tier in (a,b)", "!gpu"]);
        assert!(label_selector_params("tier in ()").is_err());
    }

    #[tokio::test]
    async fn refused_connection_says_how_to_fix_it() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let c = ApiClient::new(&ApiAddress {
            host: "127.0.0.1".into(),
            port,
        })
        .expect("client");
        let e = c.agent_alive().await.expect_err("nothing listens");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach the Cod API at http://127.0.0.1:{port}"
            )),
            "{text}"
        );
        assert!(text.contains("cod serve"), "{text}");
    }
}
