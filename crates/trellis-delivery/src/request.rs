//! Building the HTTP request for one attempt.
//!
//! The event is encoded once per record ([`PreparedEvent`]); each attempt then adds what is its
//! own: a fresh `X-Request-Id`, a `traceparent` with a fresh span id under the record's trace,
//! the attempt number and, with a secret, a signature over the exact body sent.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use rand::Rng;
use trellis_cloudevents::{CloudEvent, EventError, ExtensionValue};

use crate::config::Mode;
use crate::sign;

pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("trellis-delivery-attempt");
pub(crate) const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// An event encoded for the subscription's content mode, shared by all its attempts.
#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    headers: HeaderMap,
    body: Bytes,
    /// The W3C trace id every attempt of this record carries: the event's own, when it came
    /// with a `traceparent` extension, so the receiver's spans join the producer's trace.
    trace_id: String,
}

impl PreparedEvent {
    pub(crate) fn new(event: &CloudEvent, mode: Mode) -> Result<PreparedEvent, EventError> {
        let (headers, body) = match mode {
            Mode::Binary => {
                let message = event.to_binary_headers()?;
                (message.headers, message.body)
            }
            Mode::Structured => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(STRUCTURED_CONTENT_TYPE),
                );
                (headers, Bytes::from(event.to_structured_json()))
            }
        };
        let trace_id = event
            .extensions
            .get("traceparent")
            .and_then(|value| match value {
                ExtensionValue::String(text) => trace_id_of(text),
                ExtensionValue::Integer(_) | ExtensionValue::Boolean(_) => None,
            })
            .unwrap_or_else(|| random_hex(16));
        Ok(PreparedEvent {
            headers,
            body,
            trace_id,
        })
    }

    /// Several events as one JSON array of structured events (batched content mode).
    pub(crate) fn batch(events: &[&CloudEvent]) -> PreparedEvent {
        let mut body = Vec::with_capacity(
            events
                .iter()
                .map(|event| event.encoded_len() + 1)
                .sum::<usize>()
                + 2,
        );
        body.push(b'[');
        for (index, event) in events.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&event.to_structured_json());
        }
        body.push(b']');
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_CONTENT_TYPE));
        PreparedEvent {
            headers,
            body: Bytes::from(body),
            trace_id: random_hex(16),
        }
    }

    #[cfg(test)]
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }
}

/// What an attempt adds to the prepared event.
pub(crate) struct Attempt<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) number: u32,
    pub(crate) request_id: &'a str,
    /// Extra headers from the subscription; validated when it was created.
    pub(crate) extra_headers: &'a HeaderMap,
    pub(crate) secret: Option<&'a [u8]>,
    pub(crate) now_unix_s: i64,
}

pub(crate) fn build(event: &PreparedEvent, attempt: &Attempt<'_>) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(event.body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = attempt.uri.clone();
    let headers = request.headers_mut();
    for (name, value) in attempt.extra_headers {
        headers.append(name, value.clone());
    }
    // Trellis' own headers go last so a subscription header can never replace them.
    for (name, value) in &event.headers {
        headers.insert(name, value.clone());
    }
    if let Ok(value) = HeaderValue::from_str(attempt.request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    headers.insert(ATTEMPT_HEADER, HeaderValue::from(attempt.number));
    let traceparent = format!("00-{}-{}-01", event.trace_id, random_hex(8));
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT_HEADER, value);
    }
    if let Some(secret) = attempt.secret {
        let signature = sign::signature(secret, attempt.now_unix_s, &event.body);
        if let Ok(value) = HeaderValue::from_str(&signature) {
            headers.insert(HeaderName::from_static(sign::SIGNATURE_HEADER), value);
        }
    }
    request
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is well formed
/// and not the all-zero id the spec calls invalid.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(span_id, 16)
        && is_hex(flags, 2);
    valid.then(|| trace_id.to_owned())
}

fn random_hex(n_bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let bytes: Vec<u8> = (0..n_bytes).map(|_| rng.random()).collect();
        // All-zero ids are invalid in W3C trace context.
        if bytes.iter().any(|b| *b != 0) {
            return hex::encode(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
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
        trellis_cloudevents::parse_binary(&headers, Bytes::from_static(b"hello"))
            .expect("test fixture")
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
        let json: serde_json::Value =
            serde_json::from_slice(prepared.body()).expect("test fixture");
        assert_eq!(json["id"], "evt-1");
    }

    #[test]
    fn attempts_of_one_record_share_the_trace_but_not_the_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let prepared = PreparedEvent::new(&event(&[("traceparent", parent)]), Mode::Binary)
            .expect("test fixture");
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
}
