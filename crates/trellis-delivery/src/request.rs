//! Building the HTTP request for one attempt.
//!
//! The event is encoded once per record ([`PreparedEvent`]); each attempt then adds what is its
//! own: a fresh `X-Request-Id`, a `traceparent` with a fresh span id under the record's trace,
//! the attempt number and, with a secret, a signature over the exact body sent.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use rand::Rng;
use trellis_cloudevents::{CloudEvent, EventError, ExtensionValue};

use crate::config::Mode;
use crate::sign;

pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("trellis-delivery-attempt");
pub(crate) const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
const TRACEPARENT_LEN: usize = 55;

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
            .unwrap_or_else(random_hex::<16>);
        Ok(PreparedEvent {
            headers: with_attempt_slots(headers, &body),
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
        let body = Bytes::from(body);
        PreparedEvent {
            headers: with_attempt_slots(headers, &body),
            body,
            trace_id: random_hex::<16>(),
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
    if attempt.extra_headers.is_empty() {
        // One copy of the event's headers, whose placeholders the attempt's own replace in
        // place.
        *headers = event.headers.clone();
    } else {
        for (name, value) in attempt.extra_headers {
            headers.append(name, value.clone());
        }
        // Trellis' own headers go last so a subscription header can never replace them.
        for (name, value) in &event.headers {
            headers.insert(name, value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(attempt.request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    headers.insert(ATTEMPT_HEADER, attempt_number(attempt.number));
    if let Some(value) = traceparent(&event.trace_id) {
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

/// Most records need one attempt and few more than ten: those numbers need no allocation.
fn attempt_number(number: u32) -> HeaderValue {
    const SMALL: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    match SMALL.get(number as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(number),
    }
}

/// `00-<trace id>-<a fresh span id>-01`, written in place.
fn traceparent(trace_id: &str) -> Option<HeaderValue> {
    let mut span_id = [0u8; 8];
    let mut rng = rand::rng();
    // All-zero ids are invalid in W3C trace context.
    while span_id.iter().all(|b| *b == 0) {
        span_id = rng.random();
    }
    let mut text = [0u8; TRACEPARENT_LEN];
    let trace_id = trace_id.as_bytes();
    let span_start = 3 + trace_id.len() + 1;
    if span_start + 16 + 3 != TRACEPARENT_LEN {
        return None;
    }
    text[..3].copy_from_slice(b"00-");
    text[3..span_start - 1].copy_from_slice(trace_id);
    text[span_start - 1] = b'-';
    hex::encode_to_slice(span_id, &mut text[span_start..span_start + 16]).ok()?;
    text[span_start + 16..].copy_from_slice(b"-01");
    HeaderValue::from_bytes(&text).ok()
}

/// The event's headers plus a slot for each header every attempt sets, so that an attempt's
/// copy of the map takes them without growing, and `Content-Length`, which would otherwise be
/// added (and allocated) for every request as it is written.
fn with_attempt_slots(mut headers: HeaderMap, body: &Bytes) -> HeaderMap {
    for name in [REQUEST_ID_HEADER, ATTEMPT_HEADER, TRACEPARENT_HEADER] {
        headers.insert(name, HeaderValue::from_static(""));
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers
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

fn random_hex<const N_BYTES: usize>() -> String {
    let mut rng = rand::rng();
    loop {
        let bytes: [u8; N_BYTES] = rng.random();
        // All-zero ids are invalid in W3C trace context.
        if bytes.iter().any(|b| *b != 0) {
            return hex::encode(bytes);
        }
    }
}

#[cfg(test)]
mod tests;
