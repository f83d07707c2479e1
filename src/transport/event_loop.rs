//! STUB: replaced by the transport implementation.
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Client, Config, Event, Identity, TransportError};

/// Owns the swarm; run it on its own task.
#[derive(Debug)]
pub struct EventLoop {}

impl EventLoop {
    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}

pub(super) fn build(
    _identity: Identity,
    _config: Config,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), TransportError> {
    Err(TransportError::ShutDown)
}
