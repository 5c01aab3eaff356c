//! Liveness, readiness, metrics and the error shape of unknown routes.

use rstest::rstest;
use rstest_reuse::apply;
use trellis_test_support::{Backend, backends};

use crate::support::{assert_error, per_backend, server};

#[apply(backends)]
#[tokio::test]
async fn health_and_readiness_answer_200(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
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

#[apply(backends)]
#[tokio::test]
async fn metrics_expose_publish_and_log_figures(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let topic = per_backend("metered", backend);
    server.publish_binary(&topic, "1", "x").await;
    let text = server.metrics().await;
    let mut names = vec![
        "trellis_publish_requests_total".to_owned(),
        format!("trellis_publish_topic_requests_total{{topic=\"{topic}\"}} 1"),
        format!("trellis_publish_events_total{{topic=\"{topic}\"}}"),
        format!("trellis_publish_bytes_total{{topic=\"{topic}\"}}"),
        "trellis_publish_duration_seconds_bucket".to_owned(),
        format!("trellis_log_size_bytes{{topic=\"{topic}\"}}"),
    ];
    // Only the embedded log fsyncs; JetStream's server syncs on its own schedule.
    if backend == Backend::Embedded {
        names.push("trellis_log_fsync_seconds_bucket".to_owned());
    }
    for name in names {
        assert!(
            text.contains(&name),
            "{name} missing from /metrics:\n{text}"
        );
    }
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    assert_error(&server.get("/v2/nothing").await, 404, "not_found");
    assert_error(
        &server.delete("/v1/topics").await,
        405,
        "method_not_allowed",
    );
    server.stop().await;
}
