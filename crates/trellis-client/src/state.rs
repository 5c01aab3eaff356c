//! The connection state machine shared by the producer and the consumer: Ready -> Backoff ->
//! Recovering -> Ready. A pure type: the background tasks feed it what happened and publish the
//! state it reports; it never sleeps or connects.

use std::fmt;

/// Where a producer's or consumer's connection stands.
///
/// The cycle is always `Ready -> Backoff -> Recovering -> Ready`, or `Recovering -> Backoff`
/// when recovery fails. The application does nothing to move it along: a background task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Connected, or about to connect for the first time; records flow.
    Ready,
    /// A transient failure happened; waiting out an exponential backoff with jitter before the
    /// next attempt. Records keep being accepted into the buffer.
    Backoff,
    /// Reconnecting (possibly to another endpoint) and resending what was in flight when the
    /// failure happened, before anything newer.
    Recovering,
}

impl ConnectionState {
    /// The value of the state gauge in metrics: 0 ready, 1 backoff, 2 recovering.
    pub fn as_gauge(self) -> f64 {
        match self {
            ConnectionState::Ready => 0.0,
            ConnectionState::Backoff => 1.0,
            ConnectionState::Recovering => 2.0,
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionState::Ready => "ready",
            ConnectionState::Backoff => "backoff",
            ConnectionState::Recovering => "recovering",
        })
    }
}

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A transient failure: a refused or reset connection, a timeout, a transient status.
    Failed,
    /// The backoff delay is over.
    BackoffElapsed,
    /// Connected again and everything that was in flight at the failure is answered.
    Recovered,
}

/// An event the current state does not expect; the state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no transition from {state} on {event:?}")]
pub(crate) struct InvalidTransition {
    pub(crate) state: ConnectionState,
    pub(crate) event: Event,
}

/// The state plus the number of failures since the last time it was Ready, which is what the
/// backoff grows with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateMachine {
    state: ConnectionState,
    failures: u32,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine {
            state: ConnectionState::Ready,
            failures: 0,
        }
    }
}

impl StateMachine {
    pub(crate) fn state(&self) -> ConnectionState {
        self.state
    }

    /// Failures since the state was last Ready; at least 1 in Backoff and Recovering.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Applies `event` and returns the new state.
    pub(crate) fn on(&mut self, event: Event) -> Result<ConnectionState, InvalidTransition> {
        let next = match (self.state, event) {
            (ConnectionState::Ready | ConnectionState::Recovering, Event::Failed) => {
                self.failures = self.failures.saturating_add(1);
                ConnectionState::Backoff
            }
            (ConnectionState::Backoff, Event::BackoffElapsed) => ConnectionState::Recovering,
            (ConnectionState::Recovering, Event::Recovered) => {
                self.failures = 0;
                ConnectionState::Ready
            }
            (state, event) => return Err(InvalidTransition { state, event }),
        };
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
