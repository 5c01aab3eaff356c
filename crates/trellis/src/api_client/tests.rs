//! The pure parts of the API client: server URLs, error lines and path segments.

use hyper::StatusCode;
use serde_json::json;

use super::{ApiClient, error_line, path_segment};

#[track_caller]
fn check_server(server: &str, host: &str, port: u16, base_path: &str) {
    let client = ApiClient::new(server).expect("a valid server URL");
    assert_eq!(
        (client.host.as_str(), client.port, client.base_path.as_str()),
        (host, port, base_path)
    );
}

#[track_caller]
fn check_bad_server(server: &str, expected: &str) {
    let error = ApiClient::new(server).expect_err("an invalid server URL");
    let text = format!("{error:#}");
    assert!(text.contains(expected), "{expected:?} not in {text:?}");
    assert!(text.contains(server), "the input is echoed: {text:?}");
}

#[test]
fn accepts_the_default_server() {
    check_server("http://127.0.0.1:10105", "127.0.0.1", 10105, "");
}

#[test]
fn defaults_to_port_80_and_keeps_a_path_prefix() {
    check_server(
        "http://trellis.internal/admin/",
        "trellis.internal",
        80,
        "/admin",
    );
}

#[test]
fn strips_the_brackets_of_an_ipv6_host() {
    check_server("http://[::1]:10105", "::1", 10105, "");
}

#[test]
fn refuses_https() {
    check_bad_server("https://127.0.0.1:10105", "must be an http:// URL");
}

#[test]
fn refuses_a_server_without_scheme() {
    check_bad_server("127.0.0.1:10105", "must be an http:// URL");
}

#[test]
fn refuses_a_server_with_a_query() {
    check_bad_server("http://127.0.0.1:10105/?x=1", "must not have a query");
}

#[test]
fn error_line_names_code_field_and_message() {
    let body = json!({"error": "invalid_subscription", "message": "must be between 1.0 and 10.0", "field": "delivery.backoff.multiplier"});
    assert_eq!(
        error_line(StatusCode::BAD_REQUEST, Some(&body)),
        "invalid_subscription: delivery.backoff.multiplier: must be between 1.0 and 10.0"
    );
}

#[test]
fn error_line_does_not_repeat_a_field_the_message_starts_with() {
    let body = json!({"error": "invalid_subscription", "message": "sink.urls[0]: must use http or https", "field": "sink.urls[0]"});
    assert_eq!(
        error_line(StatusCode::BAD_REQUEST, Some(&body)),
        "invalid_subscription: sink.urls[0]: must use http or https"
    );
}

#[test]
fn error_line_names_a_config_key_once() {
    let body = json!({"error": "invalid_connector", "message": "config key `path` must be a string", "attribute": "path"});
    assert_eq!(
        error_line(StatusCode::BAD_REQUEST, Some(&body)),
        "invalid_connector: config key `path` must be a string"
    );
    let body =
        json!({"error": "invalid_connector", "message": "must be a string", "attribute": "path"});
    assert_eq!(
        error_line(StatusCode::BAD_REQUEST, Some(&body)),
        "invalid_connector: path: must be a string"
    );
}

#[test]
fn error_line_keeps_a_multi_line_message_on_one_line() {
    let body = json!({"error": "internal", "message": "storing\na subscription:  disk full"});
    assert_eq!(
        error_line(StatusCode::INTERNAL_SERVER_ERROR, Some(&body)),
        "internal: storing a subscription: disk full"
    );
}

#[test]
fn error_line_without_the_error_shape_gives_the_status() {
    assert_eq!(
        error_line(StatusCode::BAD_GATEWAY, None),
        "the server answered 502 Bad Gateway"
    );
    assert_eq!(
        error_line(StatusCode::NOT_FOUND, Some(&json!(["not", "an", "error"]))),
        "the server answered 404 Not Found"
    );
}

#[test]
fn path_segment_keeps_names_and_encodes_the_rest() {
    assert_eq!(path_segment("billing.v2_eu-1"), "billing.v2_eu-1");
    assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
    assert_eq!(path_segment(".."), "%2E%2E");
    assert_eq!(path_segment("é"), "%C3%A9");
}
