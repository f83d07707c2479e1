//! The compute node: bids on executions, runs them (inputs → executor → publisher) and reports back.
//!
//! It owns the `compute.*` tables. Accepting an execution, and finishing it, are each one transaction that
//! also queues the report for the orchestrator in the durable outbox; a node that is offline keeps working
//! and delivers its reports when the link returns. Executions accepted before a crash are started again on
//! start-up (at-least-once: a job may run twice, its result is reported once per accepted execution).
//! Executions run as tasks of this module; CPU-bound engines use their own threads (see [`crate::executor`]).

mod backends;
mod bidder;
pub(crate) mod cache;
mod disk_guard;
mod glob;
pub mod metrics;
pub mod policy;
mod runner;
mod secrets;
mod state;
mod workdir;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gpu::Inventory;
use crate::model::resources::JobDefaults;
use crate::model::{
    BuildVersionInfo, ComputeNodeInfo, ExecutionId, NodeId, NodeInfo, NodeResources, NodeType,
    Resources, node::go_arch,
};
use crate::outbox::{self, Delivery, Outbox};
use crate::store::{Store, StoreError};
use crate::transport::protocol::HeldExecution;
use crate::transport::{Client, Event, Message, Request, Response};

pub use backends::Backends;
pub use cache::CacheError;
pub use cache::result::META_KEY as RESULT_CACHE_META_KEY;
pub use policy::Policy;
pub use state::{LocalExecution, LocalState};

use bidder::Capacity;
use state::Tables;

/// Compute settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's name (label `name`).
    pub name: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Resources this node gives to jobs.
    pub capacity: Resources,
    /// Largest single job (the capacity, lowered by `policy.max_job`).
    pub max_job: Resources,
    /// How often heartbeats are sent.
    pub heartbeat_interval: Duration,
    /// Where executions keep their files.
    pub work_dir: PathBuf,
    /// Cap on stdout and on stderr of one execution.
    pub max_output_bytes: u64,
    /// Cap on the total size of one execution's result paths (`Compute.MaxOutputSize`).
    pub max_result_bytes: u64,
    /// Execution timeout for tasks that set none (`None`: unlimited).
    pub default_timeout: Option<Duration>,
    /// Resources for tasks that do not state them.
    pub job_defaults: JobDefaults,
    /// Address published in NodeInfo.
    pub address: String,
    /// What the operator lets this node run (checked when bidding and again before each run).
    pub policy: Policy,
    /// The GPUs discovery found (`None`: none, or discovery off); `capacity.gpu` counts them.
    pub gpus: Option<Inventory>,
}

impl Config {
    /// The GPUs discovery found, by index (empty without any).
    pub fn gpu_list(&self) -> &[crate::gpu::Gpu] {
        self.gpus
            .as_ref()
            .map(|i| i.gpus.as_slice())
            .unwrap_or_default()
    }
}

/// The compute node's caches (see [`cache`]); each is off when its budget is 0.
#[derive(Debug, Clone, Default)]
pub struct Caches {
    /// Prepared inputs by content id.
    inputs: Option<cache::input::InputCache>,
    /// Finished executions' results, for jobs that opt in.
    results: Option<cache::result::ResultCache>,
}

impl Caches {
    /// Opens the caches under `dir` (`inputs/`, `results/`), with their budgets in bytes (0 = off), and
    /// cleans up what a crash left.
    pub async fn open(
        dir: &std::path::Path,
        store: &Store,
        input_budget: u64,
        result_budget: u64,
    ) -> Result<Caches, CacheError> {
        let inputs = match input_budget {
            0 => None,
            budget => {
                Some(cache::input::InputCache::open(&dir.join("inputs"), store, budget).await?)
            }
        };
        let results = match result_budget {
            0 => None,
            budget => {
                Some(cache::result::ResultCache::open(&dir.join("results"), store, budget).await?)
            }
        };
        Ok(Caches { inputs, results })
    }
}

/// Something the compute node failed to do (not a job failure: those are reports).
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The state database failed.
    #[error("compute state operation failed")]
    Store(#[from] StoreError),
    /// A cache cannot be opened.
    #[error("cannot open the compute caches")]
    Cache(#[from] CacheError),
    /// The work dir cannot be created.
    #[error("cannot create the work dir {path:?}")]
    WorkDir {
        /// The dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state.
#[derive(Debug)]
struct Inner {
    node_id: NodeId,
    store: Store,
    tables: Tables,
    outbox: Outbox,
    backends: Backends,
    /// Input and result caches.
    caches: Caches,
    config: Config,
    capacity: Capacity,
    client: Client,
    /// Cancellation handles of running executions.
    running: Mutex<HashMap<ExecutionId, CancellationToken>>,
    /// Resolved `env:` secrets of running executions, for masking their live output (see [`secrets`]).
    scrubbers: Mutex<HashMap<ExecutionId, secrets::Scrubber>>,
    /// Executions to start (from accepted bids); bounded by what the bidder accepted.
    start: mpsc::UnboundedSender<runner::Work>,
    /// The executions' folders (blocking I/O).
    work_dirs: Arc<workdir::WorkDirs>,
}

/// Cloneable handle.
#[derive(Debug, Clone)]
pub struct Compute {
    inner: Arc<Inner>,
}

/// The compute node's tasks; spawn [`Runner::run`].
#[derive(Debug)]
pub struct Runner {
    compute: Compute,
    events: mpsc::Receiver<Event>,
    delivery: Delivery,
    start_rx: mpsc::UnboundedReceiver<runner::Work>,
}

impl Compute {
    /// Opens the compute state. `events` and `client` are this role's transport side.
    pub fn new(
        store: Store,
        client: Client,
        events: mpsc::Receiver<Event>,
        backends: Backends,
        caches: Caches,
        config: Config,
    ) -> Result<(Compute, Runner), ComputeError> {
        let work_dirs =
            workdir::WorkDirs::open(&config.work_dir).map_err(|source| ComputeError::WorkDir {
                path: config.work_dir.clone(),
                source,
            })?;
        let tables = Tables::open(&store)?;
        let (outbox, delivery) = Outbox::new(
            &store,
            client.clone(),
            outbox::Tables {
                messages: "compute.outbox",
                counters: "compute.outbox_counters",
            },
        )?;
        let capacity = Capacity::new(config.capacity, config.gpu_list().iter().map(|g| g.index));
        // The start queue is unbounded, but every entry is an execution this node already accepted within its
        // capacity (or recovered from its own table), so its length is bounded by the node's job slots.
        let (start, start_rx) = mpsc::unbounded_channel();
        let inner = Inner {
            node_id: client.local_id().clone(),
            store,
            tables,
            outbox,
            backends,
            caches,
            capacity,
            config,
            client,
            running: Mutex::new(HashMap::new()),
            scrubbers: Mutex::new(HashMap::new()),
            start,
            work_dirs: Arc::new(work_dirs),
        };
        let compute = Compute {
            inner: Arc::new(inner),
        };
        Ok((
            compute.clone(),
            Runner {
                compute,
                events,
                delivery,
                start_rx,
            },
        ))
    }

    /// This node's description, as sent to orchestrators.
    pub fn node_info(&self) -> NodeInfo {
        let c = &self.inner.config;
        let mut labels = c.labels.clone();
        labels.insert("os_type".into(), std::env::consts::OS.into());
        labels.insert("os_arch".into(), go_arch().into());
        labels.insert("name".into(), c.name.clone());
        labels.extend(crate::gpu::advertise::labels(c.gpus.as_ref()));
        let max_capacity = NodeResources {
            resources: c.capacity,
            gpus: c
                .gpu_list()
                .iter()
                .map(crate::gpu::advertise::resource)
                .collect(),
        };
        NodeInfo {
            node_id: self.inner.node_id.clone(),
            node_type: NodeType::Compute,
            labels,
            supported_protocols: vec![crate::transport::protocol::PROTOCOL_NAME.to_owned()],
            compute_node_info: ComputeNodeInfo {
                execution_engines: self.inner.backends.engine_names(),
                publishers: self.inner.backends.publisher_names(),
                storage_sources: self.inner.backends.source_names(),
                max_capacity,
                queue_capacity: Resources::default(),
                available_capacity: self.available(),
                max_job_requirements: c.max_job,
                running_executions: self.running_count(),
                enqueued_executions: 0,
                address: c.address.clone(),
            },
            bacalhau_version: BuildVersionInfo::current(),
            listen_addresses: Vec::new(),
        }
    }

    /// Free capacity, with the free GPUs listed (Bacalhau's `AvailableCapacity`).
    fn available(&self) -> NodeResources {
        let c = &self.inner.config;
        let free = self.inner.capacity.free_gpus();
        NodeResources {
            resources: self.inner.capacity.available(),
            gpus: c
                .gpu_list()
                .iter()
                .filter(|g| free.contains(&g.index))
                .map(crate::gpu::advertise::resource)
                .collect(),
        }
    }

    fn running_count(&self) -> u64 {
        self.inner
            .running
            .lock()
            .map(|r| r.len() as u64)
            .unwrap_or(0)
    }
}

impl Runner {
    /// Runs until `shutdown`: handshakes and heartbeats, applying orchestrator messages, running executions.
    pub async fn run(self, shutdown: CancellationToken) {
        let Runner {
            compute,
            mut events,
            delivery,
            mut start_rx,
        } = self;
        let mut tasks = JoinSet::new();
        tasks.spawn(delivery.run(shutdown.child_token()));
        if let Err(e) = compute.recover().await {
            warn!(error = %e, "cannot resume executions from before the restart");
        }
        let mut executions = JoinSet::new();
        let mut handshakes = JoinSet::new();
        let mut orchestrators: HashSet<NodeId> = HashSet::new();
        let mut welcomed: HashSet<NodeId> = HashSet::new();
        // Orchestrators that refused this node: when to ask again, and the current backoff.
        let mut refused: HashMap<NodeId, (Instant, Duration)> = HashMap::new();
        let interval = compute.inner.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut requests = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    None => break,
                    Some(Event::PeerConnected(peer)) => {
                        orchestrators.insert(peer.clone());
                        handshakes.spawn(compute.clone().handshake(peer));
                    }
                    Some(Event::PeerDisconnected(peer)) => {
                        orchestrators.remove(&peer);
                        welcomed.remove(&peer);
                        crate::metrics::COMPUTE.orchestrators_connected.set(welcomed.len() as u64);
                        compute.inner.outbox.peer_disconnected(&peer).await;
                        info!(orchestrator = %peer, "orchestrator disconnected; working offline");
                    }
                    Some(Event::Request { peer, request, reply }) => {
                        let c = compute.clone();
                        requests.spawn(async move {
                            let response = c.handle_request(&peer, *request).await;
                            let _ = reply.send(response);
                        });
                    }
                },
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                    let Ok((peer, outcome)) = done else { continue };
                    match outcome {
                        Handshake::Welcomed => {
                            refused.remove(&peer);
                            if orchestrators.contains(&peer) {
                                welcomed.insert(peer);
                            }
                            crate::metrics::COMPUTE.orchestrators_connected.set(welcomed.len() as u64);
                        }
                        Handshake::Refused => {
                            // Asking again at every heartbeat would only repeat the refusal (and its log line):
                            // back off until an operator had time to approve, up to five minutes.
                            welcomed.remove(&peer);
                            crate::metrics::COMPUTE.orchestrators_connected.set(welcomed.len() as u64);
                            let backoff = refused
                                .get(&peer)
                                .map_or(interval, |(_, b)| (*b * 2).min(MAX_REFUSED_BACKOFF));
                            refused.insert(peer, (Instant::now() + backoff, backoff));
                        }
                        Handshake::Failed | Handshake::Alive => {}
                    }
                }
                Some(work) = start_rx.recv() => {
                    let c = compute.clone();
                    executions.spawn(async move { c.work(work).await });
                }
                Some(done) = executions.join_next(), if !executions.is_empty() => {
                    if let Err(e) = done { warn!(error = %e, "execution task failed"); }
                }
                Some(done) = requests.join_next(), if !requests.is_empty() => {
                    if let Err(e) = done { warn!(error = %e, "request handler failed"); }
                }
                _ = heartbeat.tick() => {
                    for peer in orchestrators.iter() {
                        if welcomed.contains(peer) {
                            let c = compute.clone();
                            let p = peer.clone();
                            handshakes.spawn(async move { c.heartbeat(p).await });
                        } else if !handshakes.is_empty() {
                            // A handshake is in flight.
                        } else if refused.get(peer).is_some_and(|(next, _)| Instant::now() < *next) {
                            // Refused recently; see above.
                        } else {
                            handshakes.spawn(compute.clone().handshake(peer.clone()));
                        }
                    }
                }
            }
        }
        // Stop running executions; they are resumed on the next start.
        for token in compute
            .inner
            .running
            .lock()
            .map(|r| r.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            token.cancel();
        }
        executions.shutdown().await;
        requests.shutdown().await;
        tasks.shutdown().await;
    }
}

/// Longest wait before asking an orchestrator that refused this node again.
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(300);

/// How a handshake or heartbeat with an orchestrator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Welcomed: work may flow.
    Welcomed,
    /// A heartbeat was acknowledged (or failed in transit: the link watcher handles that).
    Alive,
    /// The orchestrator refused this node (not admitted, rejected).
    Refused,
    /// It could not be asked; try again at the next heartbeat.
    Failed,
}

impl Compute {
    /// Introduces this node to an orchestrator and resumes delivery from what it has applied.
    async fn handshake(self, peer: NodeId) -> (NodeId, Handshake) {
        let outbox = self.inner.outbox.clone();
        let t = self.inner.tables;
        let p = peer.clone();
        let known = self
            .inner
            .store
            .read(move |txn| {
                let applied = outbox.last_applied(txn, &p)?;
                let held = held_executions(txn, &t, &outbox, &p)?;
                Ok((applied, held))
            })
            .await;
        let (applied, executions) = match known {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot read delivery state");
                return (peer, Handshake::Failed);
            }
        };
        let request = Request::Handshake {
            info: self.node_info(),
            last_applied_seq: applied,
            // The transport adds the join proof (it knows the authenticated peer ids).
            join_proof: None,
            executions,
        };
        match self.inner.client.request(&peer, request).await {
            Ok(Response::Welcome {
                last_applied_seq, ..
            }) => {
                info!(orchestrator = %peer, "connected to orchestrator");
                let (outbox, p) = (self.inner.outbox.clone(), peer.clone());
                if let Err(e) = self
                    .inner
                    .store
                    .write(move |txn| outbox.rebase(txn, &p, last_applied_seq))
                    .await
                {
                    warn!(orchestrator = %peer, error = %e, "cannot renumber queued reports; will retry");
                    return (peer, Handshake::Failed);
                }
                self.inner
                    .outbox
                    .peer_connected(&peer, last_applied_seq)
                    .await;
                (peer, Handshake::Welcomed)
            }
            Ok(Response::Refused { reason }) => {
                warn!(orchestrator = %peer, %reason, "orchestrator refused this node");
                (peer, Handshake::Refused)
            }
            Ok(other) => {
                warn!(orchestrator = %peer, answer = ?other, "unexpected handshake answer");
                (peer, Handshake::Failed)
            }
            Err(e) => {
                warn!(orchestrator = %peer, error = %e, "handshake failed; will retry");
                (peer, Handshake::Failed)
            }
        }
    }

    async fn heartbeat(self, peer: NodeId) -> (NodeId, Handshake) {
        let request = Request::Heartbeat {
            available: self.available(),
            running: self.running_count(),
        };
        let started = Instant::now();
        let answer = self.inner.client.request(&peer, request).await;
        crate::metrics::COMPUTE
            .heartbeat_round_trip
            .observe(started.elapsed());
        match answer {
            Ok(Response::Ack { .. }) => (peer, Handshake::Alive),
            // Forgotten (an orchestrator restart) or rejected since: introduce this node again.
            Ok(Response::Refused { .. }) => self.handshake(peer).await,
            _ => (peer, Handshake::Alive),
        }
    }
}

/// What this node tells `orchestrator` it holds, for the reconciliation: every execution it runs or bid on for
/// it, and every execution a report still queued in the outbox is about (a finished one, or a declined bid,
/// which leaves no record), as ended, so the orchestrator waits for those reports instead of calling them
/// forgotten. Ended executions whose reports were delivered are left out: the orchestrator has them ended
/// too, and the handshake stays as small as the node's current work.
fn held_executions(
    txn: &impl crate::store::Reader,
    t: &Tables,
    outbox: &Outbox,
    orchestrator: &NodeId,
) -> Result<Vec<HeldExecution>, StoreError> {
    let mut held: Vec<HeldExecution> = txn
        .all(t.executions)?
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| {
            &e.orchestrator == orchestrator
                && matches!(e.state, LocalState::Bid | LocalState::Running)
        })
        .map(|e| HeldExecution {
            active: true,
            execution_id: e.execution.id,
            job_id: e.execution.job_id,
        })
        .collect();
    let mut known: HashSet<ExecutionId> = held.iter().map(|h| h.execution_id.clone()).collect();
    for message in outbox.pending(txn, orchestrator, 0)? {
        let (Message::BidResult {
            execution_id,
            job_id,
            ..
        }
        | Message::ExecutionProgress {
            execution_id,
            job_id,
            ..
        }
        | Message::RunResult {
            execution_id,
            job_id,
            ..
        }
        | Message::ComputeError {
            execution_id,
            job_id,
            ..
        }) = message
        else {
            continue;
        };
        if known.insert(execution_id.clone()) {
            held.push(HeldExecution {
                execution_id,
                job_id,
                active: false,
            });
        }
    }
    Ok(held)
}
