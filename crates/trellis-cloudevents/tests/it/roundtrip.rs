//! The stored encoding round-trips: `from_structured_json(to_structured_json(e)) == e` for every
//! valid event, and `encoded_len` is the exact length of the encoding.
//!
//! The generator builds only valid events, and only the `data` shapes the parsers produce for
//! each content type (text data, for instance, always has a non-JSON `datacontenttype`).

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::value::RawValue;
use trellis_cloudevents::{CloudEvent, Data, ExtensionValue};

/// Any text, including quotes, backslashes, control characters and non-ASCII.
fn text(min_len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '"', '\\', '\n', '\t', '\u{0}', '\u{1f}', '\u{7f}', '\u{2028}', 'é'
            ]),
        ],
        min_len..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn source() -> impl Strategy<Value = String> {
    "[^\\s\\p{Cc}]{1,16}"
}

fn time() -> impl Strategy<Value = String> {
    let offset = prop::sample::select(vec!["Z", "z", "+02:00", "-05:30", "+00:00"]);
    let fraction = prop::option::of("[0-9]{1,9}");
    (
        2000..2100u32,
        1..=12u32,
        1..=28u32,
        0..24u32,
        0..60u32,
        0..60u32,
        fraction,
        offset,
    )
        .prop_map(
            |(year, month, day, hour, minute, second, fraction, offset)| {
                let fraction = fraction
                    .map(|digits| format!(".{digits}"))
                    .unwrap_or_default();
                format!(
                    "{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{offset}"
                )
            },
        )
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |value| value.is_finite())
            .prop_map(serde_json::Value::from),
        text(0).prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(text(0), inner, 0..6)
                .prop_map(|members| serde_json::Value::Object(members.into_iter().collect())),
        ]
    })
}

fn json_data() -> impl Strategy<Value = Data> {
    (json_value(), any::<bool>()).prop_map(|(value, pretty)| {
        let text = if pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        };
        let text = text.expect("a Value always serializes");
        Data::Json(RawValue::from_string(text).expect("serde_json wrote valid JSON"))
    })
}

fn binary_data() -> impl Strategy<Value = Data> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| Data::Binary(Bytes::from(bytes)))
}

/// A `datacontenttype` and data that fit together the way the parsers produce them.
fn content() -> impl Strategy<Value = (Option<String>, Option<Data>)> {
    let json_type = prop::sample::select(vec![
        "application/json",
        "application/json; charset=utf-8",
        "text/json",
        "application/vnd.trellis+json",
    ]);
    let text_type = prop::sample::select(vec![
        "text/plain",
        "text/xml; charset=utf-8",
        "application/xml",
    ]);
    let binary_type = prop::sample::select(vec!["application/octet-stream", "image/png"]);
    prop_oneof![
        prop::option::of(prop_oneof![json_data(), binary_data()]).prop_map(|data| (None, data)),
        (
            json_type,
            prop::option::of(prop_oneof![json_data(), binary_data()])
        )
            .prop_map(|(content_type, data)| (Some(content_type.to_owned()), data)),
        (
            text_type,
            prop::option::of(prop_oneof![text(0).prop_map(Data::Text), binary_data()])
        )
            .prop_map(|(content_type, data)| (Some(content_type.to_owned()), data)),
        (binary_type, prop::option::of(binary_data()))
            .prop_map(|(content_type, data)| (Some(content_type.to_owned()), data)),
    ]
}

fn extensions() -> impl Strategy<Value = BTreeMap<String, ExtensionValue>> {
    const RESERVED: [&str; 9] = [
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "dataschema",
        "subject",
        "time",
        "data",
    ];
    let name = "[a-z0-9]{1,24}".prop_filter("not an attribute name", |name| {
        !RESERVED.contains(&name.as_str())
    });
    let value = prop_oneof![
        text(0).prop_map(ExtensionValue::String),
        any::<i32>().prop_map(|integer| ExtensionValue::Integer(integer.into())),
        any::<bool>().prop_map(ExtensionValue::Boolean),
    ];
    proptest::collection::btree_map(name, value, 0..4)
}

fn event() -> impl Strategy<Value = CloudEvent> {
    let attributes = (
        text(1),
        source(),
        text(1),
        prop::option::of("https://example\\.com/[a-z]{0,8}\\.json"),
        prop::option::of(text(1)),
        prop::option::of(time()),
    );
    (attributes, extensions(), content()).prop_map(
        |((id, source, ty, dataschema, subject, time), extensions, (datacontenttype, data))| {
            CloudEvent {
                id,
                source,
                specversion: "1.0".to_owned(),
                ty,
                datacontenttype,
                dataschema,
                subject,
                time,
                extensions,
                data,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn structured_json_round_trips(event in event()) {
        prop_assert_eq!(event.validate(), Ok(()));
        let encoded = event.to_structured_json();
        prop_assert_eq!(encoded.len(), event.encoded_len());
        let decoded = CloudEvent::from_structured_json(&encoded);
        prop_assert_eq!(decoded, Ok(event));
    }

    #[test]
    fn stored_records_round_trip_and_render_the_json_event_format(event in event()) {
        let record = event.to_stored();
        prop_assert_eq!(trellis_cloudevents::stored_to_structured_json(&record), Ok(event.to_structured_json()));
        prop_assert_eq!(CloudEvent::from_stored(&record), Ok(event));
    }

    #[test]
    fn structured_json_is_a_single_valid_json_object(event in event()) {
        let encoded = event.to_structured_json();
        let value: serde_json::Value = serde_json::from_slice(&encoded).expect("valid JSON");
        prop_assert!(value.is_object());
    }
}

#[test]
fn writes_members_in_canonical_order() {
    let body = r#"{"data_base64":"aGk=","zext":1,"aext":"x","time":"2026-01-02T15:04:05Z","subject":"s",
        "dataschema":"https://e.com/s","datacontenttype":"application/octet-stream","type":"t","source":"/s","id":"1",
        "specversion":"1.0"}"#;
    let event = CloudEvent::from_structured_json(body.as_bytes()).expect("valid");
    let encoded = String::from_utf8(event.to_structured_json()).expect("JSON is UTF-8");
    assert_eq!(
        encoded,
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","dataschema":"https://e.com/s","subject":"s","time":"2026-01-02T15:04:05Z","aext":"x","zext":1,"data_base64":"aGk="}"#
    );
}

#[test]
fn writes_text_data_as_a_json_string() {
    let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"line\nbreak \"quoted\""}"#;
    let event = CloudEvent::from_structured_json(body.as_bytes()).expect("valid");
    assert_eq!(event.to_structured_json(), body.as_bytes());
}
