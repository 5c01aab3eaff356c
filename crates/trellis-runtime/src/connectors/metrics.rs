//! Sink connectors' series, labelled by `connector`, under `trellis-connect`'s names: sources
//! count theirs in the source worker, and a sink's dispatcher records its offset commits as the
//! offset writer does.

use std::sync::Arc;

use trellis_delivery::report::{DeliveryCallbacks, DeliveryFailure, DeliveryReport};

use crate::subscriptions::CommitMetrics;

use trellis_connect::metric_names::{
    COMMIT_FAILURES as OFFSET_COMMIT_FAILURES, COMMIT_SECONDS as OFFSET_COMMIT_SECONDS,
    COMMITS as OFFSET_COMMITS,
};
pub(crate) use trellis_connect::metric_names::{RECORDS_FAILED, RECORDS_PUT};

/// Describes the connector metrics: the source worker's (which name these too) and the
/// offset writer's.
pub(crate) fn describe_metrics() {
    trellis_connect::describe_metrics();
}

/// A sink connector's offset commit series.
pub(crate) fn commit_metrics(connector: &str) -> CommitMetrics {
    let labels = [("connector", connector.to_owned())];
    CommitMetrics {
        commits: metrics::counter!(OFFSET_COMMITS, &labels),
        failures: metrics::counter!(OFFSET_COMMIT_FAILURES, &labels),
        seconds: metrics::histogram!(OFFSET_COMMIT_SECONDS, &labels),
    }
}

/// The HTTP sink's engine callbacks: counted as the connector's, then handed on.
pub(crate) struct Counted {
    pub(crate) inner: Arc<dyn DeliveryCallbacks>,
    pub(crate) put: metrics::Counter,
    pub(crate) failed: metrics::Counter,
}

impl Counted {
    pub(crate) fn new(connector: &str, inner: Arc<dyn DeliveryCallbacks>) -> Counted {
        let labels = [("connector", connector.to_owned())];
        Counted {
            inner,
            put: metrics::counter!(RECORDS_PUT, &labels),
            failed: metrics::counter!(RECORDS_FAILED, &labels),
        }
    }
}

impl DeliveryCallbacks for Counted {
    fn on_success(&self, report: DeliveryReport) {
        self.put.increment(1);
        self.inner.on_success(report);
    }

    fn on_exception(&self, failure: DeliveryFailure) {
        if failure.class.is_final() {
            self.failed.increment(1);
        }
        self.inner.on_exception(failure);
    }
}
