use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::value::RawValue;
use trellis_cloudevents::{CloudEvent, Data, ExtensionValue};

use super::event_from_proto;
use crate::v1;
use crate::v1::cloud_event_attribute_value::Attr;

fn event(datacontenttype: Option<&str>, data: Option<Data>) -> CloudEvent {
    CloudEvent {
        id: "id-1".to_owned(),
        source: "/orders".to_owned(),
        specversion: "1.0".to_owned(),
        ty: "com.example.order.created".to_owned(),
        datacontenttype: datacontenttype.map(str::to_owned),
        dataschema: None,
        subject: None,
        time: None,
        extensions: BTreeMap::new(),
        data,
    }
}

fn json(text: &str) -> Data {
    Data::Json(RawValue::from_string(text.to_owned()).expect("test JSON is valid"))
}

fn round_trip(original: &CloudEvent) -> CloudEvent {
    let proto = v1::CloudEvent::from(original);
    event_from_proto(proto).expect("a valid event converts back")
}

fn proto(attributes: Vec<(&str, Attr)>, data: Option<v1::cloud_event::Data>) -> v1::CloudEvent {
    v1::CloudEvent {
        id: "id-1".to_owned(),
        source: "/orders".to_owned(),
        spec_version: "1.0".to_owned(),
        r#type: "com.example.order.created".to_owned(),
        attributes: attributes
            .into_iter()
            .map(|(name, attr)| {
                (
                    name.to_owned(),
                    v1::CloudEventAttributeValue { attr: Some(attr) },
                )
            })
            .collect(),
        data,
    }
}

#[test]
fn binary_data_round_trips() {
    let original = event(
        Some("application/octet-stream"),
        Some(Data::Binary(Bytes::from_static(&[0, 1, 2, 255]))),
    );
    let proto = v1::CloudEvent::from(&original);
    assert_eq!(
        proto.data,
        Some(v1::cloud_event::Data::BinaryData(Bytes::from_static(&[
            0, 1, 2, 255
        ])))
    );
    assert_eq!(round_trip(&original), original);
}

#[test]
fn text_data_round_trips() {
    let original = event(
        Some("text/plain; charset=utf-8"),
        Some(Data::Text("hello \"world\"".to_owned())),
    );
    let proto = v1::CloudEvent::from(&original);
    assert_eq!(
        proto.data,
        Some(v1::cloud_event::Data::TextData(
            "hello \"world\"".to_owned()
        ))
    );
    assert_eq!(round_trip(&original), original);
}

#[test]
fn json_data_round_trips_with_and_without_a_content_type() {
    for datacontenttype in [
        Some("application/json"),
        Some("application/cloudevents+json"),
        None,
    ] {
        let original = event(datacontenttype, Some(json(r#"{"a":[1,2,{"b":null}]}"#)));
        let proto = v1::CloudEvent::from(&original);
        assert_eq!(
            proto.data,
            Some(v1::cloud_event::Data::TextData(
                r#"{"a":[1,2,{"b":null}]}"#.to_owned()
            ))
        );
        assert_eq!(round_trip(&original), original);
    }
}

#[test]
fn a_json_string_without_content_type_round_trips() {
    let original = event(None, Some(json(r#""just a string""#)));
    assert_eq!(round_trip(&original), original);
}

#[test]
fn text_without_content_type_comes_back_as_the_log_renders_it() {
    // The JSON event format reads data without a content type as JSON, so the log gives this
    // event back with a JSON string; the conversion agrees with it.
    let original = event(None, Some(Data::Text("42".to_owned())));
    let back = round_trip(&original);
    assert_eq!(back.data, Some(json(r#""42""#)));
    let stored_back = CloudEvent::from_stored(&original.to_stored()).expect("stored reads back");
    assert_eq!(back, stored_back);
}

#[test]
fn no_data_round_trips() {
    let original = event(None, None);
    let proto = v1::CloudEvent::from(&original);
    assert_eq!(proto.data, None);
    assert!(proto.attributes.is_empty());
    assert_eq!(round_trip(&original), original);
}

#[test]
fn optional_attributes_and_extensions_of_each_type_round_trip() {
    let mut original = event(Some("application/json"), Some(json("1")));
    original.dataschema = Some("https://example.com/schemas/order.json".to_owned());
    original.subject = Some("order-7".to_owned());
    original.time = Some("2026-01-02T15:04:05.123456Z".to_owned());
    original
        .extensions
        .insert("text".to_owned(), ExtensionValue::String("x y".to_owned()));
    original.extensions.insert(
        "small".to_owned(),
        ExtensionValue::Integer(i64::from(i32::MIN)),
    );
    original.extensions.insert(
        "big".to_owned(),
        ExtensionValue::Integer(i64::from(i32::MAX)),
    );
    original
        .extensions
        .insert("flag".to_owned(), ExtensionValue::Boolean(true));
    original
        .extensions
        .insert("off".to_owned(), ExtensionValue::Boolean(false));

    let proto = v1::CloudEvent::from(&original);
    let attr = |name: &str| {
        proto
            .attributes
            .get(name)
            .and_then(|value| value.attr.clone())
            .expect("attribute present")
    };
    assert_eq!(
        attr("datacontenttype"),
        Attr::CeString("application/json".to_owned())
    );
    assert_eq!(
        attr("dataschema"),
        Attr::CeUri("https://example.com/schemas/order.json".to_owned())
    );
    assert_eq!(attr("subject"), Attr::CeString("order-7".to_owned()));
    assert!(matches!(attr("time"), Attr::CeTimestamp(ts) if ts.nanos == 123_456_000));
    assert_eq!(attr("text"), Attr::CeString("x y".to_owned()));
    assert_eq!(attr("small"), Attr::CeInteger(i32::MIN));
    assert_eq!(attr("big"), Attr::CeInteger(i32::MAX));
    assert_eq!(attr("flag"), Attr::CeBoolean(true));
    assert_eq!(attr("off"), Attr::CeBoolean(false));

    assert_eq!(round_trip(&original), original);
}

#[test]
fn time_keeps_its_instant_in_utc() {
    let mut original = event(None, None);
    original.time = Some("2026-01-02T15:04:05+02:00".to_owned());
    let back = round_trip(&original);
    assert_eq!(back.time.as_deref(), Some("2026-01-02T13:04:05Z"));
}

#[test]
fn string_forms_of_typed_attributes_are_accepted() {
    let decoded = event_from_proto(proto(
        vec![
            ("time", Attr::CeString("2026-01-02T15:04:05Z".to_owned())),
            (
                "dataschema",
                Attr::CeString("urn:example:schema".to_owned()),
            ),
            ("link", Attr::CeUriRef("/a/b".to_owned())),
            ("home", Attr::CeUri("https://example.com".to_owned())),
            (
                "seen",
                Attr::CeTimestamp(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
            ),
        ],
        None,
    ))
    .expect("valid");
    assert_eq!(decoded.time.as_deref(), Some("2026-01-02T15:04:05Z"));
    assert_eq!(decoded.dataschema.as_deref(), Some("urn:example:schema"));
    assert_eq!(
        decoded.extensions.get("link"),
        Some(&ExtensionValue::String("/a/b".to_owned()))
    );
    assert_eq!(
        decoded.extensions.get("home"),
        Some(&ExtensionValue::String("https://example.com".to_owned()))
    );
    assert_eq!(
        decoded.extensions.get("seen"),
        Some(&ExtensionValue::String("1970-01-01T00:00:00Z".to_owned()))
    );
}

#[test]
fn text_data_under_a_text_content_type_is_text() {
    let decoded = event_from_proto(proto(
        vec![("datacontenttype", Attr::CeString("text/csv".to_owned()))],
        Some(v1::cloud_event::Data::TextData("a,b\n1,2".to_owned())),
    ))
    .expect("valid");
    assert_eq!(decoded.data, Some(Data::Text("a,b\n1,2".to_owned())));
}

fn rejected_attribute(event: v1::CloudEvent) -> String {
    let error = event_from_proto(event).expect_err("must be refused");
    assert!(!error.message.is_empty());
    assert_eq!(error.index, None);
    error.attribute.expect("the error names an attribute")
}

#[test]
fn rejections_name_the_attribute() {
    let bytes_extension = proto(
        vec![("blob", Attr::CeBytes(Bytes::from_static(&[1, 2])))],
        None,
    );
    assert_eq!(rejected_attribute(bytes_extension), "blob");

    let mut no_value = proto(vec![], None);
    no_value.attributes.insert(
        "empty".to_owned(),
        v1::CloudEventAttributeValue { attr: None },
    );
    assert_eq!(rejected_attribute(no_value), "empty");

    let integer_subject = proto(vec![("subject", Attr::CeInteger(3))], None);
    assert_eq!(rejected_attribute(integer_subject), "subject");

    let boolean_time = proto(vec![("time", Attr::CeBoolean(true))], None);
    assert_eq!(rejected_attribute(boolean_time), "time");

    let bad_time = proto(vec![("time", Attr::CeString("yesterday".to_owned()))], None);
    assert_eq!(rejected_attribute(bad_time), "time");

    let bad_timestamp = proto(
        vec![(
            "time",
            Attr::CeTimestamp(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
        )],
        None,
    );
    assert_eq!(rejected_attribute(bad_timestamp), "time");

    let uri_content_type = proto(
        vec![(
            "datacontenttype",
            Attr::CeUri("application/json".to_owned()),
        )],
        None,
    );
    assert_eq!(rejected_attribute(uri_content_type), "datacontenttype");

    let bad_name = proto(vec![("Bad-Name", Attr::CeBoolean(true))], None);
    assert_eq!(rejected_attribute(bad_name), "Bad-Name");

    let reserved = proto(vec![("id", Attr::CeString("again".to_owned()))], None);
    assert_eq!(rejected_attribute(reserved), "id");

    let not_json = proto(
        vec![(
            "datacontenttype",
            Attr::CeString("application/json".to_owned()),
        )],
        Some(v1::cloud_event::Data::TextData("{not json".to_owned())),
    );
    assert_eq!(rejected_attribute(not_json), "data");

    let text_without_type = proto(
        vec![],
        Some(v1::cloud_event::Data::TextData("plain words".to_owned())),
    );
    assert_eq!(rejected_attribute(text_without_type), "data");
}

#[test]
fn required_attributes_are_checked() {
    let mut no_version = proto(vec![], None);
    no_version.spec_version.clear();
    assert_eq!(rejected_attribute(no_version), "specversion");

    let mut old_version = proto(vec![], None);
    old_version.spec_version = "0.3".to_owned();
    assert_eq!(rejected_attribute(old_version), "specversion");

    let mut no_id = proto(vec![], None);
    no_id.id.clear();
    assert_eq!(rejected_attribute(no_id), "id");

    let mut bad_source = proto(vec![], None);
    bad_source.source = "has space".to_owned();
    assert_eq!(rejected_attribute(bad_source), "source");

    let mut no_type = proto(vec![], None);
    no_type.r#type.clear();
    assert_eq!(rejected_attribute(no_type), "type");
}

#[test]
fn try_from_is_event_from_proto() {
    let original = event(Some("text/plain"), Some(Data::Text("t".to_owned())));
    let back = CloudEvent::try_from(v1::CloudEvent::from(original.clone())).expect("valid");
    assert_eq!(back, original);
}
