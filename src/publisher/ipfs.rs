//! The `ipfs` publisher: the result folder (`stdout`, `stderr`, `exitCode`, one folder per ResultPath) is
//! imported as a UnixFS DAG with Kubo's defaults (so Kubo computes the same CID), stored and pinned in the
//! node's block store, and from then on served to anyone who asks by CID: IPFS peers over bitswap, HTTP
//! clients through the trustless gateway. With a Kubo RPC endpoint configured the DAG is also pushed there
//! (`/api/v0/dag/import`), so results outlive this node.
//!
//! The published result is Bacalhau's `{Type: ipfs, Params: {CID}}`; when this node serves a gateway it adds
//! `Params.Gateway` (its base URL), which `cod job get` uses and Bacalhau ignores.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{PublishTarget, Publisher, PublisherError};
use crate::ipfs::car::CarWriter;
use crate::ipfs::store::DiskBlockStore;
use crate::ipfs::unixfs::{ImportOptions, import_path};
use crate::ipfs::{BlockStore, Cid, DAG_PB};
use crate::model::{PublisherKind, PublisherSpec, SpecConfig};

/// Publishes results into the node's block store; see the module docs.
#[derive(Debug, Clone)]
pub struct IpfsPublisher {
    /// Where results are imported and pinned.
    store: Arc<DiskBlockStore>,
    /// This node's gateway base URL, put in results so clients know where to fetch.
    gateway: Option<String>,
    /// Kubo RPC to push results to.
    kubo: Option<(reqwest::Client, reqwest::Url)>,
}

impl IpfsPublisher {
    /// A publisher into `store`; results name `gateway` when given and are pushed to `kubo` when given.
    pub fn new(
        store: Arc<DiskBlockStore>,
        gateway: Option<String>,
        kubo: Option<(reqwest::Client, reqwest::Url)>,
    ) -> Self {
        Self {
            store,
            gateway,
            kubo,
        }
    }

    /// Sends the DAG under `root` to Kubo's `dag/import` as a CAR.
    async fn push(&self, root: Cid) -> Result<(), PublisherError> {
        let Some((http, base)) = &self.kubo else {
            return Ok(());
        };
        let store = self.store.clone();
        let car = tokio::task::spawn_blocking(move || car_of(&*store, root))
            .await
            .map_err(|e| push_error(base, e.to_string()))?
            .map_err(|e| push_error(base, e))?;
        // Kubo's RPC takes files as multipart/form-data; one part is all dag/import needs.
        let boundary = format!("cod-{}", uuid::Uuid::new_v4().simple());
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"result.car\"\r\n\
             Content-Type: application/vnd.ipld.car\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&car);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut url = base.clone();
        url.set_path(&format!(
            "{}/api/v0/dag/import",
            base.path().trim_end_matches('/')
        ));
        url.set_query(Some("pin-roots=true"));
        let response = http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| push_error(base, crate::errors::chain(&e)))?;
        if !response.status().is_success() {
            return Err(push_error(
                base,
                format!("it answered {}", response.status()),
            ));
        }
        Ok(())
    }
}

fn push_error(base: &reqwest::Url, reason: String) -> PublisherError {
    PublisherError::Unsupported {
        kind: PublisherKind::Ipfs.as_str(),
        reason: format!(
            "pushing the result to Kubo RPC {base} failed: {reason}; check Ipfs.KuboRpc"
        ),
    }
}

/// The DAG under `root` as CAR bytes (results are small: stdout/stderr are capped).
fn car_of(store: &dyn BlockStore, root: Cid) -> Result<Vec<u8>, String> {
    let mut car = CarWriter::new(Vec::new(), &[root]).map_err(|e| e.to_string())?;
    let mut stack = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let data = store
            .get(&cid)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("block {cid} of the result is missing"))?;
        car.write(&cid, &data).map_err(|e| e.to_string())?;
        if cid.codec() == DAG_PB {
            let node = crate::ipfs::dagpb::PbNode::decode(&data).map_err(|e| e.to_string())?;
            stack.extend(node.links.into_iter().rev().map(|l| l.hash));
        }
    }
    car.finish().map_err(|e| e.to_string())
}

#[async_trait]
impl Publisher for IpfsPublisher {
    fn kind(&self) -> PublisherKind {
        PublisherKind::Ipfs
    }

    fn validate(&self, spec: &PublisherSpec) -> Result<(), PublisherError> {
        match spec {
            PublisherSpec::Ipfs => Ok(()),
            other => Err(PublisherError::Unsupported {
                kind: PublisherKind::Ipfs.as_str(),
                reason: format!("the task asks for the {} publisher", other.type_name()),
            }),
        }
    }

    async fn publish(
        &self,
        target: &PublishTarget,
        result_dir: &Path,
    ) -> Result<SpecConfig, PublisherError> {
        let store = self.store.clone();
        let dir = result_dir.to_owned();
        let name = format!("result of {}", target.execution_id);
        let execution_id = target.execution_id.clone();
        // Hashing and writing blocks is CPU and disk work; keep it off the runtime.
        let root = tokio::task::spawn_blocking(move || {
            let batch = store.batch();
            let root = import_path(&batch, &dir, &ImportOptions::default())
                .map_err(|e| crate::errors::chain(&e))?;
            batch
                .commit(Some((&root.cid, &name)))
                .map_err(|e| crate::errors::chain(&e))?;
            Ok::<_, String>(root.cid)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|reason| PublisherError::Pack {
            execution_id,
            dir: result_dir.to_owned(),
            source: std::io::Error::other(reason),
        })?;
        self.push(root).await?;
        let mut params = Map::new();
        params.insert("CID".into(), Value::String(root.to_string()));
        if let Some(gateway) = &self.gateway {
            params.insert("Gateway".into(), Value::String(gateway.clone()));
        }
        Ok(SpecConfig {
            kind: PublisherKind::Ipfs.as_str().to_owned(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::routing::post;

    use super::*;
    use crate::ipfs::car::CarReader;
    use crate::ipfs::store::DiskStoreConfig;
    use crate::model::{ExecutionId, JobId, NodeId};

    /// What the stand-in Kubo received: the Content-Type and the body.
    type Received = Arc<Mutex<Option<(String, Vec<u8>)>>>;

    #[tokio::test]
    async fn publishes_pins_and_pushes_a_car_to_kubo_rpc() {
        let data = tempfile::tempdir().expect("tmp");
        let store =
            Arc::new(DiskBlockStore::open(data.path(), DiskStoreConfig::default()).expect("store"));
        let result = tempfile::tempdir().expect("tmp");
        std::fs::write(result.path().join("stdout"), "hi\n").expect("write");
        std::fs::write(result.path().join("exitCode"), "0").expect("write");

        // A stand-in for Kubo's RPC that keeps what dag/import receives.
        let received: Received = Arc::default();
        let sink = received.clone();
        let app = Router::new().route(
            "/api/v0/dag/import",
            post(
                move |headers: axum::http::HeaderMap, body: bytes::Bytes| async move {
                    let kind = headers
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    *sink.lock().expect("lock") = Some((kind, body.to_vec()));
                    "{}"
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http =
            crate::ipfs::gateway::http_client(std::time::Duration::from_secs(5)).expect("client");

        let publisher = IpfsPublisher::new(
            store.clone(),
            Some("http://10.0.0.9:6001".into()),
            Some((http, url.parse().expect("url"))),
        );
        let target = PublishTarget {
            execution_id: ExecutionId::generate(),
            job_id: JobId::generate(),
            node_id: NodeId::default(),
            spec: crate::model::PublisherSpec::Ipfs,
        };
        let spec = publisher
            .publish(&target, result.path())
            .await
            .expect("published");
        assert_eq!(spec.kind, "ipfs");
        assert_eq!(spec.params["Gateway"], "http://10.0.0.9:6001");
        let cid: Cid = spec.params["CID"]
            .as_str()
            .expect("CID")
            .parse()
            .expect("a CID");
        assert!(store.has(&cid).expect("has"));
        assert!(
            store
                .pins()
                .expect("pins")
                .iter()
                .any(|(root, _)| *root == cid.to_string())
        );

        let (kind, body) = received.lock().expect("lock").take().expect("pushed");
        assert!(kind.starts_with("multipart/form-data; boundary="), "{kind}");
        let start = body
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part headers")
            + 4;
        let car = CarReader::new(&body[start..]).expect("a CAR");
        assert_eq!(car.roots(), &[cid]);
    }
}
