//! `cod ipfs add|cat|get`: UnixFS in and out of this machine's block store (`<data dir>/ipfs`), with no
//! daemon. The one exception to "the CLI talks to the node only over its API": the block store is made for
//! sharing (LMDB index, file blocks, a commit lock), so the CLI and a running `cod serve` can both use it.
//!
//! `cat` and `get` read through a [`BlockSource`]; [`block_source`] decides which, so fetching from the
//! network is a change to that one function.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argh::FromArgs;

use super::UsageError;
use crate::config::{self, Config};
use crate::ipfs::store::{DiskBlockStore, DiskStoreConfig};
use crate::ipfs::unixfs::{self, ImportObserver, ImportOptions, ImportedRoot, export};
use crate::ipfs::{BlockSource, BlockStore, Cid, LocalSource, MemoryBlockStore};

/// IPFS without a daemon: add, cat and get UnixFS data (CIDs identical to Kubo's)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ipfs")]
pub struct IpfsArgs {
    /// the ipfs command
    #[argh(subcommand)]
    pub command: IpfsCommand,
}

/// `cod ipfs …` subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum IpfsCommand {
    /// `cod ipfs add`
    Add(AddArgs),
    /// `cod ipfs cat`
    Cat(CatArgs),
    /// `cod ipfs get`
    Get(GetArgs),
}

/// import a file or directory (-r) and pin it; prints `added <cid> <path>` like Kubo
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "add")]
pub struct AddArgs {
    /// file or directory to add (`-` reads stdin)
    #[argh(positional)]
    pub path: PathBuf,
    /// add directories recursively
    #[argh(switch, short = 'r')]
    pub recursive: bool,
    /// only compute the CIDs; store and pin nothing
    #[argh(switch, short = 'n')]
    pub only_hash: bool,
    /// print only the CIDs, one per entry
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// print only the root CID
    #[argh(switch, short = 'Q')]
    pub quieter: bool,
    /// CID version: 0 (default, Kubo's) or 1 (implies --raw-leaves, as in Kubo)
    #[argh(option, default = "0")]
    pub cid_version: u64,
    /// store file leaves as raw blocks (CIDv1) instead of UnixFS nodes
    #[argh(switch)]
    pub raw_leaves: bool,
    /// include files and directories whose name starts with '.'
    #[argh(switch, short = 'H')]
    pub hidden: bool,
    /// data directory (default: as `cod serve`, $COD_DATA_DIR or ~/.cod)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// config file (for DataDir and Ipfs.StoreSize)
    #[argh(option)]
    pub config: Option<PathBuf>,
}

/// write a file's bytes to stdout
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "cat")]
pub struct CatArgs {
    /// the file's CID
    #[argh(positional)]
    pub cid: String,
    /// data directory (default: as `cod serve`, $COD_DATA_DIR or ~/.cod)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// config file (for DataDir and Ipfs.StoreSize)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// trustless gateway to fetch missing blocks from (repeatable)
    #[argh(option)]
    pub ipfs_gateway: Vec<String>,
    /// IPFS peer to fetch missing blocks from over bitswap, `/ip4/…/tcp/…/p2p/<id>` (repeatable)
    #[argh(option)]
    pub ipfs_connect: Vec<String>,
    /// longest wait for the network, in seconds (default 300)
    #[argh(option, default = "300")]
    pub timeout_secs: u64,
}

/// write a file, directory or symlink to disk
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "get")]
pub struct GetArgs {
    /// the CID
    #[argh(positional)]
    pub cid: String,
    /// where to write it (must not exist; default ./<CID>)
    #[argh(option, short = 'o')]
    pub output: Option<PathBuf>,
    /// data directory (default: as `cod serve`, $COD_DATA_DIR or ~/.cod)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
    /// config file (for DataDir and Ipfs.StoreSize)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// trustless gateway to fetch missing blocks from (repeatable)
    #[argh(option)]
    pub ipfs_gateway: Vec<String>,
    /// IPFS peer to fetch missing blocks from over bitswap, `/ip4/…/tcp/…/p2p/<id>` (repeatable)
    #[argh(option)]
    pub ipfs_connect: Vec<String>,
    /// longest wait for the network, in seconds (default 300)
    #[argh(option, default = "300")]
    pub timeout_secs: u64,
}

/// Runs `cod ipfs …`.
pub async fn run(args: IpfsArgs) -> anyhow::Result<()> {
    match args.command {
        IpfsCommand::Add(a) => add(a).await,
        IpfsCommand::Cat(a) => cat(a).await,
        IpfsCommand::Get(a) => get(a).await,
    }
}

/// The data dir and store settings, loaded as `cod serve` loads them (defaults < file < COD_* < flags).
fn store_config(
    file: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<(PathBuf, DiskStoreConfig)> {
    let mut config = match file {
        Some(path) => config::load_file(path).map_err(|e| UsageError::new(e.to_string()))?,
        None => Config::default(),
    };
    config::apply_env(&mut config, |k| std::env::var(k).ok());
    if let Some(d) = data_dir {
        config.data_dir = d.to_owned();
    }
    let budget = config
        .ipfs_store_bytes()
        .map_err(|e| UsageError::new(e.to_string()))?;
    Ok((config.data_dir, DiskStoreConfig { budget }))
}

fn open_store(file: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<Arc<DiskBlockStore>> {
    let (dir, config) = store_config(file, data_dir)?;
    let store = DiskBlockStore::open(&dir, config).with_context(|| {
        format!(
            "opening the IPFS block store in {}",
            dir.join("ipfs").display()
        )
    })?;
    Ok(Arc::new(store))
}

/// Where `cat` and `get` find blocks: this machine's store, then (with `--ipfs-connect`/`--ipfs-gateway`)
/// the network, keeping what was fetched in the store. The second value keeps the libp2p client alive.
async fn block_source(
    store: Arc<DiskBlockStore>,
    gateways: &[String],
    connect: &[String],
    timeout_secs: u64,
) -> anyhow::Result<(Arc<dyn BlockSource>, Option<super::ipfs_net::NetFetcher>)> {
    if gateways.is_empty() && connect.is_empty() {
        return Ok((Arc::new(LocalSource(store)), None));
    }
    let net = super::ipfs_net::fetcher(store, gateways, connect, Duration::from_secs(timeout_secs))
        .await?;
    Ok((Arc::new(net.fetcher.clone()), Some(net)))
}

fn parse_cid(s: &str) -> anyhow::Result<Cid> {
    // Accept `/ipfs/<cid>` as Kubo does.
    let bare = s.strip_prefix("/ipfs/").unwrap_or(s);
    bare.parse::<Cid>()
        .map_err(|e| UsageError::new(format!("{s:?} is not a CID: {e}")).into())
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    if args.cid_version > 1 {
        return Err(UsageError::new(format!(
            "--cid-version {} is not supported (use 0 or 1)",
            args.cid_version
        ))
        .into());
    }
    let options = ImportOptions {
        raw_leaves: args.raw_leaves || args.cid_version == 1,
        hidden: args.hidden,
        ..ImportOptions::for_cid_version(args.cid_version)
    };
    let stdin = args.path.as_os_str() == "-";
    if !stdin {
        let meta = std::fs::symlink_metadata(&args.path)
            .with_context(|| format!("cannot add {}", args.path.display()))?;
        if meta.is_dir() && !args.recursive {
            bail!(UsageError::new(format!(
                "{} is a directory; use -r to add directories",
                args.path.display()
            )));
        }
    }
    let store: Option<Arc<DiskBlockStore>> = if args.only_hash {
        None
    } else {
        Some(open_store(
            args.config.as_deref(),
            args.data_dir.as_deref(),
        )?)
    };
    let progress = std::io::stderr().is_terminal() && !args.quieter;
    let path = args.path.clone();
    let (quiet, quieter) = (args.quiet, args.quieter);
    // Hashing is CPU work on threads of its own; keep it off the runtime.
    let root = tokio::task::spawn_blocking(move || -> anyhow::Result<ImportedRoot> {
        let total = if progress { disk_size(&path) } else { 0 };
        let mut observer = Lines {
            quiet,
            quieter,
            bar: progress.then(|| Progress::new(total)),
        };
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let import = |blocks: &dyn BlockStore, observer: &mut Lines| {
            if stdin {
                let root = unixfs::import_file(blocks, std::io::stdin().lock(), &options)?;
                observer.added(&root.cid.to_string(), &root);
                Ok(root)
            } else {
                unixfs::import_path_observed(blocks, &path, &options, observer)
            }
        };
        let root = match &store {
            None => import(&MemoryBlockStore::discarding(), &mut observer),
            Some(store) => {
                let batch = store.batch();
                let root = import(&batch, &mut observer)
                    .with_context(|| format!("adding {}", path.display()))?;
                batch
                    .commit(Some((&root.cid, &name)))
                    .with_context(|| format!("storing and pinning {}", path.display()))?;
                Ok(root)
            }
        }
        .with_context(|| format!("adding {}", path.display()))?;
        if let Some(bar) = &mut observer.bar {
            bar.finish();
        }
        Ok(root)
    })
    .await
    .context("the import task failed")??;
    if quieter {
        println!("{}", root.cid);
    }
    Ok(())
}

async fn cat(args: CatArgs) -> anyhow::Result<()> {
    let cid = parse_cid(&args.cid)?;
    let (source, _net) = block_source(
        open_store(args.config.as_deref(), args.data_dir.as_deref())?,
        &args.ipfs_gateway,
        &args.ipfs_connect,
        args.timeout_secs,
    )
    .await?;
    let mut out = tokio::io::stdout();
    export::cat(source.as_ref(), &cid, &mut out)
        .await
        .with_context(|| format!("cat {cid}"))?;
    tokio::io::AsyncWriteExt::flush(&mut out)
        .await
        .context("writing to stdout")?;
    Ok(())
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let cid = parse_cid(&args.cid)?;
    let dest = args
        .output
        .unwrap_or_else(|| PathBuf::from(cid.to_string()));
    let (source, _net) = block_source(
        open_store(args.config.as_deref(), args.data_dir.as_deref())?,
        &args.ipfs_gateway,
        &args.ipfs_connect,
        args.timeout_secs,
    )
    .await?;
    let summary = export::get(source.as_ref(), &cid, &dest)
        .await
        .with_context(|| format!("get {cid} into {}", dest.display()))?;
    eprintln!(
        "saved {cid} to {} ({} files, {} directories, {} symlinks, {} bytes)",
        dest.display(),
        summary.files,
        summary.dirs,
        summary.symlinks,
        summary.bytes
    );
    Ok(())
}

/// Bytes of regular files under `path` (for the progress bar's total; errors count as 0: the import
/// reports them properly).
fn disk_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Prints Kubo's `added <cid> <path>` lines and drives the progress bar.
struct Lines {
    quiet: bool,
    quieter: bool,
    bar: Option<Progress>,
}

impl ImportObserver for Lines {
    fn bytes(&mut self, n: u64) {
        if let Some(bar) = &mut self.bar {
            bar.advance(n);
        }
    }

    fn added(&mut self, path: &str, root: &ImportedRoot) {
        if self.quieter {
            return;
        }
        if let Some(bar) = &mut self.bar {
            bar.clear();
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) must not abort the import; the last write error surfaces in main.
        let _ = if self.quiet {
            writeln!(out, "{}", root.cid)
        } else {
            writeln!(out, "added {} {path}", root.cid)
        };
    }
}

/// A one-line progress bar on stderr (only when stderr is a terminal), redrawn at most 10 times a second.
struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self
            .drawn
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        self.draw();
    }

    fn draw(&self) {
        const WIDTH: u64 = 30;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs / (1 << 20) as f64;
        let filled = (self.done.min(self.total) * WIDTH)
            .checked_div(self.total)
            .unwrap_or(0);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{bar}] {:.1}/{:.1} MiB {rate:.0} MiB/s\x1b[K",
            mib(self.done),
            mib(self.total)
        );
        let _ = err.flush();
    }

    fn clear(&mut self) {
        if self.drawn.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            self.drawn = None;
        }
    }

    fn finish(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_parse_with_or_without_the_ipfs_prefix() {
        let a = parse_cid("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH").expect("v0");
        let b = parse_cid("/ipfs/QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH").expect("path");
        assert_eq!(a, b);
        assert!(parse_cid("not-a-cid").is_err());
    }
}
