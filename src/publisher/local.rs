//! The `local` publisher: packs an execution's result folder into `<dir>/<executionID>.tar.gz` and serves that
//! directory over plain HTTP, answering with Bacalhau's shape
//! `{Type: urlDownload, Params: {URL: "http://<address>:<port>/<executionID>.tar.gz"}}`.
//!
//! The tarball's entries are relative to the result folder (`stdout`, `stderr`, `exitCode`, `outputs/…`), so
//! `cod job get` can unpack it straight into its output directory (with `storage::archive::unpack_tar_gz`).
//! Symlinks in the result folder are stored as symlinks, never followed: a task must not be able to publish
//! host files by linking to them.
//!
//! The server must never serve anything but finished result tarballs: only names matching
//! `e-[A-Za-z0-9-]+.tar.gz` are looked up (so no path can traverse), and tarballs are written to a dot-named
//! temporary file and renamed into place, so a half-written one is never visible.

use std::fs;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::tarball::pack;
use super::{PublishTarget, Publisher, PublisherError};
use crate::model::{PublisherKind, PublisherSpec, SourceKind, SpecConfig};

/// Bacalhau's default port for the local publisher.
pub const DEFAULT_PORT: u16 = 6001;

/// The served file name's suffix.
const SUFFIX: &str = ".tar.gz";

/// Settings of the local publisher (Bacalhau's `Publishers.Types.Local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPublisherConfig {
    /// Where tarballs are written and served from; created if missing.
    pub dir: PathBuf,
    /// The host put in published URLs: it must be reachable by whoever downloads results (Bacalhau issue
    /// #4245), which `listen_host` usually is not.
    pub address: String,
    /// The port to listen on; 0 picks a free one (tests, several nodes on one host).
    pub port: u16,
    /// The address to bind.
    pub listen_host: String,
}

impl LocalPublisherConfig {
    /// Bacalhau's defaults for `dir`: advertise `127.0.0.1`, listen on `0.0.0.0:6001`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            address: "127.0.0.1".to_owned(),
            port: DEFAULT_PORT,
            listen_host: "0.0.0.0".to_owned(),
        }
    }
}

/// The HTTP server of a [`LocalPublisher`]: runs until the shutdown token given to [`LocalPublisher::start`] is
/// cancelled and open requests have finished. The caller spawns it into its component's `JoinSet`.
pub type LocalPublisherServer =
    Pin<Box<dyn Future<Output = Result<(), PublisherError>> + Send + 'static>>;

/// Publishes results as tarballs served by this node; see the module docs.
#[derive(Debug, Clone)]
pub struct LocalPublisher {
    /// Where tarballs go; the server reads the same directory.
    dir: PathBuf,
    /// `http://<address>:<port>`, the prefix of every published URL.
    url_base: String,
    /// The bound address, for tests and logs (the port matters when 0 was asked for).
    local_addr: SocketAddr,
}

// === impl LocalPublisher ===

impl LocalPublisher {
    /// Creates `config.dir`, binds the listener and returns the publisher with its (not yet running) server.
    /// Binding here, before anything runs, makes a taken port fail node startup rather than the first job.
    pub async fn start(
        config: LocalPublisherConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, LocalPublisherServer), PublisherError> {
        Self::start_with_routes(config, Router::new(), shutdown).await
    }

    /// [`LocalPublisher::start`], also serving `routes` (the IPFS gateway's `/ipfs/…`) on the same listener:
    /// both hand content to the people who submitted jobs, who can already reach this port.
    pub async fn start_with_routes(
        config: LocalPublisherConfig,
        routes: Router,
        shutdown: CancellationToken,
    ) -> Result<(Self, LocalPublisherServer), PublisherError> {
        tokio::fs::create_dir_all(&config.dir)
            .await
            .map_err(|source| PublisherError::Io {
                op: "creating the results directory",
                path: config.dir.clone(),
                source,
            })?;
        let bind_text = format!("{}:{}", config.listen_host, config.port);
        let listener = TcpListener::bind((config.listen_host.as_str(), config.port))
            .await
            .map_err(|source| PublisherError::Bind {
                addr: bind_text.clone(),
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| PublisherError::Bind {
                addr: bind_text,
                source,
            })?;
        let host = if config.address.contains(':') && !config.address.starts_with('[') {
            format!("[{}]", config.address)
        } else {
            config.address.clone()
        };
        let publisher = Self {
            dir: config.dir.clone(),
            url_base: format!("http://{host}:{}", local_addr.port()),
            local_addr,
        };
        let router = Router::new()
            .route("/{file}", get(serve_file))
            .with_state(Arc::new(config.dir))
            .merge(routes);
        let server = async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(|source| PublisherError::Serve {
                    addr: local_addr.to_string(),
                    source,
                })
        };
        Ok((publisher, Box::pin(server)))
    }

    /// `http://<address>:<port>`, the prefix of published URLs.
    pub fn url_base(&self) -> &str {
        &self.url_base
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound port (the one picked when 0 was configured).
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }
}

#[async_trait]
impl Publisher for LocalPublisher {
    fn kind(&self) -> PublisherKind {
        PublisherKind::Local
    }

    fn validate(&self, spec: &PublisherSpec) -> Result<(), PublisherError> {
        match spec {
            PublisherSpec::Local => Ok(()),
            other => Err(PublisherError::Unsupported {
                kind: PublisherKind::Local.as_str(),
                reason: format!("the task asks for the {} publisher", other.type_name()),
            }),
        }
    }

    async fn publish(
        &self,
        target: &PublishTarget,
        result_dir: &Path,
    ) -> Result<SpecConfig, PublisherError> {
        let name = format!("{}{SUFFIX}", target.execution_id);
        if !is_result_name(&name) {
            // Execution ids are `e-<uuid>`; anything else could make a path that the server would not serve
            // (or, with separators, one outside `dir`).
            return Err(PublisherError::Unsupported {
                kind: PublisherKind::Local.as_str(),
                reason: format!(
                    "execution id {:?} is not of the form e-<uuid>",
                    target.execution_id.as_str()
                ),
            });
        }
        let final_path = self.dir.join(&name);
        let tmp_path = self
            .dir
            .join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
        let source_dir = result_dir.to_owned();
        let execution_id = target.execution_id.clone();
        let (out, tmp) = (final_path.clone(), tmp_path.clone());
        let packed = tokio::task::spawn_blocking(move || {
            let result = pack(&source_dir, &tmp, &out, execution_id.as_str());
            if result.is_err() {
                // Best effort: a leftover dot-file is never served, only wastes space.
                let _ = fs::remove_file(&tmp);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        packed.map_err(|source| PublisherError::Pack {
            execution_id: target.execution_id.clone(),
            dir: result_dir.to_owned(),
            source,
        })?;
        debug!(execution_id = %target.execution_id, path = ?final_path, "result packed");
        let mut params = Map::new();
        params.insert(
            "URL".to_owned(),
            Value::String(format!("{}/{name}", self.url_base)),
        );
        Ok(SpecConfig {
            kind: SourceKind::UrlDownload.as_str().to_owned(),
            params,
        })
    }
}

/// Whether `name` is a result tarball name: `e-` + `[A-Za-z0-9-]+` + `.tar.gz`. Nothing else is ever served.
fn is_result_name(name: &str) -> bool {
    name.strip_prefix("e-")
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// GET (and HEAD, which axum answers from the GET handler without the body) of one result tarball.
async fn serve_file(State(dir): State<Arc<PathBuf>>, UrlPath(name): UrlPath<String>) -> Response {
    if !is_result_name(&name) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = dir.join(&name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return StatusCode::NOT_FOUND.into_response();
        }
        Err(e) => {
            warn!(path = ?path, error = %e, "opening a published result failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    // Length from the open file, so it matches the bytes streamed even if the name is replaced meanwhile.
    let len = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            warn!(path = ?path, error = %e, "inspecting a published result failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::model::{ExecutionId, JobId, NodeId};
    use crate::publisher::tarball::tests::result_dir;
    use crate::storage::archive::unpack_tar_gz;

    fn client() -> reqwest::Client {
        // reqwest is built without a default crypto provider; install ring as the process default (ignoring
        // "already installed" from another test).
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn start(
        dir: &Path,
    ) -> (
        LocalPublisher,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), PublisherError>>,
    ) {
        let shutdown = CancellationToken::new();
        let config = LocalPublisherConfig {
            port: 0,
            listen_host: "127.0.0.1".to_owned(),
            ..LocalPublisherConfig::new(dir)
        };
        let (publisher, server) = LocalPublisher::start(config, shutdown.clone())
            .await
            .expect("start");
        (publisher, shutdown, tokio::spawn(server))
    }

    fn target() -> PublishTarget {
        PublishTarget {
            execution_id: ExecutionId::generate(),
            job_id: JobId::generate(),
            node_id: NodeId::default(),
            spec: PublisherSpec::Local,
        }
    }

    /// A raw HTTP/1.1 request, for paths an HTTP client would normalize away.
    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn publishes_a_tarball_and_serves_it_over_http() {
        let root = tempfile::tempdir().expect("tempdir");
        let (publisher, shutdown, server) = start(&root.path().join("published")).await;
        let target = target();
        let spec = publisher
            .publish(&target, &result_dir(root.path()))
            .await
            .expect("publish");

        assert_eq!(spec.kind, "urlDownload");
        let url = spec
            .params
            .get("URL")
            .and_then(Value::as_str)
            .expect("URL")
            .to_owned();
        assert_eq!(
            url,
            format!(
                "http://127.0.0.1:{}/{}.tar.gz",
                publisher.port(),
                target.execution_id
            )
        );

        let http = client();
        let response = http.get(&url).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/gzip");
        let len: u64 = response.headers()[header::CONTENT_LENGTH]
            .to_str()
            .expect("len")
            .parse()
            .expect("len");
        let body = response.bytes().await.expect("body");
        assert_eq!(body.len() as u64, len);

        let head = http.head(&url).send().await.expect("HEAD");
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH]
                .to_str()
                .expect("len"),
            len.to_string()
        );

        let out = root.path().join("out");
        fs::create_dir(&out).expect("out");
        unpack_tar_gz(body.as_ref(), &out, 1 << 20).expect("unpack");
        assert_eq!(
            fs::read_to_string(out.join("stdout")).expect("stdout"),
            "hello\n"
        );
        assert_eq!(
            fs::read_to_string(out.join("exitCode")).expect("exitCode"),
            "0"
        );
        assert_eq!(
            fs::read_to_string(out.join("outputs/sub/data.txt")).expect("data"),
            "data"
        );
        let link = fs::read_link(out.join("outputs/link")).expect("still a symlink");
        assert_eq!(link, Path::new("sub/data.txt"));

        shutdown.cancel();
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn serves_nothing_but_result_tarballs() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("published");
        let (publisher, shutdown, server) = start(&dir).await;
        fs::write(dir.join("secret.txt"), "s").expect("secret");
        fs::write(root.path().join("e-outside.tar.gz"), "s").expect("outside");

        let http = client();
        for path in [
            "/secret.txt",
            "/e-missing.tar.gz",
            "/e-..%2Fe-outside.tar.gz",
            "/e-outside.tar.gz",
        ] {
            let response = http
                .get(format!("{}{path}", publisher.url_base()))
                .send()
                .await
                .expect("GET");
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let raw = raw_get(publisher.local_addr(), "/../e-outside.tar.gz").await;
        assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");

        shutdown.cancel();
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn refuses_execution_ids_that_are_not_file_names() {
        let root = tempfile::tempdir().expect("tempdir");
        let (publisher, shutdown, server) = start(&root.path().join("published")).await;
        let mut target = target();
        target.execution_id = ExecutionId::from("e-../../x".to_owned());
        let err = publisher
            .publish(&target, &result_dir(root.path()))
            .await
            .expect_err("bad id");
        assert!(matches!(err, PublisherError::Unsupported { .. }), "{err:?}");
        shutdown.cancel();
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn a_missing_result_dir_fails_and_leaves_no_temporary_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("published");
        let (publisher, shutdown, server) = start(&dir).await;
        let err = publisher
            .publish(&target(), &root.path().join("missing"))
            .await
            .expect_err("missing");
        assert!(matches!(err, PublisherError::Pack { .. }), "{err:?}");
        assert_eq!(fs::read_dir(&dir).expect("dir").count(), 0);
        shutdown.cancel();
        server.await.expect("join").expect("serve");
    }

    #[test]
    fn result_names() {
        assert!(is_result_name("e-0b1c-22.tar.gz"));
        for bad in [
            "e-.tar.gz",
            "x-1.tar.gz",
            "e-1.tar",
            "e-a/b.tar.gz",
            "e-..tar.gz",
            "e-1.tar.gz.tmp",
        ] {
            assert!(!is_result_name(bad), "{bad}");
        }
    }
}
