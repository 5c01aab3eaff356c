//! Duplicate detection on publish: an event whose `(source, id)` its topic stored within the
//! window is answered with the first offset and `"duplicate": true`, and not stored again.

use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::json;
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{BATCH, Server, Site, event, per_backend, server, server_with};

async fn n_events(server: &Server, topic: &str) -> usize {
    let (status, events) = server
        .get(&format!("/v1/topics/{topic}/events?from=0&limit=1000"))
        .await;
    assert_eq!(status, 200, "{events}");
    events.as_array().map_or(0, Vec::len)
}

#[apply(backends)]
#[tokio::test]
async fn the_same_event_twice_is_stored_once(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let first = server.publish_binary("orders", "a-1", "hello").await;
    assert_eq!(first.0, 202, "{}", first.1);
    assert_eq!(first.1, json!({"events": [{"id": "a-1", "offset": 0}]}));
    server.publish_binary("orders", "a-2", "other").await;
    let again = server.publish_binary("orders", "a-1", "hello").await;
    assert_eq!(again.0, 202, "{}", again.1);
    assert_eq!(
        again.1,
        json!({"events": [{"id": "a-1", "offset": 0, "duplicate": true}]})
    );
    assert_eq!(n_events(&server, "orders").await, 2);

    // Another topic has its own keys.
    let elsewhere = server.publish_binary("invoices", "a-1", "hello").await;
    assert_eq!(elsewhere.1, json!({"events": [{"id": "a-1", "offset": 0}]}));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn duplicates_inside_a_batch_and_against_the_topic_are_flagged(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    server.publish_binary("t", "old", "x").await;
    let batch = json!([event("new-1"), event("old"), event("new-1"), event("new-2")]);
    let (status, body) = server
        .post("/v1/topics/t/events", BATCH, batch.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"events": [
            {"id": "new-1", "offset": 1},
            {"id": "old", "offset": 0, "duplicate": true},
            {"id": "new-1", "offset": 1, "duplicate": true},
            {"id": "new-2", "offset": 2},
        ]})
    );
    assert_eq!(n_events(&server, "t").await, 3);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn concurrent_publishes_of_one_event_store_it_once(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let publishes = (0..16).map(|_| server.publish_binary("race", "same", "x"));
    let answers = futures::future::join_all(publishes).await;
    let mut n_stored = 0;
    for (status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["events"][0]["offset"], 0, "{body}");
        if body["events"][0].get("duplicate").is_none() {
            n_stored += 1;
        }
    }
    assert_eq!(n_stored, 1);
    assert_eq!(n_events(&server, "race").await, 1);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_duplicate_is_recognised_after_a_restart(#[case] backend: Backend) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    server.publish_binary("t", "a-1", "x").await;
    server.publish_binary("t", "a-2", "y").await;
    server.stop().await;

    let server = site.start(RuntimeConfig::default()).await;
    let again = server.publish_binary("t", "a-2", "y").await;
    assert_eq!(
        again.1,
        json!({"events": [{"id": "a-2", "offset": 1, "duplicate": true}]})
    );
    assert_eq!(n_events(&server, "t").await, 2);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn outside_the_window_an_event_is_stored_again(#[case] backend: Backend) {
    // JetStream's shortest duplicate window.
    let config = RuntimeConfig {
        dedup_window: Duration::from_millis(100),
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    server.publish_binary("t", "a-1", "x").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = server.publish_binary("t", "a-1", "x").await;
    assert_eq!(again.1, json!({"events": [{"id": "a-1", "offset": 1}]}));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_zero_window_turns_deduplication_off(#[case] backend: Backend) {
    let config = RuntimeConfig {
        dedup_window: Duration::ZERO,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    server.publish_binary("t", "a-1", "x").await;
    let again = server.publish_binary("t", "a-1", "x").await;
    assert_eq!(again.1, json!({"events": [{"id": "a-1", "offset": 1}]}));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_deleted_topic_forgets_its_events(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    server.publish_binary("t", "a-0", "x").await;
    server.publish_binary("t", "a-1", "x").await;
    let (status, _) = server.delete("/v1/topics/t").await;
    assert_eq!(status, 204);
    let again = server.publish_binary("t", "a-1", "x").await;
    assert_eq!(again.1, json!({"events": [{"id": "a-1", "offset": 0}]}));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn duplicates_are_counted_in_metrics(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let topic = per_backend("metered-dups", backend);
    server.publish_binary(&topic, "a-1", "x").await;
    server.publish_binary(&topic, "a-1", "x").await;
    let text = server.metrics().await;
    let series = format!("trellis_publish_duplicates_total{{topic=\"{topic}\"}} 1");
    assert!(text.lines().any(|line| line == series), "{series}:\n{text}");
    // Only the embedded log remembers ids in this process; JetStream's server holds them.
    if backend == Backend::Embedded {
        assert!(text.contains("trellis_dedup_remembered_ids"), "{text}");
    }
    server.stop().await;
}
