//! The way back from a DAG: `cat` streams a file's bytes, `get` writes a file, directory or symlink tree.
//!
//! Blocks come from any [`BlockSource`]: the local store today, a network fetcher (bitswap, a trustless
//! gateway) tomorrow, with no change here. Sources return only verified blocks; identity CIDs are read
//! from the CID itself. Children of a node are fetched a few at a time ahead of the writer, so a network
//! source is not paid one round trip per block.
//!
//! `get` never writes outside its destination, whatever the DAG says:
//! - an entry name must be one path component: not empty, `.` or `..`, and without `/` or NUL;
//! - every file and directory is created new (`O_EXCL`, `mkdir`), so nothing that already exists, and no
//!   symlink (ours or anyone's), is ever written through;
//! - a symlink target must be relative, its `..` components must all come first and climb no higher than
//!   the destination root, and no component may be empty. Because each symlink is checked against the
//!   real directory it sits in (all of which we created), a chain of such links cannot lead out either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::hamt;
use crate::ipfs::dagpb::{DataType, PbNode, UnixfsData};
use crate::ipfs::{BlockSource, DAG_PB, FetchError, IDENTITY, RAW};

/// Blocks fetched ahead of the one being written.
const PREFETCH: usize = 8;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A block could not be had.
    #[error("cannot get block {cid}")]
    Fetch {
        /// The block.
        cid: Cid,
        /// The cause (boxed: a CID is 72 bytes and both sides carry one).
        #[source]
        source: Box<FetchError>,
    },
    /// A block is not valid UnixFS.
    #[error("block {cid} is not valid UnixFS: {reason}")]
    Corrupt {
        /// The block.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// `cat` of something that is not a file.
    #[error("{cid} is a {kind}, not a file; use `cod ipfs get` for directories and symlinks")]
    NotAFile {
        /// The root.
        cid: Cid,
        /// What it is.
        kind: &'static str,
    },
    /// A directory entry's name would leave its directory.
    #[error(
        "refusing entry {name:?} of directory {dir}: names must be one path component (no '/', NUL, '.' or '..')"
    )]
    UnsafeName {
        /// The directory block.
        dir: Cid,
        /// The name as stored.
        name: String,
    },
    /// A symlink target would point outside the destination.
    #[error(
        "refusing symlink {path:?} -> {target:?}: targets must be relative and stay inside the destination"
    )]
    UnsafeSymlink {
        /// Where the symlink would go.
        path: PathBuf,
        /// Its target.
        target: String,
    },
    /// The DAG describes more than the caller allows (see [`ExportLimits`]).
    #[error(
        "the DAG holds more than {limit} {what}; it is too large for this node (or built to exhaust it)"
    )]
    TooLarge {
        /// `bytes` or `entries`.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The destination exists.
    #[error("{path:?} already exists; choose another output path or remove it first")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("cannot write {path:?}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Caps on what one [`get_limited`] may write. A DAG may name one block many times, so a few small blocks
/// can describe terabytes of files or millions of entries (a "DAG bomb"); the fetcher stores each block once
/// and never notices, so the writer must count.
#[derive(Debug)]
pub struct ExportLimits {
    max_bytes: u64,
    max_entries: u64,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl ExportLimits {
    /// At most `max_bytes` of file content and `max_entries` files, directories and symlinks.
    pub fn new(max_bytes: u64, max_entries: u64) -> Self {
        Self {
            max_bytes,
            max_entries,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        }
    }

    /// No caps (the user's own `cod ipfs get`: they see what they asked for).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX, u64::MAX)
    }

    fn take_bytes(&self, n: usize) -> Result<(), ExportError> {
        let before = self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if before.saturating_add(n as u64) > self.max_bytes {
            return Err(ExportError::TooLarge {
                what: "bytes",
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    fn take_entry(&self) -> Result<(), ExportError> {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max_entries {
            return Err(ExportError::TooLarge {
                what: "entries",
                limit: self.max_entries,
            });
        }
        Ok(())
    }
}

/// What [`get`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// File bytes.
    pub bytes: u64,
}

/// A decoded UnixFS node.
enum Node {
    /// File bytes inline plus child links (a raw leaf has no links).
    File { data: Bytes, links: Vec<Cid> },
    /// Plain directory entries.
    Dir(Vec<(String, Cid)>),
    /// One HAMT shard node: links with their prefixed names.
    Shard {
        fanout: usize,
        links: Vec<(String, Cid)>,
    },
    /// A symlink target.
    Symlink(Bytes),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::File { .. } => "file",
            Node::Dir(_) | Node::Shard { .. } => "directory",
            Node::Symlink(_) => "symlink",
        }
    }
}

async fn fetch(source: &dyn BlockSource, cid: Cid) -> Result<Bytes, ExportError> {
    if cid.hash().code() == IDENTITY {
        return Ok(Bytes::copy_from_slice(cid.hash().digest()));
    }
    source
        .block(&cid)
        .await
        .map_err(|source| ExportError::Fetch {
            cid,
            source: Box::new(source),
        })
}

fn decode(cid: Cid, block: Bytes) -> Result<Node, ExportError> {
    let corrupt = |reason: String| ExportError::Corrupt { cid, reason };
    match cid.codec() {
        RAW => {
            return Ok(Node::File {
                data: block,
                links: Vec::new(),
            });
        }
        DAG_PB => {}
        other => return Err(corrupt(format!("codec {other:#x} is not dag-pb or raw"))),
    }
    let node = PbNode::decode(&block).map_err(|e| corrupt(e.to_string()))?;
    let data = node
        .data
        .as_ref()
        .ok_or_else(|| corrupt("dag-pb node without UnixFS data".into()))?;
    let data = UnixfsData::decode(data).map_err(|e| corrupt(e.to_string()))?;
    let named = |links: Vec<crate::ipfs::dagpb::PbLink>| {
        links
            .into_iter()
            .map(|l| (l.name.unwrap_or_default(), l.hash))
            .collect::<Vec<_>>()
    };
    Ok(match data.kind {
        DataType::File | DataType::Raw => Node::File {
            data: data.data.unwrap_or_default(),
            links: node.links.into_iter().map(|l| l.hash).collect(),
        },
        DataType::Directory => Node::Dir(named(node.links)),
        DataType::HamtShard => {
            let fanout = data
                .fanout
                .and_then(|f| usize::try_from(f).ok())
                .filter(|f| f.is_power_of_two() && (2..=1024).contains(f))
                .ok_or_else(|| corrupt("HAMT shard without a power-of-two fanout".into()))?;
            if data.hash_type != Some(hamt::HASH_MURMUR3) {
                return Err(corrupt("HAMT shard with an unknown hash function".into()));
            }
            Node::Shard {
                fanout,
                links: named(node.links),
            }
        }
        DataType::Symlink => Node::Symlink(data.data.unwrap_or_default()),
        DataType::Metadata => {
            return Err(corrupt("UnixFS metadata nodes are not supported".into()));
        }
    })
}

/// Writes the bytes of file `cid` to `out`; returns how many.
pub async fn cat<W>(source: &dyn BlockSource, cid: &Cid, out: &mut W) -> Result<u64, ExportError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let node = decode(*cid, fetch(source, *cid).await?)?;
    let Node::File { data, links } = node else {
        return Err(ExportError::NotAFile {
            cid: *cid,
            kind: node.kind(),
        });
    };
    let stdout = PathBuf::from("<output>");
    write_file(
        source,
        data,
        links,
        out,
        &stdout,
        &ExportLimits::unlimited(),
    )
    .await
}

/// Writes a file's inline data then its children, depth first, in order.
fn write_file<'a, W>(
    source: &'a dyn BlockSource,
    data: Bytes,
    links: Vec<Cid>,
    out: &'a mut W,
    path: &'a Path,
    limits: &'a ExportLimits,
) -> futures::future::BoxFuture<'a, Result<u64, ExportError>>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    Box::pin(async move {
        let write = |source| ExportError::Write {
            path: path.to_owned(),
            source,
        };
        limits.take_bytes(data.len())?;
        out.write_all(&data).await.map_err(write)?;
        let mut written = data.len() as u64;
        let mut children = futures::stream::iter(
            links
                .into_iter()
                .map(|c| async move { fetch(source, c).await.map(|b| (c, b)) }),
        )
        .buffered(PREFETCH);
        while let Some(child) = children.next().await {
            let (cid, block) = child?;
            match decode(cid, block)? {
                Node::File { data, links } if links.is_empty() => {
                    limits.take_bytes(data.len())?;
                    out.write_all(&data).await.map_err(write)?;
                    written += data.len() as u64;
                }
                Node::File { data, links } => {
                    written += write_file(source, data, links, out, path, limits).await?;
                }
                other => {
                    return Err(ExportError::Corrupt {
                        cid,
                        reason: format!("a {} inside a file", other.kind()),
                    });
                }
            }
        }
        Ok(written)
    })
}

/// Lists a directory's entries (a plain one, or every shard of a HAMT).
async fn entries(
    source: &dyn BlockSource,
    cid: Cid,
    node: Node,
) -> Result<Vec<(String, Cid)>, ExportError> {
    let mut out = Vec::new();
    let mut shards = vec![(cid, node)];
    while let Some((cid, node)) = shards.pop() {
        match node {
            Node::Dir(links) => out.extend(links),
            Node::Shard { fanout, links } => {
                let pad = hamt::prefix_len(fanout);
                for (name, child) in links {
                    let Some(rest) = name.get(pad..) else {
                        return Err(ExportError::Corrupt {
                            cid,
                            reason: format!("HAMT link name {name:?} is shorter than its prefix"),
                        });
                    };
                    if rest.is_empty() {
                        let sub = decode(child, fetch(source, child).await?)?;
                        if !matches!(sub, Node::Shard { .. }) {
                            return Err(ExportError::Corrupt {
                                cid,
                                reason: format!("HAMT link {name:?} is not a shard"),
                            });
                        }
                        shards.push((child, sub));
                    } else {
                        out.push((rest.to_owned(), child));
                    }
                }
            }
            other => {
                return Err(ExportError::Corrupt {
                    cid,
                    reason: format!("expected a directory, found a {}", other.kind()),
                });
            }
        }
    }
    Ok(out)
}

/// Whether `name` is a single, harmless path component.
pub fn safe_name(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

/// Whether a symlink at directory depth `depth` (0 = the destination root) may point at `target`.
pub fn safe_symlink_target(target: &str, depth: usize) -> bool {
    if target.is_empty() || target.contains('\0') || target.starts_with('/') {
        return false;
    }
    let mut climbing = true;
    let mut up = 0usize;
    for part in target.split('/') {
        match part {
            ".." if climbing => up += 1,
            ".." => return false,
            "" | "." => {}
            _ => climbing = false,
        }
    }
    up <= depth
}

/// Writes the DAG at `cid` to `dest`, which must not exist: a file becomes the file `dest`, a directory
/// the directory `dest`.
pub async fn get(
    source: &dyn BlockSource,
    cid: &Cid,
    dest: &Path,
) -> Result<ExportSummary, ExportError> {
    get_limited(source, cid, dest, &ExportLimits::unlimited()).await
}

/// [`get`] within `limits`; on [`ExportError::TooLarge`] what was written so far stays for the caller to
/// remove (a job input's scratch directory goes with its execution).
pub async fn get_limited(
    source: &dyn BlockSource,
    cid: &Cid,
    dest: &Path,
    limits: &ExportLimits,
) -> Result<ExportSummary, ExportError> {
    if tokio::fs::symlink_metadata(dest).await.is_ok() {
        return Err(ExportError::Exists {
            path: dest.to_owned(),
        });
    }
    let root = decode(*cid, fetch(source, *cid).await?)?;
    let mut walk = Walk {
        summary: ExportSummary::default(),
        dirs: Vec::new(),
        limits,
    };
    place(source, *cid, root, dest, 0, &mut walk).await?;
    while let Some((cid, node, path, depth)) = walk.dirs.pop() {
        for (name, child) in entries(source, cid, node).await? {
            if !safe_name(&name) {
                return Err(ExportError::UnsafeName { dir: cid, name });
            }
            let node = decode(child, fetch(source, child).await?)?;
            place(source, child, node, &path.join(&name), depth + 1, &mut walk).await?;
        }
    }
    Ok(walk.summary)
}

/// The state of one [`get_limited`]: what was written, directories waiting for their entries (block, node,
/// path, depth), and the caps.
struct Walk<'a> {
    summary: ExportSummary,
    dirs: Vec<(Cid, Node, PathBuf, usize)>,
    limits: &'a ExportLimits,
}

async fn place(
    source: &dyn BlockSource,
    cid: Cid,
    node: Node,
    path: &Path,
    depth: usize,
    walk: &mut Walk<'_>,
) -> Result<(), ExportError> {
    walk.limits.take_entry()?;
    let write = |source| ExportError::Write {
        path: path.to_owned(),
        source,
    };
    match node {
        Node::File { data, links } => {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .await
                .map_err(write)?;
            walk.summary.bytes +=
                write_file(source, data, links, &mut file, path, walk.limits).await?;
            file.flush().await.map_err(write)?;
            walk.summary.files += 1;
        }
        Node::Symlink(target) => {
            let target =
                String::from_utf8(target.to_vec()).map_err(|_| ExportError::UnsafeSymlink {
                    path: path.to_owned(),
                    target: "<not UTF-8>".into(),
                })?;
            // An entry at depth d sits in a directory d-1 levels below the destination; the root symlink
            // (depth 0) is the destination itself and may not climb at all.
            if !safe_symlink_target(&target, depth.saturating_sub(1)) {
                return Err(ExportError::UnsafeSymlink {
                    path: path.to_owned(),
                    target,
                });
            }
            tokio::fs::symlink(&target, path).await.map_err(write)?;
            walk.summary.symlinks += 1;
        }
        dir @ (Node::Dir(_) | Node::Shard { .. }) => {
            tokio::fs::create_dir(path).await.map_err(write)?;
            walk.summary.dirs += 1;
            walk.dirs.push((cid, dir, path.to_owned(), depth));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ipfs::dagpb::{PbLink, PbNode, UnixfsData};
    use crate::ipfs::unixfs::{ImportOptions, import_path};
    use crate::ipfs::{Block, BlockStore, LocalSource, MemoryBlockStore};

    #[test]
    fn names_must_be_one_component() {
        for bad in ["", ".", "..", "a/b", "/etc", "a\0b", "../x"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        for good in ["a", "...", "a b", "ünï", ".hidden"] {
            assert!(safe_name(good), "{good:?}");
        }
    }

    #[test]
    fn symlink_targets_stay_inside() {
        assert!(safe_symlink_target("b", 0));
        assert!(safe_symlink_target("./b/c", 0));
        assert!(safe_symlink_target("../b", 1));
        assert!(safe_symlink_target("../../b/c", 2));
        assert!(!safe_symlink_target("../b", 0));
        assert!(!safe_symlink_target("/etc/passwd", 5));
        assert!(
            !safe_symlink_target("b/../../c", 5),
            "a '..' after a name is refused"
        );
        assert!(!safe_symlink_target("", 0));
    }

    fn dir_with(store: &MemoryBlockStore, name: &str, child: Cid) -> Cid {
        let node = PbNode {
            links: vec![PbLink {
                hash: child,
                name: Some(name.to_owned()),
                tsize: Some(1),
            }],
            data: Some(Bytes::from(UnixfsData::new(DataType::Directory).encode())),
        };
        let block = Block::new(DAG_PB, Bytes::from(node.encode()), true);
        store.put(&block).expect("put");
        *block.cid()
    }

    fn symlink(store: &MemoryBlockStore, target: &str) -> Cid {
        let mut data = UnixfsData::new(DataType::Symlink);
        data.data = Some(Bytes::copy_from_slice(target.as_bytes()));
        let node = PbNode {
            links: vec![],
            data: Some(Bytes::from(data.encode())),
        };
        let block = Block::new(DAG_PB, Bytes::from(node.encode()), true);
        store.put(&block).expect("put");
        *block.cid()
    }

    #[tokio::test]
    async fn hostile_dags_are_refused_and_nothing_leaves_the_destination() {
        let store = Arc::new(MemoryBlockStore::new());
        let file = Block::new(RAW, Bytes::from_static(b"pwned"), false);
        store.put(&file).expect("put");
        let tmp = tempfile::tempdir().expect("tempdir");
        let source = LocalSource(store.clone());
        for (name, child) in [
            ("../escape", *file.cid()),
            ("a/b", *file.cid()),
            ("..", *file.cid()),
            ("x", symlink(&store, "/etc/passwd")),
            ("y", symlink(&store, "../../outside")),
        ] {
            let root = dir_with(&store, name, child);
            let dest = tmp.path().join("out").join(root.to_string());
            tokio::fs::create_dir_all(dest.parent().expect("parent"))
                .await
                .expect("mkdir");
            let err = get(&source, &root, &dest).await.expect_err(name);
            assert!(
                matches!(
                    err,
                    ExportError::UnsafeName { .. } | ExportError::UnsafeSymlink { .. }
                ),
                "{name}: {err}"
            );
        }
        assert!(!tmp.path().join("escape").exists());
        assert!(!tmp.path().join("out/escape").exists());
    }

    /// One 256 KiB leaf named 174 times per level, 3 levels: 8 blocks describe 1.2 GiB. The fetcher would
    /// hold 8 blocks; only the writer's count stops the disk from filling.
    #[tokio::test]
    async fn dag_bombs_stop_at_the_limits() {
        let store = Arc::new(MemoryBlockStore::new());
        let leaf = Block::new(RAW, Bytes::from(vec![7u8; 256 * 1024]), false);
        store.put(&leaf).expect("leaf");
        let mut top = *leaf.cid();
        let mut size = 256 * 1024u64;
        for _ in 0..3 {
            let mut data = UnixfsData::new(DataType::File);
            data.filesize = Some(size * 174);
            data.blocksizes = vec![size; 174];
            let node = PbNode {
                links: (0..174)
                    .map(|_| PbLink {
                        hash: top,
                        name: Some(String::new()),
                        tsize: Some(size),
                    })
                    .collect(),
                data: Some(Bytes::from(data.encode())),
            };
            let block = Block::new(DAG_PB, Bytes::from(node.encode()), true);
            store.put(&block).expect("node");
            top = *block.cid();
            size *= 174;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let limits = ExportLimits::new(10 << 20, 100);
        let err = get_limited(
            &LocalSource(store.clone()),
            &top,
            &dir.path().join("f"),
            &limits,
        )
        .await
        .expect_err("bomb");
        assert!(
            matches!(err, ExportError::TooLarge { what: "bytes", .. }),
            "{err}"
        );
        let written = std::fs::metadata(dir.path().join("f")).expect("file").len();
        assert!(written <= 10 << 20, "{written} bytes written");

        // Entries: a directory naming the same sub-directory 50 times, twice over, is 2,551 entries.
        let file = Block::new(RAW, Bytes::from_static(b"x"), false);
        store.put(&file).expect("file");
        let mut child = *file.cid();
        for _ in 0..2 {
            let node = PbNode {
                links: (0..50)
                    .map(|i| PbLink {
                        hash: child,
                        name: Some(format!("e{i:02}")),
                        tsize: Some(1),
                    })
                    .collect(),
                data: Some(Bytes::from(UnixfsData::new(DataType::Directory).encode())),
            };
            let block = Block::new(DAG_PB, Bytes::from(node.encode()), true);
            store.put(&block).expect("dir");
            child = *block.cid();
        }
        let limits = ExportLimits::new(u64::MAX, 1000);
        let err = get_limited(&LocalSource(store), &child, &dir.path().join("d"), &limits)
            .await
            .expect_err("bomb");
        assert!(
            matches!(
                err,
                ExportError::TooLarge {
                    what: "entries",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_tree_round_trips_through_get_and_cat() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(src.join("big"), &big).expect("write");
        std::fs::write(src.join("sub/deeper/small"), b"hi").expect("write");
        std::os::unix::fs::symlink("../big", src.join("sub/link")).expect("symlink");
        for options in [ImportOptions::default(), ImportOptions::for_cid_version(1)] {
            let store = Arc::new(MemoryBlockStore::new());
            let root = import_path(store.as_ref(), &src, &options).expect("import");
            let source = LocalSource(store.clone());
            let dest = tmp.path().join(format!("dest-{}", options.cid_version));
            let summary = get(&source, &root.cid, &dest).await.expect("get");
            assert_eq!((summary.files, summary.dirs, summary.symlinks), (2, 3, 1));
            assert_eq!(std::fs::read(dest.join("big")).expect("read"), big);
            assert_eq!(
                std::fs::read(dest.join("sub/deeper/small")).expect("read"),
                b"hi"
            );
            assert_eq!(
                std::fs::read_link(dest.join("sub/link")).expect("link"),
                Path::new("../big")
            );
            let big_cid = import_path(store.as_ref(), &src.join("big"), &options)
                .expect("file")
                .cid;
            let mut out = Vec::new();
            assert_eq!(
                cat(&source, &big_cid, &mut out).await.expect("cat"),
                big.len() as u64
            );
            assert_eq!(out, big);
            assert!(matches!(
                cat(&source, &root.cid, &mut Vec::new()).await,
                Err(ExportError::NotAFile { .. })
            ));
        }
    }

    #[tokio::test]
    async fn sharded_directories_export_every_entry() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        for i in 0..300 {
            std::fs::write(src.join(format!("f{i}")), format!("{i}")).expect("write");
        }
        let store = Arc::new(MemoryBlockStore::new());
        let options = ImportOptions {
            hamt_threshold: 1,
            ..ImportOptions::default()
        };
        let root = import_path(store.as_ref(), &src, &options).expect("import");
        let dest = tmp.path().join("dest");
        let summary = get(&LocalSource(store), &root.cid, &dest)
            .await
            .expect("get");
        assert_eq!(summary.files, 300);
        assert_eq!(std::fs::read(dest.join("f299")).expect("read"), b"299");
    }

    #[tokio::test]
    async fn missing_blocks_say_where_they_were_looked_for() {
        let store = Arc::new(MemoryBlockStore::new());
        let absent = *Block::new(RAW, Bytes::from_static(b"nope"), false).cid();
        let err = cat(&LocalSource(store), &absent, &mut Vec::new())
            .await
            .expect_err("absent");
        let chain = crate::errors::chain(&err);
        assert!(chain.contains("not in the local store"), "{chain}");
    }
}
