//! The accept loop shared by the HTTP and gRPC listeners: at most `max_connections` open (one
//! more is closed at once, counted and logged), and a failing `accept` (out of file descriptors,
//! say) logged and counted instead of retried in silence.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::conn::{ConnState, ListenerStats, TrackedIo};
use super::limits::ConnectionLimits;
use super::metrics;

/// How long the loop waits after a failed `accept`. Out of descriptors, `accept` fails at once
/// until one is freed; without a pause the loop would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// At most one warning of a kind per this long; the next says how many were left out.
const WARN_EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Listener {
    inner: TcpListener,
    name: &'static str,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    /// Parent of every connection's kill token: cancelled when the drain's time is up.
    cut_off: CancellationToken,
    at_limit: RateLimited,
    accept_failed: RateLimited,
    gate_heads: bool,
}

/// What the serve loop keeps of a listener once it has handed the listener to its server.
#[derive(Clone)]
pub(crate) struct ListenerHandle {
    pub(crate) name: &'static str,
    pub(crate) stats: Arc<ListenerStats>,
    cut_off: CancellationToken,
}

impl ListenerHandle {
    /// Closes every connection still open, wherever it waits.
    pub(crate) fn cut_off(&self) {
        let open = self.stats.open.load(std::sync::atomic::Ordering::Relaxed);
        metrics::cut_at_shutdown(self.name, open);
        self.cut_off.cancel();
    }
}

impl Listener {
    /// `gate_heads`: HTTP/1 request heads are checked before hyper sees them, so malformed
    /// ones get a JSON answer (see `head_gate.rs`).
    pub(crate) fn new(
        inner: TcpListener,
        name: &'static str,
        limits: ConnectionLimits,
        gate_heads: bool,
    ) -> Self {
        Listener {
            gate_heads,
            inner,
            name,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            stats: Arc::default(),
            cut_off: CancellationToken::new(),
            at_limit: RateLimited::default(),
            accept_failed: RateLimited::default(),
        }
    }

    pub(crate) fn handle(&self) -> ListenerHandle {
        ListenerHandle {
            name: self.name,
            stats: Arc::clone(&self.stats),
            cut_off: self.cut_off.clone(),
        }
    }

    /// The next connection within the limit. Never fails: errors are logged and waited out.
    pub(crate) async fn accept(&self) -> TrackedIo {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                        metrics::refused(self.name);
                        if let Some(left_out) = self.at_limit.allow() {
                            tracing::warn!(
                                message = "Connection limit reached: closing new connections until some close.",
                                listener = self.name,
                                max_connections = self.limits.max_connections,
                                %peer,
                                refused_since_last_warning = left_out
                            );
                        }
                        drop(stream);
                        // A flood of refusals is ready all at once; yielding after each lets the
                        // connected clients' requests run between them instead of after the lot.
                        tokio::task::yield_now().await;
                        continue;
                    };
                    // Answers are small and clients wait for each one: never let Nagle's
                    // algorithm hold them back waiting for an ACK.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(message = "Cannot set TCP_NODELAY on a connection.", %error);
                    }
                    let state = Arc::new(ConnState::new(
                        self.name,
                        self.cut_off.child_token(),
                        Arc::clone(&self.stats),
                    ));
                    return TrackedIo::new(stream, state, &self.limits, permit, self.gate_heads);
                }
                // The peer gave up before we took the connection: nothing to do or say.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => {
                    metrics::accept_failed(self.name);
                    if let Some(left_out) = self.accept_failed.allow() {
                        tracing::warn!(
                            message = "Accepting a connection failed; new clients wait until it works again.",
                            listener = self.name,
                            %error,
                            failures_since_last_warning = left_out
                        );
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// Lets a warning through at most once per [`WARN_EVERY`], counting the ones held back.
#[derive(Default)]
struct RateLimited {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    /// `Some(n)`: log now, `n` were held back since the last one.
    fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let (last, held_back) = &mut *state;
        let now = Instant::now();
        match last {
            Some(at) if now.duration_since(*at) < WARN_EVERY => {
                *held_back += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_warnings_is_one_line_that_counts_the_rest() {
        let limited = RateLimited::default();
        assert_eq!(limited.allow(), Some(0));
        assert_eq!(limited.allow(), None);
        assert_eq!(limited.allow(), None);
        if let Ok(mut state) = limited.state.lock() {
            state.0 = Instant::now().checked_sub(WARN_EVERY);
        }
        assert_eq!(limited.allow(), Some(2));
    }
}
