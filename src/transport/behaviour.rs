//! The libp2p behaviour of a node: the request-response protocol that carries all of Cod's messages, plus
//! identify (so peers learn each other's agent version and addresses), ping (so a dead connection is noticed
//! and closed, which makes a compute node redial) and raw streams (bitswap, which IPFS peers speak on the same
//! connections and identity).

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, ping, request_response};

use super::codec::{Codec, PROTOCOL};

/// Identify's protocol-version string: peers with a different one are a different network.
pub(super) const IDENTIFY_PROTOCOL: &str = "/cod/id/1";

/// Request-response streams per connection, inbound and outbound together. Deliveries ride the link and
/// batch (one `Deliver` carries many messages), heartbeats are periodic, so a few streams suffice; the cap
/// also bounds what one peer can make us buffer: each stream may hold one frame of up to `MAX_MESSAGE_BYTES`.
const MAX_CONCURRENT_STREAMS: usize = 16;

/// The sub-behaviours, combined by the derive into one `NetworkBehaviour` whose events are [`BehaviourEvent`].
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Cod's messages ([`super::Request`] / [`super::Response`]).
    pub(super) request_response: request_response::Behaviour<Codec>,
    /// Exchanges agent version and listen addresses with each peer.
    pub(super) identify: identify::Behaviour,
    /// Liveness of each connection; failures close it (see the event loop).
    pub(super) ping: ping::Behaviour,
    /// Outbound raw protocol streams handed out through [`super::Streams`] (bitswap).
    pub(super) stream: libp2p_stream::Behaviour,
    /// Inbound raw protocol streams, queued (see [`super::inbound`]).
    pub(super) inbound: super::inbound::Behaviour,
}

// === impl Behaviour ===

impl Behaviour {
    /// Builds the behaviour for `keypair`, failing requests that get no answer within `request_timeout`.
    pub(super) fn new(keypair: &Keypair, request_timeout: Duration) -> Self {
        let rr_config = request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        let identify_config = identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), keypair.public())
            .with_agent_version(format!("cod/{}", env!("CARGO_PKG_VERSION")));
        Self {
            request_response: request_response::Behaviour::with_codec(
                Codec,
                [(PROTOCOL, request_response::ProtocolSupport::Full)],
                rr_config,
            ),
            identify: identify::Behaviour::new(identify_config),
            ping: ping::Behaviour::new(ping::Config::new()),
            stream: libp2p_stream::Behaviour::new(),
            inbound: super::inbound::Behaviour::new(),
        }
    }
}
