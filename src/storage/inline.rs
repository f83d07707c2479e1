//! The `inline` source: data carried in the job spec itself as an RFC 2397 `data:` URL.
//!
//! `data:[<mediatype>][;name=<file>][;base64],<data>`. A gzip tarball (media type `application/gzip`,
//! `application/x-gzip` or `application/x-tar+gzip`, or gzip magic bytes around a tar stream) is how Bacalhau's
//! CLI inlines directories and larger files; it is unpacked into the scratch directory, which becomes the
//! volume. Anything else is written to one file, `scratch/<name>` (`inline` unless a `name=` parameter says
//! otherwise), and that file is the volume.
//!
//! Must never write outside `scratch`: unpacking goes through [`archive::unpack_tar_gz`]. Decoding and file
//! I/O run in `spawn_blocking` since a payload may be hundreds of MiB.

use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use flate2::read::GzDecoder;

use super::archive::{self, ArchiveError};
use super::filename;
use super::{ContentId, StorageError, StorageSource, Volume};
use crate::model::{InputSpec, SourceKind};

/// Media types that mean "a gzip-compressed tarball to unpack".
const TARBALL_TYPES: [&str; 3] = [
    "application/gzip",
    "application/x-gzip",
    "application/x-tar+gzip",
];

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// File name used when the `data:` URL names none.
const DEFAULT_NAME: &str = "inline";

/// Settings of the inline source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSourceConfig {
    /// The most bytes one input may decode or unpack to. Inline data travels in the job spec, so the decoded
    /// form is small by nature; the cap is what protects the node's disk from a gzip bomb.
    pub max_size: u64,
}

impl Default for InlineSourceConfig {
    fn default() -> Self {
        Self {
            max_size: 256 * 1024 * 1024,
        }
    }
}

/// Prepares `inline` inputs; see the module docs.
#[derive(Debug, Default)]
pub struct InlineSource {
    /// Size cap, from the node config.
    config: InlineSourceConfig,
}

// === impl InlineSource ===

impl InlineSource {
    /// An inline source with the given settings.
    pub fn new(config: InlineSourceConfig) -> Self {
        Self { config }
    }
}

#[async_trait]
impl StorageSource for InlineSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Inline
    }

    fn validate(&self, spec: &InputSpec) -> Result<(), StorageError> {
        inline_url(spec).map(|_| ())
    }

    async fn prepare(&self, spec: &InputSpec, scratch: &Path) -> Result<Volume, StorageError> {
        let url = inline_url(spec)?.to_owned();
        let scratch = scratch.to_owned();
        let max_size = self.config.max_size;
        let task_scratch = scratch.clone();
        tokio::task::spawn_blocking(move || prepare_blocking(&url, &task_scratch, max_size))
            .await
            .map_err(|e| StorageError::Io {
                op: "preparing inline input in",
                path: scratch,
                source: std::io::Error::other(e),
            })?
    }

    /// `inline:sha256:<hex of the whole data: URL>`: the URL is the content (and its media type and `name=`
    /// decide the layout), so hashing it pins the volume without decoding anything.
    async fn content_id(&self, spec: &InputSpec) -> Result<Option<ContentId>, StorageError> {
        use sha2::{Digest as _, Sha256};
        let url = inline_url(spec)?;
        let digest = Sha256::digest(url.as_bytes());
        Ok(Some(ContentId::new(
            SourceKind::Inline,
            format!("sha256:{digest:x}"),
        )))
    }
}

fn inline_url(spec: &InputSpec) -> Result<&str, StorageError> {
    match spec {
        InputSpec::Inline { url } => Ok(url),
        other => Err(StorageError::WrongKind {
            kind: other.type_name().to_owned(),
            backend: SourceKind::Inline.as_str(),
        }),
    }
}

pub(crate) fn prepare_blocking(
    url: &str,
    scratch: &Path,
    max_size: u64,
) -> Result<Volume, StorageError> {
    let data = DataUrl::parse(url, max_size)?;
    if data.is_tarball() {
        archive::unpack_tar_gz(data.bytes.as_slice(), scratch, max_size)
            .map_err(|e| from_archive(e, max_size))?;
        return Ok(Volume {
            host_path: scratch.to_owned(),
            read_only: true,
        });
    }
    let name = data
        .name
        .as_deref()
        .and_then(filename::sanitize)
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let path: PathBuf = scratch.join(name);
    std::fs::write(&path, &data.bytes)
        .map_err(StorageError::io("writing inline data to", &path))?;
    Ok(Volume {
        host_path: path,
        read_only: true,
    })
}

fn from_archive(e: ArchiveError, max_size: u64) -> StorageError {
    match e {
        ArchiveError::Unsafe { entry, .. } | ArchiveError::Forbidden { entry, .. } => {
            StorageError::UnsafeArchive { entry }
        }
        ArchiveError::TooLarge { .. } => StorageError::TooLarge {
            what: "inline data".to_owned(),
            limit: max_size,
        },
        ArchiveError::Corrupt { source } => StorageError::BadInline {
            reason: format!(
                "the gzip tarball cannot be read ({source}); re-create it with tar -czf"
            ),
        },
        ArchiveError::Io { op, path, source } => StorageError::Io { op, path, source },
    }
}

/// A decoded `data:` URL.
#[derive(Debug)]
struct DataUrl {
    /// Lower-cased media type without parameters; empty when the URL has none (RFC 2397's `text/plain`).
    media_type: String,
    /// The `name=` (or `filename=`) parameter, percent-decoded.
    name: Option<String>,
    /// The payload.
    bytes: Vec<u8>,
}

impl DataUrl {
    fn parse(url: &str, max_size: u64) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadInline {
            reason: reason.to_owned(),
        };
        let rest = url
            .get(..5)
            .filter(|scheme| scheme.eq_ignore_ascii_case("data:"))
            .map(|_| &url[5..])
            .ok_or_else(|| bad("the URL does not start with data:"))?;
        let (meta, payload) = rest
            .split_once(',')
            .ok_or_else(|| bad("there is no ',' between the media type and the data"))?;

        let mut parts = meta.split(';').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let (media_type, params): (String, Vec<&str>) = if first.contains('/') || first.is_empty() {
            (first.to_ascii_lowercase(), parts.collect())
        } else {
            // `data:;base64,` style URLs have no media type; `first` is already a parameter.
            (String::new(), std::iter::once(first).chain(parts).collect())
        };
        let is_base64 = params
            .last()
            .is_some_and(|p| p.eq_ignore_ascii_case("base64"));
        let name = params.iter().find_map(|p| {
            let (key, value) = p.split_once('=')?;
            let key = key.trim();
            (key.eq_ignore_ascii_case("name") || key.eq_ignore_ascii_case("filename")).then(|| {
                String::from_utf8_lossy(&filename::percent_decode(value.trim().trim_matches('"')))
                    .into_owned()
            })
        });

        let too_large = || StorageError::TooLarge {
            what: "inline data".to_owned(),
            limit: max_size,
        };
        // Checked before decoding so that an oversized spec costs no second copy: base64 turns 4 bytes into 3.
        let decoded_estimate = if is_base64 {
            payload.len() as u64 / 4 * 3
        } else {
            payload.len() as u64
        };
        if decoded_estimate > max_size.saturating_add(3) {
            return Err(too_large());
        }
        // WHATWG's data: URL processing: percent-decode first, then base64 (ignoring ASCII whitespace).
        let mut bytes = filename::percent_decode(payload);
        if is_base64 {
            bytes.retain(|b| !b.is_ascii_whitespace());
            bytes = STANDARD_PAD_INDIFFERENT
                .decode(&bytes)
                .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(&bytes))
                .map_err(|e| StorageError::BadInline {
                    reason: format!("the base64 data does not decode: {e}"),
                })?;
        }
        if bytes.len() as u64 > max_size {
            return Err(too_large());
        }
        Ok(Self {
            media_type,
            name,
            bytes,
        })
    }

    /// Whether the payload is a tarball to unpack: by media type, or (when the media type says nothing
    /// useful) by gzip magic bytes *and* a tar header inside, so that a plain `.gz` file stays a file.
    fn is_tarball(&self) -> bool {
        if TARBALL_TYPES.contains(&self.media_type.as_str()) {
            return true;
        }
        if !self.bytes.starts_with(&GZIP_MAGIC) {
            return false;
        }
        let mut block = [0u8; 512];
        let mut decoder = GzDecoder::new(self.bytes.as_slice());
        let mut filled = 0;
        while filled < block.len() {
            match decoder.read(&mut block[filled..]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => filled += n,
            }
        }
        // POSIX ustar, GNU and PAX headers all carry "ustar" at offset 257.
        &block[257..262] == b"ustar"
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::archive::tests::{TestEntry, build_tar_gz};

    fn spec(url: impl Into<String>) -> InputSpec {
        InputSpec::Inline { url: url.into() }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[tokio::test]
    async fn writes_small_text_to_a_file() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let source = InlineSource::default();
        let volume = source
            .prepare(&spec("data:,hello%20world"), scratch.path())
            .await
            .expect("prepare");
        assert_eq!(volume.host_path, scratch.path().join("inline"));
        assert!(volume.read_only);
        assert_eq!(fs::read(&volume.host_path).expect("read"), b"hello world");
    }

    #[tokio::test]
    async fn uses_the_name_parameter_and_base64() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let url = format!("data:text/csv;name=rows.csv;base64,{}", b64(b"a,b\n1,2\n"));
        let volume = InlineSource::default()
            .prepare(&spec(url), scratch.path())
            .await
            .expect("prepare");
        assert_eq!(volume.host_path, scratch.path().join("rows.csv"));
        assert_eq!(fs::read(&volume.host_path).expect("read"), b"a,b\n1,2\n");
    }

    #[tokio::test]
    async fn a_hostile_name_parameter_stays_in_scratch() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let volume = InlineSource::default()
            .prepare(
                &spec("data:text/plain;name=..%2F..%2Fevil,x"),
                scratch.path(),
            )
            .await
            .expect("prepare");
        assert_eq!(volume.host_path.parent(), Some(scratch.path()));
    }

    #[tokio::test]
    async fn unpacks_a_base64_gzip_tarball_into_a_directory() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let tarball = build_tar_gz(&[
            TestEntry::Dir("sub/"),
            TestEntry::File("sub/a.txt", b"A"),
            TestEntry::File("b", b"B"),
        ]);
        for media_type in ["application/gzip", ""] {
            let dir = scratch.path().join(if media_type.is_empty() {
                "magic"
            } else {
                "typed"
            });
            fs::create_dir(&dir).expect("dir");
            let url = format!("data:{media_type};base64,{}", b64(&tarball));
            let volume = InlineSource::default()
                .prepare(&spec(url), &dir)
                .await
                .expect("prepare");
            assert_eq!(
                volume,
                Volume {
                    host_path: dir.clone(),
                    read_only: true
                }
            );
            assert_eq!(fs::read(dir.join("sub/a.txt")).expect("a"), b"A");
            assert_eq!(fs::read(dir.join("b")).expect("b"), b"B");
        }
    }

    #[tokio::test]
    async fn keeps_a_plain_gzip_file_as_a_file() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[b'x'; 2000]).expect("write");
        let bytes = gz.finish().expect("gzip");
        let url = format!("data:;name=x.gz;base64,{}", b64(&bytes));
        let volume = InlineSource::default()
            .prepare(&spec(url), scratch.path())
            .await
            .expect("prepare");
        assert_eq!(fs::read(volume.host_path).expect("read"), bytes);
    }

    #[tokio::test]
    async fn refuses_hostile_tarballs_and_writes_nothing_outside() {
        let root = tempfile::tempdir().expect("tempdir");
        let cases: [&[TestEntry<'_>]; 3] = [
            &[TestEntry::File("../evil", b"x")],
            &[TestEntry::File("/evil-abs", b"x")],
            &[
                TestEntry::Symlink("esc", ".."),
                TestEntry::File("esc/evil", b"x"),
            ],
        ];
        for (i, entries) in cases.iter().enumerate() {
            let scratch = root.path().join(format!("scratch{i}"));
            fs::create_dir(&scratch).expect("scratch");
            let url = format!(
                "data:application/gzip;base64,{}",
                b64(&build_tar_gz(entries))
            );
            let err = InlineSource::default()
                .prepare(&spec(url), &scratch)
                .await
                .expect_err("hostile");
            assert!(
                matches!(err, StorageError::UnsafeArchive { .. }),
                "case {i}: {err:?}"
            );
        }
        let mut outside: Vec<_> = fs::read_dir(root.path())
            .expect("root")
            .map(|e| e.expect("e").file_name())
            .collect();
        outside.sort();
        assert_eq!(outside, ["scratch0", "scratch1", "scratch2"]);
        assert!(!Path::new("/evil-abs").exists());
    }

    #[tokio::test]
    async fn enforces_the_size_cap() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let source = InlineSource::new(InlineSourceConfig { max_size: 100 });
        let err = source
            .prepare(
                &spec(format!("data:;base64,{}", b64(&[1u8; 1000]))),
                scratch.path(),
            )
            .await;
        assert!(
            matches!(err, Err(StorageError::TooLarge { limit: 100, .. })),
            "{err:?}"
        );
        let tarball = build_tar_gz(&[TestEntry::File("zeros", &[0u8; 4096])]);
        let source = InlineSource::new(InlineSourceConfig { max_size: 1024 });
        let err = source
            .prepare(
                &spec(format!("data:application/gzip;base64,{}", b64(&tarball))),
                scratch.path(),
            )
            .await;
        assert!(
            matches!(err, Err(StorageError::TooLarge { limit: 1024, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_malformed_urls_and_other_kinds() {
        let source = InlineSource::default();
        assert!(matches!(
            DataUrl::parse("data:text/plain", 10),
            Err(StorageError::BadInline { .. })
        ));
        assert!(matches!(
            DataUrl::parse("data:;base64,!!!", 10),
            Err(StorageError::BadInline { .. })
        ));
        let other = InputSpec::UrlDownload {
            url: "http://x/y".to_owned(),
            checksum: None,
        };
        assert!(matches!(
            source.validate(&other),
            Err(StorageError::WrongKind { .. })
        ));
        assert_eq!(source.kind(), SourceKind::Inline);
    }

    #[tokio::test]
    async fn content_id_is_the_hash_of_the_data_url() {
        let source = InlineSource::default();
        let spec = |url: &str| InputSpec::Inline {
            url: url.to_owned(),
        };
        let a = source
            .content_id(&spec("data:,hello"))
            .await
            .expect("id")
            .expect("always some");
        // sha256("data:,hello")
        assert_eq!(
            a.as_str(),
            "inline:sha256:06c84f230c1ff90bd6aa50ec631cf556ca2a6da0cd6ff07ce61acecd5afb2012"
        );
        let b = source.content_id(&spec("data:,hellO")).await.expect("id");
        assert_ne!(Some(a), b);
    }
}
