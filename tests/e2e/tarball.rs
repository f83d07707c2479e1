//! Tar archives built entry by entry, hostile ones included, for layer and inline-input tests.

/// Builds layer tars entry by entry. Paths go into the header verbatim (no validation), so
/// hostile archives (`../x`, `/etc/x`) can be written too.
pub struct TarBuilder {
    builder: Option<tar::Builder<Vec<u8>>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty tar.
    pub fn new() -> TarBuilder {
        TarBuilder {
            builder: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn append(mut self, path: &str, kind: tar::EntryType, mode: u32, data: &[u8]) -> Self {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        let gnu = header.as_gnu_mut().expect("gnu header");
        assert!(
            path.len() < gnu.name.len(),
            "path {path:?} too long for this helper"
        );
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        self.builder
            .as_mut()
            .expect("building")
            .append(&header, data)
            .expect("append");
        self
    }

    /// A regular file.
    pub fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        self.append(path, tar::EntryType::Regular, mode, content)
    }

    /// A directory.
    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.append(path, tar::EntryType::Directory, mode, b"")
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        self.builder
            .as_mut()
            .expect("building")
            .append_link(&mut header, path, target)
            .expect("append link");
        self
    }

    /// The finished tar.
    pub fn build(mut self) -> Vec<u8> {
        self.builder
            .take()
            .expect("building")
            .into_inner()
            .expect("tar")
    }
}
