//! Subscriptions end to end: `trellis serve` as a child process delivering to receivers on
//! loopback, checked through the API a user would use, on every backend (but the refusal of
//! denied addresses, which ends in the request's validation).

use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_test_support::{Backend, DENIED_ADDRESS_SPELLINGS, Receiver, Reply, backends};

use crate::{Node, eventually, publish, start_on, start_with_config};

/// [`crate::start_on`] and the server's base URL; keep the node alive for the test's length.
fn start(backend: Backend) -> Option<(Node, String)> {
    let node = start_on(backend)?;
    let base = node.base_url().to_owned();
    Some((node, base))
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn create(base: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/subscriptions"))
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

/// Fast retries, so failure scenarios end within a test's patience.
fn fast_delivery() -> Value {
    json!({
        "max_attempts": 3,
        "backoff": {"initial_ms": 10, "max_ms": 50},
        "request_timeout_ms": 1000,
    })
}

async fn status(base: &str, name: &str) -> Value {
    get_json(&format!("{base}/v1/subscriptions/{name}")).await["status"].clone()
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn published_events_reach_the_webhook_and_the_offset_is_committed(#[case] backend: Backend) {
    let receiver = Receiver::answering(200).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };

    let created = create(
        &base,
        json!({"name": "audit", "topic": "orders", "sink": {"urls": [receiver.url("/hook")]}}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("test step");
    assert_eq!(created["dead_letter_topic"], "audit.dlq");
    for n in 0..3 {
        let response = publish(
            &client(),
            &base,
            "orders",
            &format!("evt-{n}"),
            format!("order {n}"),
        )
        .await
        .expect("test step");
        assert_eq!(response.status(), 202);
    }

    assert!(eventually(async || receiver.n_requests() == 3).await);
    // Records are delivered concurrently: in any order, each once.
    let mut received: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| {
            (
                r.header("ce-id").expect("test step").to_owned(),
                r.body.clone(),
            )
        })
        .collect();
    received.sort();
    assert_eq!(
        received,
        [
            ("evt-0".to_owned(), b"order 0".to_vec()),
            ("evt-1".to_owned(), b"order 1".to_vec()),
            ("evt-2".to_owned(), b"order 2".to_vec()),
        ]
    );
    assert!(eventually(async || status(&base, "audit").await["committed_offset"] == 3).await);
    let status = status(&base, "audit").await;
    assert_eq!(status["delivered"], 3);
    assert_eq!(status["lag"], 0);
    assert_eq!(status["urls"][0]["circuit"], "closed");

    let scrape = || async {
        client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("test step")
            .text()
            .await
            .expect("test step")
    };
    assert!(
        eventually(async || scrape()
            .await
            .contains("trellis_subscription_lag{subscription=\"audit\"} 0"))
        .await,
        "the lag gauge reaches 0"
    );
    let metrics = scrape().await;
    let delivered = metrics
        .lines()
        .find(|line| {
            line.starts_with("trellis_delivery_records_total")
                && line.contains("subscription=\"audit\"")
                && line.contains("result=\"delivered\"")
        })
        .expect("a delivered counter");
    assert!(delivered.ends_with(" 3"), "{delivered}");
    // Keep-alive shows: the connections Trellis counts are the ones the receiver accepted.
    let opened = metrics
        .lines()
        .find(|line| {
            line.starts_with("trellis_delivery_connections_opened_total")
                && line.contains("subscription=\"audit\"")
        })
        .expect("a connections counter");
    assert!(
        opened.ends_with(&format!(" {}", receiver.n_connections())),
        "{opened}"
    );
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn two_subscriptions_on_one_topic_each_get_every_event(#[case] backend: Backend) {
    let first = Receiver::answering(200).await.expect("test step");
    let second = Receiver::answering(204).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };
    for (name, receiver) in [("one", &first), ("two", &second)] {
        let response = create(
            &base,
            json!({"name": name, "topic": "t", "sink": {"urls": [receiver.url("/")]}}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    for n in 0..5 {
        publish(&client(), &base, "t", &format!("e{n}"), "x".to_owned())
            .await
            .expect("test step");
    }
    assert!(eventually(async || first.n_requests() == 5 && second.n_requests() == 5).await);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_fails_for_good_goes_to_the_dead_letter_topic(#[case] backend: Backend) {
    let receiver = Receiver::answering(400).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };
    let response = create(&base, json!({"name": "billing", "topic": "invoices", "sink": {"urls": [receiver.url("/")]}, "delivery": fast_delivery()})).await;
    assert_eq!(response.status(), 201);
    publish(&client(), &base, "invoices", "inv-1", "due".to_owned())
        .await
        .expect("test step");

    assert!(eventually(async || status(&base, "billing").await["committed_offset"] == 1).await);
    assert_eq!(receiver.n_requests(), 1, "a 400 is not retried");
    let letters = get_json(&format!("{base}/v1/topics/billing.dlq/events?from=0")).await;
    let letter = &letters[0];
    assert_eq!(letter["id"], "inv-1");
    assert_eq!(letter["data"], "due");
    assert_eq!(letter["trellissubscription"], "billing");
    assert_eq!(letter["trellisfailure"], "non_retriable");
    assert_eq!(letter["trellisstatus"], 400);
    assert_eq!(letter["trellisattempts"], 1);
    assert_eq!(letter["trellisoffset"], "0");
    assert_eq!(status(&base, "billing").await["dead_lettered"], 1);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_and_their_offsets_survive_a_restart(#[case] backend: Backend) {
    let receiver = Receiver::answering(200).await.expect("test step");
    let Some(mut process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    create(
        &base,
        json!({"name": "audit", "topic": "orders", "sink": {"urls": [receiver.url("/")]}}),
    )
    .await;
    publish(&client(), &base, "orders", "before", "1".to_owned())
        .await
        .expect("test step");
    assert!(eventually(async || status(&base, "audit").await["committed_offset"] == 1).await);
    let exit = process.terminate().expect("test step");
    assert!(exit.success());

    process.restart();
    let base = process.base_url().to_owned();
    let listed = get_json(&format!("{base}/v1/subscriptions")).await;
    assert_eq!(listed["subscriptions"][0]["name"], "audit");
    publish(&client(), &base, "orders", "after", "2".to_owned())
        .await
        .expect("test step");
    assert!(eventually(async || receiver.n_requests() == 2).await);
    let ids: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| r.header("ce-id").expect("test step").to_owned())
        .collect();
    assert_eq!(
        ids,
        ["before", "after"],
        "nothing delivered twice after a clean restart"
    );
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_the_field_and_duplicates_conflict(#[case] backend: Backend) {
    let Some((_node, base)) = start(backend) else {
        return;
    };
    let sink = json!({"urls": ["http://127.0.0.1:9/hook"]});

    let response = create(&base, json!({"name": "a", "topic": "t", "sink": sink, "delivery": {"backoff": {"multiplier": 0.5}}})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("test step");
    assert_eq!(body["error"], "invalid_subscription");
    assert_eq!(body["field"], "delivery.backoff.multiplier");

    let response = create(
        &base,
        json!({"name": "a", "topic": "t", "sink": {"urls": ["http://169.254.169.254/"]}}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("test step");
    assert!(
        body["message"]
            .as_str()
            .expect("test step")
            .starts_with("sink.urls[0]"),
        "{body}"
    );

    assert_eq!(
        create(&base, json!({"name": "a", "topic": "t", "sink": sink}))
            .await
            .status(),
        201
    );
    let response = create(&base, json!({"name": "a", "topic": "t", "sink": sink})).await;
    assert_eq!(response.status(), 409);
    let response = client()
        .get(format!("{base}/v1/subscriptions/nope"))
        .send()
        .await
        .expect("test step");
    assert_eq!(response.status(), 404);
    let response = client()
        .delete(format!("{base}/v1/subscriptions/a"))
        .send()
        .await
        .expect("test step");
    assert_eq!(response.status(), 204);
    let response = client()
        .get(format!("{base}/v1/subscriptions/a"))
        .send()
        .await
        .expect("test step");
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_spelling_of_a_denied_address_is_refused_at_creation() {
    // Loopback denied too, as an operator exposing Trellis to tenants would configure it.
    let dir = tempfile::tempdir().expect("temp dir");
    let process = start_with_config(
        dir.path(),
        "[delivery]\nwebhook_deny = [\"169.254.0.0/16\", \"0.0.0.0/8\", \"127.0.0.0/8\", \"::1/128\"]\n",
    );
    let base = process.base_url();
    for &url in DENIED_ADDRESS_SPELLINGS {
        let response = create(
            base,
            json!({"name": "a", "topic": "t", "sink": {"urls": [url]}}),
        )
        .await;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.expect("test step");
        let message = body["message"].as_str().expect("a message");
        assert!(
            message.starts_with("sink.urls[0]: address ") && message.contains("denied range"),
            "{url}: {body}"
        );
    }
    let listed = get_json(&format!("{base}/v1/subscriptions")).await;
    assert_eq!(listed["subscriptions"], json!([]), "nothing was stored");
    // A public name is still accepted: it is checked when connecting.
    let response = create(
        base,
        json!({"name": "ok", "topic": "t", "sink": {"urls": ["http://hooks.example.com/in"]}}),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_subscription_holds_events_until_resumed(#[case] backend: Backend) {
    let receiver = Receiver::answering(200).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };
    create(
        &base,
        json!({"name": "s", "topic": "t", "sink": {"urls": [receiver.url("/")]}}),
    )
    .await;
    let paused = client()
        .post(format!("{base}/v1/subscriptions/s/pause"))
        .send()
        .await
        .expect("test step");
    assert_eq!(paused.status(), 200);
    publish(&client(), &base, "t", "held", "x".to_owned())
        .await
        .expect("test step");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.n_requests(), 0);
    assert_eq!(status(&base, "s").await["lag"], 1);

    client()
        .post(format!("{base}/v1/subscriptions/s/resume"))
        .send()
        .await
        .expect("test step");
    assert!(eventually(async || receiver.n_requests() == 1).await);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_recovers_without_losing_records(#[case] backend: Backend) {
    let receiver = Receiver::start(|index, _| Reply::Status(if index < 4 { 503 } else { 200 }))
        .await
        .expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };
    let delivery = json!({"max_attempts": 10, "backoff": {"initial_ms": 10, "max_ms": 50}});
    create(&base, json!({"name": "s", "topic": "t", "sink": {"urls": [receiver.url("/")]}, "delivery": delivery})).await;
    for n in 0..10 {
        publish(&client(), &base, "t", &format!("e{n}"), "x".to_owned())
            .await
            .expect("test step");
    }
    assert!(eventually(async || status(&base, "s").await["committed_offset"] == 10).await);
    let status = status(&base, "s").await;
    assert_eq!(status["delivered"], 10);
    assert_eq!(status["dead_lettered"], 0);
    let mut ids: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| r.header("ce-id").expect("test step").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_redrive_delivers_dead_letters_again(#[case] backend: Backend) {
    let receiver = Receiver::answering(400).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };
    create(
        &base,
        json!({"name": "s", "topic": "t", "sink": {"urls": [receiver.url("/")]}}),
    )
    .await;
    publish(&client(), &base, "t", "e1", "x".to_owned())
        .await
        .expect("test step");
    assert!(eventually(async || status(&base, "s").await["dead_lettered"] == 1).await);

    receiver.set_script(|_, _| Reply::Status(200));
    let redrive = client()
        .post(format!("{base}/v1/subscriptions/s/redrive"))
        .send()
        .await
        .expect("test step");
    assert_eq!(redrive.status(), 202);
    let redrive: Value = redrive.json().await.expect("test step");
    assert_eq!(redrive["events"], 1);
    assert!(eventually(async || status(&base, "s").await["redrive"]["delivered"] == 1).await);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("ce-id"), Some("e1"));
    assert!(
        requests[1]
            .headers
            .iter()
            .all(|(name, _)| !name.starts_with("ce-trellis")),
        "the receiver gets the original event, not the dead letter's annotations"
    );
    assert!(eventually(async || status(&base, "s").await["redrive"]["running"] == false).await);
    let again: Value = client()
        .post(format!("{base}/v1/subscriptions/s/redrive"))
        .send()
        .await
        .expect("test step")
        .json()
        .await
        .expect("test step");
    assert_eq!(
        again["events"], 0,
        "a redrive starts where the last one stopped"
    );
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn batch_mode_sends_several_events_per_request(#[case] backend: Backend) {
    let receiver = Receiver::answering(200).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };
    let created = create(
        &base,
        json!({
            "name": "s", "topic": "t",
            "sink": {"urls": [receiver.url("/")]},
            "delivery": {"batch": {"max_events": 5, "max_wait_ms": 50}},
        }),
    )
    .await;
    assert_eq!(created.status(), 201);
    for n in 0..12 {
        publish(&client(), &base, "t", &format!("e{n}"), "x".to_owned())
            .await
            .expect("test step");
    }
    assert!(eventually(async || status(&base, "s").await["committed_offset"] == 12).await);
    let mut ids = Vec::new();
    for request in receiver.requests() {
        assert_eq!(
            request.header("content-type"),
            Some("application/cloudevents-batch+json")
        );
        let batch: Vec<Value> = serde_json::from_slice(&request.body).expect("a JSON array");
        assert!(
            !batch.is_empty() && batch.len() <= 5,
            "{} events in one request",
            batch.len()
        );
        ids.extend(
            batch
                .iter()
                .map(|event| event["id"].as_str().expect("an id").to_owned()),
        );
    }
    ids.sort_by_key(|id| id[1..].parse::<u32>().expect("e<n>"));
    let expected: Vec<_> = (0..12).map(|n| format!("e{n}")).collect();
    assert_eq!(ids, expected);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_handshake_is_required_and_its_rate_is_kept(#[case] backend: Backend) {
    let receiver = Receiver::start(|_, request| {
        if request.method == "OPTIONS"
            && request.header("webhook-request-origin") == Some("trellis")
        {
            Reply::StatusWithHeaders(
                200,
                vec![
                    ("webhook-allowed-origin".to_owned(), "trellis".to_owned()),
                    ("webhook-allowed-rate".to_owned(), "600".to_owned()),
                ],
            )
        } else {
            Reply::Status(200)
        }
    })
    .await
    .expect("test step");
    let refusing = Receiver::answering(405).await.expect("test step");
    let Some((_node, base)) = start(backend) else {
        return;
    };

    let refused = create(
        &base,
        json!({"name": "r", "topic": "t", "sink": {"urls": [refusing.url("/")], "validate": true}}),
    )
    .await;
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.expect("test step");
    assert_eq!(refused["error"], "validation_failed");
    assert_eq!(refused["field"], "sink.urls[0]");

    let created = create(
        &base,
        json!({"name": "s", "topic": "t", "sink": {"urls": [receiver.url("/")], "validate": true}}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("test step");
    assert_eq!(created["allowed_rates"], json!([600]));
    // Every delivery's slot is handed out after this moment, so the bound below holds however
    // slowly the machine runs; timing the posts against each other would not.
    let before_publishing = std::time::Instant::now();
    for n in 0..3 {
        publish(&client(), &base, "t", &format!("e{n}"), "x".to_owned())
            .await
            .expect("test step");
    }
    assert!(eventually(async || status(&base, "s").await["committed_offset"] == 3).await);
    let posts: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 3);
    // 600 a minute is one every 100 ms: the third delivery starts at least 200 ms after the first.
    assert!(posts[2].at.duration_since(before_publishing) >= Duration::from_millis(200));
}
