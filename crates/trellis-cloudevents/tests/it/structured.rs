//! Structured content mode: how the JSON event format maps `data`, and how a body that is not
//! one JSON object is reported.

use bytes::Bytes;
use trellis_cloudevents::{CloudEvent, Data, parse_structured};

use crate::event_json;

#[track_caller]
fn parse(changes: &[(&str, Option<&str>)]) -> CloudEvent {
    let body = event_json(changes);
    match parse_structured(body.as_bytes()) {
        Ok(event) => event,
        Err(error) => panic!("parsing {body}: {error}"),
    }
}

/// Checks that `body` is rejected as a whole (no attribute named) with a message containing
/// `message`.
#[track_caller]
fn check_rejected(body: &str, message: &str) {
    let error = parse_structured(body.as_bytes()).expect_err("body must be rejected");
    assert_eq!(error.attribute, None, "{error}");
    assert!(
        error.message.contains(message),
        "expected {message:?} in {:?}",
        error.message
    );
}

#[track_caller]
fn json_text(data: Option<&Data>) -> &str {
    match data {
        Some(Data::Json(raw)) => raw.get(),
        other => panic!("expected JSON data, got {other:?}"),
    }
}

#[test]
fn keeps_json_data_as_its_text() {
    let event = parse(&[
        ("datacontenttype", Some("\"application/json\"")),
        ("data", Some("{ \"b\": 1,  \"a\": [true, null] }")),
    ]);
    assert_eq!(
        json_text(event.data.as_ref()),
        "{ \"b\": 1,  \"a\": [true, null] }"
    );
}

#[test]
fn reads_data_as_json_when_datacontenttype_is_absent() {
    let event = parse(&[("data", Some("\"just a string\""))]);
    assert_eq!(json_text(event.data.as_ref()), "\"just a string\"");
}

#[test]
fn reads_data_as_json_for_json_suffix_and_text_json() {
    for content_type in [
        "application/cloudevents+json",
        "application/vnd.foo+JSON; v=1",
        "text/json",
    ] {
        let content_type = format!("{content_type:?}");
        let event = parse(&[
            ("datacontenttype", Some(&content_type)),
            ("data", Some("\"s\"")),
        ]);
        assert_eq!(json_text(event.data.as_ref()), "\"s\"", "{content_type}");
    }
}

#[test]
fn reads_string_data_as_text_for_non_json_content_type() {
    let event = parse(&[
        ("datacontenttype", Some("\"text/xml\"")),
        ("data", Some("\"<much wow=\\\"xml\\\"/>\"")),
    ]);
    assert_eq!(
        event.data,
        Some(Data::Text("<much wow=\"xml\"/>".to_owned()))
    );
}

#[test]
fn keeps_non_string_data_as_json_for_non_json_content_type() {
    let event = parse(&[
        ("datacontenttype", Some("\"text/plain\"")),
        ("data", Some("[1, 2]")),
    ]);
    assert_eq!(json_text(event.data.as_ref()), "[1, 2]");
}

#[test]
fn keeps_null_data_as_json_null() {
    let event = parse(&[("data", Some("null"))]);
    assert_eq!(json_text(event.data.as_ref()), "null");
}

#[test]
fn decodes_data_base64_to_binary() {
    let event = parse(&[
        ("datacontenttype", Some("\"application/octet-stream\"")),
        ("data_base64", Some("\"AAEC/w==\"")),
    ]);
    assert_eq!(
        event.data,
        Some(Data::Binary(Bytes::from_static(&[0, 1, 2, 255])))
    );
}

#[test]
fn accepts_data_base64_without_padding() {
    let event = parse(&[("data_base64", Some("\"aGk\""))]);
    assert_eq!(event.data, Some(Data::Binary(Bytes::from_static(b"hi"))));
}

#[test]
fn treats_null_data_base64_as_absent() {
    let event = parse(&[("data_base64", Some("null"))]);
    assert_eq!(event.data, None);
}

#[test]
fn reads_escaped_member_names() {
    let body = r#"{"specversion":"1.0","\u0069d":"1","source":"/s","type":"t"}"#;
    let event = parse_structured(body.as_bytes()).expect("escaped name is still `id`");
    assert_eq!(event.id, "1");
}

#[test]
fn ignores_member_order() {
    let body = r#"{"data":{"x":1},"type":"t","source":"/s","id":"1","specversion":"1.0"}"#;
    let event = parse_structured(body.as_bytes()).expect("order does not matter");
    assert_eq!(json_text(event.data.as_ref()), "{\"x\":1}");
}

#[test]
fn rejects_array_body_and_points_to_batch_mode() {
    check_rejected(
        "[{}]",
        "must be a JSON object holding one event; got an array (send several events as application/cloudevents-batch+json)",
    );
}

#[test]
fn rejects_string_body() {
    check_rejected(
        "\"hello\"",
        "must be a JSON object holding one event; got a string",
    );
}

#[test]
fn rejects_empty_body() {
    check_rejected("  \n", "the body is empty");
}

#[test]
fn rejects_invalid_json_with_position() {
    check_rejected(
        "{\"id\": ",
        "the body is not valid JSON: EOF while parsing a value at line 1 column 7",
    );
}

#[test]
fn rejects_trailing_characters() {
    let body = format!("{} {{}}", event_json(&[]));
    check_rejected(&body, "trailing characters");
}
