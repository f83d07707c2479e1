//! Cod: compute over data on edge fleets, Bacalhau-compatible.
//!
//! # Layout
//! - [`model`]: Bacalhau's wire types (Job, Task, Execution, NodeInfo…) and validation; no I/O.
//! - [`store`]: LMDB (heed) tables behind an async facade; every state transition is one write transaction.
//! - [`transport`]: libp2p request-response between orchestrators and compute nodes (versioned CBOR).
//! - [`executor`], [`storage`], [`publisher`]: the extension points (engines, input sources, result
//!   destinations), one trait each, one file per backend.
//! - `s3` (feature `storage-s3`): S3 addressing, SigV4 signing and requests, shared by the `s3` source, the
//!   `s3` publisher and the orchestrator's pre-signed result URLs (as `oci` serves the docker engine).
//! - [`outbox`]: durable, acknowledged, sequence-numbered messages between the two roles.
//! - `orchestrator` (feature `orchestrator`; edge builds leave it out): job intake, scheduling, node registry,
//!   execution tracking, and the API's `/api/v1/orchestrator/*` endpoints that serve them.
//! - [`compute`]: bidding, the execution state machine, the run loop (inputs → executor → publisher), and
//!   the node's input cache (by content id) and result cache (opt-in reuse of finished results).
//! - [`gpu`]: finding the node's NVIDIA GPUs (NVML with feature `gpu`, `nvidia-smi`, procfs, Tegra), advertising
//!   them and allocating them to executions; the docker engine exposes the ones a run holds.
//! - [`api`]: the Bacalhau v1 REST API; [`auth`]: who may call it (users, capabilities, the api-token file).
//! - [`node`]: the composition root that wires a node from its config.
//! - [`config`]: the node's configuration (defaults < file < `COD_*` < flags), validated before start.
//! - [`metrics`]: Prometheus `/metrics` (event counters, latency histograms, the text format).
//! - [`telemetry`]: logging and the panic hook; [`errors`]: error text for people.
//! - [`cli`]: the `cod` command line.
//!
//! # The path of a job
//! `PUT /api/v1/orchestrator/jobs` → [`api`] → `orchestrator` validates, stores job + evaluation + history in
//! one transaction, schedules executions on ranked nodes and writes `AskForBid` messages to its durable outbox
//! → [`transport`] → [`compute`] bids, stores the execution, reuses a kept result if the job opted in, else
//! prepares inputs ([`storage`], through the input cache), runs it ([`executor`]), publishes the result
//! ([`publisher`]) and reports through its own outbox → the orchestrator
//! marks the execution and the job `Completed` → `cod job get` downloads the published result.
//!
//! # Dependency rule
//! `model` depends on nothing; `store`, `transport` and the backends depend only on `model`; `orchestrator`
//! and `compute` use them through handles and traits; `api` uses orchestrator handles; `node` wires everything;
//! only `main` and `cli` reach `node`.

#[cfg(not(any(feature = "orchestrator", feature = "compute")))]
compile_error!("cod needs at least one role: enable the `orchestrator` or the `compute` feature");

/// The Cargo features this binary was built with (shown by `cod version`).
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "orchestrator")]
    "orchestrator",
    #[cfg(feature = "client")]
    "client",
    #[cfg(feature = "compute")]
    "compute",
    #[cfg(feature = "executor-wasm")]
    "executor-wasm",
    #[cfg(feature = "executor-oci")]
    "executor-oci",
    #[cfg(feature = "storage-url")]
    "storage-url",
    #[cfg(feature = "storage-s3")]
    "storage-s3",
    #[cfg(feature = "ipfs")]
    "ipfs",
    #[cfg(feature = "tls-self-signed")]
    "tls-self-signed",
    #[cfg(feature = "gpu")]
    "gpu",
];

pub mod api;
pub mod auth;
pub mod cli;
pub mod compute;
pub mod config;
pub mod errors;
pub mod executor;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
#[cfg(feature = "ipfs")]
pub mod ipfs;
// Not behind `compute`: the compute module (and its caches) is compiled in every build.
mod keyed;
pub mod metrics;
pub mod model;
pub mod node;
#[cfg(feature = "executor-oci")]
pub mod oci;
// Only an orchestrator runs it: edge compute builds leave it (and its API routes) out.
#[cfg(feature = "orchestrator")]
pub mod orchestrator;
pub mod outbox;
pub mod publisher;
#[cfg(feature = "storage-s3")]
pub mod s3;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod transport;
