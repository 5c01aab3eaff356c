use super::*;

fn event(extensions: &[(&str, &str)]) -> CloudEvent {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", HeaderValue::from_static("1.0"));
    headers.insert("ce-id", HeaderValue::from_static("evt-1"));
    headers.insert("ce-source", HeaderValue::from_static("/test"));
    headers.insert("ce-type", HeaderValue::from_static("test.event"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    for (name, value) in extensions {
        headers.insert(
            HeaderName::from_bytes(format!("ce-{name}").as_bytes()).expect("test fixture"),
            HeaderValue::from_str(value).expect("test fixture"),
        );
    }
    trellis_cloudevents::parse_binary(&headers, Bytes::from_static(b"hello")).expect("test fixture")
}

fn attempt<'a>(uri: &'a Uri, extra: &'a HeaderMap, secret: Option<&'a [u8]>) -> Attempt<'a> {
    Attempt {
        uri,
        number: 3,
        request_id: "req-1",
        extra_headers: extra,
        secret,
        now_unix_s: 1_700_000_000,
    }
}

#[test]
fn binary_mode_carries_the_event_and_the_attempt_headers() {
    let prepared = PreparedEvent::new(&event(&[]), Mode::Binary).expect("test fixture");
    let uri: Uri = "http://127.0.0.1:9/hook".parse().expect("test fixture");
    let extra = HeaderMap::new();
    let request = build(&prepared, &attempt(&uri, &extra, None));
    let headers = request.headers();
    assert_eq!(request.method(), Method::POST);
    assert_eq!(headers["ce-id"], "evt-1");
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-request-id"], "req-1");
    assert_eq!(headers["trellis-delivery-attempt"], "3");
    assert!(trace_id_of(headers["traceparent"].to_str().expect("test fixture")).is_some());
    assert!(headers.get(sign::SIGNATURE_HEADER).is_none());
    assert_eq!(prepared.body().as_ref(), b"hello");
}

#[test]
fn structured_mode_sends_the_json_format() {
    let prepared = PreparedEvent::new(&event(&[]), Mode::Structured).expect("test fixture");
    let uri: Uri = "http://127.0.0.1:9/hook".parse().expect("test fixture");
    let extra = HeaderMap::new();
    let request = build(&prepared, &attempt(&uri, &extra, None));
    assert_eq!(request.headers()["content-type"], STRUCTURED_CONTENT_TYPE);
    assert!(request.headers().get("ce-id").is_none());
    let json: serde_json::Value = serde_json::from_slice(prepared.body()).expect("test fixture");
    assert_eq!(json["id"], "evt-1");
}

#[test]
fn attempts_of_one_record_share_the_trace_but_not_the_span() {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let prepared =
        PreparedEvent::new(&event(&[("traceparent", parent)]), Mode::Binary).expect("test fixture");
    let uri: Uri = "http://127.0.0.1:9/hook".parse().expect("test fixture");
    let extra = HeaderMap::new();
    let first = build(&prepared, &attempt(&uri, &extra, None));
    let second = build(&prepared, &attempt(&uri, &extra, None));
    let first = first.headers()["traceparent"]
        .to_str()
        .expect("test fixture")
        .to_owned();
    let second = second.headers()["traceparent"]
        .to_str()
        .expect("test fixture")
        .to_owned();
    assert!(first.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(second.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert_ne!(first, second);
}

#[test]
fn subscription_headers_cannot_replace_trellis_headers() {
    let prepared = PreparedEvent::new(&event(&[]), Mode::Binary).expect("test fixture");
    let uri: Uri = "http://127.0.0.1:9/hook".parse().expect("test fixture");
    let mut extra = HeaderMap::new();
    extra.insert("x-team", HeaderValue::from_static("payments"));
    extra.insert("ce-id", HeaderValue::from_static("forged"));
    let request = build(&prepared, &attempt(&uri, &extra, None));
    assert_eq!(request.headers()["x-team"], "payments");
    assert_eq!(request.headers()["ce-id"], "evt-1");
}

#[test]
fn a_secret_signs_the_body_sent() {
    let prepared = PreparedEvent::new(&event(&[]), Mode::Binary).expect("test fixture");
    let uri: Uri = "http://127.0.0.1:9/hook".parse().expect("test fixture");
    let extra = HeaderMap::new();
    let secret = b"0123456789abcdef0123";
    let request = build(&prepared, &attempt(&uri, &extra, Some(secret)));
    let header = request.headers()[sign::SIGNATURE_HEADER]
        .to_str()
        .expect("test fixture");
    sign::verify(secret, header, b"hello", 1_700_000_000, 300).expect("test fixture");
}

#[test]
fn a_batch_is_a_json_array_of_structured_events() {
    let first = event(&[]);
    let mut second = event(&[]);
    second.id = "evt-2".to_owned();
    let prepared = PreparedEvent::batch(&[&first, &second]);
    let uri: Uri = "http://127.0.0.1:9/hook".parse().expect("test fixture");
    let extra = HeaderMap::new();
    let request = build(&prepared, &attempt(&uri, &extra, None));
    assert_eq!(request.headers()["content-type"], BATCH_CONTENT_TYPE);
    let parsed = trellis_cloudevents::parse_batch(prepared.body()).expect("test fixture");
    assert_eq!(parsed, vec![first, second]);
}

#[test]
fn malformed_traceparents_are_ignored() {
    for bad in [
        "",
        "00-0000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(trace_id_of(bad), None, "{bad}");
    }
}
