//! The extractors of the orchestrator's endpoints: query strings, paths and bodies turned into values or a
//! 400 that names the problem, the client's version (for older response shapes) and the orchestrator handle.
//! Only a build with the `orchestrator` feature has these endpoints, so only it compiles this module.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::model::ci;
use crate::orchestrator::Orchestrator;

use super::AppState;
use super::error::HttpError;
use super::request::X_GIT_VERSION;

/// True when the client named its version in `X-Bacalhau-Git-Version` and it is older than
/// `major.minor`. Clients that send no (or an unreadable) version get the current shapes.
pub(crate) fn client_older_than(headers: &HeaderMap, major: u64, minor: u64) -> bool {
    let Some(version) = headers.get(&X_GIT_VERSION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let number = |p: Option<&str>| -> Option<u64> {
        let digits: String = p?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(parts.next()), number(parts.next())) {
        (Some(ma), Some(mi)) => (ma, mi) < (major, minor),
        _ => false,
    }
}

// === Query parameters ===

/// The query string as ordered pairs, so repeated keys (`labels`) survive and every bad value gets a 400
/// that names its parameter.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// The first value of the first of `names` present (Bacalhau and its Python client spell some names
    /// differently: `filter-approval` / `filter_approval`).
    pub(crate) fn get(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|name| {
            self.0
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        })
    }

    /// The first non-blank value of `name`, trimmed.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.get(&[name]).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every non-blank value of `name`.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean in Go's `strconv.ParseBool` forms; absent or blank → `false`.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, HttpError> {
        match self.text(name) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(HttpError::bad_request(format!(
                "query parameter {name}={other:?} is not a boolean (use true or false)"
            ))),
        }
    }

    /// A non-negative integer; absent or blank → `None`.
    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, HttpError> {
        self.text(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    HttpError::bad_request(format!(
                        "query parameter {name}={v:?} is not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    /// `limit` as a count; 0 or absent means the endpoint's default.
    pub(crate) fn limit(&self) -> Result<usize, HttpError> {
        Ok(self
            .number("limit")?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .unwrap_or(0))
    }

    /// `namespace`, defaulting to `default`.
    pub(crate) fn namespace(&self) -> &str {
        self.text("namespace").unwrap_or("default")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| Params(pairs))
            .map_err(|e| HttpError::bad_request(format!("query string: {}", e.body_text())))
    }
}

/// Offset paging for lists the orchestrator returns whole: the token is the offset of the next page.
pub(crate) fn page<T>(
    items: Vec<T>,
    limit: usize,
    token: Option<&str>,
) -> Result<(Vec<T>, String), HttpError> {
    let offset = match token {
        None => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            HttpError::bad_request(format!(
                "next_token {t:?} is not a token this server issued"
            ))
        })?,
    };
    let total = items.len();
    let limit = if limit == 0 { usize::MAX } else { limit };
    let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let end = offset.saturating_add(items.len());
    let next = if end < total {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items, next))
}

// === Paths and bodies ===

/// The `{id}` path segment.
#[derive(Debug)]
pub(crate) struct PathId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| PathId(id))
            .map_err(|e| HttpError::bad_request(format!("path: {}", e.body_text())))
    }
}

/// The raw body, within the body limit.
#[derive(Debug)]
pub(crate) struct Body {
    /// The `Content-Type`, to tell YAML from JSON.
    content_type: String,
    bytes: Bytes,
}

impl Body {
    /// A body as the extractor would produce it, for the fuzz targets (which have no HTTP request).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn new(content_type: &str, bytes: Bytes) -> Self {
        Body {
            content_type: content_type.to_ascii_lowercase(),
            bytes,
        }
    }

    /// Decodes the body case-insensitively into `T` (`what` names it in errors). An empty body is `None`.
    pub(crate) fn decode<T: DeserializeOwned>(&self, what: &str) -> Result<Option<T>, HttpError> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let value = if self.content_type.contains("yaml") {
            let text = std::str::from_utf8(&self.bytes).map_err(|e| {
                HttpError::bad_request(format!("request body is not UTF-8 text: {e}"))
            })?;
            ci::parse_document(text)
                .map_err(|e| HttpError::bad_request(format!("request body: {e}")))?
        } else {
            serde_json::from_slice(&self.bytes).map_err(|e| {
                HttpError::bad_request(format!("request body is not valid JSON: {e}"))
            })?
        };
        ci::from_value(value)
            .map(Some)
            .map_err(|e| HttpError::bad_request(format!("request body is not a valid {what}: {e}")))
    }
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BadRequest",
                    format!(
                        "request body is larger than the {} MiB limit",
                        super::BODY_LIMIT / (1024 * 1024)
                    ),
                )
            } else {
                HttpError::new(
                    e.status(),
                    "BadRequest",
                    format!("request body: {}", e.body_text()),
                )
            }
        })?;
        Ok(Body {
            content_type,
            bytes,
        })
    }
}

// === The orchestrator ===

/// The orchestrator handle; a node without one answers 404 for every orchestrator endpoint.
#[derive(Debug)]
pub(crate) struct Orch(pub(crate) Orchestrator);

impl FromRequestParts<AppState> for Orch {
    type Rejection = HttpError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        state
            .state
            .orchestrator
            .clone()
            .map(Orch)
            .ok_or_else(super::not_an_orchestrator)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn old_clients_are_recognised_by_their_version_header() {
        let mut h = HeaderMap::new();
        assert!(!client_older_than(&h, 1, 5));
        h.insert(X_GIT_VERSION, HeaderValue::from_static("v1.4.1"));
        assert!(client_older_than(&h, 1, 5));
        h.insert(X_GIT_VERSION, HeaderValue::from_static("v1.5.0-rc2"));
        assert!(!client_older_than(&h, 1, 5));
        h.insert(X_GIT_VERSION, HeaderValue::from_static("garbage"));
        assert!(!client_older_than(&h, 1, 5));
    }

    #[test]
    fn offset_pages_end_with_an_empty_token() {
        let (first, token) = page(vec![1, 2, 3], 2, None).expect("page");
        assert_eq!((first, token.as_str()), (vec![1, 2], "2"));
        let (rest, token) = page(vec![1, 2, 3], 2, Some("2")).expect("page");
        assert_eq!((rest, token.as_str()), (vec![3], ""));
        assert!(page(vec![1], 1, Some("x")).is_err());
    }
}
