//! `/api/v1/agent/…` (every node answers these, whatever its role), the legacy redirects, and the retired
//! `/api/v1/requester` API.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::{BuildVersionInfo, NodeInfo};

use super::AppState;
use super::error::HttpError;

const VERSION_PATH: &str = "/api/v1/agent/version";
const ALIVE_PATH: &str = "/api/v1/agent/alive";
const NODE_PATH: &str = "/api/v1/agent/node";

#[derive(Debug, Serialize)]
struct Alive {
    #[serde(rename = "Status")]
    status: &'static str,
}

/// `/agent/config` answers under a lower-case key, as Bacalhau's does.
#[derive(Debug, Serialize)]
struct ConfigResponse {
    config: Value,
}

/// The agent routes and the redirects from paths older clients call.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(ALIVE_PATH, get(alive))
        .route(VERSION_PATH, get(version))
        .route(NODE_PATH, get(node))
        .route("/api/v1/agent/config", get(config))
        .route("/api/v1/agent/debug", get(debug))
        // Bacalhau moved these under /api/v1/agent and kept 301s; the Python client still calls some.
        .route("/", get(|| async { moved(VERSION_PATH) }))
        .route("/version", get(|| async { moved(VERSION_PATH) }))
        .route("/livez", get(|| async { moved(ALIVE_PATH) }))
        .route("/api/v1/version", get(|| async { moved(VERSION_PATH) }))
        .route("/api/v1/livez", get(|| async { moved(ALIVE_PATH) }))
        .route("/api/v1/node_info", get(|| async { moved(NODE_PATH) }))
}

async fn alive() -> Json<Alive> {
    Json(Alive { status: "OK" })
}

async fn version() -> Json<BuildVersionInfo> {
    Json(BuildVersionInfo::current())
}

async fn node(State(shared): State<AppState>) -> Json<NodeInfo> {
    Json((shared.state.node_info)())
}

async fn config(State(shared): State<AppState>) -> Json<ConfigResponse> {
    Json(ConfigResponse {
        config: shared.state.config.clone(),
    })
}

/// Bacalhau lists per-component debug info here; Cod has none to report yet.
async fn debug() -> Json<Map<String, Value>> {
    Json(Map::new())
}

/// A 301, which Bacalhau used for these moves (axum's `Redirect::permanent` is a 308).
fn moved(to: &'static str) -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
}

/// `/api/v1/requester/*`: gone since Bacalhau v1.4, answered as Bacalhau v1.4–1.6 did.
pub(super) async fn requester_gone() -> HttpError {
    HttpError::new(
        StatusCode::GONE,
        "Gone",
        "the /api/v1/requester API was retired in Bacalhau v1.4; use /api/v1/orchestrator",
    )
    .with_hint("upgrade the client to Bacalhau v1.4 or later, or use the cod CLI")
}

// They drive the API through a real orchestrator (testing.rs) or test its errors.
#[cfg(all(test, feature = "orchestrator"))]
mod tests {
    use serde_json::json;

    use crate::api::testing::TestServer;

    #[tokio::test]
    async fn agent_endpoints_answer() {
        let s = TestServer::start().await;
        let (status, body) = s.get("/api/v1/agent/alive").await;
        assert_eq!((status, body), (200, json!({"Status": "OK"})));

        let response = s
            .http
            .get(s.url("/api/v1/agent/version"))
            .send()
            .await
            .expect("version");
        let header = response
            .headers()
            .get("x-bacalhau-git-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: serde_json::Value = response.json().await.expect("json");
        let version = format!("v{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(body["GitVersion"], version.as_str());
        assert!(
            body.get("GOARCH").is_some() && body.get("Major").is_some(),
            "{body}"
        );
        assert_eq!(header.as_deref(), Some(version.as_str()));

        let (_, node) = s.get("/api/v1/agent/node").await;
        assert_eq!(node["NodeType"], "Requester");
        assert_eq!(node["NodeID"], s.orchestrator.node_id().as_str());
        let (_, config) = s.get("/api/v1/agent/config").await;
        assert_eq!(config["config"]["API"]["Port"], 0);
        let (_, debug) = s.get("/api/v1/agent/debug").await;
        assert_eq!(debug, json!({}));
    }

    #[tokio::test]
    async fn legacy_paths_redirect() {
        let s = TestServer::start().await;
        for (from, to) in [
            ("/", "/api/v1/agent/version"),
            ("/version", "/api/v1/agent/version"),
            ("/livez", "/api/v1/agent/alive"),
        ] {
            let response = s.http.get(s.url(from)).send().await.expect("get");
            assert_eq!(response.status(), 301, "{from}");
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok());
            assert_eq!(location, Some(to), "{from}");
        }
    }

    #[tokio::test]
    async fn requester_api_is_gone() {
        let s = TestServer::start().await;
        let (status, body) = s.get("/api/v1/requester/list").await;
        assert_eq!(status, 410);
        assert_eq!(body["Status"], 410);
        assert!(
            body["Message"]
                .as_str()
                .is_some_and(|m| m.contains("/api/v1/orchestrator")),
            "{body}"
        );
        let response = s
            .http
            .post(s.url("/api/v1/requester/submit"))
            .body("{}")
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 410);
    }
}
