//! `https` webhooks end to end: a receiver whose certificate is not trusted is named as such in
//! the log and the dead letter, and trusting its CA through `[delivery] webhook_ca_file` lets
//! the same delivery through.

use serde_json::{Value, json};

use rstest::rstest;
use rstest_reuse::apply;
use trellis_test_support::{Backend, HttpsReceiver, backends};

use crate::{eventually, publish, start_on, start_with_config_on};

/// The `ce-id` of each request that got past the TLS handshake.
fn ids(receiver: &HttpsReceiver) -> Vec<String> {
    receiver.requests().into_iter().map(|(_, id)| id).collect()
}

/// Creates subscription `name` on topic `t` to `url`, with a budget that dead-letters in
/// moments.
async fn subscribe(client: &reqwest::Client, base: &str, name: &str, url: String) {
    let created = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({
            "name": name, "topic": "t", "sink": {"urls": [url]},
            "delivery": {
                "max_attempts": 2,
                "backoff": {"initial_ms": 10, "max_ms": 20},
                "request_timeout_ms": 2000,
            },
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
}

async fn dead_letters(client: &reqwest::Client, base: &str, name: &str) -> Vec<Value> {
    let Ok(response) = client
        .get(format!("{base}/v1/topics/{name}.dlq/events?from=0"))
        .send()
        .await
    else {
        return Vec::new();
    };
    if !response.status().is_success() {
        return Vec::new();
    }
    response
        .json::<Vec<Value>>()
        .await
        .expect("dead letters as JSON")
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_https_certificate_is_named_in_the_log_and_the_dead_letter(
    #[case] backend: Backend,
) {
    let receiver = HttpsReceiver::start(&["localhost", "127.0.0.1"]).await;
    let Some(process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    subscribe(&client, &base, "hooks", receiver.url("127.0.0.1")).await;
    let published = publish(&client, &base, "t", "tls-1", "x".to_owned())
        .await
        .expect("publish");
    assert_eq!(published.status(), 202);

    let mut letters = Vec::new();
    assert!(
        eventually(async || {
            letters = dead_letters(&client, &base, "hooks").await;
            !letters.is_empty()
        })
        .await,
        "the event is dead-lettered; log: {}",
        process.stderr()
    );
    let letter = &letters[0];
    assert_eq!(letter["id"], "tls-1");
    assert_eq!(letter["trellisfailure"], "retries_exhausted");
    let reason = letter["trellisreason"].as_str().expect("trellisreason");
    assert!(
        reason.contains("the receiver's TLS certificate is not accepted: invalid peer certificate"),
        "{reason}"
    );
    assert!(!reason.contains("cannot connect"), "{reason}");
    assert!(ids(&receiver).is_empty(), "no request got past TLS");

    // The operator reading the log learns the same for that delivery. Log lines reach stderr a
    // moment after they are written, which may be after the dead letter is readable.
    let failed_line = |log: &str| {
        log.lines()
            .any(|line| line.contains("Delivery failed.") && line.contains("tls-1"))
    };
    eventually(async || failed_line(&process.stderr())).await;
    let log = process.stderr();
    let line = log
        .lines()
        .find(|line| line.contains("Delivery failed.") && line.contains("tls-1"))
        .unwrap_or_else(|| panic!("a log line for the failed delivery: {log}"));
    assert!(
        line.contains("the receiver's TLS certificate is not accepted"),
        "{line}"
    );
    assert!(!line.contains("cannot connect"), "{line}");
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_ca_file_lets_the_https_delivery_through(#[case] backend: Backend) {
    let receiver = HttpsReceiver::start(&["localhost", "127.0.0.1"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("receiver-ca.pem");
    std::fs::write(&ca_file, &receiver.ca_pem).expect("write CA file");
    let config = format!("[delivery]\nwebhook_ca_file = {:?}\n", ca_file);
    let Some(process) = start_with_config_on(backend, dir, &config) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    subscribe(&client, &base, "hooks", receiver.url("127.0.0.1")).await;
    let published = publish(&client, &base, "t", "tls-1", "x".to_owned())
        .await
        .expect("publish");
    assert_eq!(published.status(), 202);

    assert!(
        eventually(async || !ids(&receiver).is_empty()).await,
        "the receiver gets the event; log: {}",
        process.stderr()
    );
    assert_eq!(ids(&receiver), ["tls-1"]);
    assert!(dead_letters(&client, &base, "hooks").await.is_empty());
}
