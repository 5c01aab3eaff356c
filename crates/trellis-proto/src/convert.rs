//! Conversion between Trellis's CloudEvent model and the protobuf event format of the API.
//!
//! The rules, in both directions:
//!
//! - `id`, `source`, `specversion` and `type` are fields; every other attribute is an entry of
//!   `attributes`: `datacontenttype` and `subject` as `ce_string`, `dataschema` as `ce_uri`,
//!   `time` as `ce_timestamp`, extensions as `ce_string`, `ce_integer` or `ce_boolean`.
//! - Reading, the known attributes also take `ce_string` (every CloudEvents type has a string
//!   form), and extensions also take `ce_uri`, `ce_uri_ref` and `ce_timestamp`, which Trellis
//!   keeps as strings, as the JSON event format does. `ce_bytes`, or an attribute with no value,
//!   is refused with an error that names the attribute.
//! - `time` keeps its instant, not its spelling: a producer's `+02:00` comes back in UTC (`Z`).
//! - Binary data is `binary_data`. JSON data is `text_data` holding the JSON text, and text data
//!   is `text_data` holding the text. Reading `text_data`, the data is JSON when
//!   `datacontenttype` is a JSON media type or absent (the JSON event format's rule, which is how
//!   the log renders the event) and must then parse as JSON; it is text otherwise.
//!
//! [`event_from_proto`] runs [`CloudEvent::validate`], so an event published over gRPC obeys
//! the same rules as one published over HTTP (the publisher then checks the same
//! `EventLimits`, such as the depth of JSON `text_data`). Names echoed in errors are cut short.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;
use trellis_cloudevents::{CloudEvent, Data, EventError, ExtensionValue, shown};

use crate::v1;
use crate::v1::cloud_event_attribute_value::Attr;

const DATACONTENTTYPE: &str = "datacontenttype";
const DATASCHEMA: &str = "dataschema";
const SUBJECT: &str = "subject";
const TIME: &str = "time";

impl From<&CloudEvent> for v1::CloudEvent {
    fn from(event: &CloudEvent) -> v1::CloudEvent {
        let mut attributes = HashMap::with_capacity(4 + event.extensions.len());
        if let Some(datacontenttype) = &event.datacontenttype {
            attributes.insert(
                DATACONTENTTYPE.to_owned(),
                value(Attr::CeString(datacontenttype.clone())),
            );
        }
        if let Some(dataschema) = &event.dataschema {
            attributes.insert(
                DATASCHEMA.to_owned(),
                value(Attr::CeUri(dataschema.clone())),
            );
        }
        if let Some(subject) = &event.subject {
            attributes.insert(SUBJECT.to_owned(), value(Attr::CeString(subject.clone())));
        }
        if let Some(time) = &event.time {
            attributes.insert(TIME.to_owned(), value(time_to_proto(time)));
        }
        for (name, extension) in &event.extensions {
            let attr = match extension {
                ExtensionValue::String(text) => Attr::CeString(text.clone()),
                ExtensionValue::Integer(integer) => match i32::try_from(*integer) {
                    Ok(integer) => Attr::CeInteger(integer),
                    // Only an event built by hand (which validation refuses) gets here; its
                    // number survives as text rather than wrapping.
                    Err(_) => Attr::CeString(integer.to_string()),
                },
                ExtensionValue::Boolean(boolean) => Attr::CeBoolean(*boolean),
            };
            attributes.insert(name.clone(), value(attr));
        }
        let data = event.data.as_ref().map(|data| match data {
            Data::Binary(bytes) => v1::cloud_event::Data::BinaryData(bytes.clone()),
            Data::Json(raw) => v1::cloud_event::Data::TextData(raw.get().to_owned()),
            Data::Text(text) if event.datacontenttype.is_none() => {
                // Without a content type the text would be read back as JSON; as a JSON string
                // it reads back as the same data the log renders.
                v1::cloud_event::Data::TextData(json_string(text))
            }
            Data::Text(text) => v1::cloud_event::Data::TextData(text.clone()),
        });
        v1::CloudEvent {
            id: event.id.clone(),
            source: event.source.clone(),
            spec_version: event.specversion.clone(),
            r#type: event.ty.clone(),
            attributes,
            data,
        }
    }
}

impl From<CloudEvent> for v1::CloudEvent {
    fn from(event: CloudEvent) -> v1::CloudEvent {
        v1::CloudEvent::from(&event)
    }
}

impl TryFrom<v1::CloudEvent> for CloudEvent {
    type Error = EventError;

    fn try_from(event: v1::CloudEvent) -> Result<CloudEvent, EventError> {
        event_from_proto(event)
    }
}

/// The event a protobuf CloudEvent carries, validated as HTTP publishes are.
///
/// The error names the attribute at fault when there is one; its `index` is `None` (the caller
/// knows where the event sits in its batch).
pub fn event_from_proto(event: v1::CloudEvent) -> Result<CloudEvent, EventError> {
    if event.spec_version.is_empty() {
        return Err(attribute_error(
            "specversion",
            "required attribute `specversion` is missing; set spec_version to \"1.0\"".to_owned(),
        ));
    }
    let mut decoded = CloudEvent {
        id: event.id,
        source: event.source,
        specversion: event.spec_version,
        ty: event.r#type,
        datacontenttype: None,
        dataschema: None,
        subject: None,
        time: None,
        extensions: Default::default(),
        data: None,
    };
    for (name, attribute) in event.attributes {
        let Some(attr) = attribute.attr else {
            return Err(attribute_error(
                &name,
                format!(
                    "attribute `{}` has no value; set one of its ce_* fields",
                    shown(&name)
                ),
            ));
        };
        match name.as_str() {
            DATACONTENTTYPE => decoded.datacontenttype = Some(string_attr(&name, attr)?),
            SUBJECT => decoded.subject = Some(string_attr(&name, attr)?),
            DATASCHEMA => decoded.dataschema = Some(uri_attr(&name, attr)?),
            TIME => decoded.time = Some(time_attr(&name, attr)?),
            _ => {
                let extension = extension_attr(&name, attr)?;
                decoded.extensions.insert(name, extension);
            }
        }
    }
    decoded.data = match event.data {
        None => None,
        Some(v1::cloud_event::Data::BinaryData(bytes)) => Some(Data::Binary(bytes)),
        Some(v1::cloud_event::Data::TextData(text)) => {
            Some(text_data(text, decoded.datacontenttype.as_deref())?)
        }
    };
    decoded.validate()?;
    Ok(decoded)
}

fn value(attr: Attr) -> v1::CloudEventAttributeValue {
    v1::CloudEventAttributeValue { attr: Some(attr) }
}

fn attribute_error(name: &str, message: String) -> EventError {
    EventError {
        attribute: Some(shown(name).into_owned()),
        index: None,
        message,
    }
}

fn type_name(attr: &Attr) -> &'static str {
    match attr {
        Attr::CeBoolean(_) => "ce_boolean",
        Attr::CeInteger(_) => "ce_integer",
        Attr::CeString(_) => "ce_string",
        Attr::CeBytes(_) => "ce_bytes",
        Attr::CeUri(_) => "ce_uri",
        Attr::CeUriRef(_) => "ce_uri_ref",
        Attr::CeTimestamp(_) => "ce_timestamp",
    }
}

fn wrong_type(name: &str, attr: &Attr, expected: &str) -> EventError {
    attribute_error(
        name,
        format!(
            "attribute `{}` must be {expected}; got {}",
            shown(name),
            type_name(attr)
        ),
    )
}

fn string_attr(name: &str, attr: Attr) -> Result<String, EventError> {
    match attr {
        Attr::CeString(text) => Ok(text),
        other => Err(wrong_type(name, &other, "a ce_string")),
    }
}

fn uri_attr(name: &str, attr: Attr) -> Result<String, EventError> {
    match attr {
        Attr::CeUri(text) | Attr::CeString(text) => Ok(text),
        other => Err(wrong_type(name, &other, "a ce_uri (or ce_string)")),
    }
}

fn time_attr(name: &str, attr: Attr) -> Result<String, EventError> {
    match attr {
        // `validate` checks that the string is RFC 3339.
        Attr::CeString(text) => Ok(text),
        Attr::CeTimestamp(timestamp) => timestamp_to_rfc3339(name, &timestamp),
        other => Err(wrong_type(name, &other, "a ce_timestamp (or ce_string)")),
    }
}

fn extension_attr(name: &str, attr: Attr) -> Result<ExtensionValue, EventError> {
    match attr {
        Attr::CeString(text) | Attr::CeUri(text) | Attr::CeUriRef(text) => {
            Ok(ExtensionValue::String(text))
        }
        Attr::CeInteger(integer) => Ok(ExtensionValue::Integer(i64::from(integer))),
        Attr::CeBoolean(boolean) => Ok(ExtensionValue::Boolean(boolean)),
        Attr::CeTimestamp(timestamp) => Ok(ExtensionValue::String(timestamp_to_rfc3339(
            name, &timestamp,
        )?)),
        Attr::CeBytes(_) => Err(attribute_error(
            name,
            format!(
                "extension attribute `{}` is ce_bytes, which Trellis does not store; send it base64-encoded as a ce_string",
                shown(name)
            ),
        )),
    }
}

fn text_data(text: String, datacontenttype: Option<&str>) -> Result<Data, EventError> {
    let is_json = datacontenttype.is_none_or(is_json_media_type);
    if !is_json {
        return Ok(Data::Text(text));
    }
    match RawValue::from_string(text) {
        Ok(raw) => Ok(Data::Json(raw)),
        Err(error) => {
            let message = match datacontenttype {
                Some(datacontenttype) => format!(
                    "text_data must be JSON text because datacontenttype {:?} is JSON: {error}",
                    shown(datacontenttype)
                ),
                None => format!(
                    "text_data without a datacontenttype is read as JSON and must be JSON text ({error}); for plain text set datacontenttype, such as text/plain"
                ),
            };
            Err(attribute_error("data", message))
        }
    }
}

/// JSON media types as the CloudEvents crate reads them: `application/json`, `text/json` and
/// any `+json` suffix, parameters and case ignored.
fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split_once(';')
        .map_or(media_type, |(essence, _)| essence)
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn json_string(text: &str) -> String {
    // Serialising a string cannot fail; the fallback only keeps this free of panics.
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

/// A valid `time` always parses; one that does not (an event built by hand) travels as the
/// string it is, and validation refuses it at the other end.
fn time_to_proto(time: &str) -> Attr {
    match DateTime::parse_from_rfc3339(time) {
        Ok(parsed) => Attr::CeTimestamp(prost_types::Timestamp {
            seconds: parsed.timestamp(),
            nanos: i32::try_from(parsed.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        Err(_) => Attr::CeString(time.to_owned()),
    }
}

fn timestamp_to_rfc3339(
    name: &str,
    timestamp: &prost_types::Timestamp,
) -> Result<String, EventError> {
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000);
    let parsed = nanos.and_then(|nanos| DateTime::<Utc>::from_timestamp(timestamp.seconds, nanos));
    match parsed {
        Some(parsed) => Ok(parsed.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        None => Err(attribute_error(
            name,
            format!(
                "attribute `{}` is not a valid timestamp: {}s {}ns",
                shown(name),
                timestamp.seconds,
                timestamp.nanos
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
