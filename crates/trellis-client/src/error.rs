//! Errors, and which of them are worth retrying.
//!
//! The classification follows the comment at the top of `trellis.proto`: transient codes are
//! retried inside the producer and the consumer and never reach the application, except as a
//! [`ProducerError::DeliveryTimeout`] when a record stays unacknowledged too long; permanent codes
//! fail only the records they concern.

use std::time::Duration;

use tonic::Code;
use trellis_cloudevents::EventError;

/// Whether a status code says "try again": UNAVAILABLE (shutting down, storage busy or
/// restarting), RESOURCE_EXHAUSTED (overload), DEADLINE_EXCEEDED and ABORTED, plus INTERNAL (a
/// fault in Trellis, which a restart usually clears). CANCELLED and UNKNOWN are also transient:
/// they are how tonic reports a connection reset under a stream. Everything else (invalid
/// event, too large, no such topic, unauthorized, unimplemented) is permanent.
pub fn is_transient_code(code: Code) -> bool {
    match code {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::Cancelled
        | Code::Unknown => true,
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => false,
    }
}

/// Why one record could not be published.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// The server refused the record for good (INVALID_ARGUMENT, FAILED_PRECONDITION for a
    /// record too large, NOT_FOUND, PERMISSION_DENIED, ...). Sending it again will not help.
    #[error("refused by the server ({code:?}): {message}")]
    Rejected {
        code: Code,
        message: String,
        /// The event attribute at fault, when the server named one.
        attribute: Option<String>,
    },
    /// The record was not acknowledged within the configured delivery timeout, while the
    /// producer kept retrying. It may still be stored: send it again with the same id and the
    /// server's deduplication keeps one copy.
    #[error("not acknowledged within the delivery timeout of {0:?}")]
    DeliveryTimeout(Duration),
    /// `send` waited this long for room in the producer's buffer (max buffered bytes).
    #[error("waited {0:?} for room in the producer's buffer")]
    BufferFull(Duration),
    /// The record alone is larger than the producer's whole buffer.
    #[error("the event is {size} bytes encoded, more than the buffer's {max_buffered_bytes}")]
    TooLarge {
        size: usize,
        max_buffered_bytes: usize,
    },
    /// The producer kept failing to reach any endpoint for longer than the retry policy's
    /// `max_elapsed`; the records then waiting fail with this. The producer keeps trying.
    #[error("no endpoint reachable for {0:?} (the retry policy's max_elapsed)")]
    RetriesExhausted(Duration),
    /// The producer's background task is gone (the runtime shut down).
    #[error("the producer is closed")]
    Closed,
}

impl ProducerError {
    /// Whether the same record may succeed if sent again later.
    pub fn is_transient(&self) -> bool {
        match self {
            ProducerError::Rejected { code, .. } => is_transient_code(*code),
            ProducerError::DeliveryTimeout(_)
            | ProducerError::BufferFull(_)
            | ProducerError::RetriesExhausted(_) => true,
            ProducerError::TooLarge { .. } | ProducerError::Closed => false,
        }
    }
}

/// Why a consumer stopped, or a delivery could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The server refused the subscription for good (bad topic or group name, no such topic,
    /// unauthorized). The consumer stops.
    #[error("subscription refused by the server ({code:?}): {message}")]
    Rejected { code: Code, message: String },
    /// The server delivered an event that is not a valid CloudEvent; it is not acked, so it
    /// comes again after the ack timeout.
    #[error("invalid event at offset {offset}: {error}")]
    InvalidEvent { offset: u64, error: EventError },
    /// The consumer's background task is gone.
    #[error("the consumer is closed")]
    Closed,
}

impl ConsumerError {
    /// Whether the consumer may still deliver after this error.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsumerError::Rejected { code, .. } => is_transient_code(*code),
            ConsumerError::InvalidEvent { .. } => true,
            ConsumerError::Closed => false,
        }
    }
}

/// A configuration the builder refuses; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests;
