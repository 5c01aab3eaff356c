//! Picks the HTTP content mode of a request from its headers, before any body is read.
//!
//! The rule follows the HTTP binding: a `Content-Type` in the `application/cloudevents` family
//! decides structured or batched mode; otherwise `ce-` headers mean binary mode. Only the JSON
//! event format is accepted. This module does not look at attribute values.

use http::HeaderMap;
use http::header::CONTENT_TYPE;

use crate::event::{self, quoted};
use crate::{ContentMode, UnsupportedContentType};

const STRUCTURED_JSON: &str = "application/cloudevents+json";
const BATCH_JSON: &str = "application/cloudevents-batch+json";
/// Prefix shared by every structured and batched media type, whatever the event format.
const CLOUDEVENTS_FAMILY: &str = "application/cloudevents";

pub(crate) fn content_mode(headers: &HeaderMap) -> Result<ContentMode, UnsupportedContentType> {
    let content_type = headers.get(CONTENT_TYPE).map(|value| value.to_str());
    if let Some(Ok(content_type)) = content_type {
        let essence = event::essence(content_type);
        if essence.eq_ignore_ascii_case(STRUCTURED_JSON) {
            return Ok(ContentMode::Structured);
        }
        if essence.eq_ignore_ascii_case(BATCH_JSON) {
            return Ok(ContentMode::Batch);
        }
        if event::starts_with_ignore_ascii_case(essence, CLOUDEVENTS_FAMILY) {
            return Err(UnsupportedContentType {
                message: format!(
                    "only the JSON event format is supported: send Content-Type {STRUCTURED_JSON} for one event or {BATCH_JSON} for a batch; got {}",
                    quoted(content_type)
                ),
            });
        }
    }
    if headers.keys().any(|name| name.as_str().starts_with("ce-")) {
        return Ok(ContentMode::Binary);
    }
    let got = match content_type {
        Some(Ok(content_type)) => format!(
            "got Content-Type {} and no ce- headers",
            quoted(content_type)
        ),
        Some(Err(_)) => {
            "got a Content-Type that is not printable ASCII and no ce- headers".to_owned()
        }
        None => "got no Content-Type and no ce- headers".to_owned(),
    };
    Err(UnsupportedContentType {
        message: format!(
            "not a CloudEvents request: use binary mode (ce-specversion, ce-id, ce-source and ce-type headers, with the data as the body), structured mode (Content-Type {STRUCTURED_JSON}) or batched mode (Content-Type {BATCH_JSON}); {got}"
        ),
    })
}
