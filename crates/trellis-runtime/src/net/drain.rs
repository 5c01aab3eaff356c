//! The bounded drain: after the shutdown signal the servers get at most the shutdown timeout to
//! finish their requests and calls; then whatever is still open is cut off.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::listener::ListenerHandle;

/// How often the drain says what it still waits for.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// After the cut-off, how long the servers may take to notice before they are left behind.
const AFTER_CUT_OFF: Duration = Duration::from_secs(1);

/// How the servers ended.
pub(crate) struct Drained<T> {
    /// `None` if they had not ended even after the cut-off (their connections' tasks then end
    /// with the process).
    pub(crate) output: Option<T>,
    /// When the shutdown timeout is up: what comes after the drain has until then.
    pub(crate) deadline: Instant,
}

/// Runs `serving` to its end. Once `shutdown` is cancelled it has `timeout` to end by itself;
/// then every connection of `listeners` is closed and it gets [`AFTER_CUT_OFF`] more.
/// `also_waiting` counts the subscriptions the shutdown stops next, for the progress lines.
pub(crate) async fn bounded<F: Future>(
    serving: F,
    shutdown: &CancellationToken,
    timeout: Duration,
    listeners: &[ListenerHandle],
    also_waiting: impl Fn() -> usize,
) -> Drained<F::Output> {
    let mut serving = std::pin::pin!(serving);
    tokio::select! {
        output = &mut serving => return Drained {
            output: Some(output),
            deadline: Instant::now() + timeout,
        },
        () = shutdown.cancelled() => {}
    }
    let deadline = Instant::now() + timeout;
    progress(
        "Shutting down: draining connections.",
        listeners,
        timeout,
        also_waiting(),
    );
    let mut ticker = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            output = &mut serving => return Drained { output: Some(output), deadline },
            () = tokio::time::sleep_until(deadline) => break,
            _ = ticker.tick() => progress(
                "Still draining.",
                listeners,
                deadline.saturating_duration_since(Instant::now()),
                also_waiting(),
            ),
        }
    }
    let open: usize = listeners
        .iter()
        .map(|listener| listener.stats.open.load(Ordering::Relaxed))
        .sum();
    tracing::warn!(
        message = "The shutdown timeout is up: closing the connections still open.",
        connections = open,
        timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    );
    for listener in listeners {
        listener.cut_off();
    }
    Drained {
        output: tokio::time::timeout(AFTER_CUT_OFF, serving).await.ok(),
        deadline,
    }
}

fn progress(message: &str, listeners: &[ListenerHandle], left: Duration, subscriptions: usize) {
    let count = |name: &str| {
        listeners
            .iter()
            .find(|listener| listener.name == name)
            .map_or((0, 0), |listener| {
                (
                    listener.stats.open.load(Ordering::Relaxed),
                    listener.stats.in_flight.load(Ordering::Relaxed),
                )
            })
    };
    let (http_connections, http_requests) = count("http");
    let (grpc_connections, grpc_calls) = count("grpc");
    tracing::info!(
        message,
        http_connections,
        http_requests,
        grpc_connections,
        grpc_streams = grpc_calls,
        subscriptions,
        time_left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    );
}
