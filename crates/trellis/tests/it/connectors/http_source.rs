//! The HTTP source inside the runtime, as GitHub would call it: a delivery with a good
//! signature is answered `200` once its event is in the topic; a bad or missing signature is
//! `401` and publishes nothing; a full queue answers `503` with `Retry-After`.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use rstest::rstest;
use rstest_reuse::apply;
use serde_json::json;
use trellis_test_support::{Backend, NatsServer, TrellisProcess, backends};

use super::{Api, event_data, free_port};
use crate::{bin, start_on};

const SECRET: &str = "It's a Secret to Everybody";

/// `X-Hub-Signature-256` as GitHub computes it: `sha256=` and the hex HMAC-SHA256 of the body.
fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.expect("request")
}

#[test]
fn the_signature_is_githubs() {
    // GitHub's documented example ("Validating webhook deliveries").
    assert_eq!(
        signature(SECRET, b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn github_deliveries_are_verified(#[case] backend: Backend) {
    let Some(node) = start_on(backend) else {
        return;
    };
    let api = Api::new(node.base_url());
    let port = free_port();
    api.put_topic("github").await;
    api.create_ok(
        "gh",
        json!({
            "connector.class": "http-source", "topic": "github", "format": "github",
            "listen": format!("127.0.0.1:{port}"), "path": "/hooks/github", "secret": SECRET,
        }),
    )
    .await;
    api.wait_for_state("gh", "RUNNING").await.expect("running");
    let url = format!("http://127.0.0.1:{port}/hooks/github");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    let body = br#"{"ref":"refs/heads/main","commits":[]}"#;
    let good = deliver(&client, &url, "d-1", body, Some(&signature(SECRET, body))).await;
    assert_eq!(good.status(), 200);
    // 200 means published: the event is in the topic now, not eventually.
    let events = api.topic_events("github").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], "d-1");
    assert_eq!(events[0]["type"], "com.github.push");
    let data: serde_json::Value =
        serde_json::from_slice(&event_data(&events[0])).expect("JSON data");
    let sent: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
    assert_eq!(data, sent);

    let bad = deliver(&client, &url, "d-2", body, Some(&signature("guess", body))).await;
    assert_eq!(bad.status(), 401);
    let bad_body: serde_json::Value = bad.json().await.expect("JSON error");
    assert!(bad_body["error"].is_string(), "{bad_body}");
    let tampered = deliver(
        &client,
        &url,
        "d-3",
        br#"{"ref":"refs/heads/evil","commits":[]}"#,
        Some(&signature(SECRET, body)),
    )
    .await;
    assert_eq!(tampered.status(), 401);
    let missing = deliver(&client, &url, "d-4", body, None).await;
    assert_eq!(missing.status(), 401);
    let missing_body: serde_json::Value = missing.json().await.expect("JSON error");
    assert!(missing_body["error"].is_string(), "{missing_body}");

    assert_eq!(
        api.topic_events("github").await.len(),
        1,
        "refused deliveries publish nothing"
    );
}

/// With `queue_capacity` 1 and the event store away (nats-server stopped), the worker holds
/// the record it polled for a retry and polls no more, so the queue fills: a request beyond it
/// is answered `503 queue_full` with `Retry-After` at once. Once the store is back, the held and
/// the queued requests are published and answered `200`. (Pausing would not do: a paused
/// source is stopped, its listener closed.) Needs nats-server; skipped without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_with_retry_after() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let process =
        TrellisProcess::start(bin(), &dir.path().join("data"), &["--storage", &nats.url()])
            .expect("trellis starts on JetStream");
    let api = Api::new(process.base_url());
    let port = free_port();
    api.put_topic("hooks").await;
    api.create_ok(
        "hooks",
        json!({
            "connector.class": "http-source", "topic": "hooks", "format": "json",
            "listen": format!("127.0.0.1:{port}"), "queue_capacity": 1,
        }),
    )
    .await;
    api.wait_for_state("hooks", "RUNNING")
        .await
        .expect("running");
    let url = format!("http://127.0.0.1:{port}/");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let first = client
        .post(&url)
        .json(&json!({"n": 0}))
        .send()
        .await
        .expect("request");
    assert_eq!(first.status(), 200, "the source is up");

    // Stopping waits for the process, briefly.
    tokio::task::block_in_place(|| nats.stop());
    let unready = crate::eventually(async || api.get("/readyz").await.status == 503).await;
    assert!(unready, "the runtime sees its event store away");

    // Requests go one at a time and wait for their answer in the background: the first is
    // held by the worker, the next fills the queue, and one after that is refused.
    let mut waiting = Vec::new();
    let mut refused = None;
    for n in 1..=20 {
        let mut request = tokio::spawn(client.post(&url).json(&json!({"n": n})).send());
        match tokio::time::timeout(Duration::from_millis(500), &mut request).await {
            Ok(answer) => {
                refused = Some(answer.expect("task").expect("request"));
                break;
            }
            Err(_still_waiting) => waiting.push(request),
        }
    }
    let refused = refused.expect("a request beyond the queue is refused");
    assert_eq!(refused.status(), 503);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|seconds| seconds >= 1),
        "{retry_after:?}"
    );
    let body: serde_json::Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"], "queue_full", "{body}");
    assert!(!waiting.is_empty(), "the held and queued requests wait");

    tokio::task::block_in_place(|| nats.restart());
    // The ones that waited are published now. (One refused more slowly than the loop looked
    // is a 503 as well.)
    let mut published = 0;
    for request in waiting.drain(..) {
        let answer = request.await.expect("task").expect("request");
        match answer.status().as_u16() {
            200 => published += 1,
            503 => assert!(answer.headers().contains_key("retry-after")),
            other => panic!("a waiting request answered {other}"),
        }
    }
    assert!(
        published >= 1,
        "the held request is published once the store is back"
    );
    assert_eq!(
        api.topic_events("hooks").await.len(),
        1 + published,
        "every 200 is an event in the topic, every 503 none"
    );
    drop(process);
    drop(nats);
}
