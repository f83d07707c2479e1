//! A real orchestrator (LMDB in a tempdir, a libp2p transport with no listeners) behind the real API on
//! `127.0.0.1:0`, for the API's tests.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::model::{NodeInfo, NodeType};
use crate::orchestrator::{self, Orchestrator};
use crate::store::{self, Store};
use crate::transport::{self, Identity};

use super::ApiState;

/// A running API server; everything stops when it is dropped.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) orchestrator: Orchestrator,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts an orchestrator with no compute nodes and serves the API for it, open to all.
    pub(crate) async fn start() -> Self {
        Self::start_with_auth(crate::auth::Access::Open(crate::auth::OpenReason::Loopback)).await
    }

    /// Like [`TestServer::start`], with `auth` deciding who may call it.
    pub(crate) async fn start_with_auth(auth: crate::auth::Access) -> Self {
        // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &store::Config::default()).expect("store opens");
        let (client, events, event_loop) =
            transport::new(Identity::generate(), transport::Config::default()).expect("transport");
        let shutdown = CancellationToken::new();
        tokio::spawn(event_loop.run(shutdown.child_token()));
        let (orchestrator, runner) =
            Orchestrator::new(store, client, events, orchestrator::Config::default())
                .expect("orchestrator");
        tokio::spawn(runner.run(shutdown.child_token()));
        let node_id = orchestrator.node_id().clone();
        let state = ApiState {
            orchestrator: Some(orchestrator.clone()),
            compute: None,
            node_info: Arc::new(move || NodeInfo {
                node_id: node_id.clone(),
                node_type: NodeType::Requester,
                ..NodeInfo::default()
            }),
            config: serde_json::json!({"API": {"Port": 0}, "Orchestrator": {"Enabled": true}}),
            auth: Arc::new(auth),
            metrics: true,
            #[cfg(feature = "storage-s3")]
            result_signer: None,
        };
        let base = spawn_server(state, shutdown.child_token()).await;
        Self {
            base,
            http: http_client(),
            orchestrator,
            shutdown,
            _dir: dir,
        }
    }

    /// The URL of `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves `state` on a fresh loopback port until `shutdown`; returns the base URL.
pub(crate) async fn spawn_server(state: ApiState, shutdown: CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(super::serve(listener, None, state, shutdown));
    format!("http://{addr}")
}

/// A client that does not follow redirects, so tests see them.
pub(crate) fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// A valid batch wasm job named `name`. With `queue_timeout` 0 it fails at once (no compute node is
/// connected); with more it waits in `Queued`.
pub(crate) fn wasm_job(name: &str, queue_timeout: i64) -> serde_json::Value {
    serde_json::json!({
        "Name": name,
        "Type": "batch",
        "Count": 1,
        "Labels": {"team": name},
        "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
            "Timeouts": {"QueueTimeout": queue_timeout}
        }]
    })
}

impl TestServer {
    /// Submits `job` with PUT and returns its id.
    pub(crate) async fn submit(&self, job: serde_json::Value) -> String {
        let response = self
            .http
            .put(self.url("/api/v1/orchestrator/jobs"))
            .json(&serde_json::json!({"Job": job}))
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        body["JobID"].as_str().expect("JobID").to_owned()
    }

    /// Stops job `id` with DELETE (`query` after `?`, `body` as JSON when given) and returns the status and
    /// JSON body.
    pub(crate) async fn stop(
        &self,
        id: &str,
        query: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut path = format!("/api/v1/orchestrator/jobs/{id}");
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let mut request = self.http.delete(self.url(&path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("delete");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json body"))
    }

    /// GETs `path` and returns the status and JSON body.
    pub(crate) async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.http.get(self.url(path)).send().await.expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json body"))
    }
}
