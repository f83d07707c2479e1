//! STUB: replaced by the transport implementation.
use tokio::sync::mpsc;

use super::{Event, Request, Response, TransportError};
use crate::model::NodeId;

/// A cloneable handle to the transport's event loop.
#[derive(Debug, Clone)]
pub struct Client {
    local_id: NodeId,
}

impl Client {
    /// This node's id.
    pub fn local_id(&self) -> &NodeId {
        &self.local_id
    }
    /// Sends `request` to `peer` and waits for its answer.
    pub async fn request(
        &self,
        peer: &NodeId,
        request: Request,
    ) -> Result<Response, TransportError> {
        let _ = (peer, request);
        Err(TransportError::ShutDown)
    }
    /// The addresses other nodes can dial, each ending in `/p2p/<id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<String>, TransportError> {
        Ok(vec![])
    }
    /// An in-process peer (a hybrid node's compute half): its requests arrive on this side's event stream and
    /// this side's requests to [`Client::local_id`] arrive on the returned stream. The in-process peer has the
    /// same id as this node.
    pub async fn attach_local(&self) -> Result<(Client, mpsc::Receiver<Event>), TransportError> {
        Err(TransportError::ShutDown)
    }
}
