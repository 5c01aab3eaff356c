//! Batched content mode: a JSON array of structured events. Errors name the failing event's
//! position in the array.

use trellis_cloudevents::parse_batch;

use crate::event_json;

/// Checks that `body` is rejected with `index` set, `attribute` named, and a message containing
/// `message`.
#[track_caller]
fn check_rejected(body: &str, index: Option<usize>, attribute: Option<&str>, message: &str) {
    let error = parse_batch(body.as_bytes()).expect_err("batch must be rejected");
    assert_eq!(error.index, index, "{error}");
    assert_eq!(error.attribute.as_deref(), attribute, "{error}");
    assert!(
        error.message.contains(message),
        "expected {message:?} in {:?}",
        error.message
    );
}

#[test]
fn parses_every_event_in_order() {
    let first = event_json(&[("id", Some("\"a\""))]);
    let second = event_json(&[("id", Some("\"b\"")), ("data", Some("[1]"))]);
    let events = parse_batch(format!("[{first}, {second}]").as_bytes()).expect("valid batch");
    let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn rejects_empty_batch() {
    check_rejected(
        " [ ] ",
        None,
        None,
        "a batch must hold at least one event; got an empty array",
    );
}

#[test]
fn names_index_of_invalid_event() {
    let good = event_json(&[]);
    let bad = event_json(&[("time", Some("\"yesterday\""))]);
    check_rejected(
        &format!("[{good},{good},{bad}]"),
        Some(2),
        Some("time"),
        "batch event at index 2: attribute `time` must be an RFC 3339 timestamp",
    );
}

#[test]
fn names_index_of_event_missing_an_attribute() {
    let bad = event_json(&[("source", None)]);
    check_rejected(
        &format!("[{bad}]"),
        Some(0),
        Some("source"),
        "batch event at index 0: required attribute `source` is missing",
    );
}

#[test]
fn names_index_of_element_that_is_not_an_object() {
    let good = event_json(&[]);
    check_rejected(
        &format!("[{good}, 5]"),
        Some(1),
        None,
        "batch event at index 1: must be a JSON object holding one event; got a number",
    );
}

#[test]
fn names_index_of_syntax_error_inside_an_event() {
    let good = event_json(&[]);
    check_rejected(
        &format!("[{good}, {{\"id\": tru]"),
        Some(1),
        None,
        "batch event at index 1: the body is not valid JSON",
    );
}

#[test]
fn rejects_object_body_and_points_to_structured_mode() {
    let body = event_json(&[]);
    check_rejected(
        &body,
        None,
        None,
        "a batch body must be a JSON array of events; got a JSON object (send a single event as application/cloudevents+json)",
    );
}

#[test]
fn rejects_empty_body() {
    check_rejected("", None, None, "the body is empty");
}
