use super::*;

use serde_json::json;

const SECRET: &str = "s3cret-signing-key-0123";
const TOKEN: &str = "Bearer tok-abcdef";
const QUERY_TOKEN: &str = "qtok987654";

#[track_caller]
fn check_delivery_error(delivery: Value, field: &str, message_part: &str) {
    let error = DeliverySpec::from_json(&delivery, "delivery")
        .expect_err(&format!("{delivery} should be refused"));
    assert_eq!(error.field, field, "{delivery}: {error}");
    assert!(
        error.message.contains(message_part),
        "{delivery}: {error:?} should mention {message_part:?}"
    );
}

#[track_caller]
fn check_sink_error(sink: Value, field: &str, message_part: &str) {
    let error = SinkSpec::from_json(&sink, "sink").expect_err(&format!("{sink} should be refused"));
    assert_eq!(error.field, field, "{sink}: {error}");
    assert!(
        error.message.contains(message_part),
        "{sink}: {error:?} should mention {message_part:?}"
    );
}

fn sink_with_credentials() -> SinkSpec {
    SinkSpec::from_json(
        &json!({
            "urls": [format!("https://example.com/hook?tenant=a&access_token={QUERY_TOKEN}")],
            "headers": {
                "Authorization": TOKEN,
                "X-Env": "prod",
                "X-JWT": "eyJhbGciOiJIUzI1NiJ9.jwt-value",
                "X-Session": "session-value-4711",
                "X-Pass": "pass-value-0815",
                "X-Forwarded-For-Tenant": "Bearer bearer-value-42",
            },
            "secret": SECRET,
        }),
        "sink",
    )
    .expect("valid sink")
}

/// The header values of [`sink_with_credentials`]: a name cannot tell which is a credential.
const HEADER_VALUES: [&str; 6] = [
    TOKEN,
    "prod",
    "jwt-value",
    "session-value-4711",
    "pass-value-0815",
    "bearer-value-42",
];

#[test]
fn an_empty_delivery_object_takes_every_default() {
    let spec = DeliverySpec::from_json(&json!({}), "delivery").expect("defaults are valid");
    assert_eq!(spec, DeliverySpec::default());
    // The documented defaults, as the API shows them.
    assert_eq!(
        serde_json::to_value(&spec).expect("serialisable"),
        json!({
            "max_attempts": 10,
            "max_delivery_ms": 300_000,
            "backoff": {"initial_ms": 1000, "max_ms": 60_000, "multiplier": 2.0, "jitter": true},
            "retry_after_max_ms": 60_000,
            "connect_timeout_ms": 5000,
            "request_timeout_ms": 30_000,
            "concurrency": {"min": 1, "max": 64},
            "breaker": {
                "failure_threshold": 5, "failure_ratio": 0.5, "min_requests": 20,
                "window_ms": 60_000, "cool_down_ms": 30_000,
            },
            "retry_on": [],
            "drop_on": [],
        })
    );
}

#[test]
fn delivery_settings_round_trip() {
    let default_json = serde_json::to_value(DeliverySpec::default()).expect("serialisable");
    assert_eq!(
        DeliverySpec::from_json(&default_json, "delivery"),
        Ok(DeliverySpec::default())
    );
    let custom = json!({
        "max_attempts": 3,
        "backoff": {"multiplier": 1.5, "jitter": false},
        "concurrency": 4,
        "batch": {"max_events": 10},
        "retry_on": [404, 409],
        "drop_on": [503],
    });
    let spec = DeliverySpec::from_json(&custom, "delivery").expect("valid");
    assert_eq!(spec.backoff.initial_ms, 1000);
    assert_eq!(
        spec.batch,
        Some(BatchSpec {
            max_events: 10,
            max_wait_ms: 1000
        })
    );
    let again = serde_json::to_value(&spec).expect("serialisable");
    assert_eq!(DeliverySpec::from_json(&again, "delivery"), Ok(spec));
}

#[test]
fn a_minimal_sink_takes_every_default() {
    let spec =
        SinkSpec::from_json(&json!({"urls": ["https://example.com/hook"]}), "sink").expect("valid");
    assert_eq!(spec.strategy, Strategy::RoundRobin);
    assert_eq!(spec.mode, Mode::Binary);
    assert!(spec.headers.is_empty());
    assert_eq!(spec.secret, None);
    assert!(!spec.validate);
    let shown = serde_json::to_value(&spec).expect("serialisable");
    assert_eq!(
        shown,
        json!({"urls": ["https://example.com/hook"], "strategy": "round_robin", "mode": "binary", "headers": {}, "validate": false})
    );
    assert_eq!(SinkSpec::from_json(&shown, "sink"), Ok(spec));
}

#[test]
fn a_full_sink_round_trips_through_the_store() {
    let spec = SinkSpec::from_json(
        &json!({
            "urls": ["https://a.example.com/hook", "http://b.example.com:8080/hook?x=1", "http://[::1]:9/h"],
            "strategy": "broadcast",
            "mode": "structured",
            "headers": {"X-Env": "prod"},
            "secret": SECRET,
            "validate": true,
        }),
        "sink",
    )
    .expect("valid");
    assert_eq!(spec.strategy, Strategy::Broadcast);
    assert_eq!(spec.mode, Mode::Structured);
    assert_eq!(
        SinkSpec::from_json(&spec.to_stored_json(), "sink"),
        Ok(spec.clone())
    );
    // The stored form has the same keys as the API form: no field forgotten in either.
    let stored_keys: Vec<String> = spec
        .to_stored_json()
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    let shown = serde_json::to_value(&spec).expect("serialisable");
    let shown_keys: Vec<String> = shown.as_object().expect("object").keys().cloned().collect();
    assert_eq!(stored_keys, shown_keys);
}

#[test]
fn credentials_never_reach_debug_or_the_api() {
    let spec = sink_with_credentials();
    let debug = format!("{spec:?}");
    let shown = serde_json::to_string(&spec).expect("serialisable");
    for output in [&debug, &shown] {
        for credential in [SECRET, QUERY_TOKEN].iter().chain(&HEADER_VALUES) {
            assert!(
                !output.contains(credential),
                "{credential} leaked in {output}"
            );
        }
        assert!(output.contains("***"), "{output}");
        // What is not a credential stays readable: header names, query keys.
        assert!(
            output.contains("X-Session") && output.contains("tenant="),
            "{output}"
        );
    }
    let shown: Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["secret"], "***");
    // Every header value, whatever the header's name.
    let headers = shown["headers"].as_object().expect("headers object");
    assert_eq!(headers.len(), HEADER_VALUES.len());
    for (name, value) in headers {
        assert_eq!(value, "***", "{name}");
    }
    assert_eq!(
        shown["urls"][0],
        "https://example.com/hook?tenant=***&access_token=***"
    );
    // Only the stored form keeps them.
    let stored = spec.to_stored_json();
    assert_eq!(stored["secret"], SECRET);
    assert_eq!(stored["headers"]["Authorization"], TOKEN);
    assert_eq!(stored["headers"]["X-Env"], "prod");
    assert_eq!(stored["headers"]["X-Session"], "session-value-4711");
    assert_eq!(SinkSpec::from_json(&stored, "sink"), Ok(spec));
}

#[test]
fn the_redaction_placeholder_is_refused_as_a_credential() {
    // GET, edit, PUT: the placeholders come back and must not be stored as credentials.
    let shown = serde_json::to_value(sink_with_credentials()).expect("serialisable");
    check_sink_error(shown.clone(), "sink.urls[0]", "placeholder");
    let mut shown = shown;
    shown["urls"] = json!(["https://example.com/hook"]);
    check_sink_error(shown.clone(), "sink.headers.Authorization", "placeholder");
    shown["headers"] = json!({});
    check_sink_error(shown, "sink.secret", "placeholder");
}

#[test]
fn url_errors_do_not_echo_credentials() {
    let error = SinkSpec::from_json(
        &json!({"urls": ["https://user:pw-123@example.com/"]}),
        "sink",
    )
    .expect_err("credentials in the URL");
    assert!(!error.to_string().contains("pw-123"), "{error}");
    let error = SinkSpec::from_json(
        &json!({"urls": [format!("https://example.com/?access_token={QUERY_TOKEN}#frag")]}),
        "sink",
    )
    .expect_err("fragment");
    assert!(!error.to_string().contains(QUERY_TOKEN), "{error}");
    assert!(error.to_string().contains("access_token=***"), "{error}");
}

#[test]
fn secret_errors_do_not_echo_it() {
    let error = SinkSpec::from_json(
        &json!({"urls": ["https://example.com/"], "secret": "short-secret"}),
        "sink",
    )
    .expect_err("too short");
    assert_eq!(
        error.to_string(),
        "sink.secret: must be at least 16 bytes; got 12 bytes"
    );
}

#[test]
fn refuses_bad_urls() {
    let cases = [
        (json!([]), "sink.urls", "at least one"),
        (
            json!(["ftp://example.com/x"]),
            "sink.urls[0]",
            "http or https",
        ),
        (json!(["/hook"]), "sink.urls[0]", "absolute"),
        (json!(["example.com/hook"]), "sink.urls[0]", "absolute"),
        (
            json!(["https://example.com/a", "https://example.com/a#top"]),
            "sink.urls[1]",
            "fragment",
        ),
        (
            json!(["https://user:pw@example.com/"]),
            "sink.urls[0]",
            "credentials",
        ),
        (
            json!(["https://example.com:99999/"]),
            "sink.urls[0]",
            "port must be from 1 to 65535; got \"99999\"",
        ),
        (json!(["https://example.com:0/"]), "sink.urls[0]", "port"),
        (json!(["https://example.com/ü"]), "sink.urls[0]", "ASCII"),
        (json!(["https://:80/"]), "sink.urls[0]", "must name a host"),
        (json!(["https://exa mple.com/"]), "sink.urls[0]", "absolute"),
        // Read by the WHATWG host rules, as the address guard reads them.
        (
            json!(["https://1.2.3.256/"]),
            "sink.urls[0]",
            "neither a valid host name nor an IP address",
        ),
        (
            json!(["https://example.com/", "http://hooks.123/"]),
            "sink.urls[1]",
            "neither a valid host name nor an IP address",
        ),
        (
            json!([
                "https://example.com/a",
                "https://x.com/",
                "HTTPS://EXAMPLE.com/a"
            ]),
            "sink.urls[2]",
            "duplicates sink.urls[0]",
        ),
        (
            json!(["https://example.com/a", 3]),
            "sink.urls[1]",
            "expected a string",
        ),
        (
            json!("https://example.com/a"),
            "sink.urls",
            "expected a sequence",
        ),
    ];
    for (urls, field, message_part) in cases {
        check_sink_error(json!({"urls": urls}), field, message_part);
    }
    let too_many: Vec<String> = (0..=MAX_URLS)
        .map(|idx| format!("https://example.com/{idx}"))
        .collect();
    check_sink_error(json!({"urls": too_many}), "sink.urls", "at most 32");
}

#[test]
fn refuses_headers_trellis_sets_or_http_forbids() {
    let cases = [
        (
            json!({"Content-Type": "text/plain"}),
            "sink.headers.Content-Type",
            "set by Trellis",
        ),
        (
            json!({"ce-id": "1"}),
            "sink.headers.ce-id",
            "set by Trellis",
        ),
        (
            json!({"Trellis-Signature": "x"}),
            "sink.headers.Trellis-Signature",
            "set by Trellis",
        ),
        (
            json!({"X-Request-Id": "1"}),
            "sink.headers.X-Request-Id",
            "set by Trellis",
        ),
        (
            json!({"traceparent": "00-1"}),
            "sink.headers.traceparent",
            "set by Trellis",
        ),
        (
            json!({"Host": "evil"}),
            "sink.headers.Host",
            "set by Trellis",
        ),
        (
            json!({"Content-Length": "1"}),
            "sink.headers.Content-Length",
            "set by Trellis",
        ),
        (
            json!({"Transfer-Encoding": "chunked"}),
            "sink.headers.Transfer-Encoding",
            "HTTP client",
        ),
        (
            json!({"bad name": "x"}),
            "sink.headers.bad name",
            "not a valid HTTP header name",
        ),
        (
            json!({"X-Ok": "line\nbreak"}),
            "sink.headers.X-Ok",
            "not a valid HTTP header value",
        ),
        (
            json!({"X-Dup": "1", "x-dup": "2"}),
            "sink.headers.x-dup",
            "case-insensitive",
        ),
        (
            json!({"X-Num": 3}),
            "sink.headers.X-Num",
            "expected a string",
        ),
    ];
    for (headers, field, message_part) in cases {
        check_sink_error(
            json!({"urls": ["https://example.com/"], "headers": headers}),
            field,
            message_part,
        );
    }
}

#[test]
fn sink_type_errors_name_the_field() {
    let url = json!(["https://example.com/"]);
    check_sink_error(json!({}), "sink.urls", "is required");
    check_sink_error(json!("https://example.com/"), "sink", "a sink object");
    check_sink_error(
        json!([["https://example.com/"]]),
        "sink",
        "expected an object",
    );
    check_sink_error(
        json!({"urls": url, "strategy": "fanout"}),
        "sink.strategy",
        "round_robin",
    );
    check_sink_error(
        json!({"urls": url, "mode": "batched"}),
        "sink.mode",
        "structured",
    );
    check_sink_error(
        json!({"urls": url, "validate": "yes"}),
        "sink.validate",
        "a boolean",
    );
    check_sink_error(json!({"urls": url, "secret": 7}), "sink.secret", "a string");
}

#[test]
fn unknown_fields_are_named_at_every_level() {
    check_sink_error(
        json!({"urls": ["https://example.com/"], "url": "x"}),
        "sink.url",
        "unknown field",
    );
    let cases = [
        (json!({"retries": 3}), "delivery.retries"),
        (json!({"backoff": {"factor": 2}}), "delivery.backoff.factor"),
        (
            json!({"concurrency": {"min": 1, "initial": 2}}),
            "delivery.concurrency.initial",
        ),
        (
            json!({"breaker": {"timeout_ms": 1}}),
            "delivery.breaker.timeout_ms",
        ),
        (
            json!({"batch": {"max_bytes": 1}}),
            "delivery.batch.max_bytes",
        ),
    ];
    for (delivery, field) in cases {
        check_delivery_error(delivery, field, "unknown field");
    }
}

#[test]
fn delivery_type_errors_name_the_field() {
    let cases = [
        (
            json!({"max_attempts": "three"}),
            "delivery.max_attempts",
            "expected u32",
        ),
        (
            json!({"max_attempts": -1}),
            "delivery.max_attempts",
            "expected u32",
        ),
        (
            json!({"backoff": {"jitter": 1}}),
            "delivery.backoff.jitter",
            "a boolean",
        ),
        (
            json!({"backoff": 5}),
            "delivery.backoff",
            "a backoff object",
        ),
        (
            json!({"concurrency": -1}),
            "delivery.concurrency",
            "a fixed limit",
        ),
        (
            json!({"concurrency": 2.5}),
            "delivery.concurrency",
            "a fixed limit",
        ),
        (
            json!({"concurrency": "auto"}),
            "delivery.concurrency",
            "a fixed limit",
        ),
        (
            json!({"concurrency": {"max": "many"}}),
            "delivery.concurrency.max",
            "expected usize",
        ),
        (
            json!({"retry_on": [404, 70_000]}),
            "delivery.retry_on[1]",
            "expected u16",
        ),
        (json!([]), "delivery", "expected an object"),
        (
            json!({"backoff": [500, 2000]}),
            "delivery.backoff",
            "expected an object",
        ),
        (
            json!({"breaker": [1]}),
            "delivery.breaker",
            "expected an object",
        ),
        (
            json!({"batch": [10, 100]}),
            "delivery.batch",
            "expected an object",
        ),
        (
            json!({"concurrency": [1, 2]}),
            "delivery.concurrency",
            "a fixed limit",
        ),
        (json!("fast"), "delivery", "a delivery object"),
    ];
    for (delivery, field, message_part) in cases {
        check_delivery_error(delivery, field, message_part);
    }
}

#[test]
fn refuses_out_of_range_delivery_settings() {
    let cases = [
        (
            json!({"max_attempts": 0}),
            "delivery.max_attempts",
            "between 1 and 1000; got 0",
        ),
        (
            json!({"max_attempts": 1001}),
            "delivery.max_attempts",
            "got 1001",
        ),
        (
            json!({"max_delivery_ms": 0}),
            "delivery.max_delivery_ms",
            "between 1",
        ),
        (
            json!({"max_delivery_ms": MAX_DELIVERY_MS + 1}),
            "delivery.max_delivery_ms",
            "between 1",
        ),
        (
            json!({"backoff": {"initial_ms": 0}}),
            "delivery.backoff.initial_ms",
            "between 1",
        ),
        (
            json!({"backoff": {"max_ms": MAX_BACKOFF_MS + 1}}),
            "delivery.backoff.max_ms",
            "between 1",
        ),
        (
            json!({"backoff": {"initial_ms": 5000, "max_ms": 2000}}),
            "delivery.backoff.initial_ms",
            "must not exceed delivery.backoff.max_ms (2000); got 5000",
        ),
        (
            json!({"backoff": {"multiplier": 0.5}}),
            "delivery.backoff.multiplier",
            "between 1.0 and 10.0; got 0.5",
        ),
        (
            json!({"backoff": {"multiplier": 11}}),
            "delivery.backoff.multiplier",
            "got 11",
        ),
        (
            json!({"retry_after_max_ms": MAX_RETRY_AFTER_MS + 1}),
            "delivery.retry_after_max_ms",
            "between 0",
        ),
        (
            json!({"connect_timeout_ms": 0}),
            "delivery.connect_timeout_ms",
            "between 1",
        ),
        (
            json!({"request_timeout_ms": 0}),
            "delivery.request_timeout_ms",
            "between 1",
        ),
        (
            json!({"max_delivery_ms": 10_000}),
            "delivery.request_timeout_ms",
            "must not exceed delivery.max_delivery_ms (10000); got 30000",
        ),
        (
            json!({"concurrency": 0}),
            "delivery.concurrency",
            "between 1 and 1024; got 0",
        ),
        (
            json!({"concurrency": 1025}),
            "delivery.concurrency",
            "got 1025",
        ),
        (
            json!({"concurrency": {"min": 0}}),
            "delivery.concurrency.min",
            "between 1",
        ),
        (
            json!({"concurrency": {"max": 2000}}),
            "delivery.concurrency.max",
            "between 1 and 1024",
        ),
        (
            json!({"concurrency": {"min": 100}}),
            "delivery.concurrency.min",
            "must not exceed delivery.concurrency.max (64); got 100",
        ),
        (
            json!({"breaker": {"failure_threshold": 100_001}}),
            "delivery.breaker.failure_threshold",
            "between 0 and 100000",
        ),
        (
            json!({"breaker": {"failure_ratio": 1.5}}),
            "delivery.breaker.failure_ratio",
            "between 0.0 and 1.0; got 1.5",
        ),
        (
            json!({"breaker": {"failure_ratio": -0.1}}),
            "delivery.breaker.failure_ratio",
            "got -0.1",
        ),
        (
            json!({"breaker": {"min_requests": 0}}),
            "delivery.breaker.min_requests",
            "between 1",
        ),
        (
            json!({"breaker": {"window_ms": 0}}),
            "delivery.breaker.window_ms",
            "between 1",
        ),
        (
            json!({"breaker": {"cool_down_ms": 0}}),
            "delivery.breaker.cool_down_ms",
            "between 1",
        ),
        (
            json!({"batch": {"max_events": 0}}),
            "delivery.batch.max_events",
            "between 1 and 1000",
        ),
        (
            json!({"batch": {"max_wait_ms": 0}}),
            "delivery.batch.max_wait_ms",
            "between 1 and 60000",
        ),
        (
            json!({"retry_on": [99]}),
            "delivery.retry_on[0]",
            "100 to 599; got 99",
        ),
        (
            json!({"drop_on": [404, 600]}),
            "delivery.drop_on[1]",
            "100 to 599; got 600",
        ),
        (
            json!({"retry_on": [404, 204]}),
            "delivery.retry_on[1]",
            "204 means success",
        ),
        (
            json!({"drop_on": [410, 410]}),
            "delivery.drop_on[1]",
            "already listed at delivery.drop_on[0]",
        ),
        (
            json!({"retry_on": [404, 409], "drop_on": [400, 409]}),
            "delivery.drop_on[1]",
            "409 is also in delivery.retry_on",
        ),
    ];
    for (delivery, field, message_part) in cases {
        check_delivery_error(delivery, field, message_part);
    }
}

#[test]
fn edges_of_the_ranges_are_accepted() {
    let delivery = json!({
        "max_attempts": 1,
        "max_delivery_ms": 1,
        "request_timeout_ms": 1,
        "backoff": {"initial_ms": 7, "max_ms": 7, "multiplier": 1.0},
        "retry_after_max_ms": 0,
        "concurrency": {"min": 1024, "max": 1024},
        "breaker": {"failure_threshold": 0, "failure_ratio": 0.0},
        "batch": {"max_events": 1000, "max_wait_ms": 1},
        "retry_on": [100, 599],
        "drop_on": [199, 300],
    });
    assert!(DeliverySpec::from_json(&delivery, "delivery").is_ok());
}

#[test]
fn validate_catches_what_json_cannot_express() {
    let mut spec = DeliverySpec::default();
    spec.backoff.multiplier = f64::NAN;
    assert_eq!(
        spec.validate("delivery").map_err(|error| error.field),
        Err("delivery.backoff.multiplier".to_owned())
    );
    spec.backoff.multiplier = f64::INFINITY;
    assert!(spec.validate("delivery").is_err());
    let mut spec = DeliverySpec::default();
    spec.breaker.failure_ratio = f64::NAN;
    assert!(spec.validate("delivery").is_err());
}

#[test]
fn concurrency_is_a_number_or_an_object() {
    let fixed = DeliverySpec::from_json(&json!({"concurrency": 8}), "delivery").expect("valid");
    assert_eq!(fixed.concurrency, ConcurrencySpec::Fixed(8));
    let adaptive =
        DeliverySpec::from_json(&json!({"concurrency": {"min": 2, "max": 16}}), "delivery")
            .expect("valid");
    assert_eq!(
        adaptive.concurrency,
        ConcurrencySpec::Adaptive { min: 2, max: 16 }
    );
    let partial =
        DeliverySpec::from_json(&json!({"concurrency": {"max": 8}}), "delivery").expect("valid");
    assert_eq!(
        partial.concurrency,
        ConcurrencySpec::Adaptive { min: 1, max: 8 }
    );
    // Each serialises back the way it was written.
    assert_eq!(
        serde_json::to_value(fixed).expect("serialisable")["concurrency"],
        json!(8)
    );
    assert_eq!(
        serde_json::to_value(adaptive).expect("serialisable")["concurrency"],
        json!({"min": 2, "max": 16})
    );
}

#[test]
fn merge_patch_changes_only_what_it_names() {
    let current = DeliverySpec::from_json(
        &json!({"max_attempts": 4, "backoff": {"initial_ms": 500}, "batch": {"max_events": 10}}),
        "delivery",
    )
    .expect("valid");
    let patched = current
        .patched(&json!({"backoff": {"multiplier": 3.0}}), "delivery")
        .expect("valid patch");
    assert_eq!(patched.backoff.multiplier, 3.0);
    assert_eq!(patched.backoff.initial_ms, 500);
    assert_eq!(patched.max_attempts, 4);
    assert_eq!(patched.batch, current.batch);
    assert_eq!(
        current.patched(&json!({}), "delivery").as_ref(),
        Ok(&current)
    );
}

#[test]
fn merge_patch_null_goes_back_to_the_default() {
    let current = DeliverySpec::from_json(
        &json!({"max_attempts": 4, "batch": {"max_events": 10}}),
        "delivery",
    )
    .expect("valid");
    let patched = current
        .patched(&json!({"batch": null, "max_attempts": null}), "delivery")
        .expect("valid patch");
    assert_eq!(patched.batch, None);
    assert_eq!(patched, DeliverySpec::default());
    let batched = patched
        .patched(&json!({"batch": {"max_wait_ms": 50}}), "delivery")
        .expect("valid patch");
    assert_eq!(
        batched.batch,
        Some(BatchSpec {
            max_events: 100,
            max_wait_ms: 50
        })
    );
}

#[test]
fn merge_patch_switches_concurrency_forms() {
    let current = DeliverySpec::default();
    let fixed = current
        .patched(&json!({"concurrency": 4}), "delivery")
        .expect("valid patch");
    assert_eq!(fixed.concurrency, ConcurrencySpec::Fixed(4));
    let adaptive = fixed
        .patched(&json!({"concurrency": {"max": 8}}), "delivery")
        .expect("valid patch");
    assert_eq!(
        adaptive.concurrency,
        ConcurrencySpec::Adaptive { min: 1, max: 8 }
    );
}

#[test]
fn merge_patch_is_validated() {
    let current = DeliverySpec::default();
    let error = current
        .patched(&json!({"backoff": {"jitterr": false}}), "delivery")
        .expect_err("unknown key");
    assert_eq!(error.field, "delivery.backoff.jitterr");
    let error = current
        .patched(&json!({"backoff": {"max_ms": 10}}), "delivery")
        .expect_err("initial above max");
    assert_eq!(error.field, "delivery.backoff.initial_ms");
    let error = current
        .patched(&json!({"backoff": {"multiplier": 0.5}}), "delivery")
        .expect_err("multiplier too small");
    assert_eq!(
        error.to_string(),
        "delivery.backoff.multiplier: must be between 1.0 and 10.0; got 0.5"
    );
}

#[test]
fn an_empty_prefix_gives_bare_paths() {
    let error =
        DeliverySpec::from_json(&json!({"backoff": {"multiplier": 0.5}}), "").expect_err("invalid");
    assert_eq!(error.field, "backoff.multiplier");
    let error = SinkSpec::from_json(&json!({"urls": ["https://example.com/", 1]}), "")
        .expect_err("invalid");
    assert_eq!(error.field, "urls[1]");
    let error = SinkSpec::from_json(&json!({}), "").expect_err("invalid");
    assert_eq!(error.field, "urls");
    let error = SinkSpec::from_json(&json!(1), "").expect_err("invalid");
    assert_eq!(error.field, "");
}

#[test]
fn names_match_their_serde_form() {
    for strategy in [Strategy::RoundRobin, Strategy::Broadcast] {
        assert_eq!(
            serde_json::to_value(strategy).expect("serialisable"),
            json!(strategy.as_str())
        );
    }
    for mode in [Mode::Binary, Mode::Structured] {
        assert_eq!(
            serde_json::to_value(mode).expect("serialisable"),
            json!(mode.as_str())
        );
    }
}
