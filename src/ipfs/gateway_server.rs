//! A trustless gateway over the local block store: `GET /ipfs/{cid}` answers a raw block
//! (`?format=raw` or `Accept: application/vnd.ipld.raw`) or the CAR of the whole DAG (`?format=car` or
//! `Accept: application/vnd.ipld.car`); anything else is 406 (this node serves no deserialized files:
//! clients verify, so they ask for blocks). Blocks not held are 404.
//!
//! The CAR is streamed: a blocking task walks the DAG depth-first (the order the spec calls `dfs`) and writes
//! CAR sections into a small bounded channel, so a large DAG never sits in memory and a slow client only
//! holds one task. If a block below the root is missing the stream stops early; clients detect the
//! incomplete DAG (our own [`super::gateway`] client does) and fall back to other sources.

use std::io::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use cid::Cid;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::debug;

use super::car::CarWriter;
use super::dagpb::PbNode;
use super::gateway::{CAR_MEDIA_TYPE, RAW_MEDIA_TYPE};
use super::{BlockStore, DAG_PB, IDENTITY};

/// CAR chunks buffered per response before the walker waits for the client.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The gateway's routes (`/ipfs/{cid}`), to merge into an HTTP server.
pub fn router(store: Arc<dyn BlockStore>) -> Router {
    Router::new()
        .route("/ipfs/{cid}", get(serve).head(serve))
        .with_state(store)
}

#[derive(Debug, Deserialize)]
struct Params {
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Car,
}

/// `?format=` wins over `Accept` (the spec says so); no usable answer is 406.
fn format(params: &Params, headers: &HeaderMap) -> Option<Format> {
    match params.format.as_deref() {
        Some("raw") => return Some(Format::Raw),
        Some("car") => return Some(Format::Car),
        Some(_) => return None,
        None => {}
    }
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    accept.split(',').find_map(|part| {
        let media = part.split(';').next().unwrap_or("").trim();
        match media {
            RAW_MEDIA_TYPE => Some(Format::Raw),
            CAR_MEDIA_TYPE => Some(Format::Car),
            _ => None,
        }
    })
}

async fn serve(
    State(store): State<Arc<dyn BlockStore>>,
    Path(cid_text): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let Ok(cid) = cid_text.parse::<Cid>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{cid_text:?} is not a CID\n"),
        )
            .into_response();
    };
    let Some(format) = format(&params, &headers) else {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "this is a trustless gateway: ask for ?format=raw or ?format=car\n",
        )
            .into_response();
    };
    let root = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || read(&*store, &cid)).await
    };
    let root = match root {
        Ok(Ok(Some(data))) => data,
        Ok(Ok(None)) => {
            return (
                StatusCode::NOT_FOUND,
                format!("block {cid} is not held by this node\n"),
            )
                .into_response();
        }
        Ok(Err(e)) => {
            debug!(cid = %cid, error = %e, "gateway store read failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the block store failed\n",
            )
                .into_response();
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let immutable = HeaderValue::from_static("public, max-age=29030400, immutable");
    match format {
        Format::Raw => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(RAW_MEDIA_TYPE),
                ),
                (header::CACHE_CONTROL, immutable),
            ],
            root,
        )
            .into_response(),
        Format::Car => {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
            tokio::task::spawn_blocking(move || write_car(&*store, cid, root, tx));
            let body = Body::from_stream(tokio_stream(rx));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/vnd.ipld.car; version=1; order=dfs; dups=n",
                        ),
                    ),
                    (header::CACHE_CONTROL, immutable),
                ],
                body,
            )
                .into_response()
        }
    }
}

fn read(store: &dyn BlockStore, cid: &Cid) -> Result<Option<Bytes>, super::BlockStoreError> {
    if cid.hash().code() == IDENTITY {
        return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
    }
    store.get(cid)
}

fn tokio_stream(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Sends everything written to it as body chunks; fails once the client has gone (so the walk stops).
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// Walks the DAG depth-first from `root` and writes it as a CAR; stops at the first missing block.
fn write_car(
    store: &dyn BlockStore,
    root: Cid,
    root_data: Bytes,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let sink = ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(256 * 1024),
    };
    let result = (|| -> std::io::Result<()> {
        let mut car = CarWriter::new(sink, &[root])?;
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(root, Some(root_data))];
        while let Some((cid, data)) = stack.pop() {
            if !seen.insert(cid) {
                continue;
            }
            let data = match data {
                Some(d) => d,
                None => match read(store, &cid).map_err(std::io::Error::other)? {
                    Some(d) => d,
                    None => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("block {cid} of the DAG is not held"),
                        ));
                    }
                },
            };
            car.write(&cid, &data)?;
            if cid.codec() == DAG_PB
                && let Ok(node) = PbNode::decode(&data)
            {
                // Reversed so the first link is written first (depth-first, left to right).
                for link in node.links.into_iter().rev() {
                    stack.push((link.hash, None));
                }
            }
        }
        car.finish()?.flush()
    })();
    if let Err(e) = result {
        debug!(root = %root, error = %e, "gateway CAR stream ended early");
        // Tell the client the body is incomplete rather than ending it cleanly.
        let _ = tx.blocking_send(Err(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfs::MemoryBlockStore;
    use crate::ipfs::dagpb::PbLink;
    use crate::ipfs::gateway::{HttpApi, HttpConfig, HttpSource};
    use crate::ipfs::{Block, RAW};

    fn http_client() -> reqwest::Client {
        crate::ipfs::gateway::http_client(std::time::Duration::from_secs(5)).expect("client")
    }

    async fn serve_store(store: Arc<dyn BlockStore>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(store)).await });
        format!("http://{addr}")
    }

    fn dag() -> (Cid, Vec<Block>) {
        let leaves: Vec<Block> = (0..5u8)
            .map(|i| Block::new(RAW, Bytes::from(vec![i; 300_000]), false))
            .collect();
        let root = Block::new(
            DAG_PB,
            Bytes::from(
                PbNode {
                    links: leaves
                        .iter()
                        .map(|b| PbLink {
                            hash: *b.cid(),
                            name: Some(String::new()),
                            tsize: Some(300_000),
                        })
                        .collect(),
                    data: None,
                }
                .encode(),
            ),
            true,
        );
        let mut blocks = leaves;
        blocks.push(root.clone());
        (*root.cid(), blocks)
    }

    #[tokio::test]
    async fn serves_cars_and_raw_blocks_that_our_client_verifies() {
        let (root, blocks) = dag();
        let served = Arc::new(MemoryBlockStore::new());
        for b in &blocks {
            served.put(b).expect("put");
        }
        let base = serve_store(served).await;
        let client = HttpSource::new(
            http_client(),
            base.parse().expect("url"),
            HttpApi::Gateway,
            HttpConfig::default(),
        );
        let fetched: Arc<dyn BlockStore> = Arc::new(MemoryBlockStore::new());
        let stored = client.fetch_dag(root, &fetched).await.expect("fetched");
        assert_eq!(stored, blocks.len() as u64);
        for b in &blocks {
            assert!(fetched.has(b.cid()).expect("has"));
        }
        let raw = client.fetch_raw(*blocks[0].cid()).await.expect("raw");
        assert_eq!(raw, blocks[0]);

        let http = http_client();
        let missing = Block::new(RAW, Bytes::from_static(b"nope"), false);
        let r = http
            .get(format!("{base}/ipfs/{}?format=raw", missing.cid()))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = http
            .get(format!("{base}/ipfs/{root}"))
            .header(header::ACCEPT, "application/vnd.ipld.car; version=1")
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::OK);
        let r = http
            .get(format!("{base}/ipfs/{root}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    }

    #[tokio::test]
    async fn an_incomplete_car_is_completed_with_raw_blocks_and_a_missing_block_fails() {
        let (root, blocks) = dag();
        let served = Arc::new(MemoryBlockStore::new());
        // The server lacks the third leaf: its CAR stops there, and the raw fallback gets a 404.
        for (i, b) in blocks.iter().enumerate() {
            if i != 2 {
                served.put(b).expect("put");
            }
        }
        let base = serve_store(served.clone()).await;
        let client = HttpSource::new(
            http_client(),
            base.parse().expect("url"),
            HttpApi::Gateway,
            HttpConfig::default(),
        );
        let fetched: Arc<dyn BlockStore> = Arc::new(MemoryBlockStore::new());
        let err = client
            .fetch_dag(root, &fetched)
            .await
            .expect_err("incomplete");
        assert!(err.to_string().contains("404"), "{err}");
        // Once the server has the block, the same fetch completes the DAG from where it was.
        served.put(&blocks[2]).expect("put");
        client.fetch_dag(root, &fetched).await.expect("completed");
        for b in &blocks {
            assert!(fetched.has(b.cid()).expect("has"));
        }
    }
}
