//! `GET /metrics`: the node's Prometheus metrics in text format 0.0.4, for every role the node has.
//!
//! The gate in [`super::auth`] treats it as an agent read (`read:agent`), like `/api/v1/agent/node`, so
//! Prometheus scrapes with a bearer API key (`authorization.credentials` in its scrape config) when the
//! API requires credentials, and without one on an open loopback API.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::metrics::{self, Encoder, OutboxGauges};

use super::AppState;
use super::error::HttpError;

/// Renders every family this node has. A store error answers 500 (the scrape shows as failed), never a
/// partial page.
pub(super) async fn scrape(State(shared): State<AppState>) -> Response {
    let state = &shared.state;
    if !state.metrics {
        return HttpError::not_found("metrics are disabled on this node")
            .with_hint("set Metrics.Enabled to true in the node's configuration")
            .into_response();
    }
    let mut e = Encoder::new();
    metrics::render_common(&mut e);
    let mut outboxes: Vec<OutboxGauges> = Vec::new();
    #[cfg(feature = "orchestrator")]
    if let Some(o) = &state.orchestrator {
        match o.metrics().await {
            Ok(g) => {
                crate::orchestrator::metrics::render(&mut e, &g);
                outboxes.push(g.outbox);
            }
            Err(err) => return failed(&err),
        }
    }
    if let Some(c) = &state.compute {
        match c.metrics().await {
            Ok(g) => {
                crate::compute::metrics::render(&mut e, &g);
                outboxes.push(g.outbox);
            }
            Err(err) => return failed(&err),
        }
    }
    metrics::render_outboxes(&mut e, &outboxes);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        e.finish(),
    )
        .into_response()
}

fn failed(err: &dyn std::error::Error) -> Response {
    tracing::warn!(error = %crate::errors::chain(err), "cannot read state for /metrics");
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "cannot read the node's state for metrics",
    )
    .with_hint("see the node's log; the next scrape tries again")
    .into_response()
}

// They drive the API through a real orchestrator (testing.rs) or test its errors.
#[cfg(all(test, feature = "orchestrator"))]
mod tests {
    use crate::api::testing::TestServer;

    #[tokio::test]
    async fn serves_the_text_format_with_orchestrator_families() {
        let s = TestServer::start().await;
        let response = s.http.get(s.url("/metrics")).send().await.expect("get");
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert!(
            content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{content_type:?}"
        );
        let text = response.text().await.expect("text");
        for family in [
            "cod_build_info",
            "cod_jobs",
            "cod_executions",
            "cod_nodes",
            "cod_outbox_messages",
            "cod_orchestrator_request_duration_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
        assert!(
            text.contains("cod_outbox_messages{role=\"orchestrator\"} "),
            "{text}"
        );
        assert!(!text.contains("cod_compute_"), "{text}");
    }
}
