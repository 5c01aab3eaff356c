use trellis_cloudevents::Data;

use super::*;

fn template() -> Template {
    Template {
        source: "/trellis/cli".to_owned(),
        ty: "dev.trellis.cli".to_owned(),
    }
}

fn event(line: &str) -> CloudEvent {
    event_from_line(line.as_bytes(), &template())
        .expect("not blank")
        .expect("an event")
}

fn failure(line: &str) -> String {
    event_from_line(line.as_bytes(), &template())
        .expect("not blank")
        .expect_err("a failure")
}

#[test]
fn a_structured_event_is_sent_as_given() {
    let event =
        event(r#"{"specversion":"1.0","id":"a-1","source":"/shop","type":"order","data":{"n":1}}"#);
    assert_eq!(event.id, "a-1");
    assert_eq!(event.source, "/shop");
    assert_eq!(event.ty, "order");
}

#[test]
fn any_other_line_is_text_data_of_a_new_event() {
    let first = event("hello world\n");
    let second = event("hello world\r\n");
    assert_eq!(first.source, "/trellis/cli");
    assert_eq!(first.ty, "dev.trellis.cli");
    assert_eq!(first.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(first.data, Some(Data::Text("hello world".to_owned())));
    assert_eq!(second.data, first.data);
    assert_ne!(first.id, second.id, "each line gets a fresh id");
    assert!(first.validate().is_ok());
}

#[test]
fn json_that_is_not_an_event_is_data() {
    let line = r#"{"note":{"specversion":"1.0"}}"#;
    assert_eq!(event(line).data, Some(Data::Text(line.to_owned())));
    assert_eq!(event("[1,2]").data, Some(Data::Text("[1,2]".to_owned())));
}

#[test]
fn blank_lines_are_skipped() {
    for line in ["", "\n", "  \t\r\n"] {
        assert!(event_from_line(line.as_bytes(), &template()).is_none());
    }
}

#[test]
fn an_invalid_event_fails_alone() {
    let message = failure(r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#);
    assert!(message.starts_with("invalid CloudEvent: "), "{message}");
    let message = failure(r#"{"specversion":"1.0","id":"1","#);
    assert!(
        message.starts_with("invalid CloudEvent JSON: "),
        "{message}"
    );
}

#[test]
fn a_line_that_is_not_utf8_fails() {
    let outcome = event_from_line(b"caf\xe9\n", &template()).expect("not blank");
    assert!(outcome.expect_err("a failure").starts_with("not UTF-8"));
}

#[test]
fn generated_events_have_unique_ids_and_the_asked_size() {
    let generator = Generator::new(template(), 30);
    let (first, second) = (generator.event(0), generator.event(1));
    assert_ne!(first.id, second.id);
    assert!(first.id.ends_with("-0"));
    match &first.data {
        Some(Data::Text(text)) => assert_eq!(text.len(), 30),
        other => panic!("text data expected, got {other:?}"),
    }
    assert!(first.validate().is_ok());
    assert_eq!(Generator::new(template(), 0).event(0).data, None);
    assert_ne!(
        Generator::new(template(), 0).event(0).id,
        first.id,
        "ids differ across runs"
    );
}

#[test]
fn a_bad_source_is_named() {
    let template = Template {
        source: String::new(),
        ty: "t".to_owned(),
    };
    let message = template.validate().expect_err("empty source");
    assert!(message.starts_with("--source: "), "{message}");
}
