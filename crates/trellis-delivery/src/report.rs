//! What the engine tells its caller about each record: exactly one of [`DeliveryReport`] (through
//! `on_success`) or [`DeliveryFailure`] (through `on_exception`).
//!
//! [`Completion`] is how "exactly one" is kept: it is consumed by the call that reports the
//! outcome, so a second report does not compile, and dropping it unreported (the delivery future
//! was cancelled, or panicked) reports [`FailureClass::Cancelled`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Which record a report is about, and where it was going. URLs are redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordContext {
    pub subscription: String,
    pub topic: String,
    pub offset: u64,
    pub event_id: String,
    pub urls: Vec<String>,
}

/// One HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt at this URL's record; counts across URLs on failover.
    pub attempt: u32,
    /// The `X-Request-Id` the attempt carried.
    pub request_id: String,
    /// The redacted target URL.
    pub url: String,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// Why no usable answer came (connection refused, timeout...), when it didn't.
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub context: RecordContext,
    pub attempts: Vec<AttemptRecord>,
    pub elapsed_ms: u64,
}

/// Why a record failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Every allowed attempt failed with a retriable error.
    RetriesExhausted,
    /// The target answered with a status that retrying cannot fix (most 4xx, 501, any 3xx).
    NonRetriable,
    /// The record's total delivery budget (`max_delivery_ms`) ran out.
    DeadlinePassed,
    /// The sink's configuration refused the record before any attempt (a denied address, an
    /// event that cannot be encoded for the configured mode).
    Rejected,
    /// The target answered 410 Gone: it asked not to be sent more, and its URL is paused.
    Gone,
    /// Delivery stopped before the record ended (shutdown). The record was not delivered and
    /// must not be dead-lettered or committed; it is delivered again after a restart.
    Cancelled,
}

impl FailureClass {
    /// Whether the record should go to the dead-letter topic. Only a cancelled record is kept
    /// for redelivery instead.
    pub fn is_final(self) -> bool {
        !matches!(self, FailureClass::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RetriesExhausted => "retries_exhausted",
            FailureClass::NonRetriable => "non_retriable",
            FailureClass::DeadlinePassed => "deadline_passed",
            FailureClass::Rejected => "rejected",
            FailureClass::Gone => "gone",
            FailureClass::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryFailure {
    pub context: RecordContext,
    pub class: FailureClass,
    /// One line saying why, for logs and the dead-letter record.
    pub reason: String,
    /// The status of the last attempt that got an answer.
    pub last_status: Option<u16>,
    /// The last error and its sources, outermost first.
    pub error_chain: Vec<String>,
    pub attempts: Vec<AttemptRecord>,
    pub elapsed_ms: u64,
}

/// Receives each record's one outcome. Called from the engine's tasks: keep it quick and
/// non-blocking (hand work to a channel).
pub trait DeliveryCallbacks: Send + Sync + 'static {
    fn on_success(&self, report: DeliveryReport);
    fn on_exception(&self, failure: DeliveryFailure);
}

/// The obligation to report one record's outcome exactly once.
pub(crate) struct Completion {
    callbacks: Arc<dyn DeliveryCallbacks>,
    context: Option<RecordContext>,
    pub(crate) attempts: Vec<AttemptRecord>,
    started: Instant,
}

/// The failure part of an outcome, before the context and attempts are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed {
    pub(crate) class: FailureClass,
    pub(crate) reason: String,
    pub(crate) last_status: Option<u16>,
    pub(crate) error_chain: Vec<String>,
}

impl Failed {
    pub(crate) fn new(class: FailureClass, reason: impl Into<String>) -> Failed {
        Failed {
            class,
            reason: reason.into(),
            last_status: None,
            error_chain: Vec::new(),
        }
    }
}

impl Completion {
    pub(crate) fn new(callbacks: Arc<dyn DeliveryCallbacks>, context: RecordContext) -> Self {
        Completion {
            callbacks,
            context: Some(context),
            attempts: Vec::new(),
            started: Instant::now(),
        }
    }

    pub(crate) fn context(&self) -> Option<&RecordContext> {
        self.context.as_ref()
    }

    pub(crate) fn succeed(mut self) {
        if let Some(context) = self.context.take() {
            self.callbacks.on_success(DeliveryReport {
                context,
                attempts: std::mem::take(&mut self.attempts),
                elapsed_ms: millis(self.started.elapsed()),
            });
        }
    }

    pub(crate) fn fail(mut self, failed: Failed) {
        self.report_failure(failed);
    }

    fn report_failure(&mut self, failed: Failed) {
        if let Some(context) = self.context.take() {
            self.callbacks.on_exception(DeliveryFailure {
                context,
                class: failed.class,
                reason: failed.reason,
                last_status: failed.last_status,
                error_chain: failed.error_chain,
                attempts: std::mem::take(&mut self.attempts),
                elapsed_ms: millis(self.started.elapsed()),
            });
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.context.is_some() {
            self.report_failure(Failed::new(
                FailureClass::Cancelled,
                "delivery stopped before the record ended; it will be delivered again",
            ));
        }
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An error and its sources, outermost first.
pub(crate) fn error_messages(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        messages.push(cause.to_string());
        source = cause.source();
    }
    messages
}

/// An error chain on one line, outermost first, leaving out a message the one before it already
/// ends with (an `io::Error` shows the error it wraps as its own message).
pub(crate) fn joined_chain(chain: &[String]) -> String {
    let mut line = String::new();
    for message in chain {
        if line.ends_with(message.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(message);
    }
    line
}
