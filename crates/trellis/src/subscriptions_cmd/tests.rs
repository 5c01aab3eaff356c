//! The command line of `trellis subscriptions` and the request bodies it builds.

use clap::Parser;
use serde_json::{Value, json};

use super::create_body;
use crate::cli::{Cli, Command, SubscriptionsArgs, SubscriptionsCommand};

fn parse(args: &[&str]) -> Result<SubscriptionsArgs, clap::Error> {
    let argv = ["trellis", "subscriptions"].iter().chain(args);
    match Cli::try_parse_from(argv)?.command {
        Command::Subscriptions(args) => Ok(args),
        other => panic!("parsed as another command: {other:?}"),
    }
}

#[track_caller]
fn check_body(args: &[&str], expected: Value) {
    let parsed = parse(args).expect("valid arguments");
    let SubscriptionsCommand::Create(create) = parsed.command else {
        panic!("not a create: {:?}", parsed.command);
    };
    assert_eq!(create_body(&create).expect("a body"), expected);
}

#[track_caller]
fn check_usage_error(args: &[&str], expected: &str) {
    let error = parse(args).expect_err("a usage error");
    assert_eq!(error.exit_code(), 2);
    let text = error.to_string();
    assert!(text.contains(expected), "{expected:?} not in {text}");
}

#[test]
fn flags_build_the_smallest_body() {
    check_body(
        &[
            "create",
            "--name",
            "audit",
            "--topic",
            "orders",
            "--url",
            "http://127.0.0.1:8080/hook",
        ],
        json!({"name": "audit", "topic": "orders", "sink": {"urls": ["http://127.0.0.1:8080/hook"]}}),
    );
}

#[test]
fn flags_build_every_setting() {
    check_body(
        &[
            "create",
            "--name",
            "audit",
            "--topic",
            "orders",
            "--url",
            "http://127.0.0.1:8080/a",
            "--url",
            "http://127.0.0.1:8081/b",
            "--strategy",
            "broadcast",
            "--mode",
            "structured",
            "--dead-letter-topic",
            "audit.dead",
            "--start",
            "42",
        ],
        json!({
            "name": "audit", "topic": "orders",
            "sink": {"urls": ["http://127.0.0.1:8080/a", "http://127.0.0.1:8081/b"], "strategy": "broadcast", "mode": "structured"},
            "dead_letter_topic": "audit.dead", "start": 42
        }),
    );
}

#[test]
fn start_takes_words_or_an_offset() {
    let base = [
        "create",
        "--name",
        "a",
        "--topic",
        "t",
        "--url",
        "http://h/",
    ];
    for (word, expected) in [
        ("latest", json!("latest")),
        ("earliest", json!("earliest")),
        ("0", json!(0)),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(["--start", word]).collect();
        check_body(
            &args,
            json!({"name": "a", "topic": "t", "sink": {"urls": ["http://h/"]}, "start": expected}),
        );
    }
    check_usage_error(
        &[
            "create",
            "--name",
            "a",
            "--topic",
            "t",
            "--url",
            "http://h/",
            "--start",
            "soon",
        ],
        "expected latest, earliest or an offset",
    );
}

#[test]
fn strategy_and_mode_are_spelled_as_in_the_api() {
    check_usage_error(
        &[
            "create",
            "--name",
            "a",
            "--topic",
            "t",
            "--url",
            "http://h/",
            "--strategy",
            "round-robin",
        ],
        "round_robin",
    );
    check_usage_error(
        &[
            "create",
            "--name",
            "a",
            "--topic",
            "t",
            "--url",
            "http://h/",
            "--mode",
            "batched",
        ],
        "structured",
    );
}

#[test]
fn create_needs_a_file_or_name_topic_and_url() {
    check_usage_error(&["create", "--name", "a", "--topic", "t"], "--url");
    check_usage_error(&["create"], "--name");
}

#[test]
fn a_file_excludes_the_flags() {
    check_usage_error(
        &["create", "--file", "-", "--name", "a"],
        "cannot be used with",
    );
}

#[test]
fn a_file_body_is_sent_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sub.json");
    let body = json!({"name": "a", "topic": "t", "sink": {"urls": ["http://h/"]}, "delivery": {"max_attempts": 3}});
    std::fs::write(&path, body.to_string()).expect("write");
    let path = path.to_str().expect("utf-8");
    check_body(&["create", "--file", path], body);
}

#[test]
fn a_file_that_is_not_json_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sub.json");
    std::fs::write(&path, "{\"name\": ").expect("write");
    let parsed =
        parse(&["create", "--file", path.to_str().expect("utf-8")]).expect("valid arguments");
    let SubscriptionsCommand::Create(create) = parsed.command else {
        panic!("not a create");
    };
    let error = format!("{:#}", create_body(&create).expect_err("not JSON"));
    assert!(
        error.contains("sub.json is not valid JSON: EOF while parsing"),
        "{error}"
    );
}

#[test]
fn server_is_accepted_before_or_after_the_command() {
    let before = parse(&["--server", "http://127.0.0.1:1", "list"]).expect("valid arguments");
    let after = parse(&["list", "--server", "http://127.0.0.1:2"]).expect("valid arguments");
    assert_eq!(before.server.server, "http://127.0.0.1:1");
    assert_eq!(after.server.server, "http://127.0.0.1:2");
}
