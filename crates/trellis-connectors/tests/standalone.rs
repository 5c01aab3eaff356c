//! Standalone connectors against a real runtime on loopback: a sink reading the runtime's topic
//! into a file, resuming after a restart; dead letters into the runtime; a source's default
//! CloudEvents attributes.

mod far;

use std::path::Path;
use std::time::Duration;

use far::Far;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trellis_connect::ConnectorConfig;
use trellis_connectors::standalone::{self, StandaloneError};

fn config(value: Value) -> ConnectorConfig {
    ConnectorConfig::from_value(value).expect("an object")
}

fn spawn(
    name: &str,
    config: ConnectorConfig,
    far: &Far,
    offsets: &Path,
) -> (CancellationToken, JoinHandle<Result<(), StandaloneError>>) {
    let stop = CancellationToken::new();
    let (name, url, offsets, token) = (
        name.to_owned(),
        far.base.clone(),
        offsets.to_owned(),
        stop.clone(),
    );
    let task =
        tokio::spawn(async move { standalone::run(&name, config, &url, &offsets, token).await });
    (stop, task)
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn file_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| event["id"].as_str().map(str::to_owned))
        .collect()
}

async fn topic_events(far: &Far, topic: &str) -> Vec<Value> {
    let response = reqwest::get(format!(
        "{}/v1/topics/{topic}/events?from=0&limit=1000",
        far.base
    ))
    .await
    .expect("read events");
    if response.status().as_u16() == 404 {
        return Vec::new();
    }
    response.json().await.expect("json")
}

#[tokio::test]
async fn a_standalone_sink_reads_the_topic_into_its_file_and_resumes_after_a_restart() {
    let far = Far::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.jsonl");
    let offsets = dir.path().join("out.offsets");
    let sink = config(json!({
        "connector.class": "file-sink",
        "topic": "orders",
        "path": out.display().to_string(),
        "fsync": "always",
        "offsets.commit.interval.ms": 3_600_000,
    }));
    far.publish("orders", &["a", "b", "c"]).await;

    let (stop, task) = spawn("out", sink.clone(), &far, &offsets);
    until("three lines", async || file_ids(&out).len() == 3).await;
    stop.cancel();
    task.await.expect("task").expect("a clean stop");
    assert_eq!(file_ids(&out), ["a", "b", "c"]);

    far.publish("orders", &["d", "e"]).await;
    let (stop, task) = spawn("out", sink, &far, &offsets);
    until("five lines", async || file_ids(&out).len() >= 5).await;
    stop.cancel();
    task.await.expect("task").expect("a clean stop");
    assert_eq!(
        file_ids(&out),
        ["a", "b", "c", "d", "e"],
        "the restart resumed after the committed offset"
    );
    far.stop().await;
}

/// `/dev/full` takes the open and fails every write: each record fails for good, and under
/// `errors.tolerance = all` goes to the dead-letter topic in the runtime.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn records_a_sink_fails_for_good_are_dead_lettered_into_the_runtime() {
    let far = Far::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let offsets = dir.path().join("full.offsets");
    let sink = config(json!({
        "connector.class": "file-sink",
        "topic": "orders",
        "path": "/dev/full",
        "fsync": "never",
        "errors.tolerance": "all",
    }));
    far.publish("orders", &["a", "b"]).await;
    let (stop, task) = spawn("full", sink, &far, &offsets);
    until("two dead letters", async || {
        topic_events(&far, "full.dlq").await.len() == 2
    })
    .await;
    stop.cancel();
    task.await.expect("task").expect("a clean stop");
    let letters = topic_events(&far, "full.dlq").await;
    let ids: Vec<&str> = letters.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(letters[0]["trellisconnector"], "full");
    assert_eq!(letters[0]["trellisfailure"], "non_retriable");
    assert!(
        letters[0]["trellisreason"]
            .as_str()
            .is_some_and(|reason| reason.contains("writing to the file failed")),
        "{}",
        letters[0]
    );
    far.stop().await;
}

#[tokio::test]
async fn a_standalone_source_names_its_events_after_the_connector() {
    let far = Far::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.log");
    std::fs::write(&path, "one\ntwo\n").expect("write");
    let source = config(json!({
        "connector.class": "file-source",
        "topic": "lines",
        "path": path.display().to_string(),
    }));
    let (stop, task) = spawn("tail", source, &far, &dir.path().join("tail.offsets"));
    until("two events", async || {
        topic_events(&far, "lines").await.len() == 2
    })
    .await;
    stop.cancel();
    task.await.expect("task").expect("a clean stop");
    let events = topic_events(&far, "lines").await;
    assert_eq!(events[0]["source"], "/connectors/tail");
    assert_eq!(events[0]["type"], "trellis.connector.file-source");
    far.stop().await;
}

#[tokio::test]
async fn what_cannot_run_standalone_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let offsets = dir.path().join("x.offsets");
    let cases = [
        (
            json!({"connector.class": "http-sink", "topic": "t", "sink": {"urls": []}}),
            "http://127.0.0.1:1",
            "x",
        ),
        (
            json!({"connector.class": "http-sink", "topic": "t", "sink": {"urls": ["http://127.0.0.1:9"]}, "delivery": {"max_attempts": 0}}),
            "http://127.0.0.1:1",
            "x",
        ),
        (
            json!({"connector.class": "file-sink", "topic": "t"}),
            "http://127.0.0.1:1",
            "x",
        ),
        (
            json!({"connector.class": "file-sink", "topic": "t", "path": "/x"}),
            "127.0.0.1:1",
            "x",
        ),
        (
            json!({"connector.class": "file-sink", "topic": "t", "path": "/x"}),
            "http://127.0.0.1:1",
            "a/b",
        ),
    ];
    for (value, url, name) in cases {
        let error = standalone::run(
            name,
            config(value.clone()),
            url,
            &offsets,
            CancellationToken::new(),
        )
        .await
        .expect_err(&value.to_string());
        assert!(error.is_config(), "{value}: {error}");
    }
    assert!(!offsets.exists(), "no offsets file was made");
}

/// The HTTP sink on the delivery engine in the connector's process: an intermittent receiver
/// still gets every event (the engine retries), a 400 dead-letters its event, and a restart
/// delivers only what came after the committed offset.
#[tokio::test]
async fn a_standalone_http_sink_delivers_through_the_engine_and_resumes() {
    use trellis_test_support::{Receiver, Reply};
    let far = Far::start().await;
    let receiver = Receiver::start(|index, request| {
        if request.header("ce-id") == Some("bad") {
            Reply::Status(400)
        } else if index % 3 == 0 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    })
    .await
    .expect("receiver");
    let dir = tempfile::tempdir().expect("temp dir");
    let offsets = dir.path().join("hook.offsets");
    let sink = config(json!({
        "connector.class": "http-sink",
        "topic": "orders",
        "sink": {"urls": [receiver.url("/hook")]},
        "delivery": {"max_attempts": 10, "backoff": {"initial_ms": 1, "max_ms": 5}, "retry_after_max_ms": 0},
        "errors.tolerance": "all",
    }));
    let delivered = |receiver: &Receiver| -> Vec<String> {
        // The 200 answers, by event id, in the order they came.
        receiver
            .requests()
            .iter()
            .enumerate()
            .filter(|(index, request)| request.header("ce-id") != Some("bad") && index % 3 != 0)
            .filter_map(|(_, request)| request.header("ce-id").map(str::to_owned))
            .collect()
    };
    far.publish("orders", &["a", "bad", "b", "c"]).await;
    let (stop, task) = spawn("hook", sink.clone(), &far, &offsets);
    until("a, b and c delivered and bad dead-lettered", async || {
        let mut got = delivered(&receiver);
        got.sort();
        got == ["a", "b", "c"] && topic_events(&far, "hook.dlq").await.len() == 1
    })
    .await;
    stop.cancel();
    task.await.expect("task").expect("a clean stop");
    let letters = topic_events(&far, "hook.dlq").await;
    assert_eq!(letters[0]["id"], "bad");
    assert_eq!(letters[0]["trellisfailure"], "non_retriable");
    let request = receiver
        .requests()
        .into_iter()
        .find(|request| request.header("ce-id") == Some("a"))
        .expect("a request for a");
    assert_eq!(request.header("ce-source"), Some("/far"));
    assert_eq!(
        request.header("ce-connectoffset"),
        None,
        "positions stay inside"
    );

    far.publish("orders", &["d"]).await;
    let before = receiver.n_requests();
    let (stop, task) = spawn("hook", sink, &far, &offsets);
    until("d delivered", async || {
        delivered(&receiver).contains(&"d".to_owned())
    })
    .await;
    stop.cancel();
    task.await.expect("task").expect("a clean stop");
    let again: Vec<Option<String>> = receiver.requests()[before..]
        .iter()
        .map(|request| request.header("ce-id").map(str::to_owned))
        .collect();
    assert!(
        again.iter().all(|id| id.as_deref() == Some("d")),
        "after the restart only d is delivered: {again:?}"
    );
    far.stop().await;
}
