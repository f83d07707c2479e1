//! The `urlDownload` source: one HTTP(S) GET, streamed to `scratch/<name>`; the volume is the scratch
//! directory, so the task sees the file at `<Target>/<name>` as in Bacalhau.
//!
//! `<name>` is the URL's last path segment (percent-decoded), else the `Content-Disposition` filename, else
//! `download`, always reduced to one safe path component. Connect errors, timeouts, broken bodies, 5xx and 429
//! are retried with exponential backoff (bounded attempts); any other 4xx fails at once, since asking again
//! will not change the answer. The size cap is checked against `Content-Length` before the body and against
//! the bytes actually received while streaming, because servers may omit or understate the header.
//!
//! With a `Checksum` (`sha256:<hex>` or bare hex) the body is hashed while it streams and compared at the
//! end; a mismatch fails at once (asking again would fetch the same wrong bytes) and removes the file. A
//! checksum also gives the input a [`ContentId`], which lets the compute node cache it.
//!
//! Must never put credentials in a message or log: URLs are shown with their userinfo removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{CONTENT_DISPOSITION, HeaderMap};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use super::filename;
use super::{ContentId, StorageError, StorageSource, Volume};
use crate::model::{InputSpec, SourceKind};

/// The file name when neither the URL nor the response names one.
const DEFAULT_NAME: &str = "download";

/// Settings of the URL source. The defaults follow Bacalhau's `InputSources` (5 min read timeout, 3 tries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSourceConfig {
    /// Tries per download, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait before the second try; doubled for each later one.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between tries.
    pub max_backoff: Duration,
    /// The most bytes one download may have.
    pub max_size: u64,
    /// Limit for one try, from connecting until the body is complete.
    pub timeout: Duration,
    /// Limit for establishing a connection (used only when [`UrlSource::new`] builds the client).
    pub connect_timeout: Duration,
}

impl Default for UrlSourceConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_size: 1024 * 1024 * 1024,
            timeout: Duration::from_secs(5 * 60),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Prepares `urlDownload` inputs; see the module docs.
#[derive(Debug, Clone)]
pub struct UrlSource {
    /// Shared connection pool; cheap to clone.
    client: reqwest::Client,
    /// Retry, size and time limits.
    config: Arc<UrlSourceConfig>,
}

/// Why one try failed, and whether another try may help.
#[derive(Debug)]
enum Attempt {
    /// Worth another try (network trouble, 5xx, 429).
    Retry(String),
    /// Final.
    Fail(StorageError),
}

// === impl UrlSource ===

impl UrlSource {
    /// A URL source with its own client. TLS uses rustls with the *ring* provider, set explicitly on this
    /// client rather than installed process-wide, and the platform's root certificates.
    ///
    /// Fails when the TLS setup fails, typically because the system has no CA certificates (install the
    /// `ca-certificates` package).
    pub fn new(config: UrlSourceConfig) -> Result<Self, StorageError> {
        let setup = |reason: String| StorageError::Setup {
            backend: SourceKind::UrlDownload.as_str(),
            reason,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new(Arc::clone(&provider)).map_err(|e| {
                setup(format!(
                    "loading the system's CA certificates failed ({e}); install ca-certificates"
                ))
            })?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(format!("configuring TLS failed ({e})")))?
            .dangerous()
            // Not dangerous: this is the platform verifier, the same one reqwest would pick; rustls only calls
            // every custom verifier "dangerous".
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("cod/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                setup(format!(
                    "building the HTTP client failed ({})",
                    error_chain(&e)
                ))
            })?;
        Ok(Self::with_client(client, config))
    }

    /// A URL source using `client` (shared with other parts of the node, or a test's).
    pub fn with_client(client: reqwest::Client, config: UrlSourceConfig) -> Self {
        Self {
            client,
            config: Arc::new(config),
        }
    }

    /// One GET into `scratch`, checked against `checksum` (hex) when given. Removes a partial or mismatching
    /// file on failure so that a retry (or the task) never sees it.
    async fn attempt(
        &self,
        url: &Url,
        shown: &str,
        checksum: Option<&str>,
        scratch: &Path,
    ) -> Result<PathBuf, Attempt> {
        let mut response = match self
            .client
            .get(url.clone())
            .timeout(self.config.timeout)
            .send()
            .await
        {
            Ok(response) => response,
            // A redirect loop or a request reqwest cannot build will fail the same way again.
            Err(e) if e.is_redirect() || e.is_builder() => {
                return Err(Attempt::Fail(StorageError::Download {
                    url: shown.to_owned(),
                    reason: error_chain(&e),
                }));
            }
            Err(e) => return Err(Attempt::Retry(error_chain(&e))),
        };
        let status = response.status();
        if !status.is_success() {
            let reason = format!("the server answered {status}");
            return if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                Err(Attempt::Retry(reason))
            } else {
                Err(Attempt::Fail(StorageError::Download {
                    url: shown.to_owned(),
                    reason: format!("{reason}; check the URL and that it is public"),
                }))
            };
        }
        let too_large = || {
            Attempt::Fail(StorageError::TooLarge {
                what: shown.to_owned(),
                limit: self.config.max_size,
            })
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.config.max_size)
        {
            return Err(too_large());
        }
        let name = file_name(url, response.headers());
        let path = scratch.join(name);
        let result: Result<(), Attempt> = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Attempt::Fail(StorageError::io("creating", &path)(e)))?;
            let mut received: u64 = 0;
            // Hashing as the chunks pass costs no second read of the file.
            let mut hasher = checksum.map(|_| Sha256::new());
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Attempt::Retry(format!(
                            "the body broke off: {}",
                            error_chain(&e)
                        )));
                    }
                };
                received += chunk.len() as u64;
                if received > self.config.max_size {
                    return Err(too_large());
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| Attempt::Fail(StorageError::io("writing", &path)(e)))?;
            }
            if let (Some(expected), Some(h)) = (checksum, hasher) {
                let actual = format!("{:x}", h.finalize());
                if actual != expected {
                    return Err(Attempt::Fail(StorageError::ChecksumMismatch {
                        url: shown.to_owned(),
                        expected: expected.to_owned(),
                        actual,
                    }));
                }
            }
            // tokio's File finishes writes in the background; flush makes them complete (and their errors
            // visible) before the task is started.
            file.flush()
                .await
                .map_err(|e| Attempt::Fail(StorageError::io("writing", &path)(e)))
        }
        .await;
        match result {
            Ok(()) => Ok(path),
            Err(e) => {
                // Best effort: the scratch directory is removed with the execution anyway.
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl StorageSource for UrlSource {
    fn kind(&self) -> SourceKind {
        SourceKind::UrlDownload
    }

    fn validate(&self, spec: &InputSpec) -> Result<(), StorageError> {
        parse_url(spec).map(|_| ())
    }

    /// `urlDownload:sha256:<hex>/<name>` when the input has a checksum: the hash pins the bytes, the name
    /// pins where they land. The name comes from the URL; when the URL has none (the server picks it with
    /// Content-Disposition) a hash of the URL without userinfo stands in for it, so two such URLs never
    /// share an entry.
    async fn content_id(&self, spec: &InputSpec) -> Result<Option<ContentId>, StorageError> {
        let (url, checksum) = parse_url(spec)?;
        let Some(hex) = checksum else {
            return Ok(None);
        };
        let name = url_file_name(&url).unwrap_or_else(|| {
            let digest = Sha256::digest(redact(url.as_str()).as_bytes());
            format!("?url-sha256:{digest:x}")
        });
        Ok(Some(ContentId::new(
            SourceKind::UrlDownload,
            format!("sha256:{hex}/{name}"),
        )))
    }

    async fn prepare(&self, spec: &InputSpec, scratch: &Path) -> Result<Volume, StorageError> {
        let (url, checksum) = parse_url(spec)?;
        let shown = redact(url.as_str());
        let attempts = self.config.max_attempts.max(1);
        let mut attempt = 1;
        let mut backoff = self.config.initial_backoff;
        loop {
            match self
                .attempt(&url, &shown, checksum.as_deref(), scratch)
                .await
            {
                Ok(_) => {
                    return Ok(Volume {
                        host_path: scratch.to_owned(),
                        read_only: true,
                    });
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(reason)) if attempt < attempts => {
                    warn!(url = %shown, attempt, %reason, "download failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
                Err(Attempt::Retry(reason)) => {
                    return Err(StorageError::Download {
                        url: shown,
                        reason: format!("{reason} (gave up after {attempts} attempts)"),
                    });
                }
            }
        }
    }
}

/// The URL and the checksum (lowercase hex) of a `urlDownload` spec.
fn parse_url(spec: &InputSpec) -> Result<(Url, Option<String>), StorageError> {
    let (raw, checksum) = match spec {
        InputSpec::UrlDownload { url, checksum } => (url, checksum),
        other => {
            return Err(StorageError::WrongKind {
                kind: other.type_name().to_owned(),
                backend: SourceKind::UrlDownload.as_str(),
            });
        }
    };
    let bad = |reason: String| StorageError::Download {
        url: redact(raw),
        reason,
    };
    let url = Url::parse(raw).map_err(|e| bad(format!("it is not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https URLs can be downloaded".to_owned()));
    }
    Ok((url, checksum.clone()))
}

/// The file name the URL itself gives (its last path segment), if any.
fn url_file_name(url: &Url) -> Option<String> {
    url.path_segments()
        .and_then(|mut segments| segments.next_back())
        .and_then(|last| {
            filename::sanitize(&String::from_utf8_lossy(&filename::percent_decode(last)))
        })
}

/// The file name for a download: see the module docs.
fn file_name(url: &Url, headers: &HeaderMap) -> String {
    url_file_name(url)
        .or_else(|| {
            headers
                .get(CONTENT_DISPOSITION)
                .and_then(|v| v.to_str().ok())
                .and_then(disposition_name)
        })
        .unwrap_or_else(|| DEFAULT_NAME.to_owned())
}

/// The file name in a `Content-Disposition` value (RFC 6266): `filename*=UTF-8''…` wins over `filename=`.
/// Only the last path component of a name is kept.
fn disposition_name(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in value.split(';').skip(1) {
        let Some((key, val)) = param.split_once('=') else {
            continue;
        };
        let val = val.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                // charset'language'percent-encoded-value
                let encoded = val.splitn(3, '\'').nth(2).unwrap_or(val);
                extended =
                    Some(String::from_utf8_lossy(&filename::percent_decode(encoded)).into_owned());
            }
            "filename" => plain = Some(val.trim_matches('"').to_owned()),
            _ => {}
        }
    }
    let name = extended.or(plain)?;
    let last = name.rsplit(['/', '\\']).next().unwrap_or(&name);
    filename::sanitize(last)
}

/// `url` without userinfo, for messages and logs.
fn redact(url: &str) -> String {
    if let Ok(mut parsed) = Url::parse(url) {
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Both only fail for URLs that cannot have credentials, which then have none to hide.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
        }
        return parsed.into();
    }
    // Unparseable: cut anything between the scheme and an '@' in the authority by hand.
    if let Some(start) = url.find("://").map(|i| i + 3) {
        let rest = &url[start..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}{}", &url[..start], &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// A reqwest error and its causes as one line, without the URL (reqwest would print it with credentials).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut first = true;
    while let Some(err) = current {
        let part = if first {
            // reqwest's own Display appends " for url (...)"; rebuild it without.
            if e.is_connect() {
                "connecting failed".to_owned()
            } else if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_body() || e.is_decode() {
                "reading the body failed".to_owned()
            } else if e.is_redirect() {
                "following redirects failed".to_owned()
            } else {
                "the request failed".to_owned()
            }
        } else {
            err.to_string()
        };
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
        first = false;
        current = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;

    /// Requests seen by the test server, so tests can tell "failed at once" from "retried".
    type Hits = Arc<AtomicUsize>;

    fn config() -> UrlSourceConfig {
        // Backoff shortened so retries do not slow the suite; the waits are the code's, not the test's.
        UrlSourceConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..Default::default()
        }
    }

    fn test_source(config: UrlSourceConfig) -> UrlSource {
        // reqwest is built without a default crypto provider; install ring for this test process (a second
        // install fails harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        UrlSource::with_client(reqwest::Client::new(), config)
    }

    fn spec(url: impl Into<String>) -> InputSpec {
        InputSpec::UrlDownload {
            url: url.into(),
            checksum: None,
        }
    }

    fn checked(url: impl Into<String>, checksum: &str) -> InputSpec {
        InputSpec::UrlDownload {
            url: url.into(),
            checksum: Some(checksum.to_owned()),
        }
    }

    async fn flaky(State(hits): State<Hits>) -> impl IntoResponse {
        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
            (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response()
        } else {
            "finally".into_response()
        }
    }

    async fn counted(
        State(hits): State<Hits>,
        status: StatusCode,
        body: &'static str,
    ) -> impl IntoResponse {
        hits.fetch_add(1, Ordering::SeqCst);
        (status, body)
    }

    /// Serves the test routes on 127.0.0.1:0 until the test's runtime ends.
    async fn serve() -> (String, Hits) {
        let hits = Hits::default();
        let router = Router::new()
            .route("/files/{name}", get(|| async { "content" }))
            .route(
                "/",
                get(|| async {
                    (
                        [(
                            header::CONTENT_DISPOSITION,
                            "attachment; filename=\"report.txt\"",
                        )],
                        "cd",
                    )
                }),
            )
            .route("/bare/", get(|| async { "bare" }))
            .route(
                "/missing",
                get(|s: State<Hits>| counted(s, StatusCode::NOT_FOUND, "no")),
            )
            .route(
                "/busy",
                get(|s: State<Hits>| counted(s, StatusCode::TOO_MANY_REQUESTS, "later")),
            )
            .route("/flaky", get(flaky))
            .route(
                "/big",
                get(|s: State<Hits>| counted(s, StatusCode::OK, "0123456789abcdef")),
            )
            .route(
                "/stream",
                get(|| async {
                    // No Content-Length: only counting while streaming can catch this one.
                    let chunks = (0..16)
                        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"0123456789")));
                    Body::from_stream(futures::stream::iter(chunks))
                }),
            )
            .with_state(Arc::clone(&hits));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        (format!("http://{addr}"), hits)
    }

    #[tokio::test]
    async fn downloads_into_scratch_named_after_the_url() {
        let (base, _) = serve().await;
        let scratch = tempfile::tempdir().expect("tempdir");
        let source = UrlSource::new(config()).expect("client with the platform verifier");
        let volume = source
            .prepare(&spec(format!("{base}/files/my%20data.csv")), scratch.path())
            .await
            .expect("prepare");
        assert_eq!(
            volume,
            Volume {
                host_path: scratch.path().to_owned(),
                read_only: true
            }
        );
        assert_eq!(
            std::fs::read(scratch.path().join("my data.csv")).expect("file"),
            b"content"
        );
    }

    #[tokio::test]
    async fn falls_back_to_content_disposition_then_download() {
        let (base, _) = serve().await;
        let source = test_source(config());
        let scratch = tempfile::tempdir().expect("tempdir");
        source
            .prepare(&spec(format!("{base}/")), scratch.path())
            .await
            .expect("prepare");
        assert_eq!(
            std::fs::read(scratch.path().join("report.txt")).expect("file"),
            b"cd"
        );
        let scratch = tempfile::tempdir().expect("tempdir");
        source
            .prepare(&spec(format!("{base}/bare/")), scratch.path())
            .await
            .expect("prepare");
        assert_eq!(
            std::fs::read(scratch.path().join("download")).expect("file"),
            b"bare"
        );
        // An encoded separator cannot climb out of scratch.
        let scratch = tempfile::tempdir().expect("tempdir");
        source
            .prepare(
                &spec(format!("{base}/files/..%2F..%2Fevil")),
                scratch.path(),
            )
            .await
            .expect("prepare");
        assert!(scratch.path().join(".._.._evil").is_file());
    }

    #[tokio::test]
    async fn a_404_fails_at_once_naming_the_status_without_credentials() {
        let (base, hits) = serve().await;
        let scratch = tempfile::tempdir().expect("tempdir");
        let url = base.replace("http://", "http://user:hunter2@") + "/missing";
        let err = test_source(config())
            .prepare(&spec(url), scratch.path())
            .await
            .expect_err("404");
        let text = err.to_string();
        assert!(text.contains("404"), "{text}");
        assert!(
            text.contains("/missing") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(
            std::fs::read_dir(scratch.path()).expect("scratch").count(),
            0
        );
    }

    #[tokio::test]
    async fn retries_server_errors_until_success() {
        let (base, hits) = serve().await;
        let scratch = tempfile::tempdir().expect("tempdir");
        test_source(config())
            .prepare(&spec(format!("{base}/flaky")), scratch.path())
            .await
            .expect("retried");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!(
            std::fs::read(scratch.path().join("flaky")).expect("file"),
            b"finally"
        );
    }

    #[tokio::test]
    async fn gives_up_after_the_configured_attempts() {
        let (base, hits) = serve().await;
        let scratch = tempfile::tempdir().expect("tempdir");
        let err = test_source(config())
            .prepare(&spec(format!("{base}/busy")), scratch.path())
            .await
            .expect_err("429");
        assert!(
            err.to_string().contains("gave up after 3 attempts"),
            "{err}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        // Connection refused: a port that was just free.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = test_source(config())
            .prepare(&spec(format!("http://{addr}/x")), scratch.path())
            .await;
        assert!(matches!(err, Err(StorageError::Download { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn enforces_the_size_cap() {
        let (base, hits) = serve().await;
        let small = UrlSourceConfig {
            max_size: 8,
            ..config()
        };
        let scratch = tempfile::tempdir().expect("tempdir");
        let err = test_source(small.clone())
            .prepare(&spec(format!("{base}/big")), scratch.path())
            .await;
        assert!(
            matches!(err, Err(StorageError::TooLarge { limit: 8, .. })),
            "{err:?}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1, "too large is final");
        let err = test_source(small)
            .prepare(&spec(format!("{base}/stream")), scratch.path())
            .await;
        assert!(
            matches!(err, Err(StorageError::TooLarge { limit: 8, .. })),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read_dir(scratch.path()).expect("scratch").count(),
            0,
            "partial file removed"
        );
    }

    /// SHA-256 of "content", the body of `/files/{name}`.
    const CONTENT_SHA256: &str = "ed7002b439e9ac845f22357d822bac1444730fbdb6016d3ec9432297b9ec9f73";

    #[tokio::test]
    async fn verifies_the_checksum_while_streaming() {
        let (base, _) = serve().await;
        let source = test_source(config());
        let scratch = tempfile::tempdir().expect("tempdir");
        source
            .prepare(
                &checked(format!("{base}/files/data.csv"), CONTENT_SHA256),
                scratch.path(),
            )
            .await
            .expect("matching checksum");
        assert_eq!(
            std::fs::read(scratch.path().join("data.csv")).expect("file"),
            b"content"
        );
    }

    #[tokio::test]
    async fn a_checksum_mismatch_fails_at_once_and_keeps_nothing() {
        let (base, hits) = serve().await;
        let scratch = tempfile::tempdir().expect("tempdir");
        let wrong = "0".repeat(64);
        let url = base.replace("http://", "http://user:hunter2@") + "/big";
        let err = test_source(config())
            .prepare(&checked(url, &wrong), scratch.path())
            .await
            .expect_err("mismatch");
        assert!(
            matches!(err, StorageError::ChecksumMismatch { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("/big") && !text.contains("hunter2"), "{text}");
        assert!(text.contains(&wrong), "expected digest named: {text}");
        // sha256("0123456789abcdef")
        assert!(
            text.contains("9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f"),
            "actual digest named: {text}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1, "a mismatch is not retried");
        assert_eq!(
            std::fs::read_dir(scratch.path()).expect("scratch").count(),
            0,
            "nothing partial left"
        );
    }

    #[tokio::test]
    async fn content_ids_need_a_checksum_and_pin_the_name() {
        let source = test_source(config());
        let none = source
            .content_id(&spec("http://h/a.csv"))
            .await
            .expect("id");
        assert_eq!(none, None, "a URL alone is mutable");
        let id = |url: &str| {
            let source = source.clone();
            let spec = checked(url, CONTENT_SHA256);
            async move { source.content_id(&spec).await.expect("id").expect("some") }
        };
        let a = id("http://h/a.csv").await;
        assert_eq!(
            a.as_str(),
            format!("urlDownload:sha256:{CONTENT_SHA256}/a.csv")
        );
        assert_eq!(
            a,
            id("https://mirror.example/x/a.csv").await,
            "same bytes, same name"
        );
        assert_ne!(
            a,
            id("http://h/b.csv").await,
            "another name is another volume"
        );
        let nameless = id("http://u:secret@h/").await;
        assert!(!nameless.as_str().contains("secret"), "{nameless}");
        assert_ne!(nameless, id("http://other/").await);
    }

    #[test]
    fn validates_urls() {
        let source = test_source(config());
        assert!(source.validate(&spec("http://example.com/x")).is_ok());
        assert!(source.validate(&spec("ftp://example.com/x")).is_err());
        assert!(source.validate(&spec("not a url")).is_err());
        assert!(matches!(
            source.validate(&InputSpec::Inline {
                url: "data:,x".into()
            }),
            Err(StorageError::WrongKind { .. })
        ));
    }

    #[test]
    fn reads_content_disposition_names() {
        assert_eq!(
            disposition_name("attachment; filename=\"a b.txt\"").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(
            disposition_name("attachment; filename=x; filename*=UTF-8''%C3%A9t%C3%A9.csv")
                .as_deref(),
            Some("été.csv")
        );
        assert_eq!(
            disposition_name("attachment; filename=\"../../etc/passwd\"").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            disposition_name("attachment; filename=\"..\"").as_deref(),
            None
        );
        assert_eq!(disposition_name("inline").as_deref(), None);
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("https://u:p@host/x?q=1"), "https://host/x?q=1");
        assert_eq!(redact("https://host/x"), "https://host/x");
        assert_eq!(redact("http://u:p@[bad/x"), "http://[bad/x");
    }
}
