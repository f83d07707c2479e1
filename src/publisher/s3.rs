//! The `s3` publisher: uploads an execution's result folder to S3 or any S3-compatible server and answers
//! with Bacalhau's shape `{Type: s3, Params: {Bucket, Key, Region, Endpoint, ChecksumSHA256?, VersionID?}}`.
//!
//! Encodings (Bacalhau v1.6.4+): `gzip` (the default) packs the folder into one tarball at `Key`, with
//! `.tar.gz` appended when missing; `plain` uploads every regular file to `Key/<path in the folder>`, with
//! `/` appended when missing. `{jobID}`, `{executionID}`, `{nodeID}`, `{date}` (YYYYMMDD) and `{time}`
//! (HHMMSS) in the key are filled in after that, with the date and time in UTC (Bacalhau uses the node's local
//! time, which differs across a fleet).
//!
//! Files up to [`S3PublisherConfig::part_size`] go up in one PUT; larger ones as a multipart upload of parts
//! of that size (aborted on failure so no orphaned parts keep costing storage). Memory use is one part.
//! `ChecksumSHA256` in the result is the SHA-256 of the whole tarball as uploaded (base64), computed here,
//! so it is also right for multipart uploads (where S3 itself only keeps a checksum of checksums); the s3
//! source checks the same form. Symlinks in a plain upload are skipped, never followed: a task must not
//! be able to publish host files by linking to them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::tarball::pack;
use super::{PublishTarget, Publisher, PublisherError};
use crate::model::{PublisherKind, PublisherSpec, S3PublisherParams, SpecConfig};
use crate::s3::{S3Client, S3Error, Target};

/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// S3's smallest part (all but the last).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Settings of the S3 publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3PublisherConfig {
    /// Part size of multipart uploads, and the size above which one is used. At least 5 MiB (S3's minimum);
    /// 8 MiB keeps memory low on small boards and still allows 78 GiB per file.
    pub part_size: usize,
}

impl Default for S3PublisherConfig {
    fn default() -> Self {
        Self {
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// Publishes results to S3; see the module docs.
#[derive(Debug, Clone)]
pub struct S3Publisher {
    /// Signs and sends the requests (the node's credentials and HTTP client).
    client: S3Client,
    /// Part size.
    config: Arc<S3PublisherConfig>,
}

/// How the result folder goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Plain,
}

/// One file uploaded.
#[derive(Debug)]
struct Sent {
    sha256: [u8; 32],
    version_id: Option<String>,
}

// === impl S3Publisher ===

impl S3Publisher {
    /// A publisher using `client`.
    pub fn new(client: S3Client, config: S3PublisherConfig) -> Self {
        let part_size = config.part_size.max(MIN_PART_SIZE);
        Self {
            client,
            config: Arc::new(S3PublisherConfig { part_size }),
        }
    }

    fn params<'a>(
        &self,
        spec: &'a PublisherSpec,
    ) -> Result<(&'a S3PublisherParams, Encoding, Target), PublisherError> {
        let unsupported = |reason: String| PublisherError::Unsupported {
            kind: PublisherKind::S3.as_str(),
            reason,
        };
        let PublisherSpec::S3(params) = spec else {
            return Err(unsupported(format!(
                "it publishes s3 results, not {}",
                spec.type_name()
            )));
        };
        let problems = params.problems();
        if !problems.is_empty() {
            let text: Vec<String> = problems
                .iter()
                .map(|(param, message)| format!("Params.{param} {message}"))
                .collect();
            return Err(unsupported(text.join("; ")));
        }
        let encoding = if params.encoding.trim().eq_ignore_ascii_case("plain") {
            Encoding::Plain
        } else {
            Encoding::Gzip
        };
        let target = self
            .client
            .target(params.bucket.trim(), &params.region, &params.endpoint)
            .map_err(|e| unsupported(e.reason()))?;
        Ok((params, encoding, target))
    }

    /// Uploads the file at `path` to `key`: one PUT when it fits in a part, else a multipart upload.
    async fn upload_file(
        &self,
        target: &Target,
        key: &str,
        path: &Path,
    ) -> Result<Sent, PublisherError> {
        let fail = |reason: String| PublisherError::Upload {
            destination: target.show(key),
            reason,
        };
        let s3 = |e: S3Error| fail(e.reason());
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| fail(format!("reading {} failed: {e}", path.display())))?
            .len();
        let part_size = self.config.part_size;
        if size <= part_size as u64 {
            let (data, sha256) = read_part(path.to_owned(), 0, part_size, Sha256::new())
                .await
                .map_err(|e| fail(format!("reading {} failed: {e}", path.display())))?;
            let uploaded = self
                .client
                .put_object(target, key, data)
                .await
                .map_err(s3)?;
            return Ok(Sent {
                sha256: sha256.finalize().into(),
                version_id: uploaded.version_id,
            });
        }
        if size.div_ceil(part_size as u64) > MAX_PARTS {
            return Err(fail(format!(
                "{} is {size} bytes, more than S3's {MAX_PARTS} parts of {part_size} bytes",
                path.display()
            )));
        }
        let upload_id = self
            .client
            .create_multipart(target, key)
            .await
            .map_err(s3)?;
        let result: Result<Sent, PublisherError> = async {
            let mut hasher = Sha256::new();
            let mut etags = Vec::new();
            let mut offset = 0u64;
            let mut number: u16 = 1;
            while offset < size {
                let (data, h) = read_part(path.to_owned(), offset, part_size, hasher)
                    .await
                    .map_err(|e| fail(format!("reading {} failed: {e}", path.display())))?;
                hasher = h;
                if data.is_empty() {
                    // The file shrank while uploading; what was read so far is what goes up.
                    break;
                }
                offset += data.len() as u64;
                let etag = self
                    .client
                    .upload_part(target, key, &upload_id, number, data)
                    .await
                    .map_err(s3)?;
                etags.push(etag);
                number += 1;
            }
            let uploaded = self
                .client
                .complete_multipart(target, key, &upload_id, &etags)
                .await
                .map_err(s3)?;
            debug!(object = %target.show(key), parts = etags.len(), "multipart upload completed");
            Ok(Sent {
                sha256: hasher.finalize().into(),
                version_id: uploaded.version_id,
            })
        }
        .await;
        if result.is_err() {
            self.client.abort_multipart(target, key, &upload_id).await;
        }
        result
    }
}

#[async_trait]
impl Publisher for S3Publisher {
    fn kind(&self) -> PublisherKind {
        PublisherKind::S3
    }

    fn validate(&self, spec: &PublisherSpec) -> Result<(), PublisherError> {
        self.params(spec).map(|_| ())
    }

    async fn publish(
        &self,
        target: &PublishTarget,
        result_dir: &Path,
    ) -> Result<SpecConfig, PublisherError> {
        let (params, encoding, s3_target) = self.params(&target.spec)?;
        let key = render_key(&params.key, target, jiff::Timestamp::now(), encoding);
        let pack_error = |source: std::io::Error| PublisherError::Pack {
            execution_id: target.execution_id.clone(),
            dir: result_dir.to_owned(),
            source,
        };
        let mut out = Map::new();
        match encoding {
            Encoding::Gzip => {
                // Next to the result folder (inside the execution's folder, removed with it), never inside.
                let parent = result_dir.parent().unwrap_or(result_dir);
                let tarball = parent.join(format!(".s3-{}.tar.gz", uuid::Uuid::new_v4()));
                let (dir, tmp, out_path) =
                    (result_dir.to_owned(), tarball.clone(), tarball.clone());
                let id = target.execution_id.to_string();
                tokio::task::spawn_blocking(move || pack(&dir, &tmp, &out_path, &id))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(pack_error)?;
                let sent = self.upload_file(&s3_target, &key, &tarball).await;
                // Best effort: the execution's folder goes soon anyway.
                let _ = tokio::fs::remove_file(&tarball).await;
                let sent = sent?;
                out.insert(
                    "ChecksumSHA256".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(sent.sha256)),
                );
                if let Some(v) = sent.version_id {
                    out.insert("VersionID".into(), Value::String(v));
                }
            }
            Encoding::Plain => {
                let dir = result_dir.to_owned();
                let files = tokio::task::spawn_blocking(move || plain_files(&dir))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(pack_error)?;
                for rel in &files {
                    let object = format!("{key}{rel}");
                    self.upload_file(&s3_target, &object, &result_dir.join(rel))
                        .await?;
                }
                debug!(execution_id = %target.execution_id, files = files.len(), "plain result uploaded");
            }
        }
        debug!(execution_id = %target.execution_id, object = %s3_target.show(&key), "result published to s3");
        let mut result = Map::new();
        result.insert(
            "Bucket".into(),
            Value::String(params.bucket.trim().to_owned()),
        );
        result.insert("Key".into(), Value::String(key));
        result.insert("Region".into(), Value::String(params.region.clone()));
        result.insert("Endpoint".into(), Value::String(params.endpoint.clone()));
        result.extend(out);
        Ok(SpecConfig {
            kind: PublisherKind::S3.as_str().to_owned(),
            params: result,
        })
    }
}

/// The object key for a result: `.tar.gz` (gzip) or `/` (plain) appended when missing, then the
/// placeholders filled in (Bacalhau's order), with `now` in UTC.
fn render_key(
    template: &str,
    target: &PublishTarget,
    now: jiff::Timestamp,
    encoding: Encoding,
) -> String {
    let mut key = template.trim().to_owned();
    match encoding {
        Encoding::Gzip if !key.ends_with(".tar.gz") => key.push_str(".tar.gz"),
        Encoding::Plain if !key.ends_with('/') => key.push('/'),
        _ => {}
    }
    key.replace("{nodeID}", target.node_id.as_str())
        .replace("{executionID}", target.execution_id.as_str())
        .replace("{jobID}", target.job_id.as_str())
        .replace("{date}", &now.strftime("%Y%m%d").to_string())
        .replace("{time}", &now.strftime("%H%M%S").to_string())
}

/// Reads up to `len` bytes of `path` from `offset` on the blocking pool, feeding them to `hasher` there too
/// (hashing 8 MiB is tens of milliseconds on a small board: too long for a runtime worker).
async fn read_part(
    path: PathBuf,
    offset: u64,
    len: usize,
    mut hasher: Sha256,
) -> std::io::Result<(Bytes, Sha256)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Seek;
        let mut file = std::fs::File::open(&path)?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut data = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut data)?;
        hasher.update(&data);
        Ok((Bytes::from(data), hasher))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Every regular file under `dir`, as `/`-separated paths relative to it, in name order. Symlinks and special
/// files are skipped (see the module docs). Blocking.
fn plain_files(dir: &Path) -> std::io::Result<Vec<String>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
        let mut entries = std::fs::read_dir(root.join(rel))?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                warn!(entry = ?entry.path(), "skipping a result file whose name is not UTF-8 (not a valid S3 key)");
                continue;
            };
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            // `DirEntry::file_type` does not follow symlinks.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                out.push(path);
            } else {
                warn!(entry = %path, "skipping a symlink or special file in the result folder");
            }
        }
        Ok(())
    }
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "the result path is not a directory",
        ));
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionId, JobId, NodeId};
    use crate::s3::S3Settings;

    fn publisher() -> S3Publisher {
        // reqwest is built without a default provider (main installs ring); tests run in any order.
        let _ = rustls::crypto::ring::default_provider().install_default();
        S3Publisher::new(
            S3Client::new(reqwest::Client::new(), S3Settings::default()),
            S3PublisherConfig::default(),
        )
    }

    fn params(key: &str, encoding: &str) -> S3PublisherParams {
        S3PublisherParams {
            bucket: "results".into(),
            key: key.into(),
            encoding: encoding.into(),
            ..Default::default()
        }
    }

    fn target(spec: PublisherSpec) -> PublishTarget {
        PublishTarget {
            execution_id: ExecutionId::from("e-1".to_owned()),
            job_id: JobId::from("j-2".to_owned()),
            node_id: NodeId::from("n-3".to_owned()),
            spec,
        }
    }

    #[test]
    fn keys_get_their_suffix_and_placeholders_in_utc() {
        let t = target(PublisherSpec::Noop);
        let now: jiff::Timestamp = "2024-03-05T23:04:05+02:00".parse().expect("time");
        assert_eq!(
            render_key("r/{jobID}/{executionID}-{nodeID}", &t, now, Encoding::Gzip),
            "r/j-2/e-1-n-3.tar.gz"
        );
        assert_eq!(
            render_key("r/{date}/{time}.tar.gz", &t, now, Encoding::Gzip),
            "r/20240305/210405.tar.gz"
        );
        assert_eq!(render_key("r/{jobID}", &t, now, Encoding::Plain), "r/j-2/");
        assert_eq!(render_key("r/", &t, now, Encoding::Plain), "r/");
    }

    #[test]
    fn validation_names_missing_and_bad_params() {
        let p = publisher();
        p.validate(&PublisherSpec::S3(params("k", "")))
            .expect("valid");
        p.validate(&PublisherSpec::S3(params("k", "PLAIN")))
            .expect("case-insensitive");
        let err = p
            .validate(&PublisherSpec::S3(S3PublisherParams::default()))
            .expect_err("empty")
            .to_string();
        assert!(
            err.contains("Bucket is required") && err.contains("Key is required"),
            "{err}"
        );
        let err = p
            .validate(&PublisherSpec::S3(params("k", "zstd")))
            .expect_err("encoding")
            .to_string();
        assert!(err.contains("Encoding"), "{err}");
        let mut bad_endpoint = params("k", "");
        bad_endpoint.endpoint = "ftp://x".into();
        assert!(p.validate(&PublisherSpec::S3(bad_endpoint)).is_err());
        assert!(p.validate(&PublisherSpec::Local).is_err());
    }

    #[test]
    fn plain_uploads_list_regular_files_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("outputs/sub")).expect("mkdir");
        std::fs::write(dir.join("stdout"), "x").expect("write");
        std::fs::write(dir.join("outputs/sub/a.txt"), "a").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("outputs/passwd")).expect("symlink");
        assert_eq!(
            plain_files(dir).expect("walk"),
            ["outputs/sub/a.txt", "stdout"]
        );
        assert!(plain_files(&dir.join("missing")).is_err());
    }

    #[tokio::test]
    async fn parts_are_read_in_order_and_hashed_as_a_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        let (a, h) = read_part(path.clone(), 0, 4, Sha256::new())
            .await
            .expect("part 1");
        let (b, h) = read_part(path.clone(), 4, 4, h).await.expect("part 2");
        let (c, h) = read_part(path, 8, 4, h).await.expect("part 3");
        assert_eq!([a.as_ref(), b.as_ref(), c.as_ref()].concat(), b"0123456789");
        assert_eq!(h.finalize(), Sha256::digest(b"0123456789"));
    }
}
