//! The delivery engine against real HTTP receivers on loopback: one scenario per test, each
//! checking that every record ends in exactly one callback, and how.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::json;
use trellis_cloudevents::CloudEvent;
use trellis_delivery::breaker::CircuitState;
use trellis_delivery::config::{DeliverySpec, SinkSpec};
use trellis_delivery::engine::{Engine, Record};
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::report::{DeliveryCallbacks, DeliveryFailure, DeliveryReport, FailureClass};
use trellis_delivery::tls::WebhookTls;
use trellis_test_support::{DENIED_ADDRESS_SPELLINGS, HttpsReceiver, Receiver, Reply};

#[derive(Default)]
struct Outcomes {
    delivered: Mutex<Vec<DeliveryReport>>,
    failed: Mutex<Vec<DeliveryFailure>>,
}

impl DeliveryCallbacks for Outcomes {
    fn on_success(&self, report: DeliveryReport) {
        self.delivered.lock().expect("outcomes lock").push(report);
    }
    fn on_exception(&self, failure: DeliveryFailure) {
        self.failed.lock().expect("outcomes lock").push(failure);
    }
}

impl Outcomes {
    fn delivered(&self) -> Vec<DeliveryReport> {
        self.delivered.lock().expect("outcomes lock").clone()
    }
    fn failed(&self) -> Vec<DeliveryFailure> {
        self.failed.lock().expect("outcomes lock").clone()
    }
    /// Every offset in `offsets` got exactly one callback, and nothing else did.
    fn assert_one_callback_each(&self, offsets: &[u64]) {
        let mut seen: Vec<u64> = self
            .delivered()
            .iter()
            .map(|report| report.context.offset)
            .chain(self.failed().iter().map(|failure| failure.context.offset))
            .collect();
        seen.sort_unstable();
        let mut expected = offsets.to_vec();
        expected.sort_unstable();
        assert_eq!(seen, expected, "exactly one callback per record");
    }
}

fn event(id: &str) -> CloudEvent {
    let mut headers = HeaderMap::new();
    headers.insert(
        "ce-specversion",
        "1.0".parse().expect("a valid header value"),
    );
    headers.insert("ce-id", id.parse().expect("a valid header value"));
    headers.insert("ce-source", "/tests".parse().expect("a valid header value"));
    headers.insert(
        "ce-type",
        "test.event".parse().expect("a valid header value"),
    );
    headers.insert(
        "content-type",
        "text/plain".parse().expect("a valid header value"),
    );
    trellis_cloudevents::parse_binary(&headers, Bytes::from(format!("data of {id}")))
        .expect("a valid event")
}

fn record(offset: u64) -> Record {
    Record {
        topic: "orders".to_owned(),
        offset,
        event: event(&format!("evt-{offset}")),
    }
}

/// Delivery settings fast enough for tests: short backoff, short timeouts.
fn fast(overrides: serde_json::Value) -> DeliverySpec {
    let mut base = json!({
        "max_attempts": 3,
        "max_delivery_ms": 10_000,
        "backoff": {"initial_ms": 10, "max_ms": 50, "multiplier": 2.0, "jitter": true},
        "connect_timeout_ms": 500,
        "request_timeout_ms": 1_000,
    });
    merge(&mut base, overrides);
    DeliverySpec::from_json(&base, "delivery").expect("valid delivery settings")
}

fn merge(base: &mut serde_json::Value, overrides: serde_json::Value) {
    if let (Some(base), serde_json::Value::Object(overrides)) = (base.as_object_mut(), overrides) {
        for (key, value) in overrides {
            match base.get_mut(&key) {
                Some(existing) if existing.is_object() && value.is_object() => {
                    merge(existing, value)
                }
                _ => {
                    base.insert(key, value);
                }
            }
        }
    }
}

fn sink(urls: &[String], extra: serde_json::Value) -> SinkSpec {
    let mut spec = json!({ "urls": urls });
    merge(&mut spec, extra);
    SinkSpec::from_json(&spec, "sink").expect("a valid sink")
}

fn engine(sink: &SinkSpec, delivery: &DeliverySpec) -> (Engine, Arc<Outcomes>) {
    engine_trusting(sink, delivery, &system_tls())
}

fn engine_trusting(
    sink: &SinkSpec,
    delivery: &DeliverySpec,
    tls: &WebhookTls,
) -> (Engine, Arc<Outcomes>) {
    let outcomes = Arc::new(Outcomes::default());
    let engine = Engine::new(
        "sub-test",
        sink,
        delivery,
        Arc::new(AddressGuard::default()),
        tls.clone(),
        outcomes.clone(),
    )
    .expect("test step");
    (engine, outcomes)
}

fn system_tls() -> WebhookTls {
    WebhookTls::new(None).expect("system roots")
}

#[tokio::test]
async fn a_2xx_delivers_at_once_with_the_event_and_attempt_headers() {
    let receiver = Receiver::answering(200).await.expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/hook")], json!({})), &fast(json!({})));
    engine.deliver(record(7)).await;

    outcomes.assert_one_callback_each(&[7]);
    let report = &outcomes.delivered()[0];
    assert_eq!(report.context.event_id, "evt-7");
    assert_eq!(report.attempts.len(), 1);
    assert_eq!(report.attempts[0].status, Some(200));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("ce-id"), Some("evt-7"));
    assert_eq!(request.header("trellis-delivery-attempt"), Some("1"));
    assert_eq!(
        request.header("x-request-id"),
        Some(report.attempts[0].request_id.as_str())
    );
    assert!(request.header("traceparent").is_some());
    assert_eq!(request.body, b"data of evt-7");
}

#[tokio::test]
async fn records_one_after_another_share_one_keep_alive_connection() {
    let receiver = Receiver::answering(200).await.expect("test step");
    let (engine, outcomes) = engine(
        &sink(&[receiver.url("/hook?tenant=a")], json!({})),
        &fast(json!({})),
    );
    for offset in 0..3 {
        engine.deliver(record(offset)).await;
    }

    outcomes.assert_one_callback_each(&[0, 1, 2]);
    assert_eq!(receiver.n_connections(), 1);
    for request in receiver.requests() {
        // Origin form on the request line, the authority in Host, as HTTP/1.1 asks.
        assert_eq!(request.path, "/hook?tenant=a");
        assert_eq!(
            request.header("host"),
            Some(receiver.addr().to_string().as_str())
        );
    }
}

/// A server's keep-alive timeout closes idle connections; a record sent after that must go on
/// a new connection, not fail an attempt on the dead one.
#[tokio::test]
async fn a_connection_the_receiver_closed_while_idle_is_not_used_again() {
    let receiver =
        Receiver::start(|_, _| Reply::StatusThenCloseAfter(200, Duration::from_millis(50)))
            .await
            .expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(1)).await;
    // Time for the receiver's close to arrive while the connection sits idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.deliver(record(2)).await;

    outcomes.assert_one_callback_each(&[1, 2]);
    for report in outcomes.delivered() {
        assert_eq!(report.attempts.len(), 1, "{:?}", report.attempts);
    }
    assert_eq!(receiver.n_requests(), 2);
    assert_eq!(receiver.n_connections(), 2);
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_event_id_and_new_request_ids() {
    let receiver = Receiver::start(|index, _| Reply::Status(if index < 2 { 503 } else { 200 }))
        .await
        .expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(1)).await;

    outcomes.assert_one_callback_each(&[1]);
    let report = &outcomes.delivered()[0];
    let statuses: Vec<_> = report.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(200)]);
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.header("ce-id") == Some("evt-1")));
    let attempts: Vec<_> = requests
        .iter()
        .map(|r| r.header("trellis-delivery-attempt").expect("test step"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let mut ids: Vec<_> = requests
        .iter()
        .map(|r| r.header("x-request-id").expect("test step"))
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each attempt has its own request id");
}

#[tokio::test]
async fn always_503_ends_when_attempts_run_out() {
    let receiver = Receiver::answering(503).await.expect("test step");
    let (engine, outcomes) = engine(
        &sink(&[receiver.url("/")], json!({})),
        &fast(json!({"max_attempts": 4})),
    );
    engine.deliver(record(2)).await;

    outcomes.assert_one_callback_each(&[2]);
    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::RetriesExhausted);
    assert_eq!(failure.last_status, Some(503));
    assert_eq!(failure.attempts.len(), 4);
    assert_eq!(receiver.n_requests(), 4);
}

/// Opens for a number of checks, then stays closed: a replica that loses its lease between
/// two attempts of one record.
struct ClosesAfter(std::sync::atomic::AtomicUsize);

impl trellis_delivery::engine::AttemptGate for ClosesAfter {
    fn is_open(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

#[tokio::test]
async fn a_closed_gate_sends_no_further_attempt_and_leaves_the_record_unfinished() {
    let receiver = Receiver::answering(503).await.expect("test step");
    let (engine, outcomes) = engine(
        &sink(&[receiver.url("/")], json!({})),
        &fast(json!({"max_attempts": 10})),
    );
    engine.set_gate(Arc::new(ClosesAfter(2.into())));
    engine.deliver(record(4)).await;

    outcomes.assert_one_callback_each(&[4]);
    let failure = &outcomes.failed()[0];
    assert_eq!(
        failure.class,
        FailureClass::Cancelled,
        "not final: it stays uncommitted"
    );
    assert!(!failure.class.is_final());
    assert_eq!(failure.attempts.len(), 2);
    assert_eq!(receiver.n_requests(), 2, "no request once the gate closed");
}

#[tokio::test]
async fn a_400_fails_at_once_without_retry() {
    let receiver = Receiver::answering(400).await.expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(3)).await;

    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::NonRetriable);
    assert_eq!(failure.last_status, Some(400));
    assert_eq!(receiver.n_requests(), 1);
    outcomes.assert_one_callback_each(&[3]);
}

#[tokio::test]
async fn retry_after_holds_the_next_attempt_back() {
    let receiver = Receiver::start(|index, _| {
        if index == 0 {
            Reply::StatusWithHeaders(429, vec![("retry-after".to_owned(), "2".to_owned())])
        } else {
            Reply::Status(200)
        }
    })
    .await
    .expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(4)).await;

    outcomes.assert_one_callback_each(&[4]);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    // The backoff alone would retry within 50 ms; Retry-After: 2 says no sooner than 2 s.
    assert!(requests[1].at.duration_since(requests[0].at) >= Duration::from_millis(1990));
}

#[tokio::test]
async fn a_retry_after_that_does_not_fit_the_budget_dead_letters_saying_so() {
    let receiver = Receiver::start(|_, _| {
        Reply::StatusWithHeaders(503, vec![("retry-after".to_owned(), "30".to_owned())])
    })
    .await
    .expect("test step");
    // A 2 s budget: the 30 s the receiver asks for (10 s once capped) cannot fit.
    let delivery = fast(json!({
        "max_delivery_ms": 2_000,
        "retry_after_max_ms": 10_000,
    }));
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &delivery);
    engine.deliver(record(40)).await;

    outcomes.assert_one_callback_each(&[40]);
    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::DeadlinePassed);
    assert_eq!(failure.last_status, Some(503));
    // Dead-lettered after the one attempt, not after waiting out the budget.
    assert_eq!(receiver.n_requests(), 1);
    let reason = &failure.reason;
    assert!(
        reason.contains("answered 503 Service Unavailable with Retry-After 30000 ms")
            && reason.contains("capped at retry_after_max_ms, 10000 ms")
            && reason.contains("does not fit the")
            && reason.contains("delivery budget of 2000 ms"),
        "{reason}"
    );
    assert!(!reason.contains("ran out"), "{reason}");
}

#[tokio::test]
async fn the_default_retry_after_cap_fits_the_default_budget() {
    let defaults = DeliverySpec::default();
    assert!(
        defaults.retry_after_max_ms + defaults.request_timeout_ms < defaults.max_delivery_ms,
        "{defaults:?}"
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retried_then_given_up() {
    let receiver = Receiver::start(|_, _| Reply::Sleep(Duration::from_secs(2), 200))
        .await
        .expect("test step");
    let delivery = fast(json!({"max_attempts": 2, "request_timeout_ms": 100}));
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &delivery);
    engine.deliver(record(5)).await;

    outcomes.assert_one_callback_each(&[5]);
    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::RetriesExhausted);
    assert!(
        failure
            .attempts
            .iter()
            .all(|a| a.status.is_none() && a.error.is_some())
    );
    assert_eq!(failure.attempts.len(), 2);
}

#[tokio::test]
async fn connection_refused_is_retried_then_given_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test step");
    let url = format!("http://{}/", listener.local_addr().expect("test step"));
    drop(listener);
    let (engine, outcomes) = engine(&sink(&[url], json!({})), &fast(json!({})));
    engine.deliver(record(6)).await;

    outcomes.assert_one_callback_each(&[6]);
    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::RetriesExhausted);
    assert_eq!(failure.attempts.len(), 3);
    assert!(!failure.error_chain.is_empty());
}

#[tokio::test]
async fn a_reset_in_the_middle_of_an_answer_is_retried() {
    let receiver = Receiver::start(|index, _| {
        if index == 0 {
            Reply::ResetMidResponse
        } else {
            Reply::Status(200)
        }
    })
    .await
    .expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(8)).await;

    outcomes.assert_one_callback_each(&[8]);
    let report = &outcomes.delivered()[0];
    assert_eq!(report.attempts.len(), 2);
    assert_eq!(report.attempts[1].status, Some(200));
}

#[tokio::test]
async fn gone_dead_letters_and_pauses_the_url_until_resumed() {
    let receiver = Receiver::answering(410).await.expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(9)).await;

    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::Gone);
    assert!(engine.status().targets[0].paused.is_some());

    // While paused, a record waits instead of being sent.
    receiver.set_script(|_, _| Reply::Status(200));
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.deliver(record(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.n_requests(), 1, "nothing is sent to a paused URL");
    engine.resume();
    waiting.await.expect("test step");
    assert!(engine.status().targets[0].paused.is_none());
    outcomes.assert_one_callback_each(&[9, 10]);
    assert_eq!(outcomes.delivered()[0].context.offset, 10);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let target = Receiver::answering(200).await.expect("test step");
    let location = target.url("/elsewhere");
    let receiver = Receiver::start(move |_, _| {
        Reply::StatusWithHeaders(302, vec![("location".to_owned(), location.clone())])
    })
    .await
    .expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver(record(11)).await;

    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::NonRetriable);
    assert_eq!(failure.last_status, Some(302));
    assert_eq!(target.n_requests(), 0);
    outcomes.assert_one_callback_each(&[11]);
}

#[tokio::test]
async fn broadcast_fails_the_record_when_one_url_fails() {
    let good = Receiver::answering(200).await.expect("test step");
    let bad = Receiver::answering(400).await.expect("test step");
    let sink = sink(
        &[good.url("/"), bad.url("/")],
        json!({"strategy": "broadcast"}),
    );
    let (engine, outcomes) = engine(&sink, &fast(json!({})));
    engine.deliver(record(12)).await;

    outcomes.assert_one_callback_each(&[12]);
    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::NonRetriable);
    assert_eq!(good.n_requests(), 1);
    assert_eq!(bad.n_requests(), 1);
    assert_eq!(failure.attempts.len(), 2);
}

#[tokio::test]
async fn broadcast_delivers_to_every_url() {
    let first = Receiver::answering(200).await.expect("test step");
    let second = Receiver::answering(204).await.expect("test step");
    let sink = sink(
        &[first.url("/"), second.url("/")],
        json!({"strategy": "broadcast"}),
    );
    let (engine, outcomes) = engine(&sink, &fast(json!({})));
    engine.deliver(record(13)).await;

    outcomes.assert_one_callback_each(&[13]);
    assert_eq!(outcomes.delivered().len(), 1);
    assert_eq!(first.requests()[0].header("ce-id"), Some("evt-13"));
    assert_eq!(second.requests()[0].header("ce-id"), Some("evt-13"));
}

#[tokio::test]
async fn round_robin_fails_over_to_the_next_url_on_retry() {
    let down = Receiver::answering(503).await.expect("test step");
    let up = Receiver::answering(200).await.expect("test step");
    let (engine, outcomes) = engine(
        &sink(&[down.url("/"), up.url("/")], json!({})),
        &fast(json!({})),
    );
    for offset in 0..4 {
        engine.deliver(record(offset)).await;
    }

    outcomes.assert_one_callback_each(&[0, 1, 2, 3]);
    assert_eq!(outcomes.delivered().len(), 4);
    // Records that started on the failing URL moved to the other one on their retry.
    assert!(down.n_requests() >= 1);
    assert_eq!(up.n_requests(), 4);
}

#[tokio::test]
async fn an_open_circuit_holds_records_without_burning_their_attempts() {
    let receiver = Receiver::start(|index, _| Reply::Status(if index < 3 { 503 } else { 200 }))
        .await
        .expect("test step");
    let delivery = fast(json!({
        "max_attempts": 2,
        "concurrency": 1,
        "breaker": {"failure_threshold": 3, "failure_ratio": 0.0, "cool_down_ms": 300},
    }));
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &delivery);
    let tasks: Vec<_> = (0..6)
        .map(|offset| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.deliver(record(offset)).await })
        })
        .collect();
    let saw_open = {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut saw_open = false;
        while Instant::now() < deadline && !saw_open {
            saw_open = engine.status().targets[0].circuit == CircuitState::Open;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        saw_open
    };
    for task in tasks {
        task.await.expect("test step");
    }

    assert!(saw_open, "three failures in a row open the circuit");
    outcomes.assert_one_callback_each(&[0, 1, 2, 3, 4, 5]);
    assert!(
        outcomes.failed().is_empty(),
        "no record fails because the circuit was open"
    );
    assert_eq!(engine.status().targets[0].circuit, CircuitState::Closed);
}

#[tokio::test]
async fn a_dropped_delivery_reports_the_record_as_cancelled() {
    let receiver = Receiver::start(|_, _| Reply::Sleep(Duration::from_secs(5), 200))
        .await
        .expect("test step");
    let (engine, outcomes) = engine(
        &sink(&[receiver.url("/")], json!({})),
        &fast(json!({"request_timeout_ms": 5_000})),
    );
    let delivery = engine.deliver(record(14));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), delivery)
            .await
            .is_err()
    );

    outcomes.assert_one_callback_each(&[14]);
    assert_eq!(outcomes.failed()[0].class, FailureClass::Cancelled);
    assert!(!outcomes.failed()[0].class.is_final());
}

#[tokio::test]
async fn a_secret_signs_each_request_and_never_shows_in_reports() {
    let receiver = Receiver::answering(200).await.expect("test step");
    let secret = "s3cret-s3cret-s3cret";
    let (engine, outcomes) = engine(
        &sink(&[receiver.url("/")], json!({"secret": secret})),
        &fast(json!({})),
    );
    engine.deliver(record(15)).await;

    let request = &receiver.requests()[0];
    let signature = request.header("trellis-signature").expect("test step");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("test step")
        .as_secs() as i64;
    trellis_delivery::sign::verify(secret.as_bytes(), signature, &request.body, now, 300)
        .expect("test step");
    let report = serde_json::to_string(&outcomes.delivered()).expect("test step");
    assert!(!report.contains(secret));
}

#[tokio::test]
async fn a_denied_address_is_refused_when_the_engine_is_built() {
    let outcomes = Arc::new(Outcomes::default());
    let sink = sink(
        &["http://169.254.169.254/latest/meta-data".to_owned()],
        json!({}),
    );
    let error = Engine::new(
        "sub",
        &sink,
        &fast(json!({})),
        Arc::new(AddressGuard::default()),
        system_tls(),
        outcomes,
    )
    .err()
    .expect("the metadata address is denied");
    assert!(error.to_string().starts_with("sink.urls[0]"), "{error}");
}

#[tokio::test]
async fn every_spelling_of_a_denied_address_is_refused_when_the_engine_is_built() {
    // Spellings the system resolver would have turned into a denied address at delivery; the
    // engine is what the API builds on creation, so creation refuses them now too.
    let mut deny = AddressGuard::default_deny_list();
    deny.push("127.0.0.0/8".parse().expect("network"));
    let guard = Arc::new(AddressGuard::new(deny));
    for &url in DENIED_ADDRESS_SPELLINGS {
        let error = Engine::new(
            "sub",
            &sink(&[url.to_owned()], json!({})),
            &fast(json!({})),
            Arc::clone(&guard),
            system_tls(),
            Arc::new(Outcomes::default()),
        )
        .err()
        .unwrap_or_else(|| panic!("{url} must be refused"));
        let message = error.to_string();
        assert!(
            message.starts_with("sink.urls[0]: address ") && message.contains("denied range"),
            "{url}: {message}"
        );
    }
}

#[tokio::test]
async fn a_name_that_resolves_to_a_denied_address_is_rejected_without_retry() {
    let receiver = Receiver::answering(200).await.expect("test step");
    let outcomes = Arc::new(Outcomes::default());
    let deny_loopback = AddressGuard::new(vec![
        "127.0.0.0/8".parse().expect("test step"),
        "::1/128".parse().expect("test step"),
    ]);
    let url = format!("http://localhost:{}/", receiver.addr().port());
    let engine = Engine::new(
        "sub",
        &sink(&[url], json!({})),
        &fast(json!({})),
        Arc::new(deny_loopback),
        system_tls(),
        outcomes.clone(),
    )
    .expect("a name is only checked when connecting");
    engine.deliver(record(16)).await;

    outcomes.assert_one_callback_each(&[16]);
    let failure = &outcomes.failed()[0];
    assert_eq!(
        failure.class,
        FailureClass::Rejected,
        "{:?}",
        failure.error_chain
    );
    assert_eq!(failure.attempts.len(), 1);
    assert_eq!(receiver.n_requests(), 0);
}

#[tokio::test]
async fn a_batch_goes_in_one_request_and_each_record_gets_its_callback() {
    let receiver = Receiver::start(|index, _| Reply::Status(if index == 0 { 503 } else { 200 }))
        .await
        .expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine
        .deliver_batch(vec![record(20), record(21), record(22)])
        .await;

    outcomes.assert_one_callback_each(&[20, 21, 22]);
    assert_eq!(outcomes.delivered().len(), 3);
    assert!(
        outcomes
            .delivered()
            .iter()
            .all(|report| report.attempts.len() == 2)
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "the batch is retried as a whole");
    assert_eq!(
        requests[1].header("content-type"),
        Some("application/cloudevents-batch+json")
    );
    let events = trellis_cloudevents::parse_batch(&requests[1].body).expect("a valid batch");
    let ids: Vec<_> = events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids, ["evt-20", "evt-21", "evt-22"]);
}

#[tokio::test]
async fn a_failed_batch_fails_every_record_in_it() {
    let receiver = Receiver::answering(400).await.expect("test step");
    let (engine, outcomes) = engine(&sink(&[receiver.url("/")], json!({})), &fast(json!({})));
    engine.deliver_batch(vec![record(30), record(31)]).await;

    outcomes.assert_one_callback_each(&[30, 31]);
    assert!(
        outcomes
            .failed()
            .iter()
            .all(|f| f.class == FailureClass::NonRetriable)
    );
}

/// The receiver's CA in a file, as `webhook_ca_file` takes it.
fn ca_file(receiver: &HttpsReceiver) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("CA file");
    std::io::Write::write_all(&mut file, receiver.ca_pem.as_bytes()).expect("write CA file");
    file
}

#[tokio::test]
async fn an_https_receiver_is_reached_when_its_ca_is_trusted() {
    let receiver = HttpsReceiver::start(&["localhost"]).await;
    let ca_file = ca_file(&receiver);
    let tls = WebhookTls::new(Some(ca_file.path())).expect("CA file");
    let (engine, outcomes) = engine_trusting(
        &sink(&[receiver.url("localhost")], json!({})),
        &fast(json!({})),
        &tls,
    );
    engine.deliver(record(30)).await;
    engine.deliver(record(31)).await;

    outcomes.assert_one_callback_each(&[30, 31]);
    assert_eq!(outcomes.delivered().len(), 2, "{:?}", outcomes.failed());
    let host = format!("localhost:{}", receiver.port());
    assert_eq!(
        receiver.requests(),
        [
            (host.clone(), "evt-30".to_owned()),
            (host, "evt-31".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_https_receiver_with_an_untrusted_certificate_gets_nothing() {
    let receiver = HttpsReceiver::start(&["localhost"]).await;
    let (engine, outcomes) = engine(
        &sink(&[receiver.url("localhost")], json!({})),
        &fast(json!({})),
    );
    engine.deliver(record(32)).await;

    outcomes.assert_one_callback_each(&[32]);
    let failure = &outcomes.failed()[0];
    assert_eq!(failure.class, FailureClass::RetriesExhausted);
    // The reason (the log line's and the dead letter's) names the certificate, not a mere
    // "cannot connect", and so does each attempt.
    assert!(
        failure
            .reason
            .contains("the receiver's TLS certificate is not accepted: invalid peer certificate"),
        "{}",
        failure.reason
    );
    assert_eq!(
        failure.reason.matches("invalid peer certificate").count(),
        1,
        "the cause once, not once per wrapper: {}",
        failure.reason
    );
    assert!(
        !failure.reason.contains("cannot connect"),
        "{}",
        failure.reason
    );
    assert!(
        failure.attempts.iter().all(|attempt| attempt
            .error
            .as_deref()
            .is_some_and(|error| error.contains("TLS certificate"))),
        "{:?}",
        failure.attempts
    );
    assert!(
        failure.error_chain[0].contains("certificate"),
        "{:?}",
        failure.error_chain
    );
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn an_https_receiver_whose_certificate_names_another_host_is_told_apart() {
    // The CA is trusted, but the certificate is for `localhost`, not 127.0.0.1.
    let receiver = HttpsReceiver::start(&["localhost"]).await;
    let ca_file = ca_file(&receiver);
    let tls = WebhookTls::new(Some(ca_file.path())).expect("CA file");
    let url = format!("https://127.0.0.1:{}/hook", receiver.port());
    let (engine, outcomes) = engine_trusting(
        &sink(&[url], json!({})),
        &fast(json!({"max_attempts": 1})),
        &tls,
    );
    engine.deliver(record(33)).await;

    outcomes.assert_one_callback_each(&[33]);
    let failure = &outcomes.failed()[0];
    assert!(
        failure
            .reason
            .contains("the receiver's TLS certificate is not accepted"),
        "{}",
        failure.reason
    );
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn a_plain_http_receiver_behind_an_https_url_fails_on_tls_not_on_a_certificate() {
    let receiver = Receiver::answering(200).await.expect("test step");
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr().port());
    let (engine, outcomes) = engine(&sink(&[url], json!({})), &fast(json!({"max_attempts": 1})));
    engine.deliver(record(34)).await;

    outcomes.assert_one_callback_each(&[34]);
    // Whether the receiver hangs up or answers garbage, the reason says it was TLS, and does
    // not blame a certificate.
    let reason = &outcomes.failed()[0].reason;
    assert!(reason.to_lowercase().contains("tls"), "{reason}");
    assert!(!reason.contains("certificate"), "{reason}");
}
