//! Sink connectors' metric names, labelled by `connector`. Sources' are the source worker's
//! (`trellis-connect`), and the offset metrics are `trellis-connect`'s offset writer's.

pub(crate) const RECORDS_PUT: &str = "trellis_connector_records_put_total";
pub(crate) const RECORDS_FAILED: &str = "trellis_connector_records_failed_total";

/// Describes the connector metrics: these, the source worker's and the offset writer's.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        RECORDS_PUT,
        "Records a sink connector delivered to its target, per connector."
    );
    trellis_connect::worker::describe_metrics();
    trellis_connect::offsets::describe_metrics();
}
