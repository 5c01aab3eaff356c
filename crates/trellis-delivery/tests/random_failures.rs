//! A receiver that fails at random, driven by proptest: whatever it does, every record ends in
//! exactly one callback, and the offsets committed from those callbacks (through
//! `OffsetTracker`) never pass a record that has not ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use trellis_delivery::config::{DeliverySpec, SinkSpec};
use trellis_delivery::engine::{Engine, Record};
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::offsets::OffsetTracker;
use trellis_delivery::report::{DeliveryCallbacks, DeliveryFailure, DeliveryReport};
use trellis_delivery::tls::WebhookTls;
use trellis_test_support::{Receiver, Reply};

/// Checks the commit rule as callbacks arrive, like the runtime's dispatcher does.
struct Ledger {
    state: Mutex<LedgerState>,
}

struct LedgerState {
    tracker: OffsetTracker,
    callbacks: Vec<u64>,
    violations: Vec<String>,
}

impl Ledger {
    fn ended(&self, offset: u64) {
        let mut state = self.state.lock().expect("ledger lock");
        if state.callbacks.contains(&offset) {
            state
                .violations
                .push(format!("a second callback for offset {offset}"));
        }
        state.callbacks.push(offset);
        if let Err(error) = state.tracker.complete(offset) {
            state.violations.push(format!("offset {offset}: {error}"));
        }
        let committable = state.tracker.committable();
        if let Some(unended) = (0..committable).find(|o| !state.callbacks.contains(o)) {
            state.violations.push(format!(
                "committable {committable} passes offset {unended}, which has not ended"
            ));
        }
    }
}

impl DeliveryCallbacks for Ledger {
    fn on_success(&self, report: DeliveryReport) {
        self.ended(report.context.offset);
    }
    fn on_exception(&self, failure: DeliveryFailure) {
        self.ended(failure.context.offset);
    }
}

fn event(offset: u64) -> trellis_cloudevents::CloudEvent {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", http::HeaderValue::from_static("1.0"));
    headers.insert("ce-source", http::HeaderValue::from_static("/proptest"));
    headers.insert("ce-type", http::HeaderValue::from_static("test"));
    headers.insert(
        "ce-id",
        http::HeaderValue::from_str(&format!("e{offset}")).expect("a header value"),
    );
    trellis_cloudevents::parse_binary(&headers, Bytes::from_static(b"x")).expect("a valid event")
}

fn random_reply(rng: &mut StdRng) -> Reply {
    match rng.random_range(0..10) {
        0..=3 => Reply::Status(200),
        4 => Reply::Status(503),
        5 => Reply::Status(500),
        6 => Reply::Status(400),
        7 => Reply::ResetMidResponse,
        8 => Reply::Close,
        _ => Reply::Sleep(Duration::from_millis(60), 200),
    }
}

async fn run_case(seed: u64, n_records: u64, n_urls: usize, broadcast: bool) -> Vec<String> {
    let mut receivers = Vec::new();
    for url_index in 0..n_urls {
        let rng = Mutex::new(StdRng::seed_from_u64(seed ^ url_index as u64));
        let receiver =
            Receiver::start(move |_, _| random_reply(&mut rng.lock().expect("rng lock")))
                .await
                .expect("receiver starts");
        receivers.push(receiver);
    }
    let urls: Vec<String> = receivers.iter().map(|r| r.url("/")).collect();
    let strategy = if broadcast {
        "broadcast"
    } else {
        "round_robin"
    };
    let sink = SinkSpec::from_json(&json!({"urls": urls, "strategy": strategy}), "sink")
        .expect("a valid sink");
    let delivery = DeliverySpec::from_json(
        &json!({
            "max_attempts": 3,
            "backoff": {"initial_ms": 1, "max_ms": 5},
            "request_timeout_ms": 40,
            "breaker": {"failure_threshold": 4, "failure_ratio": 0.0, "cool_down_ms": 20},
        }),
        "delivery",
    )
    .expect("valid delivery settings");
    let mut tracker = OffsetTracker::new(0);
    for offset in 0..n_records {
        tracker.track(offset).expect("offsets are tracked in order");
    }
    let ledger = Arc::new(Ledger {
        state: Mutex::new(LedgerState {
            tracker,
            callbacks: Vec::new(),
            violations: Vec::new(),
        }),
    });
    let engine = Engine::new(
        "prop",
        &sink,
        &delivery,
        Arc::new(AddressGuard::default()),
        WebhookTls::new(None).expect("system roots"),
        ledger.clone(),
    )
    .expect("the engine builds");
    let tasks: Vec<_> = (0..n_records)
        .map(|offset| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .deliver(Record {
                        topic: "t".to_owned(),
                        offset,
                        event: event(offset),
                    })
                    .await;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("delivery task");
    }

    let state = ledger.state.lock().expect("ledger lock");
    let mut violations = state.violations.clone();
    if state.callbacks.len() as u64 != n_records {
        violations.push(format!(
            "{} callbacks for {n_records} records",
            state.callbacks.len()
        ));
    }
    if state.tracker.committable() != n_records {
        violations.push(format!(
            "committable {} after every record ended, not {n_records}",
            state.tracker.committable()
        ));
    }
    violations
}

proptest! {
    // Each case runs real sockets and retries; a few dozen cases cover the mixes of failures.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_record_ends_once_and_commits_follow_the_contiguous_prefix(
        seed in any::<u64>(),
        n_records in 1u64..40,
        n_urls in 1usize..3,
        broadcast in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Runtime::new().expect("tokio");
        let violations = runtime.block_on(run_case(seed, n_records, n_urls, broadcast));
        prop_assert!(violations.is_empty(), "{violations:?}");
    }
}
