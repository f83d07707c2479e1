//! The compute node's gauges for `/metrics` and rendering them with the event counters of
//! [`crate::metrics::COMPUTE`]. Everything here is in memory or an O(1) table size: a scrape never scans
//! the executions table.

use crate::metrics::COMPUTE;
use crate::metrics::OutboxGauges;
use crate::metrics::exposition::{Encoder, Kind};
use crate::store::StoreError;

use super::Compute;

/// What a scrape reports from the compute node's state.
#[derive(Debug, Default)]
pub struct ComputeGauges {
    /// Executions running now.
    pub running: u64,
    /// The outbox to orchestrators.
    pub outbox: OutboxGauges,
}

impl Compute {
    /// The compute node's gauges.
    pub async fn metrics(&self) -> Result<ComputeGauges, StoreError> {
        let outbox = self.inner.outbox.clone();
        let messages = self
            .inner
            .store
            .read(move |txn| outbox.pending_messages(txn))
            .await?;
        Ok(ComputeGauges {
            running: self.running_count(),
            outbox: OutboxGauges {
                role: "compute",
                messages,
                peers_pending: self.inner.outbox.peers_pending(),
            },
        })
    }
}

/// Writes the compute node's families.
pub fn render(e: &mut Encoder, g: &ComputeGauges) {
    let m = &COMPUTE;
    e.family(
        "cod_compute_executions_running",
        "Executions running on this node",
        Kind::Gauge,
    );
    e.count("cod_compute_executions_running", &[], g.running);
    e.family(
        "cod_compute_executions_finished_total",
        "Executions this node finished, by outcome",
        Kind::Counter,
    );
    for (outcome, c) in [
        ("completed", &m.executions_completed),
        ("failed", &m.executions_failed),
        ("cancelled", &m.executions_cancelled),
    ] {
        e.count(
            "cod_compute_executions_finished_total",
            &[("outcome", outcome)],
            c.get(),
        );
    }
    e.family(
        "cod_compute_bids_total",
        "Executions offered to this node, by bid outcome",
        Kind::Counter,
    );
    e.count(
        "cod_compute_bids_total",
        &[("outcome", "accepted")],
        m.bids_accepted.get(),
    );
    e.count(
        "cod_compute_bids_total",
        &[("outcome", "rejected")],
        m.bids_rejected.get(),
    );
    e.family(
        "cod_compute_orchestrators_connected",
        "Orchestrators that welcomed this node and are connected",
        Kind::Gauge,
    );
    e.count(
        "cod_compute_orchestrators_connected",
        &[],
        m.orchestrators_connected.get(),
    );
    e.family(
        "cod_compute_heartbeat_duration_seconds",
        "Round trip of a heartbeat to an orchestrator",
        Kind::Histogram,
    );
    e.histogram(
        "cod_compute_heartbeat_duration_seconds",
        &[],
        &m.heartbeat_round_trip,
    );
}
