use super::*;

fn event(data: Option<Data>) -> CloudEvent {
    let mut event = crate::parse_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","ext":7}"#,
    )
    .expect("valid event");
    event.data = data;
    event
}

#[track_caller]
fn check_round_trip(event: &CloudEvent) {
    let record = event.to_stored();
    assert_eq!(CloudEvent::from_stored(&record).as_ref(), Ok(event));
    assert_eq!(
        stored_to_structured_json(&record),
        Ok(event.to_structured_json())
    );
}

#[test]
fn round_trips_every_kind_of_data() {
    check_round_trip(&event(None));
    check_round_trip(&event(Some(Data::Binary(Bytes::from_static(&[
        0, 159, 146, 150,
    ])))));
    check_round_trip(&event(Some(Data::Text("héllo \"world\"\n".to_owned()))));
    let raw = RawValue::from_string(r#"{"a": [1, 2]}"#.to_owned()).expect("json");
    check_round_trip(&event(Some(Data::Json(raw))));
}

#[test]
fn source_and_id_read_from_the_attributes_alone() {
    let mut escaped = event(Some(Data::Binary(Bytes::from_static(
        b"{\"id\":\"not me\"}",
    ))));
    escaped.id = "a \"quoted\" \u{e9} id".to_owned();
    escaped.source = "urn:x:/s".to_owned();
    assert_eq!(
        stored_source_and_id(&escaped.to_stored()),
        Ok(("urn:x:/s".to_owned(), "a \"quoted\" \u{e9} id".to_owned()))
    );
    assert!(stored_source_and_id(b"\x01\x00").is_err());
}

#[test]
fn binary_data_is_stored_raw_not_base64() {
    let payload = vec![0xAB_u8; 1024];
    let record = event(Some(Data::Binary(Bytes::from(payload.clone())))).to_stored();
    assert!(record.ends_with(&payload));
    assert!(record.len() < 1024 + 200, "{} bytes", record.len());
}

#[test]
fn refuses_damaged_records() {
    let record = event(Some(Data::Text("x".to_owned()))).to_stored();
    assert_eq!(
        stored_to_structured_json(&record[..3]),
        Err(StoredError::Truncated(3))
    );
    assert_eq!(
        stored_to_structured_json(&record[..20]),
        Err(StoredError::Truncated(20))
    );
    let mut version = record.clone();
    version[0] = 9;
    assert_eq!(
        stored_to_structured_json(&version),
        Err(StoredError::UnknownVersion(9))
    );
    let mut kind = record.clone();
    kind[1] = 7;
    assert_eq!(
        stored_to_structured_json(&kind),
        Err(StoredError::UnknownDataKind(7))
    );
    let mut none_with_data = record.clone();
    none_with_data[1] = 0;
    assert_eq!(
        stored_to_structured_json(&none_with_data),
        Err(StoredError::UnexpectedData)
    );
    let mut bad_text = record.clone();
    if let Some(last) = bad_text.last_mut() {
        *last = 0xFF;
    }
    assert_eq!(
        stored_to_structured_json(&bad_text),
        Err(StoredError::Data("UTF-8 text"))
    );
    let mut bad_json = bad_text;
    bad_json[1] = 1;
    assert_eq!(
        stored_to_structured_json(&bad_json),
        Err(StoredError::Data("JSON"))
    );
}

/// Binary records are read without the JSON round trip; these attributes, which no Trellis
/// writes, must still read exactly as their rendering parses, or fail where it fails.
#[test]
fn binary_records_read_as_their_rendering_parses() {
    let attributes: &[&str] = &[
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t"}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":null}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data_base64":null}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":"x"}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data_base64":"eA=="}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","d\u0061ta_base64":null}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","subject":"\u0064"}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","datacontenttype":"application/json"}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t" } "#,
        r#" {"specversion":"1.0","id":"a","source":"/s","type":"t"}"#,
        r#"{"specversion":"1.0","id":"a","source":"/s","type":"t"}{}"#,
        r#"{}"#,
    ];
    for attributes in attributes {
        let mut record = vec![1u8, 3];
        record.extend_from_slice(&(attributes.len() as u32).to_le_bytes());
        record.extend_from_slice(attributes.as_bytes());
        record.extend_from_slice(b"\x00\xffbinary");
        let direct = CloudEvent::from_stored(&record).ok();
        let via_rendering = stored_to_structured_json(&record)
            .ok()
            .and_then(|json| crate::parse_structured(&json).ok());
        assert_eq!(direct, via_rendering, "{attributes}");
    }
}

/// Binary-mode publishes always carry `datacontenttype`; if that name sent them down the slow
/// path, every delivery would pay for base64 both ways.
#[test]
fn only_data_members_take_the_rendering_path() {
    assert!(!may_name_data(
        br#"{"specversion":"1.0","id":"a","datacontenttype":"application/octet-stream","dataschema":"/s"}"#
    ));
    assert!(may_name_data(br#"{"id":"a","data":null}"#));
    assert!(may_name_data(br#"{"id":"a","data_base64":null}"#));
    assert!(may_name_data(br#"{"id":"a","d\u0061ta":null}"#));
}
