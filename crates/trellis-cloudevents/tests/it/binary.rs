//! Binary content mode: attributes in `ce-*` headers, the data in the body; and the way back
//! with `to_binary_headers`.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use trellis_cloudevents::{CloudEvent, Data, ExtensionValue, parse_binary, parse_structured};

use crate::{binary_headers, event_json, headers};

#[track_caller]
fn parse(headers: &HeaderMap, body: &'static [u8]) -> CloudEvent {
    match parse_binary(headers, Bytes::from_static(body)) {
        Ok(event) => event,
        Err(error) => panic!("parsing {headers:?}: {error}"),
    }
}

/// Checks that the event with `extra` headers is rejected, naming `attribute`, with a message
/// containing `message`.
#[track_caller]
fn check_rejected(extra: &[(&str, &str)], attribute: &str, message: &str) {
    let error = parse_binary(&binary_headers(extra), Bytes::new()).expect_err("must be rejected");
    assert_eq!(error.attribute.as_deref(), Some(attribute), "{error}");
    assert!(
        error.message.contains(message),
        "expected {message:?} in {:?}",
        error.message
    );
}

#[test]
fn reads_attributes_from_ce_headers() {
    let event = parse(
        &binary_headers(&[
            ("ce-time", "2018-04-05T03:56:24Z"),
            ("ce-subject", "123"),
            ("ce-comexampleext", "v"),
        ]),
        b"",
    );
    assert_eq!(event.id, "1");
    assert_eq!(event.source, "/mycontext");
    assert_eq!(event.ty, "com.example.created");
    assert_eq!(event.specversion, "1.0");
    assert_eq!(event.time.as_deref(), Some("2018-04-05T03:56:24Z"));
    assert_eq!(event.subject.as_deref(), Some("123"));
    assert_eq!(
        event.extensions.get("comexampleext"),
        Some(&ExtensionValue::String("v".to_owned()))
    );
}

#[test]
fn matches_header_names_case_insensitively() {
    let headers = headers(&[
        ("CE-SpecVersion", "1.0"),
        ("Ce-Id", "1"),
        ("CE-SOURCE", "/s"),
        ("ce-Type", "t"),
        ("CE-MyExt", "x"),
    ]);
    let event = parse(&headers, b"");
    assert_eq!(event.id, "1");
    assert_eq!(
        event.extensions.get("myext"),
        Some(&ExtensionValue::String("x".to_owned()))
    );
}

#[test]
fn carries_extension_values_as_strings() {
    let event = parse(
        &binary_headers(&[("ce-count", "5"), ("ce-flag", "true")]),
        b"",
    );
    assert_eq!(
        event.extensions.get("count"),
        Some(&ExtensionValue::String("5".to_owned()))
    );
    assert_eq!(
        event.extensions.get("flag"),
        Some(&ExtensionValue::String("true".to_owned()))
    );
}

#[test]
fn percent_decodes_header_values() {
    let event = parse(
        &binary_headers(&[("ce-subject", "Hello%20World%21%20%22caf%C3%A9%22%20100%25")]),
        b"",
    );
    assert_eq!(event.subject.as_deref(), Some("Hello World! \"café\" 100%"));
}

#[test]
fn rejects_malformed_percent_escape() {
    check_rejected(
        &[("ce-subject", "100%")],
        "subject",
        "header `ce-subject` has a malformed percent-escape at byte 3",
    );
    check_rejected(
        &[("ce-subject", "%zz")],
        "subject",
        "a literal `%` is written %25",
    );
}

#[test]
fn rejects_value_that_is_not_utf8_after_decoding() {
    check_rejected(
        &[("ce-subject", "%C3%28")],
        "subject",
        "header `ce-subject` must be UTF-8 once percent-decoded",
    );
}

#[test]
fn rejects_duplicate_header() {
    check_rejected(
        &[("ce-id", "2")],
        "id",
        "header `ce-id` appears more than once",
    );
}

#[test]
fn rejects_ce_datacontenttype_header() {
    check_rejected(
        &[("ce-datacontenttype", "application/json")],
        "datacontenttype",
        "travels as the Content-Type header",
    );
}

#[test]
fn rejects_ce_data_header() {
    check_rejected(&[("ce-data", "x")], "data", "the data is the request body");
}

#[test]
fn rejects_invalid_extension_name() {
    check_rejected(
        &[("ce-my-ext", "x")],
        "my-ext",
        "must use only lower-case letters a-z and digits 0-9, such as \"myext\"",
    );
}

#[test]
fn applies_the_shared_validation_rules() {
    check_rejected(
        &[("ce-time", "yesterday")],
        "time",
        "must be an RFC 3339 timestamp",
    );
}

#[test]
fn rejects_other_specversion() {
    let headers = headers(&[
        ("ce-specversion", "0.3"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ]);
    let error = parse_binary(&headers, Bytes::new()).expect_err("0.3");
    assert_eq!(error.attribute.as_deref(), Some("specversion"));
    assert!(
        error.message.contains("only CloudEvents 1.0 is supported"),
        "{error}"
    );
}

#[test]
fn names_the_header_to_add_for_a_missing_attribute() {
    let headers = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ]);
    let error = parse_binary(&headers, Bytes::new()).expect_err("no id");
    assert_eq!(error.attribute.as_deref(), Some("id"));
    assert!(error.message.contains("add a `ce-id` header"), "{error}");
}

#[test]
fn takes_datacontenttype_from_content_type() {
    let event = parse(
        &binary_headers(&[("content-type", "text/plain; charset=utf-8")]),
        b"hi",
    );
    assert_eq!(
        event.datacontenttype.as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn rejects_invalid_content_type() {
    check_rejected(
        &[("content-type", "json")],
        "datacontenttype",
        "must be an RFC 2046 media type",
    );
}

#[test]
fn reads_empty_body_as_no_data() {
    let event = parse(
        &binary_headers(&[("content-type", "application/json")]),
        b"",
    );
    assert_eq!(event.data, None);
}

#[test]
fn reads_json_body_as_json_data() {
    let event = parse(
        &binary_headers(&[("content-type", "application/json")]),
        b" {\"a\": 1}\n",
    );
    match &event.data {
        Some(Data::Json(raw)) => assert_eq!(raw.get(), "{\"a\": 1}"),
        other => panic!("expected JSON, got {other:?}"),
    }
}

#[test]
fn keeps_invalid_json_body_as_binary() {
    let event = parse(
        &binary_headers(&[("content-type", "application/json")]),
        b"{not json",
    );
    assert_eq!(
        event.data,
        Some(Data::Binary(Bytes::from_static(b"{not json")))
    );
}

#[test]
fn reads_text_body_as_text() {
    let event = parse(&binary_headers(&[("content-type", "text/plain")]), b"hello");
    assert_eq!(event.data, Some(Data::Text("hello".to_owned())));
}

#[test]
fn keeps_non_utf8_text_body_as_binary() {
    let event = parse(
        &binary_headers(&[("content-type", "text/plain; charset=latin1")]),
        b"caf\xe9",
    );
    assert_eq!(
        event.data,
        Some(Data::Binary(Bytes::from_static(b"caf\xe9")))
    );
}

#[test]
fn reads_other_bodies_as_binary() {
    let event = parse(
        &binary_headers(&[("content-type", "application/octet-stream")]),
        b"\x00\x01",
    );
    assert_eq!(
        event.data,
        Some(Data::Binary(Bytes::from_static(b"\x00\x01")))
    );
    let event = parse(&binary_headers(&[]), b"{\"a\":1}");
    assert_eq!(
        event.data,
        Some(Data::Binary(Bytes::from_static(b"{\"a\":1}")))
    );
}

#[test]
fn writes_binary_headers_that_parse_back_to_the_same_event() {
    let headers = binary_headers(&[
        ("ce-subject", "a b%22c%25%C3%A9%0A"),
        ("ce-time", "2026-01-02T15:04:05+02:00"),
        ("ce-dataschema", "https://example.com/s.json"),
        ("ce-ext", "x y"),
        ("content-type", "application/json"),
    ]);
    let event = parse(&headers, b"{\"a\": [1, 2]}");
    let message = event.to_binary_headers().expect("parsed events encode");
    assert_eq!(
        message
            .headers
            .get("ce-subject")
            .map(|value| value.as_bytes()),
        Some(&b"a%20b%22c%25%C3%A9%0A"[..])
    );
    let back = parse_binary(&message.headers, message.body).expect("encoded event parses");
    assert_eq!(back, event);
}

#[test]
fn writes_typed_extensions_as_strings() {
    let body = event_json(&[("count", Some("-3")), ("flag", Some("false"))]);
    let event = parse_structured(body.as_bytes()).expect("valid");
    let message = event.to_binary_headers().expect("valid");
    assert_eq!(
        message
            .headers
            .get("ce-count")
            .map(|value| value.as_bytes()),
        Some(&b"-3"[..])
    );
    assert_eq!(
        message.headers.get("ce-flag").map(|value| value.as_bytes()),
        Some(&b"false"[..])
    );
}

#[test]
fn writes_json_content_type_for_json_data_without_datacontenttype() {
    let body = event_json(&[("data", Some("{\"a\":1}"))]);
    let event = parse_structured(body.as_bytes()).expect("valid");
    let message = event.to_binary_headers().expect("valid");
    assert_eq!(
        message
            .headers
            .get(CONTENT_TYPE)
            .map(|value| value.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(message.body, Bytes::from_static(b"{\"a\":1}"));
}

#[test]
fn refuses_to_write_hand_built_extension_with_bad_name() {
    let body = event_json(&[]);
    let mut event = parse_structured(body.as_bytes()).expect("valid");
    event
        .extensions
        .insert("Bad Name".to_owned(), ExtensionValue::Boolean(true));
    let error = event.to_binary_headers().expect_err("bad name");
    assert_eq!(error.attribute.as_deref(), Some("Bad Name"));
}

#[test]
fn a_repeated_content_type_is_refused() {
    let mut headers = binary_headers(&[("content-type", "text/plain")]);
    headers.append(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let error = parse_binary(&headers, Bytes::from_static(b"[1]")).expect_err("ambiguous");
    assert_eq!(error.attribute.as_deref(), Some("datacontenttype"));
    assert!(error.message.contains("more than once"), "{error}");
}
