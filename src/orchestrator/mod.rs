//! The orchestrator (Bacalhau's "requester"): accepts jobs, schedules them on compute nodes, tracks executions
//! and node membership.
//!
//! It owns the `orchestrator.*` tables. Every state change (a job submitted, an execution placed, a compute
//! node's report applied) is one write transaction that also appends the job's history and queues the
//! messages the change causes in the durable [`Outbox`]. The scheduler is a pure function run inside that
//! transaction, so a plan is never half applied. Compute nodes are reached only through [`transport`]
//! messages, in a hybrid node too.
//!
//! [`transport`]: crate::transport

pub mod admission;
mod bells;
mod events;
mod jobs;
mod liveness;
pub mod metrics;
mod reconcile;
mod registry;
mod replan;
pub mod scheduler;
mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::{NodeId, ValidationErrors};
use crate::outbox::{self, Delivery, Outbox};
use crate::store::{Store, StoreError};
use crate::transport::{Client, Event};

pub use jobs::{HistoryFilter, HistoryPage, JobListing, NodeAction, SubmitResponse};
pub use scheduler::JobDefaults;

use registry::Registry;
use state::Tables;

/// Orchestrator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// New compute nodes are approved without an operator (`false`: they wait in PENDING for `cod node approve`).
    pub auto_approve: bool,
    /// A connected node silent this long is marked disconnected.
    pub disconnect_timeout: Duration,
    /// A node disconnected this long is lost: its batch and service executions are placed elsewhere.
    pub node_lost_after: Duration,
    /// How often timers (disconnects, queued jobs) are checked.
    pub housekeeping_interval: Duration,
    /// How long a queued job waits before it is evaluated again.
    pub queue_backoff: Duration,
    /// Resources for tasks that do not state them.
    pub job_defaults: JobDefaults,
    /// A node is given work up to its capacity times this (≥ 1; `Orchestrator.OverSubscriptionFactor`).
    pub over_subscription: f64,
    /// Who may join (`Orchestrator.Auth`).
    pub admission: admission::Policy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auto_approve: true,
            disconnect_timeout: Duration::from_secs(60),
            node_lost_after: Duration::from_secs(600),
            housekeeping_interval: Duration::from_secs(5),
            queue_backoff: Duration::from_secs(10),
            job_defaults: JobDefaults::default(),
            over_subscription: 1.0,
            admission: admission::Policy::default(),
        }
    }
}

impl Config {
    /// What the scheduler needs of these settings.
    pub(crate) fn scheduler(&self) -> scheduler::Settings {
        scheduler::Settings {
            defaults: self.job_defaults,
            over_subscription: self.over_subscription,
            queue_backoff: self.queue_backoff,
        }
    }
}

/// Something the orchestrator refused or failed to do.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The job spec is invalid; every problem is listed.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The request is malformed in a way that is not a spec field.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing with that id or name.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `job`, `node`, `execution`.
        kind: &'static str,
        /// What was asked for.
        id: String,
    },
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The state database failed.
    #[error("orchestrator state operation failed")]
    Store(#[from] StoreError),
}

/// Shared state of the orchestrator.
#[derive(Debug)]
struct Inner {
    /// This node's id (goes into job Meta and Welcome answers).
    node_id: NodeId,
    store: Store,
    tables: Tables,
    registry: Registry,
    /// Durable messages to compute nodes.
    outbox: Outbox,
    config: Config,
    /// Bumped after every committed change, so long-polls and waiters wake without polling the store.
    changes: watch::Sender<u64>,
    /// Rung for each job whose history a commit added to: what a history long-poll waits on.
    bells: Arc<bells::JobBells>,
    /// Wakes the evaluation worker (queued jobs, node joins). Bounded: one pending wake-up is enough.
    evaluate: mpsc::Sender<()>,
    /// Asks compute nodes for what is not durable (live output).
    client: Client,
    /// Paces the log lines of refused handshakes.
    refusals: admission::RefusalLog,
    /// A re-evaluation of queued jobs for newly approved nodes is on its way (one pass serves every node
    /// that joined before it starts, so a fleet connecting at once costs a few passes, not one per node).
    reevaluation_pending: std::sync::atomic::AtomicBool,
}

/// Cloneable handle used by the API.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

/// The orchestrator's tasks; spawn [`Runner::run`].
#[derive(Debug)]
pub struct Runner {
    orchestrator: Orchestrator,
    events: mpsc::Receiver<Event>,
    delivery: Delivery,
    evaluate_rx: mpsc::Receiver<()>,
}

impl Orchestrator {
    /// Opens the orchestrator's state and reloads known nodes. `events` are the transport's events for this
    /// role.
    pub fn new(
        store: Store,
        client: Client,
        events: mpsc::Receiver<Event>,
        config: Config,
    ) -> Result<(Orchestrator, Runner), OrchestratorError> {
        let tables = Tables::open(&store)?;
        store.write_sync(move |txn| state::derive_missing(txn, &tables))?;
        let (outbox, delivery) = Outbox::new(
            &store,
            client.clone(),
            outbox::Tables {
                messages: "orchestrator.outbox",
                counters: "orchestrator.outbox_counters",
            },
        )?;
        let registry = Registry::default();
        let (nodes, allocated) =
            store.read_sync(|txn| jobs::load_registry(txn, &tables, &config.job_defaults))?;
        info!(nodes = nodes.len(), "orchestrator state loaded");
        registry.load(nodes, allocated);
        let (evaluate, evaluate_rx) = mpsc::channel(1);
        let inner = Inner {
            node_id: client.local_id().clone(),
            store,
            tables,
            registry,
            outbox,
            config,
            changes: watch::channel(0).0,
            bells: Arc::default(),
            evaluate,
            client,
            refusals: admission::RefusalLog::default(),
            reevaluation_pending: Default::default(),
        };
        let orchestrator = Orchestrator {
            inner: Arc::new(inner),
        };
        let runner = Runner {
            orchestrator: orchestrator.clone(),
            events,
            delivery,
            evaluate_rx,
        };
        Ok((orchestrator, runner))
    }

    /// A receiver that changes after every committed state change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Listens for records added to `job`'s history from now on.
    pub(crate) fn listen_to_history(&self, job: &crate::model::JobId) -> bells::Listener {
        self.inner.bells.listen(job)
    }

    /// Waits until node `id` is connected and approved, or `timeout` passes; whether it is. A hybrid node
    /// waits for its own compute half before it calls itself ready: a job submitted the moment the ready
    /// file appears must find a node, not fail with "no compute node is connected".
    pub async fn wait_for_node(&self, id: &NodeId, timeout: std::time::Duration) -> bool {
        let mut changes = self.subscribe();
        let usable = || {
            self.inner.registry.get(id).is_some_and(|n| {
                n.connection == crate::model::NodeConnection::Connected
                    && n.membership == crate::model::NodeMembership::Approved
            })
        };
        tokio::time::timeout(timeout, async {
            while !usable() {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// This orchestrator's node id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn wake_evaluations(&self) {
        let _ = self.inner.evaluate.try_send(());
    }
}

impl Runner {
    /// Runs the orchestrator until `shutdown`: transport events, outbox delivery, evaluations, housekeeping.
    pub async fn run(self, shutdown: CancellationToken) {
        let Runner {
            orchestrator,
            mut events,
            delivery,
            mut evaluate_rx,
        } = self;
        let mut tasks = JoinSet::new();
        tasks.spawn(delivery.run(shutdown.child_token()));
        // Evaluations left from before a restart (queued jobs) run now.
        orchestrator.wake_evaluations();
        let mut housekeeping =
            tokio::time::interval(orchestrator.inner.config.housekeeping_interval);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Requests are handled concurrently (a Deliver costs a commit) but each peer sends its next batch only
        // after the previous answer, so per-peer order holds. Bounded by the number of connected peers.
        let mut requests = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    None => break,
                    Some(Event::Request { peer, request, reply }) => {
                        let o = orchestrator.clone();
                        requests.spawn(async move {
                            let kind = crate::metrics::RequestKind::of(&request);
                            let started = std::time::Instant::now();
                            let response = o.handle_request(&peer, *request).await;
                            crate::metrics::ORCHESTRATOR.request_handled(kind, started.elapsed());
                            let _ = reply.send(response);
                        });
                    }
                    Some(Event::PeerConnected(peer)) => {
                        tracing::debug!(peer = %peer, "peer connected; waiting for its handshake");
                    }
                    Some(Event::PeerDisconnected(peer)) => {
                        orchestrator.node_gone(&peer, "connection closed").await;
                    }
                },
                Some(()) = evaluate_rx.recv() => {
                    if let Err(e) = orchestrator.run_due_evaluations().await {
                        warn!(error = %e, "evaluations failed; will retry");
                    }
                }
                _ = housekeeping.tick() => {
                    orchestrator.housekeeping().await;
                }
                Some(done) = requests.join_next(), if !requests.is_empty() => {
                    if let Err(e) = done { warn!(error = %e, "request handler failed"); }
                }
            }
        }
        requests.shutdown().await;
        tasks.shutdown().await;
    }
}

impl Orchestrator {
    async fn housekeeping(&self) {
        for id in self
            .inner
            .registry
            .silent_for(self.inner.config.disconnect_timeout)
        {
            self.node_gone(&id, "heartbeats stopped").await;
        }
        for lost in self
            .inner
            .registry
            .newly_lost(self.inner.config.node_lost_after)
        {
            self.node_lost(lost).await;
        }
        if let Err(e) = self.run_due_evaluations().await {
            warn!(error = %e, "evaluations failed; will retry");
        }
    }
}

impl Orchestrator {
    /// Records a node as lost and moves its batch and service work elsewhere, in one transaction.
    async fn node_lost(&self, node: crate::model::NodeState) {
        let id = node.info.node_id.clone();
        tracing::warn!(node_id = %id, "compute node lost; rescheduling its executions");
        let retry = id.clone();
        let t = self.inner.tables;
        let outbox = self.inner.outbox.clone();
        let settings = self.inner.config.scheduler();
        let lost_after = self.inner.config.node_lost_after;
        let result = self
            .write(move |txn, after| {
                txn.put(t.nodes, id.as_str(), &node)?;
                let planning = replan::Planning {
                    t: &t,
                    outbox: &outbox,
                    settings: &settings,
                };
                liveness::lose_node(txn, &planning, &id, lost_after, after)
            })
            .await;
        if let Err(e) = result {
            warn!(node_id = %retry, error = %e, "cannot reschedule a lost node's executions; will retry");
            self.inner.registry.not_lost_yet(&retry);
        }
    }
}
