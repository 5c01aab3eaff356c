//! One test per validation rule, each a structured event that differs from a valid one in a
//! single member. The rules are shared by every content mode; `binary` checks that they are
//! applied there too.

use trellis_cloudevents::{CloudEvent, ExtensionValue, parse_structured};

use crate::event_json;

/// Parses the minimal event with `changes` applied. `Ok(())` expects it accepted;
/// `Err((attribute, message))` expects it rejected, naming `attribute`, with a message that
/// contains `message`.
#[track_caller]
fn check(changes: &[(&str, Option<&str>)], expected: Result<(), (&str, &str)>) {
    let body = event_json(changes);
    let res = parse_structured(body.as_bytes());
    match (res, expected) {
        (Ok(_), Ok(())) => {}
        (Err(error), Err((attribute, message))) => {
            assert_eq!(error.attribute.as_deref(), Some(attribute), "{error}");
            assert!(
                error.message.contains(message),
                "expected {message:?} in {:?}",
                error.message
            );
            assert_eq!(error.index, None);
        }
        (res, expected) => panic!("parsing {body}\n got {res:?}\n expected {expected:?}"),
    }
}

/// Parses the minimal event with `changes` applied, which must be accepted.
#[track_caller]
fn accepted(changes: &[(&str, Option<&str>)]) -> CloudEvent {
    let body = event_json(changes);
    match parse_structured(body.as_bytes()) {
        Ok(event) => event,
        Err(error) => panic!("parsing {body}: {error}"),
    }
}

#[test]
fn accepts_minimal_event() {
    check(&[], Ok(()));
}

#[test]
fn rejects_missing_specversion() {
    check(
        &[("specversion", None)],
        Err((
            "specversion",
            "required attribute `specversion` is missing; add a \"specversion\" member set to \"1.0\"",
        )),
    );
}

#[test]
fn rejects_missing_id() {
    check(
        &[("id", None)],
        Err(("id", "required attribute `id` is missing")),
    );
}

#[test]
fn rejects_missing_source() {
    check(
        &[("source", None)],
        Err(("source", "required attribute `source` is missing")),
    );
}

#[test]
fn rejects_missing_type() {
    check(
        &[("type", None)],
        Err(("type", "required attribute `type` is missing")),
    );
}

#[test]
fn rejects_null_required_attribute_as_missing() {
    check(
        &[("id", Some("null"))],
        Err(("id", "required attribute `id` is missing")),
    );
}

#[test]
fn rejects_specversion_other_than_1_0() {
    check(
        &[("specversion", Some("\"0.3\""))],
        Err((
            "specversion",
            "must be \"1.0\": only CloudEvents 1.0 is supported; got \"0.3\"",
        )),
    );
}

#[test]
fn reports_specversion_before_other_attributes() {
    check(
        &[
            ("specversion", Some("\"0.3\"")),
            ("time", Some("\"yesterday\"")),
            ("id", None),
        ],
        Err(("specversion", "only CloudEvents 1.0 is supported")),
    );
}

#[test]
fn rejects_empty_id() {
    check(
        &[("id", Some("\"\""))],
        Err(("id", "attribute `id` must be a non-empty string")),
    );
}

#[test]
fn rejects_empty_source() {
    check(
        &[("source", Some("\"\""))],
        Err(("source", "must be a non-empty URI-reference")),
    );
}

#[test]
fn rejects_empty_type() {
    check(
        &[("type", Some("\"\""))],
        Err(("type", "attribute `type` must be a non-empty string")),
    );
}

#[test]
fn rejects_empty_subject() {
    check(
        &[("subject", Some("\"\""))],
        Err(("subject", "attribute `subject` must be a non-empty string")),
    );
}

#[test]
fn rejects_non_string_attribute() {
    check(
        &[("id", Some("42"))],
        Err(("id", "attribute `id` must be a JSON string; got a number")),
    );
}

#[test]
fn rejects_source_with_whitespace() {
    check(
        &[("source", Some("\"my context\""))],
        Err((
            "source",
            "without spaces or control characters, such as /mycontext or https://example.com/orders; got \"my context\"",
        )),
    );
}

#[test]
fn rejects_source_with_control_character() {
    check(
        &[("source", Some("\"/a\\u0007b\""))],
        Err(("source", "got \"/a\\u{7}b\"")),
    );
}

#[test]
fn accepts_relative_and_absolute_source() {
    check(
        &[("source", Some("\"https://example.com/orders?id=1#x\""))],
        Ok(()),
    );
    check(
        &[(
            "source",
            Some("\"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66\""),
        )],
        Ok(()),
    );
}

#[test]
fn rejects_time_that_is_not_rfc3339() {
    check(
        &[("time", Some("\"yesterday\""))],
        Err((
            "time",
            "attribute `time` must be an RFC 3339 timestamp such as 2026-01-02T15:04:05Z; got \"yesterday\"",
        )),
    );
}

#[test]
fn rejects_time_without_offset() {
    check(
        &[("time", Some("\"2026-01-02T15:04:05\""))],
        Err(("time", "RFC 3339")),
    );
}

#[test]
fn keeps_time_as_given() {
    let event = accepted(&[("time", Some("\"2026-01-02T15:04:05.123456+02:00\""))]);
    assert_eq!(
        event.time.as_deref(),
        Some("2026-01-02T15:04:05.123456+02:00")
    );
}

#[test]
fn rejects_relative_dataschema() {
    check(
        &[("dataschema", Some("\"schemas/order.json\""))],
        Err((
            "dataschema",
            "must be an absolute URI such as https://example.com/schemas/order.json; got \"schemas/order.json\"",
        )),
    );
}

#[test]
fn rejects_empty_dataschema() {
    check(
        &[("dataschema", Some("\"\""))],
        Err(("dataschema", "must be an absolute URI")),
    );
}

#[test]
fn accepts_absolute_dataschema() {
    check(
        &[(
            "dataschema",
            Some("\"https://example.com/schemas/order.json\""),
        )],
        Ok(()),
    );
}

#[test]
fn rejects_datacontenttype_without_slash() {
    check(
        &[("datacontenttype", Some("\"json\""))],
        Err((
            "datacontenttype",
            "must be an RFC 2046 media type such as application/json or text/plain; charset=utf-8; got \"json\"",
        )),
    );
}

#[test]
fn rejects_empty_datacontenttype() {
    check(
        &[("datacontenttype", Some("\"\""))],
        Err(("datacontenttype", "RFC 2046")),
    );
}

#[test]
fn accepts_datacontenttype_with_parameters() {
    check(
        &[("datacontenttype", Some("\"text/plain; charset=utf-8\""))],
        Ok(()),
    );
}

#[test]
fn rejects_attribute_name_with_upper_case() {
    check(
        &[("myExtension", Some("\"x\""))],
        Err((
            "myExtension",
            "attribute name \"myExtension\" must use only lower-case letters a-z and digits 0-9, such as \"myextension\"",
        )),
    );
}

#[test]
fn rejects_attribute_name_with_punctuation() {
    check(
        &[("my-extension", Some("\"x\""))],
        Err(("my-extension", "such as \"myextension\"")),
    );
}

#[test]
fn rejects_empty_attribute_name() {
    check(
        &[("", Some("\"x\""))],
        Err(("", "attribute names must not be empty")),
    );
}

#[test]
fn accepts_attribute_name_longer_than_20_characters() {
    let event = accepted(&[("averyveryverylongextensionname", Some("\"x\""))]);
    assert!(
        event
            .extensions
            .contains_key("averyveryverylongextensionname")
    );
}

#[test]
fn does_not_reserve_extension_names() {
    let event = accepted(&[("offset", Some("7")), ("partitionkey", Some("\"a\""))]);
    assert_eq!(
        event.extensions.get("offset"),
        Some(&ExtensionValue::Integer(7))
    );
}

#[test]
fn accepts_string_boolean_and_integer_extensions() {
    let event = accepted(&[
        ("comexamplestring", Some("\"value\"")),
        ("comexampleboolean", Some("true")),
        ("comexampleinteger", Some("-5")),
    ]);
    assert_eq!(
        event.extensions.get("comexamplestring"),
        Some(&ExtensionValue::String("value".to_owned()))
    );
    assert_eq!(
        event.extensions.get("comexampleboolean"),
        Some(&ExtensionValue::Boolean(true))
    );
    assert_eq!(
        event.extensions.get("comexampleinteger"),
        Some(&ExtensionValue::Integer(-5))
    );
}

#[test]
fn accepts_integer_extension_at_range_limits() {
    let event = accepted(&[("low", Some("-2147483648")), ("high", Some("2147483647"))]);
    assert_eq!(
        event.extensions.get("low"),
        Some(&ExtensionValue::Integer(-2_147_483_648))
    );
    assert_eq!(
        event.extensions.get("high"),
        Some(&ExtensionValue::Integer(2_147_483_647))
    );
}

#[test]
fn rejects_integer_extension_above_range() {
    check(
        &[("count", Some("2147483648"))],
        Err((
            "count",
            "must be an integer from -2147483648 to 2147483647 (the CloudEvents Integer range); got 2147483648",
        )),
    );
}

#[test]
fn rejects_integer_extension_below_range() {
    check(
        &[("count", Some("-2147483649"))],
        Err(("count", "got -2147483649")),
    );
}

#[test]
fn rejects_integer_extension_beyond_64_bits() {
    let expected = "got a number that is not an integer in the CloudEvents Integer range";
    check(
        &[("count", Some("9223372036854775808"))],
        Err(("count", expected)),
    );
    check(
        &[("count", Some("18446744073709551616"))],
        Err(("count", expected)),
    );
}

#[test]
fn rejects_float_extension() {
    check(
        &[("ratio", Some("1.5"))],
        Err((
            "ratio",
            "extension attribute `ratio` must be a string, a boolean or an integer",
        )),
    );
}

#[test]
fn rejects_object_extension() {
    check(
        &[("nested", Some("{\"a\":[1,2]}"))],
        Err(("nested", "got an object")),
    );
}

#[test]
fn rejects_array_extension() {
    check(&[("list", Some("[1,2]"))], Err(("list", "got an array")));
}

#[test]
fn treats_null_extension_as_absent() {
    let event = accepted(&[("unsetextension", Some("null"))]);
    assert!(event.extensions.is_empty());
}

#[test]
fn treats_null_optional_attribute_as_absent() {
    let event = accepted(&[("subject", Some("null")), ("time", Some("null"))]);
    assert_eq!(event.subject, None);
    assert_eq!(event.time, None);
}

#[test]
fn rejects_duplicate_attribute() {
    let body = r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#;
    let error = parse_structured(body.as_bytes()).expect_err("duplicate id");
    assert_eq!(error.attribute.as_deref(), Some("id"));
    assert!(error.message.contains("appears more than once"), "{error}");
}

#[test]
fn rejects_duplicate_extension() {
    let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1,"ext":2}"#;
    let error = parse_structured(body.as_bytes()).expect_err("duplicate extension");
    assert_eq!(error.attribute.as_deref(), Some("ext"));
}

#[test]
fn rejects_data_and_data_base64_together() {
    check(
        &[("data", Some("{}")), ("data_base64", Some("\"aGk=\""))],
        Err((
            "data_base64",
            "an event carries `data` or `data_base64`, not both",
        )),
    );
}

#[test]
fn rejects_invalid_base64() {
    check(
        &[("data_base64", Some("\"not base64!\""))],
        Err(("data_base64", "must be standard base64 (RFC 4648)")),
    );
}

#[test]
fn rejects_non_string_data_base64() {
    check(
        &[("data_base64", Some("[1]"))],
        Err(("data_base64", "must be a JSON string holding base64")),
    );
}

#[test]
fn cuts_long_inputs_short_in_messages() {
    let long_time = format!("\"{}\"", "9".repeat(10_000));
    let body = event_json(&[("time", Some(&long_time))]);
    let error = parse_structured(body.as_bytes()).expect_err("bad time");
    assert!(error.message.len() < 300, "{}", error.message);
    assert!(error.message.contains("more bytes"), "{}", error.message);
}

#[test]
fn validate_rejects_hand_built_extension_named_like_an_attribute() {
    let mut event = accepted(&[]);
    event
        .extensions
        .insert("time".to_owned(), ExtensionValue::String("x".to_owned()));
    let error = event.validate().expect_err("reserved name");
    assert_eq!(error.attribute.as_deref(), Some("time"));
    assert!(error.message.contains("rename the extension"), "{error}");
}

#[test]
fn validate_accepts_parsed_events() {
    let event = accepted(&[
        ("time", Some("\"2026-01-02T15:04:05Z\"")),
        ("ext", Some("1")),
    ]);
    assert_eq!(event.validate(), Ok(()));
}
