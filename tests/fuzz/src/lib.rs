//! What the unpacking targets share: a sandbox that notices a file landing outside the directory it was
//! meant for.
//!
//! Layout, per fuzzing process: `/tmp/cod-fuzz/<target>-<pid>/root` is the directory the code under test
//! writes into, and its parent must hold nothing else. `/tmp/cod-fuzz/outside/canary` is a fixed, well-known
//! path (the seeds name it in absolute symlinks and hard links, so the fuzzer has a target to aim at); it must
//! stay the only file there, unchanged, and no file in `root` may be a hard link to it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the canary lives; seeds refer to it by this absolute path.
pub const OUTSIDE: &str = "/tmp/cod-fuzz/outside";
const CANARY: &str = "canary";
const CANARY_TEXT: &[u8] = b"must never change\n";

/// A root to unpack into, and the places around it that must stay untouched.
#[derive(Debug)]
pub struct Sandbox {
    base: PathBuf,
    root: PathBuf,
    canary: PathBuf,
    canary_ino: (u64, u64),
}

impl Sandbox {
    /// Creates the sandbox for one target in this process.
    pub fn new(target: &str) -> Self {
        let base = Path::new("/tmp/cod-fuzz").join(format!("{target}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        fs::create_dir_all(&root).expect("create the sandbox root");
        fs::create_dir_all(OUTSIDE).expect("create the outside dir");
        let canary = Path::new(OUTSIDE).join(CANARY);
        fs::write(&canary, CANARY_TEXT).expect("write the canary");
        let meta = fs::metadata(&canary).expect("stat the canary");
        Sandbox {
            base,
            root,
            canary,
            canary_ino: (meta.dev(), meta.ino()),
        }
    }

    /// The directory the code under test writes into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Panics (a finding) if anything escaped `root`, then empties `root` for the next input.
    pub fn check_and_reset(&self) {
        let siblings: Vec<_> = fs::read_dir(&self.base)
            .expect("list the sandbox")
            .map(|e| e.expect("sandbox entry").file_name())
            .collect();
        assert_eq!(siblings, ["root"], "a file landed next to the root");
        let outside: Vec<_> = fs::read_dir(OUTSIDE)
            .expect("list the outside dir")
            .map(|e| e.expect("outside entry").file_name())
            .collect();
        assert_eq!(outside, [CANARY], "a file landed in {OUTSIDE}");
        assert_eq!(
            fs::read(&self.canary).expect("read the canary"),
            CANARY_TEXT,
            "the canary was written through"
        );
        self.assert_no_link_to_canary(&self.root);
        fs::remove_dir_all(&self.root).expect("empty the root");
        fs::create_dir(&self.root).expect("recreate the root");
    }

    fn assert_no_link_to_canary(&self, dir: &Path) {
        for entry in fs::read_dir(dir).expect("list a dir under the root") {
            let entry = entry.expect("entry under the root");
            let meta = entry.metadata().expect("lstat under the root");
            assert_ne!(
                (meta.dev(), meta.ino()),
                self.canary_ino,
                "{:?} is a hard link to the canary outside the root",
                entry.path()
            );
            if meta.is_dir() {
                self.assert_no_link_to_canary(&entry.path());
            }
        }
    }
}
