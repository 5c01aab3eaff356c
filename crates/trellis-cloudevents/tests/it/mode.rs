//! Content-mode detection from request headers.

use trellis_cloudevents::{ContentMode, content_mode};

use crate::headers;

/// `Ok(mode)` expects that mode; `Err(message)` expects rejection with a message containing it.
#[track_caller]
fn check(pairs: &[(&str, &str)], expected: Result<ContentMode, &str>) {
    match (content_mode(&headers(pairs)), expected) {
        (Ok(mode), Ok(expected)) => assert_eq!(mode, expected),
        (Err(error), Err(message)) => {
            assert!(
                error.message.contains(message),
                "expected {message:?} in {:?}",
                error.message
            );
        }
        (res, expected) => panic!("headers {pairs:?}: got {res:?}, expected {expected:?}"),
    }
}

#[test]
fn detects_binary_mode_from_any_ce_header() {
    check(
        &[
            ("ce-specversion", "1.0"),
            ("content-type", "application/json"),
        ],
        Ok(ContentMode::Binary),
    );
    check(&[("CE-ID", "1")], Ok(ContentMode::Binary));
}

#[test]
fn detects_structured_mode() {
    check(
        &[("content-type", "application/cloudevents+json")],
        Ok(ContentMode::Structured),
    );
}

#[test]
fn detects_structured_mode_with_parameters_in_any_case() {
    check(
        &[(
            "content-type",
            "Application/CloudEvents+JSON ; charset=UTF-8",
        )],
        Ok(ContentMode::Structured),
    );
}

#[test]
fn detects_batch_mode() {
    check(
        &[(
            "content-type",
            "application/cloudevents-batch+json; charset=utf-8",
        )],
        Ok(ContentMode::Batch),
    );
}

#[test]
fn prefers_cloudevents_content_type_over_ce_headers() {
    check(
        &[
            ("content-type", "application/cloudevents+json"),
            ("ce-id", "1"),
        ],
        Ok(ContentMode::Structured),
    );
}

#[test]
fn rejects_other_event_formats() {
    check(
        &[("content-type", "application/cloudevents+xml")],
        Err(
            "only the JSON event format is supported: send Content-Type application/cloudevents+json for one event or application/cloudevents-batch+json for a batch; got \"application/cloudevents+xml\"",
        ),
    );
    check(
        &[("content-type", "application/cloudevents-batch+avro")],
        Err("only the JSON event format is supported"),
    );
}

#[test]
fn rejects_plain_json_without_ce_headers_listing_the_modes() {
    check(
        &[("content-type", "application/json")],
        Err(
            "use binary mode (ce-specversion, ce-id, ce-source and ce-type headers, with the data as the body), structured mode (Content-Type application/cloudevents+json) or batched mode (Content-Type application/cloudevents-batch+json); got Content-Type \"application/json\"",
        ),
    );
}

#[test]
fn rejects_request_without_content_type_or_ce_headers() {
    check(
        &[("host", "example.com")],
        Err("got no Content-Type and no ce- headers"),
    );
}
