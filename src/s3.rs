//! S3 over HTTP, shared by the `s3` input source, the `s3` publisher and the orchestrator's result signing:
//! addressing (endpoint, region, path- or virtual-host style), SigV4 signing, and the handful of calls Cod
//! makes, each retried with backoff on 5xx, 429 and network errors.
//!
//! Requests are signed with rusty-s3, which only builds SigV4 *query-string* signatures (pre-signed URLs);
//! they are sent with the node's reqwest client. The same signing serves the pre-signed result URLs. Without
//! credentials requests go unsigned (anonymous, for public buckets).
//!
//! Addressing: a spec's `Endpoint` (or the node's default, `S3.Endpoint`) is used path-style
//! (`http://host/bucket/key`), which every S3-compatible server understands; with neither, AWS is addressed
//! virtual-host style (`https://bucket.s3.region.amazonaws.com/key`), except for bucket names with dots,
//! which would not match AWS's TLS certificate and so go path-style.
//!
//! Must never show a signed URL (it carries the access key id and any session token) or a secret in a
//! message or log: errors name `s3://bucket/key` and say what the server answered.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, Url};
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, ListObjectsV2,
    ListObjectsV2Response, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde_json::{Map, Value};
use tracing::warn;

use crate::model::SpecConfig;

/// How long each signature made for one of our own requests stays valid: enough for a slow start on a
/// congested link; S3 checks it only when the request arrives.
const REQUEST_SIGNATURE_TTL: Duration = Duration::from_secs(15 * 60);

/// The region used when neither the spec nor the node names one (AWS's default).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Most bytes of an error body read for its `Code` and `Message`.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// S3 settings of a node: who it is, where to go by default, how hard to try.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// Signing identity; `None` = anonymous.
    credentials: Option<Credentials>,
    /// Region for specs that name none.
    pub default_region: String,
    /// Endpoint for specs that name none (empty = AWS).
    pub default_endpoint: String,
    /// Retry and time limits.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // rusty-s3's Credentials print the key id only; never the secret or the token.
        f.debug_struct("S3Settings")
            .field("credentials", &self.credentials)
            .field("default_region", &self.default_region)
            .field("default_endpoint", &self.default_endpoint)
            .field("retry", &self.retry)
            .finish()
    }
}

impl S3Settings {
    /// Settings signing with `access_key_id`/`secret` (and `session_token` when not empty); anonymous when
    /// `access_key_id` is empty.
    pub fn new(access_key_id: &str, secret: &str, session_token: &str) -> Self {
        let credentials = match (access_key_id.trim(), session_token.trim()) {
            ("", _) => None,
            (key, "") => Some(Credentials::new(key, secret)),
            (key, token) => Some(Credentials::new_with_token(key, secret, token)),
        };
        Self {
            credentials,
            ..Self::default()
        }
    }

    /// Whether requests are signed.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }
}

/// Retry and time limits of S3 requests. Defaults follow Bacalhau's `InputSources` (3 tries, 5 min).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait before the second try; doubled for each later one.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between tries.
    pub max_backoff: Duration,
    /// Limit for one try, from connecting until the body is complete.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// An S3 request that failed. Messages name the object as `s3://bucket/key`, never a URL.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The endpoint, bucket or region cannot be made into a URL.
    #[error("{what} cannot be addressed: {reason}")]
    Address {
        /// `s3://bucket/key`.
        what: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{op} {what} failed: the server answered {status}{detail}{hint}")]
    Status {
        /// The operation (`reading`, `listing`, `uploading`).
        op: &'static str,
        /// `s3://bucket/key`.
        what: String,
        /// The HTTP status.
        status: StatusCode,
        /// S3's error code (`NoSuchKey`, `SignatureDoesNotMatch`), when the body had one.
        code: String,
        /// ` (Code: message)`, or empty.
        detail: String,
        /// `; check …`, or empty.
        hint: &'static str,
    },
    /// The request did not get an answer (network, timeout), even after retries.
    #[error("{op} {what} failed: {reason}")]
    Transport {
        /// The operation.
        op: &'static str,
        /// `s3://bucket/key`.
        what: String,
        /// Why, without the URL.
        reason: String,
    },
    /// The answer could not be understood.
    #[error("{op} {what} failed: the answer is not valid S3 XML ({reason})")]
    Malformed {
        /// The operation.
        op: &'static str,
        /// `s3://bucket/key`.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
}

impl S3Error {
    /// What went wrong without the operation and object, for callers that name them themselves.
    pub fn reason(&self) -> String {
        match self {
            S3Error::Address { reason, .. } => format!("it cannot be addressed: {reason}"),
            S3Error::Status {
                op,
                status,
                detail,
                hint,
                ..
            } => format!("{op}: the server answered {status}{detail}{hint}"),
            S3Error::Transport { op, reason, .. } => format!("{op}: {reason}"),
            S3Error::Malformed { op, reason, .. } => {
                format!("{op}: the answer is not valid S3 XML ({reason})")
            }
        }
    }

    /// The error S3 gives for a missing bucket, for servers that report it otherwise.
    pub fn no_such_bucket(target: &Target, key: &str) -> Self {
        status_error(
            "reading",
            &target.show(key),
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
        )
    }

    /// S3's error code, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            S3Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What HEAD says about an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHead {
    /// Its size in bytes, when the server said.
    pub size: Option<u64>,
    /// Its ETag, quotes included, as S3 sends it.
    pub etag: Option<String>,
    /// Its version id, on versioned buckets.
    pub version_id: Option<String>,
    /// Its Content-Type.
    pub content_type: Option<String>,
}

/// What an upload returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// The new object's version id, on versioned buckets.
    pub version_id: Option<String>,
}

/// Where requests go: a bucket at an endpoint, in a region, addressed path- or virtual-host style.
#[derive(Debug, Clone)]
pub struct Target {
    bucket: Bucket,
}

impl Target {
    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// `s3://bucket/key`, for messages.
    pub fn show(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }
}

/// Signs and sends S3 requests; cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Client {
    /// The node's HTTP client (TLS set up by the caller).
    http: reqwest::Client,
    /// Identity, defaults and limits.
    settings: Arc<S3Settings>,
}

/// Why one try failed, and whether another may help.
enum Attempt {
    Retry(String),
    Fail(S3Error),
}

// === impl S3Client ===

impl S3Client {
    /// A client sending through `http`.
    pub fn new(http: reqwest::Client, settings: S3Settings) -> Self {
        Self {
            http,
            settings: Arc::new(settings),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// Where requests for `bucket` go, given a spec's `region` and `endpoint` (empty = the node's defaults).
    pub fn target(&self, bucket: &str, region: &str, endpoint: &str) -> Result<Target, S3Error> {
        let region = first_non_empty(&[region, &self.settings.default_region, DEFAULT_REGION]);
        let endpoint = first_non_empty(&[endpoint, &self.settings.default_endpoint, ""]);
        let bad = |reason: String| S3Error::Address {
            what: format!("s3://{bucket}"),
            reason,
        };
        if bucket.is_empty() || bucket.contains('/') {
            return Err(bad(
                "a bucket name is required and cannot contain '/'".to_owned()
            ));
        }
        let (url, style) = if endpoint.is_empty() {
            let url = Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                .map_err(|e| bad(format!("region {region:?} does not make a host name ({e})")))?;
            // Dotted names break the wildcard TLS certificate of virtual-host addressing.
            let style = if bucket.contains('.') {
                UrlStyle::Path
            } else {
                UrlStyle::VirtualHost
            };
            (url, style)
        } else {
            // As the AWS SDKs do, a bare `host:port` means HTTPS.
            let with_scheme = if endpoint.contains("://") {
                endpoint.to_owned()
            } else {
                format!("https://{endpoint}")
            };
            let url = Url::parse(&with_scheme).map_err(|e| {
                bad(format!(
                    "endpoint {endpoint:?} is not a URL ({e}); use e.g. http://127.0.0.1:9000"
                ))
            })?;
            (url, UrlStyle::Path)
        };
        let bucket =
            Bucket::new(url, style, bucket.to_owned(), region.to_owned()).map_err(|e| {
                bad(format!(
                    "endpoint {endpoint:?} must be an http(s) URL with a host ({e:?})"
                ))
            })?;
        Ok(Target { bucket })
    }

    fn creds(&self) -> Option<&Credentials> {
        self.settings.credentials.as_ref()
    }

    /// A pre-signed GET URL of `key`, valid for `expires_in`. Unsigned (a plain URL) without credentials.
    pub fn presign_get(&self, target: &Target, key: &str, expires_in: Duration) -> Url {
        target.bucket.get_object(self.creds(), key).sign(expires_in)
    }

    /// HEAD of one object (of `version_id`, when given). HEAD answers have no body, so when one fails a
    /// one-byte GET fetches S3's error code and message: they tell a missing key from a missing bucket, and a
    /// bad signature from a denied one.
    pub async fn head_object(
        &self,
        target: &Target,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<ObjectHead, S3Error> {
        let what = target.show(key);
        let sign = || {
            let mut action = target.bucket.head_object(self.creds(), key);
            if let Some(v) = version_id {
                action.query_mut().insert("versionId", v.to_owned());
            }
            action.sign(REQUEST_SIGNATURE_TTL)
        };
        let result = self.send("reading", &what, || self.http.head(sign())).await;
        let response = match result {
            Ok(response) => response,
            Err(S3Error::Status { status, code, .. }) if code.is_empty() => {
                let detail = self
                    .get_object(target, key, version_id, None, Some("bytes=0-0"))
                    .await;
                return Err(match detail {
                    Err(e) => e,
                    Ok(_) => status_error("reading", &what, status, ""),
                });
            }
            Err(e) => return Err(e),
        };
        let headers = response.headers();
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(ObjectHead {
            size: text("content-length").and_then(|v| v.parse().ok()),
            etag: text("etag"),
            version_id: text("x-amz-version-id").filter(|v| v != "null"),
            content_type: text("content-type"),
        })
    }

    /// Whether the bucket exists (HEAD on it): `Ok(false)` on 404. Used to tell a missing bucket from a
    /// missing key where a server answers both with `NoSuchKey`.
    pub async fn bucket_exists(&self, target: &Target) -> Result<bool, S3Error> {
        let what = target.show("");
        let sign = || {
            target
                .bucket
                .head_bucket(self.creds())
                .sign(REQUEST_SIGNATURE_TTL)
        };
        match self.send("reading", &what, || self.http.head(sign())).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// GET of one object; the caller streams the body. `if_match` pins the ETag seen earlier, so an object
    /// replaced in between fails instead of mixing versions. Retries cover getting the answer's head; a body
    /// that breaks off is the caller's to retry.
    pub async fn get_object(
        &self,
        target: &Target,
        key: &str,
        version_id: Option<&str>,
        if_match: Option<&str>,
        range: Option<&str>,
    ) -> Result<reqwest::Response, S3Error> {
        let what = target.show(key);
        let sign = || {
            let mut action = target.bucket.get_object(self.creds(), key);
            if let Some(v) = version_id {
                action.query_mut().insert("versionId", v.to_owned());
            }
            action.sign(REQUEST_SIGNATURE_TTL)
        };
        self.send("reading", &what, || {
            let mut request = self.http.get(sign());
            if let Some(etag) = if_match {
                request = request.header("if-match", etag);
            }
            if let Some(range) = range {
                request = request.header("range", range);
            }
            request
        })
        .await
    }

    /// One page of ListObjectsV2 under `prefix`, continuing after `token`.
    pub async fn list_page(
        &self,
        target: &Target,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<ListObjectsV2Response, S3Error> {
        let what = target.show(prefix);
        let sign = || {
            let mut action: ListObjectsV2<'_> = target.bucket.list_objects_v2(self.creds());
            if !prefix.is_empty() {
                action.with_prefix(prefix);
            }
            if let Some(token) = token {
                action.with_continuation_token(token);
            }
            action.sign(REQUEST_SIGNATURE_TTL)
        };
        let response = self
            .send("listing", &what, || self.http.get(sign()))
            .await?;
        let body = self.body_text("listing", &what, response).await?;
        ListObjectsV2::parse_response(&body).map_err(|e| S3Error::Malformed {
            op: "listing",
            what,
            reason: e.to_string(),
        })
    }

    /// PUT of one object from memory.
    pub async fn put_object(
        &self,
        target: &Target,
        key: &str,
        body: Bytes,
    ) -> Result<Uploaded, S3Error> {
        let what = target.show(key);
        let sign = || {
            target
                .bucket
                .put_object(self.creds(), key)
                .sign(REQUEST_SIGNATURE_TTL)
        };
        let response = self
            .send("uploading", &what, || {
                self.http.put(sign()).body(body.clone())
            })
            .await?;
        Ok(Uploaded {
            version_id: version_header(&response),
        })
    }

    /// Starts a multipart upload and returns its id.
    pub async fn create_multipart(&self, target: &Target, key: &str) -> Result<String, S3Error> {
        let what = target.show(key);
        let sign = || {
            CreateMultipartUpload::new(&target.bucket, self.creds(), key)
                .sign(REQUEST_SIGNATURE_TTL)
        };
        let response = self
            .send("uploading", &what, || self.http.post(sign()))
            .await?;
        let body = self.body_text("uploading", &what, response).await?;
        CreateMultipartUpload::parse_response(&body)
            .map(|r| r.upload_id().to_owned())
            .map_err(|e| S3Error::Malformed {
                op: "uploading",
                what,
                reason: e.to_string(),
            })
    }

    /// Uploads part `number` (from 1) and returns its ETag.
    pub async fn upload_part(
        &self,
        target: &Target,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> Result<String, S3Error> {
        let what = target.show(key);
        let sign = || {
            UploadPart::new(&target.bucket, self.creds(), key, number, upload_id)
                .sign(REQUEST_SIGNATURE_TTL)
        };
        let response = self
            .send("uploading", &what, || {
                self.http.put(sign()).body(body.clone())
            })
            .await?;
        response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| S3Error::Malformed {
                op: "uploading",
                what,
                reason: format!("part {number} was accepted without an ETag"),
            })
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub async fn complete_multipart(
        &self,
        target: &Target,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<Uploaded, S3Error> {
        let what = target.show(key);
        let action = || {
            CompleteMultipartUpload::new(
                &target.bucket,
                self.creds(),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            )
        };
        let body = action().body();
        let response = self
            .send("uploading", &what, || {
                self.http
                    .post(action().sign(REQUEST_SIGNATURE_TTL))
                    .body(body.clone())
            })
            .await?;
        let version_id = version_header(&response);
        // S3 may answer 200 and still report a failure in the body.
        let text = self.body_text("uploading", &what, response).await?;
        if let Some((code, message)) = parse_error(&text) {
            return Err(S3Error::Status {
                op: "uploading",
                what,
                status: StatusCode::OK,
                hint: hint_for(&code),
                detail: format!(" ({code}: {message})"),
                code,
            });
        }
        Ok(Uploaded { version_id })
    }

    /// Abandons a multipart upload so its parts stop costing storage. Best effort: the caller already has
    /// the error that matters.
    pub async fn abort_multipart(&self, target: &Target, key: &str, upload_id: &str) {
        let what = target.show(key);
        let sign = || {
            AbortMultipartUpload::new(&target.bucket, self.creds(), key, upload_id)
                .sign(REQUEST_SIGNATURE_TTL)
        };
        if let Err(e) = self
            .send("aborting the upload of", &what, || self.http.delete(sign()))
            .await
        {
            warn!(object = %what, error = %crate::errors::chain(&e), "abandoned multipart upload left behind");
        }
    }

    /// Sends what `request` builds (signed anew for every try) until a 2xx answer, retrying network errors,
    /// 5xx and 429 with backoff. Any other answer is final, with S3's code and message when the body has them.
    async fn send(
        &self,
        op: &'static str,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, S3Error> {
        let policy = &self.settings.retry;
        let attempts = policy.max_attempts.max(1);
        let mut backoff = policy.initial_backoff;
        let mut attempt = 1;
        loop {
            match self.try_once(op, what, request()).await {
                Ok(response) => return Ok(response),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(reason)) if attempt < attempts => {
                    warn!(object = %what, attempt, %reason, "S3 request failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                    attempt += 1;
                }
                Err(Attempt::Retry(reason)) => {
                    return Err(S3Error::Transport {
                        op,
                        what: what.to_owned(),
                        reason: format!("{reason} (gave up after {attempts} attempts)"),
                    });
                }
            }
        }
    }

    async fn try_once(
        &self,
        op: &'static str,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Attempt> {
        let response = match request.timeout(self.settings.retry.timeout).send().await {
            Ok(response) => response,
            Err(e) if e.is_builder() || e.is_redirect() => {
                return Err(Attempt::Fail(S3Error::Transport {
                    op,
                    what: what.to_owned(),
                    reason: describe(&e),
                }));
            }
            Err(e) => return Err(Attempt::Retry(describe(&e))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_capped(response).await;
        let parsed = parse_error(&body);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let detail = parsed
                .map(|(c, m)| format!(" ({c}: {m})"))
                .unwrap_or_default();
            return Err(Attempt::Retry(format!(
                "the server answered {status}{detail}"
            )));
        }
        let (code, message) = parsed.unwrap_or_default();
        Err(Attempt::Fail(status_error_with(
            op, what, status, code, &message,
        )))
    }

    async fn body_text(
        &self,
        op: &'static str,
        what: &str,
        response: reqwest::Response,
    ) -> Result<String, S3Error> {
        response.text().await.map_err(|e| S3Error::Transport {
            op,
            what: what.to_owned(),
            reason: describe(&e),
        })
    }
}

/// The most files of one `plain` result the orchestrator signs; more would make `GET …/results` answers huge.
const MAX_SIGNED_FILES: usize = 10_000;

/// Turns `s3` published results into `s3PreSigned` ones for `GET …/jobs/{id}/results`, signed with the
/// orchestrator's own credentials, so whoever asks can download them without any. As in Bacalhau, a gzip
/// result (a key ending in `.tar.gz`) gets `PreSignedURL`. A `plain` result (a key ending in `/`) is listed
/// and gets `PreSignedURLs`, a map from each file's path below the key to its URL (a Cod extension: Bacalhau
/// leaves plain results unsigned). Anything else, or a result that cannot be listed, is returned as it was.
#[derive(Debug, Clone)]
pub struct ResultSigner {
    /// The orchestrator's identity and HTTP client (plain results are listed).
    client: S3Client,
    /// How long each URL is valid.
    expires_in: Duration,
}

impl ResultSigner {
    /// A signer using `client`, whose URLs expire after `expires_in`.
    pub fn new(client: S3Client, expires_in: Duration) -> Self {
        Self { client, expires_in }
    }

    /// `spec`, signed when it is an `s3` result (see the type's docs).
    pub async fn sign(&self, spec: SpecConfig) -> SpecConfig {
        if !spec.kind.trim().eq_ignore_ascii_case("s3") {
            return spec;
        }
        let param = |name: &str| {
            spec.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let (bucket, key) = (param("Bucket"), param("Key"));
        let target = match self
            .client
            .target(&bucket, &param("Region"), &param("Endpoint"))
        {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cannot sign an s3 result");
                return spec;
            }
        };
        let mut params = spec.params.clone();
        if key.ends_with(".tar.gz") {
            let url = self.client.presign_get(&target, &key, self.expires_in);
            params.insert("PreSignedURL".into(), Value::String(url.into()));
        } else if key.ends_with('/') {
            match self.sign_folder(&target, &key).await {
                Ok(urls) => {
                    params.insert("PreSignedURLs".into(), Value::Object(urls));
                }
                Err(e) => {
                    warn!(error = %crate::errors::chain(&e), "cannot list a plain s3 result to sign it");
                    return spec;
                }
            }
        } else {
            return spec;
        }
        SpecConfig {
            kind: "s3PreSigned".into(),
            params,
        }
    }

    async fn sign_folder(
        &self,
        target: &Target,
        prefix: &str,
    ) -> Result<Map<String, Value>, S3Error> {
        let mut urls = Map::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_page(target, prefix, token.as_deref())
                .await?;
            for object in page.contents {
                let Some(rel) = object.key.strip_prefix(prefix) else {
                    continue;
                };
                if rel.is_empty() || rel.ends_with('/') {
                    continue;
                }
                if urls.len() == MAX_SIGNED_FILES {
                    warn!(prefix = %target.show(prefix), "plain result has too many files; signing the first {MAX_SIGNED_FILES}");
                    return Ok(urls);
                }
                let url = self
                    .client
                    .presign_get(target, &object.key, self.expires_in);
                urls.insert(rel.to_owned(), Value::String(url.into()));
            }
            match page.next_continuation_token {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => return Ok(urls),
            }
        }
    }
}

fn status_error(op: &'static str, what: &str, status: StatusCode, code: &str) -> S3Error {
    status_error_with(op, what, status, code.to_owned(), "")
}

fn status_error_with(
    op: &'static str,
    what: &str,
    status: StatusCode,
    code: String,
    message: &str,
) -> S3Error {
    let detail = match (code.is_empty(), message.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(" ({code})"),
        (false, false) => format!(" ({code}: {message})"),
    };
    let hint = if code.is_empty() && status == StatusCode::FORBIDDEN {
        CREDENTIALS_HINT
    } else {
        hint_for(&code)
    };
    S3Error::Status {
        op,
        what: what.to_owned(),
        status,
        code,
        detail,
        hint,
    }
}

const CREDENTIALS_HINT: &str = "; check the node's S3 credentials (S3.AccessKeyID and S3.SecretAccessKey, or \
     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and that they may access the bucket";

/// What to do about an S3 error code.
fn hint_for(code: &str) -> &'static str {
    match code {
        "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "AccessDenied"
        | "ExpiredToken"
        | "InvalidToken"
        | "AllAccessDisabled" => CREDENTIALS_HINT,
        "NoSuchBucket" => "; check the bucket name, Endpoint and Region",
        "NoSuchKey" | "NoSuchVersion" => "; check Key and VersionID",
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => "; the bucket is in another region: set Region",
        "PreconditionFailed" => "; the object changed while it was read, try again",
        _ => "",
    }
}

/// `x-amz-version-id`, unless absent or S3's `null` (unversioned bucket).
fn version_header(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-amz-version-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && *v != "null")
        .map(str::to_owned)
}

/// The first few KiB of an error body (never the whole of a huge one).
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// `Code` and `Message` of an S3 `<Error>` document.
fn parse_error(body: &str) -> Option<(String, String)> {
    if !body.contains("<Error") {
        return None;
    }
    let element = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        Some(unescape_xml(body[start..end].trim()))
    };
    let code = element("Code")?;
    // A message is shown to users; keep it to one short line.
    let message: String = element("Message")
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    Some((code, message))
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn first_non_empty<'a>(candidates: &[&'a str]) -> &'a str {
    candidates
        .iter()
        .map(|s| s.trim())
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

/// A reqwest error and its causes on one line, without the URL (which holds the signature and any token).
pub fn describe(e: &reqwest::Error) -> String {
    let first: Cow<'static, str> = if e.is_connect() {
        "connecting failed".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed".into()
    } else if e.is_redirect() {
        "following redirects failed".into()
    } else {
        "the request failed".into()
    };
    let mut text = first.into_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(settings: S3Settings) -> S3Client {
        // reqwest is built without a default provider (main installs ring); tests run in any order.
        let _ = rustls::crypto::ring::default_provider().install_default();
        S3Client::new(reqwest::Client::new(), settings)
    }

    #[test]
    fn addresses_custom_endpoints_path_style_and_aws_virtual_host_style() {
        let c = client(S3Settings::default());
        let t = c
            .target("data", "eu-west-1", "http://127.0.0.1:9000")
            .expect("target");
        let url = c.presign_get(&t, "dir/a b.txt", Duration::from_secs(60));
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/data/dir/a%20b.txt");

        let t = c.target("data", "eu-west-1", "").expect("aws");
        let url = c.presign_get(&t, "k", Duration::from_secs(60));
        assert_eq!(url.as_str(), "https://data.s3.eu-west-1.amazonaws.com/k");

        let t = c.target("my.data", "", "").expect("dotted");
        let url = c.presign_get(&t, "k", Duration::from_secs(60));
        assert_eq!(url.as_str(), "https://s3.us-east-1.amazonaws.com/my.data/k");

        let t = c.target("b", "", "minio.lan:9000").expect("bare host");
        assert!(
            c.presign_get(&t, "k", Duration::from_secs(1))
                .as_str()
                .starts_with("https://minio.lan:9000/b/")
        );
    }

    #[test]
    fn node_defaults_fill_what_the_spec_leaves_out() {
        let mut settings = S3Settings {
            default_region: "ap-south-1".into(),
            ..S3Settings::default()
        };
        let c = client(settings.clone());
        let t = c.target("b", "", "").expect("target");
        assert!(
            c.presign_get(&t, "k", Duration::from_secs(1))
                .as_str()
                .contains("ap-south-1")
        );
        settings.default_endpoint = "http://127.0.0.1:1".into();
        let c = client(settings);
        let t = c.target("b", "", "").expect("target");
        assert!(
            c.presign_get(&t, "k", Duration::from_secs(1))
                .as_str()
                .starts_with("http://127.0.0.1:1/b/k")
        );
    }

    #[test]
    fn rejects_unusable_addresses() {
        let c = client(S3Settings::default());
        for (bucket, endpoint) in [
            ("", "http://h"),
            ("a/b", "http://h"),
            ("b", "ftp://h"),
            ("b", "http://"),
        ] {
            assert!(
                matches!(c.target(bucket, "", endpoint), Err(S3Error::Address { .. })),
                "{bucket} {endpoint}"
            );
        }
    }

    #[test]
    fn signs_with_credentials_and_token_but_never_shows_the_secret() {
        let settings = S3Settings::new("AKIATEST", "s3cr3t-value", "tok3n");
        assert!(settings.has_credentials());
        let c = client(settings.clone());
        let t = c
            .target("b", "us-east-1", "http://127.0.0.1:9")
            .expect("target");
        let url = c.presign_get(&t, "k", Duration::from_secs(600));
        let query = url.query().unwrap_or_default();
        assert!(query.contains("X-Amz-Credential=AKIATEST"), "{query}");
        assert!(
            query.contains("X-Amz-Expires=600") && query.contains("X-Amz-Signature="),
            "{query}"
        );
        assert!(query.contains("X-Amz-Security-Token=tok3n"), "{query}");
        assert!(!url.as_str().contains("s3cr3t"));
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert!(!S3Settings::new("", "x", "").has_credentials());
    }

    #[test]
    fn parses_s3_error_documents() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match &amp; so on</Message></Error>"#;
        let (code, message) = parse_error(body).expect("error document");
        assert_eq!(code, "SignatureDoesNotMatch");
        assert_eq!(
            message,
            "The request signature we calculated does not match & so on"
        );
        assert_eq!(parse_error("<html>oops</html>"), None);
        let e = status_error_with("reading", "s3://b/k", StatusCode::FORBIDDEN, code, &message);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "reading s3://b/k failed: the server answered 403 Forbidden (SignatureDoesNotMatch:"
            ),
            "{text}"
        );
        assert!(text.contains("S3.SecretAccessKey"), "{text}");
        assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
    }

    #[tokio::test]
    async fn signs_gzip_results_and_leaves_others_alone() {
        let signer = ResultSigner::new(
            client(S3Settings::new("AKIATEST", "secret", "")),
            Duration::from_secs(90),
        );
        let spec = |kind: &str, key: &str| SpecConfig {
            kind: kind.into(),
            params:
                serde_json::json!({"Bucket": "r", "Key": key, "Endpoint": "http://127.0.0.1:9"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
        };
        let signed = signer.sign(spec("s3", "jobs/e-1.tar.gz")).await;
        assert_eq!(signed.kind, "s3PreSigned");
        let url = signed.params["PreSignedURL"].as_str().unwrap_or_default();
        assert!(
            url.starts_with("http://127.0.0.1:9/r/jobs/e-1.tar.gz?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=90"), "{url}");
        assert_eq!(signed.params["Bucket"], "r", "the S3 fields stay");
        let local = spec("urlDownload", "x");
        assert_eq!(signer.sign(local.clone()).await, local);
        let odd = spec("s3", "not-a-tarball");
        assert_eq!(
            signer.sign(odd.clone()).await,
            odd,
            "as Bacalhau: only .tar.gz keys are signed"
        );
    }
}
