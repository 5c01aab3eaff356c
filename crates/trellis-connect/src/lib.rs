//! The connector API: how data moves between Trellis and the systems around it.
//!
//! - `position`: where a record came from in its source system (a partition and an offset), the
//!   unit offsets are committed in.
//! - The record and the connector traits (`ConnectRecord` with its send callback, `Source`,
//!   `Sink`) and the mapping between records and CloudEvents.
//! - `offsets`: the offset writer (one flush at a time; a second `begin_flush` is refused with a
//!   warning, never a crash), the offset reader, and submitted-record tracking (only the
//!   contiguous acknowledged prefix of a partition is committable), persisted in the metadata
//!   store.

pub mod callback;
pub mod cloudevents;
pub mod config;
pub mod error;
pub mod position;
pub mod record;
pub mod sink;
pub mod source;

pub use callback::{Completion, SendCallback, SendError, SendExceptionContext, SendResult};
pub use config::{ConfigError, ConnectorConfig};
pub use error::ConnectorError;
pub use position::{Offset, Partition, Position};
pub use record::ConnectRecord;
pub use sink::{Sink, SinkContext};
pub use source::{Source, SourceContext};
