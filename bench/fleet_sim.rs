//! A fleet of simulated compute nodes speaking the real protocol, for `cargo bench --bench fleet` and the
//! `fleet` process tests (both include this file with `#[path]`; nothing of it is in the shipped binary).
//!
//! Each simulated node is a real transport endpoint: its own libp2p identity and its own TCP + Noise + Yamux
//! connection to the orchestrator (`cod::transport`, the code compute nodes run). It sends the real
//! `Handshake` (labels, capacity), heartbeats at the configured interval, acknowledges the orchestrator's
//! durable `Deliver`s (applying each sequence number once) and answers every `AskForBid` with a `BidResult`
//! and a `RunResult` through its own sequence numbers, resent until acknowledged, so jobs placed on simulated
//! nodes complete. It runs nothing: the point is the orchestrator's side of a large fleet.
//!
//! A simulator process prints one line of counters (`fleet-sim {json}`) every [`REPORT_EVERY`] on stdout;
//! the parent sums them over its processes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cod::model::{
    ComputeNodeInfo, ExecutionId, JobId, NodeId, NodeInfo, NodeType, Resources, RunCommandResult,
    SpecConfig,
};
use cod::transport::{self, Event, HeldExecution, Identity, Message, Request, Response, Sequenced};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The environment variable that carries a simulator process's settings (see [`SimConfig::to_env`]).
pub const ENV: &str = "COD_FLEET_SIM";

/// How often a simulator process prints its counters.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

/// The prefix of a counters line.
pub const LINE_PREFIX: &str = "fleet-sim ";

/// One simulator process's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The orchestrator's multiaddr, ending in `/p2p/<id>`.
    pub orchestrator: String,
    /// Nodes in this process.
    pub nodes: usize,
    /// Heartbeat interval (the orchestrator's disconnect timeout must be a few of these).
    pub heartbeat: Duration,
    /// Nodes started per second (a ramp, so the orchestrator's accept queue is not flooded at once).
    pub connect_rate: u32,
    /// `name` label prefix, so nodes of different processes are told apart.
    pub group: String,
}

impl SimConfig {
    /// The settings as one environment value.
    pub fn to_env(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.orchestrator,
            self.nodes,
            self.heartbeat.as_millis(),
            self.connect_rate,
            self.group
        )
    }

    /// The settings from [`ENV`], if set.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var(ENV).ok()?;
        let mut p = v.split('|');
        let (Some(orchestrator), Some(nodes), Some(hb), Some(rate), Some(group)) =
            (p.next(), p.next(), p.next(), p.next(), p.next())
        else {
            panic!("{ENV}={v:?}: expected orchestrator|nodes|heartbeat_ms|connect_rate|group");
        };
        Some(Self {
            orchestrator: orchestrator.to_owned(),
            nodes: nodes.parse().expect("node count"),
            heartbeat: Duration::from_millis(hb.parse().expect("heartbeat ms")),
            connect_rate: rate.parse().expect("connect rate"),
            group: group.to_owned(),
        })
    }
}

/// Counters of one simulator process, summed by the parent.
#[derive(Debug, Default)]
pub struct Stats {
    /// Nodes the orchestrator welcomed at least once.
    pub welcomed: AtomicU64,
    /// Nodes whose connection is open now.
    pub connected: AtomicU64,
    /// Heartbeats acknowledged.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats refused (the orchestrator no longer knew the node, or thought it disconnected) or failed in
    /// transit: each is a heartbeat the orchestrator did not handle.
    pub heartbeats_missed: AtomicU64,
    /// Heartbeats answered later than the heartbeat interval.
    pub heartbeats_late: AtomicU64,
    /// Times a connection closed after the node was welcomed.
    pub disconnects: AtomicU64,
    /// Executions this process reported completed (acknowledged by the orchestrator).
    pub completed: AtomicU64,
}

impl Stats {
    /// The counters as one JSON line.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{LINE_PREFIX}{{\"welcomed\":{},\"connected\":{},\"heartbeats_ok\":{},\"heartbeats_missed\":{},\"heartbeats_late\":{},\"disconnects\":{},\"completed\":{}}}",
            g(&self.welcomed),
            g(&self.connected),
            g(&self.heartbeats_ok),
            g(&self.heartbeats_missed),
            g(&self.heartbeats_late),
            g(&self.disconnects),
            g(&self.completed),
        )
    }
}

/// Runs a simulator process: `config.nodes` nodes until the process is killed.
pub fn run_process(config: SimConfig) -> ! {
    let limit = cod::cli::fd_limit::raise_to_hard();
    if limit.is_some_and(|l| l < config.nodes as u64 + 64) {
        eprintln!(
            "fleet-sim: the open-file limit {limit:?} is below {} nodes; raise `ulimit -Hn`",
            config.nodes
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let orchestrator = transport::parse_node_id(
            config
                .orchestrator
                .rsplit("/p2p/")
                .next()
                .expect("address ends in /p2p/<id>"),
        )
        .expect("orchestrator id");
        let s = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPORT_EVERY);
            loop {
                tick.tick().await;
                println!("{}", s.line());
            }
        });
        let pause = Duration::from_secs(1) / config.connect_rate.max(1);
        for i in 0..config.nodes {
            let node = SimNode::new(&config, i, orchestrator.clone(), stats.clone());
            tokio::spawn(node.run(shutdown.child_token()));
            tokio::time::sleep(pause).await;
        }
        std::future::pending::<()>().await;
    });
    unreachable!("the simulator runs until killed")
}

/// What a spawned request of a node came back with.
#[derive(Debug)]
enum Outcome {
    Handshake(Result<Response, transport::TransportError>),
    Heartbeat(Result<Response, transport::TransportError>, Duration),
    Delivered(Result<Response, transport::TransportError>, u64),
}

/// One simulated compute node.
struct SimNode {
    config: SimConfig,
    index: usize,
    orchestrator: NodeId,
    stats: Arc<Stats>,
}

impl SimNode {
    fn new(config: &SimConfig, index: usize, orchestrator: NodeId, stats: Arc<Stats>) -> Self {
        Self {
            config: config.clone(),
            index,
            orchestrator,
            stats,
        }
    }

    /// What a real compute node with one wasm engine and a few cores says about itself.
    fn info(&self) -> NodeInfo {
        let cap = Resources {
            cpu: 4.0,
            memory: 4 << 30,
            disk: 16 << 30,
            gpu: 0,
        };
        NodeInfo {
            node_type: NodeType::Compute,
            labels: [
                ("name", format!("{}-{}", self.config.group, self.index)),
                ("fleet", self.config.group.clone()),
                ("os_type", "linux".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            compute_node_info: ComputeNodeInfo {
                execution_engines: vec!["wasm".into()],
                publishers: vec!["noop".into(), "local".into()],
                storage_sources: vec!["inline".into(), "urlDownload".into()],
                max_capacity: cap.into(),
                available_capacity: cap.into(),
                max_job_requirements: cap,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn run(self, shutdown: CancellationToken) {
        let hb = self.config.heartbeat;
        let transport_config = transport::Config {
            orchestrators: vec![self.config.orchestrator.clone()],
            request_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            // Heartbeats keep the connection busy; an idle close would be a simulated outage.
            idle_timeout: (hb * 4).max(Duration::from_secs(120)),
            ..Default::default()
        };
        let (client, mut events, event_loop) =
            transport::new(Identity::generate(), transport_config).expect("transport");
        tokio::spawn(event_loop.run(shutdown.child_token()));
        let (done_tx, mut done) = mpsc::unbounded_channel::<Outcome>();
        let orch = self.orchestrator.clone();
        let info = self.info();
        let stats = self.stats.clone();
        let mut connected = false;
        let mut welcomed = false;
        let mut ever_welcomed = false;
        let mut handshaking = false;
        // Highest orchestrator sequence number applied; this node's own next one and what waits for an ack.
        let mut applied = 0u64;
        let mut next_seq = 1u64;
        let mut unacked: Vec<Sequenced> = Vec::new();
        let mut delivering = false;
        let mut jobs: HashMap<ExecutionId, JobId> = HashMap::new();
        // Spread the fleet's heartbeats over the interval instead of beating in step.
        let offset = hb.mul_f64((self.index as f64 * 0.618_033_988_7).fract());
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + offset, hb);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let handshake = |applied: u64, executions: Vec<HeldExecution>| {
            let (c, o, tx, info) = (client.clone(), orch.clone(), done_tx.clone(), info.clone());
            tokio::spawn(async move {
                let request = Request::Handshake {
                    info,
                    last_applied_seq: applied,
                    join_proof: None,
                    executions,
                };
                let _ = tx.send(Outcome::Handshake(c.request(&o, request).await));
            });
        };
        let deliver = |messages: Vec<Sequenced>| {
            let (c, o, tx) = (client.clone(), orch.clone(), done_tx.clone());
            let last = messages.last().map_or(0, |m| m.seq);
            tokio::spawn(async move {
                let r = c.request(&o, Request::Deliver { messages }).await;
                let _ = tx.send(Outcome::Delivered(r, last));
            });
        };

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event {
                    None => return,
                    Some(Event::PeerConnected(_)) => {
                        connected = true;
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        if !handshaking {
                            handshaking = true;
                            handshake(applied, held(&jobs, &unacked));
                        }
                    }
                    Some(Event::PeerDisconnected(_)) => {
                        if connected {
                            stats.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        if welcomed {
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        connected = false;
                        welcomed = false;
                        delivering = false;
                    }
                    Some(Event::Request { request, reply, .. }) => {
                        let response = match *request {
                            Request::Deliver { messages } => {
                                for m in messages {
                                    if m.seq <= applied {
                                        continue; // a replay: applied already
                                    }
                                    applied = m.seq;
                                    let reports = answer(m.message, &mut jobs);
                                    for message in reports {
                                        unacked.push(Sequenced { seq: next_seq, message });
                                        next_seq += 1;
                                    }
                                }
                                Response::Ack { last_applied_seq: applied }
                            }
                            Request::ReadOutput { .. } => Response::Output {
                                stdout: Vec::new(),
                                stderr: Vec::new(),
                                running: false,
                            },
                            _ => Response::Refused {
                                reason: "compute nodes accept only Deliver and ReadOutput requests".into(),
                            },
                        };
                        let _ = reply.send(response);
                        if welcomed && !delivering && !unacked.is_empty() {
                            delivering = true;
                            deliver(unacked.clone());
                        }
                    }
                },
                Some(outcome) = done.recv() => match outcome {
                    Outcome::Handshake(r) => {
                        handshaking = false;
                        if let Ok(Response::Welcome { last_applied_seq, .. }) = r {
                            welcomed = connected;
                            if !ever_welcomed {
                                ever_welcomed = true;
                                stats.welcomed.fetch_add(1, Ordering::Relaxed);
                            }
                            unacked.retain(|m| m.seq > last_applied_seq);
                            if !unacked.is_empty() && !delivering {
                                delivering = true;
                                deliver(unacked.clone());
                            }
                        }
                    }
                    Outcome::Heartbeat(r, took) => match r {
                        Ok(Response::Ack { .. }) => {
                            stats.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                            if took > hb {
                                stats.heartbeats_late.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {
                            // Refused: the orchestrator forgot this node or marked it gone. Introduce it again.
                            stats.heartbeats_missed.fetch_add(1, Ordering::Relaxed);
                            welcomed = false;
                            if connected && !handshaking {
                                handshaking = true;
                                handshake(applied, held(&jobs, &unacked));
                            }
                        }
                        Err(_) => {
                            stats.heartbeats_missed.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Outcome::Delivered(r, last) => {
                        delivering = false;
                        if let Ok(Response::Ack { last_applied_seq }) = r {
                            let acked = last_applied_seq.min(last);
                            // Each execution ends with its RunResult: count those acknowledged.
                            let completed = unacked
                                .iter()
                                .filter(|m| m.seq <= acked && matches!(m.message, Message::RunResult { .. }))
                                .count();
                            unacked.retain(|m| m.seq > acked);
                            stats.completed.fetch_add(completed as u64, Ordering::Relaxed);
                        }
                        if welcomed && !unacked.is_empty() {
                            delivering = true;
                            deliver(unacked.clone());
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    if welcomed {
                        let (c, o, tx) = (client.clone(), orch.clone(), done_tx.clone());
                        let available = info.compute_node_info.available_capacity.clone();
                        tokio::spawn(async move {
                            let t = Instant::now();
                            let r = c.request(&o, Request::Heartbeat { available, running: 0 }).await;
                            let _ = tx.send(Outcome::Heartbeat(r, t.elapsed()));
                        });
                    } else if connected && !handshaking {
                        handshaking = true;
                        handshake(applied, held(&jobs, &unacked));
                    }
                }
            }
        }
    }
}

/// What the node holds, for the reconciliation handshake: executions waiting for BidAccepted are active;
/// those whose reports are still unacknowledged have ended here (the reports will be delivered).
fn held(jobs: &HashMap<ExecutionId, JobId>, unacked: &[Sequenced]) -> Vec<HeldExecution> {
    let waiting = jobs.iter().map(|(e, j)| HeldExecution {
        execution_id: e.clone(),
        job_id: j.clone(),
        active: true,
    });
    let reported = unacked.iter().filter_map(|s| match &s.message {
        Message::BidResult {
            execution_id,
            job_id,
            ..
        }
        | Message::RunResult {
            execution_id,
            job_id,
            ..
        } => Some(HeldExecution {
            execution_id: execution_id.clone(),
            job_id: job_id.clone(),
            active: false,
        }),
        _ => None,
    });
    let mut all: Vec<HeldExecution> = waiting.chain(reported).collect();
    // A BidResult and a RunResult of one execution: keep one entry, "ended" when a report says so.
    all.sort_by(|a, b| {
        a.execution_id
            .cmp(&b.execution_id)
            .then(a.active.cmp(&b.active))
    });
    all.dedup_by(|b, a| a.execution_id == b.execution_id);
    all
}

/// A simulated node's reports for one orchestrator message: it bids on everything and "runs" at once.
fn answer(message: Message, jobs: &mut HashMap<ExecutionId, JobId>) -> Vec<Message> {
    let done = |execution_id: ExecutionId, job_id: JobId| Message::RunResult {
        execution_id,
        job_id,
        published_result: SpecConfig {
            kind: "noop".into(),
            ..Default::default()
        },
        run_output: RunCommandResult::default(),
    };
    match message {
        Message::AskForBid {
            execution,
            accept_directly,
        } => {
            let (execution_id, job_id) = (execution.id.clone(), execution.job_id.clone());
            let bid = Message::BidResult {
                execution_id: execution_id.clone(),
                job_id: job_id.clone(),
                accepted: true,
                reason: String::new(),
            };
            if accept_directly {
                vec![bid, done(execution_id, job_id)]
            } else {
                jobs.insert(execution_id, job_id);
                vec![bid]
            }
        }
        Message::BidAccepted { execution_id } => match jobs.remove(&execution_id) {
            Some(job_id) => vec![done(execution_id, job_id)],
            None => Vec::new(),
        },
        Message::BidRejected { execution_id, .. }
        | Message::CancelExecution { execution_id, .. } => {
            jobs.remove(&execution_id);
            Vec::new()
        }
        _ => Vec::new(),
    }
}
