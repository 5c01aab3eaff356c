//! The HTTP API's router and shared state. Handlers live in one file per resource.

mod body;
mod checks;
mod cluster;
mod connectors;
mod ops;
mod publish;
mod subscriptions;
mod topics;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};

use crate::subscriptions::SubscriptionRegistry;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::RuntimeConfig;
use crate::error::ApiError;
use crate::metrics::PublishMetrics;
use crate::publisher::Publisher;
use crate::topics::TopicRegistry;

/// What every handler can reach, shared behind one `Arc` so a request costs one reference count.
pub(crate) struct AppState {
    pub config: Arc<RuntimeConfig>,
    pub topics: TopicRegistry,
    pub metrics: PrometheusHandle,
    pub shutting_down: Arc<AtomicBool>,
    pub publish_metrics: PublishMetrics,
    pub subscriptions: Arc<SubscriptionRegistry>,
    pub publisher: Arc<Publisher>,
    /// Asked, before a topic is deleted, which consumer groups read it.
    pub groups: Arc<crate::grpc::GroupRegistry>,
    pub connectors: Arc<crate::connectors::ConnectorRegistry>,
    pub cluster: trellis_cluster::Cluster,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/topics", get(topics::list))
        .route(
            "/v1/topics/{topic}",
            get(topics::get).put(topics::put).delete(topics::delete),
        )
        .route(
            "/v1/topics/{topic}/events",
            post(publish::publish).get(topics::read_events),
        )
        .route(
            "/v1/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route(
            "/v1/subscriptions/{name}",
            get(subscriptions::get)
                .patch(subscriptions::patch)
                .delete(subscriptions::delete),
        )
        .route("/v1/subscriptions/{name}/pause", post(subscriptions::pause))
        .route(
            "/v1/subscriptions/{name}/resume",
            post(subscriptions::resume),
        )
        .route(
            "/v1/subscriptions/{name}/redrive",
            post(subscriptions::redrive),
        )
        .route(
            "/v1/connectors",
            post(connectors::create).get(connectors::list),
        )
        .route(
            "/v1/connectors/{name}",
            get(connectors::info).delete(connectors::delete),
        )
        .route(
            "/v1/connectors/{name}/config",
            get(connectors::config).put(connectors::put_config),
        )
        .route("/v1/connectors/{name}/status", get(connectors::status))
        .route("/v1/connectors/{name}/pause", put(connectors::pause))
        .route("/v1/connectors/{name}/resume", put(connectors::resume))
        .route("/v1/connectors/{name}/restart", post(connectors::restart))
        .route(
            "/v1/connectors/{name}/offsets",
            get(connectors::offsets).delete(connectors::delete_offsets),
        )
        .route("/v1/connector-plugins", get(connectors::plugins))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(checks::check_request))
        .with_state(Arc::new(state))
}

/// A JSON answer with `status`, or the error's.
pub(crate) fn respond(
    res: Result<serde_json::Value, ApiError>,
    status: StatusCode,
) -> axum::response::Response {
    match res {
        Ok(body) => (status, axum::Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "not_found",
        "no such endpoint; the API lives under /v1/topics, /v1/subscriptions, /v1/connectors and /v1/connector-plugins",
    )
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
