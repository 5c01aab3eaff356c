//! The worker's record metrics, labelled by `connector` (a name the runtime bounds).

pub(crate) const POLLED: &str = "trellis_connector_records_polled_total";
pub(crate) const PUBLISHED: &str = "trellis_connector_records_published_total";
pub const PUT: &str = "trellis_connector_records_put_total";
pub const FAILED: &str = "trellis_connector_records_failed_total";
pub(crate) const DEAD_LETTERED: &str = "trellis_connector_records_dead_lettered_total";

/// Describes the worker's metrics to the installed recorder.
pub(crate) fn describe() {
    metrics::describe_counter!(
        POLLED,
        "Records polled from a connector's source, per connector."
    );
    metrics::describe_counter!(
        PUBLISHED,
        "Records a source connector published durably, per connector."
    );
    metrics::describe_counter!(
        PUT,
        "Records a sink connector put with success, per connector."
    );
    metrics::describe_counter!(
        FAILED,
        "Records that failed for good (skipped, dead-lettered or stopping the connector), per connector."
    );
    metrics::describe_counter!(
        DEAD_LETTERED,
        "Records a sink connector sent to its dead-letter topic, per connector."
    );
}

/// One connector's record counters, registered once: a labelled lookup per record cost more
/// than the increment.
pub(crate) struct Counters {
    pub(crate) polled: metrics::Counter,
    /// `PUBLISHED` or `PUT`, by the worker's role.
    pub(crate) succeeded: metrics::Counter,
    pub(crate) failed: metrics::Counter,
    pub(crate) dead_lettered: metrics::Counter,
}

impl Counters {
    pub(crate) fn new(connector: &str, succeeded: &'static str) -> Counters {
        let counter =
            |name: &'static str| metrics::counter!(name, "connector" => connector.to_owned());
        Counters {
            polled: counter(POLLED),
            succeeded: counter(succeeded),
            failed: counter(FAILED),
            dead_lettered: counter(DEAD_LETTERED),
        }
    }
}
