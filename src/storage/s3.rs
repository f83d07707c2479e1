//! The `s3` source: one object, or every object under a prefix, from S3 or any S3-compatible server,
//! streamed into the input's scratch directory, which becomes the volume (as in Bacalhau).
//!
//! What lands where (Bacalhau's rules): a `Key` that ends in neither `/` nor `*` names one object, checked
//! with HEAD first (size, ETag, version) and written as `scratch/<last segment of the key>`. A `Key` ending in
//! `/` or `*`, an empty one, or one whose HEAD says `application/x-directory`, is a prefix: every object
//! listed under it (ListObjectsV2, all pages) whose key, with the prefix removed, matches `Filter` is written
//! at its key relative to the prefix's folder (`logs/2024/` → `a.gz`, `sub/b.gz`; `logs/app-*` → `app-1.gz`).
//! Keys ending in `/` are folder markers and become folders.
//!
//! Listed keys come from the server and are untrusted: a key whose relative path is absolute or has an
//! empty, `.` or `..` segment is refused with an error naming it, never rewritten, so nothing is ever written
//! outside the scratch directory (which starts empty and only ever gains real folders, so no symlink can be
//! in the way). Each GET sends `If-Match` with the ETag seen in HEAD or the listing, so an object replaced in
//! between fails instead of mixing versions. `ChecksumSHA256` (base64 as S3 reports it, or hex) is checked
//! against the bytes received, so it holds whatever the server stores. The total size of an input is
//! capped, checked against sizes announced up front and against bytes actually received.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use regex_lite::Regex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::{ContentId, StorageError, StorageSource, Volume};
use crate::model::{InputSpec, S3SourceParams, SourceKind};
use crate::s3::{S3Client, S3Error, Target};

/// Limits of the S3 source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3SourceConfig {
    /// The most bytes one input may have, all objects together.
    pub max_size: u64,
    /// The most objects one prefix input may list, so a huge bucket cannot keep a node listing forever.
    pub max_objects: usize,
}

impl Default for S3SourceConfig {
    fn default() -> Self {
        Self {
            max_size: 1024 * 1024 * 1024,
            max_objects: 100_000,
        }
    }
}

/// Prepares `s3` inputs; see the module docs.
#[derive(Debug, Clone)]
pub struct S3Source {
    /// Signs and sends the requests (the node's credentials and HTTP client).
    client: S3Client,
    /// Size and count limits.
    config: Arc<S3SourceConfig>,
}

/// An `s3` spec checked and decoded once.
#[derive(Debug)]
struct Plan<'a> {
    params: &'a S3SourceParams,
    target: Target,
    filter: Option<Regex>,
    checksum: Option<[u8; 32]>,
}

/// One object to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetch {
    key: String,
    /// Where it goes, relative to the scratch directory.
    rel: PathBuf,
    /// A folder marker: create the folder, fetch nothing.
    is_dir: bool,
    etag: Option<String>,
    size: Option<u64>,
}

// === impl S3Source ===

impl S3Source {
    /// A source using `client`.
    pub fn new(client: S3Client, config: S3SourceConfig) -> Self {
        Self {
            client,
            config: Arc::new(config),
        }
    }

    /// A cheap identity of the content a spec names, for caches: for a single object,
    /// `s3://bucket/key?endpoint=…&region=…&versionId=…#<etag>` from one HEAD request (the ETag changes
    /// whenever the object does). `None` for prefixes, whose identity would take a full listing, and for
    /// objects the server gives no ETag.
    async fn object_identity(&self, spec: &InputSpec) -> Result<Option<String>, StorageError> {
        let plan = self.plan(spec)?;
        let p = plan.params;
        if is_prefix(&p.key) {
            return Ok(None);
        }
        let version = non_empty(&p.version_id);
        let head = self.client.head_object(&plan.target, &p.key, version).await;
        let head = match head {
            Ok(head) => head,
            Err(e) => return Err(self.object_error(&plan.target, &p.key, e).await),
        };
        if is_directory(head.content_type.as_deref()) {
            return Ok(None);
        }
        let Some(etag) = head.etag else {
            return Ok(None);
        };
        let version = head.version_id.as_deref().or(version).unwrap_or_default();
        Ok(Some(format!(
            "{}?endpoint={}&region={}&versionId={version}#{etag}",
            plan.target.show(&p.key),
            p.endpoint.trim(),
            p.region.trim(),
        )))
    }

    /// The error for a failed request about `key`. Some servers (s3s-fs among them) answer a missing bucket
    /// with `NoSuchKey`, so a missing key is double-checked with HEAD on the bucket to name the right one.
    async fn object_error(&self, target: &Target, key: &str, e: S3Error) -> StorageError {
        let mapped = storage_error(target, key, e);
        let key_missing =
            matches!(&mapped, StorageError::NotFound { what } if *what == target.show(key));
        if key_missing && matches!(self.client.bucket_exists(target).await, Ok(false)) {
            return storage_error(target, key, S3Error::no_such_bucket(target, key));
        }
        mapped
    }

    fn plan<'a>(&self, spec: &'a InputSpec) -> Result<Plan<'a>, StorageError> {
        let InputSpec::S3(params) = spec else {
            return Err(StorageError::WrongKind {
                kind: spec.type_name().to_owned(),
                backend: SourceKind::S3.as_str(),
            });
        };
        let what = format!("s3://{}/{}", params.bucket, params.key);
        let bad = |reason: String| StorageError::BadSpec {
            what: what.clone(),
            reason,
        };
        let target = self
            .client
            .target(params.bucket.trim(), &params.region, &params.endpoint)
            .map_err(|e| bad(e.reason()))?;
        let filter = match params.filter.trim() {
            "" => None,
            f => Some(Regex::new(f).map_err(|e| {
                bad(format!(
                    "Filter {f:?} is not a valid regular expression: {e}"
                ))
            })?),
        };
        let checksum = match params.checksum_sha256.trim() {
            "" => None,
            c => Some(decode_checksum(c).ok_or_else(|| {
                bad(format!(
                    "ChecksumSHA256 {c:?} is not a SHA-256 in base64 (44 characters) or hex (64)"
                ))
            })?),
        };
        let single = !is_prefix(&params.key);
        if !single && checksum.is_some() {
            return Err(bad(
                "ChecksumSHA256 needs a Key naming one object, not a prefix".to_owned(),
            ));
        }
        if !single && !params.version_id.trim().is_empty() {
            return Err(bad(
                "VersionID needs a Key naming one object, not a prefix".to_owned()
            ));
        }
        if let Some(partition) = &params.partition
            && !partition_is_none(partition)
        {
            return Err(bad(
                "Partition is not supported by this node; remove it (or use Type: none)".to_owned(),
            ));
        }
        Ok(Plan {
            params,
            target,
            filter,
            checksum,
        })
    }

    /// The objects to fetch for a prefix: every listed key under `prefix` that passes the filter.
    async fn list(&self, plan: &Plan<'_>, prefix: &str) -> Result<Vec<Fetch>, StorageError> {
        let mut fetches = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = 0usize;
        loop {
            let page = self
                .client
                .list_page(&plan.target, prefix, token.as_deref())
                .await
                .map_err(|e| storage_error(&plan.target, prefix, e))?;
            for object in page.contents {
                seen += 1;
                if seen > self.config.max_objects {
                    return Err(StorageError::Download {
                        url: plan.target.show(prefix),
                        reason: format!(
                            "more than {} objects are listed under it; narrow Key or Filter",
                            self.config.max_objects
                        ),
                    });
                }
                if let Some(filter) = &plan.filter
                    && !filter.is_match(object.key.strip_prefix(prefix).unwrap_or(&object.key))
                {
                    continue;
                }
                let Some((rel, is_dir)) = relative_path(prefix, &object.key) else {
                    return Err(StorageError::UnsafeKey {
                        what: plan.target.show(&object.key),
                    });
                };
                fetches.push(Fetch {
                    key: object.key,
                    rel,
                    is_dir,
                    etag: object.etag,
                    size: object.size,
                });
            }
            match page.next_continuation_token {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => break,
            }
        }
        Ok(fetches)
    }

    /// Streams one object to `dest`, retrying a body that breaks off; returns the bytes written. `budget` is
    /// what is left of the size cap. Removes a partial file on failure.
    async fn download(
        &self,
        plan: &Plan<'_>,
        fetch: &Fetch,
        dest: &Path,
        budget: u64,
    ) -> Result<u64, StorageError> {
        let what = plan.target.show(&fetch.key);
        let version = non_empty(&plan.params.version_id);
        let attempts = self.client.settings().retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = self.stream_once(plan, fetch, version, dest, budget).await;
            match result {
                Ok(written) => return Ok(written),
                Err(Streamed::Broken(reason)) if attempt < attempts => {
                    warn!(object = %what, attempt, %reason, "download broke off, retrying");
                    attempt += 1;
                }
                Err(Streamed::Broken(reason)) => {
                    return Err(StorageError::Download {
                        url: what,
                        reason: format!("{reason} (gave up after {attempts} attempts)"),
                    });
                }
                Err(Streamed::Fail(e)) => return Err(e),
            }
        }
    }

    async fn stream_once(
        &self,
        plan: &Plan<'_>,
        fetch: &Fetch,
        version: Option<&str>,
        dest: &Path,
        budget: u64,
    ) -> Result<u64, Streamed> {
        let what = plan.target.show(&fetch.key);
        let mut response = self
            .client
            .get_object(
                &plan.target,
                &fetch.key,
                version,
                fetch.etag.as_deref(),
                None,
            )
            .await
            .map_err(|e| Streamed::Fail(storage_error(&plan.target, &fetch.key, e)))?;
        let too_large = || {
            Streamed::Fail(StorageError::TooLarge {
                what: what.clone(),
                limit: self.config.max_size,
            })
        };
        if response.content_length().is_some_and(|len| len > budget) {
            return Err(too_large());
        }
        let result: Result<u64, Streamed> = async {
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(|e| Streamed::Fail(StorageError::io("creating", dest)(e)))?;
            let mut hasher = plan.checksum.map(|_| Sha256::new());
            let mut received: u64 = 0;
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Streamed::Broken(format!(
                            "the body broke off: {}",
                            crate::s3::describe(&e)
                        )));
                    }
                };
                received += chunk.len() as u64;
                if received > budget {
                    return Err(too_large());
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| Streamed::Fail(StorageError::io("writing", dest)(e)))?;
            }
            // tokio's File finishes writes in the background; flush makes them complete (and their errors
            // visible) before the task starts.
            file.flush()
                .await
                .map_err(|e| Streamed::Fail(StorageError::io("writing", dest)(e)))?;
            if let (Some(expected), Some(h)) = (plan.checksum, hasher) {
                let actual: [u8; 32] = h.finalize().into();
                if actual != expected {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    return Err(Streamed::Fail(StorageError::ObjectChecksumMismatch {
                        what: what.clone(),
                        expected: b64.encode(expected),
                        actual: b64.encode(actual),
                    }));
                }
            }
            Ok(received)
        }
        .await;
        if result.is_err() {
            // Best effort: the scratch directory is removed with the execution anyway.
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}

/// How one streaming try ended badly.
enum Streamed {
    /// The body broke off: another try may help.
    Broken(String),
    /// Final.
    Fail(StorageError),
}

#[async_trait]
impl StorageSource for S3Source {
    fn kind(&self) -> SourceKind {
        SourceKind::S3
    }

    fn validate(&self, spec: &InputSpec) -> Result<(), StorageError> {
        self.plan(spec).map(|_| ())
    }

    /// Single objects only (see [`S3Source::object_identity`]); a prefix lists what is there at run time.
    async fn content_id(&self, spec: &InputSpec) -> Result<Option<ContentId>, StorageError> {
        Ok(self
            .object_identity(spec)
            .await?
            .map(|id| ContentId::new(SourceKind::S3, id)))
    }

    async fn prepare(&self, spec: &InputSpec, scratch: &Path) -> Result<Volume, StorageError> {
        let plan = self.plan(spec)?;
        let p = plan.params;
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(StorageError::io("creating", scratch))?;
        let mut fetches = Vec::new();
        if !is_prefix(&p.key) {
            let head = match self
                .client
                .head_object(&plan.target, &p.key, non_empty(&p.version_id))
                .await
            {
                Ok(head) => head,
                Err(e) => return Err(self.object_error(&plan.target, &p.key, e).await),
            };
            if !is_directory(head.content_type.as_deref()) {
                let name = p.key.rsplit('/').next().unwrap_or_default();
                let Some((rel, false)) = relative_path("", name) else {
                    return Err(StorageError::UnsafeKey {
                        what: plan.target.show(&p.key),
                    });
                };
                fetches.push(Fetch {
                    key: p.key.clone(),
                    rel,
                    is_dir: false,
                    etag: head.etag,
                    size: head.size,
                });
            }
        }
        if fetches.is_empty() {
            let prefix = p.key.trim().trim_end_matches('*');
            fetches = self.list(&plan, prefix).await?;
            if fetches.is_empty() {
                warn!(prefix = %plan.target.show(prefix), "no objects matched; the input is an empty folder");
            }
        }
        let announced: u64 = fetches.iter().filter_map(|f| f.size).sum();
        if announced > self.config.max_size {
            return Err(StorageError::TooLarge {
                what: plan.target.show(&p.key),
                limit: self.config.max_size,
            });
        }
        let mut used: u64 = 0;
        for fetch in &fetches {
            let dest = scratch.join(&fetch.rel);
            if fetch.is_dir {
                tokio::fs::create_dir_all(&dest)
                    .await
                    .map_err(StorageError::io("creating", &dest))?;
                continue;
            }
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(StorageError::io("creating", parent))?;
            }
            used += self
                .download(&plan, fetch, &dest, self.config.max_size - used)
                .await?;
        }
        debug!(input = %plan.target.show(&p.key), objects = fetches.len(), bytes = used, "s3 input fetched");
        Ok(Volume {
            host_path: scratch.to_owned(),
            read_only: true,
        })
    }
}

/// Maps an S3 failure about `key` to the input's error: a missing key or bucket is `NotFound`.
fn storage_error(target: &Target, key: &str, e: S3Error) -> StorageError {
    match e.code() {
        Some("NoSuchKey" | "NoSuchVersion") => StorageError::NotFound {
            what: target.show(key),
        },
        Some("NoSuchBucket") => StorageError::NotFound {
            what: format!("bucket {:?} (for {})", target.bucket(), target.show(key)),
        },
        _ if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => StorageError::NotFound {
            what: target.show(key),
        },
        _ => StorageError::Download {
            url: target.show(key),
            reason: e.reason(),
        },
    }
}

/// Bacalhau's rule: a key ending in `/` or `*`, or none at all, is a prefix.
fn is_prefix(key: &str) -> bool {
    let key = key.trim();
    key.is_empty() || key.ends_with('/') || key.ends_with('*')
}

fn is_directory(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| t.starts_with("application/x-directory"))
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// Where a listed `key` goes, relative to the folder of `prefix` (the prefix up to its last `/`), and
/// whether it is a folder marker. `None` when the key is not under that folder or its relative path could
/// leave the scratch directory: an absolute path, or an empty, `.` or `..` segment, or a NUL.
fn relative_path(prefix: &str, key: &str) -> Option<(PathBuf, bool)> {
    let folder = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
    let rest = key.strip_prefix(folder)?;
    if rest.is_empty() {
        // The prefix's own folder marker: nothing to create beyond the volume itself.
        return Some((PathBuf::new(), true));
    }
    let (rest, is_dir) = match rest.strip_suffix('/') {
        Some(dir) => (dir, true),
        None => (rest, false),
    };
    let mut path = PathBuf::new();
    for segment in rest.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains('\0') {
            return None;
        }
        path.push(segment);
    }
    Some((path, is_dir))
}

/// A SHA-256 given as base64 (how S3 reports `ChecksumSHA256`) or as hex (how `sha256sum` prints it).
fn decode_checksum(text: &str) -> Option<[u8; 32]> {
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    };
    bytes.try_into().ok()
}

/// Whether a `Partition` value asks for no partitioning (absent type, or `none`).
fn partition_is_none(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Object(map) => map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("type"))
            .and_then(|(_, v)| v.as_str())
            .is_none_or(|t| t.trim().is_empty() || t.trim().eq_ignore_ascii_case("none")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::s3::S3Settings;

    fn source() -> S3Source {
        // reqwest is built without a default provider (main installs ring); tests run in any order.
        let _ = rustls::crypto::ring::default_provider().install_default();
        S3Source::new(
            S3Client::new(reqwest::Client::new(), S3Settings::default()),
            S3SourceConfig::default(),
        )
    }

    fn spec(params: serde_json::Value) -> InputSpec {
        let config = crate::model::SpecConfig {
            kind: "s3".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        };
        InputSpec::parse(&config, "InputSources[0].Source").expect("parses")
    }

    #[test]
    fn keys_ending_in_slash_or_star_are_prefixes() {
        assert!(is_prefix(""));
        assert!(is_prefix("logs/"));
        assert!(is_prefix("logs/app-*"));
        assert!(!is_prefix("logs/app.log"));
        assert!(!is_prefix("logs"));
    }

    #[test]
    fn listed_keys_land_relative_to_the_prefix_folder() {
        let rel =
            |prefix, key| relative_path(prefix, key).map(|(p, d)| (p.display().to_string(), d));
        assert_eq!(rel("logs/", "logs/a.gz"), Some(("a.gz".into(), false)));
        assert_eq!(
            rel("logs/", "logs/2024/b.gz"),
            Some(("2024/b.gz".into(), false))
        );
        assert_eq!(
            rel("logs/app-", "logs/app-1.gz"),
            Some(("app-1.gz".into(), false))
        );
        assert_eq!(rel("", "top/x"), Some(("top/x".into(), false)));
        assert_eq!(rel("logs/", "logs/sub/"), Some(("sub".into(), true)));
        assert_eq!(rel("logs/", "logs/"), Some(("".into(), true)));
    }

    #[test]
    fn listed_keys_that_could_escape_are_refused() {
        for key in [
            "logs/../etc/passwd",
            "logs/a/../../x",
            "logs//abs",
            "logs/./x",
            "logs/..",
            "other/x",
            "logs/a\0b",
        ] {
            assert_eq!(relative_path("logs/", key), None, "{key:?}");
        }
        assert_eq!(relative_path("", "/etc/passwd"), None);
        assert_eq!(relative_path("", ".."), None);
    }

    #[test]
    fn decodes_checksums_in_base64_and_hex() {
        let digest: [u8; 32] = Sha256::digest(b"hello").into();
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_checksum(&b64), Some(digest));
        assert_eq!(decode_checksum(&hex), Some(digest));
        assert_eq!(decode_checksum(&hex.to_uppercase()), Some(digest));
        assert_eq!(decode_checksum("not a checksum"), None);
        assert_eq!(
            decode_checksum("aGVsbG8="),
            None,
            "valid base64 but not 32 bytes"
        );
    }

    #[test]
    fn validation_reports_bad_params_clearly() {
        let s = source();
        let ok = spec(
            json!({"Bucket": "b", "Key": "logs/", "Filter": ".*\\.gz$", "Endpoint": "http://127.0.0.1:9"}),
        );
        s.validate(&ok).expect("valid");
        let bad_filter = spec(json!({"Bucket": "b", "Key": "logs/", "Filter": "(unclosed"}));
        let err = s.validate(&bad_filter).expect_err("bad regex").to_string();
        assert!(
            err.contains("Filter") && err.contains("s3://b/logs/"),
            "{err}"
        );
        let bad_sum = spec(json!({"Bucket": "b", "Key": "k", "ChecksumSHA256": "xyz"}));
        assert!(
            s.validate(&bad_sum)
                .expect_err("bad checksum")
                .to_string()
                .contains("ChecksumSHA256")
        );
        let sum_on_prefix = spec(
            json!({"Bucket": "b", "Key": "p/", "ChecksumSHA256": "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="}),
        );
        assert!(s.validate(&sum_on_prefix).is_err());
        let version_on_prefix = spec(json!({"Bucket": "b", "Key": "p*", "VersionID": "v1"}));
        assert!(s.validate(&version_on_prefix).is_err());
        let bad_endpoint = spec(json!({"Bucket": "b", "Key": "k", "Endpoint": "ftp://x"}));
        let err = s.validate(&bad_endpoint).expect_err("ftp").to_string();
        assert!(err.contains("ftp://x"), "{err}");
        let partition = spec(json!({"Bucket": "b", "Key": "p/", "Partition": {"Type": "object"}}));
        assert!(
            s.validate(&partition)
                .expect_err("partition")
                .to_string()
                .contains("Partition")
        );
        let no_partition = spec(json!({"Bucket": "b", "Key": "p/", "Partition": {"Type": "none"}}));
        s.validate(&no_partition).expect("none is fine");
        let wrong = InputSpec::UrlDownload {
            url: "http://x".into(),
            checksum: None,
        };
        assert!(matches!(
            s.validate(&wrong),
            Err(StorageError::WrongKind { .. })
        ));
    }

    #[test]
    fn a_missing_bucket_is_refused_at_parse_time() {
        let config = crate::model::SpecConfig {
            kind: "S3".into(),
            params: json!({"key": "k"}).as_object().cloned().unwrap_or_default(),
        };
        let err = InputSpec::parse(&config, "InputSources[0].Source").expect_err("no bucket");
        assert!(err.to_string().contains("Bucket"), "{err}");
    }

    #[test]
    fn maps_missing_objects_and_buckets_to_not_found() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = S3Client::new(reqwest::Client::new(), S3Settings::default());
        let target = client
            .target("b", "", "http://127.0.0.1:9")
            .expect("target");
        let status = |code: &str| S3Error::Status {
            op: "reading",
            what: "s3://b/k".into(),
            status: reqwest::StatusCode::NOT_FOUND,
            code: code.into(),
            detail: String::new(),
            hint: "",
        };
        let key = storage_error(&target, "k", status("NoSuchKey")).to_string();
        assert_eq!(key, "input s3://b/k does not exist");
        let bucket = storage_error(&target, "k", status("NoSuchBucket")).to_string();
        assert!(bucket.contains("bucket \"b\""), "{bucket}");
    }
}
