//! What can go wrong behind the boundary, in terms the runtime can answer a client with.

use crate::DamagedRange;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("an append needs at least one record")]
    EmptyAppend,
    #[error("a record of {size} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("offset {offset} is no longer stored; the oldest stored offset is {first_offset}")]
    OffsetTruncated { offset: u64, first_offset: u64 },
    #[error(
        "offsets {first}..{next} of topic {topic} are damaged ({reason}); reading can go on at offset {next}",
        first = .range.first_offset,
        next = .range.next_offset,
        reason = .range.reason
    )]
    Damaged { topic: String, range: DamagedRange },
    #[error("the event store is shut down")]
    Closed,
    /// The backend cannot be reached now; the same call may succeed later.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// The store's own options are wrong (found when it opens or connects).
    #[error("{0}")]
    InvalidOptions(String),
    /// Anything else the backend reports (i/o errors, corruption, protocol errors).
    #[error("the event store failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<trellis_log::LogError> for StorageError {
    fn from(error: trellis_log::LogError) -> StorageError {
        use trellis_log::LogError;
        match error {
            LogError::NoSuchTopic(name) => StorageError::NoSuchTopic(name),
            LogError::TopicExists(name) => StorageError::TopicExists(name),
            LogError::InvalidTopicName { name, reason } => StorageError::InvalidTopicName {
                name,
                reason: reason.to_owned(),
            },
            LogError::EmptyAppend => StorageError::EmptyAppend,
            LogError::RecordTooLarge { size, max } => StorageError::RecordTooLarge { size, max },
            LogError::OffsetTruncated {
                offset,
                first_offset,
            } => StorageError::OffsetTruncated {
                offset,
                first_offset,
            },
            LogError::Damaged { topic, range } => StorageError::Damaged {
                topic,
                range: damaged_range(range),
            },
            LogError::Closed => StorageError::Closed,
            other => StorageError::Backend(Box::new(other)),
        }
    }
}

pub(crate) fn damaged_range(range: trellis_log::DamagedRange) -> DamagedRange {
    DamagedRange {
        first_offset: range.first_offset,
        next_offset: range.next_offset,
        reason: range.reason,
        segment: range.segment,
    }
}
