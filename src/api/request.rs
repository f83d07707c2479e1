//! What every request goes through: the context middleware (request id, version and CORS headers, one
//! tracing span). The extractors of the orchestrator's endpoints are in [`super::extract`].

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::model::BuildVersionInfo;

use super::error::HttpError;

/// Request id header, echoed or created (Bacalhau's echo server does the same).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Version header that Bacalhau's clients send and its servers echo.
pub(super) const X_GIT_VERSION: HeaderName = HeaderName::from_static("x-bacalhau-git-version");
const X_GIT_COMMIT: HeaderName = HeaderName::from_static("x-bacalhau-git-commit");
const X_BUILD_OS: HeaderName = HeaderName::from_static("x-bacalhau-build-os");
const X_ARCH: HeaderName = HeaderName::from_static("x-bacalhau-arch");
/// A client-chosen request id longer than this is replaced: ids end up in logs.
const MAX_REQUEST_ID: usize = 128;

/// Version headers sent on every response; computed once because they never change.
static VERSION_HEADERS: LazyLock<Vec<(HeaderName, HeaderValue)>> = LazyLock::new(|| {
    let v = BuildVersionInfo::current();
    [
        (X_GIT_VERSION, v.git_version),
        (X_GIT_COMMIT, v.git_commit),
        (X_BUILD_OS, v.goos),
        (X_ARCH, v.goarch),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .filter_map(|(name, value)| HeaderValue::from_str(&value).ok().map(|v| (name, v)))
    .collect()
});

/// Middleware around every request: assigns the request id, opens the request's span, answers CORS
/// preflights, renders error bodies with the id, and sets the response headers.
pub(crate) async fn context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= MAX_REQUEST_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::debug_span!(
        "api_request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id,
    );
    async move {
        let started = Instant::now();
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut response = if preflight {
            preflight_response(req.headers())
        } else {
            next.run(req).await
        };
        if let Some(err) = response.extensions_mut().remove::<HttpError>()
            && let Ok(body) = serde_json::to_vec(&err.body(&id))
        {
            // Same status and headers; only the body gains the request id.
            *response.body_mut() = axum::body::Body::from(body);
        }
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert(X_REQUEST_ID, value);
        }
        for (name, value) in VERSION_HEADERS.iter() {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis(),
            "request served"
        );
        response
    }
    .instrument(span)
    .await
}

/// Browsers ask before cross-origin PUT/DELETE; the API is open to any origin (as Bacalhau's).
fn preflight_response(request: &HeaderMap) -> Response {
    let allow_headers = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, PUT, POST, DELETE, OPTIONS"),
            ),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers),
        ],
    )
        .into_response()
}
