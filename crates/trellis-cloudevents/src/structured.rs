//! The JSON event format: reading one event or a batch of events, and writing one event.
//!
//! Reading walks the JSON once with serde visitors and never builds a `serde_json::Value` tree:
//! attribute values are decoded as they pass, and `data` is kept as the raw JSON text it
//! arrived as. Writing appends to one buffer sized exactly by the same code path that writes,
//! so [`encoded_len`] and [`write_event`] cannot drift apart.
//!
//! The rules about attribute values live in `event`; this module only maps JSON onto them.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;

use crate::event::{self, Carrier, Draft};
use crate::{CloudEvent, Data, EventError, ExtensionValue};

/// `data_base64` is standard base64 (RFC 4648 section 4). Padding is optional on input so that
/// producers which strip it are accepted; output is always padded.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub(crate) fn parse_event(body: &[u8]) -> Result<CloudEvent, EventError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EventError::event(
            "the body is empty; a structured-mode request carries one JSON object such as {\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/mycontext\",\"type\":\"com.example.created\"}".to_owned(),
        ));
    }
    let mut ctx = Ctx::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let res = EventSeed {
        ctx: &mut ctx,
        place: Place::Alone,
    }
    .deserialize(&mut deserializer)
    .and_then(|event| deserializer.end().map(|()| event));
    match res {
        Ok(event) => Ok(event),
        Err(error) => Err(ctx.into_error(&error)),
    }
}

pub(crate) fn parse_batch(body: &[u8]) -> Result<Vec<CloudEvent>, EventError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EventError::event(
            "the body is empty; a batch is a JSON array of one or more events in the JSON event format".to_owned(),
        ));
    }
    let mut ctx = Ctx::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let res = deserializer
        .deserialize_any(BatchVisitor { ctx: &mut ctx })
        .and_then(|events| deserializer.end().map(|()| events));
    let events = match res {
        Ok(events) => events,
        Err(error) => return Err(ctx.into_error(&error)),
    };
    if events.is_empty() {
        return Err(EventError::event(
            "a batch must hold at least one event; got an empty array".to_owned(),
        ));
    }
    Ok(events)
}

pub(crate) fn write_event(event: &CloudEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(event));
    emit(event, &mut out);
    out
}

pub(crate) fn encoded_len(event: &CloudEvent) -> usize {
    let mut counter = Counter(0);
    emit(event, &mut counter);
    counter.0
}

/// State shared by the visitors of one parse.
///
/// A semantic error (a missing attribute, a bad timestamp) is stored here and the parse is
/// aborted with a placeholder serde error, so the caller gets the structured [`EventError`]
/// rather than serde's text. Any serde error without a stored failure is a JSON syntax error.
#[derive(Debug, Default)]
struct Ctx {
    failure: Option<EventError>,
    /// The position in the batch of the event being read, if any.
    index: Option<usize>,
}

impl Ctx {
    fn fail<E: de::Error>(&mut self, error: EventError) -> E {
        let error = match self.index {
            Some(index) => error.in_batch(index),
            None => error,
        };
        self.failure = Some(error);
        E::custom("rejected event")
    }

    fn into_error(self, syntax_error: &serde_json::Error) -> EventError {
        if let Some(failure) = self.failure {
            return failure;
        }
        let error = EventError::event(format!("the body is not valid JSON: {syntax_error}"));
        match self.index {
            Some(index) => error.in_batch(index),
            None => error,
        }
    }
}

/// Whether the event being read is the whole body or one element of a batch; only the
/// wording of errors differs.
#[derive(Debug, Clone, Copy)]
enum Place {
    Alone,
    InBatch,
}

struct BatchVisitor<'c> {
    ctx: &'c mut Ctx,
}

impl<'de> Visitor<'de> for BatchVisitor<'_> {
    type Value = Vec<CloudEvent>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON array of CloudEvents")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<CloudEvent>, A::Error> {
        let mut events = Vec::new();
        loop {
            self.ctx.index = Some(events.len());
            let seed = EventSeed {
                ctx: &mut *self.ctx,
                place: Place::InBatch,
            };
            match seq.next_element_seed(seed)? {
                Some(event) => events.push(event),
                None => break,
            }
        }
        self.ctx.index = None;
        Ok(events)
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Vec<CloudEvent>, A::Error> {
        Err(self.ctx.fail(EventError::event(
            "a batch body must be a JSON array of events; got a JSON object (send a single event as application/cloudevents+json)".to_owned(),
        )))
    }

    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<Vec<CloudEvent>, E> {
        Err(not_an_array(self.ctx, "a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _value: i64) -> Result<Vec<CloudEvent>, E> {
        Err(not_an_array(self.ctx, "a number"))
    }

    fn visit_u64<E: de::Error>(self, _value: u64) -> Result<Vec<CloudEvent>, E> {
        Err(not_an_array(self.ctx, "a number"))
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<Vec<CloudEvent>, E> {
        Err(not_an_array(self.ctx, "a number"))
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<Vec<CloudEvent>, E> {
        Err(not_an_array(self.ctx, "a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<CloudEvent>, E> {
        Err(not_an_array(self.ctx, "null"))
    }
}

fn not_an_array<E: de::Error>(ctx: &mut Ctx, kind: &str) -> E {
    ctx.fail(EventError::event(format!(
        "a batch body must be a JSON array of events; got {kind}"
    )))
}

struct EventSeed<'c> {
    ctx: &'c mut Ctx,
    place: Place,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = CloudEvent;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<CloudEvent, D::Error> {
        // `deserialize_any` rather than `deserialize_map`, so a body of the wrong JSON type
        // reaches the visitor and gets a message of ours instead of serde's.
        deserializer.deserialize_any(EventVisitor {
            ctx: self.ctx,
            place: self.place,
        })
    }
}

struct EventVisitor<'c> {
    ctx: &'c mut Ctx,
    place: Place,
}

impl EventVisitor<'_> {
    fn not_an_object<E: de::Error>(self, kind: &str) -> E {
        let message = match (self.place, kind) {
            (Place::Alone, "an array") => format!(
                "a structured-mode body must be a JSON object holding one event; got {kind} (send several events as application/cloudevents-batch+json)"
            ),
            (Place::Alone, _) => {
                format!(
                    "a structured-mode body must be a JSON object holding one event; got {kind}"
                )
            }
            (Place::InBatch, _) => format!("must be a JSON object holding one event; got {kind}"),
        };
        self.ctx.fail(EventError::event(message))
    }
}

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = CloudEvent;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a CloudEvent as a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CloudEvent, A::Error> {
        let ctx = self.ctx;
        let mut draft = Draft::default();
        let mut data: Option<&'de RawValue> = None;
        let mut data_base64: Option<Bytes> = None;
        let mut seen = Seen::default();

        while let Some(key) = map.next_key_seed(KeySeed)? {
            let name = key.as_ref();
            let slot = match name {
                "specversion" => &mut draft.specversion,
                "id" => &mut draft.id,
                "source" => &mut draft.source,
                "type" => &mut draft.ty,
                "datacontenttype" => &mut draft.datacontenttype,
                "dataschema" => &mut draft.dataschema,
                "subject" => &mut draft.subject,
                "time" => &mut draft.time,
                "data" => {
                    if !seen.first_time(name) {
                        return Err(ctx.fail(duplicate(name)));
                    }
                    data = Some(map.next_value()?);
                    continue;
                }
                "data_base64" => {
                    if !seen.first_time(name) {
                        return Err(ctx.fail(duplicate(name)));
                    }
                    data_base64 = match map.next_value()? {
                        Member::Null => None,
                        Member::String(encoded) => match decode_base64(&encoded) {
                            Ok(bytes) => Some(bytes),
                            Err(error) => return Err(ctx.fail(error)),
                        },
                        other => {
                            return Err(ctx.fail(EventError::attribute(
                                name,
                                format!(
                                    "attribute `data_base64` must be a JSON string holding base64 such as \"aGVsbG8=\"; got {}",
                                    other.kind()
                                ),
                            )));
                        }
                    };
                    continue;
                }
                _ => {
                    let value = match map.next_value()? {
                        Member::Null => continue,
                        Member::String(value) => ExtensionValue::String(value),
                        Member::Integer(value) => ExtensionValue::Integer(value),
                        Member::Boolean(value) => ExtensionValue::Boolean(value),
                        Member::Unsupported(kind) => {
                            return Err(ctx.fail(EventError::attribute(
                                name,
                                format!(
                                    "extension attribute `{}` must be a string, a boolean or an integer from -2147483648 to 2147483647; got {kind}; send other values as a string",
                                    event::shown(name)
                                ),
                            )));
                        }
                    };
                    if draft.extensions.contains_key(name) {
                        return Err(ctx.fail(duplicate(name)));
                    }
                    draft.extensions.insert(key.into_owned(), value);
                    continue;
                }
            };
            if !seen.first_time(name) {
                return Err(ctx.fail(duplicate(name)));
            }
            *slot = match map.next_value()? {
                Member::Null => None,
                Member::String(value) => Some(value),
                other => {
                    return Err(ctx.fail(EventError::attribute(
                        name,
                        format!(
                            "attribute `{name}` must be a JSON string; got {}",
                            other.kind()
                        ),
                    )));
                }
            };
        }

        draft.data = match (data, data_base64) {
            (Some(_), Some(_)) => {
                return Err(ctx.fail(EventError::attribute(
                    "data_base64",
                    "an event carries `data` or `data_base64`, not both; send binary data as `data_base64` and anything else as `data`".to_owned(),
                )));
            }
            (Some(raw), None) => match json_or_text(raw, draft.datacontenttype.as_deref()) {
                Ok(data) => Some(data),
                Err(error) => return Err(ctx.fail(error)),
            },
            (None, Some(bytes)) => Some(Data::Binary(bytes)),
            (None, None) => None,
        };
        match draft.finish(Carrier::Json) {
            Ok(event) => Ok(event),
            Err(error) => Err(ctx.fail(error)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<CloudEvent, A::Error> {
        Err(self.not_an_object("an array"))
    }

    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<CloudEvent, E> {
        Err(self.not_an_object("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _value: i64) -> Result<CloudEvent, E> {
        Err(self.not_an_object("a number"))
    }

    fn visit_u64<E: de::Error>(self, _value: u64) -> Result<CloudEvent, E> {
        Err(self.not_an_object("a number"))
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<CloudEvent, E> {
        Err(self.not_an_object("a number"))
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<CloudEvent, E> {
        Err(self.not_an_object("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<CloudEvent, E> {
        Err(self.not_an_object("null"))
    }
}

fn duplicate(name: &str) -> EventError {
    EventError::attribute(
        name,
        format!(
            "attribute `{}` appears more than once in the event; send it once",
            event::shown(name)
        ),
    )
}

/// Which members that are not extensions have been read, to reject duplicates.
#[derive(Debug, Default)]
struct Seen(u16);

impl Seen {
    fn first_time(&mut self, name: &str) -> bool {
        let bit = match name {
            "specversion" => 0,
            "id" => 1,
            "source" => 2,
            "type" => 3,
            "datacontenttype" => 4,
            "dataschema" => 5,
            "subject" => 6,
            "time" => 7,
            "data" => 8,
            "data_base64" => 9,
            _ => 10,
        };
        let first_time = self.0 & (1 << bit) == 0;
        self.0 |= 1 << bit;
        first_time
    }
}

/// The `data` member: JSON text when the content type is JSON (or absent, which the JSON format
/// reads as JSON); for any other content type a JSON string is that text itself.
fn json_or_text(raw: &RawValue, datacontenttype: Option<&str>) -> Result<Data, EventError> {
    let is_json = datacontenttype.is_none_or(event::is_json_media_type);
    if is_json || !raw.get().starts_with('"') {
        return Ok(Data::Json(raw.to_owned()));
    }
    match serde_json::from_str::<String>(raw.get()) {
        Ok(text) => Ok(Data::Text(text)),
        Err(error) => Err(EventError::attribute(
            "data",
            format!("attribute `data` holds a JSON string that cannot be decoded: {error}"),
        )),
    }
}

fn decode_base64(encoded: &str) -> Result<Bytes, EventError> {
    match BASE64.decode(encoded) {
        Ok(bytes) => Ok(Bytes::from(bytes)),
        Err(error) => Err(EventError::attribute(
            "data_base64",
            format!(
                "attribute `data_base64` must be standard base64 (RFC 4648) such as \"aGVsbG8=\"; {error}"
            ),
        )),
    }
}

/// A member's value, for every member but `data`. Only the shape needed to check it is kept:
/// arrays and objects are skipped over, not built.
enum Member {
    Null,
    String(String),
    Integer(i64),
    Boolean(bool),
    /// A JSON value no attribute can hold, described for the error message.
    Unsupported(&'static str),
}

impl Member {
    fn kind(&self) -> &'static str {
        match self {
            Member::Null => "null",
            Member::String(_) => "a string",
            Member::Integer(_) => "a number",
            Member::Boolean(_) => "a boolean",
            Member::Unsupported(kind) => kind,
        }
    }
}

impl<'de> de::Deserialize<'de> for Member {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Member, D::Error> {
        deserializer.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

/// serde_json reads an integer too large for 64 bits as a float, so the two cases share a
/// description.
const NOT_AN_INTEGER: &str = "a number that is not an integer in the CloudEvents Integer range";

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Member, E> {
        Ok(Member::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Member, E> {
        Ok(Member::Boolean(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Member, E> {
        Ok(Member::Integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Member, E> {
        match i64::try_from(value) {
            Ok(value) => Ok(Member::Integer(value)),
            Err(_) => Ok(Member::Unsupported(NOT_AN_INTEGER)),
        }
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<Member, E> {
        Ok(Member::Unsupported(NOT_AN_INTEGER))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Member, E> {
        Ok(Member::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Member, E> {
        Ok(Member::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Unsupported("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Member, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Member::Unsupported("an object"))
    }
}

/// A member name, borrowed from the input unless it contains escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an attribute name")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value))
    }
}

/// Where [`emit`] puts the encoding: a buffer, or a counter that only adds up lengths.
trait Output {
    /// Bytes that need no escaping: punctuation, member names, numbers, base64, raw JSON.
    fn raw(&mut self, bytes: &[u8]);
    /// A JSON string, quoted and escaped.
    fn string(&mut self, value: &str);
    fn base64(&mut self, bytes: &[u8]);
    fn integer(&mut self, value: i64);
}

/// Writes the JSON event format. The one place that decides the encoding; `encoded_len` runs
/// it against a counter.
fn emit(event: &CloudEvent, out: &mut impl Output) {
    emit_attributes(event, out);
    if let Some(data) = &event.data {
        emit_data(data, out);
    }
    out.raw(b"}");
}

/// The JSON event format of an event without its data, as a whole object.
pub(crate) fn write_attributes(event: &CloudEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(event));
    emit_attributes(event, &mut out);
    out.raw(b"}");
    out
}

/// Appends the `data` (or `data_base64`) member, with its leading comma, to `out`.
pub(crate) fn write_data_member(data: &Data, out: &mut Vec<u8>) {
    emit_data(data, out);
}

/// Everything but the data member and the closing brace.
fn emit_attributes(event: &CloudEvent, out: &mut impl Output) {
    out.raw(b"{\"specversion\":");
    out.string(&event.specversion);
    out.raw(b",\"id\":");
    out.string(&event.id);
    out.raw(b",\"source\":");
    out.string(&event.source);
    out.raw(b",\"type\":");
    out.string(&event.ty);
    let optional = [
        (&b",\"datacontenttype\":"[..], &event.datacontenttype),
        (b",\"dataschema\":", &event.dataschema),
        (b",\"subject\":", &event.subject),
        (b",\"time\":", &event.time),
    ];
    for (member, value) in optional {
        if let Some(value) = value {
            out.raw(member);
            out.string(value);
        }
    }
    for (name, value) in &event.extensions {
        out.raw(b",");
        out.string(name);
        out.raw(b":");
        match value {
            ExtensionValue::String(value) => out.string(value),
            ExtensionValue::Integer(value) => out.integer(*value),
            ExtensionValue::Boolean(true) => out.raw(b"true"),
            ExtensionValue::Boolean(false) => out.raw(b"false"),
        }
    }
}

fn emit_data(data: &Data, out: &mut impl Output) {
    match data {
        Data::Json(raw) => {
            out.raw(b",\"data\":");
            out.raw(raw.get().as_bytes());
        }
        Data::Text(text) => {
            out.raw(b",\"data\":");
            out.string(text);
        }
        Data::Binary(bytes) => {
            out.raw(b",\"data_base64\":\"");
            out.base64(bytes);
            out.raw(b"\"");
        }
    }
}

impl Output for Vec<u8> {
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn string(&mut self, value: &str) {
        // serde_json's escaping. Writing into a `Vec` cannot fail and neither can serializing
        // a `str`, so there is no error to handle.
        let _ = serde_json::to_writer(&mut *self, value);
    }

    fn base64(&mut self, bytes: &[u8]) {
        let start = self.len();
        self.resize(start + base64_len(bytes.len()), 0);
        match BASE64.encode_slice(bytes, &mut self[start..]) {
            Ok(n_written) => self.truncate(start + n_written),
            // Unreachable: the space reserved above is exactly what padded base64 needs.
            Err(_) => {
                self.truncate(start);
                self.extend_from_slice(BASE64.encode(bytes).as_bytes());
            }
        }
    }

    fn integer(&mut self, value: i64) {
        // As for `string`: an integer always serializes and a `Vec` never fails a write.
        let _ = serde_json::to_writer(&mut *self, &value);
    }
}

/// Adds up what [`emit`] would write. Must agree byte for byte with `impl Output for Vec<u8>`;
/// the round-trip property test checks that it does.
struct Counter(usize);

impl Output for Counter {
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn string(&mut self, value: &str) {
        // serde_json writes `"` and `\` and the short escapes \b \t \n \f \r as two bytes,
        // other control characters as six (`\u001f`), and everything else unchanged.
        let escaped_len: usize = value
            .bytes()
            .map(|byte| match byte {
                b'"' | b'\\' | 0x08 | b'\t' | b'\n' | 0x0c | b'\r' => 2,
                0x00..=0x1f => 6,
                _ => 1,
            })
            .sum();
        self.0 += 2 + escaped_len;
    }

    fn base64(&mut self, bytes: &[u8]) {
        self.0 += base64_len(bytes.len());
    }

    fn integer(&mut self, value: i64) {
        let mut n_digits = 1;
        let mut rest = value.unsigned_abs() / 10;
        while rest > 0 {
            n_digits += 1;
            rest /= 10;
        }
        self.0 += n_digits + usize::from(value < 0);
    }
}

/// Length of padded base64 for `n_bytes` bytes.
fn base64_len(n_bytes: usize) -> usize {
    n_bytes.div_ceil(3) * 4
}
