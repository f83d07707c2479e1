//! The `docker` engine: OCI images from any registry ([`crate::oci`]), run through youki's libcontainer in a
//! single-threaded helper process per container ([`runtime`]).
//!
//! - [`engine`]: the [`crate::executor::Executor`] for `docker` tasks (pull, root filesystem, network, run).
//! - [`runtime`]: one container in, one exit out, through the helper process.
//! - [`netns`]: network namespaces the node makes for containers.
//! - [`egress`]: the `HTTP` network mode's allow-list proxy.
//! - [`gpu`]: what a container gets for the GPUs it holds (device nodes, driver libraries, environment).
//! - `stream`: stdout and stderr through pipes the node drains, capped while the container runs.

pub mod egress;
pub mod engine;
pub mod gpu;
pub mod netns;
pub mod runtime;
mod stream;

pub use engine::{OciConfig, OciExecutor, OciStartError};
pub use runtime::IdMap;
