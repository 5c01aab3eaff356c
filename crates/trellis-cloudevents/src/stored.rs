//! The log's record format for an event: its attributes in the JSON event format, and its data
//! as it came rather than base64 in JSON.
//!
//! A 1 KiB binary payload stays 1 KiB in the log, not 1.37, and nothing encodes it on the publish
//! path. Binary-mode delivery can send stored data unchanged. Reads turn a record back into the
//! JSON event format, byte for byte what [`CloudEvent::to_structured_json`] writes.
//!
//! Layout: format version (u8, 1) | data kind (u8: 0 none, 1 JSON, 2 text, 3 binary) | length
//! of the attributes (u32, little-endian) | the attributes, a JSON object without a data member |
//! the data, to the end of the record.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::structured::{write_attributes, write_data_member};
use crate::{CloudEvent, Data, EventError};

const FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 6;

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoredError {
    #[error("stored event has format version {0}; this Trellis reads version 1")]
    UnknownVersion(u8),
    #[error("stored event is {0} bytes, shorter than its header says")]
    Truncated(usize),
    #[error("stored event has unknown data kind {0}")]
    UnknownDataKind(u8),
    #[error("stored event's attributes are invalid: {0}")]
    Attributes(EventError),
    #[error("stored event's data is not valid {0}")]
    Data(&'static str),
    #[error("stored event has data although its header says it has none")]
    UnexpectedData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    None = 0,
    Json = 1,
    Text = 2,
    Binary = 3,
}

impl CloudEvent {
    /// The record the log stores for this event.
    pub fn to_stored(&self) -> Vec<u8> {
        let attributes = write_attributes(self);
        let (kind, data): (DataKind, &[u8]) = match &self.data {
            None => (DataKind::None, &[]),
            Some(Data::Json(raw)) => (DataKind::Json, raw.get().as_bytes()),
            Some(Data::Text(text)) => (DataKind::Text, text.as_bytes()),
            Some(Data::Binary(bytes)) => (DataKind::Binary, bytes),
        };
        let mut record = Vec::with_capacity(HEADER_BYTES + attributes.len() + data.len());
        record.push(FORMAT_VERSION);
        record.push(kind as u8);
        // Attributes are bounded by the body limit, far below 4 GiB; saturate rather than wrap.
        let attributes_len = u32::try_from(attributes.len()).unwrap_or(u32::MAX);
        record.extend_from_slice(&attributes_len.to_le_bytes());
        record.extend_from_slice(&attributes);
        record.extend_from_slice(data);
        record
    }

    /// Reads a stored record back into an event: the event its JSON event format parses to, so
    /// reading and rendering a record can never disagree, and every parser check applies.
    pub fn from_stored(record: &[u8]) -> Result<CloudEvent, StoredError> {
        let parts = split(record)?;
        if parts.kind == DataKind::Binary && !may_name_data(parts.attributes) {
            return binary_from_parts(&parts);
        }
        let json = stored_to_structured_json(record)?;
        crate::parse_structured(&json).map_err(StoredError::Attributes)
    }
}

/// The JSON event format of a stored record, without building the event: the attributes as
/// stored, then the data member rendered from the raw data.
pub fn stored_to_structured_json(record: &[u8]) -> Result<Vec<u8>, StoredError> {
    let parts = split(record)?;
    let Some(open) = parts.attributes.strip_suffix(b"}") else {
        return Err(StoredError::Attributes(EventError::event(
            "the attributes are not a JSON object".to_owned(),
        )));
    };
    if !open.starts_with(b"{") {
        return Err(StoredError::Attributes(EventError::event(
            "the attributes are not a JSON object".to_owned(),
        )));
    }
    let data = decode_data(parts.kind, parts.data)?;
    let mut out = Vec::with_capacity(record.len() + record.len() / 3 + 24);
    out.extend_from_slice(open);
    if let Some(data) = &data {
        write_data_member(data, &mut out);
    }
    out.push(b'}');
    Ok(out)
}

/// The `source` and `id` of a stored event, from its attributes alone: what duplicate detection
/// reads back after a restart, without decoding the data or validating the event again (it was
/// validated when stored).
pub fn stored_source_and_id(record: &[u8]) -> Result<(String, String), StoredError> {
    #[derive(serde::Deserialize)]
    struct Key {
        id: String,
        source: String,
    }
    let parts = split(record)?;
    serde_json::from_slice::<Key>(parts.attributes)
        .map(|key| (key.source, key.id))
        .map_err(|error| {
            StoredError::Attributes(EventError::event(format!(
                "the attributes carry no string id and source: {error}"
            )))
        })
}

/// Binary data renders as `data_base64`, which always parses back to the same bytes whatever the
/// attributes say, so the event is its attributes plus the data as stored. This skips encoding
/// and decoding base64 for every delivered binary event, and it accepts exactly the records
/// whose rendering parses (the `stored` fuzz target checks that the two agree).
fn binary_from_parts(parts: &Parts<'_>) -> Result<CloudEvent, StoredError> {
    let not_an_object = || {
        StoredError::Attributes(EventError::event(
            "the attributes are not a JSON object".to_owned(),
        ))
    };
    if !parts.attributes.starts_with(b"{") || !parts.attributes.ends_with(b"}") {
        return Err(not_an_object());
    }
    let mut event = crate::parse_structured(parts.attributes).map_err(StoredError::Attributes)?;
    if event.data.is_some() {
        // The rendering would carry two data members, which the parser refuses.
        return Err(StoredError::Attributes(EventError::event(
            "the attributes carry a data member of their own".to_owned(),
        )));
    }
    event.data = Some(Data::Binary(Bytes::copy_from_slice(parts.data)));
    Ok(event)
}

/// Whether attributes might hold a member the parser takes as data (`data`, `data_base64`, even
/// null, or either spelled with escapes). Attributes Trellis writes never do; for any that
/// might, only the full rendering says exactly how the record parses.
fn may_name_data(attributes: &[u8]) -> bool {
    // A member name is a JSON string: unescaped, `data` and `data_base64` appear between quotes
    // as they are (so `"datacontenttype"` does not count); escaped, only `\u` can spell letters.
    memchr::memmem::find(attributes, b"\"data\"").is_some()
        || memchr::memmem::find(attributes, b"\"data_base64\"").is_some()
        || memchr::memmem::find(attributes, b"\\u").is_some()
}

struct Parts<'a> {
    kind: DataKind,
    attributes: &'a [u8],
    data: &'a [u8],
}

fn split(record: &[u8]) -> Result<Parts<'_>, StoredError> {
    let Some((header, rest)) = record.split_first_chunk::<HEADER_BYTES>() else {
        return Err(StoredError::Truncated(record.len()));
    };
    let [version, kind, len @ ..] = *header;
    if version != FORMAT_VERSION {
        return Err(StoredError::UnknownVersion(version));
    }
    let kind = match kind {
        0 => DataKind::None,
        1 => DataKind::Json,
        2 => DataKind::Text,
        3 => DataKind::Binary,
        other => return Err(StoredError::UnknownDataKind(other)),
    };
    let attributes_len = u32::from_le_bytes(len) as usize;
    if rest.len() < attributes_len {
        return Err(StoredError::Truncated(record.len()));
    }
    let (attributes, data) = rest.split_at(attributes_len);
    if kind == DataKind::None && !data.is_empty() {
        return Err(StoredError::UnexpectedData);
    }
    Ok(Parts {
        kind,
        attributes,
        data,
    })
}

fn decode_data(kind: DataKind, data: &[u8]) -> Result<Option<Data>, StoredError> {
    Ok(match kind {
        DataKind::None => None,
        DataKind::Json => {
            let text = std::str::from_utf8(data).map_err(|_| StoredError::Data("JSON"))?;
            let raw =
                RawValue::from_string(text.to_owned()).map_err(|_| StoredError::Data("JSON"))?;
            Some(Data::Json(raw))
        }
        DataKind::Text => {
            let text = std::str::from_utf8(data).map_err(|_| StoredError::Data("UTF-8 text"))?;
            Some(Data::Text(text.to_owned()))
        }
        DataKind::Binary => Some(Data::Binary(Bytes::copy_from_slice(data))),
    })
}

#[cfg(test)]
mod tests;
