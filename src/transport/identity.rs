//! The node's long-lived ed25519 keypair, from which its [`NodeId`] (libp2p peer id) derives.
//!
//! The key lives in one file in the data dir, protobuf-encoded as libp2p writes keys, so the node keeps its id
//! across restarts (the orchestrator's registry and both outboxes are keyed by it). Invariants: the file is
//! created with mode 0600 and appears atomically (temp file + rename), so a power cut while creating it leaves
//! either no key or a whole one, never a truncated one that would change the node's id. The secret key is never
//! logged or printed (`Debug` shows only the peer id).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::TransportError;
use crate::model::NodeId;

/// Stands in for the key path in errors about an identity that was never written to disk.
const GENERATED_PATH: &str = "<generated in memory>";

/// A node's keypair.
#[derive(Clone)]
pub struct Identity {
    /// Always an ed25519 keypair: our constructors only make or accept those, and noise relies on it.
    keypair: Keypair,
    /// Where the key came from, so errors about it (e.g. building the noise config) can name the file.
    path: PathBuf,
}

// === impl Identity ===

impl Identity {
    /// A fresh random identity that is not stored anywhere (tests, throwaway nodes).
    pub fn generate() -> Self {
        Self {
            keypair: Keypair::generate_ed25519(),
            path: PathBuf::from(GENERATED_PATH),
        }
    }

    /// The node id derived from the public key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from(self.peer_id().to_string())
    }

    /// The libp2p form of [`Identity::node_id`].
    pub(super) fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The keypair, for building the swarm.
    pub(super) fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The key file (or a placeholder for generated identities), for error messages.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately not the keypair: Debug output ends up in logs.
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .field("path", &self.path)
            .finish()
    }
}

/// Checks that `text` is a libp2p peer id (what node ids are) and returns it as a [`NodeId`].
pub fn parse_node_id(text: &str) -> Result<NodeId, String> {
    let text = text.trim();
    text.parse::<libp2p::PeerId>()
        .map(|p| NodeId::from(p.to_string()))
        .map_err(|e| {
            format!("not a node id (a libp2p peer id such as 12D3KooW…, see `cod node list`): {e}")
        })
}

/// Loads the key from `path`, creating it (mode 0600) on first start.
///
/// This does blocking file I/O on a file of a few dozen bytes; call it during startup, not on a hot path.
pub fn load_or_create_identity(path: &Path) -> Result<Identity, TransportError> {
    let err = |reason: String| TransportError::Identity {
        path: path.to_owned(),
        reason,
    };
    match fs::read(path) {
        Ok(bytes) => {
            let keypair = Keypair::from_protobuf_encoding(&bytes)
                .map_err(|e| err(format!("not a protobuf-encoded libp2p key: {e}")))?;
            if keypair.clone().try_into_ed25519().is_err() {
                return Err(err(format!(
                    "key type {:?} is not supported (only ed25519)",
                    keypair.key_type()
                )));
            }
            warn_if_readable_by_others(path);
            Ok(Identity {
                keypair,
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| err(format!("cannot encode the new key: {e}")))?;
            write_atomically(path, &bytes)
                .map_err(|e| err(format!("cannot create the key file: {e}")))?;
            let identity = Identity {
                keypair,
                path: path.to_owned(),
            };
            tracing::info!(peer = %identity.peer_id(), path = %path.display(), "created a new node identity");
            Ok(identity)
        }
        Err(e) => Err(err(format!("cannot read the key file: {e}"))),
    }
}

/// Writes `bytes` to `path` so that the file appears whole or not at all, readable only by its owner.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // 0700: the data dir holds the node's secrets; an existing dir keeps the mode its owner chose.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the key path names no file",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        // The mode is set at creation so the secret is never readable by others, not even briefly; a temp
        // file left by a crash is removed first because an existing file would keep its old mode.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is synced (power loss is normal at the edge).
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An operator may have copied the key with a permissive umask; say so rather than silently accept it.
fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "node key file is accessible to other users; chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_across_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/keys/node.key");
        let first = load_or_create_identity(&path).expect("creates");
        let second = load_or_create_identity(&path).expect("loads");
        assert_eq!(first.node_id(), second.node_id());
        assert!(
            first.node_id().as_str().starts_with("12D3"),
            "ed25519 peer ids start with 12D3"
        );
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Only the key itself is left behind, no temp file.
        let entries: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read_dir")
            .collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn rejects_a_corrupt_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        fs::write(&path, b"not a key").expect("write");
        let err = load_or_create_identity(&path).expect_err("corrupt key");
        assert!(matches!(err, TransportError::Identity { path: p, .. } if p == path));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let id = Identity::generate();
        let text = format!("{id:?}");
        assert!(text.contains(id.node_id().as_str()));
        assert!(!text.contains("secret"));
    }
}
