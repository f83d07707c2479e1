//! `<DataDir>/api-token`: the admin API key a node generates when its API is reachable from other machines
//! and no users are configured. Only the node's own user can read it (mode 0600), so "same machine, same
//! user" keeps working with no setup (the CLI reads it) while the network sees a locked API.
//!
//! The key is made once and reused, so restarts do not break scripts that copied it. It is never logged:
//! the node logs the file's path.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Secret;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "api-token";
/// Random bytes in a key (256 bits), written as 64 hex digits.
const KEY_BYTES: usize = 32;

/// The token file could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading, creating or writing it failed.
    #[error("cannot {op} the API token file {path:?} (check the data directory's permissions)")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exists but holds no usable key.
    #[error(
        "the API token file {path:?} is empty or not a key; delete it and restart the node to make a new one"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The system's random source failed.
    #[error("cannot generate an API key: the system random source failed")]
    Random,
}

/// The path of the token file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the key from `path`, or makes one and writes it there (mode 0600). Returns the key and whether it
/// was created now.
pub fn load_or_create(path: &Path) -> Result<(Secret, bool), TokenFileError> {
    let io = |op: &'static str| {
        move |source| TokenFileError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let mut bytes = [0u8; KEY_BYTES];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| TokenFileError::Random)?;
            let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(format!("{key}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io("write"))?;
            Ok((Secret::new(key), true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Someone may have loosened the mode by hand; the key is an admin credential.
            let mode = std::fs::metadata(path)
                .map_err(io("read"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io("restrict the permissions of"))?;
                tracing::warn!(path = %path.display(), "API token file was readable by others; set it to 0600");
            }
            Ok((read(path)?, false))
        }
        Err(e) => Err(io("create")(e)),
    }
}

/// Reads a key written by [`load_or_create`].
pub fn read(path: &Path) -> Result<Secret, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    let key = text.trim();
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(TokenFileError::Malformed {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_mode_0600_then_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        let (first, created) = load_or_create(&p).expect("created");
        assert!(created);
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = load_or_create(&p).expect("reused");
        assert!(!created);
        assert_eq!(again, first);
        assert_eq!(read(&p).expect("reads"), first);
    }

    #[test]
    fn loosened_mode_is_tightened_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        std::fs::write(&p, "k".repeat(64)).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        load_or_create(&p).expect("reads");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&p, "\n").expect("write");
        assert!(matches!(read(&p), Err(TokenFileError::Malformed { .. })));
    }
}
