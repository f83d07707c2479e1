//! HTTPS for the API (`API.TLS`): the rustls server config from PEM files or from a self-signed pair made
//! once in `<DataDir>/tls/`, and a listener that does the TLS handshakes off the accept loop.
//!
//! Handshakes run in their own tasks (at most [`MAX_HANDSHAKES`] at once, each bounded by
//! [`HANDSHAKE_TIMEOUT`]), so one slow or silent client cannot stall the accept loop. A client that speaks
//! plain HTTP to the TLS port gets a plain-HTTP 400 saying to use HTTPS, instead of a dropped connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ApiTlsConfig;

/// Handshakes in flight at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A combination of keys that cannot work.
    #[error("API.TLS: {0}")]
    Invalid(&'static str),
    /// A PEM file cannot be read or holds nothing usable.
    #[error("API.TLS: cannot use {path:?}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the self-signed pair failed.
    #[error("API.TLS.SelfSigned: cannot write {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating the self-signed pair failed.
    #[cfg(feature = "tls-self-signed")]
    #[error("API.TLS.SelfSigned: cannot generate a certificate")]
    Generate(#[source] rcgen::Error),
    /// rustls refused the certificate and key (a key that does not match the certificate, say).
    #[error("API.TLS: the certificate and key do not work together")]
    Rustls(#[source] rustls::Error),
}

/// Paths of the self-signed pair in the data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("api-cert.pem"), dir.join("api-key.pem"))
}

/// The server config for `config`, or `None` when TLS is off. `host` is the API's listen host, added to a
/// self-signed certificate's names when it is a concrete address.
pub fn server_config(
    config: &ApiTlsConfig,
    data_dir: &Path,
    host: &str,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (cert, key) = match (&config.cert_file, &config.key_file, config.self_signed) {
        (None, None, false) => return Ok(None),
        (Some(_), _, true) | (_, Some(_), true) => {
            return Err(TlsError::Invalid(
                "SelfSigned cannot be combined with CertFile/KeyFile: choose one",
            ));
        }
        (Some(c), Some(k), false) => (c.clone(), k.clone()),
        (Some(_), None, false) | (None, Some(_), false) => {
            return Err(TlsError::Invalid(
                "CertFile and KeyFile go together: set both",
            ));
        }
        (None, None, true) => {
            let (cert, key) = self_signed_paths(data_dir);
            if !cert.exists() || !key.exists() {
                generate_self_signed(&cert, &key, host)?;
                tracing::info!(cert = %cert.display(), "generated a self-signed API certificate (clients: --cacert)");
            }
            (cert, key)
        }
    };
    let pem_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            path: path.clone(),
            reason: e.to_string(),
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert)
        .map_err(pem_err(&cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(&cert))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert,
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(pem_err(&key))?;
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    // axum is built for HTTP/1 only.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

/// Without the `tls-self-signed` feature there is no generator: say so instead of ignoring the setting.
#[cfg(not(feature = "tls-self-signed"))]
fn generate_self_signed(_cert: &Path, _key: &Path, _host: &str) -> Result<(), TlsError> {
    Err(TlsError::Invalid(
        "SelfSigned needs a cod built with the `tls-self-signed` feature; give CertFile and KeyFile instead",
    ))
}

/// Writes a self-signed certificate for this machine's names and `host`, with its key (mode 0600).
#[cfg(feature = "tls-self-signed")]
fn generate_self_signed(cert: &Path, key: &Path, host: &str) -> Result<(), TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname")
        && !h.trim().is_empty()
    {
        names.push(h.trim().to_owned());
    }
    let host = host.trim();
    if !host.is_empty() && host != "0.0.0.0" && host != "::" && !names.iter().any(|n| n == host) {
        names.push(host.to_owned());
    }
    use std::os::unix::fs::OpenOptionsExt;
    let pair = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    let write = |path: &Path, text: String, mode: u32| {
        let err = |source| TlsError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(err)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(err)
    };
    write(key, pair.key_pair.serialize_pem(), 0o600)?;
    write(cert, pair.cert.pem(), 0o644)
}

/// A listener that yields connections whose TLS handshake has finished.
#[derive(Debug)]
pub(crate) struct TlsListener {
    /// Finished handshakes from the acceptor task.
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// The bound address.
    local: SocketAddr,
    /// The acceptor task; aborted (with its handshakes) when the listener is dropped.
    acceptor: tokio::task::AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub(crate) fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(Self {
            ready,
            local,
            acceptor: acceptor.abort_handle(),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor ended only by being aborted, i.e. the server is shutting down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        // Reap finished handshakes so the set does not grow.
        while handshakes.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        handshakes.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, tcp)).await {
                Ok(Some(stream)) => {
                    let _ = ready.send((stream, addr)).await;
                }
                Ok(None) => {}
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

async fn handshake(acceptor: TlsAcceptor, mut tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.ok()?;
    if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        // Read the request first: closing a socket with unread data sends a reset, and the client would see
        // that instead of the answer.
        let mut request = [0u8; 8192];
        let _ = tcp.read(&mut request).await;
        let body = r#"{"Status":400,"Message":"this API serves HTTPS only","Code":"BadRequest","Component":"APIServer","Hint":"use https:// (cod --tls, with --cacert for a self-signed certificate)"}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
        return None;
    }
    match acceptor.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "tls-self-signed")]
    fn self_signed_pair_is_made_once_and_reused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ApiTlsConfig {
            self_signed: true,
            ..Default::default()
        };
        server_config(&config, dir.path(), "0.0.0.0")
            .expect("generated")
            .expect("on");
        let (cert, key) = self_signed_paths(dir.path());
        let first = std::fs::read(&cert).expect("cert");
        server_config(&config, dir.path(), "0.0.0.0").expect("reused");
        assert_eq!(std::fs::read(&cert).expect("cert"), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn half_configured_tls_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let only_cert = ApiTlsConfig {
            cert_file: Some("/x.pem".into()),
            ..Default::default()
        };
        let err = server_config(&only_cert, dir.path(), "h").expect_err("invalid");
        assert!(err.to_string().contains("set both"), "{err}");
        let missing = ApiTlsConfig {
            cert_file: Some(dir.path().join("none.pem")),
            key_file: Some(dir.path().join("none.key")),
            ..Default::default()
        };
        let err = server_config(&missing, dir.path(), "h").expect_err("missing");
        assert!(err.to_string().contains("none.pem"), "{err}");
        assert!(matches!(
            server_config(&ApiTlsConfig::default(), dir.path(), "h"),
            Ok(None)
        ));
    }
}
