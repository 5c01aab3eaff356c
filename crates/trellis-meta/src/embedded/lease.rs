//! The embedded store's lease clock: when each live lease expires, and the thread that expires
//! them.
//!
//! Deadlines live in memory only; the lease rows in redb say which leases exist and their TTL,
//! and those found at open are ended there (their holder was a process that is gone).
//! The timer thread sleeps until the earliest deadline (or until woken), then asks the store to
//! expire what is due. Expiry takes the store's write lock, and a put under a lease checks the
//! lease under the same lock, so a key is never attached to a lease that was already expired.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{EmbeddedError, Inner};
use crate::LeaseId;

/// How long the timer waits before retrying after a failed expiry (a disk error, say).
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(200);

pub(super) struct Leases {
    state: Mutex<LeaseState>,
    wake: Condvar,
}

#[derive(Default)]
pub(super) struct LeaseState {
    /// Live leases: id → (TTL, deadline).
    live: HashMap<LeaseId, (Duration, Instant)>,
    /// Set when the store is dropped; the timer thread then exits.
    closed: bool,
}

impl Leases {
    /// No lease is live at open: the store ends those a previous process left (see `open_with`).
    pub(super) fn new() -> Leases {
        Leases {
            state: Mutex::new(LeaseState {
                live: HashMap::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> Result<MutexGuard<'_, LeaseState>, EmbeddedError> {
        self.state.lock().map_err(|_| EmbeddedError::Poisoned)
    }

    /// Wakes the timer, e.g. because a lease with an earlier deadline was granted.
    pub(super) fn notify(&self) {
        self.wake.notify_all();
    }

    pub(super) fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.wake.notify_all();
    }
}

impl LeaseState {
    pub(super) fn insert(&mut self, id: LeaseId, ttl: Duration) {
        self.live.insert(id, (ttl, Instant::now() + ttl));
    }

    /// Whether the lease exists and its deadline has not passed.
    pub(super) fn is_live(&self, id: LeaseId, now: Instant) -> bool {
        self.live
            .get(&id)
            .is_some_and(|(_, deadline)| *deadline > now)
    }

    pub(super) fn contains(&self, id: LeaseId) -> bool {
        self.live.contains_key(&id)
    }

    /// Restarts the lease's TTL from now; returns the TTL, or None if it is not live.
    pub(super) fn refresh(&mut self, id: LeaseId) -> Option<Duration> {
        let now = Instant::now();
        let (ttl, deadline) = self.live.get_mut(&id)?;
        if *deadline <= now {
            return None;
        }
        *deadline = now + *ttl;
        Some(*ttl)
    }

    pub(super) fn remove(&mut self, id: LeaseId) -> bool {
        self.live.remove(&id).is_some()
    }

    /// The leases whose deadline has passed.
    pub(super) fn due(&self, now: Instant) -> Vec<LeaseId> {
        self.live
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.live.values().map(|(_, deadline)| *deadline).min()
    }
}

/// Starts the timer thread for a store. It holds the store weakly and exits once the store is
/// dropped (`Leases::close`).
pub(super) fn start_timer(leases: Arc<Leases>, inner: Weak<Inner>) -> Result<(), EmbeddedError> {
    std::thread::Builder::new()
        .name("trellis-meta-leases".to_owned())
        .spawn(move || run_timer(&leases, &inner))
        .map(|_| ())
        .map_err(EmbeddedError::Timer)
}

fn run_timer(leases: &Leases, inner: &Weak<Inner>) {
    loop {
        {
            let Ok(mut state) = leases.state.lock() else {
                return;
            };
            loop {
                if state.closed {
                    return;
                }
                let now = Instant::now();
                let wait = match state.next_deadline() {
                    Some(deadline) if deadline <= now => break,
                    Some(deadline) => deadline - now,
                    // Nothing to expire; a grant wakes us.
                    None => Duration::from_secs(3600),
                };
                state = match leases.wake.wait_timeout(state, wait) {
                    Ok((state, _)) => state,
                    Err(_) => return,
                };
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(error) = inner.expire_due() {
            tracing::warn!(
                message = "Failed to expire metadata leases; retrying.",
                error = &error as &dyn std::error::Error,
            );
            drop(inner);
            std::thread::sleep(RETRY_AFTER_FAILURE);
        }
    }
}
