//! TEMPORARY stand-in written on the `cli` branch so `cod job get` compiles and can be tested; the data
//! engineer's real module replaces this file at merge. Only the signature of [`unpack_tar_gz`] is the contract.

use std::path::{Component, Path};

use super::StorageError;

/// Unpacks a gzip-compressed tar stream into `dest`, refusing any entry that would land outside it.
pub fn unpack_tar_gz(reader: impl std::io::Read, dest: &Path) -> Result<(), StorageError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let entries = archive
        .entries()
        .map_err(StorageError::io("reading archive for", dest))?;
    for entry in entries {
        let mut entry = entry.map_err(StorageError::io("reading archive for", dest))?;
        let path = entry
            .path()
            .map_err(StorageError::io("reading archive for", dest))?
            .into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            return Err(StorageError::UnsafeArchive {
                entry: path.display().to_string(),
            });
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(StorageError::io("unpacking into", dest))?;
        if !unpacked {
            return Err(StorageError::UnsafeArchive {
                entry: path.display().to_string(),
            });
        }
    }
    Ok(())
}
