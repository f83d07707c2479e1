//! STUB: replaced by the transport implementation.
use std::path::Path;

use super::TransportError;
use crate::model::NodeId;

/// A node's keypair.
#[derive(Debug, Clone)]
pub struct Identity {}

impl Identity {
    /// The node id derived from the public key.
    pub fn node_id(&self) -> NodeId {
        NodeId::default()
    }
}

/// Loads the key from `path`, creating it (mode 0600) on first start.
pub fn load_or_create_identity(path: &Path) -> Result<Identity, TransportError> {
    Err(TransportError::Identity {
        path: path.to_owned(),
        reason: "stub".into(),
    })
}
