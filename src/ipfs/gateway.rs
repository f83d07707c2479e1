//! HTTP sources of blocks: trustless gateways (`GET {gw}/ipfs/{cid}?format=car|raw`, IPIP-402 / the trustless
//! gateway spec) and a Kubo RPC endpoint (`POST {api}/api/v0/dag/export` and `/api/v0/block/get`).
//!
//! Nothing an HTTP server says is trusted: every block of a CAR is checked against its CID as it streams in
//! ([`Block::verified`]) and only then stored; a CAR must also be complete (every block the root links to is
//! present) or the missing blocks are asked for one by one as raw blocks. A block that does not verify fails
//! the whole fetch from that server: a server that lies once is not asked for the rest.
//!
//! Bounds: a CAR may not exceed [`HttpConfig::max_bytes`], a section or raw block [`MAX_BLOCK_SIZE`] (+ CID),
//! and each request [`HttpConfig::timeout`]. Transient failures (connect errors, 5xx, 429) are retried a
//! few times with backoff; any other status fails at once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cid::Cid;
use futures::TryStreamExt;
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;
use tracing::debug;

use super::dagpb::PbNode;
use super::pb::get_uvarint;
use super::{Block, BlockStore, DAG_PB, IDENTITY, MAX_BLOCK_SIZE};

/// The CAR media type (trustless gateway spec).
pub const CAR_MEDIA_TYPE: &str = "application/vnd.ipld.car";
/// The raw block media type.
pub const RAW_MEDIA_TYPE: &str = "application/vnd.ipld.raw";

/// Which HTTP API a [`HttpSource`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpApi {
    /// A trustless gateway.
    Gateway,
    /// Kubo's RPC API (`ipfs daemon`'s port 5001).
    KuboRpc,
}

/// Limits of HTTP fetches.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// Limit for one request, body included.
    pub timeout: Duration,
    /// The most bytes one CAR may have.
    pub max_bytes: u64,
    /// Tries per request, the first included.
    pub attempts: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5 * 60),
            max_bytes: 10 * 1024 * 1024 * 1024,
            attempts: 3,
        }
    }
}

/// An HTTP fetch that failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpFetchError {
    /// The server answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// Connecting or reading failed (after retries).
    #[error("{url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server sent a block that does not hash to its CID, or something that is not a CAR.
    #[error("{url} sent corrupt or forged data: {reason}")]
    Corrupt {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// More data than allowed.
    #[error("{url} sent more than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// Blocks the DAG needs that the server did not provide.
    #[error("{url} did not provide block {cid} of the DAG")]
    Incomplete {
        /// The URL.
        url: String,
        /// The first missing block.
        cid: Cid,
    },
    /// The local store failed.
    #[error("storing a block failed: {0}")]
    Store(String),
}

/// One gateway or Kubo RPC endpoint.
#[derive(Debug, Clone)]
pub struct HttpSource {
    /// Shared connection pool.
    http: reqwest::Client,
    /// `http(s)://host:port` (a path prefix is kept).
    base: Url,
    /// Which API.
    api: HttpApi,
    /// Limits.
    config: HttpConfig,
}

// === impl HttpSource ===

impl HttpSource {
    /// A source for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(http: reqwest::Client, base: Url, api: HttpApi, config: HttpConfig) -> Self {
        Self {
            http,
            base,
            api,
            config,
        }
    }

    /// The endpoint, for messages.
    pub fn describe(&self) -> String {
        match self.api {
            HttpApi::Gateway => format!("gateway {}", self.base),
            HttpApi::KuboRpc => format!("Kubo RPC {}", self.base),
        }
    }

    /// The URL that returns the whole DAG under `cid` as a CAR.
    pub fn car_url(&self, cid: &Cid) -> Url {
        match self.api {
            HttpApi::Gateway => join(
                &self.base,
                &format!("ipfs/{cid}"),
                &[("format", "car"), ("dag-scope", "all")],
            ),
            HttpApi::KuboRpc => join(
                &self.base,
                "api/v0/dag/export",
                &[("arg", &cid.to_string())],
            ),
        }
    }

    /// The URL that returns one raw block.
    pub fn raw_url(&self, cid: &Cid) -> Url {
        match self.api {
            HttpApi::Gateway => join(&self.base, &format!("ipfs/{cid}"), &[("format", "raw")]),
            HttpApi::KuboRpc => join(&self.base, "api/v0/block/get", &[("arg", &cid.to_string())]),
        }
    }

    /// Fetches the DAG under `root` into `store`: one CAR, verified block by block, then any block the CAR
    /// lacked as a raw block. Returns the number of blocks stored.
    pub async fn fetch_dag(
        &self,
        root: Cid,
        store: &Arc<dyn BlockStore>,
    ) -> Result<u64, HttpFetchError> {
        let mut stored = match self.fetch_car(root, store).await {
            Ok(n) => n,
            // A lying server is not asked again; anything else (an old gateway without CAR support, a cut
            // connection) still leaves the per-block path.
            Err(e @ HttpFetchError::Corrupt { .. }) => return Err(e),
            Err(e) => {
                debug!(source = %self.describe(), error = %e, "CAR fetch failed; trying raw blocks");
                0
            }
        };
        // Completeness: walk the DAG in the store and fill every hole with a raw block.
        let mut queue = VecDeque::from([root]);
        let mut seen = HashSet::from([root]);
        while let Some(cid) = queue.pop_front() {
            let data = match local(store, cid).await? {
                Some(data) => data,
                None => {
                    let block = self.fetch_raw(cid).await?;
                    let data = block.data().clone();
                    put(store, block).await?;
                    stored += 1;
                    data
                }
            };
            if cid.codec() == DAG_PB {
                let node = PbNode::decode(&data).map_err(|e| HttpFetchError::Corrupt {
                    url: self.base.to_string(),
                    reason: format!("block {cid} is not valid dag-pb: {e}"),
                })?;
                for link in node.links {
                    if seen.insert(link.hash) {
                        queue.push_back(link.hash);
                    }
                }
            }
        }
        Ok(stored)
    }

    /// Streams the CAR of `root` into `store`, verifying every block; returns how many were stored.
    async fn fetch_car(
        &self,
        root: Cid,
        store: &Arc<dyn BlockStore>,
    ) -> Result<u64, HttpFetchError> {
        let url = self.car_url(&root);
        let response = self.send(&url, CAR_MEDIA_TYPE).await?;
        let shown = url.to_string();
        if let Some(len) = response.content_length()
            && len > self.config.max_bytes
        {
            return Err(HttpFetchError::TooLarge {
                url: shown,
                limit: self.config.max_bytes,
            });
        }
        let body = response.bytes_stream().map_err(std::io::Error::other);
        let mut reader = StreamReader::new(body);
        let mut car = CarStream::new(&mut reader, self.config.max_bytes, &shown);
        let roots = car.header().await?;
        if !roots.contains(&root) {
            return Err(HttpFetchError::Corrupt {
                url: shown,
                reason: format!("the CAR's roots {roots:?} do not include {root}"),
            });
        }
        let mut stored = 0;
        while let Some((cid, data)) = car.next().await? {
            let block = Block::verified(cid, data).map_err(|e| HttpFetchError::Corrupt {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
            put(store, block).await?;
            stored += 1;
        }
        Ok(stored)
    }

    /// One raw block, verified.
    pub async fn fetch_raw(&self, cid: Cid) -> Result<Block, HttpFetchError> {
        let url = self.raw_url(&cid);
        let shown = url.to_string();
        let response = self.send(&url, RAW_MEDIA_TYPE).await?;
        let body = response.bytes_stream().map_err(std::io::Error::other);
        let mut reader = StreamReader::new(body);
        let mut data = Vec::new();
        let limit = MAX_BLOCK_SIZE as u64 + 1;
        (&mut reader)
            .take(limit)
            .read_to_end(&mut data)
            .await
            .map_err(|e| HttpFetchError::Transport {
                url: shown.clone(),
                reason: format!("reading the body failed: {e}"),
            })?;
        if data.len() as u64 >= limit {
            return Err(HttpFetchError::TooLarge {
                url: shown,
                limit: MAX_BLOCK_SIZE as u64,
            });
        }
        Block::verified(cid, Bytes::from(data)).map_err(|e| HttpFetchError::Corrupt {
            url: shown,
            reason: e.to_string(),
        })
    }

    /// Sends the request with retries on transient failures; returns a 2xx response.
    async fn send(&self, url: &Url, accept: &str) -> Result<reqwest::Response, HttpFetchError> {
        let shown = url.to_string();
        let mut backoff = Duration::from_millis(200);
        let mut last = None;
        for attempt in 0..self.config.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let request = match self.api {
                HttpApi::Gateway => self.http.get(url.clone()),
                // Kubo's RPC only takes POST.
                HttpApi::KuboRpc => self.http.post(url.clone()),
            };
            match request
                .header(reqwest::header::ACCEPT, accept)
                .timeout(self.config.timeout)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    last = Some(HttpFetchError::Status {
                        url: shown.clone(),
                        status: r.status(),
                    });
                }
                Ok(r) => {
                    return Err(HttpFetchError::Status {
                        url: shown,
                        status: r.status(),
                    });
                }
                Err(e) => {
                    last = Some(HttpFetchError::Transport {
                        url: shown.clone(),
                        reason: crate::errors::chain(&e),
                    });
                }
            }
        }
        Err(last.unwrap_or(HttpFetchError::Transport {
            url: shown,
            reason: "no attempt was made".into(),
        }))
    }
}

/// An HTTP client for gateways and Kubo RPC: rustls with the *ring* provider set on this client (not
/// process-wide) and the platform's root certificates, as the URL source builds its own.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider)).map_err(|e| {
        format!("loading the system's CA certificates failed ({e}); install ca-certificates")
    })?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("configuring TLS failed ({e})"))?
        .dangerous()
        // Not dangerous: this is the platform verifier; rustls calls every custom verifier "dangerous".
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("cod/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            format!(
                "building the HTTP client failed ({})",
                crate::errors::chain(&e)
            )
        })
}

/// `base` + `path` + query, keeping any path prefix of `base`.
fn join(base: &Url, path: &str, query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}/{path}"));
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    url
}

/// A CAR v1 read from an async body: the same format [`super::car::CarReader`] reads, with the same bounds,
/// plus a cap on the total size.
struct CarStream<'a, R> {
    input: &'a mut R,
    remaining: u64,
    url: &'a str,
}

impl<'a, R: AsyncRead + Unpin> CarStream<'a, R> {
    fn new(input: &'a mut R, max_bytes: u64, url: &'a str) -> Self {
        Self {
            input,
            remaining: max_bytes,
            url,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> HttpFetchError {
        HttpFetchError::Corrupt {
            url: self.url.to_owned(),
            reason: reason.into(),
        }
    }

    async fn header(&mut self) -> Result<Vec<Cid>, HttpFetchError> {
        let len = self
            .varint()
            .await?
            .ok_or_else(|| self.corrupt("empty CAR"))?;
        if len == 0 || len > 64 * 1024 {
            return Err(self.corrupt(format!("CAR header length {len} is out of range")));
        }
        let header = self.bytes(len as usize).await?;
        // Reuse the CAR module's header parser on the bytes we already have.
        let mut framed = Vec::with_capacity(header.len() + 10);
        super::pb::put_uvarint(&mut framed, len);
        framed.extend_from_slice(&header);
        let reader = super::car::CarReader::new(std::io::Cursor::new(framed))
            .map_err(|e| self.corrupt(e.to_string()))?;
        Ok(reader.roots().to_vec())
    }

    async fn next(&mut self) -> Result<Option<(Cid, Bytes)>, HttpFetchError> {
        let Some(len) = self.varint().await? else {
            return Ok(None);
        };
        if len == 0 || len > (MAX_BLOCK_SIZE + 1024) as u64 {
            return Err(self.corrupt(format!("CAR section length {len} is out of range")));
        }
        let section = self.bytes(len as usize).await?;
        let mut rest = &section[..];
        let cid =
            Cid::read_bytes(&mut rest).map_err(|e| self.corrupt(format!("section CID: {e}")))?;
        let at = section.len() - rest.len();
        Ok(Some((cid, section.freeze().slice(at..))))
    }

    async fn varint(&mut self) -> Result<Option<u64>, HttpFetchError> {
        let mut buf = [0u8; 10];
        for i in 0..buf.len() {
            let mut byte = [0u8; 1];
            let n = self.input.read(&mut byte).await.map_err(|e| self.io(e))?;
            if n == 0 {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(self.corrupt("CAR ends inside a varint"))
                };
            }
            self.charge(1)?;
            buf[i] = byte[0];
            if byte[0] & 0x80 == 0 {
                let (v, _) = get_uvarint(&buf[..=i]).map_err(|e| self.corrupt(e.to_string()))?;
                return Ok(Some(v));
            }
        }
        Err(self.corrupt("varint longer than 10 bytes"))
    }

    async fn bytes(&mut self, len: usize) -> Result<BytesMut, HttpFetchError> {
        self.charge(len as u64)?;
        let mut buf = BytesMut::zeroed(len);
        self.input
            .read_exact(&mut buf)
            .await
            .map_err(|e| self.io(e))?;
        Ok(buf)
    }

    fn charge(&mut self, n: u64) -> Result<(), HttpFetchError> {
        self.remaining = self
            .remaining
            .checked_sub(n)
            .ok_or_else(|| HttpFetchError::TooLarge {
                url: self.url.to_owned(),
                limit: 0,
            })?;
        Ok(())
    }

    fn io(&self, e: std::io::Error) -> HttpFetchError {
        HttpFetchError::Transport {
            url: self.url.to_owned(),
            reason: format!("reading the CAR failed: {e}"),
        }
    }
}

async fn local(store: &Arc<dyn BlockStore>, cid: Cid) -> Result<Option<Bytes>, HttpFetchError> {
    if cid.hash().code() == IDENTITY {
        return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.get(&cid))
        .await
        .map_err(|e| HttpFetchError::Store(e.to_string()))?
        .map_err(|e| HttpFetchError::Store(e.to_string()))
}

async fn put(store: &Arc<dyn BlockStore>, block: Block) -> Result<(), HttpFetchError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.put(&block))
        .await
        .map_err(|e| HttpFetchError::Store(e.to_string()))?
        .map_err(|e| HttpFetchError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(base: &str, api: HttpApi) -> HttpSource {
        HttpSource::new(
            http_client(Duration::from_secs(5)).expect("client"),
            base.parse().expect("url"),
            api,
            HttpConfig::default(),
        )
    }

    #[test]
    fn builds_trustless_gateway_and_kubo_rpc_urls() {
        let cid: Cid = "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
            .parse()
            .expect("cid");
        let gw = source("http://127.0.0.1:8080", HttpApi::Gateway);
        assert_eq!(
            gw.car_url(&cid).as_str(),
            "http://127.0.0.1:8080/ipfs/QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN?format=car&dag-scope=all"
        );
        assert_eq!(
            gw.raw_url(&cid).as_str(),
            "http://127.0.0.1:8080/ipfs/QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN?format=raw"
        );
        // A path prefix (a gateway behind a reverse proxy) is kept.
        let prefixed = source("https://example.org/gw/", HttpApi::Gateway);
        assert!(
            prefixed
                .car_url(&cid)
                .as_str()
                .starts_with("https://example.org/gw/ipfs/Qm")
        );
        let kubo = source("http://127.0.0.1:5001", HttpApi::KuboRpc);
        assert_eq!(
            kubo.car_url(&cid).as_str(),
            "http://127.0.0.1:5001/api/v0/dag/export?arg=QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
        );
        assert_eq!(
            kubo.raw_url(&cid).as_str(),
            "http://127.0.0.1:5001/api/v0/block/get?arg=QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
        );
    }
}
