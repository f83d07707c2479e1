//! Files as Kubo lays them out: fixed-size leaves under a balanced tree of at most `max_links` links per
//! node (boxo's `importer/balanced`).
//!
//! boxo builds the tree top-down and grows it by one level each time it fills up; the result is the same
//! as filling it bottom-up from the left, which is what [`FileBuilder`] does while the data streams past:
//! it keeps one list of pending links per level (at most `max_links` each), and a list is turned into a
//! node only when the next link for it arrives and it is full, or at the end. So a file of any size needs
//! `depth × max_links` links of memory plus one chunk, never the file.
//!
//! Byte-exact details (they decide the CIDs):
//! - a file of one chunk is that leaf alone, not wrapped (with raw leaves the root is a raw block);
//! - the empty file is a leaf with no data (`Data{File, filesize 0}`), or an empty raw block;
//! - inner nodes carry `Data{File, filesize, blocksizes}` with no inline data, and links with an empty
//!   name and the child's Tsize (its block plus everything under it); a raw leaf's Tsize is its length.

use bytes::Bytes;
use cid::Cid;
use sha2::{Digest, Sha256};

use super::{ImportError, ImportOptions};
use crate::ipfs::dagpb::{DataType, PbLink, PbNode, UnixfsData};
use crate::ipfs::{Block, BlockStore, DAG_PB, RAW, sha256_cid};

/// A built node as its parent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    /// The node.
    pub cid: Cid,
    /// Cumulative DAG size (the link's Tsize).
    pub tsize: u64,
    /// File bytes under it (the parent's `blocksizes` entry).
    pub filesize: u64,
}

/// Builds one file's DAG from chunks fed in order.
#[derive(Debug)]
pub struct FileBuilder<'a> {
    store: &'a dyn BlockStore,
    options: &'a ImportOptions,
    /// `levels[k]`: links waiting for a node at height k+1 (level 0 holds leaves).
    levels: Vec<Vec<Child>>,
    /// Whether any chunk came (an empty file still gets a leaf).
    any: bool,
}

impl<'a> FileBuilder<'a> {
    /// A builder writing blocks to `store`.
    pub fn new(store: &'a dyn BlockStore, options: &'a ImportOptions) -> Self {
        FileBuilder {
            store,
            options,
            levels: Vec::new(),
            any: false,
        }
    }

    /// Adds the next chunk.
    pub fn push_chunk(&mut self, chunk: Vec<u8>) -> Result<(), ImportError> {
        self.any = true;
        let leaf = self.leaf(chunk)?;
        self.add(0, leaf)
    }

    /// Adds a leaf that was already built and stored (by a parallel hasher), in file order.
    pub fn push_leaf(&mut self, leaf: Child) -> Result<(), ImportError> {
        self.any = true;
        self.add(0, leaf)
    }

    /// Closes every level and returns the root.
    pub fn finish(mut self) -> Result<Child, ImportError> {
        if !self.any {
            return self.leaf(Vec::new());
        }
        let mut level = 0;
        while level < self.levels.len() {
            let pending = std::mem::take(&mut self.levels[level]);
            let top = level + 1 == self.levels.len();
            if top && level == 0 && pending.len() == 1 {
                // One chunk: the leaf is the file.
                return Ok(pending[0]);
            }
            let node = self.inner(&pending)?;
            if top {
                return Ok(node);
            }
            // May overflow the next level, which then grows a new top: the loop bound is re-read.
            self.add(level + 1, node)?;
            level += 1;
        }
        unreachable!("a builder that saw a chunk has at least one level")
    }

    fn add(&mut self, level: usize, child: Child) -> Result<(), ImportError> {
        if self.levels.len() == level {
            self.levels.push(Vec::with_capacity(self.options.max_links));
        }
        if self.levels[level].len() == self.options.max_links {
            let full = std::mem::replace(
                &mut self.levels[level],
                Vec::with_capacity(self.options.max_links),
            );
            let node = self.inner(&full)?;
            self.add(level + 1, node)?;
        }
        self.levels[level].push(child);
        Ok(())
    }

    /// Builds and stores a leaf from one chunk.
    pub fn leaf(&self, chunk: Vec<u8>) -> Result<Child, ImportError> {
        put_leaf(self.store, self.options, chunk)
    }

    fn inner(&self, children: &[Child]) -> Result<Child, ImportError> {
        let mut data = UnixfsData::new(DataType::File);
        data.blocksizes = children.iter().map(|c| c.filesize).collect();
        let filesize = data.blocksizes.iter().sum();
        data.filesize = Some(filesize);
        let node = PbNode {
            links: children
                .iter()
                .map(|c| PbLink {
                    hash: c.cid,
                    name: Some(String::new()),
                    tsize: Some(c.tsize),
                })
                .collect(),
            data: Some(Bytes::from(data.encode())),
        };
        let bytes = Bytes::from(node.encode());
        let tsize = bytes.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>();
        let block = Block::new(DAG_PB, bytes, self.options.cid_version == 0);
        self.store.put(&block).map_err(ImportError::Store)?;
        Ok(Child {
            cid: *block.cid(),
            tsize,
            filesize,
        })
    }
}

/// Makes the leaf of `chunk` and puts it in `store` (pure but for the store, so any thread may call it).
/// A store that keeps nothing gets no block: only the leaf's CID is worked out.
pub fn put_leaf(
    store: &dyn BlockStore,
    options: &ImportOptions,
    chunk: Vec<u8>,
) -> Result<Child, ImportError> {
    // A stored raw leaf is the chunk itself: the owned buffer becomes the block, uncopied.
    if options.raw_leaves && !store.discards_blocks() {
        let (child, block) = leaf_block(chunk, options);
        store.put(&block).map_err(ImportError::Store)?;
        return Ok(child);
    }
    put_leaf_from(store, options, &chunk)
}

/// [`put_leaf`] for a chunk in a buffer the caller reuses: a block that is stored gets its own copy.
pub fn put_leaf_from(
    store: &dyn BlockStore,
    options: &ImportOptions,
    chunk: &[u8],
) -> Result<Child, ImportError> {
    if store.discards_blocks() {
        return Ok(leaf_child(chunk, options));
    }
    let (child, block) = if options.raw_leaves {
        leaf_block(chunk.to_vec(), options)
    } else {
        // Framing makes the copy the block needs anyway; no second one.
        dag_pb_leaf(Bytes::from(file_leaf_bytes(chunk)), chunk.len(), options)
    };
    store.put(&block).map_err(ImportError::Store)?;
    Ok(child)
}

/// The leaf block for a chunk.
fn leaf_block(chunk: Vec<u8>, options: &ImportOptions) -> (Child, Block) {
    let filesize = chunk.len() as u64;
    if options.raw_leaves {
        let block = Block::new(RAW, Bytes::from(chunk), false);
        return (
            Child {
                cid: *block.cid(),
                tsize: filesize,
                filesize,
            },
            block,
        );
    }
    dag_pb_leaf(Bytes::from(file_leaf_bytes(&chunk)), chunk.len(), options)
}

fn dag_pb_leaf(bytes: Bytes, filesize: usize, options: &ImportOptions) -> (Child, Block) {
    let tsize = bytes.len() as u64;
    let block = Block::new(DAG_PB, bytes, options.cid_version == 0);
    (
        Child {
            cid: *block.cid(),
            tsize,
            filesize: filesize as u64,
        },
        block,
    )
}

/// The leaf of `chunk` as its parent sees it, without building the block: the dag-pb framing and the data
/// are hashed as one SHA-256 stream, so the chunk is neither copied into a node nor allocated for.
fn leaf_child(chunk: &[u8], options: &ImportOptions) -> Child {
    let filesize = chunk.len() as u64;
    let mut hasher = Sha256::new();
    if options.raw_leaves {
        hasher.update(chunk);
        return Child {
            cid: sha256_cid(RAW, &hasher.finalize().into(), false),
            tsize: filesize,
            filesize,
        };
    }
    let (head, tail) = leaf_frame(chunk.len());
    hasher.update(&head);
    hasher.update(chunk);
    hasher.update(&tail);
    Child {
        cid: sha256_cid(DAG_PB, &hasher.finalize().into(), options.cid_version == 0),
        tsize: (head.len() + chunk.len() + tail.len()) as u64,
        filesize,
    }
}

/// The bytes around the data in a UnixFS file leaf of `len` data bytes: the node is `head ++ data ++ tail`.
/// Same bytes as `PbNode { data: UnixfsData { File, data, filesize } }` (a test checks it).
fn leaf_frame(len: usize) -> (Vec<u8>, Vec<u8>) {
    use crate::ipfs::pb;
    let len = len as u64;
    let mut unixfs_header = Vec::with_capacity(8);
    pb::put_varint_field(&mut unixfs_header, 1, 2); // Type = File
    if len > 0 {
        pb::put_key(&mut unixfs_header, 2, 2); // Data, length-delimited
        pb::put_uvarint(&mut unixfs_header, len);
    }
    let mut tail = Vec::with_capacity(11);
    pb::put_varint_field(&mut tail, 3, len); // filesize
    let unixfs_len = unixfs_header.len() as u64 + len + tail.len() as u64;
    let mut head = Vec::with_capacity(8 + unixfs_header.len());
    pb::put_key(&mut head, 1, 2); // PBNode.Data
    pb::put_uvarint(&mut head, unixfs_len);
    head.extend_from_slice(&unixfs_header);
    (head, tail)
}

/// The dag-pb bytes of a UnixFS file leaf holding `chunk`, written in one pass with one copy of the data
/// (the generic encoders would copy it twice: into the UnixFS message, then into the node).
fn file_leaf_bytes(chunk: &[u8]) -> Vec<u8> {
    let (head, tail) = leaf_frame(chunk.len());
    let mut out = Vec::with_capacity(head.len() + chunk.len() + tail.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(chunk);
    out.extend_from_slice(&tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::MemoryBlockStore;

    #[test]
    fn fast_leaf_encoding_equals_the_generic_one() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 262_144] {
            let chunk: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
            let mut data = UnixfsData::new(DataType::File);
            data.filesize = Some(len as u64);
            if len > 0 {
                data.data = Some(Bytes::from(chunk.clone()));
            }
            let generic = PbNode {
                links: Vec::new(),
                data: Some(Bytes::from(data.encode())),
            }
            .encode();
            assert_eq!(file_leaf_bytes(&chunk), generic, "length {len}");
        }
    }

    #[test]
    fn streamed_leaf_cid_equals_the_built_block() {
        for options in [
            ImportOptions::for_cid_version(0),
            ImportOptions::for_cid_version(1),
            ImportOptions {
                cid_version: 1,
                raw_leaves: false,
                ..ImportOptions::default()
            },
        ] {
            for len in [0usize, 1, 127, 128, 16_384, 262_144] {
                let chunk: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
                let (built, block) = leaf_block(chunk.clone(), &options);
                assert_eq!(leaf_child(&chunk, &options), built, "{options:?} {len}");
                assert_eq!(built.cid, *block.cid());
                let kept = MemoryBlockStore::new();
                assert_eq!(put_leaf_from(&kept, &options, &chunk).expect("put"), built);
                assert_eq!(
                    kept.get(&built.cid).expect("get"),
                    Some(block.data().clone())
                );
                let dropped = MemoryBlockStore::discarding();
                assert_eq!(put_leaf(&dropped, &options, chunk).expect("put"), built);
            }
        }
    }

    fn shape(chunks: usize, max_links: usize) -> (Vec<usize>, usize) {
        // Returns the link counts of the root's subtrees along the rightmost path and the depth.
        let store = MemoryBlockStore::new();
        let options = ImportOptions {
            max_links,
            raw_leaves: true,
            cid_version: 1,
            ..ImportOptions::default()
        };
        let mut b = FileBuilder::new(&store, &options);
        for i in 0..chunks {
            b.push_chunk(vec![u8::try_from(i % 251).expect("small")])
                .expect("push");
        }
        let root = b.finish().expect("finish");
        assert_eq!(root.filesize, chunks as u64);
        let mut counts = Vec::new();
        let mut cid = root.cid;
        while cid.codec() == DAG_PB {
            let block = store.get(&cid).expect("get").expect("held");
            let node = PbNode::decode(&block).expect("decode");
            counts.push(node.links.len());
            cid = node.links.last().expect("links").hash;
        }
        let depth = counts.len();
        (counts, depth)
    }

    #[test]
    fn tree_grows_a_level_only_past_a_full_one() {
        assert_eq!(shape(1, 3), (vec![], 0));
        assert_eq!(shape(3, 3), (vec![3], 1));
        assert_eq!(shape(4, 3), (vec![2, 1], 2));
        assert_eq!(shape(9, 3), (vec![3, 3], 2));
        // One past a full depth-2 tree: a depth-3 root whose second child holds a chain down to one leaf.
        assert_eq!(shape(10, 3), (vec![2, 1, 1], 3));
        assert_eq!(shape(12, 3), (vec![2, 1, 3], 3));
    }

    #[test]
    fn blocksizes_and_tsizes_add_up() {
        let store = MemoryBlockStore::new();
        let options = ImportOptions {
            max_links: 2,
            chunk_size: 4,
            ..ImportOptions::default()
        };
        let mut b = FileBuilder::new(&store, &options);
        for c in [vec![1u8; 4], vec![2; 4], vec![3; 2]] {
            b.push_chunk(c).expect("push");
        }
        let root = b.finish().expect("finish");
        let block = store.get(&root.cid).expect("get").expect("held");
        let node = PbNode::decode(&block).expect("decode");
        let data = UnixfsData::decode(node.data.as_ref().expect("data")).expect("unixfs");
        assert_eq!(data.filesize, Some(10));
        assert_eq!(data.blocksizes, vec![8, 2]);
        let links: u64 = node.links.iter().map(|l| l.tsize.expect("tsize")).sum();
        assert_eq!(root.tsize, block.len() as u64 + links);
    }
}
