//! HTTP binary content mode: each attribute travels as a `ce-<name>` header with a
//! percent-encoded value, `datacontenttype` as `Content-Type`, and the body is the data as-is.
//!
//! Reading fills a `Draft` that `event` validates; writing lays an event out for a webhook
//! sender. `http::HeaderMap` stores header names in lower case, so `CE-ID` and `ce-id` are the
//! same header here without extra work. This module does not pick the content mode (`mode`).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS};
use serde_json::value::RawValue;

use crate::event::{self, Carrier, Draft};
use crate::{BinaryMessage, CloudEvent, Data, EventError, ExtensionValue};

/// What the HTTP binding says to percent-encode in a header value: space, double quote,
/// percent, and everything outside printable ASCII. `utf8_percent_encode` always encodes
/// non-ASCII bytes; `CONTROLS` covers the rest below space and DEL.
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

const HEADER_PREFIX: &str = "ce-";

pub(crate) fn parse(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, EventError> {
    let mut draft = Draft::default();
    for header_name in headers.keys() {
        let Some(name) = header_name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let mut values = headers.get_all(header_name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(EventError::attribute(
                name,
                format!(
                    "header `ce-{}` appears more than once; send each attribute once",
                    event::shown(name)
                ),
            ));
        };
        let value = percent_decode(name, value.as_bytes())?;
        let slot = match name {
            "specversion" => &mut draft.specversion,
            "id" => &mut draft.id,
            "source" => &mut draft.source,
            "type" => &mut draft.ty,
            "dataschema" => &mut draft.dataschema,
            "subject" => &mut draft.subject,
            "time" => &mut draft.time,
            "datacontenttype" => {
                return Err(EventError::attribute(
                    name,
                    "in binary mode `datacontenttype` travels as the Content-Type header; send it there instead of `ce-datacontenttype`".to_owned(),
                ));
            }
            "data" => {
                return Err(EventError::attribute(
                    name,
                    "in binary mode the data is the request body; send it there instead of a `ce-data` header".to_owned(),
                ));
            }
            _ => {
                // Binary mode has no types: every extension value is a string. A bad name is
                // reported by `event::validate`.
                draft
                    .extensions
                    .insert(name.to_owned(), ExtensionValue::String(value));
                continue;
            }
        };
        *slot = Some(value);
    }
    // Two Content-Type headers would leave the data's type to whichever a reader takes.
    if headers.get_all(CONTENT_TYPE).iter().nth(1).is_some() {
        return Err(EventError::attribute(
            "datacontenttype",
            "the Content-Type header appears more than once; send it once".to_owned(),
        ));
    }
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        match content_type.to_str() {
            Ok(content_type) => draft.datacontenttype = Some(content_type.to_owned()),
            Err(_) => {
                return Err(EventError::attribute(
                    "datacontenttype",
                    "the Content-Type header must be printable ASCII, such as application/json"
                        .to_owned(),
                ));
            }
        }
    }
    draft.data = data_from_body(body, draft.datacontenttype.as_deref());
    draft.finish(Carrier::Headers)
}

pub(crate) fn write(event: &CloudEvent) -> Result<BinaryMessage, EventError> {
    let mut headers = HeaderMap::with_capacity(8 + event.extensions.len());
    let attributes = [
        ("ce-specversion", Some(&event.specversion)),
        ("ce-id", Some(&event.id)),
        ("ce-source", Some(&event.source)),
        ("ce-type", Some(&event.ty)),
        ("ce-dataschema", event.dataschema.as_ref()),
        ("ce-subject", event.subject.as_ref()),
        ("ce-time", event.time.as_ref()),
    ];
    for (name, value) in attributes {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), encode_value(value));
        }
    }
    for (name, value) in &event.extensions {
        event::check_name(name)?;
        let value = match value {
            ExtensionValue::String(value) => encode_value(value),
            ExtensionValue::Integer(value) => HeaderValue::from(*value),
            ExtensionValue::Boolean(true) => HeaderValue::from_static("true"),
            ExtensionValue::Boolean(false) => HeaderValue::from_static("false"),
        };
        headers.insert(header_name(name)?, value);
    }

    // Without a `datacontenttype`, JSON and text data would lose their type on the wire; the
    // JSON format reads an absent type as JSON, and text is sent as UTF-8 text.
    let content_type = match (&event.datacontenttype, &event.data) {
        (Some(datacontenttype), _) => Some(datacontenttype.as_str()),
        (None, Some(Data::Json(_))) => Some("application/json"),
        (None, Some(Data::Text(_))) => Some("text/plain; charset=utf-8"),
        (None, Some(Data::Binary(_)) | None) => None,
    };
    if let Some(content_type) = content_type {
        let Ok(content_type) = HeaderValue::from_str(content_type) else {
            return Err(EventError::attribute(
                "datacontenttype",
                format!(
                    "attribute `datacontenttype` cannot be sent as a Content-Type header; use printable ASCII such as application/json; got {}",
                    event::quoted(content_type)
                ),
            ));
        };
        headers.insert(CONTENT_TYPE, content_type);
    }

    let body = match &event.data {
        None => Bytes::new(),
        Some(Data::Json(raw)) => Bytes::copy_from_slice(raw.get().as_bytes()),
        Some(Data::Text(text)) => Bytes::copy_from_slice(text.as_bytes()),
        Some(Data::Binary(bytes)) => bytes.clone(),
    };
    Ok(BinaryMessage { headers, body })
}

/// The body as data. JSON content types give [`Data::Json`] when the body parses (a body that
/// does not is kept as bytes rather than refused: binary mode promises to carry the body, not
/// to understand it); `text/*` gives [`Data::Text`] when the body is UTF-8; anything else, or
/// no `Content-Type` at all, gives [`Data::Binary`]. An empty body is no data.
fn data_from_body(body: Bytes, datacontenttype: Option<&str>) -> Option<Data> {
    if body.is_empty() {
        return None;
    }
    let Some(datacontenttype) = datacontenttype else {
        return Some(Data::Binary(body));
    };
    if event::is_json_media_type(datacontenttype) {
        return match serde_json::from_slice::<Box<RawValue>>(&body) {
            Ok(raw) => Some(Data::Json(raw)),
            Err(_) => Some(Data::Binary(body)),
        };
    }
    if event::is_text_media_type(datacontenttype)
        && let Ok(text) = std::str::from_utf8(&body)
    {
        return Some(Data::Text(text.to_owned()));
    }
    Some(Data::Binary(body))
}

/// Decodes a header value as the HTTP binding says: percent-escapes first, then UTF-8.
/// A `%` not followed by two hex digits is an error rather than a literal, so a value that was
/// never encoded is caught instead of silently mangled.
fn percent_decode(name: &str, raw: &[u8]) -> Result<String, EventError> {
    let decoded = if raw.contains(&b'%') {
        let mut decoded = Vec::with_capacity(raw.len());
        let mut rest = raw;
        while let Some((&byte, tail)) = rest.split_first() {
            if byte != b'%' {
                decoded.push(byte);
                rest = tail;
                continue;
            }
            let escaped = match tail {
                [high, low, ..] => hex_value(*high).zip(hex_value(*low)),
                _ => None,
            };
            let Some((high, low)) = escaped else {
                let at = raw.len() - rest.len();
                return Err(EventError::attribute(
                    name,
                    format!(
                        "header `ce-{}` has a malformed percent-escape at byte {at}; a `%` must start an escape such as %20, and a literal `%` is written %25",
                        event::shown(name)
                    ),
                ));
            };
            decoded.push((high << 4) | low);
            rest = tail.get(2..).unwrap_or_default();
        }
        decoded
    } else {
        raw.to_vec()
    };
    match String::from_utf8(decoded) {
        Ok(value) => Ok(value),
        Err(_) => Err(EventError::attribute(
            name,
            format!(
                "header `ce-{}` must be UTF-8 once percent-decoded; percent-encode each byte of the UTF-8 form, such as %C3%A9 for \u{e9}",
                event::shown(name)
            ),
        )),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn encode_value(value: &str) -> HeaderValue {
    // Borrowed, with no copy, when nothing needs escaping: the common case.
    let encoded: std::borrow::Cow<'_, str> =
        percent_encoding::utf8_percent_encode(value, HEADER_VALUE_ESCAPES).into();
    match HeaderValue::from_str(&encoded) {
        Ok(value) => value,
        // Unreachable: percent-encoding leaves only printable ASCII.
        Err(_) => HeaderValue::from_static(""),
    }
}

fn header_name(name: &str) -> Result<HeaderName, EventError> {
    match HeaderName::try_from(format!("{HEADER_PREFIX}{name}")) {
        Ok(header_name) => Ok(header_name),
        Err(_) => Err(event::check_name(name).err().unwrap_or_else(|| {
            EventError::attribute(
                name,
                format!("`ce-{}` is not a valid header name", event::shown(name)),
            )
        })),
    }
}
