//! The HTTP source against a real HTTP client on loopback: each answer waits on its record's
//! callback, GitHub signatures are checked, a full queue and an oversized body are refused.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use trellis_connect::{
    ConnectRecord, ConnectorConfig, ConnectorError, SendError, Source, SourceContext,
};
use trellis_connectors::http_source::{HttpSource, github_signature};

const SECRET: &str = "It's a Secret to Everybody";
const NO_HEADERS: &[(&str, &str)] = &[];

async fn started(config: ConnectorConfig) -> (HttpSource, String) {
    let mut source = HttpSource::new();
    source
        .start(SourceContext::new("hooks", config, BTreeMap::new()))
        .await
        .expect("the source starts");
    let addr = source.local_addr().expect("a bound address");
    (source, format!("http://{addr}/hooks"))
}

fn config(format: &str) -> ConnectorConfig {
    ConnectorConfig::new()
        .with("listen", "127.0.0.1:0")
        .with("path", "/hooks")
        .with("format", format)
        .with("secret", SECRET)
}

/// Polls until at least `count` records have come.
async fn poll_records(source: &mut HttpSource, count: usize) -> Vec<ConnectRecord> {
    let mut records = Vec::new();
    while records.len() < count {
        records.extend(source.poll().await.expect("poll"));
    }
    records
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

fn post<V: AsRef<str>>(
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, V)],
) -> JoinHandle<Answer> {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value.as_ref());
    }
    tokio::spawn(async move {
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            body,
        }
    })
}

#[tokio::test]
async fn a_json_request_is_answered_200_once_its_record_is_published() {
    let (mut source, url) = started(config("json")).await;
    let answer = post(
        &url,
        r#"{"order": 7}"#,
        &[("content-type", "application/json")],
    );
    let mut records = poll_records(&mut source, 1).await;
    let record = records.remove(0);
    assert_eq!(&record.data[..], br#"{"order": 7}"#);
    assert_eq!(record.position.partition.as_str(), "127.0.0.1:0/hooks");
    assert_eq!(record.position.offset.0, 1);
    assert!(record.has_callback(), "the request waits on the callback");
    let id = record.id.clone();
    record.succeed(Some("orders".to_owned()));
    let answer = answer.await.expect("the client task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({ "ids": [id] }));
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn a_failed_record_answers_an_error_status() {
    let (mut source, url) = started(config("json")).await;
    let first = post(&url, "[1]", NO_HEADERS);
    let record = poll_records(&mut source, 1).await.remove(0);
    record.fail(
        Some("orders".to_owned()),
        SendError::Publish("the log is full".to_owned()),
    );
    let first = first.await.expect("the client task");
    assert_eq!(first.status, StatusCode::BAD_GATEWAY);
    assert_eq!(first.body["error"], "publish_failed");
    assert!(
        first.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the log is full")),
        "{}",
        first.body
    );

    // A record the worker gives up on (it stops) is not published: the sender should retry.
    let second = post(&url, "[2]", &[("idempotency-key", "order-2")]);
    let record = poll_records(&mut source, 1).await.remove(0);
    assert_eq!(record.id, "order-2");
    assert_eq!(record.position.offset.0, 2);
    record.fail(None, SendError::Cancelled);
    let second = second.await.expect("the client task");
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.retry_after.as_deref(), Some("1"));
    assert_eq!(second.body["error"], "not_published");
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn stop_answers_queued_requests_503() {
    let (mut source, url) = started(config("json").with("queue_capacity", 1)).await;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..2 {
        let request = post(&url, format!("[{n}]"), NO_HEADERS);
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send(request.await.expect("the client task"));
        });
    }
    // One request is refused for the full queue, so the other one is queued.
    let refused = answers.recv().await.expect("an answer");
    assert_eq!(refused.body["error"], "queue_full");
    source.stop().await.expect("stop");
    let cancelled = answers.recv().await.expect("an answer");
    assert_eq!(cancelled.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(cancelled.retry_after.as_deref(), Some("1"));
    assert_eq!(cancelled.body["error"], "not_published");
    assert!(
        source.poll().await.is_err(),
        "a stopped source does not poll"
    );
}

#[tokio::test]
async fn a_non_json_body_is_refused_with_400() {
    let (mut source, url) = started(config("json")).await;
    let answer = post(&url, "not json", NO_HEADERS)
        .await
        .expect("the client task");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_json");
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn github_deliveries_need_a_good_signature() {
    let (mut source, url) = started(config("github")).await;
    let body = r#"{"action":"opened","number":1}"#;
    let good = github_signature(SECRET.as_bytes(), body.as_bytes());
    let bad = github_signature(b"a guess", body.as_bytes());
    let headers = |signature: Option<&str>| {
        let mut headers = vec![
            ("x-github-event", "pull_request".to_owned()),
            (
                "x-github-delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
            ),
            ("content-type", "application/json".to_owned()),
        ];
        if let Some(signature) = signature {
            headers.push(("x-hub-signature-256", signature.to_owned()));
        }
        headers
    };

    let missing = post(&url, body, &headers(None)).await.expect("client");
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body["error"], "missing_signature");

    let refused = post(&url, body, &headers(Some(&bad)))
        .await
        .expect("client");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["error"], "bad_signature");

    let tampered = post(
        &url,
        r#"{"action":"closed","number":1}"#,
        &headers(Some(&good)),
    )
    .await
    .expect("client");
    assert_eq!(tampered.status, StatusCode::UNAUTHORIZED);

    let accepted = post(&url, body, &headers(Some(&good)));
    let record = poll_records(&mut source, 1).await.remove(0);
    assert_eq!(record.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(record.extension("type"), Some("com.github.pull_request"));
    assert_eq!(record.extension("githubevent"), Some("pull_request"));
    assert_eq!(&record.data[..], body.as_bytes());
    record.succeed(None);
    let accepted = accepted.await.expect("client");
    assert_eq!(accepted.status, StatusCode::OK);
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_at_once() {
    let (mut source, url) = started(config("json").with("queue_capacity", 1)).await;
    // Two requests race for one place: the loser is answered at once, the winner waits.
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..2 {
        let request = post(&url, format!("[{n}]"), NO_HEADERS);
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send(request.await.expect("the client task"));
        });
    }
    let refused = answers.recv().await.expect("an answer");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert_eq!(refused.body["error"], "queue_full");
    let record = poll_records(&mut source, 1).await.remove(0);
    record.succeed(None);
    let accepted = answers.recv().await.expect("an answer");
    assert_eq!(accepted.status, StatusCode::OK);
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let (mut source, url) = started(config("json").with("max_body_bytes", 16)).await;
    let body = format!("[{}]", "1,".repeat(50) + "1");
    let answer = post(&url, body, NO_HEADERS).await.expect("the client task");
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body["error"], "body_too_large");
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn a_cloudevents_batch_becomes_one_record_per_event() {
    let (mut source, url) = started(config("cloudevents")).await;
    let batch = json!([
        {"specversion": "1.0", "id": "e1", "source": "/shop", "type": "order.created", "data": {"n": 1}},
        {"specversion": "1.0", "id": "e2", "source": "/shop", "type": "order.created", "data": {"n": 2}},
    ]);
    let answer = post(
        &url,
        batch.to_string(),
        &[("content-type", "application/cloudevents-batch+json")],
    );
    let records = poll_records(&mut source, 2).await;
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert_eq!(records[0].extension("type"), Some("order.created"));
    assert_eq!(
        records
            .iter()
            .map(|r| r.position.offset.0)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    for record in records {
        record.succeed(None);
    }
    let answer = answer.await.expect("the client task");
    assert_eq!(answer.status, StatusCode::OK);

    let binary = post(
        &url,
        "hello",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "/shop"),
            ("ce-type", "note"),
            ("content-type", "text/plain"),
        ],
    );
    let record = poll_records(&mut source, 1).await.remove(0);
    assert_eq!(record.id, "b1");
    assert_eq!(&record.data[..], b"hello");
    record.succeed(None);
    assert_eq!(binary.await.expect("client").status, StatusCode::OK);

    let invalid = post(
        &url,
        r#"{"specversion":"1.0"}"#,
        &[("content-type", "application/cloudevents+json")],
    )
    .await
    .expect("client");
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.body["error"], "invalid_event");
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let cases = [
        (ConnectorConfig::new(), "listen"),
        (ConnectorConfig::new().with("listen", "localhost"), "listen"),
        (config("json").with("path", "hooks"), "path"),
        (config("xml"), "format"),
        (
            ConnectorConfig::new()
                .with("listen", "127.0.0.1:0")
                .with("format", "github"),
            "secret",
        ),
        (config("json").with("queue_capacity", 0), "queue_capacity"),
        (
            config("json").with("max_body_bytes", "big"),
            "max_body_bytes",
        ),
    ];
    for (config, key) in cases {
        let mut source = HttpSource::new();
        match source
            .start(SourceContext::new("hooks", config.clone(), BTreeMap::new()))
            .await
        {
            Err(ConnectorError::Config(error)) => assert_eq!(error.key, key, "{error}"),
            other => panic!("{config:?}: expected a config error on `{key}`, got {other:?}"),
        }
    }
    // The secret is redacted wherever the config is shown.
    assert!(!config("github").to_string().contains(SECRET));
}
