//! Request-level errors over HTTP: every refusal is the API's JSON error with the right status,
//! and echoed input is cut short. Also the bounds on what an event may hold (attribute sizes,
//! JSON nesting depth).

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{
    BATCH, STRUCTURED, Server, assert_error, event, json_of, server, server_with,
};

/// A body over the admin endpoints' limit of 1 MiB.
fn oversized_body() -> String {
    format!("{{\"name\":\"{}\"}}", "x".repeat(1024 * 1024 + 1))
}

#[apply(backends)]
#[tokio::test]
async fn oversized_admin_bodies_are_refused_with_413_json(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let client = &server.client;
    let requests = [
        client.put(server.url("/v1/topics/x")),
        client.post(server.url("/v1/subscriptions")),
        client.patch(server.url("/v1/subscriptions/x")),
    ];
    for request in requests {
        let response = request
            .header("content-type", "application/json")
            .body(oversized_body())
            .send()
            .await
            .expect("request");
        let res = json_of(response).await;
        let message = assert_error(&res, 413, "payload_too_large");
        assert!(message.contains("1048576 bytes"), "{message}");
    }
    // The topic was not created by the refused PUT.
    assert_error(&server.get("/v1/topics/x").await, 404, "topic_not_found");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_path_segment_that_is_not_utf8_is_refused_with_400_json(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    for path in [
        "/v1/topics/%FF",
        "/v1/topics/%C3%28/events",
        "/v1/subscriptions/a%E9b",
    ] {
        let res = server.get(path).await;
        let message = assert_error(&res, 400, "invalid_path");
        assert!(message.contains("UTF-8"), "{message}");
    }
    let res = server
        .post("/v1/topics/%FF/events", STRUCTURED, event("1").to_string())
        .await;
    assert_error(&res, 400, "invalid_path");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn echoed_input_is_cut_short_in_every_message(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let long_name = "\u{e9}".repeat(10_000);
    let encoded: String = long_name
        .bytes()
        .map(|byte| format!("%{byte:02X}"))
        .collect();
    let long_field = "f".repeat(10_000);
    let answers = [
        // A topic name, in the path, by each endpoint that takes one.
        server.put(&format!("/v1/topics/{encoded}"), "").await,
        server.get(&format!("/v1/topics/{encoded}")).await,
        server
            .post(
                &format!("/v1/topics/{encoded}/events"),
                STRUCTURED,
                event("1").to_string(),
            )
            .await,
        server.get(&format!("/v1/subscriptions/{encoded}")).await,
        // Names and values inside bodies.
        server
            .put(
                "/v1/topics/t",
                &json!({ long_field.clone(): 1 }).to_string(),
            )
            .await,
        server
            .post(
                "/v1/subscriptions",
                "application/json",
                json!({"name": long_name, "topic": "t", "sink": {"urls": ["http://127.0.0.1:9/"]}})
                    .to_string(),
            )
            .await,
        server
            .post(
                "/v1/topics/t/events",
                STRUCTURED,
                json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                       long_field.clone(): [1]})
                .to_string(),
            )
            .await,
        server
            .post(
                "/v1/topics/t/events",
                STRUCTURED,
                json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                       "time": long_name})
                .to_string(),
            )
            .await,
        server
            .get(&format!("/v1/topics/t/events?{long_field}=1"))
            .await,
    ];
    for (idx, (status, body)) in answers.iter().enumerate() {
        assert!((400..500).contains(status), "answer {idx}: {status} {body}");
        let message = body["message"].as_str().expect("a JSON error");
        assert!(
            message.chars().count() < 600,
            "answer {idx} echoes too much: {message}"
        );
        let whole = serde_json::to_string(body).expect("serialise");
        assert!(whole.len() < 2_000, "answer {idx}: {whole}");
    }
    server.stop().await;
}

async fn publish_binary_with(server: &Server, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = server
        .client
        .post(server.url("/v1/topics/t/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/tests")
        .header("ce-type", "com.example.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    json_of(
        request
            .body(&b"\x1f\x8b\x08\x00compressed"[..])
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[apply(backends)]
#[tokio::test]
async fn a_body_in_any_content_encoding_but_identity_is_refused_with_415(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    for encoding in ["gzip", "br", "identity, gzip", "x-custom"] {
        let res = publish_binary_with(
            &server,
            &[
                ("content-type", "application/json"),
                ("content-encoding", encoding),
            ],
        )
        .await;
        let message = assert_error(&res, 415, "unsupported_content_encoding");
        assert!(message.contains("identity"), "{message}");
    }
    let res = server
        .client
        .put(server.url("/v1/topics/t"))
        .header("content-encoding", "gzip")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_error(&json_of(res).await, 415, "unsupported_content_encoding");
    // Nothing was stored, and identity is accepted.
    assert_error(&server.get("/v1/topics/t").await, 404, "topic_not_found");
    let res = publish_binary_with(
        &server,
        &[
            ("content-type", "application/octet-stream"),
            ("content-encoding", "identity"),
        ],
    )
    .await;
    assert_eq!(res.0, 202, "{}", res.1);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_repeated_content_type_is_refused_with_400(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let res = publish_binary_with(
        &server,
        &[
            ("content-type", "text/plain"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    let message = assert_error(&res, 400, "invalid_header");
    assert!(message.contains("Content-Type"), "{message}");
    let response = server
        .client
        .post(server.url("/v1/topics/t/events"))
        .header("content-type", STRUCTURED)
        .header("content-type", BATCH)
        .body(event("1").to_string())
        .send()
        .await
        .expect("request");
    assert_error(&json_of(response).await, 400, "invalid_header");
    assert_error(&server.get("/v1/topics/t").await, 404, "topic_not_found");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn attributes_over_4_kib_are_refused_naming_the_attribute(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let long = "i".repeat(4097);
    for (name, value) in [("id", &long), ("source", &long), ("myext", &long)] {
        let mut body = event("1");
        body[name] = json!(value);
        let res = server
            .post("/v1/topics/t/events", STRUCTURED, body.to_string())
            .await;
        let message = assert_error(&res, 400, "invalid_event");
        assert_eq!(res.1["attribute"], name, "{}", res.1);
        assert!(message.contains("the limit is 4096 bytes"), "{message}");
    }
    // In a batch the error names the event's index.
    let mut second = event("2");
    second["id"] = json!(long);
    let res = server
        .post(
            "/v1/topics/t/events",
            BATCH,
            json!([event("1"), second]).to_string(),
        )
        .await;
    assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["index"], 1);
    assert_eq!(res.1["attribute"], "id");
    // Binary mode too.
    let res = publish_binary_with(&server, &[("ce-subject", long.as_str())]).await;
    assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["attribute"], "subject");
    // Nothing was stored; 4096 bytes is fine.
    assert_error(&server.get("/v1/topics/t").await, 404, "topic_not_found");
    let mut body = event("1");
    body["id"] = json!("i".repeat(4096));
    let res = server
        .post("/v1/topics/t/events", STRUCTURED, body.to_string())
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    server.stop().await;
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[apply(backends)]
#[tokio::test]
async fn json_data_is_limited_to_64_levels_by_default(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let body = |depth: usize| {
        let mut body = event("1");
        body["data"] = serde_json::from_str(&nested(depth)).expect("valid JSON");
        body.to_string()
    };
    let res = server
        .post("/v1/topics/t/events", STRUCTURED, body(64))
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    let res = server
        .post("/v1/topics/t/events", STRUCTURED, body(65))
        .await;
    let message = assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["attribute"], "data");
    assert!(message.contains("64 levels"), "{message}");

    // Far deeper than serde_json's recursion limit: the data is skipped as raw JSON, then
    // measured.
    let deep = format!(
        r#"{{"specversion":"1.0","id":"2","source":"/s","type":"t","data":{}}}"#,
        nested(100_000)
    );
    let res = server.post("/v1/topics/t/events", STRUCTURED, deep).await;
    assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["attribute"], "data");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn the_json_depth_limit_is_configurable_and_holds_in_every_mode(#[case] backend: Backend) {
    let config = RuntimeConfig {
        max_json_depth: 3,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    let mut shallow = event("1");
    shallow["data"] = json!({"a": [[1]]});
    let mut deep = event("2");
    deep["data"] = json!({"a": [[[1]]]});

    let res = server
        .post("/v1/topics/t/events", STRUCTURED, shallow.to_string())
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    let res = server
        .post("/v1/topics/t/events", STRUCTURED, deep.to_string())
        .await;
    assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["attribute"], "data");

    let res = server
        .post(
            "/v1/topics/t/events",
            BATCH,
            json!([shallow, deep]).to_string(),
        )
        .await;
    let message = assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["index"], 1);
    assert!(message.contains("batch event at index 1"), "{message}");

    let response = server
        .client
        .post(server.url("/v1/topics/t/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "3")
        .header("ce-source", "/tests")
        .header("ce-type", "com.example.test")
        .header("content-type", "application/json")
        .body(nested(4))
        .send()
        .await
        .expect("request");
    let res = json_of(response).await;
    assert_error(&res, 400, "invalid_event");
    assert_eq!(res.1["attribute"], "data");

    // Only the first event was stored.
    let (status, events) = server.get("/v1/topics/t/events").await;
    assert_eq!(status, 200);
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    server.stop().await;
}
