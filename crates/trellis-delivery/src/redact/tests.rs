use super::*;
use http::{HeaderName, HeaderValue};
use proptest::prelude::*;

#[track_caller]
fn check(url: &str, expected: &str) {
    assert_eq!(redact_url(url), expected, "redact_url({url:?})");
}

#[test]
fn plain_urls_are_unchanged() {
    check("https://example.com/hook", "https://example.com/hook");
    check("http://127.0.0.1:8080/", "http://127.0.0.1:8080/");
    check("http://[::1]:9000/a/b", "http://[::1]:9000/a/b");
    check("", "");
}

#[test]
fn userinfo_is_hidden() {
    check(
        "https://user:hunter2@example.com/hook",
        "https://***@example.com/hook",
    );
    check("https://tok3n@example.com", "https://***@example.com");
    check(
        "https://:pw@example.com:8443/",
        "https://***@example.com:8443/",
    );
    // Unencoded '@' and '/' in the password: hidden whole all the same.
    check(
        "https://u:p@ss/w@rd@example.com/x",
        "https://***@example.com/x",
    );
}

#[test]
fn query_values_are_hidden_and_keys_kept() {
    check(
        "https://example.com/hook?access_token=abc&region=eu",
        "https://example.com/hook?access_token=***&region=***",
    );
    check(
        "https://example.com/?a=1=2&&b=",
        "https://example.com/?a=***&&b=***",
    );
    check(
        "https://example.com/?bare-token",
        "https://example.com/?***",
    );
    check("https://example.com/?", "https://example.com/?");
}

#[test]
fn fragment_is_dropped() {
    check(
        "https://example.com/cb#access_token=abc",
        "https://example.com/cb",
    );
    check(
        "https://example.com/cb?x=1#frag",
        "https://example.com/cb?x=***",
    );
}

#[test]
fn everything_at_once() {
    check(
        "https://svc:s3cr3t@hooks.example.com:8443/in?sig=abc&v=2#t",
        "https://***@hooks.example.com:8443/in?sig=***&v=***",
    );
}

#[test]
fn strings_that_are_not_urls() {
    check("user:pw@example.com/x", "***@example.com/x");
    check("not a url", "not a url");
    check("://x", "://x");
    check("1http://u:p@h", "***@h");
    check("@", "***@");
    check("?=", "?=***");
    check("ht tp://a:b@c?d=e", "***@c?d=***");
    // A path '@' is mistaken for userinfo; over-hiding is the safe direction.
    check("https://example.com/users/@me", "https://***@me");
}

#[test]
fn sensitive_header_names() {
    let configured = vec!["X-Tenant".to_owned()];
    for name in [
        "authorization",
        "Authorization",
        "proxy-authorization",
        "cookie",
        "Set-Cookie",
        "x-api-key",
        "api-key",
        "trellis-signature",
        "x-auth-token",
        "x-hub-signature-256",
        "x-client-secret",
        "x-db-password",
        "ocp-apim-subscription-key",
        "x-amz-credential",
        "x-tenant",
        "X-TENANT",
    ] {
        assert!(is_sensitive_header(name, &configured), "{name}");
    }
    for name in [
        "content-type",
        "content-length",
        "user-agent",
        "ce-id",
        "ce-source",
        "traceparent",
        "keep-alive",
        "x-tenant-id",
    ] {
        assert!(!is_sensitive_header(name, &configured), "{name}");
    }
}

#[test]
fn header_map_view_hides_sensitive_values() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
    headers.insert("x-custom", HeaderValue::from_static("s3cr3t"));
    headers.insert("x-plain", HeaderValue::from_static("visible"));
    let mut marked = HeaderValue::from_static("marked-secret");
    marked.set_sensitive(true);
    headers.insert("x-marked", marked);
    headers.insert(
        HeaderName::from_static("x-opaque"),
        HeaderValue::from_bytes(b"caf\xe9").expect("opaque header value"),
    );

    let mut view = redacted_headers(&headers, &["x-custom".to_owned()]);
    view.sort();
    let expected: Vec<(String, String)> = [
        ("authorization", REDACTED),
        ("content-type", "application/json"),
        ("x-custom", REDACTED),
        ("x-marked", REDACTED),
        ("x-opaque", "caf\u{fffd}"),
        ("x-plain", "visible"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    assert_eq!(view, expected);
}

/// Characters a sloppy user might put in a password: anything printable but the `?` and `#`
/// that end a URL's authority before userinfo can be recognised. No `*`, so a secret cannot
/// coincide with the redaction marker.
const PASSWORD_CHARS: &str = "[a-zA-Z0-9._~!$&'()+,;=:@/%-]{8,32}";
/// Anything printable that can sit inside one query parameter value.
const QUERY_VALUE_CHARS: &str = "[a-zA-Z0-9._~!$'()+,;=:@/?%-]{8,32}";

proptest! {
    #[test]
    fn secrets_in_the_password_never_survive(
        secret in PASSWORD_CHARS,
        user in "[a-z]{0,8}",
        path in "(/[a-z]{1,8}){0,3}",
    ) {
        let url = format!("https://{user}:{secret}@example.com{path}?x=1");
        let redacted = redact_url(&url);
        prop_assert!(!redacted.contains(&secret), "{url} -> {redacted}");
        prop_assert!(redacted.starts_with("https://***@example.com"), "{redacted}");
    }

    #[test]
    fn secrets_in_query_values_never_survive(
        secret in QUERY_VALUE_CHARS,
        key in "[a-z_]{1,12}",
        position in 0usize..3,
    ) {
        let mut parameters = vec!["a=1".to_owned(), "b=2".to_owned()];
        parameters.insert(position, format!("{key}={secret}"));
        let url = format!("https://example.com/hook?{}#frag", parameters.join("&"));
        let redacted = redact_url(&url);
        prop_assert!(!redacted.contains(&secret), "{url} -> {redacted}");
        prop_assert!(redacted.contains(&format!("{key}=***")), "{redacted}");
    }

    #[test]
    fn arbitrary_strings_never_panic(input in "\\PC*") {
        let _ = redact_url(&input);
    }
}
