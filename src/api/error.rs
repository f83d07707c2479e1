//! Errors as clients see them: an HTTP status plus Bacalhau's `APIError` body
//! `{"Status","Message","RequestID","Code","Component","Hint","Details"}`.
//!
//! Codes are Bacalhau's stable strings (`BadRequest`, `ValidationError`, `NotFound`, `ResourceInUse`,
//! `InternalError`…), which clients match on. Internal failures are logged here, at the edge, with their whole
//! cause chain, and reach the client only as a generic message: Debug text and store details never leave the
//! node.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[cfg(feature = "orchestrator")]
use crate::errors::chain;
#[cfg(feature = "orchestrator")]
use crate::orchestrator::OrchestratorError;

/// Component named in errors about the request itself (Bacalhau's name for its HTTP layer).
const API_SERVER: &str = "APIServer";
/// Component named in errors the orchestrator returned.
#[cfg(feature = "orchestrator")]
const ORCHESTRATOR: &str = "Orchestrator";

/// An error response. [`request::context`](super::request::context) fills in `RequestID` once the response
/// leaves the handler, so every error carries the id of the request that caused it.
#[derive(Debug, Clone)]
pub(crate) struct HttpError {
    status: StatusCode,
    code: &'static str,
    component: &'static str,
    message: String,
    hint: Option<String>,
    details: Option<Value>,
}

// === impl HttpError ===

impl HttpError {
    /// An error with an explicit status and code, about the request.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            component: API_SERVER,
            message: message.into(),
            hint: None,
            details: None,
        }
    }

    /// 400 `BadRequest`: the request is malformed (a query value, a body that does not decode).
    #[cfg(feature = "orchestrator")]
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 `NotFound`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// Adds advice on what to do next.
    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The human message.
    #[cfg(feature = "orchestrator")]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The `APIError` body.
    pub(crate) fn body(&self, request_id: &str) -> Value {
        let mut body = json!({
            "Status": self.status.as_u16(),
            "Message": self.message,
            "RequestID": request_id,
            "Code": self.code,
            "Component": self.component,
        });
        if let Some(hint) = &self.hint {
            body["Hint"] = Value::String(hint.clone());
        }
        if let Some(details) = &self.details {
            body["Details"] = details.clone();
        }
        body
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body(""))).into_response();
        // Kept so the request middleware can render the body again with the request id.
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(feature = "orchestrator")]
impl From<OrchestratorError> for HttpError {
    fn from(e: OrchestratorError) -> Self {
        let (status, code) = match &e {
            OrchestratorError::Invalid(_) => (StatusCode::BAD_REQUEST, "ValidationError"),
            OrchestratorError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            OrchestratorError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            OrchestratorError::Conflict(_) => (StatusCode::CONFLICT, "ResourceInUse"),
            OrchestratorError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let mut err = HttpError {
            status,
            code,
            component: ORCHESTRATOR,
            message: e.to_string(),
            hint: None,
            details: None,
        };
        match &e {
            OrchestratorError::Invalid(errors) => {
                let fields: Vec<Value> = errors
                    .0
                    .iter()
                    .map(|f| json!({"Field": f.field, "Message": f.message}))
                    .collect();
                err.details = Some(json!({ "Fields": fields }));
                err.hint = Some("fix every listed field and submit again".to_owned());
            }
            OrchestratorError::Store(_) => {
                // The edge of the system: the cause is logged once, here, and stays on the node.
                tracing::error!(error = %chain(&e), "orchestrator request failed");
                err.message =
                    "internal error while reading or writing the orchestrator's state".to_owned();
                err.hint = Some("the node's log has the cause; retry later".to_owned());
            }
            _ => {}
        }
        err
    }
}

// The orchestrator's errors as clients see them.
#[cfg(all(test, feature = "orchestrator"))]
mod tests {
    use super::*;
    use crate::model::{FieldError, ValidationErrors};

    #[test]
    fn validation_errors_list_every_field() {
        let e = OrchestratorError::Invalid(ValidationErrors(vec![
            FieldError::new("Type", "is required"),
            FieldError::new("Tasks", "at least one task is required"),
        ]));
        let err = HttpError::from(e);
        let body = err.body("r-1");
        assert_eq!(body["Status"], 400);
        assert_eq!(body["Code"], "ValidationError");
        assert_eq!(body["RequestID"], "r-1");
        let message = body["Message"].as_str().unwrap_or_default();
        assert!(message.contains("Type: is required"), "{message}");
        assert!(message.contains("Tasks: at least one task"), "{message}");
        assert_eq!(body["Details"]["Fields"][1]["Field"], "Tasks");
    }

    #[test]
    fn conflicts_are_resource_in_use() {
        let err = HttpError::from(OrchestratorError::Conflict("already Completed".into()));
        assert_eq!(err.body("")["Status"], 409);
        assert_eq!(err.body("")["Code"], "ResourceInUse");
    }
}
