//! Metric names, recorded through the `metrics` facade: whatever recorder the application
//! installs (Prometheus, StatsD, none) gets them. Each carries a `role` label, `producer` or
//! `consumer`, and the topic.

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

pub(crate) fn state(role: &'static str, topic: &str, state: ConnectionState) {
    metrics::gauge!(STATE, "role" => role, "topic" => topic.to_owned()).set(state.as_gauge());
}

pub(crate) fn count(name: &'static str, role: &'static str, topic: &str, n: u64) {
    metrics::counter!(name, "role" => role, "topic" => topic.to_owned()).increment(n);
}

pub(crate) fn buffered_bytes(topic: &str, bytes: usize) {
    #[allow(clippy::cast_precision_loss)] // Exact up to 2^53 bytes, far beyond the 4 GiB cap.
    let bytes = bytes as f64;
    metrics::gauge!(BUFFERED_BYTES, "role" => "producer", "topic" => topic.to_owned()).set(bytes);
}
