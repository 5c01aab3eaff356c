//! Mapping between [`ConnectRecord`]s and [`CloudEvent`]s, both ways.
//!
//! A source worker turns each record into the event it publishes ([`to_cloud_event`]); a sink
//! worker turns each event it reads into the record it puts ([`from_cloud_event`]).
//!
//! | record | CloudEvent | record -> event | event -> record |
//! |---|---|---|---|
//! | `id` | `id` | copied | copied |
//! | extension `source` | `source` | used if present, else the worker's default source | set |
//! | extension `type` | `type` | used if present, else the worker's default type | set |
//! | extension `subject`, `dataschema` | `subject`, `dataschema` | used if present | set if present |
//! | extension `datacontenttype` | `datacontenttype` | used if present | set if present; `application/json` for JSON data without one |
//! | `timestamp` | `time` | RFC 3339 in UTC | parsed; the time of reading when absent |
//! | `position.partition`, `position.offset` | extensions `connectpartition`, `connectoffset` | set (the offset as a decimal string) | dropped: the record's position is where the event was read, given by the caller |
//! | other extensions | extensions | name made valid (below), value a string | copied, integers and booleans written as strings |
//! | `data` | `data` | JSON data for a JSON content type when the bytes are JSON, text for a `text/*` type when they are UTF-8, binary otherwise; no data when empty | the bytes: JSON text, UTF-8 text, or the binary data; empty when absent |
//!
//! An extension name is made valid by lower-casing ASCII letters and dropping every character
//! that is not a letter or digit (`Content-Type` becomes `contenttype`). A name left empty, or
//! equal to a CloudEvents attribute, gets an `x` in front (`id` becomes `xid`). When two keys
//! come to the same name, the first in key order keeps it and the next ones get `2`, `3`, ...
//! after it.
//!
//! So a record whose extension keys are already valid names round-trips exactly through an
//! event and back at the same position; an event round-trips through a record except for the
//! types of its extension values (strings, as in HTTP binary mode) and its position extensions.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use trellis_cloudevents::{CloudEvent, Data, EventError, ExtensionValue};

use crate::position::Position;
use crate::record::ConnectRecord;

/// The extension that carries a record's partition.
pub const PARTITION_EXTENSION: &str = "connectpartition";
/// The extension that carries a record's offset, as a decimal string.
pub const OFFSET_EXTENSION: &str = "connectoffset";

/// Record extensions that carry CloudEvents attributes rather than extensions.
const ATTRIBUTE_KEYS: [&str; 5] = ["source", "type", "subject", "dataschema", "datacontenttype"];

/// The attributes a record does not say for itself: the connector's source URI and its event
/// type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDefaults {
    /// Such as `/connectors/orders-file`.
    pub source: String,
    /// Such as `com.example.order.line`.
    pub ty: String,
}

/// The event a source worker publishes for `record`. Fails, naming the attribute, when an
/// attribute taken from the record's extensions is invalid (a `source` with spaces, a
/// `datacontenttype` that is no media type).
pub fn to_cloud_event(
    record: &ConnectRecord,
    defaults: &EventDefaults,
) -> Result<CloudEvent, EventError> {
    let attribute = |key: &str| record.extension(key).map(str::to_owned);
    let datacontenttype = attribute("datacontenttype");
    let mut extensions = BTreeMap::new();
    for (key, value) in &record.extensions {
        if ATTRIBUTE_KEYS.contains(&key.as_str()) {
            continue;
        }
        let name = unique_name(valid_extension_name(key), &extensions);
        extensions.insert(name, ExtensionValue::String(value.clone()));
    }
    // Set last, so a record extension of the same name cannot hide the position.
    extensions.insert(
        PARTITION_EXTENSION.to_owned(),
        ExtensionValue::String(record.position.partition.as_str().to_owned()),
    );
    extensions.insert(
        OFFSET_EXTENSION.to_owned(),
        ExtensionValue::String(record.position.offset.0.to_string()),
    );
    let data = data_for(&record.data, datacontenttype.as_deref());
    let event = CloudEvent {
        id: record.id.clone(),
        source: attribute("source").unwrap_or_else(|| defaults.source.clone()),
        specversion: "1.0".to_owned(),
        ty: attribute("type").unwrap_or_else(|| defaults.ty.clone()),
        datacontenttype,
        dataschema: attribute("dataschema"),
        subject: attribute("subject"),
        time: Some(
            record
                .timestamp
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        extensions,
        data,
    };
    event.validate()?;
    Ok(event)
}

/// The record a sink worker puts for `event`, read at `position`. The record has no callback
/// yet. Cannot fail: a validated event always has a valid `time`, and an unparsable one
/// (an event built by hand) is treated as absent.
pub fn from_cloud_event(event: &CloudEvent, position: Position) -> ConnectRecord {
    let timestamp = event
        .time
        .as_deref()
        .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
        .map_or_else(Utc::now, |time| time.with_timezone(&Utc));
    let data = match &event.data {
        None => Bytes::new(),
        Some(Data::Json(raw)) => Bytes::copy_from_slice(raw.get().as_bytes()),
        Some(Data::Text(text)) => Bytes::copy_from_slice(text.as_bytes()),
        Some(Data::Binary(bytes)) => bytes.clone(),
    };
    let mut record = ConnectRecord::new(event.id.clone(), position, data).with_timestamp(timestamp);
    for (name, value) in &event.extensions {
        if name == PARTITION_EXTENSION || name == OFFSET_EXTENSION {
            continue;
        }
        let value = match value {
            ExtensionValue::String(value) => value.clone(),
            ExtensionValue::Integer(value) => value.to_string(),
            ExtensionValue::Boolean(value) => value.to_string(),
        };
        record.extensions.insert(name.clone(), value);
    }
    let datacontenttype = match (&event.datacontenttype, &event.data) {
        (Some(datacontenttype), _) => Some(datacontenttype.clone()),
        (None, Some(Data::Json(_))) => Some("application/json".to_owned()),
        (None, _) => None,
    };
    let attributes = [
        ("source", Some(event.source.clone())),
        ("type", Some(event.ty.clone())),
        ("subject", event.subject.clone()),
        ("dataschema", event.dataschema.clone()),
        ("datacontenttype", datacontenttype),
    ];
    for (key, value) in attributes {
        if let Some(value) = value {
            record.extensions.insert(key.to_owned(), value);
        }
    }
    record
}

/// Lower-case ASCII letters and digits only; never empty, never an attribute's name.
pub fn valid_extension_name(key: &str) -> String {
    let name: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if name.is_empty() || trellis_cloudevents::is_reserved_name(&name) {
        format!("x{name}")
    } else {
        name
    }
}

fn unique_name(name: String, taken: &BTreeMap<String, ExtensionValue>) -> String {
    let reserved = |name: &str| {
        taken.contains_key(name) || name == PARTITION_EXTENSION || name == OFFSET_EXTENSION
    };
    if !reserved(&name) {
        return name;
    }
    (2u64..)
        .map(|n| format!("{name}{n}"))
        .find(|candidate| !reserved(candidate))
        .unwrap_or(name)
}

fn data_for(bytes: &Bytes, datacontenttype: Option<&str>) -> Option<Data> {
    if bytes.is_empty() {
        return None;
    }
    let essence = datacontenttype.map(|media_type| {
        media_type
            .split(';')
            .next()
            .unwrap_or(media_type)
            .trim()
            .to_ascii_lowercase()
    });
    let is_json = essence.as_deref().is_some_and(|essence| {
        essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
    });
    // The parser drops whitespace around the value; such data stays binary so its bytes
    // come back exactly.
    if is_json
        && let Ok(raw) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(bytes)
        && raw.get().len() == bytes.len()
    {
        return Some(Data::Json(raw));
    }
    let is_text = essence
        .as_deref()
        .is_some_and(|essence| essence.starts_with("text/"));
    if is_text && let Ok(text) = std::str::from_utf8(bytes) {
        return Some(Data::Text(text.to_owned()));
    }
    Some(Data::Binary(bytes.clone()))
}
