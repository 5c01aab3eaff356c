//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::http::AppState;

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while serving; 503 with the reason once shutdown has begun, or while the event store
/// is unreachable (publishes would only fail), so load balancers send elsewhere meanwhile.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.shutting_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !state.topics.store().available() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the event store is unavailable\n",
        )
    } else if !state.cluster.healthy() {
        // It still takes publishes; it delivers nothing it owned until the store answers.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the metadata store cannot be reached: this replica cannot prove its lease, so it delivers nothing\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    crate::metrics::refresh_gauges(state.topics.store().as_ref()).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        // Per-subscription and per-group series are kept apart so they can be removed.
        state.metrics.render() + &crate::metrics::removable().render(),
    )
}
