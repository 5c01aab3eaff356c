//! `check_limits`: attribute sizes and JSON data depth, checked on events coming in.

use bytes::Bytes;
use trellis_cloudevents::{EventLimits, parse_binary, parse_structured};

use crate::{binary_headers, event_json};

fn limits() -> EventLimits {
    EventLimits {
        max_attribute_bytes: 32,
        max_json_depth: 3,
    }
}

#[test]
fn the_defaults_allow_4_kib_attributes_and_64_levels() {
    assert_eq!(
        EventLimits::default(),
        EventLimits {
            max_attribute_bytes: 4096,
            max_json_depth: 64
        }
    );
}

#[test]
fn an_attribute_over_the_size_limit_is_named() {
    for (name, value) in [
        ("id", "\"123456789012345678901234567890123\""),
        ("source", "\"/12345678901234567890123456789012\""),
        ("subject", "\"123456789012345678901234567890123\""),
        ("myext", "\"123456789012345678901234567890123\""),
    ] {
        let event =
            parse_structured(event_json(&[(name, Some(value))]).as_bytes()).expect("a valid event");
        let error = event.check_limits(&limits()).expect_err("too long");
        assert_eq!(error.attribute.as_deref(), Some(name), "{error}");
        assert!(error.message.contains("the limit is 32 bytes"), "{error}");
    }
    let at_limit = parse_structured(
        event_json(&[("id", Some("\"12345678901234567890123456789012\""))]).as_bytes(),
    )
    .expect("a valid event");
    assert_eq!(at_limit.check_limits(&limits()), Ok(()));
}

#[test]
fn json_data_deeper_than_the_limit_is_refused_naming_data() {
    let ok = parse_structured(event_json(&[("data", Some(r#"{"a":[[1]]}"#))]).as_bytes())
        .expect("valid");
    assert_eq!(ok.check_limits(&limits()), Ok(()));
    // Brackets inside strings are not nesting.
    let quoted = parse_structured(event_json(&[("data", Some(r#"["[[[[{{{{"]"#))]).as_bytes())
        .expect("valid");
    assert_eq!(quoted.check_limits(&limits()), Ok(()));

    let deep = parse_structured(event_json(&[("data", Some(r#"{"a":[[[1]]]}"#))]).as_bytes())
        .expect("valid");
    let error = deep.check_limits(&limits()).expect_err("too deep");
    assert_eq!(error.attribute.as_deref(), Some("data"));
    assert!(error.message.contains("more than 3 levels"), "{error}");
}

#[test]
fn json_data_far_deeper_than_serde_json_recursion_limit_parses_and_is_then_refused() {
    // serde_json skips raw values without a recursion limit, so parsing alone lets this through.
    let data = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let event = parse_structured(event_json(&[("data", Some(&data))]).as_bytes()).expect("valid");
    let error = event
        .check_limits(&EventLimits::default())
        .expect_err("too deep");
    assert_eq!(error.attribute.as_deref(), Some("data"));
}

#[test]
fn binary_mode_json_data_is_held_to_the_depth_limit() {
    let headers = binary_headers(&[("content-type", "application/json")]);
    let event = parse_binary(&headers, Bytes::from_static(b"[[[[1]]]]")).expect("valid");
    let error = event.check_limits(&limits()).expect_err("too deep");
    assert_eq!(error.attribute.as_deref(), Some("data"));
}

#[test]
fn a_long_extension_name_is_cut_short_in_the_error() {
    let name = "x".repeat(10_000);
    let event = parse_structured(event_json(&[(&name, Some("[1]"))]).as_bytes())
        .expect_err("an array extension");
    assert!(event.message.len() < 400, "{}", event.message);
    let attribute = event.attribute.expect("names the attribute");
    assert!(
        attribute.len() < 200 && attribute.ends_with("..."),
        "{attribute}"
    );
}
