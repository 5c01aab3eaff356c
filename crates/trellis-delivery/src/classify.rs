//! What an HTTP status means for a record: delivered, retry later, dead-letter, or dead-letter and
//! pause the URL. One exhaustive decision in one place, so the engine, the breaker and the status
//! API cannot disagree about it.
//!
//! Transport failures (connection refused, reset, timeout) never produce a status; the engine
//! treats them as [`Verdict::Retriable`] itself. Redirects are never followed: a 3xx is an answer,
//! and a permanent one, because the CloudEvents webhook spec forbids following it and following
//! it would let a target bounce deliveries to an address the guard never saw.

use http::StatusCode;

/// The outcome of one delivery attempt that got an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The target accepted the record; it is done.
    Delivered,
    /// A transient failure: try again after a backoff (and after Retry-After, if sent).
    Retriable,
    /// The target will never accept this record as sent: dead-letter it without retrying.
    Permanent,
    /// 410 Gone: dead-letter the record and pause delivery to the URL, because the CloudEvents
    /// webhook spec says the sender should stop.
    Gone,
}

/// Per-subscription overrides of the default status table.
///
/// Overrides apply to non-2xx codes only: a 2xx is always [`Verdict::Delivered`], because the
/// target has already accepted the record and retrying or dead-lettering it would duplicate it.
/// A code in both lists is a configuration error (config validation rejects it); should one get
/// here anyway, `drop_on` wins, because a dead-lettered record can still be replayed while a retry
/// loop on a code that never changes would block the subscription forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusPolicy {
    /// Codes to retry even though the default table says otherwise.
    pub retry_on: Vec<u16>,
    /// Codes to dead-letter at once even though the default table says otherwise.
    pub drop_on: Vec<u16>,
}

impl StatusPolicy {
    /// Classifies a final HTTP status.
    ///
    /// | status                              | verdict     |
    /// |-------------------------------------|-------------|
    /// | 2xx                                 | `Delivered` (never overridden) |
    /// | in `drop_on`                        | `Permanent` |
    /// | in `retry_on`                       | `Retriable` |
    /// | 408, 429, 5xx except 501            | `Retriable` |
    /// | 410                                 | `Gone`      |
    /// | 1xx, 3xx, other 4xx, 501, 600..=999 | `Permanent` |
    ///
    /// The defaults are Vector's HTTP sink table (501 Not Implemented will not start working on
    /// a retry), plus 410 from the CloudEvents webhook spec. A 1xx can only arrive as a final answer
    /// from a broken target, and the nonstandard 6xx..9xx likewise; neither will improve on retry.
    pub fn classify(&self, status: StatusCode) -> Verdict {
        if status.is_success() {
            return Verdict::Delivered;
        }
        let code = status.as_u16();
        if self.drop_on.contains(&code) {
            return Verdict::Permanent;
        }
        if self.retry_on.contains(&code) {
            return Verdict::Retriable;
        }
        default_verdict(status)
    }
}

/// The table without overrides.
fn default_verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retriable,
        410 => Verdict::Gone,
        501 => Verdict::Permanent,
        500..=599 => Verdict::Retriable,
        // 1xx, 3xx, the rest of 4xx, and nonstandard codes.
        _ => Verdict::Permanent,
    }
}

/// Whether a status says the target is overloaded: 429 Too Many Requests and 503 Service
/// Unavailable. These feed adaptive concurrency and the breaker; other failures (a 500 from a bug,
/// a 404) say nothing about load, and shrinking concurrency on them would only slow recovery.
pub fn is_backpressure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

#[cfg(test)]
mod tests;
