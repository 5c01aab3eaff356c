//! Topic administration and reads.

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::json;
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{Site, assert_error, server, server_with};

#[apply(backends)]
#[tokio::test]
async fn put_creates_then_updates_a_topic(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let created = server
        .put(
            "/v1/topics/orders",
            r#"{"durability": "interval", "fsync_interval_ms": 50}"#,
        )
        .await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["name"], "orders");
    assert_eq!(created.1["settings"]["durability"], "interval");
    assert_eq!(created.1["settings"]["fsync_interval_ms"], 50);
    assert_eq!(created.1["next_offset"], 0);

    let updated = server
        .put("/v1/topics/orders", r#"{"retention_bytes": 1048576}"#)
        .await;
    assert_eq!(updated.0, 200, "{}", updated.1);
    assert_eq!(updated.1["settings"]["retention_bytes"], 1048576);
    assert_eq!(
        updated.1["settings"]["durability"], "interval",
        "fields not given keep their value"
    );
    server.stop().await;
}

/// Retention allows removing events older than `retention_ms`; it does not promise to. A very
/// short one is a valid setting on every backend, and reads back as set.
#[apply(backends)]
#[tokio::test]
async fn a_retention_under_100_ms_is_accepted_and_reads_back_as_set(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let created = server
        .put("/v1/topics/brief", r#"{"retention_ms": 50}"#)
        .await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["settings"]["retention_ms"], 50);
    assert_eq!(server.publish_binary("brief", "1", "x").await.0, 202);
    let updated = server
        .put("/v1/topics/brief", r#"{"retention_ms": 1}"#)
        .await;
    assert_eq!(updated.0, 200, "{}", updated.1);
    assert_eq!(
        server.get("/v1/topics/brief").await.1["settings"]["retention_ms"],
        1
    );
    let longer = server
        .put("/v1/topics/brief", r#"{"retention_ms": 60000}"#)
        .await;
    assert_eq!(longer.1["settings"]["retention_ms"], 60000, "{}", longer.1);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn put_refuses_bad_settings_naming_the_field(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let message = assert_error(
        &server.put("/v1/topics/t", r#"{"segment_bytes": 10}"#).await,
        400,
        "invalid_settings",
    );
    assert!(message.contains("segment_bytes"), "{message}");
    let message = assert_error(
        &server.put("/v1/topics/t", r#"{"retention": 5}"#).await,
        400,
        "invalid_settings",
    );
    assert!(message.contains("retention"), "{message}");
    let message = assert_error(
        &server
            .put("/v1/topics/t", r#"{"durability": "sometimes"}"#)
            .await,
        400,
        "invalid_settings",
    );
    assert!(message.contains("sometimes"), "{message}");
    assert_error(
        &server.put("/v1/topics/t", "[1,2]").await,
        400,
        "invalid_settings",
    );
    assert_error(
        &server.put("/v1/topics/bad%20name", "").await,
        400,
        "invalid_topic_name",
    );
    assert_eq!(
        server.get("/v1/topics/t").await.0,
        404,
        "a refused PUT creates nothing"
    );
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn list_and_get_report_offsets_bytes_and_settings(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    server.publish_binary("b", "1", "x").await;
    server.publish_binary("b", "2", "y").await;
    server.put("/v1/topics/a", "").await;
    let (status, list) = server.get("/v1/topics").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["topics"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let (status, topic) = server.get("/v1/topics/b").await;
    assert_eq!(status, 200);
    assert_eq!(topic["first_offset"], 0);
    assert_eq!(topic["next_offset"], 2);
    assert!(
        topic["size_bytes"].as_u64().is_some_and(|bytes| bytes > 0),
        "{topic}"
    );
    assert_eq!(topic["settings"]["durability"], "always");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn delete_removes_a_topic_and_its_events(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    server.publish_binary("t", "1", "x").await;
    let (status, _) = server.delete("/v1/topics/t").await;
    assert_eq!(status, 204);
    assert_error(&server.get("/v1/topics/t").await, 404, "topic_not_found");
    assert_error(&server.delete("/v1/topics/t").await, 404, "topic_not_found");
    assert_error(
        &server.get("/v1/topics/t/events").await,
        404,
        "topic_not_found",
    );
    // Publishing again starts a new topic from offset 0.
    let res = server.publish_binary("t", "2", "x").await;
    assert_eq!(res.1["events"][0]["offset"], 0);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn reads_page_through_the_log(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    for n in 0..25 {
        server
            .publish_binary("t", &format!("e-{n}"), &format!("data-{n}"))
            .await;
    }
    let (status, page) = server.get("/v1/topics/t/events?from=10&limit=5").await;
    assert_eq!(status, 200);
    let offsets: Vec<u64> = page
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [10, 11, 12, 13, 14]);
    assert_eq!(page[0]["id"], "e-10");
    assert_eq!(page[0]["data"], "data-10");
    let (_, tail) = server.get("/v1/topics/t/events?from=25").await;
    assert_eq!(tail, json!([]));
    let (_, all) = server.get("/v1/topics/t/events").await;
    assert_eq!(all.as_array().map(Vec::len), Some(25));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn reads_refuse_bad_queries(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    server.publish_binary("t", "1", "x").await;
    assert_error(
        &server.get("/v1/topics/t/events?limit=0").await,
        400,
        "invalid_query",
    );
    assert_error(
        &server.get("/v1/topics/t/events?limit=5000").await,
        400,
        "invalid_query",
    );
    assert_error(
        &server.get("/v1/topics/t/events?from=-1").await,
        400,
        "invalid_query",
    );
    assert_error(
        &server.get("/v1/topics/t/events?form=1").await,
        400,
        "invalid_query",
    );
    assert_error(
        &server.get("/v1/topics/none/events").await,
        404,
        "topic_not_found",
    );
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn settings_and_events_survive_a_restart(#[case] backend: Backend) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    server
        .put(
            "/v1/topics/kept",
            r#"{"durability": "never", "retention_ms": 60000}"#,
        )
        .await;
    server.publish_binary("kept", "1", "x").await;
    server.stop().await;

    let server = site.start(RuntimeConfig::default()).await;
    let (status, topic) = server.get("/v1/topics/kept").await;
    assert_eq!(status, 200);
    assert_eq!(topic["settings"]["durability"], "never");
    assert_eq!(topic["settings"]["retention_ms"], 60000);
    assert_eq!(topic["next_offset"], 1);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn retention_moves_the_first_offset_and_older_reads_get_410(#[case] backend: Backend) {
    let config = RuntimeConfig {
        retention_check_interval: std::time::Duration::from_millis(50),
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    let created = server
        .put(
            "/v1/topics/short",
            r#"{"segment_bytes": 4096, "retention_bytes": 8192}"#,
        )
        .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let data = "d".repeat(500);
    for n in 0..60 {
        let res = server
            .publish_binary("short", &format!("e-{n}"), &data)
            .await;
        assert_eq!(res.0, 202);
    }
    // Retention removes the oldest events while the topic is over its limit (the embedded log
    // whole sealed segments, in one pass; JetStream single events), so once within the limit
    // the topic stays as it is: its first offset no longer moves. A bound of the limit plus one
    // segment could be met between two passes, with the next one still to come.
    let within_limit = |topic: &serde_json::Value| {
        topic["size_bytes"]
            .as_u64()
            .is_some_and(|bytes| bytes <= 8192)
    };
    let mut topic = server.get("/v1/topics/short").await.1;
    for _ in 0..200 {
        if within_limit(&topic) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        topic = server.get("/v1/topics/short").await.1;
    }
    assert!(
        within_limit(&topic),
        "retention must bring the topic within its limit: {topic}"
    );
    let first_offset = topic["first_offset"].as_u64().expect("first_offset");
    assert!(first_offset > 0, "{topic}");
    assert_eq!(
        topic["next_offset"], 60,
        "retention never touches the newest events"
    );

    let res = server.get("/v1/topics/short/events?from=0").await;
    let message = assert_error(&res, 410, "offset_truncated");
    assert!(
        message.contains(&first_offset.to_string()),
        "the message names the oldest offset: {message}"
    );
    let path = format!("/v1/topics/short/events?from={first_offset}&limit=1");
    let (status, events) = server.get(&path).await;
    assert_eq!(status, 200);
    assert_eq!(events[0]["offset"], first_offset);
    // Without `from`, a read starts at the oldest offset still kept.
    let (_, events) = server.get("/v1/topics/short/events?limit=1").await;
    assert_eq!(events[0]["offset"], first_offset);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn no_topic_is_created_beyond_max_topics(#[case] backend: Backend) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let config = RuntimeConfig {
        max_topics: 2,
        ..RuntimeConfig::default()
    };
    let server = site.start(config).await;
    assert_eq!(server.put("/v1/topics/a", "{}").await.0, 201);
    assert_eq!(server.publish_binary("b", "1", "x").await.0, 202);

    // Auto-creation by a publish and creation by PUT are both refused, with the limit named.
    let message = assert_error(
        &server.publish_binary("c", "1", "x").await,
        409,
        "too_many_topics",
    );
    assert!(message.contains("max_topics"), "{message}");
    assert_error(
        &server.put("/v1/topics/c", "{}").await,
        409,
        "too_many_topics",
    );
    assert_eq!(server.get("/v1/topics/c").await.0, 404);

    // Existing topics still take events and settings.
    assert_eq!(server.publish_binary("a", "1", "x").await.0, 202);
    assert_eq!(
        server
            .put("/v1/topics/b", r#"{"retention_ms": 60000}"#)
            .await
            .0,
        200
    );
    // Deleting one makes room again.
    assert_eq!(server.delete("/v1/topics/a").await.0, 204);
    assert_eq!(server.publish_binary("c", "1", "x").await.0, 202);
    server.stop().await;

    // The refused PUT left no settings behind: after a restart there are still two topics.
    let server = site
        .start(RuntimeConfig {
            max_topics: 2,
            ..RuntimeConfig::default()
        })
        .await;
    let (status, listed) = server.get("/v1/topics").await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .expect("a topic list")
        .iter()
        .filter_map(|topic| topic["name"].as_str())
        .collect();
    assert_eq!(names, ["b", "c"]);
    server.stop().await;
}
