//! Metric names, recorded through the `metrics` facade: whatever recorder the application
//! installs (Prometheus, StatsD, none) gets them. Each carries a `role` label, `producer` or
//! `consumer`, and a `topic` label.
//!
//! The handles are registered once, when the producer or consumer is created, so recording costs
//! no label allocation per record; install the recorder before creating them.

use metrics::{Counter, Gauge};

use crate::state::ConnectionState;

/// Gauge: 0 ready, 1 backoff, 2 recovering ([`ConnectionState::as_gauge`]).
pub const STATE: &str = "trellis_client_state";
/// Counter: records handed to the producer.
pub const RECORDS_SENT: &str = "trellis_client_records_sent_total";
/// Counter: records stored (or found already stored) by the server.
pub const RECORDS_ACKED: &str = "trellis_client_records_acked_total";
/// Counter: records that failed for good (refused, timed out).
pub const RECORDS_FAILED: &str = "trellis_client_records_failed_total";
/// Counter: batches sent again after a failure.
pub const RETRIES: &str = "trellis_client_retries_total";
/// Counter: connections opened after a failure.
pub const RECONNECTS: &str = "trellis_client_reconnects_total";
/// Gauge: encoded bytes held by the producer.
pub const BUFFERED_BYTES: &str = "trellis_client_buffered_bytes";
/// Counter: events delivered to a consumer.
pub const DELIVERIES: &str = "trellis_client_deliveries_total";

/// The handles one producer or consumer records through.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) state: Gauge,
    pub(crate) records_sent: Counter,
    pub(crate) records_acked: Counter,
    pub(crate) records_failed: Counter,
    pub(crate) retries: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) buffered_bytes: Gauge,
    pub(crate) deliveries: Counter,
}

impl Metrics {
    pub(crate) fn new(role: &'static str, topic: &str) -> Metrics {
        let labels = [("role", role.to_owned()), ("topic", topic.to_owned())];
        Metrics {
            state: metrics::gauge!(STATE, &labels),
            records_sent: metrics::counter!(RECORDS_SENT, &labels),
            records_acked: metrics::counter!(RECORDS_ACKED, &labels),
            records_failed: metrics::counter!(RECORDS_FAILED, &labels),
            retries: metrics::counter!(RETRIES, &labels),
            reconnects: metrics::counter!(RECONNECTS, &labels),
            buffered_bytes: metrics::gauge!(BUFFERED_BYTES, &labels),
            deliveries: metrics::counter!(DELIVERIES, &labels),
        }
    }

    pub(crate) fn set_state(&self, state: ConnectionState) {
        self.state.set(state.as_gauge());
    }

    pub(crate) fn set_buffered_bytes(&self, bytes: usize) {
        #[allow(clippy::cast_precision_loss)] // Exact up to 2^53 bytes, far beyond the 4 GiB cap.
        self.buffered_bytes.set(bytes as f64);
    }
}
