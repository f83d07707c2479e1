//! Process-level tests: real `cod` processes on loopback, driven through the REST API and the CLI.

mod admission;
mod auth;
mod boards;
mod cache;
mod cli;
mod cluster;
#[cfg(feature = "executor-oci")]
mod container;
mod data;
#[cfg(feature = "executor-oci")]
mod docker;
mod durability;
// Only in a build without the orchestrator: the edge flavor's own behaviour.
#[cfg(not(feature = "orchestrator"))]
mod edge;
mod fixtures;
// The simulated fleet raises the open-file limit through the orchestrator's cli::fd_limit.
#[cfg(feature = "orchestrator")]
mod fleet;
mod gpu;
#[cfg(feature = "executor-oci")]
mod gpu_container;
mod harness;
mod hostile;
mod hybrid;
#[cfg(feature = "ipfs")]
mod ipfs;
#[cfg(feature = "ipfs")]
mod ipfs_cids;
mod jobtypes;
#[cfg(feature = "ipfs")]
mod kubo;
mod metrics;
#[cfg(feature = "executor-oci")]
mod oci_pull;
mod policy;
#[cfg(feature = "executor-oci")]
mod registry;
mod resilience;
#[cfg(feature = "storage-s3")]
mod s3;
mod tarball;
