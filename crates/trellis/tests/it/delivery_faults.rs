//! Delivery under faults, end to end: the runtime killed with SIGKILL mid-delivery, and secrets
//! kept out of everything the runtime logs, on every backend.

use std::collections::BTreeMap;
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_test_support::{Backend, Receiver, Reply, backends};

use crate::{publish, start_on, start_with_args_on, wait_until};

const EVENTS: usize = 400;
const KILLS: usize = 3;

async fn committed_offset(base: &str, name: &str) -> Option<u64> {
    let status: Value = reqwest::get(format!("{base}/v1/subscriptions/{name}"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["status"]["committed_offset"].as_u64()
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_delivery_loses_no_record(#[case] backend: Backend) {
    // A slightly slow receiver keeps records in flight when the kill lands.
    let receiver = Receiver::start(|_, _| Reply::Sleep(Duration::from_millis(2), 200))
        .await
        .expect("receiver starts");
    let Some(mut process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({
            "name": "s", "topic": "t", "start": "earliest",
            "sink": {"urls": [receiver.url("/")]},
            "delivery": {"concurrency": 4},
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    for n in 0..EVENTS {
        let response = publish(&client, &base, "t", &format!("e{n}"), n.to_string())
            .await
            .expect("publish");
        assert_eq!(response.status(), 202);
    }

    for round in 1..=KILLS {
        // Kill once a further slice of the events has reached the receiver.
        let target = round * EVENTS / (KILLS + 1);
        assert!(
            wait_until(Duration::from_secs(20), async || receiver.n_requests()
                >= target)
            .await,
            "round {round}: delivery reached {} of {target}",
            receiver.n_requests()
        );
        process.kill();
        process.restart();
    }
    let base = process.base_url().to_owned();
    assert!(
        wait_until(Duration::from_secs(30), async || {
            committed_offset(&base, "s").await == Some(EVENTS as u64)
        })
        .await,
        "every record ends after the restarts"
    );

    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    for request in receiver.requests() {
        let id = request
            .header("ce-id")
            .expect("every request carries ce-id");
        *received.entry(id.to_owned()).or_default() += 1;
    }
    let missing: Vec<_> = (0..EVENTS)
        .map(|n| format!("e{n}"))
        .filter(|id| !received.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "lost across SIGKILLs: {missing:?}");
    let redelivered: usize = received.values().map(|count| count - 1).sum();
    eprintln!("{redelivered} redeliveries across {KILLS} kills (at-least-once)");
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs(#[case] backend: Backend) {
    const SECRET: &str = "signing-key-0123456789";
    const BEARER: &str = "bearer-token-abcdef";
    const QUERY_TOKEN: &str = "query-token-987654";
    // Credentials under names that do not say so: only their values tell.
    const JWT: &str = "jwt-value-eyJhbGciOi";
    const SESSION: &str = "session-value-4711";
    const PASS: &str = "pass-value-0815";
    let receiver = Receiver::start(|index, _| Reply::Status(if index < 2 { 503 } else { 200 }))
        .await
        .expect("receiver starts");
    let Some(process) =
        start_with_args_on(backend, &["--log-level", "debug", "--log-format", "json"])
    else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    // Credentials in a URL's user-info would not be sent (no client turns them into a header
    // silently), so they are refused, without echoing them.
    let refused = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({"name": "u", "topic": "t", "sink": {"urls": [format!("http://user:{SECRET}@{}/", receiver.addr())]}}))
        .send()
        .await
        .expect("create");
    assert_eq!(refused.status(), 400);
    let refused = refused.text().await.expect("body");
    assert!(
        refused.contains("sink.urls[0]") && !refused.contains(SECRET),
        "{refused}"
    );
    let url = format!("http://{}/hook?access_token={QUERY_TOKEN}", receiver.addr());
    let created = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({
            "name": "s", "topic": "t",
            "sink": {"urls": [url], "secret": SECRET, "headers": {
                "Authorization": format!("Bearer {BEARER}"),
                "X-JWT": JWT, "X-Session": SESSION, "X-Pass": PASS,
            }},
            "delivery": {"backoff": {"initial_ms": 10, "max_ms": 20}},
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let shown = created.text().await.expect("body");
    publish(&client, &base, "t", "e1", "x".to_owned())
        .await
        .expect("publish");
    assert!(
        wait_until(Duration::from_secs(10), async || receiver.n_requests() == 3).await,
        "two 503s, then delivered"
    );
    let request = &receiver.requests()[2];
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str()),
        "the receiver does get the credentials"
    );
    assert_eq!(request.header("x-session"), Some(SESSION));
    assert_eq!(request.header("x-jwt"), Some(JWT));
    let status = reqwest::get(format!("{base}/v1/subscriptions/s"))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");

    // Log lines reach stderr a moment after they are written.
    assert!(
        wait_until(Duration::from_secs(20), async || process
            .stderr()
            .contains("Attempt ended."))
        .await,
        "debug logs were captured"
    );
    let logs = process.stderr();
    let listed = reqwest::get(format!("{base}/v1/subscriptions"))
        .await
        .expect("list")
        .text()
        .await
        .expect("body");
    assert!(!listed.contains(SESSION), "{listed}");
    for secret in [SECRET, BEARER, QUERY_TOKEN, JWT, SESSION, PASS] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        assert!(
            !shown.contains(secret),
            "{secret} leaked into the create answer"
        );
        assert!(
            !status.contains(secret),
            "{secret} leaked into the status API"
        );
    }
}
