//! The command line of `trellis connectors` and the request bodies it builds from config files.

use clap::Parser;
use serde_json::{Value, json};

use super::{ConnectorsArgs, ConnectorsCommand, create_body, parse_document};
use crate::cli::{Cli, Command};

fn parse(args: &[&str]) -> Result<ConnectorsArgs, clap::Error> {
    let argv = ["trellis", "connectors"].iter().chain(args);
    match Cli::try_parse_from(argv)?.command {
        Command::Connectors(args) => Ok(args),
        other => panic!("parsed as another command: {other:?}"),
    }
}

#[track_caller]
fn check_usage_error(args: &[&str], expected: &str) {
    let error = parse(args).expect_err("a usage error");
    assert_eq!(error.exit_code(), 2);
    let text = error.to_string();
    assert!(text.contains(expected), "{expected:?} not in {text}");
}

/// The body `create ARGS` builds, with `files` written to a temp dir first (`{dir}` in an
/// argument is that dir).
fn body_of(files: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let dir_text = dir.path().to_str().expect("utf-8");
    let args: Vec<String> = args
        .iter()
        .map(|arg| arg.replace("{dir}", dir_text))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let parsed = parse(&args).expect("valid arguments");
    let ConnectorsCommand::Create(create) = parsed.command else {
        panic!("not a create: {:?}", parsed.command);
    };
    create_body(&create)
}

const YAML_CONFIG: &str = "\
connector.class: file-source
topic: lines
path: /var/log/app.log
max_batch: 100
errors.tolerance: all
";

#[test]
fn a_yaml_config_becomes_the_config_map() {
    let body = body_of(
        &[("lines.yaml", YAML_CONFIG)],
        &["create", "--name", "lines", "--config", "{dir}/lines.yaml"],
    )
    .expect("a body");
    assert_eq!(
        body,
        json!({"name": "lines", "config": {
            "connector.class": "file-source", "topic": "lines", "path": "/var/log/app.log",
            "max_batch": 100, "errors.tolerance": "all"
        }})
    );
}

#[test]
fn a_json_config_is_read_as_json() {
    let config = json!({"connector.class": "http-sink", "topic": "orders",
        "sink": {"urls": ["http://127.0.0.1:8080/hook"]}, "delivery": {"max_attempts": 3}});
    let body = body_of(
        &[("hook.json", &config.to_string())],
        &["create", "--name", "hook", "--config", "{dir}/hook.json"],
    )
    .expect("a body");
    assert_eq!(body, json!({"name": "hook", "config": config}));
}

#[test]
fn nested_yaml_keeps_its_objects() {
    let yaml = "connector.class: http-sink\ntopic: orders\nsink:\n  urls:\n    - http://127.0.0.1:8080/hook\ndelivery:\n  backoff: {initial_ms: 10, jitter: false}\n";
    let body = body_of(
        &[("hook.yml", yaml)],
        &["create", "--name", "hook", "--config", "{dir}/hook.yml"],
    )
    .expect("a body");
    assert_eq!(
        body["config"]["delivery"],
        json!({"backoff": {"initial_ms": 10, "jitter": false}})
    );
    assert_eq!(
        body["config"]["sink"]["urls"],
        json!(["http://127.0.0.1:8080/hook"])
    );
}

#[test]
fn a_file_holds_name_and_config() {
    let yaml = format!(
        "name: lines\nconfig:\n{}",
        YAML_CONFIG
            .lines()
            .map(|line| format!("  {line}\n"))
            .collect::<String>()
    );
    let body = body_of(
        &[("connector.yaml", &yaml)],
        &["create", "--file", "{dir}/connector.yaml"],
    )
    .expect("a body");
    assert_eq!(body["name"], "lines");
    assert_eq!(body["config"]["connector.class"], "file-source");
    assert_eq!(body["config"]["max_batch"], 100);
}

#[test]
fn a_file_without_config_is_refused_with_its_name() {
    let error = body_of(
        &[("connector.yaml", "name: lines\n")],
        &["create", "--file", "{dir}/connector.yaml"],
    )
    .expect_err("no config");
    let text = format!("{error:#}");
    assert!(text.contains("connector.yaml has no `config`"), "{text}");
}

#[test]
fn a_config_that_is_not_a_mapping_is_refused() {
    let error = body_of(
        &[("list.yaml", "- a\n- b\n")],
        &["create", "--name", "x", "--config", "{dir}/list.yaml"],
    )
    .expect_err("a list");
    let text = format!("{error:#}");
    assert!(
        text.contains("list.yaml must hold a mapping of config keys"),
        "{text}"
    );
}

#[test]
fn bad_yaml_names_the_file_and_the_place() {
    let error = body_of(
        &[("bad.yaml", "connector.class: [file-source\n")],
        &["create", "--name", "x", "--config", "{dir}/bad.yaml"],
    )
    .expect_err("bad YAML");
    let text = format!("{error:#}");
    assert!(
        text.contains("bad.yaml is not valid YAML or JSON"),
        "{text}"
    );
    assert!(text.contains("line"), "the position is given: {text}");
}

#[test]
fn bad_json_is_reported_as_json() {
    let error = body_of(
        &[("bad.json", "{\"topic\": ")],
        &["create", "--name", "x", "--config", "{dir}/bad.json"],
    )
    .expect_err("bad JSON");
    let text = format!("{error:#}");
    assert!(
        text.contains("bad.json is not valid JSON: EOF while parsing"),
        "{text}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let error = body_of(
        &[],
        &["create", "--name", "x", "--config", "{dir}/none.yaml"],
    )
    .expect_err("no file");
    assert!(format!("{error:#}").contains("cannot read"), "{error:#}");
}

#[test]
fn yaml_takes_json_too() {
    assert_eq!(
        parse_document("{\"a\": 1, \"b\": [true, null]}", false).expect("JSON as YAML"),
        json!({"a": 1, "b": [true, null]})
    );
    // YAML 1.2: `yes` and `on` are strings, not booleans.
    assert_eq!(
        parse_document("a: yes\nb: on\nc: true\n", false).expect("YAML"),
        json!({"a": "yes", "b": "on", "c": true})
    );
}

#[test]
fn create_needs_a_file_or_name_and_config() {
    check_usage_error(&["create"], "--name");
    check_usage_error(&["create", "--name", "a"], "--config");
    check_usage_error(
        &["create", "--file", "a.yaml", "--name", "a"],
        "cannot be used with",
    );
}

#[test]
fn every_command_takes_a_name_where_it_needs_one() {
    for command in [
        "get", "status", "delete", "pause", "resume", "restart", "offsets",
    ] {
        check_usage_error(&[command], "<NAME>");
    }
    for command in ["get", "status", "pause", "resume", "restart", "offsets"] {
        let parsed = parse(&[command, "lines", "--json"]).expect("valid arguments");
        assert_eq!(parsed.server.server, crate::cli::DEFAULT_SERVER);
    }
}

#[test]
fn server_is_accepted_before_or_after_the_command() {
    let before = parse(&["--server", "http://127.0.0.1:1", "list"]).expect("valid arguments");
    let after = parse(&["pause", "x", "--server", "http://127.0.0.1:2"]).expect("valid arguments");
    assert_eq!(before.server.server, "http://127.0.0.1:1");
    assert_eq!(after.server.server, "http://127.0.0.1:2");
}

#[test]
fn offsets_delete_is_a_flag() {
    let parsed = parse(&["offsets", "lines", "--delete"]).expect("valid arguments");
    let ConnectorsCommand::Offsets(offsets) = parsed.command else {
        panic!("not offsets");
    };
    assert!(offsets.delete);
    assert_eq!(offsets.name, "lines");
}
