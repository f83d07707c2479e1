//! `cod job get`: download a job's published results and lay them out like `bacalhau job get`.
//!
//! Each result listed by `GET /jobs/{id}/results` is downloaded into `DIR/raw/<name>.tar.gz` and unpacked into
//! `DIR/raw/<name>/`, where `<name>` is the archive's file name (the execution id, for the local publisher).
//! Then, unless `--raw`, the results are merged into `DIR`: `stdout` and `stderr` are concatenated in result
//! order, `exitCode` gets one line per result, every other file must come from exactly one result (a clash
//! aborts and suggests `--raw`), and `raw/` is removed. With `--raw` the per-result folders stay under
//! `DIR/raw/`. The default `DIR` is `./job-<short id>` (`job-j-1a2b3c4d`), as Bacalhau names it.
//!
//! Unpacking is synchronous (tar + gzip) and runs on the blocking pool; archive safety (no entry may leave its
//! folder) is the storage module's job.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use argh::FromArgs;

use super::Context;
use super::output::{diag, emit_line};
use crate::model::SpecConfig;

/// Files every result has that are concatenated rather than clashing.
const APPENDED_FILES: [&str; 3] = ["stdout", "stderr", "exitCode"];

/// download a job's results into a folder
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "get")]
pub struct GetArgs {
    /// job id, short id or name
    #[argh(positional)]
    pub id: String,
    /// where to write the results (default ./job-<short id>); must be new or empty
    #[argh(option)]
    pub output_dir: Option<PathBuf>,
    /// keep each result in its own folder under raw/ instead of merging them
    #[argh(switch)]
    pub raw: bool,
    /// longest time for each download, in seconds (default 300)
    #[argh(option, default = "300")]
    pub download_timeout_secs: u64,
    /// trustless IPFS gateway for `ipfs` results (repeatable; tried after the node's own gateway named in
    /// the result)
    #[argh(option)]
    pub ipfs_gateway: Vec<String>,
    /// IPFS peer to fetch `ipfs` results from over bitswap, `/ip4/…/tcp/…/p2p/<id>` (repeatable; tried
    /// before gateways)
    #[argh(option)]
    pub ipfs_connect: Vec<String>,
}

/// Runs `job get`.
pub async fn get(ctx: &Context, args: GetArgs) -> anyhow::Result<()> {
    let client = &ctx.client;
    let job = client
        .get_job(&args.id, &[])
        .await
        .with_context(|| format!("fetching job {}", args.id))?
        .job;
    let id = job.id.as_str().to_owned();
    let results = client
        .job_results(&id)
        .await
        .with_context(|| format!("listing the results of job {id}"))?;
    let items: Vec<&SpecConfig> = results.items.iter().filter(|r| !r.is_empty()).collect();
    if items.is_empty() {
        bail!(
            "job {id} has no published results (state: {}); results exist only for completed executions of jobs \
             with a publisher",
            job.state.state_type
        );
    }
    let dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("job-{}", job.id.short())));
    prepare_dir(&dir)?;
    diag(&format!("Fetching results of job {id}..."));
    let raw = dir.join("raw");
    tokio::fs::create_dir_all(&raw)
        .await
        .with_context(|| format!("creating {}", raw.display()))?;

    let mut names = Vec::new();
    let timeout = Duration::from_secs(args.download_timeout_secs);
    for (i, item) in items.iter().enumerate() {
        if item.normalized_kind() == "ipfs" {
            let name = fetch_ipfs(item, &raw, &names, &args)
                .await
                .with_context(|| format!("result {} of job {id}", i + 1))?;
            names.push(name);
            continue;
        }
        let download =
            result_download(item).with_context(|| format!("result {} of job {id}", i + 1))?;
        match download {
            Download::Archive { url, shown } => {
                let name = unique_name(&result_name(&url, i), &names);
                let archive = raw.join(format!("{name}.tar.gz"));
                client
                    .download(&url, &archive, timeout)
                    .await
                    .with_context(|| format!("downloading result {shown}"))?;
                let target = raw.join(&name);
                tokio::task::spawn_blocking(move || unpack(&archive, &target))
                    .await
                    .context("unpacking was interrupted")??;
                names.push(name);
            }
            Download::Files { name, files } => {
                let name = unique_name(&result_name(&name, i), &names);
                let folder = raw.join(&name);
                for (rel, url) in &files {
                    let dest = folder.join(rel);
                    if let Some(parent) = dest.parent() {
                        tokio::fs::create_dir_all(parent)
                            .await
                            .with_context(|| format!("creating {}", parent.display()))?;
                    }
                    client
                        .download(url, &dest, timeout)
                        .await
                        .with_context(|| format!("downloading result file {rel}"))?;
                }
                tokio::fs::create_dir_all(&folder)
                    .await
                    .with_context(|| format!("creating {}", folder.display()))?;
                names.push(name);
            }
        }
    }
    if !args.raw {
        let (raw, dir2, names2) = (raw.clone(), dir.clone(), names.clone());
        tokio::task::spawn_blocking(move || {
            for name in &names2 {
                merge_result(&raw.join(name), &dir2)?;
            }
            fs::remove_dir_all(&raw).with_context(|| format!("removing {}", raw.display()))
        })
        .await
        .context("merging results was interrupted")??;
    }
    diag(&format!("Results for job {id} have been written to..."));
    emit_line(&dir.display().to_string())
}

/// Refuses a `DIR` that exists and is not empty, so results never mix with older files; creates it otherwise.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "output folder {} already exists and is not empty; remove it or pass --output-dir",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(dir)
            .with_context(|| format!("creating output folder {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("reading output folder {}", dir.display())),
    }
}

/// Fetches an `ipfs` result (its DAG, verified block by block) into `raw/<cid>`; returns the folder name.
///
/// Sources, in order: `--ipfs-connect` peers over bitswap, the gateway the result names (the publishing
/// node's own), then `--ipfs-gateway`s. A Bacalhau user usually reaches the compute node's publisher port
/// already (as for `local` results), so the result's own gateway makes `job get` work with no flags.
#[cfg(feature = "ipfs")]
async fn fetch_ipfs(
    item: &SpecConfig,
    raw: &Path,
    taken: &[String],
    args: &GetArgs,
) -> anyhow::Result<String> {
    use crate::ipfs::unixfs::export;
    use crate::ipfs::{Cid, LocalSource, MemoryBlockStore};

    let param = |name: &str| {
        item.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    };
    let cid_text = param("CID").context("an ipfs result has no CID")?;
    let cid: Cid = cid_text
        .parse()
        .with_context(|| format!("the result's CID {cid_text:?} is not a CID"))?;
    let mut gateways: Vec<String> = param("Gateway").into_iter().collect();
    gateways.extend(args.ipfs_gateway.iter().cloned());
    if gateways.is_empty() && args.ipfs_connect.is_empty() {
        bail!(
            "result {cid} is on IPFS and names no gateway; pass --ipfs-gateway <url> or --ipfs-connect <multiaddr>"
        );
    }
    let timeout = Duration::from_secs(args.download_timeout_secs);
    let store: std::sync::Arc<dyn crate::ipfs::BlockStore> =
        std::sync::Arc::new(MemoryBlockStore::new());
    let net =
        super::ipfs_net::fetcher(store.clone(), &gateways, &args.ipfs_connect, timeout).await?;
    tokio::time::timeout(timeout, net.fetcher.fetch_dag(cid))
        .await
        .with_context(|| format!("fetching {cid} took longer than {timeout:?}"))?
        .with_context(|| format!("fetching {cid}"))?;
    let name = unique_name(&cid.to_string(), taken);
    let target = raw.join(&name);
    export::get(&LocalSource(store), &cid, &target)
        .await
        .with_context(|| format!("writing {cid} to {}", target.display()))?;
    Ok(name)
}

#[cfg(not(feature = "ipfs"))]
async fn fetch_ipfs(
    _item: &SpecConfig,
    _raw: &Path,
    _taken: &[String],
    _args: &GetArgs,
) -> anyhow::Result<String> {
    bail!("this cod was built without the `ipfs` feature; it cannot download IPFS results")
}

/// How to fetch one published result.
#[derive(Debug, PartialEq, Eq)]
enum Download {
    /// A gzip tarball of the result folder.
    Archive {
        /// Its URL.
        url: String,
        /// What to call it in messages: a pre-signed URL is a credential, so `s3://bucket/key` stands in.
        shown: String,
    },
    /// Separate files (an S3 `plain` result), each with its path in the result folder.
    Files {
        /// Folder name for the result.
        name: String,
        /// (path, URL) pairs; paths are checked to stay inside the folder.
        files: Vec<(String, String)>,
    },
}

/// Where to download a published result from.
fn result_download(spec: &SpecConfig) -> anyhow::Result<Download> {
    let value = |name: &str| {
        spec.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let param = |name: &str| {
        value(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match spec.normalized_kind().as_str() {
        "urldownload" => {
            let url = param("URL").context("a urlDownload result has no URL")?;
            Ok(Download::Archive {
                shown: url.clone(),
                url,
            })
        }
        "s3presigned" => {
            let shown = format!(
                "s3://{}/{}",
                param("Bucket").unwrap_or_default(),
                param("Key").unwrap_or_default()
            );
            if let Some(url) = param("PreSignedURL") {
                return Ok(Download::Archive { url, shown });
            }
            let Some(map) = value("PreSignedURLs").and_then(|v| v.as_object()) else {
                bail!("the s3PreSigned result {shown} has neither PreSignedURL nor PreSignedURLs");
            };
            let mut files = Vec::with_capacity(map.len());
            for (rel, url) in map {
                if !is_safe_relative(rel) {
                    bail!(
                        "the s3PreSigned result {shown} names the file {rel:?}, which would land outside \
                         the output folder; refusing to download it"
                    );
                }
                let url = url
                    .as_str()
                    .with_context(|| format!("the URL of {rel:?} in {shown} is not a string"))?;
                files.push((rel.clone(), url.to_owned()));
            }
            let key = param("Key").unwrap_or_default();
            let name = key
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            Ok(Download::Files { name, files })
        }
        "s3" => bail!(
            "the result was published to S3 but the orchestrator did not sign a download URL for it: give the \
             orchestrator S3 credentials and leave Publishers.Types.S3.PreSignedURLDisabled off, or fetch it \
             with an S3 client"
        ),
        "ipfs" => bail!("ipfs results are fetched by CID, not by URL"),
        other => bail!(
            "results of type {other:?} cannot be downloaded by cod (supported: urlDownload, s3PreSigned)"
        ),
    }
}

/// Whether `rel` is a relative `/`-separated path whose every segment is a plain name (no empty, `.` or
/// `..` segment), so joining it to a folder stays inside that folder.
fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']))
}

/// A folder name for a result: the URL's file name without `.tar.gz` (the execution id for the local
/// publisher), reduced to safe characters; `result-<n>` when nothing usable is left.
fn result_name(url: &str, index: usize) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let stem = file
        .strip_suffix(".tar.gz")
        .or_else(|| file.strip_suffix(".tgz"))
        .unwrap_or(file);
    let safe: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("result-{}", index + 1)
    } else {
        safe
    }
}

fn unique_name(name: &str, taken: &[String]) -> String {
    let mut candidate = name.to_owned();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    candidate
}

/// Largest unpacked result `cod job get` accepts (stdout and stderr alone may be 1 GiB each).
const RESULT_UNPACK_LIMIT: u64 = 16 << 30;

/// Unpacks `archive` into the new folder `target` and deletes the archive.
fn unpack(archive: &Path, target: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let file = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    // Results are untrusted (a job chose their contents): the shared unpacker refuses anything that would
    // land outside `target`, and caps the unpacked size. Symlinks pointing outside are left out with a
    // warning rather than costing the user every other file of the result.
    let unpacked = crate::storage::archive::unpack_tar_gz_skipping_links(
        std::io::BufReader::new(file),
        target,
        RESULT_UNPACK_LIMIT,
    )
    .with_context(|| format!("unpacking {}", archive.display()))?;
    for why in &unpacked.skipped_links {
        eprintln!("warning: left out of the result: {why}");
    }
    fs::remove_file(archive).with_context(|| format!("removing {}", archive.display()))
}

/// Moves one unpacked result from `src` into `dest`: appends `stdout`/`stderr`/`exitCode` at the top level,
/// moves everything else, and fails on a file that `dest` already has.
pub fn merge_result(src: &Path, dest: &Path) -> anyhow::Result<()> {
    merge_dir(src, dest, Path::new(""))
}

fn merge_dir(src_root: &Path, dest_root: &Path, rel: &Path) -> anyhow::Result<()> {
    let src_dir = src_root.join(rel);
    let entries =
        fs::read_dir(&src_dir).with_context(|| format!("reading {}", src_dir.display()))?;
    let mut entries: Vec<_> = entries
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", src_dir.display()))?;
    // Deterministic order, so a clash always names the same file.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let src = entry.path();
        let dest = dest_root.join(&rel_path);
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", src.display()))?;
        let top_level = rel.as_os_str().is_empty();
        let appended = top_level && APPENDED_FILES.iter().any(|f| entry.file_name() == *f);
        if kind.is_dir() {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!(clash(&rel_path)),
                Err(_) => {
                    fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?
                }
            }
            merge_dir(src_root, dest_root, &rel_path)?;
        } else if appended && kind.is_file() {
            append(&src, &dest, entry.file_name() == "exitCode")?;
        } else if fs::symlink_metadata(&dest).is_ok() {
            bail!(clash(&rel_path));
        } else {
            fs::rename(&src, &dest)
                .with_context(|| format!("moving {} to {}", src.display(), dest.display()))?;
        }
    }
    Ok(())
}

fn clash(rel: &Path) -> String {
    format!(
        "result file {} exists in more than one result; use --raw to keep each result in its own folder",
        rel.display()
    )
}

/// Appends `src` to `dest`. Exit codes get a line each, since `0` + `1` would read as `01`.
fn append(src: &Path, dest: &Path, line_per_result: bool) -> anyhow::Result<()> {
    let mut data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dest)
        .with_context(|| format!("opening {}", dest.display()))?;
    if line_per_result && !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    out.write_all(&data)
        .with_context(|| format!("writing {}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    fn read(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).expect("read")
    }

    #[test]
    fn merging_two_results_appends_outputs_and_combines_folders() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b, dest) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("out"),
        );
        write(&a, "stdout", "from a\n");
        write(&a, "stderr", "");
        write(&a, "exitCode", "0");
        write(&a, "outputs/x.txt", "x");
        write(&b, "stdout", "from b\n");
        write(&b, "exitCode", "1");
        write(&b, "outputs/y.txt", "y");
        fs::create_dir(&dest).expect("mkdir");
        merge_result(&a, &dest).expect("first");
        merge_result(&b, &dest).expect("second");
        assert_eq!(read(&dest, "stdout"), "from a\nfrom b\n");
        assert_eq!(read(&dest, "exitCode"), "0\n1\n");
        assert_eq!(read(&dest, "outputs/x.txt"), "x");
        assert_eq!(read(&dest, "outputs/y.txt"), "y");
    }

    #[test]
    fn merging_fails_on_a_clashing_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b, dest) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("out"),
        );
        write(&a, "outputs/same.txt", "a");
        write(&b, "outputs/same.txt", "b");
        fs::create_dir(&dest).expect("mkdir");
        merge_result(&a, &dest).expect("first");
        let e = merge_result(&b, &dest).expect_err("clash");
        let text = format!("{e:#}");
        assert!(
            text.contains("outputs/same.txt") && text.contains("--raw"),
            "{text}"
        );
        assert_eq!(
            read(&dest, "outputs/same.txt"),
            "a",
            "the first result is kept"
        );
    }

    #[test]
    fn nested_stdout_is_not_appended() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b, dest) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("out"),
        );
        write(&a, "outputs/stdout", "a");
        write(&b, "outputs/stdout", "b");
        fs::create_dir(&dest).expect("mkdir");
        merge_result(&a, &dest).expect("first");
        assert!(merge_result(&b, &dest).is_err());
    }

    #[test]
    fn result_urls_and_names() {
        let local = SpecConfig {
            kind: "urlDownload".into(),
            params: json!({"url": "http://127.0.0.1:6001/e-1a2b.tar.gz"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let Download::Archive { url, .. } = result_download(&local).expect("url") else {
            panic!("an archive");
        };
        assert_eq!(result_name(&url, 0), "e-1a2b");
        assert_eq!(result_name("http://h/../..", 1), "result-2");
        assert_eq!(result_name("http://h/x.tar.gz?sig=a/b", 0), "x");
        let ipfs = SpecConfig {
            kind: "ipfs".into(),
            ..SpecConfig::default()
        };
        assert!(result_download(&ipfs).is_err());
        assert_eq!(unique_name("x", &["x".into(), "x-2".into()]), "x-3");
    }

    #[test]
    fn s3_presigned_results_download_as_an_archive_or_as_files() {
        let spec = |params: serde_json::Value| SpecConfig {
            kind: "s3PreSigned".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        };
        let gzip = spec(json!({"Bucket": "b", "Key": "r/e-1.tar.gz",
                               "PreSignedURL": "http://h/b/r/e-1.tar.gz?X-Amz-Signature=s"}));
        assert_eq!(
            result_download(&gzip).expect("archive"),
            Download::Archive {
                url: "http://h/b/r/e-1.tar.gz?X-Amz-Signature=s".into(),
                shown: "s3://b/r/e-1.tar.gz".into()
            }
        );
        let plain = spec(json!({"Bucket": "b", "Key": "r/e-1/",
                                "PreSignedURLs": {"stdout": "http://h/1", "outputs/a.txt": "http://h/2"}}));
        let Download::Files { name, files } = result_download(&plain).expect("files") else {
            panic!("files");
        };
        assert_eq!(name, "e-1");
        assert_eq!(files.len(), 2);
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            let hostile =
                spec(json!({"Bucket": "b", "Key": "r/", "PreSignedURLs": {bad: "http://h/1"}}));
            assert!(result_download(&hostile).is_err(), "{bad:?}");
        }
        let unsigned = SpecConfig {
            kind: "s3".into(),
            ..SpecConfig::default()
        };
        let err = format!("{:#}", result_download(&unsigned).expect_err("unsigned"));
        assert!(err.contains("PreSignedURLDisabled"), "{err}");
    }

    #[test]
    fn output_dir_must_be_new_or_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fresh = tmp.path().join("job-j-1");
        prepare_dir(&fresh).expect("created");
        prepare_dir(&fresh).expect("empty is fine");
        write(&fresh, "stdout", "old");
        assert!(prepare_dir(&fresh).is_err());
    }

    /// A result archive holding `files` (path, contents).
    fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, text.as_bytes())
                .expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gzip")
    }

    #[test]
    fn unpacks_a_result_archive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let archive = tmp.path().join("r.tar.gz");
        fs::write(&archive, tar_gz(&[("outputs/a.txt", "abc")])).expect("write");
        let target = tmp.path().join("r");
        unpack(&archive, &target).expect("unpacks");
        assert_eq!(read(&target, "outputs/a.txt"), "abc");
        assert!(!archive.exists(), "the archive is removed");
    }

    /// A fake API with a completed job whose two executions published results over HTTP.
    async fn api_with_two_results() -> crate::cli::Context {
        use axum::routing::get;
        let job = json!({"Job": {"ID": "j-1a2b3c4d-0000-4000-8000-000000000000", "Type": "batch",
                                 "State": {"StateType": "Completed"}}});
        let results = |headers: axum::http::HeaderMap| async move {
            // The result URLs point back at this server, whose port is only known once it is bound.
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let item = |e: &str| json!({"Type": "urlDownload", "Params": {"URL": format!("http://{host}/{e}.tar.gz")}});
            axum::Json(json!({"Items": [item("e-1"), item("e-2")], "NextToken": ""}))
        };
        let router = axum::Router::new()
            .route(
                "/api/v1/orchestrator/jobs/{id}",
                get(move || async move { axum::Json(job) }),
            )
            .route("/api/v1/orchestrator/jobs/{id}/results", get(results))
            .route(
                "/e-1.tar.gz",
                get(|| async {
                    tar_gz(&[
                        ("stdout", "one\n"),
                        ("exitCode", "0"),
                        ("outputs/a.txt", "a"),
                    ])
                }),
            )
            .route(
                "/e-2.tar.gz",
                get(|| async {
                    tar_gz(&[
                        ("stdout", "two\n"),
                        ("exitCode", "0"),
                        ("outputs/b.txt", "b"),
                    ])
                }),
            );
        let client = crate::cli::client::tests::fake_api(router).await;
        crate::cli::Context {
            client,
            output: None,
        }
    }

    fn get_args(dir: &Path, raw: bool) -> GetArgs {
        GetArgs {
            id: "j-1a2b3c4d".into(),
            output_dir: Some(dir.to_owned()),
            raw,
            download_timeout_secs: 10,
            ipfs_gateway: vec![],
            ipfs_connect: vec![],
        }
    }

    #[tokio::test]
    async fn job_get_downloads_and_merges_every_result() {
        let ctx = api_with_two_results().await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("out");
        get(&ctx, get_args(&dir, false)).await.expect("downloads");
        assert_eq!(read(&dir, "stdout"), "one\ntwo\n");
        assert_eq!(read(&dir, "exitCode"), "0\n0\n");
        assert_eq!(read(&dir, "outputs/a.txt"), "a");
        assert_eq!(read(&dir, "outputs/b.txt"), "b");
        assert!(!dir.join("raw").exists(), "the staging folder is removed");
    }

    #[tokio::test]
    async fn job_get_raw_keeps_results_apart() {
        let ctx = api_with_two_results().await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("out");
        get(&ctx, get_args(&dir, true)).await.expect("downloads");
        assert_eq!(read(&dir, "raw/e-1/stdout"), "one\n");
        assert_eq!(read(&dir, "raw/e-2/outputs/b.txt"), "b");
        assert!(!dir.join("stdout").exists());
    }
}
