//! Connectors inside the runtime, through `/v1/connectors`: a file source publishing a file's
//! lines, a file sink and the HTTP sink reading a topic, the error policy, and connectors and
//! their offsets across a restart.

use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, Receiver, Reply, backends};

use crate::support::{Server, Site, assert_error, per_backend, server_with};

/// Loopback receivers are refused by the default deny list.
fn config() -> RuntimeConfig {
    RuntimeConfig {
        webhook_deny: Vec::new(),
        ..RuntimeConfig::default()
    }
}

/// A guard against a hang, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(server: &Server, name: &str, config: Value) -> (u16, Value) {
    server
        .post(
            "/v1/connectors",
            "application/json",
            json!({"name": name, "config": config}).to_string(),
        )
        .await
}

async fn next_offset(server: &Server, topic: &str) -> u64 {
    let (status, body) = server.get(&format!("/v1/topics/{topic}")).await;
    if status != 200 {
        return 0;
    }
    body["next_offset"].as_u64().unwrap_or(0)
}

async fn events(server: &Server, topic: &str, limit: usize) -> Vec<Value> {
    let (status, body) = server
        .get(&format!("/v1/topics/{topic}/events?from=0&limit={limit}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

async fn state(server: &Server, name: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/connectors/{name}/status")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[apply(backends)]
#[tokio::test]
async fn a_file_source_publishes_every_line_once_across_a_restart(#[case] backend: Backend) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(config()).await;
    let topic = per_backend("lines", backend);
    let file = site.path().join("input.log");
    let lines: Vec<String> = (0..50).map(|n| format!("line {n}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write the input");
    let created = create(
        &server,
        &per_backend("tail", backend),
        json!({"connector.class": "file-source", "path": file, "topic": topic}),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["type"], "source");
    eventually("50 lines in the topic", async || {
        (next_offset(&server, &topic).await == 50).then_some(())
    })
    .await;
    server.stop().await;

    // Appended while the runtime was down; read from where the last run committed.
    let more: Vec<String> = (50..60).map(|n| format!("line {n}")).collect();
    let mut text = std::fs::read_to_string(&file).expect("read the input");
    text.push_str(&(more.join("\n") + "\n"));
    std::fs::write(&file, text).expect("append");
    let server = site.start(config()).await;
    let (status, names) = server.get("/v1/connectors").await;
    assert_eq!(status, 200);
    assert_eq!(names, json!([per_backend("tail", backend)]));
    eventually("60 lines in the topic", async || {
        (next_offset(&server, &topic).await >= 60).then_some(())
    })
    .await;
    let read = events(&server, &topic, 100).await;
    let data: Vec<&str> = read
        .iter()
        .map(|event| {
            event["data"]
                .as_str()
                .unwrap_or_else(|| panic!("text data in {event}"))
        })
        .collect();
    let expected: Vec<String> = (0..60).map(|n| format!("line {n}")).collect();
    assert_eq!(data, expected, "every line once, in order");
    let status = state(&server, &per_backend("tail", backend)).await;
    assert_eq!(status["connector"]["state"], "RUNNING", "{status}");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_file_sink_writes_the_topic_and_commits_only_what_it_wrote(#[case] backend: Backend) {
    let Some((site, server)) = server_with(backend, config()).await else {
        return;
    };
    let topic = per_backend("to-file", backend);
    for n in 0..20 {
        let (status, body) = server
            .publish_binary(&topic, &format!("e{n}"), &format!("data {n}"))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let out = site.path().join("out.jsonl");
    let name = per_backend("file-out", backend);
    let created = create(
        &server,
        &name,
        json!({"connector.class": "file-sink", "path": out, "topic": topic}),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let written = eventually("20 lines in the file", async || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (text.lines().count() >= 20).then_some(text)
    })
    .await;
    let ids: Vec<String> = written
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("a JSON event per line");
            event["id"].as_str().expect("id").to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..20).map(|n| format!("e{n}")).collect();
    assert_eq!(ids, expected);
    let offsets = eventually("the committed offset at 20", async || {
        let (_, offsets) = server.get(&format!("/v1/connectors/{name}/offsets")).await;
        (offsets["offsets"][0]["offset"] == 20).then_some(offsets)
    })
    .await;
    assert_eq!(offsets["offsets"][0]["partition"], topic.as_str());
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn the_http_sink_delivers_through_the_delivery_engine(#[case] backend: Backend) {
    let Some((_site, server)) = server_with(backend, config()).await else {
        return;
    };
    let receiver = Receiver::answering(200).await.expect("receiver");
    let topic = per_backend("to-http", backend);
    let name = per_backend("webhook", backend);
    let created = create(
        &server,
        &name,
        json!({
            "connector.class": "http-sink",
            "topic": topic,
            "sink": {"urls": [receiver.url("/hook")], "headers": {"Authorization": "Bearer s3cret"}},
            "delivery": {"max_attempts": 3},
        }),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let shown = created.1.to_string();
    assert!(
        !shown.contains("s3cret"),
        "the header value is redacted: {shown}"
    );
    for n in 0..10 {
        server
            .publish_binary(&topic, &format!("h{n}"), "hello")
            .await;
    }
    eventually("10 deliveries", async || {
        (receiver.n_requests() >= 10).then_some(())
    })
    .await;
    let request = &receiver.requests()[0];
    assert_eq!(request.header("ce-id"), Some("h0"));
    assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
    let status = eventually("put = 10", async || {
        let status = state(&server, &name).await;
        (status["records"]["put"] == 10).then_some(status)
    })
    .await;
    assert_eq!(status["connector"]["state"], "RUNNING");
    let put = format!("trellis_connector_records_put_total{{connector=\"{name}\"}} 10");
    let commits = format!("trellis_connector_offset_commits_total{{connector=\"{name}\"}}");
    let metrics = eventually("the connector's series", async || {
        let metrics = server.metrics().await;
        (metrics.contains(&put) && metrics.contains(&commits)).then_some(metrics)
    })
    .await;
    assert!(metrics.contains("trellis_connector_offset_commit_seconds"));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn with_tolerance_none_a_failed_record_pauses_the_connector_until_resumed(
    #[case] backend: Backend,
) {
    let Some((site, server)) = server_with(backend, config()).await else {
        return;
    };
    // 400 is not retried: the record fails for good at once.
    let receiver = Receiver::answering(400).await.expect("receiver");
    let topic = per_backend("strict", backend);
    let name = per_backend("strict-sink", backend);
    server.publish_binary(&topic, "first", "x").await;
    server.publish_binary(&topic, "second", "x").await;
    let created = create(
        &server,
        &name,
        json!({"connector.class": "http-sink", "topic": topic, "sink": {"urls": [receiver.url("/")]}}),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let failed = eventually("FAILED and paused", async || {
        let status = state(&server, &name).await;
        (status["connector"]["state"] == "FAILED" && status["paused"] == true).then_some(status)
    })
    .await;
    let trace = failed["connector"]["trace"].as_str().expect("a trace");
    assert!(trace.contains("failed for good"), "{trace}");

    // The pause and its reason outlive the runtime: a restart does not run into the record again.
    server.stop().await;
    let requests = receiver.n_requests();
    let server = site.start(config()).await;
    let status = state(&server, &name).await;
    assert_eq!(status["connector"]["state"], "FAILED", "{status}");
    assert_eq!(status["connector"]["trace"], trace);
    assert_eq!(
        receiver.n_requests(),
        requests,
        "nothing delivered while paused"
    );
    let (_, offsets) = server.get(&format!("/v1/connectors/{name}/offsets")).await;
    assert_eq!(
        offsets["offsets"][0]["offset"], 0,
        "nothing committed past it"
    );
    let (_, dead) = server.get(&format!("/v1/topics/{name}.dlq")).await;
    assert_ne!(dead["next_offset"], 1, "not dead-lettered: {dead}");

    receiver.set_script(|_, _| Reply::Status(200));
    let before = receiver.n_requests();
    let (status, body) = server
        .put(&format!("/v1/connectors/{name}/resume"), "")
        .await;
    assert_eq!(status, 202, "{body}");
    eventually("both delivered after the resume", async || {
        let delivered: Vec<String> = receiver.requests()[before..]
            .iter()
            .filter_map(|request| request.header("ce-id").map(str::to_owned))
            .collect();
        (delivered.contains(&"first".to_owned()) && delivered.contains(&"second".to_owned()))
            .then_some(())
    })
    .await;
    eventually("RUNNING", async || {
        let status = state(&server, &name).await;
        (status["connector"]["state"] == "RUNNING").then_some(())
    })
    .await;
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn with_tolerance_all_a_failed_record_is_dead_lettered_and_the_rest_go_on(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server_with(backend, config()).await else {
        return;
    };
    let receiver = Receiver::start(|_, request| {
        if request.header("ce-id") == Some("poison") {
            Reply::Status(400)
        } else {
            Reply::Status(200)
        }
    })
    .await
    .expect("receiver");
    let topic = per_backend("lenient", backend);
    let name = per_backend("lenient-sink", backend);
    for id in ["a", "poison", "b"] {
        server.publish_binary(&topic, id, "x").await;
    }
    let created = create(
        &server,
        &name,
        json!({
            "connector.class": "http-sink",
            "topic": topic,
            "sink": {"urls": [receiver.url("/")]},
            "errors.tolerance": "all",
        }),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let dead_letters = eventually("one dead letter", async || {
        let read = server
            .get(&format!("/v1/topics/{name}.dlq/events?from=0"))
            .await;
        (read.0 == 200 && read.1.as_array().is_some_and(|events| !events.is_empty()))
            .then_some(read.1)
    })
    .await;
    assert_eq!(dead_letters[0]["id"], "poison");
    eventually("committed past all three", async || {
        let (_, offsets) = server.get(&format!("/v1/connectors/{name}/offsets")).await;
        (offsets["offsets"][0]["offset"] == 3).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn connector_requests_that_cannot_be_served_get_json_errors() {
    let Some((_site, server)) = server_with(Backend::Embedded, config()).await else {
        return;
    };
    let unknown = create(
        &server,
        "x",
        json!({"connector.class": "ftp-source", "topic": "t"}),
    )
    .await;
    assert_error(&unknown, 400, "unknown_plugin");
    let missing = create(&server, "x", json!({"topic": "t"})).await;
    assert_error(&missing, 400, "unknown_plugin");
    let bad = create(
        &server,
        "x",
        json!({"connector.class": "file-source", "topic": "t", "path": 7}),
    )
    .await;
    let message = assert_error(&bad, 400, "invalid_connector");
    assert!(message.contains("path"), "{message}");
    assert_eq!(bad.1["field"], "config.path");
    let typo = create(
        &server,
        "x",
        json!({"connector.class": "file-source", "topic": "t", "path": "/tmp/x", "pathh": "/tmp/x"}),
    )
    .await;
    let message = assert_error(&typo, 400, "invalid_connector");
    assert!(message.contains("pathh"), "{message}");
    let bad_name = create(&server, "a b", json!({"connector.class": "file-sink"})).await;
    assert_error(&bad_name, 400, "invalid_name");

    for (method, path) in [
        ("GET", "/v1/connectors/nope"),
        ("GET", "/v1/connectors/nope/status"),
        ("GET", "/v1/connectors/nope/config"),
        ("PUT", "/v1/connectors/nope/pause"),
        ("PUT", "/v1/connectors/nope/resume"),
        ("POST", "/v1/connectors/nope/restart"),
        ("GET", "/v1/connectors/nope/offsets"),
        ("DELETE", "/v1/connectors/nope/offsets"),
        ("DELETE", "/v1/connectors/nope"),
    ] {
        let response = server
            .client
            .request(method.parse().expect("method"), server.url(path))
            .send()
            .await
            .expect("request");
        let answer = crate::support::json_of(response).await;
        assert_error(&answer, 404, "connector_not_found");
    }

    let out = tempfile::tempdir().expect("temp dir");
    let config =
        json!({"connector.class": "file-sink", "topic": "t", "path": out.path().join("o")});
    assert_eq!(create(&server, "out", config.clone()).await.0, 201);
    assert_error(
        &create(&server, "out", config).await,
        409,
        "connector_exists",
    );
    assert_error(
        &server.put("/v1/connectors/out/resume", "").await,
        409,
        "connector_not_paused",
    );
    assert_error(
        &server.delete("/v1/connectors/out/offsets").await,
        409,
        "connector_not_paused",
    );
    assert_eq!(server.put("/v1/connectors/out/pause", "").await.0, 202);
    assert_error(
        &server.put("/v1/connectors/out/pause", "").await,
        409,
        "connector_paused",
    );
    assert_eq!(server.delete("/v1/connectors/out/offsets").await.0, 200);
    assert_eq!(server.delete("/v1/connectors/out").await.0, 204);
    let (status, plugins) = server.get("/v1/connector-plugins").await;
    assert_eq!(status, 200);
    let classes: Vec<&str> = plugins
        .as_array()
        .expect("an array")
        .iter()
        .map(|plugin| plugin["class"].as_str().expect("class"))
        .collect();
    for class in [
        "file-source",
        "file-sink",
        "http-source",
        "http-sink",
        "topic-source",
        "topic-sink",
    ] {
        assert!(classes.contains(&class), "{class} in {classes:?}");
    }
    server.stop().await;
}

/// A sink that is not the HTTP sink runs behind the same dispatcher: a batch its target cannot
/// take now is put again, with backoff, and nothing is lost or committed early.
#[apply(backends)]
#[tokio::test]
async fn a_sink_whose_target_fails_for_a_while_loses_nothing(#[case] backend: Backend) {
    let Some((_site, server)) = server_with(backend, config()).await else {
        return;
    };
    // The far side of a topic sink: down for the first two batches, then taking them.
    let far = Receiver::start(|n, _| {
        if n < 2 {
            Reply::Status(503)
        } else {
            Reply::Status(202)
        }
    })
    .await
    .expect("receiver");
    let topic = per_backend("bridged", backend);
    let name = per_backend("bridge", backend);
    for n in 0..5 {
        server.publish_binary(&topic, &format!("b{n}"), "x").await;
    }
    let created = create(
        &server,
        &name,
        json!({
            "connector.class": "topic-sink",
            "topic": topic,
            "url": far.url(""),
            "remote_topic": "far",
        }),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let status = eventually("all five put", async || {
        let status = state(&server, &name).await;
        (status["records"]["put"] == 5).then_some(status)
    })
    .await;
    assert_eq!(status["records"]["failed"], 0, "{status}");
    let sent: Vec<Value> = far
        .requests()
        .iter()
        .flat_map(|request| serde_json::from_slice::<Vec<Value>>(&request.body).expect("a batch"))
        .collect();
    for n in 0..5 {
        let id = format!("b{n}");
        assert!(
            sent.iter()
                .filter(|event| event["id"] == id.as_str())
                .count()
                >= 1,
            "{id} sent"
        );
    }
    assert!(far.n_requests() >= 3, "retried after the 503s");
    eventually("the committed offset at 5", async || {
        let (_, offsets) = server.get(&format!("/v1/connectors/{name}/offsets")).await;
        (offsets["offsets"][0]["offset"] == 5).then_some(())
    })
    .await;
    server.stop().await;
}
