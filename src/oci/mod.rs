//! OCI images without a daemon: image references, the distribution (registry) client, the content-addressed
//! image store, safe layer unpacking and per-execution root filesystems. The `docker` executor
//! ([`crate::executor::oci`]) is their one user.
//!
//! The path of an image: [`reference::ImageRef`] → [`registry::Registry`] resolves the manifest for this node's
//! [`platform::Platform`] and streams verified blobs to disk → [`store::ImageStore`] keeps them by digest, indexed
//! in LMDB, and unpacks each layer once with [`unpack::apply_layer`] → [`rootfs::RootFs`] stacks the unpacked
//! layers into one execution's root filesystem.

pub mod platform;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;
