//! The connector API: how data moves between Trellis and the systems around it.
//!
//! **Invariant:** every record that has a callback ends in exactly one call, `on_success` or
//! `on_exception`, on every path. [`Completion`] is consumed by the call that reports; dropping
//! it unreported reports [`SendError::Dropped`]; it cannot be cloned, and a cloned record carries
//! no callback, so a copy cannot report for the original; [`Completion::split`] turns one
//! obligation into parts whose last one reports the whole. A record's failure goes to its
//! callback, never into the connector's `Result`, so one record cannot stop a connector.
//!
//! - `position`: where a record came from in its source system (a partition and an offset), the
//!   unit offsets are committed in.
//! - `record` and `callback`: [`ConnectRecord`] (id, timestamp, data, position, extensions) and
//!   its send callback, [`SendCallback`] with `on_success(SendResult)` and
//!   `on_exception(SendExceptionContext)`, called through a [`Completion`] handle.
//! - `source` and `sink`: the [`Source`] and [`Sink`] traits, object safe, with runnable
//!   in-memory examples; `error`: [`ConnectorError`], a connector's failure as a whole.
//! - `config`: [`ConnectorConfig`], string keys to JSON values, with typed getters whose
//!   [`ConfigError`] names the key and what it should hold, and redaction of secrets.
//! - `cloudevents`: the mapping between records and CloudEvents, both ways, with its table.
//! - `offsets`: the offset writer (one flush at a time; a second `begin_flush` is refused with a
//!   warning, never a crash), the offset reader, and submitted-record tracking (only the
//!   contiguous acknowledged prefix of a partition is committable), persisted in the metadata
//!   store.
//! - `worker`: [`SourceWorker`], the pump that runs a connector: a source into a destination
//!   sink, with offsets committed from the acknowledged prefix, retries with backoff and the
//!   error policy (`errors.tolerance`), and [`WorkerStatus`] for whoever shows it.

pub mod callback;
pub mod cloudevents;
pub mod config;
pub mod error;
pub mod offsets;
pub mod position;
pub mod record;
pub mod sink;
pub mod source;
pub mod worker;

pub use callback::{Completion, SendCallback, SendError, SendExceptionContext, SendResult};
pub use config::{ConfigError, ConfigKey, ConnectorConfig};
pub use error::ConnectorError;
pub use offsets::{OffsetGuard, OffsetReader, OffsetStore, OffsetWriter, SubmittedRecords};
pub use position::{Offset, Partition, Position};
pub use record::ConnectRecord;
pub use sink::{Sink, SinkContext};
pub use source::{Source, SourceContext};
pub use worker::{
    ErrorPolicy, Role, SourceWorker, Tolerance, WorkerFailed, WorkerSettings, WorkerState,
    WorkerStatus,
};

/// Describes every connector metric (the offsets' and the workers') to the installed recorder;
/// the runtime calls it once, next to its own.
/// Metric names a runtime records under for connector work it does itself (a sink connector
/// running on the runtime's own dispatcher), so both sides count into the same series.
pub mod metric_names {
    pub use crate::offsets::metrics::{COMMIT_FAILURES, COMMIT_SECONDS, COMMITS};
    pub use crate::worker::metrics::{FAILED as RECORDS_FAILED, PUT as RECORDS_PUT};
}

pub fn describe_metrics() {
    offsets::describe_metrics();
    worker::describe_metrics();
}
