//! Prometheus metrics for `GET /metrics` on every node.
//!
//! It owns the event counters and latency histograms the other modules bump (one-line hooks), and the text
//! rendering of everything a scrape returns. It must never do I/O on the hot path: a hook is one or two
//! relaxed atomic adds. Gauges that describe stored state (jobs by state, nodes by connection, outbox depth)
//! are not kept here; each role computes them from its own handle at scrape time with a bounded read (see
//! [`crate::orchestrator::Orchestrator::metrics`] and [`crate::compute::Compute::metrics`]).
//!
//! Why statics: a counter here is a fact about the process (Prometheus' unit of scraping), read by nobody but
//! the scrape, so threading a handle through every constructor would only add noise to the hooks in files
//! other people edit. They are plain atomics, lock-free, and never decide anything. The price: in-process
//! tests that run several nodes in one process share them, so only process tests assert on their values.
//!
//! Why not the `prometheus` or `metrics` crates: the set is small and fixed, a registry of atomics with fixed
//! buckets is ~400 lines, and either crate brings its own registry, hashing and (for `prometheus`) protobuf
//! into an edge binary with an 8 MiB budget.
//!
//! Layout: [`exposition`] writes the text format 0.0.4; [`process`] reads `/proc/self`; this file holds the
//! primitive types and the two roles' counters.

pub mod exposition;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::transport::Request;

pub use exposition::Encoder;

/// The `Content-Type` of a scrape answer (text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (set by its owner).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency buckets: 0.5 ms to 10 s covers a loopback request and a commit
/// on an SD card; slower is `+Inf`. Fixed so that observing is one search and two atomic adds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BUCKETS`]. Buckets are stored non-cumulatively (one add per
/// observation) and summed when rendered.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in nanoseconds (584 years before it wraps).
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`, equal to the count) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        #[allow(clippy::cast_precision_loss)] // seconds as f64 lose nothing a scrape cares about
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum)
    }
}

/// What a compute node asked the orchestrator, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Introduction and reconciliation.
    Handshake,
    /// Liveness.
    Heartbeat,
    /// A changed node description.
    UpdateInfo,
    /// A batch of durable reports.
    Deliver,
    /// Live output of an execution.
    ReadOutput,
}

impl RequestKind {
    /// Every kind, in label order.
    pub const ALL: [RequestKind; 5] = [
        Self::Handshake,
        Self::Heartbeat,
        Self::UpdateInfo,
        Self::Deliver,
        Self::ReadOutput,
    ];

    /// The kind of `request`.
    pub fn of(request: &Request) -> Self {
        match request {
            Request::Handshake { .. } => Self::Handshake,
            Request::Heartbeat { .. } => Self::Heartbeat,
            Request::UpdateInfo { .. } => Self::UpdateInfo,
            Request::Deliver { .. } => Self::Deliver,
            Request::ReadOutput { .. } => Self::ReadOutput,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Heartbeat => "heartbeat",
            Self::UpdateInfo => "update_info",
            Self::Deliver => "deliver",
            Self::ReadOutput => "read_output",
        }
    }
}

/// The orchestrator's event counters.
#[derive(Debug)]
pub struct OrchestratorCounters {
    /// Jobs accepted by `submit` (committed).
    pub jobs_submitted: Counter,
    /// Bid results received from compute nodes that accepted an execution.
    pub bids_accepted: Counter,
    /// Bid results received that declined one.
    pub bids_rejected: Counter,
    /// Time to answer a compute node's request, per [`RequestKind::ALL`] index.
    pub request_seconds: [Histogram; RequestKind::ALL.len()],
    /// Outbox `Deliver` round trips to compute nodes.
    pub outbox_round_trip: Histogram,
}

/// The compute node's event counters.
#[derive(Debug)]
pub struct ComputeCounters {
    /// Executions this node bid on.
    pub bids_accepted: Counter,
    /// Executions this node declined (policy, capacity, engine).
    pub bids_rejected: Counter,
    /// Executions that ended with a published result.
    pub executions_completed: Counter,
    /// Executions that failed.
    pub executions_failed: Counter,
    /// Executions cancelled (stopped by the orchestrator or the user).
    pub executions_cancelled: Counter,
    /// Heartbeat request round trips to orchestrators.
    pub heartbeat_round_trip: Histogram,
    /// Outbox `Deliver` round trips to orchestrators.
    pub outbox_round_trip: Histogram,
    /// Orchestrators that welcomed this node and are connected now (set by the compute run loop).
    pub orchestrators_connected: Gauge,
}

/// The orchestrator's counters (see the module docs for why this is a static).
pub static ORCHESTRATOR: OrchestratorCounters = OrchestratorCounters {
    jobs_submitted: Counter::new(),
    bids_accepted: Counter::new(),
    bids_rejected: Counter::new(),
    request_seconds: [const { Histogram::new() }; RequestKind::ALL.len()],
    outbox_round_trip: Histogram::new(),
};

/// The compute node's counters.
pub static COMPUTE: ComputeCounters = ComputeCounters {
    bids_accepted: Counter::new(),
    bids_rejected: Counter::new(),
    executions_completed: Counter::new(),
    executions_failed: Counter::new(),
    executions_cancelled: Counter::new(),
    heartbeat_round_trip: Histogram::new(),
    outbox_round_trip: Histogram::new(),
    orchestrators_connected: Gauge::new(),
};

/// The transport's counters (either role).
#[derive(Debug)]
pub struct TransportCounters {
    /// Requests sent to remote peers on their link (one frame each).
    pub requests_on_link: Counter,
    /// Requests sent to remote peers on a stream of their own (no link, or its queue was full).
    pub requests_on_stream: Counter,
    /// Links open now.
    pub links: Gauge,
}

/// The transport's counters.
pub static TRANSPORT: TransportCounters = TransportCounters {
    requests_on_link: Counter::new(),
    requests_on_stream: Counter::new(),
    links: Gauge::new(),
};

impl OrchestratorCounters {
    /// Records how long answering `kind` took.
    pub fn request_handled(&self, kind: RequestKind, took: Duration) {
        let i = RequestKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.request_seconds[i].observe(took);
    }
}

/// Records an outbox `Deliver` round trip; `outbox_table` (the outbox's message table) tells the role,
/// since a hybrid node runs both outboxes.
pub fn outbox_round_trip(outbox_table: &str, took: Duration) {
    if outbox_table.starts_with("orchestrator.") {
        ORCHESTRATOR.outbox_round_trip.observe(took);
    } else {
        COMPUTE.outbox_round_trip.observe(took);
    }
}

/// One role's outbox at scrape time.
#[derive(Debug, Default, Clone)]
pub struct OutboxGauges {
    /// `orchestrator` or `compute`.
    pub role: &'static str,
    /// Messages still in the table: undelivered, plus acknowledged ones not yet trimmed (trimmed within
    /// seconds by the next write or sweep).
    pub messages: u64,
    /// Peers with messages queued and not yet acknowledged since this process started.
    pub peers_pending: u64,
}

/// Writes the outbox families for the roles this node has (a hybrid node has two outboxes, told apart by
/// `role`, in one family each, as the format requires).
pub fn render_outboxes(e: &mut Encoder, outboxes: &[OutboxGauges]) {
    if outboxes.is_empty() {
        return;
    }
    e.family(
        "cod_outbox_messages",
        "Durable messages in the outbox, by role (undelivered, plus acknowledged ones not yet trimmed)",
        exposition::Kind::Gauge,
    );
    for o in outboxes {
        e.count("cod_outbox_messages", &[("role", o.role)], o.messages);
    }
    e.family(
        "cod_outbox_peers_pending",
        "Peers with outbox messages not yet acknowledged, by role",
        exposition::Kind::Gauge,
    );
    for o in outboxes {
        e.count(
            "cod_outbox_peers_pending",
            &[("role", o.role)],
            o.peers_pending,
        );
    }
    e.family(
        "cod_outbox_delivery_duration_seconds",
        "Round trip of one outbox delivery (a batch of messages until acknowledged), by role",
        exposition::Kind::Histogram,
    );
    for o in outboxes {
        let h = if o.role == "orchestrator" {
            &ORCHESTRATOR.outbox_round_trip
        } else {
            &COMPUTE.outbox_round_trip
        };
        e.histogram(
            "cod_outbox_delivery_duration_seconds",
            &[("role", o.role)],
            h,
        );
    }
}

/// Writes the families every node has: build info and the process's own figures.
pub fn render_common(e: &mut Encoder) {
    e.family(
        "cod_build_info",
        "Build of this cod binary (always 1)",
        exposition::Kind::Gauge,
    );
    let features = crate::FEATURES.join(",");
    e.sample(
        "cod_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("features", &features),
        ],
        1.0,
    );
    process::render(e);
    e.family(
        "cod_transport_requests_sent_total",
        "Requests sent to other Cod nodes, by path: one frame on the peer's long-lived link, or a stream each",
        exposition::Kind::Counter,
    );
    e.count(
        "cod_transport_requests_sent_total",
        &[("path", "link")],
        TRANSPORT.requests_on_link.get(),
    );
    e.count(
        "cod_transport_requests_sent_total",
        &[("path", "stream")],
        TRANSPORT.requests_on_stream.get(),
    );
    e.family(
        "cod_transport_links",
        "Long-lived links to other Cod nodes open now (the path of durable deliveries)",
        exposition::Kind::Gauge,
    );
    e.count("cod_transport_links", &[], TRANSPORT.links.get());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_the_count() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100)); // first bucket
        h.observe(Duration::from_millis(3)); // 0.005
        h.observe(Duration::from_secs(60)); // +Inf only
        let (cumulative, sum) = h.snapshot();
        assert_eq!(cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[3], 2, "{cumulative:?}");
        assert_eq!(cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(cumulative.last(), Some(&3));
        assert!(cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert!((sum - 60.0031).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_bound_is_inclusive() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(1));
        let (cumulative, _) = h.snapshot();
        assert_eq!((cumulative[0], cumulative[1]), (0, 1));
    }
}
