//! The connection state machine as the application sees it: the task that drives it publishes
//! every state on a watch (the latest), a broadcast (every transition, in order) and a gauge;
//! the handle reads them. Shared by the producer and the consumer.

use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::state::{ConnectionState, Event, StateMachine};

/// How many state transitions a slow `transitions` receiver may fall behind.
const TRANSITIONS_CAPACITY: usize = 64;

/// The task's side: the machine, and where each state it enters is published.
pub(crate) struct DrivenState {
    machine: StateMachine,
    latest: watch::Sender<ConnectionState>,
    transitions: broadcast::Sender<ConnectionState>,
    /// "Producer" or "Consumer", for the log lines.
    role: &'static str,
}

/// The handle's side.
#[derive(Debug, Clone)]
pub(crate) struct StateView {
    latest: watch::Receiver<ConnectionState>,
    transitions: broadcast::Sender<ConnectionState>,
}

/// A machine in `Ready`, with `metrics` already showing it.
pub(crate) fn observed(metrics: &Metrics, role: &'static str) -> (DrivenState, StateView) {
    let (latest_tx, latest) = watch::channel(ConnectionState::Ready);
    let (transitions, _) = broadcast::channel(TRANSITIONS_CAPACITY);
    metrics.set_state(ConnectionState::Ready);
    let view = StateView {
        latest,
        transitions: transitions.clone(),
    };
    let driven = DrivenState {
        machine: StateMachine::default(),
        latest: latest_tx,
        transitions,
        role,
    };
    (driven, view)
}

impl DrivenState {
    pub(crate) fn state(&self) -> ConnectionState {
        self.machine.state()
    }

    pub(crate) fn failures(&self) -> u32 {
        self.machine.failures()
    }

    /// Applies `event` and publishes the state it leads to, `metrics`' gauge included.
    pub(crate) fn on(&mut self, event: Event, metrics: &Metrics) {
        match self.machine.on(event) {
            Ok(state) => {
                self.latest.send_replace(state);
                let _ = self.transitions.send(state);
                metrics.set_state(state);
                tracing::debug!(state = %state, role = self.role, "Connection state changed.");
            }
            Err(error) => {
                tracing::error!(error = %error, role = self.role, "Connection state machine misused.");
            }
        }
    }
}

impl StateView {
    pub(crate) fn now(&self) -> ConnectionState {
        *self.latest.borrow()
    }

    pub(crate) fn changes(&self) -> watch::Receiver<ConnectionState> {
        self.latest.clone()
    }

    pub(crate) fn transitions(&self) -> broadcast::Receiver<ConnectionState> {
        self.transitions.subscribe()
    }
}
