//! The table and key/value views, on answers shaped like the API's.

use serde_json::{Value, json};

use super::{subscription_details, subscription_table, table};

/// A `GET /v1/subscriptions/{name}` answer as the API gives it (keys sorted).
fn answer_with_status() -> Value {
    json!({
        "dead_letter_topic": "billing.dlq",
        "delivery": {
            "backoff": {"initial_ms": 500, "jitter": true, "max_ms": 60000, "multiplier": 2.0},
            "concurrency": {"max": 64, "min": 1},
            "drop_on": [],
            "max_attempts": 5
        },
        "name": "billing",
        "paused": false,
        "sink": {
            "headers": {"authorization": "***"},
            "mode": "binary",
            "secret": "***",
            "strategy": "round_robin",
            "urls": ["http://127.0.0.1:8080/hook", "http://127.0.0.1:8081/hook"]
        },
        "start": "latest",
        "status": {
            "committed_offset": 7,
            "dead_lettered": 1,
            "delivered": 6,
            "in_flight": 0,
            "lag": 2,
            "paused": false,
            "retried": 3,
            "urls": [
                {"circuit": "closed", "concurrency": 4, "in_flight": 0, "paused": null, "url": "http://127.0.0.1:8080/hook"},
                {"circuit": "open", "concurrency": 1, "in_flight": 0, "paused": "answered 410 Gone", "url": "http://127.0.0.1:8081/hook"}
            ]
        },
        "topic": "orders"
    })
}

#[track_caller]
fn check_table(subscriptions: Value, expected: &str) {
    let subscriptions = subscriptions.as_array().expect("a list").clone();
    assert_eq!(subscription_table(&subscriptions), expected);
}

#[test]
fn table_pads_columns_and_trims_line_ends() {
    let rows = vec![
        vec!["a".to_owned(), "long cell".to_owned(), "x".to_owned()],
        vec!["bbbb".to_owned(), "c".to_owned(), "y".to_owned()],
    ];
    assert_eq!(
        table(&["ONE", "TWO", "THREE"], &rows),
        "ONE   TWO        THREE\n\
         a     long cell  x\n\
         bbbb  c          y\n"
    );
}

#[test]
fn an_empty_list_is_the_header_alone() {
    check_table(json!([]), "NAME  TOPIC  URLS  PAUSED\n");
}

#[test]
fn list_shows_the_first_url_and_how_many_more() {
    check_table(
        json!([
            {"name": "billing", "topic": "orders", "paused": false,
             "sink": {"urls": ["http://127.0.0.1:8080/hook", "http://b/", "http://c/"]}},
            {"name": "audit", "topic": "orders.eu", "paused": true,
             "sink": {"urls": ["http://127.0.0.1:9/"]}},
        ]),
        "NAME     TOPIC      URLS                                  PAUSED\n\
         billing  orders     http://127.0.0.1:8080/hook (+2 more)  false\n\
         audit    orders.eu  http://127.0.0.1:9/                   true\n",
    );
}

#[test]
fn list_shows_missing_fields_as_a_dash() {
    check_table(
        json!([{"name": "odd"}]),
        "NAME  TOPIC  URLS  PAUSED\n\
         odd   -      -     -\n",
    );
}

#[test]
fn details_show_settings_in_sections_and_status_per_url() {
    let expected = "\
name:               billing
topic:              orders
paused:             false
start:              latest
dead_letter_topic:  billing.dlq
sink:
  urls:             http://127.0.0.1:8080/hook
                    http://127.0.0.1:8081/hook
  strategy:         round_robin
  mode:             binary
  headers:          authorization=***
  secret:           ***
delivery:
  max_attempts:     5
  backoff:          initial_ms=500 jitter=true max_ms=60000 multiplier=2.0
  concurrency:      max=64 min=1
  drop_on:          -
status:
  paused:           false
  delivered:        6
  retried:          3
  dead_lettered:    1
  in_flight:        0
  committed_offset: 7
  lag:              2
  urls:
    http://127.0.0.1:8080/hook  circuit=closed concurrency=4 in_flight=0 paused=-
    http://127.0.0.1:8081/hook  circuit=open concurrency=1 in_flight=0 paused=\"answered 410 Gone\"
";
    assert_eq!(subscription_details(&answer_with_status()), expected);
}

#[test]
fn details_without_status_are_the_created_settings() {
    let mut answer = answer_with_status();
    if let Some(object) = answer.as_object_mut() {
        object.remove("status");
    }
    let text = subscription_details(&answer);
    assert!(text.starts_with("name:"), "{text}");
    assert!(!text.contains("status:"), "{text}");
    assert!(text.contains("dead_letter_topic: billing.dlq\n"), "{text}");
}

#[test]
fn details_show_fields_added_later_after_the_known_ones() {
    let text = subscription_details(&json!({
        "name": "s", "topic": "t", "filter": {"type": "com.example"}, "labels": ["a", "b"]
    }));
    assert_eq!(
        text,
        "name:   s\n\
         topic:  t\n\
         filter:\n  \
           type: com.example\n\
         labels: a\n        \
                 b\n"
    );
}

#[test]
fn details_hide_every_header_value_even_if_the_server_shows_one() {
    let mut answer = answer_with_status();
    answer["sink"]["headers"] = json!({
        "X-JWT": "jwt-in-clear",
        "X-Session": "session-in-clear",
        "authorization": "***",
    });
    let shown = subscription_details(&answer);
    assert!(
        shown.contains("headers:          X-JWT=*** X-Session=*** authorization=***"),
        "{shown}"
    );
    assert!(!shown.contains("in-clear"), "{shown}");
}
