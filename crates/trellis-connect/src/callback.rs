//! A record's send callback, and the [`Completion`] handle that calls it exactly once.
//!
//! Every record that has a callback ends in exactly one call: [`SendCallback::on_success`] or
//! [`SendCallback::on_exception`], on every path. The type system and `Drop` keep that promise
//! rather than the discipline of each connector:
//! - [`Completion::succeed`] and [`Completion::fail`] take the handle by value, so a second
//!   report does not compile;
//! - dropping a handle that has not reported (a sink returned early, a task was cancelled or
//!   panicked, a batch was dropped on an error path) calls `on_exception` with
//!   [`SendError::Dropped`];
//! - a handle cannot be cloned. [`Completion::split`] divides one obligation into parts, and the
//!   callback is called once, when the last part has ended: `on_success` if every part
//!   succeeded, otherwise `on_exception` with the first failure.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::position::Position;

/// Receives each record's one outcome. Called from whichever task ends the record (a sink's
/// I/O task, the publish path): keep it quick and non-blocking, and hand work to a channel.
pub trait SendCallback: Send + Sync + 'static {
    fn on_success(&self, result: SendResult);
    fn on_exception(&self, context: SendExceptionContext);
}

/// A record that was published (by a source worker) or delivered (by a sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub record_id: String,
    /// The record's position, so the receiver can acknowledge it for offset tracking.
    pub position: Position,
    /// The topic it was published to or read from, when there is one.
    pub topic: Option<String>,
}

/// A record that ended without being published or delivered.
#[derive(Debug)]
pub struct SendExceptionContext {
    pub record_id: String,
    pub position: Position,
    pub topic: Option<String>,
    pub cause: SendError,
}

/// Why a record ended without a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The record's completion was dropped before anything reported its outcome: a bug in a
    /// connector, or a task that was cancelled or panicked. Nothing is known about whether the
    /// record arrived, so it is treated as not delivered.
    #[error("the record was dropped without a result")]
    Dropped,
    /// Publishing into Trellis failed for good (the runtime refused or lost the event).
    #[error("publishing failed: {0}")]
    Publish(String),
    /// The sink could not deliver the record to its target system.
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// The record cannot be turned into an event or a write (bad data, an invalid attribute).
    /// Retrying cannot help.
    #[error("the record was rejected: {0}")]
    Rejected(String),
    /// The connector stopped before the record ended. It is not committed, so it is read
    /// again after a restart.
    #[error("the connector stopped before the record ended")]
    Cancelled,
    /// The target could not take the record now (it is unavailable, overloaded or asked to
    /// come back later); trying again may succeed, so a worker retries it within its retry
    /// budget.
    #[error("the target could not take the record now: {0}")]
    Retriable(String),
}

impl SendError {
    /// Whether retrying the record cannot succeed. A record that was dropped, cancelled or
    /// failed in a retriable way is not final: a worker retries it within its retry budget,
    /// and must not dead-letter it before; it is read again after a restart.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            SendError::Dropped | SendError::Cancelled | SendError::Retriable(_)
        )
    }
}

/// The obligation to report one record's outcome exactly once. See the module docs.
///
/// A handle is either armed (it has a callback to call) or empty ([`Completion::none`], for a
/// record no worker has attached a callback to yet); an empty handle calls nothing.
#[must_use = "a completion reports `Dropped` if it is dropped without a result"]
pub struct Completion {
    armed: Option<Armed>,
}

struct Armed {
    record_id: String,
    position: Position,
    target: Target,
}

enum Target {
    Callback(Arc<dyn SendCallback>),
    /// One part of a split: reports into the join, which reports the whole once.
    Part(Arc<Join>),
}

/// The shared state of a split's parts.
struct Join {
    state: Mutex<JoinState>,
}

struct JoinState {
    remaining: usize,
    /// The completion the parts stand for; taken when the last part ends.
    whole: Option<Completion>,
    topic: Option<String>,
    first_failure: Option<(Option<String>, SendError)>,
}

impl Completion {
    /// A handle that calls `callback` once, about the record `record_id` at `position`.
    pub fn new(
        record_id: impl Into<String>,
        position: Position,
        callback: Arc<dyn SendCallback>,
    ) -> Completion {
        Completion {
            armed: Some(Armed {
                record_id: record_id.into(),
                position,
                target: Target::Callback(callback),
            }),
        }
    }

    /// A handle with nothing to call.
    pub fn none() -> Completion {
        Completion { armed: None }
    }

    /// Whether ending this handle calls anything.
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Reports success: the record was published or delivered.
    pub fn succeed(mut self, topic: Option<String>) {
        if let Some(armed) = self.armed.take() {
            match armed.target {
                Target::Callback(callback) => callback.on_success(SendResult {
                    record_id: armed.record_id,
                    position: armed.position,
                    topic,
                }),
                Target::Part(join) => join.part_ended(topic, None),
            }
        }
    }

    /// Reports failure.
    pub fn fail(mut self, topic: Option<String>, cause: SendError) {
        self.report_failure(topic, cause);
    }

    /// Divides this obligation into `parts` handles (a record written as several requests, or
    /// fanned out to several targets). The callback is called once, when the last part ends:
    /// success with the topic of the last successful part if all succeeded, otherwise the first
    /// failure. A part dropped unreported counts as a [`SendError::Dropped`] failure. Splitting
    /// into zero parts reports success at once, since nothing is left to do. Splitting an empty
    /// handle gives empty handles.
    pub fn split(mut self, parts: usize) -> Vec<Completion> {
        let Some(armed) = self.armed.take() else {
            return (0..parts).map(|_| Completion::none()).collect();
        };
        let (record_id, position) = (armed.record_id.clone(), armed.position.clone());
        let whole = Completion { armed: Some(armed) };
        if parts == 0 {
            whole.succeed(None);
            return Vec::new();
        }
        let join = Arc::new(Join {
            state: Mutex::new(JoinState {
                remaining: parts,
                whole: Some(whole),
                topic: None,
                first_failure: None,
            }),
        });
        (0..parts)
            .map(|_| Completion {
                armed: Some(Armed {
                    record_id: record_id.clone(),
                    position: position.clone(),
                    target: Target::Part(Arc::clone(&join)),
                }),
            })
            .collect()
    }

    fn report_failure(&mut self, topic: Option<String>, cause: SendError) {
        if let Some(armed) = self.armed.take() {
            match armed.target {
                Target::Callback(callback) => callback.on_exception(SendExceptionContext {
                    record_id: armed.record_id,
                    position: armed.position,
                    topic,
                    cause,
                }),
                Target::Part(join) => join.part_ended(topic, Some(cause)),
            }
        }
    }
}

impl Join {
    fn part_ended(&self, topic: Option<String>, failure: Option<SendError>) {
        // A poisoned lock only means a callback panicked while another part reported; the
        // counts are still right, and losing the report would break "exactly one".
        let whole = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match failure {
                Some(cause) => {
                    if state.first_failure.is_none() {
                        state.first_failure = Some((topic, cause));
                    }
                }
                None => {
                    if topic.is_some() {
                        state.topic = topic;
                    }
                }
            }
            state.remaining = state.remaining.saturating_sub(1);
            if state.remaining > 0 {
                return;
            }
            let failure = state.first_failure.take();
            let topic = state.topic.take();
            state.whole.take().map(|whole| (whole, topic, failure))
        };
        // The callback runs outside the lock, so a callback that ends another record cannot
        // deadlock on it.
        match whole {
            Some((whole, _, Some((topic, cause)))) => whole.fail(topic, cause),
            Some((whole, topic, None)) => whole.succeed(topic),
            None => {}
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.report_failure(None, SendError::Dropped);
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.armed {
            None => f.write_str("Completion(none)"),
            Some(armed) => {
                let kind = match armed.target {
                    Target::Callback(_) => "callback",
                    Target::Part(_) => "part",
                };
                write!(f, "Completion({kind} for {:?})", armed.record_id)
            }
        }
    }
}
