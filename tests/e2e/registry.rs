//! A real OCI registry for tests, and the images to put in it.
//!
//! [`TestRegistry`] runs Debian's `docker-registry` (distribution 2.8) with its own config: loopback only,
//! port 0 (the bound address is read from its log), filesystem storage in a temp dir, no auth unless asked
//! for (htpasswd basic auth). It is ready once `GET /v2/` answers, and is killed on drop; its log (which
//! includes an access log) is printed if the test panics.
//!
//! Images:
//! - [`build_busybox_image`]: a small real image built with `umoci` from the host's `busybox-static`: two
//!   layers, the second deleting a file of the first (a whiteout) and adding a file and a symlink.
//! - [`write_raw_layout`] / [`TestRegistry::push_raw_image`]: an image written by hand from tar bytes, with
//!   config overrides: for hostile or inconsistent layers (wrong `diff_ids`, escaping paths).
//! - [`write_index_layout`] / [`TestRegistry::push_index`]: a multi-platform index of raw images.
//!
//! Everything is pushed with `skopeo copy` (plain HTTP, an accept-anything signature policy of our own).
//! Shared with other suites: not every helper is used by every test.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cod::oci::platform::Platform;
use cod::oci::reference::Digest;
use serde_json::{Value, json};

use crate::harness::{DEADLINE, wait_until};

/// The registry binary Debian's `docker-registry` package installs.
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// OCI media types used when writing layouts by hand.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The annotation `skopeo`'s `oci:` transport reads the tag from.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A running registry on loopback.
pub struct TestRegistry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    host: String,
    /// Credentials when started with basic auth.
    creds: Option<(String, String)>,
    /// Config, storage, log, and the skopeo policy.
    dir: tempfile::TempDir,
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// Digest of what the tag points at (the manifest, or the index for multi-platform pushes).
    pub digest: String,
    /// `127.0.0.1:PORT/repo@digest`.
    pub pinned: String,
}

/// How to push a layout.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Push Docker v2 schema 2 media types instead of OCI (`skopeo --format v2s2`).
    pub docker_v2s2: bool,
    /// Recompress the layers with zstd first.
    pub zstd: bool,
    /// Copy every image of an index (`--all`).
    pub all: bool,
}

impl TestRegistry {
    /// Starts a registry without authentication.
    pub fn start() -> TestRegistry {
        Self::spawn(None)
    }

    /// Starts a registry that requires HTTP basic auth with `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_basic_auth(user: &str, password: &str) -> TestRegistry {
        Self::spawn(Some((user.to_owned(), password.to_owned())))
    }

    fn spawn(creds: Option<(String, String)>) -> TestRegistry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry package (tests/run.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("cod-registry-")
            .tempdir()
            .expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("storage dir");
        let auth = match &creds {
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, htpasswd_line(user, password)).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: cod-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:0\n{auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("config");
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = TestRegistry {
            child: Some(child),
            host: String::new(),
            creds,
            dir,
        };
        // Port 0: the registry logs the address it bound ("listening on 127.0.0.1:PORT").
        registry.host = wait_until("the registry to bind", DEADLINE, || {
            registry.assert_running();
            let log = registry.log();
            let at = log.find("listening on 127.0.0.1:")?;
            let rest = &log[at + "listening on ".len()..];
            let end = rest.find(|c: char| c != '.' && c != ':' && !c.is_ascii_digit())?;
            Some(rest[..end].to_owned())
        });
        let want = if registry.creds.is_some() { 401 } else { 200 };
        wait_until("the registry to answer GET /v2/", DEADLINE, || {
            registry.assert_running();
            (status_of_v2(&registry.host)? == want).then_some(())
        });
        registry
    }

    fn assert_running(&self) {
        let mut child = self.child.as_ref().map(|c| c.id());
        if let Some(pid) = child.take() {
            // `try_wait` needs `&mut`; reading /proc keeps this `&self`.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            assert!(
                !state.is_empty() && !state.starts_with('Z'),
                "docker-registry exited early:\n{}",
                self.log()
            );
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `127.0.0.1:PORT/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }

    /// The registry's log (startup lines, errors and the access log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Completed requests in the access log whose request line starts with `method` and contains
    /// `fragment` (e.g. `("GET", "/blobs/sha256:…")`).
    pub fn requests(&self, method: &str, fragment: &str) -> usize {
        let start = format!("\"{method} /v2/");
        self.log()
            .lines()
            .filter(|l| l.contains(&start) && l.contains(fragment))
            .count()
    }

    /// Where the registry stores a blob's bytes (distribution's filesystem layout).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Changes one byte of a stored blob (same size), so the registry serves content that fails its digest.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_data(digest);
        let mut bytes = std::fs::read(&path).expect("blob in registry storage");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).expect("rewrite blob");
    }

    /// Stops the registry (it becomes unreachable; its port is free).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pushes tag `src_tag` of the OCI layout `layout` as `repo:tag`.
    pub fn push(
        &self,
        layout: &Path,
        src_tag: &str,
        repo: &str,
        tag: &str,
        opts: &PushOptions,
    ) -> Pushed {
        let mut source = layout.to_owned();
        if opts.zstd {
            // skopeo 1.9 recompresses on oci→oci copies; an oci→docker push would reuse the gzip blobs.
            source = layout.with_file_name(format!(
                "{}-zstd",
                layout.file_name().expect("name").to_string_lossy()
            ));
            skopeo(
                self.dir.path(),
                &[
                    "copy",
                    "--dest-compress",
                    "--dest-compress-format",
                    "zstd",
                    &format!("oci:{}:{src_tag}", layout.display()),
                    &format!("oci:{}:{src_tag}", source.display()),
                ],
            );
        }
        let digest_file = self
            .dir
            .path()
            .join(format!("digest-{}", uuid::Uuid::new_v4()));
        let src = format!("oci:{}:{src_tag}", source.display());
        let dest = format!("docker://{}", self.reference(repo, tag));
        let digest_arg = digest_file.display().to_string();
        let mut args = vec![
            "copy",
            "--dest-tls-verify=false",
            "--digestfile",
            &digest_arg,
        ];
        let creds = self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
        if let Some(c) = &creds {
            args.extend(["--dest-creds", c]);
        }
        if opts.docker_v2s2 {
            args.extend(["--format", "v2s2"]);
        }
        if opts.all {
            args.push("--all");
        }
        args.extend([src.as_str(), dest.as_str()]);
        skopeo(self.dir.path(), &args);
        let digest = std::fs::read_to_string(&digest_file)
            .expect("skopeo digest file")
            .trim()
            .to_owned();
        Pushed {
            reference: self.reference(repo, tag),
            pinned: format!("{}/{repo}@{digest}", self.host),
            digest,
        }
    }

    /// Builds the busybox test image ([`build_busybox_image`]) in a temp dir and pushes it as `repo:tag`.
    pub fn push_busybox(&self, repo: &str, tag: &str, opts: &PushOptions) -> Pushed {
        let work = tempfile::tempdir().expect("tempdir");
        let layout = build_busybox_image(work.path(), "latest");
        self.push(&layout, "latest", repo, tag, opts)
    }

    /// Writes `image` as an OCI layout by hand ([`write_raw_layout`]) and pushes it as `repo:tag`.
    pub fn push_raw_image(&self, repo: &str, tag: &str, image: &RawImage) -> Pushed {
        let work = tempfile::tempdir().expect("tempdir");
        let layout = work.path().join("layout");
        write_raw_layout(&layout, "t", image);
        self.push(&layout, "t", repo, tag, &PushOptions::default())
    }

    /// Writes a multi-platform index of `images` ([`write_index_layout`]) and pushes all of it as
    /// `repo:tag`. Returns the push and each image's manifest digest, in order.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[RawImage]) -> (Pushed, Vec<String>) {
        let work = tempfile::tempdir().expect("tempdir");
        let layout = work.path().join("layout");
        let digests = write_index_layout(&layout, "t", images);
        let pushed = self.push(
            &layout,
            "t",
            repo,
            tag,
            &PushOptions {
                all: true,
                ..PushOptions::default()
            },
        );
        (pushed, digests)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("===== docker-registry log =====\n{}", self.log());
        }
    }
}

/// The HTTP status of `GET /v2/`, by hand over a socket: the harness may run inside an async test, where
/// reqwest's blocking client (which owns a runtime) cannot be dropped.
fn status_of_v2(host: &str) -> Option<u16> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(host).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(conn, "GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An htpasswd line with a bcrypt hash (the only scheme distribution accepts): from `htpasswd` (Debian's
/// apache2-utils, which tests/run.sh installs), else from Python's `crypt` module.
fn htpasswd_line(user: &str, password: &str) -> String {
    if let Ok(out) = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        && out.status.success()
    {
        return String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
            + "\n";
    }
    let script = "import crypt,sys; print(sys.argv[1] + ':' + crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH)))";
    let out = Command::new("python3")
        .args(["-W", "ignore", "-c", script, user, password])
        .output()
        .expect("neither htpasswd (apt install apache2-utils) nor python3 is available");
    assert!(
        out.status.success(),
        "cannot make a bcrypt htpasswd line: install apache2-utils\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (tests/run.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs skopeo with a policy file of our own (the host's /etc/containers/policy.json may be strict).
fn skopeo(dir: &Path, args: &[&str]) {
    let policy = dir.join("policy.json");
    let policy = policy.display().to_string();
    let mut all = vec!["--policy", policy.as_str()];
    all.extend_from_slice(args);
    run("skopeo", &all);
}

fn umoci(args: &[&str]) {
    run("umoci", args);
}

/// What [`build_busybox_image`]'s image holds, for assertions.
pub mod busybox {
    /// Layers in the image.
    pub const LAYERS: usize = 2;
    /// A file of the first layer that the second layer deletes (so the second layer has a whiteout).
    pub const REMOVED: &str = "etc/remove-me";
    /// A file the second layer adds, and its content.
    pub const ADDED: (&str, &str) = ("hello.txt", "hello from layer 2\n");
    /// A symlink the second layer adds, and its target.
    pub const SYMLINK: (&str, &str) = ("greeting", "hello.txt");
    /// The image's environment.
    pub const ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
    /// The image's default command.
    pub const CMD: &str = "sh";
}

/// Builds a busybox image with umoci in the OCI layout `<work>/busybox` under `tag` and returns the layout
/// path. Layer 1: `/bin/busybox` (the host's busybox-static) with a symlink per applet, `/etc/passwd` and
/// `/etc/group` (root and nobody), `/tmp` (1777), `/root` and `/etc/remove-me`. Layer 2 deletes
/// `/etc/remove-me` and adds `/hello.txt` and the symlink `/greeting -> hello.txt` (see [`busybox`]). The
/// bundle is unpacked again before the second layer: repacking a bundle twice would replace the first
/// layer instead of adding one.
pub fn build_busybox_image(work: &Path, tag: &str) -> PathBuf {
    let busybox_bin = Path::new("/bin/busybox");
    assert!(
        busybox_bin.exists(),
        "/bin/busybox is missing: install busybox-static (tests/run.sh does)"
    );
    let layout = work.join("busybox");
    let image = format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &image]);

    let bundle = work.join("bundle1");
    let bundle_s = bundle.display().to_string();
    umoci(&["unpack", "--image", &image, &bundle_s]);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "root", "tmp", "usr/bin", "usr/sbin", "sbin"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox_bin, rootfs.join("bin/busybox")).expect("copy busybox");
    let applets = run("/bin/busybox", &["--list"]);
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod /tmp");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    std::fs::write(rootfs.join(busybox::REMOVED), "deleted by layer 2\n").expect("file");
    umoci(&["repack", "--image", &image, &bundle_s]);
    std::fs::remove_dir_all(&bundle).expect("remove bundle");

    let bundle = work.join("bundle2");
    let bundle_s = bundle.display().to_string();
    umoci(&["unpack", "--image", &image, &bundle_s]);
    let rootfs = bundle.join("rootfs");
    std::fs::remove_file(rootfs.join(busybox::REMOVED)).expect("rm");
    std::fs::write(rootfs.join(busybox::ADDED.0), busybox::ADDED.1).expect("file");
    std::os::unix::fs::symlink(busybox::SYMLINK.1, rootfs.join(busybox::SYMLINK.0)).expect("link");
    umoci(&["repack", "--image", &image, &bundle_s]);
    std::fs::remove_dir_all(&bundle).expect("remove bundle");

    umoci(&[
        "config",
        "--image",
        &image,
        "--config.env",
        busybox::ENV,
        "--config.cmd",
        busybox::CMD,
        "--config.workingdir",
        "/",
    ]);
    layout
}

/// Runs `umoci config` on an image (e.g. `["--config.entrypoint", "/bin/echo"]`), for suites that need
/// other run settings.
pub fn umoci_config(layout: &Path, tag: &str, args: &[&str]) {
    let image = format!("{}:{tag}", layout.display());
    let mut all = vec!["config", "--image", image.as_str()];
    all.extend_from_slice(args);
    umoci(&all);
}

/// How a raw image's layers are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RawCompression {
    /// `…layer.v1.tar+gzip`.
    #[default]
    Gzip,
    /// `…layer.v1.tar+zstd`.
    Zstd,
    /// `…layer.v1.tar`.
    None,
}

/// An image written by hand.
#[derive(Debug, Clone)]
pub struct RawImage {
    /// Uncompressed layer tars, bottom first (see [`TarBuilder`]).
    pub layers: Vec<Vec<u8>>,
    /// Top-level keys that replace the generated config's (e.g. `{"rootfs": …}` for wrong diff_ids,
    /// `{"config": {"Cmd": […]}}`).
    pub config: Value,
    /// The platform, `os/arch[/variant]`; also the index entry's platform.
    pub platform: String,
    /// Layer compression.
    pub compression: RawCompression,
}

impl RawImage {
    /// An image of `layers` for this host's platform, gzip-compressed, with a default config.
    pub fn new(layers: Vec<Vec<u8>>) -> RawImage {
        RawImage {
            layers,
            config: json!({}),
            platform: Platform::host().to_string(),
            compression: RawCompression::Gzip,
        }
    }

    /// The same image for another platform.
    pub fn for_platform(mut self, platform: &str) -> RawImage {
        self.platform = platform.to_owned();
        self
    }

    /// The same image with config overrides.
    pub fn with_config(mut self, overrides: Value) -> RawImage {
        self.config = overrides;
        self
    }

    /// The same image with another layer compression.
    pub fn compressed(mut self, compression: RawCompression) -> RawImage {
        self.compression = compression;
        self
    }
}

/// Writes `bytes` as a blob of `layout`; returns its descriptor (`mediaType`, `digest`, `size`).
fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = Digest::sha256_of(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("blobs dir");
    std::fs::write(dir.join(digest.hex()), bytes).expect("blob");
    json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
}

/// Writes `image`'s layers, config and manifest into `layout`'s blobs; returns the manifest descriptor.
fn write_image_blobs(layout: &Path, image: &RawImage) -> Value {
    let platform: Platform = image.platform.parse().expect("platform");
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in &image.layers {
        diff_ids.push(Digest::sha256_of(tar).to_string());
        let (media_type, blob) = match image.compression {
            RawCompression::Gzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(tar).expect("gzip");
                (
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    gz.finish().expect("gzip"),
                )
            }
            RawCompression::Zstd => (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                ruzstd::encoding::compress_to_vec(
                    &tar[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            ),
            RawCompression::None => ("application/vnd.oci.image.layer.v1.tar", tar.clone()),
        };
        layer_descs.push(write_blob(layout, media_type, &blob));
    }
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = &platform.variant {
        config["variant"] = json!(v);
    }
    if let Some(overrides) = image.config.as_object() {
        for (k, v) in overrides {
            config[k] = v.clone();
        }
    }
    let config_desc = write_blob(
        layout,
        OCI_CONFIG,
        &serde_json::to_vec(&config).expect("config"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    });
    let mut desc = write_blob(
        layout,
        OCI_MANIFEST,
        &serde_json::to_vec(&manifest).expect("manifest"),
    );
    let mut p = json!({"os": platform.os, "architecture": platform.architecture});
    if let Some(v) = &platform.variant {
        p["variant"] = json!(v);
    }
    desc["platform"] = p;
    desc
}

fn write_layout_index(layout: &Path, tag: &str, mut desc: Value) {
    desc["annotations"] = json!({ REF_NAME: tag });
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index.json");
}

/// Writes `image` as the OCI layout `layout` with tag `tag`; returns the manifest digest.
pub fn write_raw_layout(layout: &Path, tag: &str, image: &RawImage) -> String {
    let mut desc = write_image_blobs(layout, image);
    if let Some(d) = desc.as_object_mut() {
        d.remove("platform");
    }
    let digest = desc["digest"].as_str().expect("digest").to_owned();
    write_layout_index(layout, tag, desc);
    digest
}

/// Writes a multi-platform index of `images` (each entry declaring its image's platform) as the OCI layout
/// `layout` with tag `tag`; returns the manifest digests in order.
pub fn write_index_layout(layout: &Path, tag: &str, images: &[RawImage]) -> Vec<String> {
    let descs: Vec<Value> = images
        .iter()
        .map(|i| write_image_blobs(layout, i))
        .collect();
    let digests = descs
        .iter()
        .map(|d| d["digest"].as_str().expect("digest").to_owned())
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs});
    let desc = write_blob(
        layout,
        OCI_INDEX,
        &serde_json::to_vec(&index).expect("index"),
    );
    write_layout_index(layout, tag, desc);
    digests
}

/// A convenience for tests: waits until the access log shows `n` completed `GET`s of `digest`'s blob.
pub fn wait_for_blob_gets(registry: &TestRegistry, digest: &str, n: usize) {
    wait_until(
        &format!("{n} GET(s) of blob {digest} in the access log"),
        Duration::from_secs(10),
        || (registry.requests("GET", &format!("/blobs/{digest}")) >= n).then_some(()),
    );
}
