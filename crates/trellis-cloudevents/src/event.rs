//! The rules every CloudEvent obeys, whichever content mode carried it, and the wording of
//! the errors that report a broken rule.
//!
//! Both parsers collect what they read into a [`Draft`] and finish through here, so each rule
//! is written once and both modes word their errors alike. This module knows nothing of JSON or
//! HTTP beyond naming where a missing attribute should go.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::{CloudEvent, Data, EventError, ExtensionValue};

/// The only `specversion` Trellis accepts.
pub(crate) const SPEC_VERSION: &str = "1.0";

/// The CloudEvents Integer type is a 32-bit signed integer.
const INTEGER_MIN: i64 = i32::MIN as i64;
const INTEGER_MAX: i64 = i32::MAX as i64;

/// Inputs echoed in messages are cut to this many characters, so a hostile value cannot
/// inflate an error response (or a gRPC status, whose message travels in a header).
pub(crate) const MAX_ECHO_CHARS: usize = 128;

/// Where a parser found the attributes; used to word "missing" errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Carrier {
    /// Members of a JSON object (structured and batched modes).
    Json,
    /// `ce-*` HTTP headers (binary mode).
    Headers,
}

/// An event as read off the wire, before the required attributes are known to be there.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    pub(crate) specversion: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) ty: Option<String>,
    pub(crate) datacontenttype: Option<String>,
    pub(crate) dataschema: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) time: Option<String>,
    pub(crate) extensions: BTreeMap<String, ExtensionValue>,
    pub(crate) data: Option<Data>,
}

impl Draft {
    /// Checks that the required attributes are present, then every rule in [`validate`].
    /// `specversion` is checked first, so an event of another version is reported as such
    /// rather than by whichever of its attributes differs from 1.0.
    pub(crate) fn finish(self, carrier: Carrier) -> Result<CloudEvent, EventError> {
        let specversion = require(self.specversion, "specversion", carrier)?;
        check_specversion(&specversion)?;
        let id = require(self.id, "id", carrier)?;
        let source = require(self.source, "source", carrier)?;
        let ty = require(self.ty, "type", carrier)?;
        let event = CloudEvent {
            id,
            source,
            specversion,
            ty,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            time: self.time,
            extensions: self.extensions,
            data: self.data,
        };
        validate(&event)?;
        Ok(event)
    }
}

/// Every rule of CloudEvents 1.0 that Trellis enforces, in attribute order.
pub(crate) fn validate(event: &CloudEvent) -> Result<(), EventError> {
    check_specversion(&event.specversion)?;
    check_non_empty("id", &event.id)?;
    check_source(&event.source)?;
    check_non_empty("type", &event.ty)?;
    if let Some(datacontenttype) = &event.datacontenttype {
        check_datacontenttype(datacontenttype)?;
    }
    if let Some(dataschema) = &event.dataschema {
        check_dataschema(dataschema)?;
    }
    if let Some(subject) = &event.subject {
        check_non_empty("subject", subject)?;
    }
    if let Some(time) = &event.time {
        check_time(time)?;
    }
    for (name, value) in &event.extensions {
        check_extension(name, value)?;
    }
    Ok(())
}

impl EventError {
    /// An error about one attribute. A name too long to echo is cut short, as in messages.
    pub(crate) fn attribute(name: &str, message: String) -> EventError {
        EventError {
            attribute: Some(shown(name).into_owned()),
            index: None,
            message,
        }
    }

    /// An error about the event as a whole (its shape, or the body it came in).
    pub(crate) fn event(message: String) -> EventError {
        EventError {
            attribute: None,
            index: None,
            message,
        }
    }

    /// Places the error at `index` in a batch and says so in the message.
    pub(crate) fn in_batch(self, index: usize) -> EventError {
        EventError {
            attribute: self.attribute,
            index: Some(index),
            message: format!("batch event at index {index}: {}", self.message),
        }
    }
}

/// JSON media types: `application/json`, `text/json`, and any `+json` suffix (RFC 6839).
/// Parameters such as `charset` are ignored and case does not matter.
pub(crate) fn is_json_media_type(media_type: &str) -> bool {
    let essence = essence(media_type);
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || ends_with_ignore_ascii_case(essence, "+json")
}

/// `text/*` media types.
pub(crate) fn is_text_media_type(media_type: &str) -> bool {
    starts_with_ignore_ascii_case(essence(media_type), "text/")
}

/// The `type/subtype` part of a media type, without parameters or surrounding whitespace.
pub(crate) fn essence(media_type: &str) -> &str {
    let essence = match media_type.split_once(';') {
        Some((essence, _parameters)) => essence,
        None => media_type,
    };
    essence.trim()
}

pub(crate) fn starts_with_ignore_ascii_case(value: &str, prefix: &str) -> bool {
    value
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn ends_with_ignore_ascii_case(value: &str, suffix: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() >= suffix.len()
        && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The input as a quoted, escaped string for an error message, cut short if long.
pub(crate) fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => {
            let n_more_bytes = value.len() - cut;
            format!("{:?}... ({n_more_bytes} more bytes)", &value[..cut])
        }
    }
}

/// The input as it is, for an error message, or its first characters and `...` if long.
/// For names and values shown between backticks, where [`quoted`]'s escaping would not fit.
pub fn shown(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}...", &value[..cut])),
    }
}

/// Is `name` one of the context attributes CloudEvents 1.0 defines, or a JSON member that holds
/// the data? Extensions may not take these names.
pub fn is_reserved_name(name: &str) -> bool {
    matches!(
        name,
        "specversion"
            | "id"
            | "source"
            | "type"
            | "datacontenttype"
            | "dataschema"
            | "subject"
            | "time"
            | "data"
            | "data_base64"
    )
}

/// Attribute names are lower-case ASCII letters and digits. The spec also says names SHOULD
/// NOT exceed 20 characters; that is advice to producers, so longer names are accepted.
pub(crate) fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::attribute(
            name,
            "attribute names must not be empty; use lower-case letters a-z and digits 0-9, such as \"myextension\"".to_owned(),
        ));
    }
    if name
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
    {
        return Ok(());
    }
    let suggestion: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let suggestion = if suggestion.is_empty() {
        "myextension".to_owned()
    } else {
        suggestion
    };
    Err(EventError::attribute(
        name,
        format!(
            "attribute name {} must use only lower-case letters a-z and digits 0-9, such as {suggestion:?}",
            quoted(name)
        ),
    ))
}

fn require(value: Option<String>, name: &str, carrier: Carrier) -> Result<String, EventError> {
    if let Some(value) = value {
        return Ok(value);
    }
    let example = match name {
        "specversion" => "\"1.0\"",
        "id" => "a value unique within the source, such as a UUID",
        "source" => "a URI-reference such as \"/mycontext\"",
        _ => "a reverse-DNS name such as \"com.example.object.created\"",
    };
    let message = match carrier {
        Carrier::Json => {
            format!(
                "required attribute `{name}` is missing; add a \"{name}\" member set to {example}"
            )
        }
        Carrier::Headers => {
            format!(
                "required attribute `{name}` is missing; add a `ce-{name}` header set to {example}"
            )
        }
    };
    Err(EventError::attribute(name, message))
}

fn check_specversion(specversion: &str) -> Result<(), EventError> {
    if specversion == SPEC_VERSION {
        return Ok(());
    }
    Err(EventError::attribute(
        "specversion",
        format!(
            "attribute `specversion` must be \"1.0\": only CloudEvents 1.0 is supported; got {}",
            quoted(specversion)
        ),
    ))
}

fn check_non_empty(name: &str, value: &str) -> Result<(), EventError> {
    if !value.is_empty() {
        return Ok(());
    }
    Err(EventError::attribute(
        name,
        format!("attribute `{name}` must be a non-empty string"),
    ))
}

fn check_source(source: &str) -> Result<(), EventError> {
    if !source.is_empty() && !source.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Ok(());
    }
    Err(EventError::attribute(
        "source",
        format!(
            "attribute `source` must be a non-empty URI-reference without spaces or control characters, such as /mycontext or https://example.com/orders; got {}",
            quoted(source)
        ),
    ))
}

/// RFC 2046: `type/subtype` with optional parameters. The value must also fit in an HTTP
/// header, since binary mode carries it as `Content-Type`.
fn check_datacontenttype(datacontenttype: &str) -> Result<(), EventError> {
    let header_safe = datacontenttype
        .bytes()
        .all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte));
    let has_type_and_subtype = match essence(datacontenttype).split_once('/') {
        Some((ty, subtype)) => {
            let is_token =
                |part: &str| !part.is_empty() && !part.contains(|c: char| c.is_ascii_whitespace());
            is_token(ty) && is_token(subtype)
        }
        None => false,
    };
    if header_safe && has_type_and_subtype {
        return Ok(());
    }
    Err(EventError::attribute(
        "datacontenttype",
        format!(
            "attribute `datacontenttype` must be an RFC 2046 media type such as application/json or text/plain; charset=utf-8; got {}",
            quoted(datacontenttype)
        ),
    ))
}

/// An absolute URI (RFC 3986): a scheme, a colon, and no whitespace or control characters.
fn check_dataschema(dataschema: &str) -> Result<(), EventError> {
    let has_scheme = match dataschema.split_once(':') {
        Some((scheme, _rest)) => {
            let mut chars = scheme.chars();
            chars
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    };
    if has_scheme
        && !dataschema
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Ok(());
    }
    Err(EventError::attribute(
        "dataschema",
        format!(
            "attribute `dataschema` must be an absolute URI such as https://example.com/schemas/order.json; got {}",
            quoted(dataschema)
        ),
    ))
}

fn check_time(time: &str) -> Result<(), EventError> {
    if chrono::DateTime::parse_from_rfc3339(time).is_ok() {
        return Ok(());
    }
    Err(EventError::attribute(
        "time",
        format!(
            "attribute `time` must be an RFC 3339 timestamp such as 2026-01-02T15:04:05Z; got {}",
            quoted(time)
        ),
    ))
}

fn check_extension(name: &str, value: &ExtensionValue) -> Result<(), EventError> {
    check_name(name)?;
    if is_reserved_name(name) {
        return Err(EventError::attribute(
            name,
            format!(
                "extension `{name}` has the name of a CloudEvents attribute; rename the extension"
            ),
        ));
    }
    if let ExtensionValue::Integer(integer) = value
        && !(INTEGER_MIN..=INTEGER_MAX).contains(integer)
    {
        return Err(EventError::attribute(
            name,
            format!(
                "extension attribute `{}` must be an integer from {INTEGER_MIN} to {INTEGER_MAX} (the CloudEvents Integer range); got {integer}; send larger numbers as a string",
                shown(name)
            ),
        ));
    }
    Ok(())
}
