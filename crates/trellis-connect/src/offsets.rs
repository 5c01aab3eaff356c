//! Offset management: which source offsets may be committed, and committing them without ever
//! taking a worker down.
//!
//! - `submitted`: [`SubmittedRecords`]. Records are submitted per partition in poll order and
//!   acknowledged in any order; only the contiguous prefix of acknowledged records is
//!   committable, so a committed offset never passes an unacknowledged record. An
//!   unacknowledged head holds back its own partition only.
//! - `writer`: [`OffsetWriter`]. `write_offset` stages; `begin_flush` snapshots, and returns
//!   `false` with a warning (never an error) while another flush is in progress, so offsets
//!   that arrive during a slow flush wait for the next one; `do_flush` writes the snapshot
//!   asynchronously; `cancel_flush`, a store error or the flush timeout merge the snapshot back
//!   under anything staged since, so nothing staged is lost. Stale completions are no-ops.
//! - `store`: [`OffsetStore`], the offsets in the metadata store under
//!   `/connectors/<connector>/offsets/<partition>` (names percent-escaped, values a JSON
//!   [`Position`](crate::Position)), with `delete_all` for `DELETE .../offsets`.
//! - `reader`: [`OffsetReader`], the committed positions a source starts from.
//!
//! A source worker's commit, every interval and on stop:
//!
//! ```no_run
//! # async fn example(submitted: &trellis_connect::offsets::SubmittedRecords,
//! #                  writer: &trellis_connect::offsets::OffsetWriter) {
//! writer.write_offsets(submitted.take_committable());
//! // Refused, Failed or TimedOut: the offsets stay staged and go with the next commit.
//! let outcome = writer.commit().await;
//! tracing::debug!(?outcome, "offset commit");
//! # }
//! ```
//!
//! Metrics, labelled by `connector`: `trellis_connector_offset_commits_total`,
//! `trellis_connector_offset_commit_failures_total` (store errors and timeouts),
//! `trellis_connector_offset_commit_seconds` (histogram of each write, whatever its outcome) and
//! `trellis_connector_begin_flush_refused_total`; [`describe_metrics`] describes them.

pub mod reader;
pub mod store;
pub mod submitted;
pub mod writer;

pub use reader::OffsetReader;
pub use store::{OffsetGuard, OffsetStore, OffsetStoreError};
pub use submitted::{SubmittedRecord, SubmittedRecords};
pub use writer::{
    DEFAULT_FLUSH_TIMEOUT, FlushId, FlushOutcome, OffsetWriter, OffsetWriterStats, PendingFlush,
};

/// Displays an error with its sources, for log lines.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Describes the offset metrics to the installed recorder; the runtime calls it once, next to
/// its own `describe`.
pub fn describe_metrics() {
    metrics::describe();
}

pub(crate) mod metrics {
    use std::time::Duration;

    pub const COMMITS: &str = "trellis_connector_offset_commits_total";
    pub const COMMIT_FAILURES: &str = "trellis_connector_offset_commit_failures_total";
    pub const COMMIT_SECONDS: &str = "trellis_connector_offset_commit_seconds";
    pub(super) const BEGIN_FLUSH_REFUSED: &str = "trellis_connector_begin_flush_refused_total";

    pub(super) fn describe() {
        ::metrics::describe_counter!(COMMITS, "Offset flushes persisted, per connector.");
        ::metrics::describe_counter!(
            COMMIT_FAILURES,
            "Offset flushes that failed or timed out, per connector; their offsets are retried."
        );
        ::metrics::describe_histogram!(
            COMMIT_SECONDS,
            ::metrics::Unit::Seconds,
            "Time to persist an offset flush, whatever its outcome, per connector."
        );
        ::metrics::describe_counter!(
            BEGIN_FLUSH_REFUSED,
            "Offset flushes refused because one was in progress, per connector."
        );
    }

    pub(super) fn commit(connector: &str, elapsed: Duration) {
        let connector = connector.to_owned();
        ::metrics::counter!(COMMITS, "connector" => connector.clone()).increment(1);
        ::metrics::histogram!(COMMIT_SECONDS, "connector" => connector)
            .record(elapsed.as_secs_f64());
    }

    pub(super) fn commit_failure(connector: &str, elapsed: Duration) {
        let connector = connector.to_owned();
        ::metrics::counter!(COMMIT_FAILURES, "connector" => connector.clone()).increment(1);
        ::metrics::histogram!(COMMIT_SECONDS, "connector" => connector)
            .record(elapsed.as_secs_f64());
    }

    pub(super) fn begin_flush_refused(connector: &str) {
        ::metrics::counter!(BEGIN_FLUSH_REFUSED, "connector" => connector.to_owned()).increment(1);
    }
}
