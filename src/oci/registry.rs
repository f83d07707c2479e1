//! The distribution (registry) client: resolves an image reference to this node's manifest and config, and
//! streams verified blobs to files.
//!
//! Built on `oci-client`, which handles the token dance (anonymous, Basic, Bearer, and the `WWW-Authenticate`
//! realm flow) and verifies every blob against its digest while streaming. What this module adds: our own
//! platform choice from an index (so a missing platform is a distinct [`PullError::PlatformMissing`] that the
//! bidder can decline on), Docker's loopback-is-plain-HTTP rule, size limits, temp-file-then-rename
//! downloads, and errors that name the image and say what to do.
//!
//! Blob digests are computed by oci-client's verifying stream as chunks arrive, on the runtime: a few
//! microseconds of hashing per network chunk, interleaved with I/O waits, so no blocking thread is spent on it.
//!
//! Never logs or prints credentials: [`RegistryAuth`]'s `Debug` redacts them, and they travel only in
//! request headers, never in URLs.
//!
//! Foreign-layer `urls` in manifests are ignored: blobs come from the image's own registry only, so a
//! manifest cannot make the node fetch from arbitrary hosts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_DOCKER_CONFIG_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::platform::Platform;
use super::reference::{Digest, ImageRef};
use super::unpack::UnpackError;
use crate::store::StoreError;

/// The OCI image config media type (oci-client names it for artifacts, so we name it here for clarity).
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Manifest media types we ask for; Docker schema 1 is not among them (deprecated, unsigned layers).
const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];
/// Download buffer: large enough that a file write is not issued per network chunk.
const WRITE_BUFFER: usize = 256 * 1024;
/// Sent to registries, which log it.
const USER_AGENT: &str = concat!("cod/", env!("CARGO_PKG_VERSION"));

/// Registry client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries reached over plain HTTP, as `host[:port]` (a bare host matches every port). Loopback
    /// registries (`localhost`, 127.0.0.0/8, `::1`) always use plain HTTP, as Docker does; all others use TLS
    /// unless listed here.
    pub insecure: Vec<String>,
    /// Credentials per registry host (`host[:port]`, `docker.io` for Docker Hub; `index.docker.io`,
    /// `registry-1.docker.io` and URL forms such as `https://host/v1/` are accepted and normalised).
    pub auths: BTreeMap<String, RegistryAuth>,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on one read from a connection: a registry that stalls mid-blob fails instead of hanging.
    pub read_timeout: Duration,
    /// Largest image config accepted (configs are parsed in memory).
    pub max_config_bytes: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            auths: BTreeMap::new(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            max_config_bytes: 8 << 20,
        }
    }
}

/// Credentials for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// HTTP Basic (also exchanged for a token where the registry uses token auth).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A ready bearer token.
    Bearer {
        /// The token.
        token: String,
    },
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RegistryAuth::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of a layer with `media_type`, or `None` if it is not a container filesystem layer
    /// (OCI `…image.layer.v1.tar[+gzip|+zstd]`, their non-distributable forms, Docker
    /// `…image.rootfs.diff.tar[.gzip]`).
    pub fn of_layer(media_type: &str) -> Option<Compression> {
        let rest = media_type
            .strip_prefix("application/vnd.oci.image.layer.")
            .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."))?;
        match rest {
            "v1.tar" | "nondistributable.v1.tar" | "diff.tar" => Some(Compression::None),
            "v1.tar+gzip"
            | "nondistributable.v1.tar+gzip"
            | "diff.tar.gzip"
            | "foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "v1.tar+zstd" | "nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A blob as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDescriptor {
    /// Content digest.
    pub digest: Digest,
    /// Exact size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDescriptor {
    /// The (compressed) blob.
    pub blob: BlobDescriptor,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// The parts of an image config a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Entrypoint (empty = none).
    pub entrypoint: Vec<String>,
    /// Default arguments (empty = none).
    pub cmd: Vec<String>,
    /// Working directory, if set.
    pub working_dir: Option<String>,
    /// `user[:group]` (names or ids), if set.
    pub user: Option<String>,
}

/// A manifest chosen for a platform, before its config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedManifest {
    /// What was asked for.
    pub reference: ImageRef,
    /// Digest of the platform's image manifest.
    pub digest: Digest,
    /// Digest of the index it was picked from, when the reference named an index.
    pub index_digest: Option<Digest>,
    /// The platform the index entry declared (`None` for a single-platform manifest: see the config).
    pub platform: Option<Platform>,
    /// The config blob.
    pub config: BlobDescriptor,
    /// Layer blobs, bottom first; their media types are known layer types.
    pub layers: Vec<BlobDescriptor>,
}

/// An image resolved for a platform: what to download and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// What was asked for.
    pub reference: ImageRef,
    /// Digest of the platform's image manifest (the image's identity in the store).
    pub digest: Digest,
    /// Digest of the index it was picked from, if any.
    pub index_digest: Option<Digest>,
    /// The image's platform (from the index entry or the config).
    pub platform: Platform,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// How to run it.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerDescriptor>,
}

/// Why an image could not be pulled. Every variant names the image; most say what to do.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry has no such repository, tag or digest.
    #[error(
        "image {image} not found in registry {registry}: check the name and tag, and that the image was pushed"
    )]
    NotFound {
        /// The image.
        image: String,
        /// The registry.
        registry: String,
        /// What the registry said.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry refused access (HTTP 401/403).
    #[error("{}", unauthorized_message(image, registry, *credentials))]
    Unauthorized {
        /// The image.
        image: String,
        /// The registry.
        registry: String,
        /// Whether credentials were configured for this registry (and so were rejected).
        credentials: bool,
        /// What the registry said.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry could not be reached (connection refused, DNS, TLS, timeout).
    #[error(
        "cannot reach registry {registry} for image {image}: check the address and the node's network (a registry without TLS must be listed as insecure)"
    )]
    Unreachable {
        /// The image.
        image: String,
        /// The registry.
        registry: String,
        /// The transport error.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry answered with an error we do not classify (5xx, rate limits, protocol errors).
    #[error("registry {registry} failed while serving image {image}: retry later")]
    Registry {
        /// The image.
        image: String,
        /// The registry.
        registry: String,
        /// The registry's answer.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The image exists but has no manifest this node can run.
    #[error(
        "image {image} has no variant for this node's platform {wanted} (it has: {}); run it on a node of a listed platform or push a {wanted} variant",
        list_platforms(available)
    )]
    PlatformMissing {
        /// The image.
        image: String,
        /// This node's platform.
        wanted: Platform,
        /// The platforms the image offers.
        available: Vec<Platform>,
    },
    /// A manifest, config or layer of a kind Cod does not run (an artifact, a schema 1 manifest, …).
    #[error(
        "image {image} is not a container image Cod can run: its {what} has media type {media_type:?}"
    )]
    UnsupportedMediaType {
        /// The image.
        image: String,
        /// Which part: `manifest`, `config` or `layer`.
        what: &'static str,
        /// The media type found.
        media_type: String,
    },
    /// The manifest or config is malformed.
    #[error("image {image} is malformed: {reason}; rebuild and push it again")]
    InvalidImage {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// Downloaded content does not match its digest.
    #[error(
        "blob {expected} of image {image} does not match its digest (got {actual}): the registry served corrupt data; retry, and check the registry's storage if it persists"
    )]
    DigestMismatch {
        /// The image.
        image: String,
        /// The digest the manifest names.
        expected: Digest,
        /// What the content hashed to.
        actual: String,
    },
    /// Downloaded content does not have the size the manifest states.
    #[error(
        "blob {digest} of image {image} is {actual} bytes where its manifest says {expected}: the registry served corrupt data; retry"
    )]
    SizeMismatch {
        /// The image.
        image: String,
        /// The blob.
        digest: Digest,
        /// Size in the manifest.
        expected: u64,
        /// Bytes received (when too many: as far as reading went).
        actual: u64,
    },
    /// A layer's uncompressed content does not match the config's `diff_ids` entry.
    #[error(
        "layer {layer} of image {image} unpacks to {actual}, but the image config says {expected}: the image is inconsistent; rebuild and push it again"
    )]
    DiffIdMismatch {
        /// The image.
        image: String,
        /// The layer blob.
        layer: Digest,
        /// The config's diff id.
        expected: Digest,
        /// The digest of the uncompressed stream.
        actual: Digest,
    },
    /// A layer could not be unpacked (damaged, or refused by the safety checks).
    #[error("layer {layer} of image {image} cannot be unpacked")]
    Unpack {
        /// The image.
        image: String,
        /// The layer blob.
        layer: Digest,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// A local file operation failed.
    #[error("image {image}: cannot {op} {path:?}")]
    Io {
        /// The image.
        image: String,
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image index in the state database failed.
    #[error("image {image}: the local image index failed")]
    Index {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A blocking task (unpacking) panicked or was cancelled.
    #[error("image {image}: the {task} task failed: {reason}")]
    Task {
        /// The image.
        image: String,
        /// Which task.
        task: &'static str,
        /// The join error.
        reason: String,
    },
}

fn unauthorized_message(image: &str, registry: &str, credentials: bool) -> String {
    if credentials {
        format!(
            "registry {registry} rejected the configured credentials for image {image}: check the user name and password (or token) configured for {registry} and that they may pull this repository"
        )
    } else {
        format!(
            "registry {registry} requires authentication for image {image}: configure credentials for {registry} in the node's registry auths"
        )
    }
}

fn list_platforms(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "no platforms".to_owned();
    }
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// === impl PullError ===

impl PullError {
    /// True when the registry could not be reached at all (the store then falls back to a cached tag).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PullError::Unreachable { .. })
    }
}

/// The registry HTTP client could not be built (a TLS set-up problem).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the registry HTTP client")]
pub struct RegistryInitError(#[source] OciDistributionError);

/// The distribution client. Cheap to clone (shared connection pools).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    /// TLS client for everything not listed as plain HTTP. oci-client picks the scheme per client, so plain
    /// and TLS registries need one client each.
    tls: Client,
    /// Plain-HTTP client for loopback and `insecure` registries.
    plain: Client,
    /// Normalised `insecure` entries.
    insecure: Vec<String>,
    /// Credentials by normalised registry name.
    auths: BTreeMap<String, RegistryAuth>,
    /// Cap on a config blob.
    max_config_bytes: u64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("insecure", &self.inner.insecure)
            .field("auths", &self.inner.auths.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Normalises a registry key from configuration: lower-case, no scheme or path, Docker Hub's aliases
/// folded into `docker.io`.
fn normalise_registry_key(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(&key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    }
}

/// True for `localhost`, 127.0.0.0/8 and `::1` (with or without a port).
fn is_loopback(registry_host: &str) -> bool {
    let host = registry_host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(registry_host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

// === impl Registry ===

impl Registry {
    /// A client for `config`. Needs a rustls crypto provider installed (main does this first thing).
    pub fn new(config: RegistryConfig) -> Result<Registry, RegistryInitError> {
        let client = |protocol| {
            Client::try_from(ClientConfig {
                protocol,
                connect_timeout: Some(config.connect_timeout),
                read_timeout: Some(config.read_timeout),
                user_agent: USER_AGENT,
                // We choose the platform ourselves (see `pick_from_index`).
                platform_resolver: None,
                ..ClientConfig::default()
            })
            .map_err(RegistryInitError)
        };
        Ok(Registry {
            inner: Arc::new(RegistryInner {
                tls: client(ClientProtocol::Https)?,
                plain: client(ClientProtocol::Http)?,
                insecure: config
                    .insecure
                    .iter()
                    .map(|i| normalise_registry_key(i))
                    .collect(),
                auths: config
                    .auths
                    .into_iter()
                    .map(|(k, v)| (normalise_registry_key(&k), v))
                    .collect(),
                max_config_bytes: config.max_config_bytes,
            }),
        })
    }

    /// Whether `image`'s registry is reached over plain HTTP.
    pub fn uses_plain_http(&self, image: &ImageRef) -> bool {
        is_loopback(image.registry_host())
            || self
                .inner
                .insecure
                .iter()
                .any(|i| i == image.registry() || i == image.registry_host())
    }

    fn client(&self, image: &ImageRef) -> &Client {
        if self.uses_plain_http(image) {
            &self.inner.plain
        } else {
            &self.inner.tls
        }
    }

    fn auth(&self, image: &ImageRef) -> OciAuth {
        match self.inner.auths.get(image.registry()) {
            Some(RegistryAuth::Basic { username, password }) => {
                OciAuth::Basic(username.clone(), password.clone())
            }
            Some(RegistryAuth::Bearer { token }) => OciAuth::Bearer(token.clone()),
            None => OciAuth::Anonymous,
        }
    }

    /// Resolves `image` to the manifest for `platform`: fetches the manifest and, if it is an index (OCI
    /// index or Docker manifest list), picks the best entry for `platform` ([`Platform::pick`]) and fetches
    /// that. An index without a usable entry is [`PullError::PlatformMissing`]. A single-platform manifest's
    /// platform is only known from its config: see [`Registry::resolve`].
    pub async fn resolve_manifest(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<ResolvedManifest, PullError> {
        let (body, digest) = self.fetch_manifest(image, image.digest()).await?;
        match parse_manifest(image, &body)? {
            Manifest::Image(m) => manifest_to_resolved(image, digest, None, None, &m),
            Manifest::Index(index) => {
                let (entry_digest, entry_platform) = pick_from_index(image, platform, &index)?;
                let (body, manifest_digest) =
                    self.fetch_manifest(image, Some(&entry_digest)).await?;
                match parse_manifest(image, &body)? {
                    Manifest::Image(m) => manifest_to_resolved(
                        image,
                        manifest_digest,
                        Some(digest),
                        Some(entry_platform),
                        &m,
                    ),
                    Manifest::Index(_) => Err(PullError::InvalidImage {
                        image: image.to_string(),
                        reason: format!(
                            "index entry {entry_digest} is itself an index (nested indexes are not supported)"
                        ),
                    }),
                }
            }
        }
    }

    /// Resolves `image` for `platform` ([`Registry::resolve_manifest`]) and reads its config: the run
    /// settings and the layers' `diff_ids`. A single-platform image whose config names another platform is
    /// [`PullError::PlatformMissing`] too.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<ResolvedImage, PullError> {
        let manifest = self.resolve_manifest(image, platform).await?;
        self.fetch_config(&manifest, platform).await
    }

    /// Reads the config of a resolved manifest and checks it against `platform` (when the manifest did not
    /// come from an index entry that already declared it).
    pub async fn fetch_config(
        &self,
        manifest: &ResolvedManifest,
        platform: &Platform,
    ) -> Result<ResolvedImage, PullError> {
        let image = &manifest.reference;
        if manifest.config.size > self.inner.max_config_bytes {
            return Err(PullError::InvalidImage {
                image: image.to_string(),
                reason: format!(
                    "its config is {} bytes, more than the {} allowed",
                    manifest.config.size, self.inner.max_config_bytes
                ),
            });
        }
        let mut bytes = Vec::new();
        let mut stream = self.open_blob(image, &manifest.config).await?;
        while let Some(chunk) = stream.next().await? {
            bytes.extend_from_slice(&chunk);
        }
        parse_config(manifest, platform, &bytes)
    }

    /// Streams the blob `blob` of `image` into `dest`: to a temp file next to it first, checking the size as
    /// bytes arrive and the digest at the end, then renamed into place (after an fsync), so `dest` only ever
    /// holds verified content. `progress` gets the running byte count. If the future is dropped, the temp
    /// file is removed.
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        blob: &BlobDescriptor,
        dest: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), PullError> {
        let io = |op: &'static str, path: &Path| {
            let image = image.to_string();
            let path = path.to_owned();
            move |source| PullError::Io {
                image,
                op,
                path,
                source,
            }
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.partial-{}", uuid::Uuid::new_v4()));
        let guard = RemoveOnDrop(Some(tmp.clone()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(io("create", &tmp))?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut stream = self.open_blob(image, blob).await?;
        while let Some(chunk) = stream.next().await? {
            out.write_all(&chunk).await.map_err(io("write", &tmp))?;
            progress(stream.received);
        }
        out.flush().await.map_err(io("write", &tmp))?;
        let file = out.into_inner();
        // Durable before it becomes visible under its final name: after a power cut a blob file is either
        // absent or complete.
        file.sync_all().await.map_err(io("sync", &tmp))?;
        drop(file);
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(io("rename into place", dest))?;
        guard.disarm();
        Ok(())
    }

    /// Opens `blob` as a stream that enforces the manifest's size and (through oci-client) its digest.
    async fn open_blob<'a>(
        &'a self,
        image: &'a ImageRef,
        blob: &'a BlobDescriptor,
    ) -> Result<BlobStream<'a>, PullError> {
        let client = self.client(image);
        let reference = oci_reference(image);
        client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth(image))
            .await;
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.to_string(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let stream = client
            .pull_blob_stream(&reference, &descriptor)
            .await
            .map_err(|e| self.classify(image, e))?;
        Ok(BlobStream {
            registry: self,
            image,
            blob,
            stream,
            received: 0,
        })
    }

    /// Fetches a manifest (by `digest` if given, else by the reference's tag) and returns its body and
    /// sha256 digest, checked against the digest asked for.
    async fn fetch_manifest(
        &self,
        image: &ImageRef,
        digest: Option<&Digest>,
    ) -> Result<(bytes::Bytes, Digest), PullError> {
        let reference = match digest {
            Some(d) => oci_reference(&image.with_digest(d.clone())),
            None => oci_reference(image),
        };
        let (body, _) = self
            .client(image)
            .pull_manifest_raw(&reference, &self.auth(image), ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.classify(image, e))?;
        // The registry's digest header may use another algorithm; the store keys images by sha256.
        let actual = Digest::sha256_of(&body);
        if let Some(expected) = digest
            && *expected != actual
        {
            return Err(PullError::DigestMismatch {
                image: image.to_string(),
                expected: expected.clone(),
                actual: actual.to_string(),
            });
        }
        Ok((body, actual))
    }

    /// Maps an oci-client error to what the user can act on.
    fn classify(&self, image: &ImageRef, err: OciDistributionError) -> PullError {
        use OciDistributionError as E;
        let image_s = image.to_string();
        let registry = image.registry().to_owned();
        let credentials = self.inner.auths.contains_key(image.registry());
        if let Some((expected, actual)) = digest_failure(&err) {
            return match expected.parse::<Digest>() {
                Ok(expected) => PullError::DigestMismatch {
                    image: image_s,
                    expected,
                    actual,
                },
                Err(_) => PullError::Registry {
                    image: image_s,
                    registry,
                    source: Box::new(err),
                },
            };
        }
        enum Kind {
            NotFound,
            Unauthorized,
            Unreachable,
            Other,
        }
        let kind = match &err {
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Kind::Unauthorized,
            E::RegistryError { envelope, .. } => {
                let has = |codes: &[OciErrorCode]| {
                    envelope.errors.iter().any(|e| codes.contains(&e.code))
                };
                if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    Kind::Unauthorized
                } else if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                    OciErrorCode::BlobUnknown,
                ]) {
                    Kind::NotFound
                } else {
                    Kind::Other
                }
            }
            E::ServerError { code, .. } => match code {
                401 | 403 => Kind::Unauthorized,
                404 => Kind::NotFound,
                _ => Kind::Other,
            },
            E::ImageManifestNotFoundError(_) => Kind::NotFound,
            E::RequestError(_) | E::IoError(_) => Kind::Unreachable,
            E::UnsupportedMediaTypeError(media_type) => {
                return PullError::UnsupportedMediaType {
                    image: image_s,
                    what: "manifest",
                    media_type: media_type.clone(),
                };
            }
            _ => Kind::Other,
        };
        let source = Box::new(err);
        match kind {
            Kind::NotFound => PullError::NotFound {
                image: image_s,
                registry,
                source,
            },
            Kind::Unauthorized => PullError::Unauthorized {
                image: image_s,
                registry,
                credentials,
                source,
            },
            Kind::Unreachable => PullError::Unreachable {
                image: image_s,
                registry,
                source,
            },
            Kind::Other => PullError::Registry {
                image: image_s,
                registry,
                source,
            },
        }
    }
}

/// A blob download in progress.
struct BlobStream<'a> {
    registry: &'a Registry,
    image: &'a ImageRef,
    blob: &'a BlobDescriptor,
    /// oci-client's stream, which checks the digest when it reaches the end.
    stream: SizedStream,
    /// Bytes so far.
    received: u64,
}

impl BlobStream<'_> {
    /// The next chunk, `None` at the verified end.
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, PullError> {
        let size_mismatch = |actual| PullError::SizeMismatch {
            image: self.image.to_string(),
            digest: self.blob.digest.clone(),
            expected: self.blob.size,
            actual,
        };
        match self.stream.next().await {
            Some(Ok(chunk)) => {
                self.received += chunk.len() as u64;
                // Stop a registry that sends more than the manifest promised (it could send forever).
                if self.received > self.blob.size {
                    return Err(size_mismatch(self.received));
                }
                Ok(Some(chunk))
            }
            Some(Err(e)) => Err(self
                .registry
                .classify(self.image, OciDistributionError::IoError(e))),
            // A short body fails the digest check inside the stream before this point; this covers content
            // that hashes right but is shorter than the manifest claims.
            None if self.received != self.blob.size => Err(size_mismatch(self.received)),
            None => Ok(None),
        }
    }
}

/// The expected and actual digests if `err` is a failed verification (oci-client reports those from inside
/// the blob stream as I/O errors wrapping a `DigestError`).
fn digest_failure(err: &OciDistributionError) -> Option<(String, String)> {
    let digest_err = match err {
        OciDistributionError::DigestError(d) => Some(d),
        OciDistributionError::IoError(io) => io.get_ref().and_then(|e| e.downcast_ref()),
        _ => None,
    }?;
    match digest_err {
        DigestError::VerificationError { expected, actual } => {
            Some((expected.clone(), actual.clone()))
        }
        _ => None,
    }
}

/// Deletes a temp file when a download fails or is cancelled.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the store also sweeps stray partial files when it opens.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn oci_reference(image: &ImageRef) -> Reference {
    let registry = image.registry().to_owned();
    let repository = image.repository().to_owned();
    match image.digest() {
        Some(d) => Reference::with_digest(registry, repository, d.to_string()),
        None => Reference::with_tag(
            registry,
            repository,
            image.tag().unwrap_or("latest").to_owned(),
        ),
    }
}

enum Manifest {
    Image(Box<OciImageManifest>),
    Index(OciImageIndex),
}

/// Parses a manifest body, deciding image vs index by its media type (or its shape, when it has none).
fn parse_manifest(image: &ImageRef, body: &[u8]) -> Result<Manifest, PullError> {
    let invalid = |reason: String| PullError::InvalidImage {
        image: image.to_string(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("its manifest is not JSON: {e}")))?;
    let schema = value
        .get("schemaVersion")
        .and_then(serde_json::Value::as_i64);
    if schema != Some(2) {
        return Err(PullError::UnsupportedMediaType {
            image: image.to_string(),
            what: "manifest",
            media_type: format!(
                "schema version {}",
                schema.map_or("missing".to_owned(), |s| s.to_string())
            ),
        });
    }
    let media_type = value.get("mediaType").and_then(serde_json::Value::as_str);
    let is_index = match media_type {
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE) => true,
        Some(OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE) => false,
        Some(other) => {
            return Err(PullError::UnsupportedMediaType {
                image: image.to_string(),
                what: "manifest",
                media_type: other.to_owned(),
            });
        }
        None => value.get("manifests").is_some(),
    };
    if is_index {
        serde_json::from_value(value)
            .map(Manifest::Index)
            .map_err(|e| invalid(format!("its index does not parse: {e}")))
    } else {
        serde_json::from_value(value)
            .map(|m| Manifest::Image(Box::new(m)))
            .map_err(|e| invalid(format!("its manifest does not parse: {e}")))
    }
}

fn descriptor(
    image: &ImageRef,
    what: &str,
    d: &OciDescriptor,
) -> Result<BlobDescriptor, PullError> {
    let invalid = |reason: String| PullError::InvalidImage {
        image: image.to_string(),
        reason,
    };
    let digest = d
        .digest
        .parse::<Digest>()
        .map_err(|e| invalid(format!("its {what} descriptor has {e}")))?;
    let size = u64::try_from(d.size)
        .map_err(|_| invalid(format!("its {what} {digest} has a negative size")))?;
    Ok(BlobDescriptor {
        digest,
        size,
        media_type: d.media_type.clone(),
    })
}

fn manifest_to_resolved(
    image: &ImageRef,
    digest: Digest,
    index_digest: Option<Digest>,
    platform: Option<Platform>,
    m: &OciImageManifest,
) -> Result<ResolvedManifest, PullError> {
    if !matches!(
        m.config.media_type.as_str(),
        OCI_CONFIG_MEDIA_TYPE | IMAGE_DOCKER_CONFIG_MEDIA_TYPE
    ) {
        return Err(PullError::UnsupportedMediaType {
            image: image.to_string(),
            what: "config",
            media_type: m.config.media_type.clone(),
        });
    }
    let config = descriptor(image, "config", &m.config)?;
    let layers = m
        .layers
        .iter()
        .map(|l| {
            if Compression::of_layer(&l.media_type).is_none() {
                return Err(PullError::UnsupportedMediaType {
                    image: image.to_string(),
                    what: "layer",
                    media_type: l.media_type.clone(),
                });
            }
            descriptor(image, "layer", l)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResolvedManifest {
        reference: image.clone(),
        digest,
        index_digest,
        platform,
        config,
        layers,
    })
}

/// Picks `platform`'s entry from an index; entries without a platform, or that are not image manifests
/// (attestations, nested indexes), are not candidates.
fn pick_from_index(
    image: &ImageRef,
    platform: &Platform,
    index: &OciImageIndex,
) -> Result<(Digest, Platform), PullError> {
    let usable: Vec<(&ImageIndexEntry, Platform)> = index
        .manifests
        .iter()
        .filter(|e| {
            matches!(
                e.media_type.as_str(),
                OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE
            )
        })
        .filter_map(|e| {
            let p = e.platform.as_ref()?;
            let platform = Platform::new(
                &p.os.to_string(),
                &p.architecture.to_string(),
                p.variant.as_deref(),
            );
            // BuildKit's attestation manifests are listed as unknown/unknown.
            (platform.os != "unknown").then_some((e, platform))
        })
        .collect();
    let platforms: Vec<Platform> = usable.iter().map(|(_, p)| p.clone()).collect();
    let Some(i) = platform.pick(&platforms) else {
        let mut available = platforms;
        available.sort();
        available.dedup();
        return Err(PullError::PlatformMissing {
            image: image.to_string(),
            wanted: platform.clone(),
            available,
        });
    };
    let (entry, chosen) = &usable[i];
    let digest = entry
        .digest
        .parse::<Digest>()
        .map_err(|e| PullError::InvalidImage {
            image: image.to_string(),
            reason: format!("its index entry for {chosen} has {e}"),
        })?;
    Ok((digest, chosen.clone()))
}

/// The parts of an image config we read; everything else is ignored.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootFs,
}

#[derive(Deserialize)]
struct RawRunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn parse_config(
    manifest: &ResolvedManifest,
    platform: &Platform,
    bytes: &[u8],
) -> Result<ResolvedImage, PullError> {
    let image = &manifest.reference;
    let invalid = |reason: String| PullError::InvalidImage {
        image: image.to_string(),
        reason,
    };
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("its config does not parse: {e}")))?;
    if raw.rootfs.kind != "layers" {
        return Err(invalid(format!(
            "its config's rootfs type is {:?}, not \"layers\"",
            raw.rootfs.kind
        )));
    }
    if raw.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(format!(
            "its manifest has {} layers but its config lists {} diff_ids",
            manifest.layers.len(),
            raw.rootfs.diff_ids.len()
        )));
    }
    let config_platform = match (&raw.os, &raw.architecture) {
        (Some(os), Some(arch)) if !os.is_empty() && !arch.is_empty() => {
            Some(Platform::new(os, arch, raw.variant.as_deref()))
        }
        _ => None,
    };
    // An index entry already chose the platform; a lone manifest is checked against its config so that a
    // node never accepts an image it would fail to execute. A config without os/architecture is trusted.
    let chosen = match (&manifest.platform, config_platform) {
        (Some(p), _) => p.clone(),
        (None, Some(cp)) if platform.runs(&cp) => cp,
        (None, Some(cp)) => {
            return Err(PullError::PlatformMissing {
                image: image.to_string(),
                wanted: platform.clone(),
                available: vec![cp],
            });
        }
        (None, None) => platform.clone(),
    };
    let layers = manifest
        .layers
        .iter()
        .zip(&raw.rootfs.diff_ids)
        .map(|(blob, diff_id)| {
            let diff_id = diff_id
                .parse::<Digest>()
                .map_err(|e| invalid(format!("its config lists a bad diff_id: {e}")))?;
            let compression = Compression::of_layer(&blob.media_type).ok_or_else(|| {
                PullError::UnsupportedMediaType {
                    image: image.to_string(),
                    what: "layer",
                    media_type: blob.media_type.clone(),
                }
            })?;
            Ok(LayerDescriptor {
                blob: blob.clone(),
                compression,
                diff_id,
            })
        })
        .collect::<Result<Vec<_>, PullError>>()?;
    let run = raw.config.unwrap_or(RawRunConfig {
        env: None,
        entrypoint: None,
        cmd: None,
        working_dir: None,
        user: None,
    });
    Ok(ResolvedImage {
        reference: image.clone(),
        digest: manifest.digest.clone(),
        index_digest: manifest.index_digest.clone(),
        platform: chosen,
        config_digest: manifest.config.digest.clone(),
        config: ImageConfig {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
        },
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRef {
        "127.0.0.1:5000/test/img:1".parse().expect("ref")
    }

    fn d(byte: u8) -> Digest {
        Digest::sha256_of(&[byte])
    }

    fn manifest(layers: usize, platform: Option<Platform>) -> ResolvedManifest {
        ResolvedManifest {
            reference: image(),
            digest: d(0),
            index_digest: None,
            platform,
            config: BlobDescriptor {
                digest: d(1),
                size: 10,
                media_type: OCI_CONFIG_MEDIA_TYPE.into(),
            },
            layers: (0..layers)
                .map(|i| BlobDescriptor {
                    digest: d(10 + i as u8),
                    size: 5,
                    media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn layer_media_types_map_to_compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            ("application/vnd.wasm.content.layer.v1+wasm", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::of_layer(mt), want, "{mt}");
        }
    }

    #[test]
    fn loopback_registries_use_plain_http_and_others_tls() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = Registry::new(RegistryConfig {
            insecure: vec!["insecure.lan:5000".into(), "http://other.lan".into()],
            ..RegistryConfig::default()
        })
        .expect("registry");
        let plain = |s: &str| registry.uses_plain_http(&s.parse().expect("ref"));
        assert!(plain("localhost/x"));
        assert!(plain("localhost:5000/x"));
        assert!(plain("127.0.0.1:5000/x"));
        assert!(plain("127.8.9.10/x"));
        assert!(plain("[::1]:5000/x"));
        assert!(plain("insecure.lan:5000/x"));
        assert!(
            !plain("insecure.lan:5001/x"),
            "an entry with a port names that port only"
        );
        assert!(plain("other.lan:1234/x"), "a bare host covers every port");
        assert!(!plain("busybox"));
        assert!(!plain("ghcr.io/a/b"));
        assert!(!plain("128.0.0.1:5000/x"));
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let basic = RegistryAuth::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let bearer = RegistryAuth::Bearer {
            token: "tok-secret".into(),
        };
        let text = format!("{basic:?} {bearer:?}");
        assert!(text.contains("alice"));
        assert!(
            !text.contains("hunter2") && !text.contains("tok-secret"),
            "{text}"
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = Registry::new(RegistryConfig {
            auths: [("https://index.docker.io/v1/".to_owned(), basic)].into(),
            ..RegistryConfig::default()
        })
        .expect("registry");
        let text = format!("{registry:?}");
        assert!(
            text.contains("docker.io") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(matches!(
            registry.auth(&"busybox".parse().expect("ref")),
            OciAuth::Basic(..)
        ));
    }

    #[test]
    fn config_yields_run_settings_and_diff_ids() {
        let config = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["A=1"],"Entrypoint":["/bin/sh"],"Cmd":null,"WorkingDir":"/w","User":""},
            "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let amd64 = Platform::new("linux", "amd64", None);
        let got = parse_config(&manifest(1, None), &amd64, config).expect("config");
        assert_eq!(got.config.env, vec!["A=1"]);
        assert_eq!(got.config.entrypoint, vec!["/bin/sh"]);
        assert!(got.config.cmd.is_empty());
        assert_eq!(got.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(got.config.user, None);
        assert_eq!(got.layers[0].diff_id, Digest::sha256_of(b""));
        assert_eq!(got.layers[0].compression, Compression::Gzip);
        assert_eq!(got.platform, amd64);
    }

    #[test]
    fn a_lone_manifest_for_another_platform_is_platform_missing() {
        let config =
            br#"{"architecture":"s390x","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let node = Platform::new("linux", "amd64", None);
        let err = parse_config(&manifest(0, None), &node, config).expect_err("wrong platform");
        match &err {
            PullError::PlatformMissing { available, .. } => {
                assert_eq!(available, &vec![Platform::new("linux", "s390x", None)]);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("linux/amd64") && msg.contains("linux/s390x"),
            "{msg}"
        );
        // An index entry's platform is authoritative (the config is not consulted).
        let from_index = manifest(0, Some(node.clone()));
        assert!(parse_config(&from_index, &node, config).is_ok());
    }

    #[test]
    fn inconsistent_configs_are_invalid_images() {
        let node = Platform::new("linux", "amd64", None);
        let two_ids = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let err = parse_config(&manifest(1, None), &node, two_ids).expect_err("count");
        assert!(
            err.to_string().contains("1 layers but its config lists 2"),
            "{err}"
        );
        let bad_id = br#"{"rootfs":{"type":"layers","diff_ids":["md5:00"]}}"#;
        assert!(matches!(
            parse_config(&manifest(1, None), &node, bad_id),
            Err(PullError::InvalidImage { .. })
        ));
        assert!(parse_config(&manifest(0, None), &node, b"[]").is_err());
    }

    #[test]
    fn manifests_are_told_apart_and_schema_1_is_refused() {
        let img = image();
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(matches!(
            parse_manifest(&img, index),
            Ok(Manifest::Index(_))
        ));
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(&img, bare_index),
            Ok(Manifest::Index(_))
        ));
        let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(&img, schema1),
            Err(PullError::UnsupportedMediaType {
                what: "manifest",
                ..
            })
        ));
        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.wasm.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},
            "layers":[]}"#;
        let Ok(Manifest::Image(m)) = parse_manifest(&img, artifact) else {
            panic!("an image manifest")
        };
        let err = manifest_to_resolved(&img, d(0), None, None, &m).expect_err("artifact");
        assert!(err.to_string().contains("not a container image"), "{err}");
    }

    #[test]
    fn index_pick_skips_attestations_and_lists_what_it_has() {
        let entry = |digest: &Digest, os: &str, arch: &str, variant: Option<&str>| {
            serde_json::json!({
                "mediaType": OCI_IMAGE_MEDIA_TYPE,
                "digest": digest.to_string(),
                "size": 1,
                "platform": {"os": os, "architecture": arch, "variant": variant},
            })
        };
        let index: OciImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                entry(&d(1), "unknown", "unknown", None),
                entry(&d(2), "linux", "arm", Some("v6")),
                entry(&d(3), "linux", "arm64", Some("v8")),
                entry(&d(4), "linux", "arm", Some("v7")),
            ],
        }))
        .expect("index");
        let img = image();
        let pick = |p: &str| pick_from_index(&img, &p.parse().expect("platform"), &index);
        assert_eq!(pick("linux/arm64").expect("arm64").0, d(3));
        assert_eq!(pick("linux/arm/v7").expect("v7").0, d(4));
        assert_eq!(pick("linux/arm/v6").expect("v6").0, d(2));
        match pick("linux/amd64") {
            Err(PullError::PlatformMissing { available, .. }) => {
                let names: Vec<String> = available.iter().map(ToString::to_string).collect();
                assert_eq!(names, vec!["linux/arm/v6", "linux/arm/v7", "linux/arm64"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
