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

pub mod offsets;
pub mod position;

pub use offsets::{OffsetReader, OffsetStore, OffsetWriter, SubmittedRecords};
pub use position::{Offset, Partition, Position};
