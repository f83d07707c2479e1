//! The API's gate: every request except the open paths carries a credential with the capability its
//! method and path need, or gets Bacalhau's 401 "Request Unauthorized" / 403 "Request Forbidden". Also
//! `GET /api/v1/auth[/{name}]`, which tells clients which methods the node takes.
//!
//! The decision itself is [`crate::auth`]'s; this file maps requests to actions and answers. Credentials are
//! never logged: denials log the path and, once known, the user's alias.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

use crate::auth::{Access, Action, Credential, Resource, Verb};

use super::AppState;
use super::error::HttpError;

/// Paths anyone may call: liveness, version, and the auth discovery itself (as in Bacalhau), plus the old
/// redirects to them.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/agent/alive"
            | "/api/v1/agent/version"
            | "/api/v1/agent/authconfig"
            | "/api/v1/version"
            | "/api/v1/livez"
            | "/"
            | "/version"
            | "/livez"
    ) || path == "/api/v1/auth"
        || path.starts_with("/api/v1/auth/")
}

/// The action a request needs: GET reads, anything else writes; jobs, nodes, and the agent (everything
/// else, unknown paths included, so they cannot be probed without a credential).
fn action(method: &Method, path: &str) -> Action {
    let verb = if matches!(*method, Method::GET | Method::HEAD) {
        Verb::Read
    } else {
        Verb::Write
    };
    let resource = if path.starts_with("/api/v1/orchestrator/jobs") {
        Resource::Job
    } else if path.starts_with("/api/v1/orchestrator/nodes") {
        Resource::Node
    } else {
        Resource::Agent
    };
    Action { verb, resource }
}

/// Reads `Authorization: Bearer …` or `Basic …`; `None` when absent or malformed.
fn credential(request: &Request) -> Option<Credential> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| Credential::Bearer(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        return Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    None
}

/// 401 with a challenge naming both schemes.
fn unauthorized(access: &crate::auth::Authenticator) -> Response {
    let hint = match (access.has_api_keys(), access.has_basic_users()) {
        (true, true) => {
            "send an API key (cod --api-key, COD_API_KEY) or a user (cod --username/--password)"
        }
        (false, true) => "send a user name and password (cod --username/--password)",
        _ => {
            "send an API key (cod --api-key or COD_API_KEY; on the node's machine the CLI reads \
             <data dir>/api-token itself)"
        }
    };
    let mut response = HttpError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "Request Unauthorized",
    )
    .with_hint(hint)
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"cod\", Basic realm=\"cod\""),
    );
    response
}

/// Middleware: lets a request through when the API is open, the path is open, or its credential allows
/// the action.
pub(super) async fn require(
    State(shared): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let access = Arc::clone(&shared.state.auth);
    let Access::Users(authenticator) = access.as_ref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if is_open(path) {
        return next.run(request).await;
    }
    let needed = action(request.method(), path);
    let Some(credential) = credential(&request) else {
        tracing::debug!(path, "no credential");
        return unauthorized(authenticator);
    };
    // bcrypt checks are slow on purpose; they must not hold a runtime worker. A key check is two hashes
    // per user, cheaper than the hop to the blocking pool.
    let checked = match credential {
        Credential::Bearer(_) => Ok(authenticator.authenticate(&credential)),
        Credential::Basic { .. } => {
            let access = Arc::clone(&access);
            tokio::task::spawn_blocking(move || match access.as_ref() {
                Access::Users(a) => a.authenticate(&credential),
                Access::Open(_) => None,
            })
            .await
        }
    };
    let Ok(Some(principal)) = checked else {
        tracing::debug!(path, "invalid credential");
        return unauthorized(authenticator);
    };
    if !principal.capabilities.allows(needed) {
        tracing::debug!(path, alias = %principal.alias, action = %needed, "forbidden");
        return HttpError::new(StatusCode::FORBIDDEN, "Forbidden", "Request Forbidden")
            .with_hint(format!(
                "user {:?} lacks the {needed} capability; ask the node's operator, or use a credential that \
                 has it",
                principal.alias
            ))
            .into_response();
    }
    next.run(request).await
}

/// `/api/v1/auth…` and `/api/v1/agent/authconfig`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth", get(list_methods))
        .route("/api/v1/auth/{name}", get(method))
        .route("/api/v1/agent/authconfig", get(authconfig))
}

/// The methods this node takes, in Bacalhau's `{type, params}` form (`ask`: the client asks its user for
/// the fields the JSON schema in `params` names, and sends them as an `Authorization` header).
fn methods(access: &Access) -> serde_json::Map<String, Value> {
    let mut methods = serde_json::Map::new();
    let Access::Users(a) = access else {
        return methods;
    };
    if a.has_basic_users() {
        methods.insert(
            "basic".into(),
            json!({"type": "ask", "params": {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "object",
                "properties": {"username": {"type": "string"}, "password": {"type": "string", "writeOnly": true}},
                "required": ["username", "password"],
            }}),
        );
    }
    if a.has_api_keys() {
        methods.insert(
            "apikey".into(),
            json!({"type": "ask", "params": {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "object",
                "properties": {"apikey": {"type": "string", "writeOnly": true}},
                "required": ["apikey"],
            }}),
        );
    }
    methods
}

async fn list_methods(State(shared): State<AppState>) -> Json<Value> {
    Json(json!({"Methods": methods(&shared.state.auth), "NextToken": ""}))
}

async fn method(State(shared): State<AppState>, Path(name): Path<String>) -> Response {
    match methods(&shared.state.auth).remove(&name) {
        Some(requirement) => Json(requirement).into_response(),
        None => HttpError::not_found(format!("no auth method {name:?} on this node"))
            .with_hint("GET /api/v1/auth lists the methods")
            .into_response(),
    }
}

/// Bacalhau v1.7's OAuth2 settings; Cod has no OAuth2, so the config is empty.
async fn authconfig() -> Json<Value> {
    Json(json!({"Version": "1.0.0", "Config": {}}))
}

// They drive the API through a real orchestrator (testing.rs) or test its errors.
#[cfg(all(test, feature = "orchestrator"))]
mod tests {
    use super::*;

    use crate::api::testing::TestServer;
    use crate::auth::Authenticator;
    use crate::config::{ApiAuthConfig, ApiCapabilityConfig, ApiUserConfig, Secret};

    const READER: &str = "reader-key-0123456789";

    async fn server() -> TestServer {
        let config = ApiAuthConfig {
            users: vec![ApiUserConfig {
                alias: "reader".into(),
                api_key: Secret::new(READER),
                capabilities: vec![ApiCapabilityConfig {
                    actions: vec!["read".into()],
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let auth = Authenticator::from_config(&config).expect("valid");
        TestServer::start_with_auth(Access::Users(auth)).await
    }

    #[tokio::test]
    async fn denials_use_bacalhaus_bodies_and_open_paths_stay_open() {
        let s = server().await;
        let response = s
            .http
            .get(s.url("/api/v1/orchestrator/jobs"))
            .header("x-request-id", "r-401")
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["Code"], "Unauthorized");
        assert_eq!(body["Message"], "Request Unauthorized");
        assert_eq!(body["RequestID"], "r-401");

        let response = s
            .http
            .put(s.url("/api/v1/orchestrator/jobs"))
            .bearer_auth(READER)
            .json(&json!({}))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            (body["Code"].as_str(), body["Message"].as_str()),
            (Some("Forbidden"), Some("Request Forbidden"))
        );
        assert!(
            body["Hint"]
                .as_str()
                .is_some_and(|h| h.contains("write:job")),
            "{body}"
        );

        let response = s
            .http
            .get(s.url("/api/v1/orchestrator/jobs"))
            .bearer_auth(READER)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200);

        for open in ["/api/v1/agent/alive", "/api/v1/agent/version"] {
            let (status, _) = s.get(open).await;
            assert_eq!(status, 200, "{open}");
        }
        let (status, body) = s.get("/api/v1/auth").await;
        assert_eq!(status, 200);
        assert_eq!(body["Methods"]["apikey"]["type"], "ask");
        assert!(body["Methods"].get("basic").is_none(), "{body}");
        let (status, _) = s.get("/api/v1/agent/config").await;
        assert_eq!(status, 401);
    }

    #[test]
    fn methods_and_paths_map_to_actions() {
        let a = action(&Method::PUT, "/api/v1/orchestrator/jobs");
        assert_eq!((a.verb, a.resource), (Verb::Write, Resource::Job));
        let a = action(&Method::GET, "/api/v1/orchestrator/nodes/n-1");
        assert_eq!((a.verb, a.resource), (Verb::Read, Resource::Node));
        let a = action(&Method::GET, "/api/v1/agent/config");
        assert_eq!((a.verb, a.resource), (Verb::Read, Resource::Agent));
        assert!(is_open("/api/v1/agent/alive") && is_open("/api/v1/auth/basic"));
        assert!(!is_open("/api/v1/agent/node") && !is_open("/api/v1/authx"));
    }

    #[test]
    fn reads_bearer_and_basic_headers() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        assert_eq!(
            credential(&req("Bearer abc")),
            Some(Credential::Bearer("abc".into()))
        );
        // "u:p:w" — passwords may contain colons; user names may not.
        assert_eq!(
            credential(&req("basic dTpwOnc=")),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p:w".into()
            })
        );
        assert_eq!(credential(&req("Bearer ")), None);
        assert_eq!(credential(&req("Digest x")), None);
    }
}
