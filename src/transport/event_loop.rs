//! The task that owns the libp2p `Swarm`: it turns swarm events into [`Event`]s, client [`Command`]s into
//! swarm calls, keeps compute nodes dialing their orchestrators, and carries in-process requests between the
//! two halves of a hybrid node.
//!
//! Invariants: nothing here blocks or awaits inside a handler, so one slow consumer never stalls the swarm
//! (which would also stall pings and time out every connection). Everything queued is bounded:
//! - events go through a bounded channel; when it is full they wait in a small overflow queue, and inbound
//!   requests beyond [`OVERFLOW_LIMIT`] are refused (the peer sees a failed request and resends from its
//!   outbox), while connection events, which must not be lost, are queued up to [`OVERFLOW_HARD_LIMIT`];
//! - answers awaited from consumers are dropped after the request timeout (the peer has given up by then);
//! - each orchestrator address has at most one dial or redial timer in flight.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{self, Boxed};
use libp2p::core::upgrade;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, Transport, identify, noise, ping, yamux};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

use super::behaviour::{Behaviour, BehaviourEvent, IDENTIFY_PROTOCOL};
use super::client::{Command, Origin};
use super::link::{self, Link};
use super::refusals::{Refusals, Report};
use super::tcp;
use super::{
    Client, Config, Event, Identity, JoinToken, Request, Response, Streams, SwarmKey,
    TransportError,
};
use crate::model::NodeId;

/// Capacity of each event channel (the node's and the in-process peer's).
const EVENT_CAPACITY: usize = 1024;

/// Capacity of the command channel; clients wait for room when the loop falls behind.
const COMMAND_CAPACITY: usize = 256;

/// Inbound requests held back while a full event channel drains; beyond this they are refused.
const OVERFLOW_LIMIT: usize = 256;

/// Events of any kind held back while a full event channel drains. Only connection events can get past
/// [`OVERFLOW_LIMIT`]; reaching this means the consumer is stuck, and the loop drops events (logged as errors)
/// rather than grow without bound.
const OVERFLOW_HARD_LIMIT: usize = 4 * EVENT_CAPACITY;

/// [`DialTarget::kind`] of orchestrators.
const ORCHESTRATOR: &str = "orchestrator";
/// [`DialTarget::kind`] of IPFS peers.
const IPFS_PEER: &str = "ipfs peer";

/// The shortest redial delay, whatever the config says.
const BACKOFF_FLOOR: Duration = Duration::from_millis(10);

/// A pending answer from a consumer: the libp2p channel to answer on, if the answer is for a remote peer.
type ReplyFuture = BoxFuture<'static, Option<(ResponseChannel<Response>, Response)>>;

/// Owns the swarm; run it on its own task.
pub struct EventLoop {
    /// The libp2p node. Only this loop touches it (no `Mutex<Swarm>`).
    swarm: Swarm<Behaviour>,
    /// Our own id; also the id of the in-process peer.
    local_id: NodeId,
    /// Commands from every [`Client`] (the node's and the in-process peer's).
    commands: mpsc::Receiver<Command>,
    /// False once every client is gone, so the loop stops polling a closed channel but keeps serving peers.
    commands_open: bool,
    /// The node's event stream.
    main: EventSink,
    /// The in-process peer, if one is attached.
    attached: Option<Attachment>,
    /// Generation of the last attachment, so stale in-process handles are told apart.
    last_generation: u64,
    /// Orchestrator and IPFS peer addresses this node keeps a connection to.
    targets: Vec<DialTarget>,
    /// Peers configured only as IPFS peers: their connections raise no [`Event`]s (they are not Cod nodes).
    ipfs_only: HashSet<PeerId>,
    /// Publishes the peers with at least one open connection, for [`Client::wait_connected`].
    connected: watch::Sender<BTreeSet<NodeId>>,
    /// Redial timers, each yielding the index of its target in `targets`.
    redials: FuturesUnordered<BoxFuture<'static, usize>>,
    /// Outbound requests awaiting an answer from the network.
    outbound: HashMap<OutboundRequestId, PendingOutbound>,
    /// Answers awaited from consumers (each bounded by `request_timeout`).
    replies: FuturesUnordered<ReplyFuture>,
    /// Publishes the current listen addresses to every [`Client`].
    listen_addrs: watch::Sender<Vec<String>>,
    /// How long a consumer may take to answer an in-process or inbound request.
    request_timeout: Duration,
    /// First redial delay.
    min_backoff: Duration,
    /// Longest redial delay.
    max_backoff: Duration,
    /// Proves the join token in outgoing handshakes (compute nodes that have one).
    join_token: Option<JoinToken>,
    /// Fingerprint of the private-network key, for dial error logs (a mismatched key looks like a broken
    /// handshake, so the log says which key this node uses).
    swarm_key_fingerprint: Option<String>,
    /// The long-lived stream to each peer that has one ([`link`]): Deliver requests go there.
    links: HashMap<PeerId, Link>,
    /// Publishes the peers in `links`.
    linked: watch::Sender<BTreeSet<NodeId>>,
    /// Generation of the last link started.
    last_link: u64,
    /// Links that ended, reported by their tasks.
    links_closed: mpsc::UnboundedReceiver<link::Closed>,
    /// The sender the link tasks report on.
    links_closed_tx: mpsc::UnboundedSender<link::Closed>,
    /// Links peers opened to us.
    links_inbound: mpsc::Receiver<(PeerId, libp2p::Stream)>,
    /// Links we are opening (to orchestrators), each yielding the stream or why there is none.
    links_opening: FuturesUnordered<BoxFuture<'static, (PeerId, Result<libp2p::Stream, String>)>>,
    /// Opens outbound streams (links).
    stream_control: libp2p_stream::Control,
}

/// An outbound request's caller.
struct PendingOutbound {
    /// The receiver, for the error message.
    peer: NodeId,
    /// Where the answer goes.
    reply: oneshot::Sender<Result<Response, TransportError>>,
}

/// The in-process peer of a hybrid node.
struct Attachment {
    /// Which attachment this is (see [`Origin::Local`]).
    generation: u64,
    /// Its event stream.
    sink: EventSink,
}

/// One address a node keeps dialing: an orchestrator (compute nodes) or an IPFS peer.
struct DialTarget {
    /// What is dialled, for logs.
    kind: &'static str,
    /// The address without its `/p2p/<id>` suffix.
    addr: Multiaddr,
    /// The expected peer, when the configured address named one; the dial then fails on a different key.
    peer: Option<PeerId>,
    /// Where this target stands.
    state: TargetState,
    /// The delay before the next redial; doubles per failure up to `max_backoff`, reset on success.
    backoff: Duration,
}

/// The dial state of a [`DialTarget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetState {
    /// A redial timer is pending.
    Waiting,
    /// A dial is under way on this connection.
    Dialing(ConnectionId),
    /// Connected on this connection; redial when it closes.
    Connected(ConnectionId),
}

/// A bounded event channel plus the overflow queue that keeps the loop from awaiting a slow consumer.
struct EventSink {
    /// The consumer's channel.
    tx: mpsc::Sender<Event>,
    /// Events waiting for room in `tx`, in order (anything new queues behind them to keep the order).
    overflow: VecDeque<Event>,
    /// Names the stream in logs.
    name: &'static str,
    /// Paces the log lines of refused requests.
    refusals: Refusals,
}

// === impl EventSink ===

impl EventSink {
    fn new(tx: mpsc::Sender<Event>, name: &'static str) -> Self {
        Self {
            tx,
            overflow: VecDeque::new(),
            name,
            refusals: Refusals::default(),
        }
    }

    /// Queues `event` without waiting. Refused requests are dropped, which drops their reply sender: the
    /// requester sees a failure.
    fn emit(&mut self, event: Event) {
        let event = if self.overflow.is_empty() {
            match self.tx.try_send(event) {
                Ok(()) => return,
                Err(TrySendError::Closed(event)) => {
                    trace!(
                        stream = self.name,
                        kind = event_kind(&event),
                        "event stream closed; dropping event"
                    );
                    return;
                }
                Err(TrySendError::Full(event)) => event,
            }
        } else {
            event
        };
        let is_request = matches!(event, Event::Request { .. });
        if is_request && self.overflow.len() >= OVERFLOW_LIMIT {
            match self.refusals.refused(std::time::Instant::now()) {
                Report::First => warn!(
                    stream = self.name,
                    "event consumer is behind; refusing inbound requests (peers resend them)"
                ),
                Report::Summary(refused) => warn!(
                    stream = self.name,
                    refused,
                    "event consumer is still behind; inbound requests refused since the last report"
                ),
                Report::Counted => {}
            }
            return;
        }
        if self.overflow.len() >= OVERFLOW_HARD_LIMIT {
            error!(
                stream = self.name,
                kind = event_kind(&event),
                "event consumer is stuck; dropping an event"
            );
            return;
        }
        self.overflow.push_back(event);
    }

    /// Moves the oldest held-back event into the channel once there is room (`permit`).
    fn flush_one(&mut self, permit: Result<mpsc::OwnedPermit<Event>, mpsc::error::SendError<()>>) {
        match permit {
            Ok(permit) => {
                if let Some(event) = self.overflow.pop_front() {
                    permit.send(event);
                }
                if self.overflow.is_empty()
                    && let Some(refused) = self.refusals.caught_up()
                {
                    info!(
                        stream = self.name,
                        refused,
                        "event consumer caught up; inbound requests refused since the last report"
                    );
                }
            }
            // The consumer is gone; nobody will read these.
            Err(_) => self.overflow.clear(),
        }
    }
}

// === impl DialTarget ===

impl DialTarget {
    /// Parses a configured orchestrator address, splitting off its `/p2p/<id>`.
    fn parse(
        text: &str,
        kind: &'static str,
        min_backoff: Duration,
    ) -> Result<Self, TransportError> {
        let mut addr = parse_tcp_addr(text, true)?;
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                addr.pop();
                Some(peer)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            addr,
            peer,
            state: TargetState::Waiting,
            backoff: min_backoff,
        })
    }

    /// The address as configured, for logs.
    fn display_addr(&self) -> Multiaddr {
        match self.peer {
            Some(peer) => self.addr.clone().with(Protocol::P2p(peer)),
            None => self.addr.clone(),
        }
    }
}

/// Parses `text` as an `/ip4|ip6/<host>/tcp/<port>` multiaddr (plus `/p2p/<id>` when `allow_peer`): the only
/// transport compiled in. Refusing anything else here, at startup, beats failing every dial later.
fn parse_tcp_addr(text: &str, allow_peer: bool) -> Result<Multiaddr, TransportError> {
    let bad = |reason: String| TransportError::BadAddress {
        addr: text.to_owned(),
        reason,
    };
    let addr: Multiaddr = text.parse().map_err(|e| bad(format!("{e}")))?;
    let mut parts = addr.iter();
    let ip_ok = matches!(parts.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_)));
    let tcp_ok = matches!(parts.next(), Some(Protocol::Tcp(_)));
    let rest_ok = match parts.next() {
        None => true,
        Some(Protocol::P2p(_)) => allow_peer && parts.next().is_none(),
        Some(_) => false,
    };
    if ip_ok && tcp_ok && rest_ok {
        Ok(addr)
    } else if allow_peer {
        Err(bad("expected /ip4|ip6/<address>/tcp/<port>[/p2p/<peer id>] (DNS is not supported by this build)".into()))
    } else {
        Err(bad(
            "expected /ip4|ip6/<address>/tcp/<port> (DNS is not supported by this build)".into(),
        ))
    }
}

/// Builds the swarm, starts listening, and wires the client, event stream and loop together.
///
/// Must run inside a Tokio runtime: listening binds its sockets right away, so a taken port is reported here
/// as [`TransportError::Listen`] rather than later.
pub(super) fn build(
    identity: Identity,
    config: Config,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), TransportError> {
    let listen = config
        .listen
        .iter()
        .map(|text| parse_tcp_addr(text, false))
        .collect::<Result<Vec<_>, _>>()?;
    let min_backoff = config.min_backoff.max(BACKOFF_FLOOR);
    let mut targets = config
        .orchestrators
        .iter()
        .map(|text| DialTarget::parse(text, ORCHESTRATOR, min_backoff))
        .collect::<Result<Vec<_>, _>>()?;
    let orchestrator_peers: HashSet<PeerId> = targets.iter().filter_map(|t| t.peer).collect();
    let mut ipfs_only = HashSet::new();
    for text in &config.ipfs_peers {
        let target = DialTarget::parse(text, IPFS_PEER, min_backoff)?;
        // Without the peer id there is no telling an IPFS peer's connection from a Cod node's, and bitswap
        // needs the id to open streams.
        let Some(peer) = target.peer else {
            return Err(TransportError::BadAddress {
                addr: text.clone(),
                reason: "an IPFS peer address must end in /p2p/<peer id>".into(),
            });
        };
        if !orchestrator_peers.contains(&peer) {
            ipfs_only.insert(peer);
        }
        targets.push(target);
    }

    let request_timeout = config.request_timeout;
    let swarm_key = config.swarm_key;
    let builder = SwarmBuilder::with_existing_identity(identity.keypair().clone())
        .with_tokio()
        .with_other_transport(|key| {
            tcp_transport(key, swarm_key)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        })
        .map_err(|e| TransportError::Identity {
            path: identity.path().to_owned(),
            reason: format!("cannot derive the noise handshake key: {e}"),
        })?;
    // Our behaviour constructor cannot fail (the error type is Infallible).
    let Ok(builder) = builder.with_behaviour(|key| Behaviour::new(key, request_timeout));
    let mut swarm = builder
        .with_swarm_config(|c| {
            // Lazy negotiation: an opening side with one protocol to offer sends its first frame together
            // with the proposal instead of waiting a round trip for the confirmation (the listener side,
            // Kubo included, accepts both).
            c.with_idle_connection_timeout(config.idle_timeout)
                .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
        })
        .build();

    // Our TCP transport binds inside `listen_on` without SO_REUSEPORT, so a port another process listens on
    // (IPv4 or IPv6) fails here.
    for (text, addr) in config.listen.iter().zip(listen) {
        swarm.listen_on(addr).map_err(|e| TransportError::Listen {
            addr: text.clone(),
            // libp2p's error prints nothing for `Other`; the io error is the reason.
            reason: match e {
                transport::TransportError::Other(io) => io.to_string(),
                unsupported => unsupported.to_string(),
            },
        })?;
    }

    let local_id = identity.node_id();
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CAPACITY);
    let (listen_tx, listen_rx) = watch::channel(Vec::new());
    let (connected_tx, connected_rx) = watch::channel(BTreeSet::new());
    let (linked_tx, linked_rx) = watch::channel(BTreeSet::new());
    let registry = swarm.behaviour().inbound.registry();
    let (links_inbound_tx, links_inbound) = mpsc::channel(super::inbound::QUEUE);
    super::inbound::lock(&registry).insert(
        libp2p::StreamProtocol::new(link::PROTOCOL),
        links_inbound_tx,
    );
    let stream_control = swarm.behaviour().stream.new_control();
    let streams = Streams::new(stream_control.clone(), registry, connected_rx.clone());
    let (links_closed_tx, links_closed) = mpsc::unbounded_channel();
    let listen_spec: Arc<str> = config.listen.join(",").into();
    let client = Client::new(
        local_id.clone(),
        command_tx,
        listen_rx,
        listen_spec,
        request_timeout,
        streams,
        connected_rx,
        linked_rx,
    );
    let event_loop = EventLoop {
        swarm,
        local_id,
        commands: command_rx,
        commands_open: true,
        main: EventSink::new(event_tx, "node"),
        attached: None,
        last_generation: 0,
        targets,
        ipfs_only,
        connected: connected_tx,
        redials: FuturesUnordered::new(),
        outbound: HashMap::new(),
        replies: FuturesUnordered::new(),
        listen_addrs: listen_tx,
        request_timeout,
        // A zero backoff would never grow and would redial in a tight loop.
        min_backoff: config.min_backoff.max(BACKOFF_FLOOR),
        max_backoff: config.max_backoff.max(BACKOFF_FLOOR),
        join_token: config.join_token,
        swarm_key_fingerprint: swarm_key.map(|k| k.fingerprint()),
        links: HashMap::new(),
        linked: linked_tx,
        last_link: 0,
        links_closed,
        links_closed_tx,
        links_inbound,
        links_opening: FuturesUnordered::new(),
        stream_control,
    };
    if let Some(fingerprint) = &event_loop.swarm_key_fingerprint {
        info!(fingerprint = %fingerprint, "private network: only peers with the same swarm key can connect");
    }
    Ok((client, event_rx, event_loop))
}

/// TCP ([`tcp::Transport`]) + Noise + Yamux, as `SwarmBuilder::with_tcp` builds it, with the private-network handshake (pnet)
/// between TCP and Noise when a swarm key is set. Boxed so both shapes are one type.
fn tcp_transport(
    key: &libp2p::identity::Keypair,
    swarm_key: Option<SwarmKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(key)?;
    let tcp = tcp::Transport::default();
    Ok(match swarm_key {
        None => tcp
            .upgrade(upgrade::Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
            .boxed(),
        Some(swarm_key) => {
            let pnet = PnetConfig::new(swarm_key.psk());
            tcp.and_then(move |socket, _| pnet.handshake(socket))
                .upgrade(upgrade::Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
                .boxed()
        }
    })
}

// === impl EventLoop ===

impl EventLoop {
    /// Runs until `shutdown` is cancelled. Dropping the swarm on return closes every connection; pending
    /// client calls then fail with [`TransportError::ShutDown`].
    pub async fn run(mut self, shutdown: CancellationToken) {
        for idx in 0..self.targets.len() {
            self.dial(idx);
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => self.commands_open = false,
                },
                Some(done) = self.replies.next(), if !self.replies.is_empty() => {
                    if let Some((channel, response)) = done {
                        self.send_response(channel, response);
                    }
                }
                Some(idx) = self.redials.next(), if !self.redials.is_empty() => self.dial(idx),
                permit = self.main.tx.clone().reserve_owned(), if !self.main.overflow.is_empty() => {
                    self.main.flush_one(permit);
                }
                permit = reserve_attached(self.attached.as_ref()),
                    if self.attached.as_ref().is_some_and(|a| !a.sink.overflow.is_empty()) =>
                {
                    if let Some(attached) = self.attached.as_mut() {
                        attached.sink.flush_one(permit);
                    }
                }
                () = attached_closed(self.attached.as_ref()), if self.attached.is_some() => self.detach(),
                Some((peer, stream)) = self.links_inbound.recv() => self.start_link(peer, stream),
                Some((peer, opened)) = self.links_opening.next(), if !self.links_opening.is_empty() => {
                    match opened {
                        Ok(stream) => self.start_link(peer, stream),
                        // An older peer without links: everything stays on request-response.
                        Err(e) => debug!(peer = %peer, error = %e, "no link; requests go one stream each"),
                    }
                }
                Some(closed) = self.links_closed.recv() => {
                    if self.links.get(&closed.peer).is_some_and(|l| l.generation == closed.generation) {
                        self.links.remove(&closed.peer);
                        self.links_changed(&closed.peer);
                    }
                }
            }
        }
        info!(peer = %self.local_id, "transport stopped");
    }

    /// Dials target `idx` (first dial or a redial after its timer fired).
    fn dial(&mut self, idx: usize) {
        let Some(target) = self.targets.get_mut(idx) else {
            return;
        };
        if target.state != TargetState::Waiting {
            return;
        }
        let opts = match target.peer {
            // `Always`: the target keeps its own connection even if the peer is reachable some other way, so
            // its close (and thus its redial) is tracked by connection id.
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![target.addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id()
                .address(target.addr.clone())
                .build(),
        };
        let connection_id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                debug!(addr = %target.display_addr(), kind = target.kind, "dialing");
                target.state = TargetState::Dialing(connection_id);
            }
            Err(e) => {
                let delay = self.schedule_redial(idx);
                let target = &self.targets[idx];
                warn!(addr = %target.display_addr(), kind = target.kind, error = %e, retry_in = ?delay, "cannot dial");
            }
        }
    }

    /// Starts target `idx`'s redial timer and doubles its backoff; returns the delay.
    fn schedule_redial(&mut self, idx: usize) -> Duration {
        let max_backoff = self.max_backoff;
        let target = &mut self.targets[idx];
        let delay = target.backoff;
        target.backoff = target.backoff.saturating_mul(2).min(max_backoff);
        target.state = TargetState::Waiting;
        self.redials.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            idx
        }));
        delay
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let address = self.with_local_peer(address);
                info!(addr = %address, "listening");
                let text = address.to_string();
                self.listen_addrs.send_if_modified(|addrs| {
                    let new = !addrs.contains(&text);
                    if new {
                        addrs.push(text);
                    }
                    new
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let address = self.with_local_peer(address);
                info!(addr = %address, "no longer listening");
                self.forget_listen_addr(&address);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                if let Err(e) = reason {
                    warn!(error = %e, "listener closed");
                }
                for address in addresses {
                    let address = self.with_local_peer(address);
                    self.forget_listen_addr(&address);
                }
            }
            SwarmEvent::ListenerError { error, .. } => warn!(error = %error, "listener error"),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                if let Some(target) = self
                    .targets
                    .iter_mut()
                    .find(|t| t.state == TargetState::Dialing(connection_id))
                {
                    target.state = TargetState::Connected(connection_id);
                    target.backoff = self.min_backoff;
                    // Compute nodes open the link to each orchestrator they connect to.
                    if target.kind == ORCHESTRATOR {
                        self.open_link(peer_id);
                    }
                }
                if num_established.get() == 1 {
                    let id = node_id(&peer_id);
                    self.connected.send_modify(|c| {
                        c.insert(id.clone());
                    });
                    if self.ipfs_only.contains(&peer_id) {
                        info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "IPFS peer connected");
                    } else {
                        info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                        self.main.emit(Event::PeerConnected(id));
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(idx) = self
                    .targets
                    .iter()
                    .position(|t| t.state == TargetState::Connected(connection_id))
                {
                    let delay = self.schedule_redial(idx);
                    let kind = self.targets[idx].kind;
                    info!(peer = %peer_id, kind, retry_in = ?delay, "connection closed; redialing");
                }
                if num_established == 0 {
                    if self.links.remove(&peer_id).is_some() {
                        self.links_changed(&peer_id);
                    }
                    let id = node_id(&peer_id);
                    self.connected.send_modify(|c| {
                        c.remove(&id);
                    });
                    match cause {
                        Some(e) => info!(peer = %peer_id, cause = %e, "peer disconnected"),
                        None => info!(peer = %peer_id, "peer disconnected"),
                    }
                    if !self.ipfs_only.contains(&peer_id) {
                        self.main.emit(Event::PeerDisconnected(id));
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(idx) = self
                    .targets
                    .iter()
                    .position(|t| t.state == TargetState::Dialing(connection_id))
                {
                    let delay = self.schedule_redial(idx);
                    // A private-network mismatch (different keys, or a key on one side only) shows up as a
                    // failed handshake, never as a clear refusal: pnet has no way to say "wrong key".
                    let private_network = self.swarm_key_fingerprint.as_deref().unwrap_or("off");
                    warn!(
                        addr = %self.targets[idx].display_addr(),
                        kind = self.targets[idx].kind,
                        error = %error,
                        private_network,
                        retry_in = ?delay,
                        "cannot connect (a handshake failure can mean the two nodes do not share the same \
                         Transport.SwarmKeyFile)"
                    );
                } else {
                    debug!(peer = ?peer_id, error = %error, "outgoing connection failed");
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(addr = %send_back_addr, error = %error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(event)) => {
                self.on_request_response(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            })) => match result {
                Ok(rtt) => trace!(peer = %peer, rtt = ?rtt, "ping"),
                // A peer without ping is odd but harmless; keep the connection.
                Err(ping::Failure::Unsupported) => {
                    debug!(peer = %peer, "peer does not support ping")
                }
                // A silent NAT drop or dead link: close now so a compute node redials instead of waiting for
                // the idle timeout.
                Err(e) => {
                    warn!(peer = %peer, error = %e, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // IPFS peers (Kubo says "ipfs/0.1.0") are expected to differ; they only speak bitswap with us.
                if info.protocol_version != IDENTIFY_PROTOCOL && !self.ipfs_only.contains(&peer_id)
                {
                    warn!(peer = %peer_id, protocol = %info.protocol_version, "peer speaks a different protocol");
                }
                debug!(peer = %peer_id, agent = %info.agent_version, "peer identified");
            }
            other => trace!(event = ?other, "swarm event"),
        }
    }

    /// `address` with our `/p2p/<id>` appended, the form other nodes dial.
    fn with_local_peer(&self, address: Multiaddr) -> Multiaddr {
        address
            .with_p2p(*self.swarm.local_peer_id())
            .unwrap_or_else(|a| a)
    }

    fn forget_listen_addr(&mut self, address: &Multiaddr) {
        let text = address.to_string();
        self.listen_addrs.send_if_modified(|addrs| {
            let before = addrs.len();
            addrs.retain(|a| *a != text);
            addrs.len() != before
        });
    }

    fn on_request_response(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    debug!(peer = %peer, request_id = %request_id, kind = request_kind(&request), "inbound request");
                    let (reply, answer) = oneshot::channel();
                    self.main.emit(Event::Request {
                        peer: node_id(&peer),
                        request: Box::new(request),
                        reply,
                    });
                    let timeout = self.request_timeout;
                    self.replies.push(Box::pin(async move {
                        match tokio::time::timeout(timeout, answer).await {
                            Ok(Ok(response)) => Some((channel, response)),
                            // Dropping `channel` without answering makes the peer see a failed request.
                            Ok(Err(_)) => {
                                debug!(peer = %peer, request_id = %request_id, "request dropped unanswered");
                                None
                            }
                            Err(_) => {
                                debug!(peer = %peer, request_id = %request_id, "request not answered in time");
                                None
                            }
                        }
                    }));
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    debug!(peer = %peer, request_id = %request_id, "response received");
                    if let Some(pending) = self.outbound.remove(&request_id) {
                        // The caller may have given up (cancelled); the answer is then discarded.
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(peer = %peer, request_id = %request_id, error = %error, "outbound request failed");
                if let Some(pending) = self.outbound.remove(&request_id) {
                    let failure = TransportError::RequestFailed {
                        peer: pending.peer,
                        reason: error.to_string(),
                    };
                    let _ = pending.reply.send(Err(failure));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => match &error {
                // An undecodable request is a peer of another wire version (or a broken one): the operator
                // must act (upgrade the older side), and the sender only sees its stream close.
                request_response::InboundFailure::Io(e)
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    warn!(peer = %peer, error = %e, "a peer sent a message this node cannot read");
                }
                _ => {
                    debug!(peer = %peer, request_id = %request_id, error = %error, "inbound request failed")
                }
            },
            request_response::Event::ResponseSent {
                peer, request_id, ..
            } => {
                trace!(peer = %peer, request_id = %request_id, "response sent");
            }
        }
    }

    fn send_response(&mut self, channel: ResponseChannel<Response>, response: Response) {
        if self
            .swarm
            .behaviour_mut()
            .request_response
            .send_response(channel, response)
            .is_err()
        {
            debug!("peer went away before the answer could be sent");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                origin,
                peer,
                request,
                reply,
            } => self.route_request(origin, peer, *request, reply),
            Command::AttachLocal { reply } => self.attach(reply),
            Command::Disconnect { peer } => {
                if let Ok(peer_id) = peer.as_str().parse::<PeerId>()
                    && self.swarm.disconnect_peer_id(peer_id).is_ok()
                {
                    info!(peer = %peer_id, "closing the connection on request");
                }
            }
        }
    }

    /// Sends a client's request to the network or across the in-process link.
    fn route_request(
        &mut self,
        origin: Origin,
        peer: NodeId,
        request: Request,
        reply: oneshot::Sender<Result<Response, TransportError>>,
    ) {
        let not_connected = |peer| Err(TransportError::NotConnected { peer });
        match origin {
            // The in-process peer only ever talks to the node it is attached to, whatever id it names.
            Origin::Local { generation } => {
                if self
                    .attached
                    .as_ref()
                    .is_some_and(|a| a.generation == generation)
                {
                    let sink = &mut self.main;
                    deliver_local(
                        sink,
                        &self.replies,
                        &self.local_id,
                        self.request_timeout,
                        request,
                        reply,
                    );
                } else {
                    let _ = reply.send(not_connected(peer));
                }
            }
            Origin::Network if peer == self.local_id => match self.attached.as_mut() {
                Some(attached) => {
                    let sink = &mut attached.sink;
                    deliver_local(
                        sink,
                        &self.replies,
                        &self.local_id,
                        self.request_timeout,
                        request,
                        reply,
                    );
                }
                None => {
                    let _ = reply.send(not_connected(peer));
                }
            },
            Origin::Network => {
                // Compute nodes are reached over the connection they opened; never dial an unknown peer.
                let connected = peer
                    .as_str()
                    .parse::<PeerId>()
                    .ok()
                    .filter(|p| self.swarm.is_connected(p));
                let Some(peer_id) = connected else {
                    let _ = reply.send(not_connected(peer));
                    return;
                };
                let mut request = request;
                if let (
                    Request::Handshake {
                        join_proof: proof @ None,
                        ..
                    },
                    Some(token),
                ) = (&mut request, &self.join_token)
                {
                    *proof = Some(token.prove(&self.local_id, &peer));
                }
                let kind = request_kind(&request);
                // The hot path rides the peer's link when it has one with room; anything else, one stream each.
                let (request, reply) = match self.links.get(&peer_id) {
                    Some(link) if matches!(request, Request::Deliver { .. }) => {
                        match link.request(request, reply) {
                            Ok(()) => {
                                crate::metrics::TRANSPORT.requests_on_link.inc();
                                return;
                            }
                            Err(back) => back,
                        }
                    }
                    _ => (request, reply),
                };
                crate::metrics::TRANSPORT.requests_on_stream.inc();
                let request_id = self
                    .swarm
                    .behaviour_mut()
                    .request_response
                    .send_request(&peer_id, request);
                debug!(peer = %peer_id, request_id = %request_id, kind, "outbound request");
                self.outbound
                    .insert(request_id, PendingOutbound { peer, reply });
            }
        }
    }

    /// Opens a link to `peer` (an orchestrator we connected to); [`Self::start_link`] runs it once open.
    fn open_link(&mut self, peer: PeerId) {
        let mut control = self.stream_control.clone();
        self.links_opening.push(Box::pin(async move {
            let opened = control
                .open_stream(peer, libp2p::StreamProtocol::new(link::PROTOCOL))
                .await
                .map_err(|e| e.to_string());
            (peer, opened)
        }));
    }

    /// Runs a link to `peer` over `stream`, replacing any older one (whose tasks then end).
    fn start_link(&mut self, peer: PeerId, stream: libp2p::Stream) {
        if self.ipfs_only.contains(&peer) || !self.swarm.is_connected(&peer) {
            return;
        }
        self.last_link += 1;
        let link = Link::spawn(
            peer,
            self.last_link,
            stream,
            self.main.tx.clone(),
            self.links_closed_tx.clone(),
            self.request_timeout,
        );
        debug!(peer = %peer, generation = link.generation, "link up");
        self.links.insert(peer, link);
        self.links_changed(&peer);
    }

    /// Publishes that `peer` gained or lost its link.
    fn links_changed(&self, peer: &PeerId) {
        crate::metrics::TRANSPORT
            .links
            .set(u64::try_from(self.links.len()).unwrap_or(u64::MAX));
        let id = node_id(peer);
        let up = self.links.contains_key(peer);
        self.linked.send_if_modified(|linked| {
            if up {
                linked.insert(id)
            } else {
                linked.remove(&id)
            }
        });
    }

    /// Attaches a new in-process peer, replacing any previous one.
    fn attach(&mut self, reply: oneshot::Sender<(u64, mpsc::Receiver<Event>)>) {
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        let generation = self.last_generation + 1;
        let mut sink = EventSink::new(tx, "in-process peer");
        sink.emit(Event::PeerConnected(self.local_id.clone()));
        if reply.send((generation, rx)).is_err() {
            // The caller gave up; attach nothing.
            return;
        }
        self.last_generation = generation;
        if self
            .attached
            .replace(Attachment { generation, sink })
            .is_some()
        {
            self.main
                .emit(Event::PeerDisconnected(self.local_id.clone()));
        }
        info!(peer = %self.local_id, "in-process peer attached");
        self.main.emit(Event::PeerConnected(self.local_id.clone()));
    }

    /// The in-process peer dropped its event stream: it is gone.
    fn detach(&mut self) {
        self.attached = None;
        info!(peer = %self.local_id, "in-process peer detached");
        self.main
            .emit(Event::PeerDisconnected(self.local_id.clone()));
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("local_id", &self.local_id)
            .field(
                "targets",
                &self
                    .targets
                    .iter()
                    .map(DialTarget::display_addr)
                    .collect::<Vec<_>>(),
            )
            .field("attached", &self.attached.is_some())
            .field("outbound", &self.outbound.len())
            .field("replies", &self.replies.len())
            .finish_non_exhaustive()
    }
}

/// Delivers an in-process request on `sink` and relays the consumer's answer (or its absence) to `reply`.
fn deliver_local(
    sink: &mut EventSink,
    replies: &FuturesUnordered<ReplyFuture>,
    local_id: &NodeId,
    timeout: Duration,
    request: Request,
    reply: oneshot::Sender<Result<Response, TransportError>>,
) {
    debug!(peer = %local_id, kind = request_kind(&request), stream = sink.name, "in-process request");
    let (event_reply, answer) = oneshot::channel();
    sink.emit(Event::Request {
        peer: local_id.clone(),
        request: Box::new(request),
        reply: event_reply,
    });
    let peer = local_id.clone();
    replies.push(Box::pin(async move {
        let result = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(TransportError::RequestFailed {
                peer,
                reason: "the receiver dropped the request without answering".into(),
            }),
            Err(_) => Err(TransportError::RequestFailed {
                peer,
                reason: format!("no answer within {timeout:?}"),
            }),
        };
        // The caller may have given up (cancelled); the answer is then discarded.
        let _ = reply.send(result);
        None
    }));
}

/// Waits for room in the in-process peer's channel (never resolves without an attachment).
async fn reserve_attached(
    attached: Option<&Attachment>,
) -> Result<mpsc::OwnedPermit<Event>, mpsc::error::SendError<()>> {
    match attached {
        Some(a) => a.sink.tx.clone().reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the in-process peer drops its event stream (never without an attachment).
async fn attached_closed(attached: Option<&Attachment>) {
    match attached {
        Some(a) => a.sink.tx.closed().await,
        None => std::future::pending().await,
    }
}

fn node_id(peer: &PeerId) -> NodeId {
    NodeId::from(peer.to_string())
}

/// The request's variant name, for logs (bodies are never logged above trace).
fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Handshake { .. } => "handshake",
        Request::Heartbeat { .. } => "heartbeat",
        Request::UpdateInfo { .. } => "update_info",
        Request::Deliver { .. } => "deliver",
        Request::ReadOutput { .. } => "read_output",
    }
}

/// The event's variant name, for logs.
fn event_kind(event: &Event) -> &'static str {
    match event {
        Event::PeerConnected(_) => "peer_connected",
        Event::PeerDisconnected(_) => "peer_disconnected",
        Event::Request { .. } => "request",
    }
}

#[cfg(test)]
mod tests {
    use tokio::task::JoinHandle;

    use super::*;
    use crate::model::ExecutionId;
    use crate::transport::{Message, Sequenced};

    /// How long any single expected thing may take before the test fails.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn config() -> Config {
        Config {
            listen: Vec::new(),
            orchestrators: Vec::new(),
            ipfs_peers: Vec::new(),
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(60),
            join_token: None,
            swarm_key: None,
        }
    }

    fn listening() -> Config {
        Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            ..config()
        }
    }

    /// A running transport.
    struct Node {
        client: Client,
        events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Node {
        fn start(identity: Identity, config: Config) -> Self {
            let (client, events, event_loop) = build(identity, config).expect("transport builds");
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(event_loop.run(shutdown.clone()));
            Self {
                client,
                events,
                shutdown,
                task,
            }
        }

        fn id(&self) -> NodeId {
            self.client.local_id().clone()
        }

        async fn next_event(&mut self) -> Event {
            next_event(&mut self.events).await
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(DEADLINE, self.task)
                .await
                .expect("loop stops in time")
                .expect("loop ran");
        }
    }

    async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("event before the deadline")
            .expect("stream open")
    }

    /// Waits for a request on `events` and answers it with `response`, returning what was asked and by whom.
    async fn answer_next(
        events: &mut mpsc::Receiver<Event>,
        response: Response,
    ) -> (NodeId, Request) {
        match next_event(events).await {
            Event::Request {
                peer,
                request,
                reply,
            } => {
                reply.send(response).expect("requester waits");
                (peer, *request)
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn heartbeat() -> Request {
        Request::Heartbeat {
            available: Default::default(),
            running: 2,
        }
    }

    fn deliver(seq: u64) -> Request {
        Request::Deliver {
            messages: vec![Sequenced {
                seq,
                message: Message::BidAccepted {
                    execution_id: ExecutionId::generate(),
                },
            }],
        }
    }

    /// An orchestrator (`orchestrator` config) and a compute node dialling it (`compute` config), each past
    /// its connection event and with the link up on both sides.
    async fn linked_pair(orchestrator: Config, compute: Config) -> (Node, Node) {
        let mut orchestrator = Node::start(Identity::generate(), orchestrator);
        let addrs = orchestrator.client.listen_addrs().await.expect("listening");
        let mut compute = Node::start(
            Identity::generate(),
            Config {
                orchestrators: vec![addrs[0].clone()],
                ..compute
            },
        );
        let (orchestrator_id, compute_id) = (orchestrator.id(), compute.id());
        assert_connected(compute.next_event().await, &orchestrator_id);
        assert_connected(orchestrator.next_event().await, &compute_id);
        assert!(compute.client.wait_linked(&orchestrator_id, DEADLINE).await);
        assert!(orchestrator.client.wait_linked(&compute_id, DEADLINE).await);
        (orchestrator, compute)
    }

    fn assert_connected(event: Event, peer: &NodeId) {
        assert!(
            matches!(&event, Event::PeerConnected(p) if p == peer),
            "expected {peer} to connect, got {event:?}"
        );
    }

    fn assert_disconnected(event: Event, peer: &NodeId) {
        assert!(
            matches!(&event, Event::PeerDisconnected(p) if p == peer),
            "expected {peer} to disconnect, got {event:?}"
        );
    }

    #[tokio::test]
    async fn a_full_event_stream_keeps_order_and_refuses_excess_requests() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut sink = EventSink::new(tx, "test");
        let peer = Identity::generate().node_id();
        sink.emit(Event::PeerConnected(peer.clone()));
        let mut answers = Vec::new();
        for _ in 0..=OVERFLOW_LIMIT {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            sink.emit(Event::Request {
                peer: peer.clone(),
                request: Box::new(heartbeat()),
                reply,
            });
        }
        // Connection events are never refused, even past the request limit.
        sink.emit(Event::PeerDisconnected(peer.clone()));
        assert_eq!(sink.overflow.len(), OVERFLOW_LIMIT + 1);
        let refused = answers.pop().expect("one answer per request");
        assert!(
            refused.await.is_err(),
            "the request over the limit was dropped"
        );

        assert_connected(next_event(&mut rx).await, &peer);
        let mut requests = 0;
        while !sink.overflow.is_empty() {
            sink.flush_one(sink.tx.clone().reserve_owned().await);
            match next_event(&mut rx).await {
                Event::Request { .. } => requests += 1,
                other => {
                    assert_eq!(
                        requests, OVERFLOW_LIMIT,
                        "all requests came before {other:?}"
                    );
                    assert_disconnected(other, &peer);
                }
            }
        }
    }

    fn swarm_key(hex_digit: char) -> SwarmKey {
        let hex: String = std::iter::repeat_n(hex_digit, 64).collect();
        SwarmKey::parse(&format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).expect("valid key")
    }

    #[tokio::test]
    async fn handshakes_to_remote_orchestrators_carry_a_proof_of_the_join_token() {
        let token = JoinToken::new("a-join-token-for-tests").expect("non-empty");
        let mut orchestrator = Node::start(Identity::generate(), listening());
        let orchestrator_id = orchestrator.id();
        let addrs = orchestrator.client.listen_addrs().await.expect("listening");
        let compute_config = Config {
            orchestrators: vec![addrs[0].clone()],
            join_token: Some(token.clone()),
            ..config()
        };
        let mut compute = Node::start(Identity::generate(), compute_config);
        let compute_id = compute.id();
        assert_connected(compute.next_event().await, &orchestrator_id);
        assert_connected(orchestrator.next_event().await, &compute_id);
        let handshake = Request::Handshake {
            info: Default::default(),
            last_applied_seq: 0,
            join_proof: None,
            executions: Vec::new(),
        };
        let (response, (_, request)) = tokio::join!(
            compute.client.request(&orchestrator_id, handshake),
            answer_next(
                &mut orchestrator.events,
                Response::Refused {
                    reason: "test".into()
                }
            ),
        );
        response.expect("answered");
        let Request::Handshake {
            join_proof: Some(proof),
            ..
        } = request
        else {
            panic!("the transport adds the proof: {request:?}");
        };
        assert!(token.verify(&proof, &compute_id, &orchestrator_id));
        compute.stop().await;
        orchestrator.stop().await;
    }

    #[tokio::test]
    async fn a_private_network_admits_only_peers_with_the_same_key() {
        let with_key = |key: char| Config {
            swarm_key: Some(swarm_key(key)),
            ..listening()
        };
        let mut orchestrator = Node::start(Identity::generate(), with_key('a'));
        let orchestrator_id = orchestrator.id();
        let addrs = orchestrator.client.listen_addrs().await.expect("listening");

        // Same key: connects and talks.
        let mut same = Node::start(
            Identity::generate(),
            Config {
                orchestrators: vec![addrs[0].clone()],
                swarm_key: Some(swarm_key('a')),
                ..config()
            },
        );
        let same_id = same.id();
        assert_connected(same.next_event().await, &orchestrator_id);
        assert_connected(orchestrator.next_event().await, &same_id);
        let (response, _) = tokio::join!(
            same.client.request(&orchestrator_id, heartbeat()),
            answer_next(
                &mut orchestrator.events,
                Response::Ack {
                    last_applied_seq: 0
                }
            ),
        );
        response.expect("answered");
        same.stop().await;
        assert_disconnected(orchestrator.next_event().await, &same_id);

        // A different key, and no key at all: never connected, on either side, over several redials.
        for key in [Some(swarm_key('b')), None] {
            let mut other = Node::start(
                Identity::generate(),
                Config {
                    orchestrators: vec![addrs[0].clone()],
                    swarm_key: key,
                    max_backoff: Duration::from_millis(50),
                    ..config()
                },
            );
            let other_id = other.id();
            // Absence can only be watched for a while: 2 s is dozens of redials at a 50 ms backoff.
            let seen = tokio::time::timeout(Duration::from_secs(2), other.events.recv()).await;
            assert!(
                seen.is_err(),
                "no connection with a different key: {seen:?}"
            );
            assert!(!orchestrator.client.is_connected(&other_id));
            assert!(orchestrator.events.try_recv().is_err());
            other.stop().await;
        }
        orchestrator.stop().await;
    }

    #[tokio::test]
    async fn compute_dials_and_both_sides_exchange_requests() {
        let mut orchestrator = Node::start(Identity::generate(), listening());
        let orchestrator_id = orchestrator.id();
        let addrs = orchestrator.client.listen_addrs().await.expect("listening");
        assert!(addrs[0].starts_with("/ip4/127.0.0.1/tcp/"), "{addrs:?}");
        assert!(
            addrs[0].ends_with(&format!("/p2p/{}", orchestrator_id)),
            "{addrs:?}"
        );

        let compute_config = Config {
            orchestrators: vec![addrs[0].clone()],
            ..config()
        };
        let mut compute = Node::start(Identity::generate(), compute_config);
        let compute_id = compute.id();
        assert_connected(compute.next_event().await, &orchestrator_id);
        assert_connected(orchestrator.next_event().await, &compute_id);
        assert_eq!(
            compute.client.listen_addrs().await.expect("no listeners"),
            Vec::<String>::new()
        );

        // Compute → orchestrator.
        let (response, (peer, request)) = tokio::join!(
            compute.client.request(&orchestrator_id, heartbeat()),
            answer_next(
                &mut orchestrator.events,
                Response::Ack {
                    last_applied_seq: 0
                }
            ),
        );
        assert_eq!(
            response.expect("answered"),
            Response::Ack {
                last_applied_seq: 0
            }
        );
        assert_eq!((peer, request), (compute_id.clone(), heartbeat()));

        // Orchestrator → compute, over the connection the compute node opened.
        let (response, (peer, request)) = tokio::join!(
            orchestrator.client.request(&compute_id, deliver(1)),
            answer_next(
                &mut compute.events,
                Response::Ack {
                    last_applied_seq: 1
                }
            ),
        );
        assert_eq!(
            response.expect("answered"),
            Response::Ack {
                last_applied_seq: 1
            }
        );
        assert_eq!(peer, orchestrator_id);
        assert!(matches!(request, Request::Deliver { .. }));

        // An unanswered request fails on the requesting side instead of hanging.
        let (response, ()) = tokio::join!(
            compute.client.request(&orchestrator_id, heartbeat()),
            async {
                match orchestrator.next_event().await {
                    Event::Request { reply, .. } => drop(reply),
                    other => panic!("expected a request, got {other:?}"),
                }
            }
        );
        assert!(
            matches!(response, Err(TransportError::RequestFailed { .. })),
            "{response:?}"
        );

        compute.stop().await;
        assert_disconnected(orchestrator.next_event().await, &compute_id);
        orchestrator.stop().await;
    }

    #[tokio::test]
    async fn deliveries_ride_one_link_both_ways_and_fail_fast_when_it_cannot_answer() {
        let (mut orchestrator, mut compute) = linked_pair(listening(), config()).await;
        let (orchestrator_id, compute_id) = (orchestrator.id(), compute.id());

        // More deliveries in flight at once than request-response has streams per connection (16): all
        // arrive before any is answered only because they share the link. Answered in reverse order, each
        // answer still reaches its own request.
        const IN_FLIGHT: u64 = 40;
        let client = orchestrator.client.clone();
        let peer = compute_id.clone();
        let sent = tokio::spawn(async move {
            let requests = (1..=IN_FLIGHT).map(|seq| {
                let client = client.clone();
                let peer = peer.clone();
                async move { (seq, client.request(&peer, deliver(seq)).await) }
            });
            futures::future::join_all(requests).await
        });
        let mut held = Vec::new();
        while held.len() < usize::try_from(IN_FLIGHT).expect("small") {
            match compute.next_event().await {
                Event::Request { request, reply, .. } => match *request {
                    Request::Deliver { messages } => held.push((messages[0].seq, reply)),
                    other => panic!("expected a delivery, got {other:?}"),
                },
                other => panic!("expected a request, got {other:?}"),
            }
        }
        for (seq, reply) in held.into_iter().rev() {
            reply
                .send(Response::Ack {
                    last_applied_seq: seq,
                })
                .expect("requester waits");
        }
        let answers = tokio::time::timeout(DEADLINE, sent)
            .await
            .expect("answered in time")
            .expect("requests ran");
        for (seq, answer) in answers {
            assert_eq!(
                answer.expect("answered"),
                Response::Ack {
                    last_applied_seq: seq
                }
            );
        }

        // A delivery the receiver drops fails at once, not at the request timeout.
        let (response, ()) = tokio::join!(
            compute.client.request(&orchestrator_id, deliver(1)),
            async {
                match orchestrator.next_event().await {
                    Event::Request { reply, .. } => drop(reply),
                    other => panic!("expected a request, got {other:?}"),
                }
            }
        );
        match response {
            Err(TransportError::RequestFailed { reason, .. }) => {
                assert!(reason.contains("unanswered"), "{reason}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }

        // A delivery in flight when the link goes fails as the link closes.
        let client = orchestrator.client.clone();
        let peer = compute_id.clone();
        let pending =
            tokio::spawn(async move { client.request(&peer, deliver(IN_FLIGHT + 1)).await });
        let held = compute.next_event().await;
        assert!(matches!(held, Event::Request { .. }));
        compute.stop().await;
        drop(held);
        let response = tokio::time::timeout(DEADLINE, pending)
            .await
            .expect("failed in time")
            .expect("request ran");
        match response {
            Err(TransportError::RequestFailed { reason, .. }) => {
                assert!(reason.contains("link closed"), "{reason}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_disconnected(orchestrator.next_event().await, &compute_id);
        assert!(!orchestrator.client.is_connected(&compute_id));
        orchestrator.stop().await;
    }

    #[tokio::test]
    async fn a_delivery_held_unanswered_fails_at_the_senders_request_timeout() {
        let timeout = Duration::from_millis(300);
        // The receiver would wait far longer for its consumer: only the sender's timer can end this.
        let (orchestrator, mut compute) = linked_pair(
            Config {
                request_timeout: timeout,
                ..listening()
            },
            Config {
                request_timeout: Duration::from_secs(60),
                ..config()
            },
        )
        .await;
        let compute_id = compute.id();
        let started = tokio::time::Instant::now();
        let (response, held) = tokio::join!(
            orchestrator.client.request(&compute_id, deliver(1)),
            async {
                loop {
                    if let event @ Event::Request { .. } = compute.next_event().await {
                        break event;
                    }
                }
            }
        );
        match response {
            Err(TransportError::RequestFailed { reason, .. }) => {
                assert!(reason.contains("no answer within"), "{reason}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        drop(held);
        // The link survives a timed-out request: the next delivery is answered on it.
        let (response, _) = tokio::join!(
            orchestrator.client.request(&compute_id, deliver(2)),
            answer_next(
                &mut compute.events,
                Response::Ack {
                    last_applied_seq: 2
                }
            ),
        );
        assert_eq!(
            response.expect("answered"),
            Response::Ack {
                last_applied_seq: 2
            }
        );
        assert!(orchestrator.client.is_linked(&compute_id));
        compute.stop().await;
        orchestrator.stop().await;
    }

    #[tokio::test]
    async fn compute_reconnects_after_the_orchestrator_restarts() {
        let identity = Identity::generate();
        let mut orchestrator = Node::start(identity.clone(), listening());
        let orchestrator_id = orchestrator.id();
        let addr = orchestrator
            .client
            .listen_addrs()
            .await
            .expect("listening")
            .remove(0);
        let mut compute = Node::start(
            Identity::generate(),
            Config {
                orchestrators: vec![addr.clone()],
                ..config()
            },
        );
        assert_connected(compute.next_event().await, &orchestrator_id);
        assert_connected(orchestrator.next_event().await, &compute.id());
        assert!(compute.client.wait_linked(&orchestrator_id, DEADLINE).await);

        orchestrator.stop().await;
        assert_disconnected(compute.next_event().await, &orchestrator_id);
        assert!(!compute.client.is_linked(&orchestrator_id));

        // Same key, same port: the compute node's redial timer finds it without any help.
        let port_addr = addr
            .split("/p2p/")
            .next()
            .expect("has an address part")
            .to_owned();
        let mut orchestrator = Node::start(
            identity,
            Config {
                listen: vec![port_addr],
                ..config()
            },
        );
        assert_connected(compute.next_event().await, &orchestrator_id);
        assert_connected(orchestrator.next_event().await, &compute.id());

        let (response, _) = tokio::join!(
            compute.client.request(&orchestrator_id, heartbeat()),
            answer_next(
                &mut orchestrator.events,
                Response::Ack {
                    last_applied_seq: 0
                }
            ),
        );
        assert_eq!(
            response.expect("answered"),
            Response::Ack {
                last_applied_seq: 0
            }
        );
        // The new connection gets a new link: deliveries ride it again.
        assert!(compute.client.wait_linked(&orchestrator_id, DEADLINE).await);
        assert!(
            orchestrator
                .client
                .wait_linked(&compute.id(), DEADLINE)
                .await
        );
        compute.stop().await;
        orchestrator.stop().await;
    }

    #[tokio::test]
    async fn attached_local_peer_talks_both_ways_without_sockets() {
        let mut node = Node::start(Identity::generate(), config());
        let id = node.id();
        let (local, mut local_events) = node.client.attach_local().await.expect("attaches");
        assert_eq!(local.local_id(), &id);
        assert_connected(next_event(&mut local_events).await, &id);
        assert_connected(node.next_event().await, &id);

        // In-process compute half → the node's own stream.
        let (response, (peer, request)) = tokio::join!(
            local.request(&id, heartbeat()),
            answer_next(
                &mut node.events,
                Response::Ack {
                    last_applied_seq: 0
                }
            ),
        );
        assert_eq!(
            response.expect("answered"),
            Response::Ack {
                last_applied_seq: 0
            }
        );
        assert_eq!((peer, request), (id.clone(), heartbeat()));

        // The node → its in-process half.
        let (response, (peer, request)) = tokio::join!(
            node.client.request(&id, deliver(4)),
            answer_next(
                &mut local_events,
                Response::Ack {
                    last_applied_seq: 4
                }
            ),
        );
        assert_eq!(
            response.expect("answered"),
            Response::Ack {
                last_applied_seq: 4
            }
        );
        assert_eq!(peer, id);
        assert!(matches!(request, Request::Deliver { .. }));

        // A dropped reply is a failed request, as over the network.
        let (response, ()) = tokio::join!(local.request(&id, heartbeat()), async {
            match node.next_event().await {
                Event::Request { reply, .. } => drop(reply),
                other => panic!("expected a request, got {other:?}"),
            }
        });
        assert!(
            matches!(response, Err(TransportError::RequestFailed { .. })),
            "{response:?}"
        );

        // Dropping the in-process stream detaches it.
        drop(local_events);
        assert_disconnected(node.next_event().await, &id);
        let response = node.client.request(&id, heartbeat()).await;
        assert!(
            matches!(response, Err(TransportError::NotConnected { .. })),
            "{response:?}"
        );
        let response = local.request(&id, heartbeat()).await;
        assert!(
            matches!(response, Err(TransportError::NotConnected { .. })),
            "{response:?}"
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn requests_to_unconnected_peers_fail_fast() {
        let node = Node::start(Identity::generate(), config());
        for peer in [
            Identity::generate().node_id(),
            NodeId::from("not-a-peer-id".to_owned()),
            node.id(),
        ] {
            let response = node.client.request(&peer, heartbeat()).await;
            assert!(
                matches!(&response, Err(TransportError::NotConnected { peer: p }) if *p == peer),
                "{response:?}"
            );
        }
        let client = node.client.clone();
        node.stop().await;
        let response = client
            .request(&Identity::generate().node_id(), heartbeat())
            .await;
        assert!(
            matches!(response, Err(TransportError::ShutDown)),
            "{response:?}"
        );
    }

    #[tokio::test]
    async fn bad_addresses_fail_at_build_time() {
        for addr in [
            "not a multiaddr",
            "/dns4/example.com/tcp/1235",
            "/ip4/127.0.0.1/udp/1235",
        ] {
            let err = build(
                Identity::generate(),
                Config {
                    orchestrators: vec![addr.into()],
                    ..config()
                },
            )
            .expect_err("bad orchestrator address");
            assert!(
                matches!(&err, TransportError::BadAddress { addr: a, .. } if a == addr),
                "{err}"
            );
        }
        let with_peer = format!(
            "/ip4/127.0.0.1/tcp/1235/p2p/{}",
            Identity::generate().node_id()
        );
        assert!(
            build(
                Identity::generate(),
                Config {
                    orchestrators: vec![with_peer.clone()],
                    ..config()
                }
            )
            .is_ok()
        );
        let err = build(
            Identity::generate(),
            Config {
                listen: vec![with_peer],
                ..config()
            },
        )
        .expect_err("p2p");
        assert!(matches!(err, TransportError::BadAddress { .. }), "{err}");
    }

    #[tokio::test]
    async fn ipfs_peers_stay_connected_silently_and_carry_raw_streams() {
        use futures::{AsyncReadExt, AsyncWriteExt, StreamExt as _};

        let mut server = Node::start(Identity::generate(), listening());
        let addr = server
            .client
            .listen_addrs()
            .await
            .expect("listening")
            .remove(0);
        let mut incoming = server
            .client
            .streams()
            .accept("/test/echo/1")
            .expect("accept");
        let client = Node::start(
            Identity::generate(),
            Config {
                ipfs_peers: vec![addr],
                ..config()
            },
        );
        let server_id = server.client.local_id().clone();
        assert!(client.client.wait_connected(&server_id, DEADLINE).await);
        // The server sees a Cod-level connection (it has no idea who dialled); the client, whose peer is
        // configured as an IPFS peer, must not hand it to orchestrator or compute logic.
        assert_connected(server.next_event().await, &client.id());

        let echo = tokio::spawn(async move {
            let (peer, mut stream) = incoming.next().await.expect("a stream");
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.expect("read");
            stream.write_all(&buf).await.expect("write");
            stream.close().await.expect("close");
            peer
        });
        let mut stream = client
            .client
            .streams()
            .open(&server_id, "/test/echo/1")
            .await
            .expect("open");
        stream.write_all(b"hello").await.expect("write");
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"hello");
        assert_eq!(echo.await.expect("echo"), client.id());

        let mut client = client;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), client.events.recv())
                .await
                .is_err(),
            "an IPFS peer raised an event"
        );
    }

    /// Kubo answers every bitswap message on a new stream, back to back; none may be dropped while the
    /// consumer is busy (libp2p-stream's own one-slot hand-over lost about a quarter of them).
    #[tokio::test]
    async fn back_to_back_inbound_streams_wait_for_a_busy_consumer() {
        use futures::{AsyncReadExt, AsyncWriteExt, StreamExt as _};

        let server = Node::start(Identity::generate(), listening());
        let addr = server.client.listen_addrs().await.expect("addr").remove(0);
        let mut incoming = server
            .client
            .streams()
            .accept("/test/burst/1")
            .expect("accept");
        let client = Node::start(
            Identity::generate(),
            Config {
                ipfs_peers: vec![addr],
                ..config()
            },
        );
        let server_id = server.client.local_id().clone();
        assert!(client.client.wait_connected(&server_id, DEADLINE).await);
        // 32 streams opened and written while nobody is taking them.
        let streams = client.client.streams();
        let sends = (0..32u8).map(|i| {
            let streams = streams.clone();
            let server_id = server_id.clone();
            async move {
                let mut s = streams
                    .open(&server_id, "/test/burst/1")
                    .await
                    .expect("open");
                s.write_all(&[i]).await.expect("write");
                s.close().await.expect("close");
            }
        });
        futures::future::join_all(sends).await;
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 32 {
            let (_, mut s) = tokio::time::timeout(DEADLINE, incoming.next())
                .await
                .expect("every stream arrives")
                .expect("open");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
            seen.insert(b[0]);
        }
    }

    #[tokio::test]
    async fn ipfs_peers_need_a_peer_id() {
        let err = build(
            Identity::generate(),
            Config {
                ipfs_peers: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                ..config()
            },
        )
        .expect_err("no peer id");
        assert!(err.to_string().contains("/p2p/"), "{err}");
    }

    #[tokio::test]
    async fn a_taken_port_fails_at_build_time() {
        let node = Node::start(Identity::generate(), listening());
        let addr = node
            .client
            .listen_addrs()
            .await
            .expect("listening")
            .remove(0);
        let port_addr = addr
            .split("/p2p/")
            .next()
            .expect("has an address part")
            .to_owned();
        let err = build(
            Identity::generate(),
            Config {
                listen: vec![port_addr.clone()],
                ..config()
            },
        )
        .expect_err("port taken");
        // The reason is the OS's (libp2p prints nothing for a transport's own error).
        assert!(
            matches!(&err, TransportError::Listen { addr: a, reason } if *a == port_addr && reason.contains("in use")),
            "{err}"
        );
        node.stop().await;
    }
}
