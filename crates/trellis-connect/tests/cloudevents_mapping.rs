//! Records and CloudEvents map both ways as the `cloudevents` module's table says.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use trellis_cloudevents::{CloudEvent, Data, ExtensionValue};
use trellis_connect::cloudevents::{
    EventDefaults, OFFSET_EXTENSION, PARTITION_EXTENSION, from_cloud_event, to_cloud_event,
};
use trellis_connect::{ConnectRecord, Position};

fn defaults() -> EventDefaults {
    EventDefaults {
        source: "/connectors/orders".to_owned(),
        ty: "com.example.line".to_owned(),
    }
}

fn timestamp(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_default()
}

#[test]
fn a_record_becomes_an_event_with_its_position_and_valid_extension_names() {
    let record = ConnectRecord::new(
        "file-42",
        Position::new("/var/log/app.log", 42),
        r#"{"n":1}"#,
    )
    .with_timestamp(timestamp(1_767_225_600_123))
    .with_extension("datacontenttype", "application/json")
    .with_extension("Content-Encoding", "gzip")
    .with_extension("id", "clash")
    .with_extension("content_encoding", "second");
    let event = to_cloud_event(&record, &defaults()).expect("a valid event");
    assert_eq!(event.id, "file-42");
    assert_eq!(event.source, "/connectors/orders");
    assert_eq!(event.ty, "com.example.line");
    assert_eq!(event.time.as_deref(), Some("2026-01-01T00:00:00.123Z"));
    assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
    assert!(matches!(&event.data, Some(Data::Json(raw)) if raw.get() == r#"{"n":1}"#));
    let string = |s: &str| ExtensionValue::String(s.to_owned());
    let expected: BTreeMap<String, ExtensionValue> = [
        ("contentencoding", string("gzip")),
        ("contentencoding2", string("second")),
        ("xid", string("clash")),
        (PARTITION_EXTENSION, string("/var/log/app.log")),
        (OFFSET_EXTENSION, string("42")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    assert_eq!(event.extensions, expected);
    // What the log stores reads back as the same event.
    let stored = CloudEvent::from_structured_json(&event.to_structured_json()).expect("parse");
    assert_eq!(stored, event);
}

#[test]
fn an_invalid_attribute_from_an_extension_is_refused_by_name() {
    let record =
        ConnectRecord::new("r", Position::new("p", 1), "x").with_extension("source", "has spaces");
    let error = to_cloud_event(&record, &defaults()).expect_err("a source with spaces");
    assert_eq!(error.attribute.as_deref(), Some("source"));
}

#[test]
fn an_event_becomes_a_record_at_the_position_it_was_read() {
    let body = br#"{"specversion":"1.0","id":"e1","source":"/orders","type":"order.created",
        "subject":"o-7","time":"2026-01-01T01:00:00+01:00","priority":3,"urgent":true,
        "connectpartition":"far","connectoffset":"9","data":{"total":12}}"#;
    let event = CloudEvent::from_structured_json(body).expect("a valid event");
    let record = from_cloud_event(&event, Position::new("orders", 100));
    assert_eq!(record.id, "e1");
    assert_eq!(record.position, Position::new("orders", 100));
    assert_eq!(record.timestamp, timestamp(1_767_225_600_000));
    assert_eq!(&record.data[..], br#"{"total":12}"#);
    let extensions: Vec<(&str, &str)> = record
        .extensions
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        extensions,
        [
            ("datacontenttype", "application/json"),
            ("priority", "3"),
            ("source", "/orders"),
            ("subject", "o-7"),
            ("type", "order.created"),
            ("urgent", "true"),
        ]
    );
    assert!(!record.has_callback());
}

fn record_strategy() -> impl Strategy<Value = ConnectRecord> {
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("text/plain; charset=utf-8")),
        Just(Some("application/octet-stream")),
    ];
    (
        "[a-z0-9-]{1,20}",
        "[a-z/._]{1,20}",
        any::<u64>(),
        0i64..4_102_444_800_000,
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            Just(b" 1 ".to_vec()),
            Just(br#"{"a":[1,2]}"#.to_vec()),
            "\\PC{0,16}".prop_map(String::into_bytes),
        ],
        prop::collection::btree_map("[a-z][a-z0-9]{0,10}", "\\PC{0,12}", 0..4),
        content_type,
        prop::option::of("[a-z]{1,8}"),
    )
        .prop_map(
            |(id, partition, offset, millis, data, extensions, content_type, subject)| {
                let mut record = ConnectRecord::new(id, Position::new(partition, offset), data)
                    .with_timestamp(timestamp(millis));
                for (key, value) in extensions {
                    if !matches!(
                        key.as_str(),
                        "id" | "time"
                            | "specversion"
                            | "data"
                            | "source"
                            | "type"
                            | "subject"
                            | "dataschema"
                            | "datacontenttype"
                    ) && key != PARTITION_EXTENSION
                        && key != OFFSET_EXTENSION
                    {
                        record.extensions.insert(key, value);
                    }
                }
                if let Some(content_type) = content_type {
                    record
                        .extensions
                        .insert("datacontenttype".to_owned(), content_type.to_owned());
                }
                if let Some(subject) = subject {
                    record.extensions.insert("subject".to_owned(), subject);
                }
                record
            },
        )
}

proptest! {
    /// A record with valid extension names comes back unchanged through an event, its stored
    /// form, and a record read at the same position; `source` and `type` come back as the
    /// defaults the event was given.
    #[test]
    fn a_record_round_trips_through_an_event(record in record_strategy()) {
        let event = to_cloud_event(&record, &defaults()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let stored = CloudEvent::from_structured_json(&event.to_structured_json())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = from_cloud_event(&stored, record.position.clone());
        let mut expected = record.clone()
            .with_extension("source", "/connectors/orders")
            .with_extension("type", "com.example.line");
        // JSON data read back without a content type is marked as JSON; binary data is kept.
        if expected.extension("datacontenttype").is_none() && matches!(stored.data, Some(Data::Json(_))) {
            expected.extensions.insert("datacontenttype".to_owned(), "application/json".to_owned());
        }
        prop_assert_eq!(back, expected);
    }
}
