//! CloudEvents 1.0: the event model, its validation, and the HTTP protocol binding
//! (binary, structured and batched content modes).
//!
//! This is the only crate that knows the CloudEvents wire formats. It does no I/O.
//! Stored events are kept in structured JSON form ([`CloudEvent::to_structured_json`]).
//!
//! Only CloudEvents 1.0 and its JSON event format are supported: an event in any other
//! specversion or event format is rejected with a message that says so.
//!
//! # Layout
//!
//! - `event`: the rules every event obeys whichever way it arrived (required attributes,
//!   attribute names, value formats), and the wording of [`EventError`]s.
//! - `structured`: the JSON event format. Reads one event or a batch in a single pass
//!   without building a `serde_json::Value` tree, and writes one event into a pre-sized buffer.
//! - `binary`: HTTP binary content mode. Reads `ce-*` headers and the body, and writes them
//!   back for a webhook sender ([`CloudEvent::to_binary_headers`]).
//! - `mode`: picks the content mode of a request from its headers.
//! - `limits` and `depth`: the bounds checked on events coming in ([`EventLimits`]), and the
//!   byte scan that measures how deeply JSON data nests.

use std::collections::BTreeMap;

use bytes::Bytes;

pub use depth::json_depth;
pub use event::{is_reserved_name, shown};
pub use limits::EventLimits;
pub use stored::{StoredError, stored_source_and_id, stored_to_structured_json};

mod binary;
mod depth;
mod event;
mod limits;
mod mode;
mod stored;
mod structured;

/// A validated CloudEvent. Construct it through the parsers, which enforce the spec.
///
/// The fields are public so callers can read them without getters. An event built or changed
/// by hand should pass [`CloudEvent::validate`] before it is stored or sent.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    /// Always "1.0" after validation.
    pub specversion: String,
    /// The `type` attribute.
    pub ty: String,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339, as given by the producer.
    pub time: Option<String>,
    pub extensions: BTreeMap<String, ExtensionValue>,
    pub data: Option<Data>,
}

/// An extension attribute's value, typed as the JSON format carries it. Binary mode carries
/// every value as a string.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtensionValue {
    String(String),
    /// Within the CloudEvents Integer range (32-bit signed) after validation.
    Integer(i64),
    Boolean(bool),
}

/// The event's payload.
///
/// Which variant a parser picks depends on `datacontenttype`: JSON content types (and an absent
/// one, in structured mode) give [`Data::Json`], other text gives [`Data::Text`], and
/// everything else, including `data_base64`, gives [`Data::Binary`].
#[derive(Debug, Clone)]
pub enum Data {
    /// JSON data (`data` member in structured mode), kept as its JSON text.
    Json(Box<serde_json::value::RawValue>),
    /// Non-JSON text data.
    Text(String),
    /// Binary data (`data_base64` in structured mode).
    Binary(Bytes),
}

/// Which HTTP content mode a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Binary,
    Structured,
    Batch,
}

/// Why an event was rejected. `attribute` names the offending attribute when there is one;
/// `index` is the event's position in a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    pub attribute: Option<String>,
    pub index: Option<usize>,
    pub message: String,
}

/// The request's content type is not a CloudEvents mode Trellis accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UnsupportedContentType {
    pub message: String,
}

/// An event laid out for HTTP binary content mode, from [`CloudEvent::to_binary_headers`].
#[derive(Debug, Clone)]
pub struct BinaryMessage {
    /// One percent-encoded `ce-<attribute>` header per attribute and extension, plus
    /// `Content-Type` when the event has a `datacontenttype` (or JSON or text data).
    pub headers: http::HeaderMap,
    /// The data as-is; empty when the event has none.
    pub body: Bytes,
}

/// Picks the content mode from the request headers: any `ce-` header means binary mode;
/// `application/cloudevents+json` structured; `application/cloudevents-batch+json` batched.
/// Anything else (including `application/cloudevents+xml`, or no `ce-` headers and a non-CloudEvents
/// type) is unsupported; the message says which types are accepted.
///
/// When a request has both, the `application/cloudevents…` content type wins over `ce-` headers,
/// as the HTTP binding prescribes.
pub fn content_mode(headers: &http::HeaderMap) -> Result<ContentMode, UnsupportedContentType> {
    mode::content_mode(headers)
}

/// Parses a binary-mode event: attributes from `ce-*` headers (percent-decoded), `datacontenttype`
/// from `Content-Type`, data from the body.
pub fn parse_binary(headers: &http::HeaderMap, body: Bytes) -> Result<CloudEvent, EventError> {
    binary::parse(headers, body)
}

/// Parses one structured-mode event (JSON event format).
pub fn parse_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
    structured::parse_event(body)
}

/// Parses a batch (JSON array of structured events). An error carries the failing event's index.
/// An empty array is an error.
pub fn parse_batch(body: &[u8]) -> Result<Vec<CloudEvent>, EventError> {
    structured::parse_batch(body)
}

impl CloudEvent {
    /// The JSON event format encoding; what the log stores.
    ///
    /// Members come in a fixed order: `specversion`, `id`, `source`, `type`, the optional
    /// attributes, the extensions sorted by name, then `data` or `data_base64`.
    pub fn to_structured_json(&self) -> Vec<u8> {
        structured::write_event(self)
    }

    /// Decodes what [`CloudEvent::to_structured_json`] wrote (validating it again).
    pub fn from_structured_json(bytes: &[u8]) -> Result<CloudEvent, EventError> {
        parse_structured(bytes)
    }

    /// The exact length in bytes of [`CloudEvent::to_structured_json`]'s output, computed
    /// without encoding.
    pub fn encoded_len(&self) -> usize {
        structured::encoded_len(self)
    }

    /// The `ce-*` headers, `Content-Type` and body for delivering this event in binary mode.
    ///
    /// Fails only for an event built by hand with an extension name that cannot be an
    /// attribute name, or a `datacontenttype` that cannot be a header value.
    pub fn to_binary_headers(&self) -> Result<BinaryMessage, EventError> {
        binary::write(self)
    }

    /// Checks every rule the parsers enforce. Parsed events always pass.
    pub fn validate(&self) -> Result<(), EventError> {
        event::validate(self)
    }

    /// Checks `limits`: the size of every attribute value and the nesting depth of JSON data.
    /// Parsing does not; a receiver of new events calls this after parsing, so events stored
    /// under other limits still read back.
    pub fn check_limits(&self, limits: &EventLimits) -> Result<(), EventError> {
        limits::check(self, limits)
    }
}

/// JSON data compares by its text: `{"a":1}` and `{ "a": 1 }` are different data.
impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::Json(left), Data::Json(right)) => left.get() == right.get(),
            (Data::Text(left), Data::Text(right)) => left == right,
            (Data::Binary(left), Data::Binary(right)) => left == right,
            _ => false,
        }
    }
}
