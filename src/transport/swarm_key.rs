//! The private-network key (libp2p pnet): a 32-byte secret in Kubo's `swarm.key` format that every TCP
//! connection of the swarm is encrypted with (XSalsa20) before Noise starts. A peer without the same key sees
//! only noise and cannot even learn our peer id; Noise still authenticates the peers inside.
//!
//! The file format is go-libp2p's: `/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits, one per line.

use std::path::{Path, PathBuf};

/// A parsed swarm key. `Debug` shows the fingerprint only (go-libp2p's, so operators can compare it with
/// Kubo's log line without printing the key).
#[derive(Clone, Copy)]
pub struct SwarmKey(libp2p::pnet::PreSharedKey);

/// A swarm key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    /// The file cannot be read.
    #[error("cannot read the swarm key file {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a swarm key.
    #[error(
        "swarm key file {path:?} is not a libp2p private network key: {reason} (expected three lines: \
         /key/swarm/psk/1.0.0/, /base16/, 64 hex digits, as `ipfs-swarm-key-gen` writes)"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

// === impl SwarmKey ===

impl SwarmKey {
    /// Reads and parses a `swarm.key` file.
    pub fn load(path: &Path) -> Result<Self, SwarmKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| SwarmKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| SwarmKeyError::Format {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the file's text; the error says what is wrong (never the key).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        use libp2p::pnet::KeyParseError;
        // Windows line ends and trailing spaces are common in hand-made files; the format itself is strict.
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let normalized = lines.join("\n");
        normalized
            .parse::<libp2p::pnet::PreSharedKey>()
            .map(Self)
            .map_err(|e| match e {
                KeyParseError::InvalidKeyFile => "it does not have three lines",
                KeyParseError::InvalidKeyType => "the first line is not /key/swarm/psk/1.0.0/",
                KeyParseError::InvalidKeyEncoding => "the second line is not /base16/",
                KeyParseError::InvalidKeyLength => "the key is not 64 hex digits",
                KeyParseError::InvalidKeyChar(_) => {
                    "the key has a character that is not a hex digit"
                }
            })
    }

    /// go-libp2p's fingerprint of the key (safe to log).
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    /// The key, for the transport.
    pub(super) fn psk(&self) -> libp2p::pnet::PreSharedKey {
        self.0
    }
}

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwarmKey(fingerprint {})", self.fingerprint())
    }
}

impl PartialEq for SwarmKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint() == other.fingerprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "aa0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";

    #[test]
    fn parses_kubo_swarm_keys() {
        let key =
            SwarmKey::parse(&format!("/key/swarm/psk/1.0.0/\n/base16/\n{HEX}\n")).expect("valid");
        let crlf = SwarmKey::parse(&format!("/key/swarm/psk/1.0.0/\r\n/base16/\r\n{HEX}\r\n"))
            .expect("crlf");
        assert_eq!(key, crlf);
        assert!(
            !format!("{key:?}").contains(HEX),
            "Debug must not show the key"
        );
        assert_eq!(key.fingerprint().len(), 32);
    }

    #[test]
    fn rejects_malformed_keys_saying_why() {
        for (text, why) in [
            (String::new(), "three lines"),
            (
                format!("/key/swarm/psk/2.0.0/\n/base16/\n{HEX}"),
                "first line",
            ),
            (
                format!("/key/swarm/psk/1.0.0/\n/base64/\n{HEX}"),
                "second line",
            ),
            ("/key/swarm/psk/1.0.0/\n/base16/\nabcd".to_owned(), "64 hex"),
            (
                format!("/key/swarm/psk/1.0.0/\n/base16/\n{}zz", &HEX[..62]),
                "not a hex digit",
            ),
        ] {
            let err = SwarmKey::parse(&text).expect_err("malformed");
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("swarm.key");
        std::fs::write(&path, "nonsense").expect("write");
        let err = SwarmKey::load(&path).expect_err("malformed").to_string();
        assert!(err.contains("swarm.key"), "{err}");
        let missing = SwarmKey::load(&dir.path().join("absent")).expect_err("missing");
        assert!(matches!(missing, SwarmKeyError::Read { .. }));
    }
}
