//! `POST /v1/topics/{topic}/events` in every content mode, and every way it refuses a request.

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::json;
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{BATCH, STRUCTURED, assert_error, event, server, server_with};

#[apply(backends)]
#[tokio::test]
async fn binary_mode_publish_is_acknowledged_with_dense_offsets_and_readable(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let first = server.publish_binary("orders", "a-1", "hello").await;
    assert_eq!(first.0, 202, "{}", first.1);
    assert_eq!(first.1, json!({"events": [{"id": "a-1", "offset": 0}]}));
    let second = server.publish_binary("orders", "a-2", "world").await;
    assert_eq!(second.1["events"][0]["offset"], 1);

    let (status, events) = server.get("/v1/topics/orders/events?from=0").await;
    assert_eq!(status, 200);
    assert_eq!(events.as_array().map(Vec::len), Some(2));
    assert_eq!(events[0]["offset"], 0);
    assert_eq!(events[0]["id"], "a-1");
    assert_eq!(events[0]["source"], "/tests");
    assert_eq!(events[0]["data"], "hello");
    assert_eq!(events[1]["id"], "a-2");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn binary_mode_keeps_extensions_and_binary_data(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let response = server
        .client
        .post(server.url("/v1/topics/t/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/tests")
        .header("ce-type", "com.example.bytes")
        .header("ce-traceparent", "00-abc-def-01")
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 202);
    let (_, events) = server.get("/v1/topics/t/events").await;
    assert_eq!(events[0]["traceparent"], "00-abc-def-01");
    assert_eq!(events[0]["datacontenttype"], "application/octet-stream");
    assert_eq!(events[0]["data_base64"], "AJ+Slg==");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn structured_mode_publish_is_acknowledged(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let res = server
        .post("/v1/topics/t/events", STRUCTURED, event("s-1").to_string())
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    assert_eq!(res.1, json!({"events": [{"id": "s-1", "offset": 0}]}));
    let (_, events) = server.get("/v1/topics/t/events").await;
    assert_eq!(events[0]["data"], json!({"n": 1}));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn batch_publish_gets_one_offset_per_event_in_order(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let batch = json!([event("b-1"), event("b-2"), event("b-3")]);
    let res = server
        .post("/v1/topics/t/events", BATCH, batch.to_string())
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    assert_eq!(
        res.1,
        json!({"events": [{"id": "b-1", "offset": 0}, {"id": "b-2", "offset": 1}, {"id": "b-3", "offset": 2}]})
    );
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_batch_with_one_bad_event_stores_nothing_and_names_its_index(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    server.publish_binary("t", "before", "x").await;
    let mut bad = event("b-2");
    bad["time"] = json!("yesterday");
    let batch = json!([event("b-1"), bad, event("b-3")]);
    let res = server
        .post("/v1/topics/t/events", BATCH, batch.to_string())
        .await;
    let message = assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["index"], 1, "{}", res.1);
    assert_eq!(res.1["attribute"], "time", "{}", res.1);
    assert!(message.contains("1"), "{message}");
    let (_, topic) = server.get("/v1/topics/t").await;
    assert_eq!(topic["next_offset"], 1, "the batch must be all-or-nothing");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn invalid_events_are_refused_naming_the_attribute(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let cases = [
        (
            json!({"specversion": "1.0", "source": "/s", "type": "t"}),
            "id",
        ),
        (
            json!({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}),
            "specversion",
        ),
        (
            json!({"specversion": "1.0", "id": "1", "type": "t"}),
            "source",
        ),
        (
            json!({"specversion": "1.0", "id": "1", "source": "/s"}),
            "type",
        ),
        (
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "noon"}),
            "time",
        ),
        (
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "BadName": "x"}),
            "BadName",
        ),
        (
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ext": {"a": 1}}),
            "ext",
        ),
        (
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "offset": "7"}),
            "offset",
        ),
    ];
    for (body, attribute) in cases {
        let res = server
            .post("/v1/topics/t/events", STRUCTURED, body.to_string())
            .await;
        assert_error(&res, 400, "invalid_event");
        assert_eq!(res.1["attribute"], attribute, "{}", res.1);
    }
    let res = server
        .post("/v1/topics/t/events", STRUCTURED, "{not json")
        .await;
    assert_error(&res, 400, "invalid_event");
    let (_, topic) = server.get("/v1/topics").await;
    assert!(
        topic["topics"]
            .as_array()
            .is_some_and(|topics| topics.iter().all(|t| t["next_offset"] == 0))
    );
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn binary_mode_without_required_headers_is_refused(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let response = server
        .client
        .post(server.url("/v1/topics/t/events"))
        .header("ce-specversion", "1.0")
        .header("ce-source", "/tests")
        .header("ce-type", "t")
        .body("x")
        .send()
        .await
        .expect("request");
    let res = crate::support::json_of(response).await;
    assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["attribute"], "id");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn unknown_content_types_are_refused_with_415(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let res = server
        .post(
            "/v1/topics/t/events",
            "application/json",
            event("x").to_string(),
        )
        .await;
    let message = assert_error(&res, 415, "unsupported_content_type");
    assert!(
        message.contains("application/cloudevents+json"),
        "{message}"
    );
    let res = server
        .post(
            "/v1/topics/t/events",
            "application/cloudevents+xml",
            "<event/>",
        )
        .await;
    assert_error(&res, 415, "unsupported_content_type");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn oversized_events_and_batches_are_refused_with_413(#[case] backend: Backend) {
    let config = RuntimeConfig {
        max_event_bytes: 2048,
        max_batch_bytes: 8192,
        max_batch_events: 3,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };

    let big = "x".repeat(4096);
    let res = server.publish_binary("t", "big", &big).await;
    let message = assert_error(&res, 413, "payload_too_large");
    assert!(
        message.contains("2048"),
        "the message gives the limit: {message}"
    );

    let mut big_event = event("big");
    big_event["data"] = json!("y".repeat(2100));
    let res = server
        .post(
            "/v1/topics/t/events",
            BATCH,
            json!([event("ok"), big_event]).to_string(),
        )
        .await;
    assert_error(&res, 413, "payload_too_large");
    assert_eq!(res.1["index"], 1);

    let res = server
        .post(
            "/v1/topics/t/events",
            BATCH,
            json!([event("1"), event("2"), event("3"), event("4")]).to_string(),
        )
        .await;
    assert_error(&res, 413, "payload_too_large");

    let res = server
        .post(
            "/v1/topics/t/events",
            BATCH,
            "[".to_owned() + &" ".repeat(9000) + "]",
        )
        .await;
    assert_error(&res, 413, "payload_too_large");

    let (status, _) = server.get("/v1/topics/t").await;
    assert_eq!(
        status, 404,
        "nothing was stored, so the topic was never needed"
    );
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn invalid_topic_names_say_which_characters_are_allowed(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let too_long = "t".repeat(250);
    for name in ["bad%20name", "a*b", "a:b", too_long.as_str()] {
        let res = server.publish_binary(name, "1", "x").await;
        let message = assert_error(&res, 400, "invalid_topic_name");
        assert!(
            message.contains("A-Z") || message.contains("a-z"),
            "{message}"
        );
    }
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn without_auto_create_an_unknown_topic_is_404(#[case] backend: Backend) {
    let config = RuntimeConfig {
        auto_create_topics: false,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    let res = server.publish_binary("nope", "1", "x").await;
    assert_error(&res, 404, "topic_not_found");
    assert_eq!(server.put("/v1/topics/nope", "").await.0, 201);
    assert_eq!(server.publish_binary("nope", "1", "x").await.0, 202);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn concurrent_publishes_get_unique_dense_offsets(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for task_idx in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..20 {
                let res = server
                    .publish_binary("t", &format!("{task_idx}-{n}"), "x")
                    .await;
                assert_eq!(res.0, 202);
                offsets.push(res.1["events"][0]["offset"].as_u64().expect("offset"));
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (0..320).collect::<Vec<u64>>());
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.stop().await;
    }
}

/// An event within `max_event_bytes` that the event store cannot take (on JetStream, over the
/// server's `max_payload` once the stored attributes and headers are counted) is a 413 that
/// names the store's limit, never a 500; the embedded log takes it.
#[apply(backends)]
#[tokio::test]
async fn an_event_over_the_stores_own_limit_is_refused_with_413(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    // Just under the default max_event_bytes (1 MiB) with its attributes.
    let data = "z".repeat(1024 * 1024 - 400);
    let res = server.publish_binary("t", "near-limit", &data).await;
    match backend {
        Backend::Embedded => assert_eq!(res.0, 202, "{}", res.1),
        Backend::JetStream => {
            let message = assert_error(&res, 413, "payload_too_large");
            assert!(message.contains("event store accepts"), "{message}");
        }
    }
    let res = server.publish_binary("t", "small", "fits").await;
    assert_eq!(
        res.0, 202,
        "the topic takes events after the refusal: {}",
        res.1
    );
}
