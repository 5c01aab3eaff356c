//! The connectors tables and key/value views, on answers shaped like the API's.

use serde_json::{Value, json};

use super::{connector_details, connector_table, offsets_table, plugins_table, status_details};

fn status(state: &str, trace: Option<&str>) -> Value {
    let mut connector = json!({"state": state});
    if let Some(trace) = trace {
        connector["trace"] = json!(trace);
    }
    json!({
        "name": "lines", "type": "source", "plugin": "file-source",
        "connector": connector, "paused": state == "PAUSED",
        "records": {"dead_lettered": 0, "failed": 1, "polled": 12, "published": 11, "put": 0},
        "offsets": {"begin_flush_refused": 0, "commit_failures": 0, "commits": 3}
    })
}

fn info() -> Value {
    json!({"name": "lines", "type": "source", "config": {
        "connector.class": "file-source", "errors.tolerance": "all", "path": "/var/log/app.log",
        "topic": "lines"
    }})
}

#[test]
fn list_shows_class_topic_and_state_sorted_by_name() {
    let answer = json!({
        "lines": {"info": info(), "status": status("RUNNING", None)},
        "hook": {
            "info": {"name": "hook", "type": "sink", "config": {"connector.class": "http-sink", "topic": "orders"}},
            "status": status("FAILED", Some("put failed"))
        }
    });
    assert_eq!(
        connector_table(&answer).expect("a table"),
        "NAME   TYPE    CLASS        TOPIC   STATE\n\
         hook   sink    http-sink    orders  FAILED\n\
         lines  source  file-source  lines   RUNNING\n"
    );
}

#[test]
fn list_of_bare_names_shows_the_names() {
    assert_eq!(
        connector_table(&json!(["a", "b"])).expect("a table"),
        "NAME  TYPE  CLASS  TOPIC  STATE\n\
         a     -     -      -      -\n\
         b     -     -      -      -\n"
    );
    assert_eq!(
        connector_table(&json!({})).expect("a table"),
        "NAME  TYPE  CLASS  TOPIC  STATE\n"
    );
}

#[test]
fn list_of_another_shape_is_an_error() {
    let error = connector_table(&json!("nope")).expect_err("not a list");
    assert!(error.to_string().contains("is it trellis"), "{error}");
}

#[test]
fn details_show_config_then_status() {
    let mut connector = info();
    connector["status"] = status("FAILED", Some("the sink refused\n  record 7"));
    assert_eq!(
        connector_details(&connector),
        "name:               lines\n\
         type:               source\n\
         config:\n\
         \x20 connector.class:  file-source\n\
         \x20 topic:            lines\n\
         \x20 errors.tolerance: all\n\
         \x20 path:             /var/log/app.log\n\
         status:\n\
         \x20 state:            FAILED\n\
         \x20 trace:            the sink refused record 7\n\
         \x20 paused:           false\n\
         \x20 records:          dead_lettered=0 failed=1 polled=12 published=11 put=0\n\
         \x20 offsets:          begin_flush_refused=0 commit_failures=0 commits=3\n"
    );
}

#[test]
fn create_answer_has_no_status_section() {
    let text = connector_details(&info());
    assert!(!text.contains("status:"), "{text}");
    assert!(text.starts_with("name:"), "{text}");
}

#[test]
fn status_view_lifts_the_state_and_splits_counters() {
    assert_eq!(
        status_details(&status("RUNNING", None)),
        "name:                  lines\n\
         type:                  source\n\
         plugin:                file-source\n\
         state:                 RUNNING\n\
         paused:                false\n\
         records:\n\
         \x20 polled:              12\n\
         \x20 published:           11\n\
         \x20 put:                 0\n\
         \x20 failed:              1\n\
         \x20 dead_lettered:       0\n\
         offsets:\n\
         \x20 commits:             3\n\
         \x20 commit_failures:     0\n\
         \x20 begin_flush_refused: 0\n"
    );
}

#[test]
fn offsets_table_lists_partitions() {
    let answer = json!({"offsets": [{"partition": "/var/log/app.log", "offset": 4096}]});
    assert_eq!(
        offsets_table(&answer).expect("a table"),
        "PARTITION         OFFSET\n\
         /var/log/app.log  4096\n"
    );
    assert!(offsets_table(&json!([])).is_err());
}

#[test]
fn plugins_table_marks_required_keys() {
    let answer = json!([{
        "class": "file-source", "type": "source", "description": "Tails a file.",
        "config": [
            {"name": "connector.class", "required": true},
            {"name": "path", "required": true, "secret": false},
            {"name": "max_batch", "required": false, "default": 500}
        ]
    }, {"class": "http-sink", "type": "sink"}]);
    assert_eq!(
        plugins_table(&answer).expect("a table"),
        "CLASS        TYPE    KEYS (* required)\n\
         file-source  source  connector.class* path* max_batch\n\
         http-sink    sink    -\n"
    );
}
