//! Network access for CLI commands that read IPFS data (`cod job get` of `ipfs` results, `cod ipfs cat|get`):
//! trustless gateways over HTTP, and bitswap through an ephemeral libp2p client (a fresh identity per run,
//! dialling only the given peers, listening nowhere).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::ipfs::BlockStore;
use crate::ipfs::bitswap::session::SessionConfig;
use crate::ipfs::bitswap::{Bitswap, Limits};
use crate::ipfs::fetch::Fetcher;
use crate::ipfs::gateway::{HttpApi, HttpConfig, HttpSource, http_client};
use crate::model::NodeId;
use crate::transport::{self, Identity};

/// A fetcher over the network; the libp2p client (if any) stops when this is dropped.
#[derive(Debug)]
pub struct NetFetcher {
    /// Tries the store, then the peers, then the gateways.
    pub fetcher: Fetcher,
    /// Stops the ephemeral transport and bitswap.
    shutdown: CancellationToken,
}

impl Drop for NetFetcher {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds a fetcher into `store` that asks `connect` peers (multiaddrs ending in `/p2p/<id>`) over bitswap and
/// then `gateways`. Waits up to `timeout` for each peer to connect, failing with what to check.
pub async fn fetcher(
    store: Arc<dyn BlockStore>,
    gateways: &[String],
    connect: &[String],
    timeout: Duration,
) -> anyhow::Result<NetFetcher> {
    let shutdown = CancellationToken::new();
    let mut fetcher = Fetcher::new(store.clone());
    if !connect.is_empty() {
        let config = transport::Config {
            ipfs_peers: connect.to_vec(),
            ..transport::Config::default()
        };
        let (client, events, event_loop) =
            transport::new(Identity::generate(), config).context("starting the libp2p client")?;
        // Nothing reads Cod events here: IPFS peers raise none, and dropping the receiver is harmless.
        drop(events);
        tokio::spawn(event_loop.run(shutdown.clone()));
        let (bitswap, run) =
            Bitswap::start(client.streams(), store, Limits::default(), shutdown.clone())
                .context("starting bitswap")?;
        tokio::spawn(run);
        let mut peers = Vec::new();
        for addr in connect {
            let Some((_, id)) = addr.rsplit_once("/p2p/") else {
                anyhow::bail!("--ipfs-connect {addr:?} must end in /p2p/<peer id>");
            };
            let peer = NodeId::from(id.to_owned());
            if !client
                .wait_connected(&peer, timeout.min(Duration::from_secs(30)))
                .await
            {
                anyhow::bail!(
                    "cannot connect to IPFS peer {addr}; check that it runs and that the address and peer id are right"
                );
            }
            peers.push(peer);
        }
        let session = SessionConfig {
            want_timeout: timeout.min(Duration::from_secs(30)),
            ..SessionConfig::default()
        };
        fetcher = fetcher.with_bitswap(bitswap, peers, session);
    }
    if !gateways.is_empty() {
        let http = http_client(Duration::from_secs(30)).map_err(anyhow::Error::msg)?;
        let config = HttpConfig {
            timeout,
            ..HttpConfig::default()
        };
        for gw in gateways {
            let url = gw
                .parse()
                .with_context(|| format!("--ipfs-gateway {gw:?} is not a URL"))?;
            fetcher =
                fetcher.with_http(HttpSource::new(http.clone(), url, HttpApi::Gateway, config));
        }
    }
    Ok(NetFetcher { fetcher, shutdown })
}
