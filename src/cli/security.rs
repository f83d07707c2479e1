//! What the CLI proves and verifies when it calls a node: the credential it sends and how it checks the
//! node's TLS certificate.
//!
//! Credentials, first found wins: `--api-key`, `--username`/`--password`; `COD_API_KEY`, `BACALHAU_API_KEY`;
//! `COD_API_USERNAME`/`COD_API_PASSWORD` or `BACALHAU_API_USERNAME`/`BACALHAU_API_PASSWORD`; and last the
//! node's generated `<data dir>/api-token` (data dir: `COD_DATA_DIR`, else `~/.cod`) when this user can read
//! it, which is what makes `cod serve` + `cod job run` on one machine work with no setup.
//!
//! TLS: `--tls` (`COD_API_TLS`, `BACALHAU_API_TLS_USETLS`); `--cacert FILE` (`COD_API_CACERT`,
//! `BACALHAU_API_TLS_CACERT`) trusts only that CA; `--insecure` (`COD_API_TLS_INSECURE`,
//! `BACALHAU_API_TLS_INSECURE`) skips verification. Either of the last two implies `--tls`. With `--tls` and
//! no CA, the node's self-signed `<data dir>/tls/api-cert.pem` is trusted when it exists (same machine),
//! else the system's roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::UsageError;
use crate::config::Secret;

/// The credential flags, as parsed.
#[derive(Debug, Default, Clone)]
pub struct SecurityFlags {
    /// `--api-key`.
    pub api_key: Option<String>,
    /// `--username`.
    pub username: Option<String>,
    /// `--password`.
    pub password: Option<String>,
    /// `--tls`.
    pub tls: bool,
    /// `--cacert`.
    pub cacert: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: bool,
}

/// A credential and where it came from (for error messages; never the value).
#[derive(Debug, Clone)]
pub struct ClientCredential {
    /// The `Authorization` header value.
    pub header: Secret,
    /// `--api-key`, `COD_API_KEY`, the token file's path…
    pub source: String,
}

/// How to check the node's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP.
    #[default]
    Off,
    /// HTTPS verified against the system's roots.
    SystemRoots,
    /// HTTPS verified against the CAs in this file only.
    CaFile(PathBuf),
    /// HTTPS without verification.
    Insecure,
}

/// Everything the client needs besides the address.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// What to send, if anything.
    pub credential: Option<ClientCredential>,
    /// How to connect.
    pub tls: TlsMode,
}

impl ClientSecurity {
    /// Resolves flags over the environment (`env`) and the node's data directory (`data_dir`, where the
    /// token file and a self-signed certificate may be). Unreadable token files are skipped: they belong
    /// to another user.
    pub fn resolve(
        flags: &SecurityFlags,
        env: impl Fn(&str) -> Option<String>,
        data_dir: &Path,
    ) -> Result<Self, UsageError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let bearer = |key: &str, source: &str| ClientCredential {
            header: Secret::new(format!("Bearer {}", key.trim())),
            source: source.to_owned(),
        };
        let basic = |user: &str, password: &str, source: &str| {
            use base64::Engine;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            ClientCredential {
                header: Secret::new(format!("Basic {encoded}")),
                source: source.to_owned(),
            }
        };
        let credential = match (&flags.api_key, &flags.username, &flags.password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(UsageError::new(
                    "give --api-key or --username/--password, not both",
                ));
            }
            (Some(key), None, None) => Some(bearer(key, "--api-key")),
            (None, Some(user), Some(password)) => {
                Some(basic(user, password, "--username/--password"))
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(UsageError::new("--username and --password go together"));
            }
            (None, None, None) => {
                let from_env = ["COD_API_KEY", "BACALHAU_API_KEY"]
                    .into_iter()
                    .find_map(|name| var(name).map(|k| bearer(&k, name)));
                let user_env = || {
                    [
                        ("COD_API_USERNAME", "COD_API_PASSWORD"),
                        ("BACALHAU_API_USERNAME", "BACALHAU_API_PASSWORD"),
                    ]
                    .into_iter()
                    .find_map(|(u, p)| {
                        let (user, password) = (var(u)?, var(p)?);
                        Some(basic(&user, &password, &format!("{u}/{p}")))
                    })
                };
                let token = || {
                    let path = crate::auth::token_file::path(data_dir);
                    let key = crate::auth::token_file::read(&path).ok()?;
                    Some(bearer(key.expose(), &path.display().to_string()))
                };
                from_env.or_else(user_env).or_else(token)
            }
        };

        let truthy = |name: &str| {
            var(name).is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            })
        };
        let cacert = flags.cacert.clone().or_else(|| {
            ["COD_API_CACERT", "BACALHAU_API_TLS_CACERT"]
                .into_iter()
                .find_map(|n| var(n).map(PathBuf::from))
        });
        let insecure =
            flags.insecure || truthy("COD_API_TLS_INSECURE") || truthy("BACALHAU_API_TLS_INSECURE");
        let enabled = flags.tls || truthy("COD_API_TLS") || truthy("BACALHAU_API_TLS_USETLS");
        let tls = match (insecure, cacert) {
            (true, Some(_)) => {
                return Err(UsageError::new(
                    "--insecure skips certificate checks, so --cacert would be ignored: give one of them",
                ));
            }
            (true, None) => TlsMode::Insecure,
            (false, Some(ca)) => TlsMode::CaFile(ca),
            (false, None) if enabled => {
                let (own, _) = crate::api::tls::self_signed_paths(data_dir);
                if own.exists() {
                    TlsMode::CaFile(own)
                } else {
                    TlsMode::SystemRoots
                }
            }
            (false, None) => TlsMode::Off,
        };
        Ok(Self { credential, tls })
    }
}

/// The rustls client config for `mode` (`None` when TLS is off).
pub fn client_config(mode: &TlsMode) -> Result<Option<Arc<ClientConfig>>, UsageError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::SystemRoots => {
            use rustls_platform_verifier::ConfigVerifierExt;
            ClientConfig::with_platform_verifier().map_err(|e| {
                UsageError::new(format!(
                    "cannot load the system's CA certificates ({e}); pass --cacert FILE"
                ))
            })?
        }
        TlsMode::CaFile(path) => {
            let bad = |reason: String| {
                UsageError::new(format!(
                    "--cacert {path:?}: {reason} (give the PEM certificate of the CA that signed the node's \
                     certificate; for a self-signed node, its <data dir>/tls/api-cert.pem)"
                ))
            };
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
            for cert in certs {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
        TlsMode::Insecure => ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                rustls::crypto::ring::default_provider(),
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// `--insecure`: accepts any certificate. Signatures are still checked, so the peer holds the key of the
/// certificate it shows; who that peer is, nobody checks.
#[derive(Debug)]
struct NoVerification(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let pairs = pairs.to_vec();
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn flags_beat_env_which_beats_the_token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("api-token"), "file-key\n").expect("token");
        let flags = SecurityFlags {
            api_key: Some("flag-key".into()),
            ..Default::default()
        };
        let e = env(&[("COD_API_KEY", "env-key"), ("BACALHAU_API_KEY", "b-key")]);
        let c = ClientSecurity::resolve(&flags, &e, dir.path()).expect("ok");
        let cred = c.credential.expect("credential");
        assert_eq!(cred.header.expose(), "Bearer flag-key");
        assert_eq!(cred.source, "--api-key");

        let c = ClientSecurity::resolve(&SecurityFlags::default(), &e, dir.path()).expect("ok");
        assert_eq!(c.credential.expect("env").header.expose(), "Bearer env-key");

        let e = env(&[
            ("BACALHAU_API_USERNAME", "u"),
            ("BACALHAU_API_PASSWORD", "p"),
        ]);
        let c = ClientSecurity::resolve(&SecurityFlags::default(), &e, dir.path()).expect("ok");
        assert_eq!(c.credential.expect("basic").header.expose(), "Basic dTpw");

        let c =
            ClientSecurity::resolve(&SecurityFlags::default(), env(&[]), dir.path()).expect("ok");
        let cred = c.credential.expect("file");
        assert_eq!(cred.header.expose(), "Bearer file-key");
        assert!(cred.source.ends_with("api-token"), "{}", cred.source);
        assert_eq!(c.tls, TlsMode::Off);
    }

    #[test]
    fn tls_options_imply_tls_and_conflicts_are_usage_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ClientSecurity::resolve(
            &SecurityFlags::default(),
            env(&[("BACALHAU_API_TLS_CACERT", "/ca.pem")]),
            dir.path(),
        )
        .expect("ok");
        assert_eq!(c.tls, TlsMode::CaFile("/ca.pem".into()));
        let c = ClientSecurity::resolve(
            &SecurityFlags::default(),
            env(&[("COD_API_TLS", "true")]),
            dir.path(),
        )
        .expect("ok");
        assert_eq!(c.tls, TlsMode::SystemRoots);
        let both = SecurityFlags {
            insecure: true,
            cacert: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(ClientSecurity::resolve(&both, env(&[]), dir.path()).is_err());
        let half = SecurityFlags {
            username: Some("u".into()),
            ..Default::default()
        };
        assert!(ClientSecurity::resolve(&half, env(&[]), dir.path()).is_err());
        assert!(client_config(&TlsMode::CaFile(dir.path().join("none.pem"))).is_err());
    }
}
