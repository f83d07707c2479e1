//! Packing a result folder into a gzip-compressed tarball, as every tarball-publishing backend (`local`,
//! `s3` with gzip encoding) ships it: entries relative to the folder (`stdout`, `stderr`, `exitCode`,
//! `outputs/…`), in name order, symlinks stored as symlinks and never followed (a task must not be able to
//! publish host files by linking to them), special files skipped.
//!
//! Blocking code: async callers run it in `spawn_blocking`.

use std::fs;
use std::io::{self, BufWriter};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use tracing::warn;

/// Packs `result_dir` into `tmp`, then renames it to `out`. Blocking.
pub(crate) fn pack(
    result_dir: &Path,
    tmp: &Path,
    out: &Path,
    execution_id: &str,
) -> io::Result<()> {
    if !fs::metadata(result_dir)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "the result path is not a directory",
        ));
    }
    let file = fs::File::create(tmp)?;
    let mut builder =
        tar::Builder::new(GzEncoder::new(BufWriter::new(file), Compression::default()));
    builder.follow_symlinks(false);
    append_tree(&mut builder, result_dir, Path::new(""), execution_id)?;
    let file = builder
        .into_inner()?
        .finish()?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    // The rename publishes the tarball; it must not point at data still in the page cache when power fails.
    file.sync_all()?;
    fs::rename(tmp, out)
}

/// Appends the tree under `dir` with names relative to the result folder, in name order so that packing the
/// same folder twice gives the same entry order.
fn append_tree<W: io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    execution_id: &str,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        // `DirEntry::file_type` does not follow symlinks.
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            builder.append_path_with_name(&path, &name)?;
            append_tree(builder, &path, &name, execution_id)?;
        } else if file_type.is_file() || file_type.is_symlink() {
            builder.append_path_with_name(&path, &name)?;
        } else {
            // Sockets, FIFOs and devices have no content to publish, and the unpacker refuses them.
            warn!(execution_id, entry = ?name, "skipping a special file in the result folder");
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;
    use std::path::PathBuf;

    use super::*;

    /// A result folder with the three streams, a nested output file and a relative symlink to it.
    pub(crate) fn result_dir(root: &Path) -> PathBuf {
        let dir = root.join("result");
        fs::create_dir_all(dir.join("outputs/sub")).expect("outputs");
        fs::write(dir.join("stdout"), "hello\n").expect("stdout");
        fs::write(dir.join("stderr"), "").expect("stderr");
        fs::write(dir.join("exitCode"), "0").expect("exitCode");
        fs::write(dir.join("outputs/sub/data.txt"), "data").expect("data");
        std::os::unix::fs::symlink("sub/data.txt", dir.join("outputs/link")).expect("symlink");
        dir
    }

    #[test]
    fn packs_relative_entries_in_order_without_following_symlinks() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = result_dir(root.path());
        std::os::unix::fs::symlink("/etc/passwd", dir.join("outputs/passwd")).expect("symlink");
        let (tmp, out) = (root.path().join(".t"), root.path().join("e-1.tar.gz"));
        pack(&dir, &tmp, &out, "e-1").expect("pack");
        assert!(!tmp.exists());
        let mut bytes = Vec::new();
        fs::File::open(&out)
            .expect("open")
            .read_to_end(&mut bytes)
            .expect("read");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let entries: Vec<(String, tar::EntryType)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "exitCode",
                "outputs",
                "outputs/link",
                "outputs/passwd",
                "outputs/sub",
                "outputs/sub/data.txt",
                "stderr",
                "stdout"
            ]
        );
        // Stored as a link (whose target the unpacker will refuse), never as the host file's content.
        assert_eq!(entries[3].1, tar::EntryType::Symlink);
    }
}
