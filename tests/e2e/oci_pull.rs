//! Pulling images from a real registry (Debian's docker-registry on loopback, plain HTTP): resolution, platform
//! choice, authentication, verification, the cache, compression formats and GC.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cod::oci::platform::Platform;
use cod::oci::reference::{Digest, ImageRef};
use cod::oci::registry::{
    Compression, PullError, Registry, RegistryAuth, RegistryConfig, ResolvedImage,
};
use cod::oci::store::{ImageStore, ImageStoreConfig, PullProgress};
use cod::oci::unpack::{IdShift, UnpackLimits};
use cod::store::Store;
use serde_json::json;

use crate::registry::{
    PushOptions, RawCompression, RawImage, TestRegistry, build_busybox_image, busybox,
    wait_for_blob_gets,
};
use crate::tarball::TarBuilder;

/// The container user namespace the node uses.
const SHIFT: IdShift = IdShift {
    base: 100_000,
    size: 65_536,
};

fn client(config: RegistryConfig) -> Registry {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Registry::new(config).expect("registry client")
}

fn plain_client() -> Registry {
    client(RegistryConfig::default())
}

fn image_ref(s: &str) -> ImageRef {
    s.parse().expect("image reference")
}

/// A node's image store in a temp dir.
struct Node {
    dir: tempfile::TempDir,
    images: ImageStore,
}

impl Node {
    async fn open(registry: Registry) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("cod-oci-")
            .tempdir()
            .expect("tempdir");
        let images = open_store(dir.path(), registry).await;
        Node { dir, images }
    }

    fn oci(&self) -> PathBuf {
        self.dir.path().join("data/oci")
    }

    /// Entries in one of the store's directories (`blobs/sha256`, `layers`, `tmp`).
    fn entries(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.oci().join(sub))
            .expect("store dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

async fn open_store(dir: &Path, registry: Registry) -> ImageStore {
    let data = dir.join("data");
    let store = Store::open(&data.join("state"), &cod::store::Config::default()).expect("lmdb");
    ImageStore::open(
        &data,
        &store,
        registry,
        ImageStoreConfig {
            shift: SHIFT,
            limits: UnpackLimits {
                max_bytes: 1 << 30,
                max_entries: 1_000_000,
            },
        },
    )
    .await
    .expect("image store")
}

/// Collects progress events.
#[derive(Default)]
struct Events(Mutex<Vec<PullProgress>>);

impl Events {
    fn sink(&self) -> impl Fn(PullProgress) + Send + Sync + '_ {
        |e| self.0.lock().expect("events").push(e)
    }

    fn take(&self) -> Vec<PullProgress> {
        std::mem::take(&mut *self.0.lock().expect("events"))
    }
}

fn downloads(events: &[PullProgress]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, PullProgress::Downloading { .. }))
        .count()
}

fn count<F: Fn(&PullProgress) -> bool>(events: &[PullProgress], f: F) -> usize {
    events.iter().filter(|e| f(e)).count()
}

/// A one-layer image whose only file says `marker`.
fn marker_image(marker: &str) -> RawImage {
    RawImage::new(vec![
        TarBuilder::new()
            .file("marker", marker.as_bytes(), 0o644)
            .build(),
    ])
}

async fn resolve(registry: &Registry, reference: &str) -> ResolvedImage {
    registry
        .resolve(&image_ref(reference), &Platform::host())
        .await
        .unwrap_or_else(|e| panic!("resolve {reference}: {e}"))
}

#[tokio::test]
async fn an_index_resolves_to_this_nodes_platform() {
    let reg = TestRegistry::start();
    let images = [
        marker_image("s390x").for_platform("linux/s390x"),
        marker_image("host").with_config(json!({"config": {"Env": ["WHICH=host"]}})),
        marker_image("riscv").for_platform("linux/riscv64"),
    ];
    let (pushed, digests) = reg.push_index("multi", "v1", &images);
    let registry = plain_client();

    let got = resolve(&registry, &pushed.reference).await;
    assert_eq!(got.digest.to_string(), digests[1], "the host's entry");
    assert_eq!(
        got.index_digest.as_ref().map(ToString::to_string),
        Some(pushed.digest.clone())
    );
    assert_eq!(got.platform, Platform::host());
    assert_eq!(got.config.env, vec!["WHICH=host"]);
    assert_eq!(got.layers.len(), 1);
    assert_eq!(got.layers[0].compression, Compression::Gzip);

    // Another platform picks its own entry, and pinning the index by digest resolves the same way.
    let s390x: Platform = "linux/s390x".parse().expect("platform");
    let other = registry
        .resolve(&image_ref(&pushed.pinned), &s390x)
        .await
        .expect("s390x entry");
    assert_eq!(other.digest.to_string(), digests[0]);
}

#[tokio::test]
async fn an_index_without_this_platform_is_platform_missing() {
    let reg = TestRegistry::start();
    let (pushed, _) = reg.push_index(
        "foreign",
        "v1",
        &[
            marker_image("s390x").for_platform("linux/s390x"),
            marker_image("riscv").for_platform("linux/riscv64"),
        ],
    );
    let node = Node::open(plain_client()).await;
    let events = Events::default();
    let err = node
        .images
        .pull(
            &image_ref(&pushed.reference),
            &Platform::host(),
            &events.sink(),
        )
        .await
        .expect_err("no manifest for this platform");
    let PullError::PlatformMissing {
        wanted, available, ..
    } = &err
    else {
        panic!("expected PlatformMissing, got {err:?}")
    };
    assert_eq!(wanted, &Platform::host());
    let names: Vec<String> = available.iter().map(ToString::to_string).collect();
    assert_eq!(names, vec!["linux/riscv64", "linux/s390x"]);
    let msg = err.to_string();
    assert!(
        msg.contains(&pushed.reference)
            && msg.contains("linux/s390x")
            && msg.contains(&Platform::host().to_string()),
        "{msg}"
    );
    assert!(events.take().is_empty(), "nothing was downloaded");
}

#[tokio::test]
async fn a_missing_image_or_tag_is_not_found_naming_both() {
    let reg = TestRegistry::start();
    let pushed = reg.push_raw_image("present", "v1", &marker_image("x"));
    let registry = plain_client();
    for missing in [
        reg.reference("absent", "v1"),
        reg.reference("present", "v2"),
    ] {
        let err = registry
            .resolve(&image_ref(&missing), &Platform::host())
            .await
            .expect_err("missing");
        assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "image {missing} not found in registry {}",
                reg.host()
            )),
            "{msg}"
        );
    }
    // A digest the registry does not have.
    let pinned = format!(
        "{}/present@{}",
        reg.host(),
        Digest::sha256_of(b"never pushed")
    );
    let err = registry
        .resolve(&image_ref(&pinned), &Platform::host())
        .await
        .expect_err("unknown digest");
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    // The pushed one resolves.
    resolve(&registry, &pushed.reference).await;
}

#[tokio::test]
async fn basic_auth_works_with_the_right_credentials_only() {
    let reg = TestRegistry::start_with_basic_auth("alice", "s3cret-pw");
    let pushed = reg.push_raw_image("private", "v1", &marker_image("secret"));
    let reference = image_ref(&pushed.reference);
    let with = |password: &str| {
        client(RegistryConfig {
            auths: [(
                reg.host().to_owned(),
                RegistryAuth::Basic {
                    username: "alice".into(),
                    password: password.into(),
                },
            )]
            .into(),
            ..RegistryConfig::default()
        })
    };

    let anonymous = plain_client()
        .resolve(&reference, &Platform::host())
        .await
        .expect_err("anonymous");
    assert!(
        matches!(
            anonymous,
            PullError::Unauthorized {
                credentials: false,
                ..
            }
        ),
        "{anonymous:?}"
    );
    let msg = anonymous.to_string();
    assert!(
        msg.contains("requires authentication")
            && msg.contains(&format!("configure credentials for {}", reg.host())),
        "{msg}"
    );

    let wrong = with("wrong-pw")
        .resolve(&reference, &Platform::host())
        .await
        .expect_err("wrong password");
    assert!(
        matches!(
            wrong,
            PullError::Unauthorized {
                credentials: true,
                ..
            }
        ),
        "{wrong:?}"
    );
    let msg = format!("{wrong} {wrong:?}");
    assert!(msg.contains("rejected the configured credentials"), "{msg}");
    assert!(!msg.contains("wrong-pw"), "never print a password: {msg}");

    let registry = with("s3cret-pw");
    let resolved = registry
        .resolve(&reference, &Platform::host())
        .await
        .expect("authorized");
    let layer = &resolved.layers[0].blob;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join(layer.digest.hex());
    let mut seen = Vec::new();
    registry
        .fetch_blob(&reference, layer, &dest, &mut |n| seen.push(n))
        .await
        .expect("blob");
    let bytes = std::fs::read(&dest).expect("blob file");
    assert_eq!(Digest::sha256_of(&bytes), layer.digest);
    assert_eq!(
        seen.last().copied(),
        Some(layer.size),
        "progress ends at the size"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        1,
        "no temp file left"
    );
}

#[tokio::test]
async fn a_corrupt_blob_is_a_digest_mismatch_and_leaves_nothing() {
    let reg = TestRegistry::start();
    let pushed = reg.push_raw_image(
        "corrupt",
        "v1",
        &RawImage::new(vec![
            TarBuilder::new()
                .file("data", &[7u8; 50_000], 0o644)
                .build(),
        ]),
    );
    let registry = plain_client();
    let layer = resolve(&registry, &pushed.reference).await.layers[0]
        .blob
        .clone();
    reg.corrupt_blob(&layer.digest.to_string());

    let node = Node::open(registry).await;
    let events = Events::default();
    let err = node
        .images
        .pull(
            &image_ref(&pushed.reference),
            &Platform::host(),
            &events.sink(),
        )
        .await
        .expect_err("corrupt blob");
    let PullError::DigestMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("expected DigestMismatch, got {err:?}")
    };
    assert_eq!(expected, &layer.digest);
    assert_ne!(actual, &layer.digest.to_string());
    let msg = err.to_string();
    assert!(
        msg.contains(&pushed.reference) && msg.contains("corrupt"),
        "{msg}"
    );
    assert!(downloads(&events.take()) > 0, "it was downloaded");
    assert!(
        node.entries("blobs/sha256").is_empty(),
        "no blob or temp file kept"
    );
    assert!(node.entries("layers").is_empty());
}

#[tokio::test]
async fn an_unreachable_registry_says_so() {
    let mut reg = TestRegistry::start();
    let reference = reg.reference("gone", "v1");
    reg.stop();
    let err = plain_client()
        .resolve(&image_ref(&reference), &Platform::host())
        .await
        .expect_err("stopped registry");
    assert!(err.is_unreachable(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("cannot reach registry {}", reg.host())),
        "{err}"
    );
}

#[tokio::test]
async fn docker_v2s2_and_zstd_images_resolve_with_their_compression() {
    let reg = TestRegistry::start();
    // One build pushed twice: the same layers, recompressed.
    let work = tempfile::tempdir().expect("tempdir");
    let layout = build_busybox_image(work.path(), "latest");
    let docker = reg.push(
        &layout,
        "latest",
        "busybox",
        "docker",
        &PushOptions {
            docker_v2s2: true,
            ..PushOptions::default()
        },
    );
    let zstd = reg.push(
        &layout,
        "latest",
        "busybox",
        "zstd",
        &PushOptions {
            zstd: true,
            ..PushOptions::default()
        },
    );
    let registry = plain_client();
    let d = resolve(&registry, &docker.reference).await;
    assert_eq!(d.digest.to_string(), docker.digest);
    assert_eq!(d.layers.len(), busybox::LAYERS);
    for l in &d.layers {
        assert_eq!(l.compression, Compression::Gzip);
        assert_eq!(
            l.blob.media_type,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    assert_eq!(d.config.env, vec![busybox::ENV]);
    assert_eq!(d.config.cmd, vec![busybox::CMD]);
    assert_eq!(d.config.working_dir.as_deref(), Some("/"));

    let z = resolve(&registry, &zstd.reference).await;
    assert!(
        z.layers.iter().all(|l| l.compression == Compression::Zstd),
        "{z:?}"
    );
    // Same content, different compression: same diff ids.
    let ids = |r: &ResolvedImage| {
        r.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&d), ids(&z));
}

// ---- Tests that unpack layers (need apply_layer from the oci-unpack branch). ----

#[tokio::test]
async fn busybox_pulls_by_tag_and_digest_then_from_the_cache() {
    let mut reg = TestRegistry::start();
    let pushed = reg.push_busybox("busybox", "1.0", &PushOptions::default());
    let resolved = resolve(&plain_client(), &pushed.reference).await;
    let node = Node::open(plain_client()).await;
    let host = Platform::host();
    let events = Events::default();

    let img = node
        .images
        .pull(&image_ref(&pushed.reference), &host, &events.sink())
        .await
        .expect("first pull");
    eprintln!(
        "busybox pull + unpack: {:?} ({} compressed bytes, {} layers)",
        img.took,
        img.pulled_bytes,
        img.layers.len()
    );
    assert_eq!(img.digest.to_string(), pushed.digest);
    assert_eq!(img.layers.len(), busybox::LAYERS);
    assert_eq!(
        img.pulled_bytes,
        resolved.layers.iter().map(|l| l.blob.size).sum::<u64>()
    );
    assert_eq!(img.config.env, vec![busybox::ENV]);
    assert_eq!(img.config.cmd, vec![busybox::CMD]);
    let first = events.take();
    for e in &first {
        if let PullProgress::LayerUnpacked {
            index,
            entries,
            bytes,
            took,
            ..
        } = e
        {
            eprintln!("layer {index}: {entries} entries, {bytes} bytes, unpacked in {took:?}");
        }
    }
    assert!(downloads(&first) >= busybox::LAYERS, "{first:?}");
    assert_eq!(
        count(&first, |e| matches!(e, PullProgress::LayerUnpacked { .. })),
        busybox::LAYERS
    );

    // The layers, in overlay format, owned by the shifted ids.
    let bottom = &img.layers[0];
    let top = &img.layers[1];
    let busybox_meta = std::fs::metadata(bottom.join("bin/busybox")).expect("busybox");
    assert!(busybox_meta.is_file() && busybox_meta.mode() & 0o111 != 0);
    assert_eq!(
        busybox_meta.uid(),
        SHIFT.base,
        "root in the image → base uid"
    );
    assert_eq!(
        std::fs::read_link(bottom.join("bin/sh")).expect("applet"),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_to_string(top.join(busybox::ADDED.0)).expect("added"),
        busybox::ADDED.1
    );
    assert_eq!(
        std::fs::read_link(top.join(busybox::SYMLINK.0)).expect("symlink"),
        Path::new(busybox::SYMLINK.1)
    );
    let whiteout = std::fs::symlink_metadata(top.join(busybox::REMOVED)).expect("whiteout");
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "a whiteout is a 0/0 character device"
    );
    assert!(bottom.join(busybox::REMOVED).is_file());
    assert!(
        node.entries("blobs/sha256").is_empty(),
        "blobs go once unpacked"
    );
    assert!(node.entries("tmp").is_empty());
    for l in &resolved.layers {
        wait_for_blob_gets(&reg, &l.blob.digest.to_string(), 1);
    }
    let digest = img.digest.clone();
    drop(img);

    // Again by tag: the manifest is fetched, no blob is.
    let again = node
        .images
        .pull(&image_ref(&pushed.reference), &host, &events.sink())
        .await
        .expect("cached pull");
    let second = events.take();
    assert_eq!(downloads(&second), 0, "{second:?}");
    assert_eq!(
        count(&second, |e| matches!(e, PullProgress::LayerCached { .. })),
        busybox::LAYERS
    );
    assert_eq!(again.pulled_bytes, 0);
    assert_eq!(again.digest, digest);
    for l in &resolved.layers {
        assert_eq!(
            reg.requests("GET", &format!("/blobs/{}", l.blob.digest)),
            1,
            "blob {} fetched once",
            l.blob.digest
        );
    }
    assert_eq!(
        node.images
            .cached(&image_ref(&pushed.reference), &host)
            .await
            .expect("cached"),
        Some(digest.clone())
    );

    // With the registry gone: a digest needs no network; a tag falls back to what it last resolved to.
    reg.stop();
    let pinned = node
        .images
        .pull(&image_ref(&pushed.pinned), &host, &events.sink())
        .await
        .expect("a digest already here needs no registry");
    assert_eq!(pinned.digest, digest);
    let fallback = node
        .images
        .pull(&image_ref(&pushed.reference), &host, &events.sink())
        .await
        .expect("tag falls back to the cache");
    assert_eq!(fallback.digest, digest);
    assert!(
        events.take().iter().any(|e| matches!(
            e,
            PullProgress::Resolved {
                from_cache: true,
                ..
            }
        )),
        "the tag fallback is reported"
    );
}

#[tokio::test]
async fn zstd_and_plain_layers_unpack_and_share_layers_with_gzip() {
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().expect("tempdir");
    let layout = build_busybox_image(work.path(), "latest");
    let gzip = reg.push(
        &layout,
        "latest",
        "busybox",
        "gzip",
        &PushOptions::default(),
    );
    let zstd = reg.push(
        &layout,
        "latest",
        "busybox",
        "zstd",
        &PushOptions {
            zstd: true,
            ..PushOptions::default()
        },
    );
    let node = Node::open(plain_client()).await;
    let host = Platform::host();
    let events = Events::default();
    let z = node
        .images
        .pull(&image_ref(&zstd.reference), &host, &events.sink())
        .await
        .expect("zstd pull");
    assert_eq!(
        std::fs::read_to_string(z.layers[1].join(busybox::ADDED.0)).expect("file"),
        busybox::ADDED.1
    );
    events.take();
    // The gzip image has the same diff ids: its layers are already here.
    let g = node
        .images
        .pull(&image_ref(&gzip.reference), &host, &events.sink())
        .await
        .expect("gzip pull");
    assert_eq!(g.layers, z.layers);
    assert_eq!(downloads(&events.take()), 0);

    for compression in [RawCompression::None, RawCompression::Zstd] {
        let tar = TarBuilder::new()
            .dir("d", 0o755)
            .file("d/f", format!("{compression:?}").as_bytes(), 0o600)
            .build();
        let pushed = reg.push_raw_image(
            "raw",
            &format!("{compression:?}").to_lowercase(),
            &RawImage::new(vec![tar]).compressed(compression),
        );
        let img = node
            .images
            .pull(&image_ref(&pushed.reference), &host, &events.sink())
            .await
            .unwrap_or_else(|e| panic!("{compression:?}: {e}"));
        let f = img.layers[0].join("d/f");
        assert_eq!(
            std::fs::read_to_string(&f).expect("file"),
            format!("{compression:?}")
        );
        assert_eq!(std::fs::metadata(&f).expect("meta").mode() & 0o777, 0o600);
    }
}

#[tokio::test]
async fn a_diff_id_mismatch_fails_and_keeps_no_layer() {
    let reg = TestRegistry::start();
    let wrong = Digest::sha256_of(b"something else").to_string();
    let pushed = reg.push_raw_image(
        "lying",
        "v1",
        &marker_image("x").with_config(json!({"rootfs": {"type": "layers", "diff_ids": [wrong]}})),
    );
    let node = Node::open(plain_client()).await;
    let err = node
        .images
        .pull(
            &image_ref(&pushed.reference),
            &Platform::host(),
            &Events::default().sink(),
        )
        .await
        .expect_err("diff id mismatch");
    let PullError::DiffIdMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("expected DiffIdMismatch, got {err:?}")
    };
    assert_eq!(expected.to_string(), wrong);
    assert_ne!(actual, expected);
    assert!(err.to_string().contains(&pushed.reference), "{err}");
    assert!(node.entries("layers").is_empty());
    assert!(node.entries("tmp").is_empty());
    assert!(node.entries("blobs/sha256").is_empty());
}

#[tokio::test]
async fn a_hostile_layer_is_refused_and_writes_nothing_outside() {
    let reg = TestRegistry::start();
    let tar = TarBuilder::new()
        .file("ok", b"fine", 0o644)
        .file("../../../../escaped-by-layer", b"pwned", 0o644)
        .build();
    let pushed = reg.push_raw_image("hostile", "v1", &RawImage::new(vec![tar]));
    let node = Node::open(plain_client()).await;
    let err = node
        .images
        .pull(
            &image_ref(&pushed.reference),
            &Platform::host(),
            &Events::default().sink(),
        )
        .await
        .expect_err("hostile layer");
    let PullError::Unpack { source, .. } = &err else {
        panic!("expected an unpack error, got {err:?}")
    };
    assert!(
        source.to_string().contains("escaped-by-layer"),
        "the error names the entry: {source}"
    );
    for dir in [
        node.dir.path().to_owned(),
        node.oci(),
        node.oci().join("tmp"),
    ] {
        assert!(!dir.join("escaped-by-layer").exists(), "{dir:?}");
    }
    assert!(node.entries("layers").is_empty());
    assert!(node.entries("tmp").is_empty());
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_fetch_each_blob_once() {
    let reg = TestRegistry::start();
    let pushed = reg.push_busybox("busybox", "c", &PushOptions::default());
    let resolved = resolve(&plain_client(), &pushed.reference).await;
    let node = Node::open(plain_client()).await;
    let host = Platform::host();
    let reference = image_ref(&pushed.reference);
    let (a, b) = (Events::default(), Events::default());
    let (sa, sb) = (a.sink(), b.sink());
    let (x, y) = tokio::join!(
        node.images.pull(&reference, &host, &sa),
        node.images.pull(&reference, &host, &sb),
    );
    let (x, y) = (x.expect("pull a"), y.expect("pull b"));
    assert_eq!(x.layers, y.layers);
    for l in &resolved.layers {
        wait_for_blob_gets(&reg, &l.blob.digest.to_string(), 1);
        assert_eq!(reg.requests("GET", &format!("/blobs/{}", l.blob.digest)), 1);
    }
    let unpacked = count(&a.take(), |e| {
        matches!(e, PullProgress::LayerUnpacked { .. })
    }) + count(&b.take(), |e| {
        matches!(e, PullProgress::LayerUnpacked { .. })
    });
    assert_eq!(unpacked, busybox::LAYERS, "each layer unpacked once");
}

#[tokio::test]
async fn gc_evicts_least_recently_used_images_and_keeps_leased_ones() {
    let reg = TestRegistry::start();
    let big = |seed: u8| {
        // Distinct, incompressible-enough content so that each image has its own ~200 KiB layer.
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
            .collect();
        RawImage::new(vec![TarBuilder::new().file("blob", &data, 0o644).build()])
    };
    let refs: Vec<String> = (0..3u8)
        .map(|i| {
            reg.push_raw_image("gc", &format!("v{i}"), &big(i))
                .reference
        })
        .collect();
    let node = Node::open(plain_client()).await;
    let host = Platform::host();
    let sink = Events::default();
    let pull = |r: &str| {
        let r = image_ref(r);
        let store = node.images.clone();
        let host = host.clone();
        let sink = &sink;
        async move { store.pull(&r, &host, &sink.sink()).await.expect("pull") }
    };

    // Everything fits: nothing to do.
    let a = pull(&refs[0]).await;
    drop(pull(&refs[1]).await);
    drop(pull(&refs[2]).await);
    let total = node.images.usage().await.expect("usage");
    let report = node.images.gc(total).await.expect("gc");
    assert_eq!((report.images_removed, report.layers_removed), (0, 0));
    assert_eq!(report.before_bytes, total);

    // Over budget: the unleased images go, the leased one stays.
    let report = node.images.gc(0).await.expect("gc");
    assert_eq!(report.images_removed, 2, "{report:?}");
    assert_eq!(report.layers_removed, 2, "{report:?}");
    assert!(a.layers[0].join("blob").is_file(), "leased layer kept");
    assert!(
        report.after_bytes > 0 && report.after_bytes < total,
        "{report:?}"
    );
    assert_eq!(
        node.images.usage().await.expect("usage"),
        report.after_bytes
    );
    assert!(
        node.images
            .cached(&image_ref(&refs[0]), &host)
            .await
            .expect("cached")
            .is_some()
    );
    assert!(
        node.images
            .cached(&image_ref(&refs[1]), &host)
            .await
            .expect("cached")
            .is_none()
    );
    assert_eq!(node.entries("layers").len(), 1);

    // Least recently used first: pull 1 and 2 again (unleased), use 1 again, leave room for one image.
    drop(a);
    drop(pull(&refs[2]).await);
    drop(pull(&refs[1]).await);
    let one = node.images.usage().await.expect("usage") / 3 + 4096;
    let report = node.images.gc(one).await.expect("gc");
    assert_eq!(report.images_removed, 2, "{report:?}");
    assert!(
        node.images
            .cached(&image_ref(&refs[1]), &host)
            .await
            .expect("cached")
            .is_some(),
        "the most recently used image stays"
    );

    // Dropped leases: everything can go.
    let report = node.images.gc(0).await.expect("gc");
    assert_eq!(report.after_bytes, 0, "{report:?}");
    assert!(node.entries("layers").is_empty());
}

#[tokio::test]
async fn a_reopened_store_keeps_complete_layers_and_drops_partial_ones() {
    let reg = TestRegistry::start();
    let pushed = reg.push_raw_image("reopen", "v1", &marker_image("kept"));
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Platform::host();
    let digest = {
        let images = open_store(dir.path(), plain_client()).await;
        let img = images
            .pull(
                &image_ref(&pushed.reference),
                &host,
                &Events::default().sink(),
            )
            .await
            .expect("pull");
        img.digest.clone()
    };
    // Leftovers of a crash: a half-unpacked layer in tmp/, an unrecorded layer dir, a partial download.
    let oci = dir.path().join("data/oci");
    std::fs::create_dir_all(oci.join("tmp/layer-x/etc")).expect("tmp");
    std::fs::create_dir_all(oci.join("layers").join(Digest::sha256_of(b"half").hex()))
        .expect("layer");
    std::fs::write(oci.join("blobs/sha256/.x.partial-1"), b"p").expect("partial");
    let images = open_store(dir.path(), plain_client()).await;
    assert_eq!(std::fs::read_dir(oci.join("tmp")).expect("tmp").count(), 0);
    assert_eq!(
        std::fs::read_dir(oci.join("layers"))
            .expect("layers")
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(oci.join("blobs/sha256"))
            .expect("blobs")
            .count(),
        0
    );
    let events = Events::default();
    let img = images
        .pull(&image_ref(&pushed.pinned), &host, &events.sink())
        .await
        .expect("pull after reopen");
    assert_eq!(img.digest, digest);
    assert_eq!(downloads(&events.take()), 0);
}
