//! Builds the node's IPFS parts (compute role): the disk block store, bitswap on the transport's swarm, the
//! fetcher over peers, gateways and Kubo RPC, and the gateway routes the local publisher serves.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Resolved;
use crate::ipfs::bitswap::session::SessionConfig;
use crate::ipfs::bitswap::{Bitswap, Limits};
use crate::ipfs::fetch::Fetcher;
use crate::ipfs::gateway::{HttpApi, HttpConfig, HttpSource, http_client};
use crate::ipfs::store::{DiskBlockStore, DiskStoreConfig};
use crate::model::NodeId;
use crate::transport::Client;

use super::NodeError;

/// What the backends need from IPFS.
#[derive(Debug)]
pub(super) struct IpfsParts {
    /// The node's block store (results are pinned here; fetched inputs land here).
    pub store: Arc<DiskBlockStore>,
    /// Gets input DAGs.
    pub fetcher: Fetcher,
    /// The Kubo RPC endpoint results are pushed to.
    pub kubo: Option<(reqwest::Client, reqwest::Url)>,
    /// Longest fetch of one input.
    pub fetch_timeout: Duration,
}

/// Peer ids of `/…/p2p/<id>` multiaddrs (the transport already refused any without one).
fn peer_ids(addrs: &[String]) -> Vec<NodeId> {
    addrs
        .iter()
        .filter_map(|a| {
            a.rsplit_once("/p2p/")
                .map(|(_, id)| NodeId::from(id.to_owned()))
        })
        .collect()
}

fn parse_url(key: &str, text: &str) -> Result<reqwest::Url, NodeError> {
    let url: reqwest::Url = text
        .parse()
        .map_err(|e| NodeError::Config(format!("{key} = {text:?}: not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NodeError::Config(format!(
            "{key} = {text:?}: only http:// and https:// are supported"
        )));
    }
    Ok(url)
}

/// Opens the store and starts bitswap (its task goes into `tasks`).
pub(super) fn start(
    config: &Resolved,
    client: &Client,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> Result<IpfsParts, NodeError> {
    let raw = &config.raw;
    let store = DiskBlockStore::open(
        &raw.data_dir,
        DiskStoreConfig {
            budget: config.ipfs_store_bytes,
        },
    )
    .map_err(|e| NodeError::Backend(format!("opening the IPFS block store: {e}")))?;
    let store = Arc::new(store);
    let (bitswap, run) =
        Bitswap::start(client.streams(), store.clone(), Limits::default(), shutdown)?;
    tasks.spawn(run);
    let http = http_client(Duration::from_secs(30)).map_err(NodeError::Backend)?;
    let http_config = HttpConfig {
        timeout: config.ipfs_fetch_timeout,
        ..HttpConfig::default()
    };
    let session = SessionConfig {
        want_timeout: config.ipfs_fetch_timeout.min(Duration::from_secs(30)),
        ..SessionConfig::default()
    };
    let mut fetcher =
        Fetcher::new(store.clone()).with_bitswap(bitswap, peer_ids(&raw.ipfs.peers), session);
    for gw in &raw.ipfs.gateways {
        let url = parse_url("Ipfs.Gateways", gw)?;
        fetcher = fetcher.with_http(HttpSource::new(
            http.clone(),
            url,
            HttpApi::Gateway,
            http_config,
        ));
    }
    let kubo = if raw.ipfs.kubo_rpc.is_empty() {
        None
    } else {
        let url = parse_url("Ipfs.KuboRpc", &raw.ipfs.kubo_rpc)?;
        fetcher = fetcher.with_http(HttpSource::new(
            http.clone(),
            url.clone(),
            HttpApi::KuboRpc,
            http_config,
        ));
        Some((http, url))
    };
    info!(
        peers = raw.ipfs.peers.len(),
        gateways = raw.ipfs.gateways.len(),
        kubo_rpc = kubo.is_some(),
        "IPFS started (block store, bitswap)"
    );
    Ok(IpfsParts {
        store,
        fetcher,
        kubo,
        fetch_timeout: config.ipfs_fetch_timeout,
    })
}
