//! The HTTP API in Bacalhau's `/api/v1` shapes, so Bacalhau's CLI, its Python client and `cod` itself can
//! drive a Cod node.
//!
//! It owns no state: every request is answered from the [`Orchestrator`] and [`Compute`] handles it was given.
//! It must never block a runtime worker or hand Debug text of internal errors to clients ([`error`] maps every
//! error to a status and a stable Bacalhau `Code`).
//!
//! Layout: [`request`] holds what every request goes through (request id, version headers, one tracing span,
//! query and path extraction), [`error`] the error body, and one file per endpoint group: [`jobs`] and [`logs`]
//! (`/api/v1/orchestrator/jobs…`), [`nodes`] (`/api/v1/orchestrator/nodes…`), [`agent`] (`/api/v1/agent/…`
//! plus the legacy redirects and the retired `/api/v1/requester` API), [`metrics`] (`/metrics`, Prometheus). [`auth`] gates every request by its
//! credential (and serves `/api/v1/auth`); [`tls`] serves HTTPS when `API.TLS` asks for it.
//!
//! Requests are decoded case-insensitively ([`crate::model::ci`]), as Go's decoder does, and unknown keys are
//! ignored. Responses use Bacalhau's PascalCase keys, plus lower-case twins where the Python 1.4.1 client reads
//! them (`nodes`, `node`, `success`).

mod agent;
mod auth;
mod error;
// The orchestrator's endpoints and their extractors: only a build with the orchestrator has them. Without it
// every `/api/v1/orchestrator/*` path answers 404 "not an orchestrator" ([`not_an_orchestrator`]).
#[cfg(feature = "orchestrator")]
pub(crate) mod extract;
#[cfg(feature = "orchestrator")]
pub(crate) mod jobs;
#[cfg(feature = "orchestrator")]
mod logs;
mod metrics;
#[cfg(feature = "orchestrator")]
mod nodes;
pub(crate) mod request;
// A real orchestrator behind the API, for the tests of every endpoint group.
#[cfg(all(test, feature = "orchestrator"))]
mod testing;
pub mod tls;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::compute::Compute;
use crate::model::NodeInfo;
#[cfg(feature = "orchestrator")]
use crate::orchestrator::Orchestrator;

use error::HttpError;

/// Largest request body accepted (Bacalhau's echo server uses the same limit).
const BODY_LIMIT: usize = 10 * 1024 * 1024;

/// What the API serves from. Built by the node's composition root.
pub struct ApiState {
    /// The orchestrator, when this node is one; `/api/v1/orchestrator/*` answers 404 without it.
    #[cfg(feature = "orchestrator")]
    pub orchestrator: Option<Orchestrator>,
    /// The compute side, when this node is one.
    pub compute: Option<Compute>,
    /// This node's description for `/api/v1/agent/node`; a closure so a compute node reports live capacity.
    pub node_info: Arc<dyn Fn() -> NodeInfo + Send + Sync>,
    /// The node's configuration, already redacted, for `/api/v1/agent/config`.
    pub config: serde_json::Value,
    /// Who may call the API.
    pub auth: Arc<crate::auth::Access>,
    /// Whether `GET /metrics` is served (`Metrics.Enabled`).
    pub metrics: bool,
    /// Signs `s3` results for `GET …/jobs/{id}/results`; `None` when `PreSignedURLDisabled`.
    #[cfg(all(feature = "orchestrator", feature = "storage-s3"))]
    pub result_signer: Option<crate::s3::ResultSigner>,
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ApiState");
        #[cfg(feature = "orchestrator")]
        d.field("orchestrator", &self.orchestrator.is_some());
        d.field("compute", &self.compute.is_some())
            .finish_non_exhaustive()
    }
}

/// The API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Accepting or serving connections failed.
    #[error("API server on {addr} failed")]
    Serve {
        /// The listen address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What handlers share: the node's handles plus the server's shutdown signal, which ends long-lived
/// streams (`logs?follow=true`) so graceful shutdown does not wait for them.
#[derive(Debug)]
struct Shared {
    state: ApiState,
    /// Only the orchestrator's log streams are long-lived; a compute node's API has none to end.
    #[cfg(feature = "orchestrator")]
    shutdown: CancellationToken,
}

type AppState = Arc<Shared>;

/// Serves the API on `listener` (over TLS when `tls` is given) until `shutdown` is cancelled, then lets open
/// requests finish (log streams are closed with 1001 "going away").
///
/// # Errors
/// [`ApiError::Serve`] when accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unknown address".to_owned());
    info!(addr = %addr, tls = tls.is_some(), "API listening");
    let app = build(state, shutdown.clone());
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Some(config) => match tls::TlsListener::new(listener, config) {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            }
            Err(e) => Err(e),
        },
    };
    served.map_err(|source| ApiError::Serve { addr, source })
}

/// The API's routes, for tests and embedding. Streams opened through it end only when their client leaves
/// or their job ends; [`serve`] also ends them on shutdown.
pub fn router(state: ApiState) -> Router {
    build(state, CancellationToken::new())
}

fn build(state: ApiState, shutdown: CancellationToken) -> Router {
    #[cfg(not(feature = "orchestrator"))]
    let _ = shutdown;
    let shared: AppState = Arc::new(Shared {
        state,
        #[cfg(feature = "orchestrator")]
        shutdown,
    });
    with_orchestrator_routes(Router::new())
        .merge(agent::routes())
        .merge(auth::routes())
        .route("/metrics", get(metrics::scrape))
        .route("/api/v1/requester", any(agent::requester_gone))
        .route("/api/v1/requester/{*rest}", any(agent::requester_gone))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Inside `context`, so denials carry the request id and CORS preflights (answered there) need no
        // credential.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            auth::require,
        ))
        .layer(axum::middleware::from_fn(request::context))
        .with_state(shared)
}

#[cfg(feature = "orchestrator")]
fn with_orchestrator_routes(router: Router<AppState>) -> Router<AppState> {
    let orchestrator = Router::new()
        .route(
            "/jobs",
            get(jobs::list).put(jobs::submit).post(jobs::submit),
        )
        .route("/jobs/{id}", get(jobs::get).delete(jobs::stop))
        .route("/jobs/{id}/history", get(jobs::history))
        .route("/jobs/{id}/executions", get(jobs::executions))
        .route("/jobs/{id}/results", get(jobs::results))
        .route("/jobs/{id}/logs", get(logs::logs))
        .route("/nodes", get(nodes::list).post(nodes::update_from_body))
        .route("/nodes/{id}", get(nodes::get).put(nodes::update));
    router.nest("/api/v1/orchestrator", orchestrator)
}

/// A build without the orchestrator answers every orchestrator path as a compute-only node of a full build
/// does (see `extract::Orch`), so clients get the same 404 whichever binary the node runs.
#[cfg(not(feature = "orchestrator"))]
fn with_orchestrator_routes(router: Router<AppState>) -> Router<AppState> {
    async fn refuse() -> HttpError {
        not_an_orchestrator()
    }
    router
        .route("/api/v1/orchestrator", any(refuse))
        .route("/api/v1/orchestrator/{*rest}", any(refuse))
}

/// The 404 for an orchestrator endpoint on a node that is not one.
pub(crate) fn not_an_orchestrator() -> HttpError {
    HttpError::not_found("this node is not an orchestrator")
        .with_hint("send job and node requests to an orchestrator's API (cod serve --orchestrator)")
}

async fn unknown_route(uri: axum::http::Uri) -> HttpError {
    HttpError::not_found(format!("no endpoint {}", uri.path()))
        .with_hint("the server may be older than the client; check the versions of both")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} does not accept {method}", uri.path()),
    )
    .with_hint("the server may be older than the client; check the versions of both")
}

// They drive the API through a real orchestrator (testing.rs) or test its errors.
#[cfg(all(test, feature = "orchestrator"))]
mod tests {
    use serde_json::{Value, json};

    use super::testing::{TestServer, http_client, spawn_server};
    use super::*;

    #[tokio::test]
    async fn unknown_routes_hint_at_a_version_mismatch() {
        let s = TestServer::start().await;
        let (status, body) = s.get("/api/v1/orchestrator/jobs/j-1/versions/7").await;
        assert_eq!(status, 404);
        assert_eq!(body["Code"], "NotFound");
        assert!(
            body["Hint"]
                .as_str()
                .is_some_and(|h| h.contains("older than the client")),
            "{body}"
        );

        let response = s
            .http
            .patch(s.url("/api/v1/orchestrator/jobs"))
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), 405);
        let body: Value = response.json().await.expect("json body");
        assert_eq!(body["Status"], 405);
    }

    #[tokio::test]
    async fn request_ids_are_echoed_or_created() {
        let s = TestServer::start().await;
        let response = s
            .http
            .get(s.url("/api/v1/orchestrator/jobs/j-missing"))
            .header("x-request-id", "mine-1")
            .send()
            .await
            .expect("get");
        let echoed = response.headers().get("x-request-id").cloned();
        assert_eq!(
            echoed.as_ref().and_then(|v| v.to_str().ok()),
            Some("mine-1")
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["RequestID"], "mine-1");

        let response = s
            .http
            .get(s.url("/api/v1/agent/alive"))
            .send()
            .await
            .expect("get");
        let created = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(!created.is_empty());
        let cors = response.headers().get("access-control-allow-origin");
        assert_eq!(cors.and_then(|v| v.to_str().ok()), Some("*"));
    }

    #[tokio::test]
    async fn answers_cors_preflights() {
        let s = TestServer::start().await;
        let response = s
            .http
            .request(reqwest::Method::OPTIONS, s.url("/api/v1/orchestrator/jobs"))
            .header("origin", "http://ui.example")
            .header("access-control-request-method", "PUT")
            .send()
            .await
            .expect("options");
        assert_eq!(response.status(), 204);
        let methods = response
            .headers()
            .get("access-control-allow-methods")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(methods.contains("PUT"), "{methods}");
    }

    #[tokio::test]
    async fn compute_only_node_says_it_is_not_an_orchestrator() {
        let shutdown = CancellationToken::new();
        let state = ApiState {
            orchestrator: None,
            compute: None,
            node_info: Arc::new(NodeInfo::default),
            config: json!({}),
            auth: Arc::new(crate::auth::Access::Open(crate::auth::OpenReason::Loopback)),
            metrics: true,
            #[cfg(feature = "storage-s3")]
            result_signer: None,
        };
        let base = spawn_server(state, shutdown.clone()).await;
        let http = http_client();
        let response = http
            .get(format!("{base}/api/v1/orchestrator/jobs"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["Message"]
                .as_str()
                .is_some_and(|m| m.contains("not an orchestrator")),
            "{body}"
        );
        let alive = http
            .get(format!("{base}/api/v1/agent/alive"))
            .send()
            .await
            .expect("get");
        assert_eq!(alive.status(), 200);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn serve_returns_after_shutdown() {
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let state = ApiState {
            orchestrator: None,
            compute: None,
            node_info: Arc::new(NodeInfo::default),
            config: json!({}),
            auth: Arc::new(crate::auth::Access::Open(crate::auth::OpenReason::Loopback)),
            metrics: true,
            #[cfg(feature = "storage-s3")]
            result_signer: None,
        };
        let server = tokio::spawn(serve(listener, None, state, shutdown.clone()));
        shutdown.cancel();
        server.await.expect("joins").expect("clean exit");
    }
}
