//! dag-pb blocks and their UnixFS data, as fetched from peers.
#![no_main]

use cod::ipfs::dagpb::UnixfsData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((node, unixfs)) = cod::fuzzing::dagpb(data) {
        // Re-encoding what decoded must decode to the same value (the importer relies on encode/decode
        // agreeing, and a block's CID is over the encoding).
        let again = cod::fuzzing::dagpb(&node.encode()).expect("a re-encoded node decodes");
        assert_eq!(again.0, node);
        if let Some(unixfs) = unixfs {
            let bytes = bytes::Bytes::from(unixfs.encode());
            assert_eq!(UnixfsData::decode(&bytes).ok(), Some(unixfs));
        }
    }
});
