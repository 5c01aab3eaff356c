//! Liveness, readiness, metrics and the error shape of unknown routes.

use trellis_runtime::RuntimeConfig;

use crate::support::{Server, assert_error};

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), RuntimeConfig::default()).await;
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status().as_u16(), 200);
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn metrics_expose_publish_and_log_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), RuntimeConfig::default()).await;
    server.publish_binary("metered", "1", "x").await;
    let text = server.metrics().await;
    for name in [
        "trellis_publish_requests_total",
        "trellis_publish_topic_requests_total{topic=\"metered\"} 1",
        "trellis_publish_events_total{topic=\"metered\"}",
        "trellis_publish_bytes_total{topic=\"metered\"}",
        "trellis_publish_duration_seconds_bucket",
        "trellis_log_fsync_seconds_bucket",
        "trellis_log_size_bytes{topic=\"metered\"}",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), RuntimeConfig::default()).await;
    assert_error(&server.get("/v2/nothing").await, 404, "not_found");
    assert_error(
        &server.delete("/v1/topics").await,
        405,
        "method_not_allowed",
    );
    server.stop().await;
}
