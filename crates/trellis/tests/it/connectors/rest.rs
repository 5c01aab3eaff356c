//! The connectors REST API: every error path of the contract, each a JSON
//! `{"error","message"}` with its status (validation never reaches event storage, so these run
//! once), and connectors with their offsets across restarts of the runtime (on every backend).

use std::io::Write;

use reqwest::Method;
use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_test_support::{Backend, backends};

use super::{Api, event_data, file_source};
use crate::start_on;

#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_missing_plugins_are_refused() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let api = Api::new(node.base_url());
    let answer = api
        .create(
            "a",
            json!({"connector.class": "kafka-source", "topic": "t"}),
        )
        .await;
    answer.assert_error(400, "unknown_plugin");
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("kafka-source"),
        "names the class: {message}"
    );
    api.create("a", json!({"topic": "t"}))
        .await
        .assert_error(400, "unknown_plugin");
    api.create("a", json!({"connector.class": 7, "topic": "t"}))
        .await
        .assert_error(400, "unknown_plugin");
    // Nothing was stored by a refused request.
    assert_eq!(api.get("/v1/connectors").await.body, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_configs_name_the_key() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let api = Api::new(node.base_url());
    let good = file_source(&dir.path().join("in.log"), "lines");
    let with = |key: &str, value: Value| {
        let mut config = good.clone();
        config[key] = value;
        config
    };
    let without = |key: &str| {
        let mut config = good.clone();
        config.as_object_mut().expect("object").remove(key);
        config
    };
    for (config, key) in [
        (without("path"), "path"),
        (without("topic"), "topic"),
        (with("max_batch", json!("many")), "max_batch"),
        (with("max_batch", json!(0)), "max_batch"),
        (with("errors.tolerance", json!("some")), "errors.tolerance"),
        (
            with("errors.retry.timeout.ms", json!(-1)),
            "errors.retry.timeout.ms",
        ),
        (with("colour", json!("blue")), "colour"),
    ] {
        let answer = api.create("lines", config).await;
        answer.assert_error(400, "invalid_connector");
        // The contract names the key in `attribute`; the runtime names it in `field` as
        // `config.<key>`, as the subscriptions API names its fields. Either names it.
        let named = answer.body["attribute"] == key
            || answer.body["field"].as_str() == Some(&format!("config.{key}"));
        assert!(named, "the answer names {key}: {}", answer.body);
        let message = answer.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(key), "the message names {key}: {message}");
    }
    // An unknown key's answer also lists the keys the plugin takes.
    let answer = api.create("lines", with("colour", json!("blue"))).await;
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("path") && message.contains("max_batch"),
        "lists the plugin's keys: {message}"
    );
    // A sink's own keys: the delivery engine's settings, checked as a subscription's are.
    let answer = api
        .create(
            "hook",
            json!({"connector.class": "http-sink", "topic": "t", "sink": {"urls": ["ftp://x/"]}}),
        )
        .await;
    answer.assert_error(400, "invalid_connector");
    for name in ["", "a/b", "..", "white space"] {
        api.create(name, good.clone())
            .await
            .assert_error(400, "invalid_name");
    }
    // A body that is not {name, config}.
    let answer = api
        .send(Method::POST, "/v1/connectors", Some(&json!({"name": "x"})))
        .await;
    assert_eq!(answer.status, 400, "answer: {}", answer.body);
    assert!(answer.body["error"].is_string(), "answer: {}", answer.body);
    assert_eq!(api.get("/v1/connectors").await.body, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_connector_is_404_everywhere() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let api = Api::new(node.base_url());
    let config = json!({"connector.class": "file-source", "topic": "t", "path": "/tmp/x"});
    for (method, path, body) in [
        (Method::GET, "/v1/connectors/ghost", None),
        (Method::GET, "/v1/connectors/ghost/status", None),
        (Method::GET, "/v1/connectors/ghost/config", None),
        (Method::PUT, "/v1/connectors/ghost/pause", None),
        (Method::PUT, "/v1/connectors/ghost/resume", None),
        (Method::POST, "/v1/connectors/ghost/restart", None),
        (Method::GET, "/v1/connectors/ghost/offsets", None),
        (Method::DELETE, "/v1/connectors/ghost/offsets", None),
        (Method::DELETE, "/v1/connectors/ghost", None),
    ] {
        let answer = api.send(method.clone(), path, body.as_ref()).await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.body);
        answer.assert_error(404, "connector_not_found");
        let message = answer.body["message"].as_str().unwrap_or_default();
        assert!(message.contains("ghost"), "{method} {path}: {message}");
    }
    // PUT config of an unknown name creates it, as in Kafka Connect.
    let answer = api
        .send(Method::PUT, "/v1/connectors/ghost/config", Some(&config))
        .await;
    assert_eq!(answer.status, 201, "answer: {}", answer.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn state_conflicts_are_409() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let api = Api::new(node.base_url());
    let config = file_source(&dir.path().join("in.log"), "lines");
    let created = api.create_ok("lines", config.clone()).await;
    assert_eq!(created["name"], "lines");
    assert_eq!(created["type"], "source");
    assert_eq!(created["config"]["connector.class"], "file-source");

    let mut other = config.clone();
    other["path"] = json!(dir.path().join("other.log").display().to_string());
    api.create("lines", other)
        .await
        .assert_error(409, "connector_exists");

    api.wait_for_state("lines", "RUNNING")
        .await
        .expect("running");
    api.send(Method::PUT, "/v1/connectors/lines/resume", None)
        .await
        .assert_error(409, "connector_not_paused");
    api.send(Method::DELETE, "/v1/connectors/lines/offsets", None)
        .await
        .assert_error(409, "connector_not_paused");

    let paused = api
        .send(Method::PUT, "/v1/connectors/lines/pause", None)
        .await;
    assert_eq!(paused.status, 202, "answer: {}", paused.body);
    assert_eq!(paused.body["state"], "PAUSED");
    api.send(Method::PUT, "/v1/connectors/lines/pause", None)
        .await
        .assert_error(409, "connector_paused");
    let deleted = api
        .send(Method::DELETE, "/v1/connectors/lines/offsets", None)
        .await;
    assert_eq!(deleted.status, 200, "answer: {}", deleted.body);
    assert_eq!(deleted.body["name"], "lines");

    let resumed = api
        .send(Method::PUT, "/v1/connectors/lines/resume", None)
        .await;
    assert_eq!(resumed.status, 202, "answer: {}", resumed.body);
    // The contract says RUNNING; the runtime answers the state it is in at once, which may
    // still be STARTING, or UNASSIGNED until a replica (this one) owns it again.
    let state = resumed.body["state"].as_str().unwrap_or_default();
    assert!(
        matches!(state, "RUNNING" | "STARTING" | "UNASSIGNED"),
        "answer: {}",
        resumed.body
    );
    api.wait_for_state("lines", "RUNNING")
        .await
        .expect("running again");
    let gone = api.send(Method::DELETE, "/v1/connectors/lines", None).await;
    assert_eq!(gone.status, 204, "answer: {}", gone.body);
    api.get("/v1/connectors/lines")
        .await
        .assert_error(404, "connector_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_redacted_and_plugins_are_listed() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let api = Api::new(node.base_url());
    let secret = "hook-secret-4711";
    let config = json!({
        "connector.class": "http-source", "topic": "gh", "format": "github",
        "listen": format!("127.0.0.1:{}", super::free_port()), "secret": secret,
    });
    let created = api.create_ok("gh", config).await;
    let shown = [
        created,
        api.get("/v1/connectors/gh").await.body,
        api.get("/v1/connectors/gh/config").await.body,
        api.get("/v1/connectors?expand=info&expand=status")
            .await
            .body,
    ];
    for answer in &shown {
        assert!(!answer.to_string().contains(secret), "redacted: {answer}");
    }
    assert!(shown[1]["config"]["secret"].is_string(), "{}", shown[1]);
    assert_eq!(shown[2]["format"], "github");

    let plugins = api.get("/v1/connector-plugins").await;
    assert_eq!(plugins.status, 200);
    let mut classes: Vec<(String, String)> = plugins
        .body
        .as_array()
        .expect("a list")
        .iter()
        .map(|plugin| {
            let text = |key: &str| plugin[key].as_str().unwrap_or_default().to_owned();
            (text("class"), text("type"))
        })
        .collect();
    classes.sort();
    let expected: Vec<(String, String)> = [
        ("file-sink", "sink"),
        ("file-source", "source"),
        ("http-sink", "sink"),
        ("http-source", "source"),
        ("topic-sink", "sink"),
        ("topic-source", "source"),
    ]
    .iter()
    .map(|(class, kind)| ((*class).to_owned(), (*kind).to_owned()))
    .collect();
    assert_eq!(classes, expected);
    let http_source = plugins
        .body
        .as_array()
        .and_then(|plugins| {
            plugins
                .iter()
                .find(|plugin| plugin["class"] == "http-source")
        })
        .expect("http-source");
    let secret_key = http_source["config"]
        .as_array()
        .and_then(|keys| keys.iter().find(|key| key["name"] == "secret"))
        .expect("the secret key is described");
    assert_eq!(secret_key["secret"], true);
}

/// Connectors, their paused flag and their offsets survive a restart of the runtime, and a
/// running one goes on where it stopped.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn connectors_survive_a_restart_and_go_on(#[case] backend: Backend) {
    let Some(mut node) = start_on(backend) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.log");
    let mut file = std::fs::File::create(&input).expect("create input");
    file.write_all(b"one\ntwo\nthree\n").expect("write");
    let mut api = Api::new(node.base_url());
    api.put_topic("lines").await;
    api.create_ok("tail", file_source(&input, "lines")).await;
    api.create_ok("idle", file_source(&dir.path().join("idle.log"), "idle"))
        .await;
    let paused = api
        .send(Method::PUT, "/v1/connectors/idle/pause", None)
        .await;
    assert_eq!(paused.status, 202, "answer: {}", paused.body);
    assert_eq!(api.wait_for_events("lines", 3).await.len(), 3);
    // The offset is committed at the interval (100 ms here) and on a graceful stop.
    let committed = async |api: &Api| {
        api.get("/v1/connectors/tail/offsets").await.body["offsets"][0]["offset"].as_u64()
    };
    let stored = crate::eventually(async || committed(&api).await == Some(14)).await;
    assert!(
        stored,
        "the offset after three lines: {:?}",
        committed(&api).await
    );

    node.terminate().expect("graceful stop");
    node.restart();
    api.set_base(node.base_url());

    assert_eq!(
        api.get("/v1/connectors").await.body,
        json!(["idle", "tail"])
    );
    api.wait_for_state("tail", "RUNNING")
        .await
        .expect("tail runs again");
    api.wait_for_state("idle", "PAUSED")
        .await
        .expect("idle is still paused");
    let expanded = api
        .get("/v1/connectors?expand=status&expand=info")
        .await
        .body;
    assert_eq!(
        expanded["tail"]["info"]["config"]["connector.class"],
        "file-source"
    );
    assert_eq!(expanded["idle"]["status"]["paused"], true, "{expanded}");
    assert_eq!(committed(&api).await, Some(14), "the offset survived");

    file.write_all(b"four\nfive\n").expect("write");
    let events = api.wait_for_events("lines", 5).await;
    let data: Vec<Vec<u8>> = events.iter().map(event_data).collect();
    let expected: Vec<Vec<u8>> = ["one", "two", "three", "four", "five"]
        .iter()
        .map(|line| line.as_bytes().to_vec())
        .collect();
    assert_eq!(data, expected, "it went on after the last line, none twice");
}
