//! One scenario per way a webhook can answer, run through the real binary. For each, one event is
//! published and the test checks what a user would: the receiver's requests, that the record
//! ended exactly once (delivered or dead-lettered), what the dead-letter topic holds, and that
//! the committed offset moved past the event.

use std::time::{Duration, Instant};

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_test_support::{Backend, ReceivedRequest, Receiver, Reply, backends};

use crate::{publish, start_on};

/// How a scenario's receiver answers its n-th request.
type Script = fn(usize, &ReceivedRequest) -> Reply;

struct Scenario {
    name: &'static str,
    script: Script,
    /// `None`: delivered. `Some(class)`: dead-lettered with this failure class.
    dead_letter: Option<&'static str>,
    /// Requests the receiver gets.
    requests: usize,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "ok",
        script: |_, _| Reply::Status(200),
        dead_letter: None,
        requests: 1,
    },
    Scenario {
        name: "unavailable-twice",
        script: |n, _| Reply::Status(if n < 2 { 503 } else { 200 }),
        dead_letter: None,
        requests: 3,
    },
    Scenario {
        name: "always-unavailable",
        script: |_, _| Reply::Status(503),
        dead_letter: Some("retries_exhausted"),
        requests: 3,
    },
    Scenario {
        name: "bad-request",
        script: |_, _| Reply::Status(400),
        dead_letter: Some("non_retriable"),
        requests: 1,
    },
    Scenario {
        name: "gone",
        script: |_, _| Reply::Status(410),
        dead_letter: Some("gone"),
        requests: 1,
    },
    Scenario {
        name: "redirect",
        script: |_, _| {
            Reply::StatusWithHeaders(302, vec![("location".to_owned(), "/x".to_owned())])
        },
        dead_letter: Some("non_retriable"),
        requests: 1,
    },
    Scenario {
        name: "too-slow",
        script: |_, _| Reply::Sleep(Duration::from_secs(2), 200),
        dead_letter: Some("retries_exhausted"),
        requests: 3,
    },
    Scenario {
        name: "reset-then-ok",
        script: |n, _| {
            if n == 0 {
                Reply::ResetMidResponse
            } else {
                Reply::Status(200)
            }
        },
        dead_letter: None,
        requests: 2,
    },
    Scenario {
        name: "hang-up-then-ok",
        script: |n, _| {
            if n == 0 {
                Reply::Close
            } else {
                Reply::Status(200)
            }
        },
        dead_letter: None,
        requests: 2,
    },
];

async fn get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn every_way_a_webhook_answers_ends_each_record_once(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    let delivery = json!({
        "max_attempts": 3,
        "backoff": {"initial_ms": 10, "max_ms": 20},
        "request_timeout_ms": 200,
    });

    let mut receivers = Vec::new();
    for scenario in SCENARIOS {
        let receiver = Receiver::start(scenario.script)
            .await
            .expect("receiver starts");
        let created = client
            .post(format!("{base}/v1/subscriptions"))
            .json(&json!({
                "name": scenario.name, "topic": scenario.name,
                "sink": {"urls": [receiver.url("/hook")]},
                "delivery": delivery,
            }))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), 201, "{}", scenario.name);
        let published = publish(&client, &base, scenario.name, "evt-1", "payload".to_owned())
            .await
            .expect("publish");
        assert_eq!(published.status(), 202);
        receivers.push(receiver);
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    for (scenario, receiver) in SCENARIOS.iter().zip(&receivers) {
        let name = scenario.name;
        let status = loop {
            let status = get(&format!("{base}/v1/subscriptions/{name}")).await["status"].clone();
            if status["committed_offset"] == 1 || Instant::now() > deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            status["committed_offset"], 1,
            "{name}: the record ended and was committed"
        );
        let delivered = status["delivered"].as_u64().expect("delivered");
        let dead_lettered = status["dead_lettered"].as_u64().expect("dead_lettered");
        assert_eq!(delivered + dead_lettered, 1, "{name}: exactly one outcome");
        assert_eq!(receiver.n_requests(), scenario.requests, "{name}: requests");
        assert!(
            receiver
                .requests()
                .iter()
                .all(|request| request.header("ce-id") == Some("evt-1")),
            "{name}: the same event id on every attempt"
        );

        let letters = get(&format!("{base}/v1/topics/{name}.dlq/events?from=0")).await;
        match scenario.dead_letter {
            None => {
                assert_eq!(delivered, 1, "{name}");
                assert!(
                    letters.as_array().is_none_or(Vec::is_empty),
                    "{name}: no dead letter: {letters}"
                );
            }
            Some(class) => {
                let letters = letters.as_array().expect("the dead-letter topic exists");
                assert_eq!(letters.len(), 1, "{name}: one dead letter");
                assert_eq!(letters[0]["id"], "evt-1");
                assert_eq!(letters[0]["data"], "payload");
                assert_eq!(letters[0]["trellisfailure"], class, "{name}");
                assert_eq!(letters[0]["trellissubscription"], name);
            }
        }
        let topic = get(&format!("{base}/v1/topics/{name}")).await;
        assert_eq!(
            topic["next_offset"], 1,
            "{name}: the event stays in its topic"
        );
    }
}
