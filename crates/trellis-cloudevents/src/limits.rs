//! Bounds on what an event may hold, beyond the CloudEvents rules: the size of each attribute
//! value and the nesting depth of JSON data.
//!
//! These are checked when an event comes in (publishing), not by [`CloudEvent::validate`]:
//! an event stored before a limit was lowered must still read back and deliver.

use crate::event::shown;
use crate::{CloudEvent, Data, EventError, ExtensionValue};

/// What [`CloudEvent::check_limits`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// The longest attribute value, in bytes of UTF-8: `id`, `source`, `type`,
    /// `datacontenttype`, `dataschema`, `subject`, `time` and string extensions. Binary
    /// content mode delivers each attribute as a header, and common servers refuse a header
    /// line over 8 KiB.
    pub max_attribute_bytes: usize,
    /// The deepest nesting of arrays and objects in JSON data; a receiver that parses the data
    /// into a tree recurses about once per level.
    pub max_json_depth: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_attribute_bytes: 4096,
            max_json_depth: 64,
        }
    }
}

pub(crate) fn check(event: &CloudEvent, limits: &EventLimits) -> Result<(), EventError> {
    let attributes = [
        ("id", Some(&event.id)),
        ("source", Some(&event.source)),
        ("type", Some(&event.ty)),
        ("datacontenttype", event.datacontenttype.as_ref()),
        ("dataschema", event.dataschema.as_ref()),
        ("subject", event.subject.as_ref()),
        ("time", event.time.as_ref()),
    ];
    for (name, value) in attributes {
        if let Some(value) = value {
            check_size(name, "attribute", value, limits.max_attribute_bytes)?;
        }
    }
    for (name, value) in &event.extensions {
        if let ExtensionValue::String(value) = value {
            check_size(
                name,
                "extension attribute",
                value,
                limits.max_attribute_bytes,
            )?;
        }
    }
    if let Some(Data::Json(raw)) = &event.data {
        let depth = crate::depth::json_depth(raw.get().as_bytes(), limits.max_json_depth);
        if depth > limits.max_json_depth {
            return Err(EventError::attribute(
                "data",
                format!(
                    "`data` nests arrays and objects more than {} levels deep; flatten it or send it as data_base64",
                    limits.max_json_depth
                ),
            ));
        }
    }
    Ok(())
}

fn check_size(name: &str, kind: &str, value: &str, max: usize) -> Result<(), EventError> {
    if value.len() <= max {
        return Ok(());
    }
    Err(EventError::attribute(
        name,
        format!(
            "{kind} `{}` is {} bytes; the limit is {max} bytes",
            shown(name),
            value.len()
        ),
    ))
}
