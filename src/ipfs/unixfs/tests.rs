//! Import vectors from Kubo 0.22's own test suite (test/sharness t0040-add-and-cat.sh and
//! t0260-sharding.sh), for the option sets the Kubo library in `tests/e2e/ipfs_cids.rs` cannot switch.

use std::path::Path;

use super::*;
use crate::ipfs::MemoryBlockStore;

fn planets(dir: &Path) -> std::path::PathBuf {
    let planets = dir.join("planets");
    fs::create_dir(&planets).expect("mkdir");
    fs::write(planets.join("mars.txt"), "Hello Mars!\n").expect("write");
    fs::write(planets.join("venus.txt"), "Hello Venus!\n").expect("write");
    planets
}

#[derive(Default)]
struct Lines(Vec<String>);
impl ImportObserver for Lines {
    fn added(&mut self, path: &str, root: &ImportedRoot) {
        self.0.push(format!("added {} {path}", root.cid));
    }
}

fn add(path: &Path, options: &ImportOptions) -> Vec<String> {
    let store = MemoryBlockStore::new();
    let mut lines = Lines::default();
    import_path_observed(&store, path, options, &mut lines).expect("import");
    lines.0
}

#[test]
fn planets_match_kubo_for_every_option_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = planets(tmp.path());
    let cases = [
        (
            ImportOptions::default(),
            "QmPrrHqJzto9m7SyiRzarwkqPcCSsKR2EB1AyqJfe8L8tN",
            "QmU5kp3BH3B8tnWUU2Pikdb2maksBNkb92FHRr56hyghh4",
            "QmWSgS32xQEcXMeqd3YPJLrNBLSdsfYCep2U7CFkyrjXwY",
        ),
        (
            ImportOptions {
                raw_leaves: true,
                ..ImportOptions::default()
            },
            "bafkreibmlvvgdyihetgocpof6xk64kjjzdeq2e4c7hqs3krdheosk4tgj4",
            "bafkreihfsphazrk2ilejpekyltjeh5k4yvwgjuwg26ueafohqioeo3sdca",
            "QmfWfQfKCY5Ukv9peBbxM5vqWM9BzmqUSXvdCgjT2wsiBT",
        ),
        (
            ImportOptions::for_cid_version(1),
            "bafkreibmlvvgdyihetgocpof6xk64kjjzdeq2e4c7hqs3krdheosk4tgj4",
            "bafkreihfsphazrk2ilejpekyltjeh5k4yvwgjuwg26ueafohqioeo3sdca",
            "bafybeih7e5dmkyk25up5vxug4q3hrg2fxbzf23dfrac2fns5h7z4aa7ioi",
        ),
        (
            ImportOptions {
                raw_leaves: false,
                ..ImportOptions::for_cid_version(1)
            },
            "bafybeiawta2ntdmsy24aro35w3homzl4ak7svr3si7l7gesvq4erglyye4",
            "bafybeicvkvhs2fr75ynebtdjqpgm4g2fc63abqbmysupwpmcjl4gx7mzrm",
            "bafybeif5tuep5ap2d7zyhbktucey75aoacxufgt6i3v4gebmixyipnyp7y",
        ),
    ];
    for (options, mars, venus, dir) in cases {
        assert_eq!(
            add(&p, &options),
            vec![
                format!("added {mars} planets/mars.txt"),
                format!("added {venus} planets/venus.txt"),
                format!("added {dir} planets"),
            ],
            "{options:?}"
        );
    }
}

#[test]
fn empty_file_with_raw_leaves_is_the_empty_raw_block() {
    let store = MemoryBlockStore::new();
    let root =
        import_file(&store, io::empty(), &ImportOptions::for_cid_version(1)).expect("import");
    assert_eq!(
        root.cid.to_string(),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
    let root = import_file(&store, io::empty(), &ImportOptions::default()).expect("import");
    assert_eq!(
        root.cid.to_string(),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
}

fn two_thousand_files(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("testdata");
    fs::create_dir(&data).expect("mkdir");
    for i in 1..=2000 {
        fs::write(data.join(format!("file{i}")), format!("{i}\n")).expect("write");
    }
    data
}

#[test]
fn sharded_directories_match_kubo() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = two_thousand_files(tmp.path());
    let store = MemoryBlockStore::new();
    let root = |options: ImportOptions| {
        import_path(&store, &data, &options)
            .expect("import")
            .cid
            .to_string()
    };
    // 2000 short names stay far below 256 KiB: a plain directory.
    assert_eq!(
        root(ImportOptions::default()),
        "QmavrTrQG4VhoJmantURAYuw3bowq3E2WcvP36NRQDAC1N"
    );
    // Kubo's test forces sharding with a 1-byte threshold.
    let forced = ImportOptions {
        hamt_threshold: 1,
        ..ImportOptions::default()
    };
    assert_eq!(
        root(forced.clone()),
        "QmSCJD1KYLhVVHqBK3YyXuoEqHt7vggyJhzoFYbT8v1XYL"
    );
    assert_eq!(
        root(ImportOptions {
            hamt_threshold: 1,
            ..ImportOptions::for_cid_version(1)
        }),
        "bafybeibiemewfzzdyhq2l74wrd6qj2oz42usjlktgnlqv4yfawgouaqn4u"
    );
}

#[test]
fn large_files_are_the_same_with_and_without_worker_threads() {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for base in [ImportOptions::default(), ImportOptions::for_cid_version(1)] {
        let store = MemoryBlockStore::new();
        let one = ImportOptions {
            threads: 1,
            chunk_size: 4096,
            max_links: 11,
            ..base.clone()
        };
        let many = ImportOptions {
            threads: 3,
            ..one.clone()
        };
        let a = import_file(&store, data.as_slice(), &one).expect("sequential");
        let b = import_file(&store, data.as_slice(), &many).expect("parallel");
        assert_eq!(a, b);
    }
}

/// Regular files take the positional path (workers reading their own chunks); it must give the DAG the
/// sequential reader gives, block for block, at every length around the chunk boundaries, whether blocks
/// are kept or only hashed.
#[test]
fn regular_files_read_by_workers_equal_the_sequential_import() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunk = 4096;
    let lens = [
        0,
        1,
        chunk,
        chunk + 1,
        2 * chunk,
        2 * chunk + 7,
        733 * chunk + 100,
    ];
    for base in [
        ImportOptions::default(),
        ImportOptions::for_cid_version(1),
        ImportOptions {
            raw_leaves: true,
            ..ImportOptions::default()
        },
    ] {
        let one = ImportOptions {
            threads: 1,
            chunk_size: chunk,
            max_links: 11,
            ..base.clone()
        };
        let many = ImportOptions {
            threads: 3,
            ..one.clone()
        };
        for len in lens {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let path = tmp.path().join(format!("f{len}"));
            fs::write(&path, &data).expect("write");
            let sequential = MemoryBlockStore::new();
            let want = import_file(&sequential, data.as_slice(), &one).expect("sequential");
            let workers = MemoryBlockStore::new();
            let got = import_path(&workers, &path, &many).expect("workers");
            assert_eq!(got, want, "{len} bytes, {base:?}");
            assert_eq!(workers.len(), sequential.len(), "{len} bytes, {base:?}");
            let hashed = import_path(&MemoryBlockStore::discarding(), &path, &many).expect("hash");
            assert_eq!(hashed, want, "{len} bytes, only hash, {base:?}");
        }
    }
    // Tens of thousands of tiny chunks: workers run ahead of each other and of the builder, so leaves
    // arrive out of order and the window holds the fast ones back.
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let path = tmp.path().join("tiny-chunks");
    fs::write(&path, &data).expect("write");
    let tiny = ImportOptions {
        threads: 1,
        chunk_size: 8,
        ..ImportOptions::default()
    };
    let want = import_file(&MemoryBlockStore::new(), data.as_slice(), &tiny).expect("sequential");
    let many = ImportOptions { threads: 4, ..tiny };
    let store = MemoryBlockStore::discarding();
    assert_eq!(import_path(&store, &path, &many).expect("workers"), want);
}

#[test]
fn non_utf8_names_are_refused_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::write(&bad, "x").expect("write");
    let err = import_path(
        &MemoryBlockStore::new(),
        tmp.path(),
        &ImportOptions::default(),
    )
    .expect_err("must refuse");
    assert!(matches!(err, ImportError::NotUtf8 { .. }), "{err}");
    assert!(err.to_string().contains("not valid UTF-8"));
}

#[test]
fn hidden_entries_follow_the_option() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join(".hidden"), "x").expect("write");
    let store = MemoryBlockStore::new();
    let without = import_path(&store, tmp.path(), &ImportOptions::default()).expect("import");
    assert_eq!(
        without.cid.to_string(),
        "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    );
    let with = ImportOptions {
        hidden: true,
        ..ImportOptions::default()
    };
    assert_ne!(
        import_path(&store, tmp.path(), &with).expect("import"),
        without
    );
}
