//! `trellis connectors ...` as a user runs it: the real binary as a child process against a
//! real `trellis serve`. Failures must be one line on stderr and a non-zero exit.

use serde_json::Value;
use trellis_test_support::Backend;

use super::Api;
use crate::{Run, run_trellis, start_on};

fn run(server: &str, args: &[&str]) -> Run {
    let mut all = vec!["connectors"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", server]);
    run_trellis(&all, "TRELLIS_SERVER", "")
}

#[track_caller]
fn assert_success(run: &Run) -> &str {
    assert_eq!(
        run.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.is_empty(), "stderr: {}", run.stderr);
    &run.stdout
}

/// Exit code 1, nothing on stdout, and exactly one line on stderr that holds `expected`.
#[track_caller]
fn assert_one_line_failure(run: &Run, expected: &str) {
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(run.stderr.starts_with("trellis: error: "), "{}", run.stderr);
    assert!(
        run.stderr.contains(expected),
        "expected {expected:?} in: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[track_caller]
fn json_of(run: &Run) -> Value {
    serde_json::from_str(assert_success(run)).expect("stdout is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_a_connector_from_a_yaml_file() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let server = node.base_url().to_owned();
    let api = Api::new(&server);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.log");
    std::fs::write(&input, "alpha\nbeta\n").expect("write input");
    let config = dir.path().join("tail.yaml");
    std::fs::write(
        &config,
        format!(
            "# tails in.log into `lines`\nconnector.class: file-source\ntopic: lines\npath: {}\noffsets.commit.interval.ms: 100\nerrors.tolerance: all\n",
            input.display()
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8");
    api.put_topic("lines").await;

    let created = run(&server, &["create", "--name", "tail", "--config", config]);
    let text = assert_success(&created);
    assert!(text.starts_with("name:"), "a key/value view: {text}");
    assert!(text.contains("connector.class:"), "{text}");
    assert!(text.contains("file-source"), "{text}");
    assert_eq!(api.wait_for_events("lines", 2).await.len(), 2);

    // The same connector again is the server's 409, as one line.
    let again = run(&server, &["create", "--name", "tail", "--config", config]);
    assert_one_line_failure(&again, "connector_exists");

    let listed = run(&server, &["list"]);
    let mut lines = assert_success(&listed).lines();
    let header = lines.next().expect("a header");
    assert!(header.starts_with("NAME"), "{}", listed.stdout);
    let row = lines.next().expect("one row");
    for cell in ["tail", "source", "file-source", "lines"] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    let listed = json_of(&run(&server, &["list", "--json"]));
    assert_eq!(
        listed["tail"]["info"]["config"]["topic"], "lines",
        "{listed}"
    );

    let shown = json_of(&run(&server, &["get", "tail", "--json"]));
    assert_eq!(shown["name"], "tail");
    assert_eq!(shown["type"], "source");
    assert_eq!(shown["config"]["errors.tolerance"], "all");
    assert!(shown["status"]["connector"]["state"].is_string(), "{shown}");
    let shown = run(&server, &["get", "tail"]);
    for key in ["config:", "status:", "state:", "records:"] {
        assert!(
            assert_success(&shown).contains(key),
            "{key} in {}",
            shown.stdout
        );
    }

    let paused = run(&server, &["pause", "tail"]);
    assert_eq!(assert_success(&paused), "paused connector tail (PAUSED)\n");
    assert_eq!(api.state("tail").await.as_deref(), Some("PAUSED"));
    let status = run(&server, &["status", "tail"]);
    assert!(
        assert_success(&status).contains("PAUSED"),
        "{}",
        status.stdout
    );
    assert_one_line_failure(&run(&server, &["pause", "tail"]), "connector_paused");

    let offsets = run(&server, &["offsets", "tail"]);
    let text = assert_success(&offsets);
    assert!(text.starts_with("PARTITION"), "{text}");
    assert!(text.contains("in.log"), "{text}");

    let resumed = run(&server, &["resume", "tail"]);
    let text = assert_success(&resumed);
    assert!(
        matches!(
            text,
            "resumed connector tail (RUNNING)\n"
                | "resumed connector tail (STARTING)\n"
                // Not yet owned again: a replica takes it within moments.
                | "resumed connector tail (UNASSIGNED)\n"
        ),
        "{text}"
    );
    api.wait_for_state("tail", "RUNNING")
        .await
        .expect("running");
    let restarted = run(&server, &["restart", "tail"]);
    assert!(
        assert_success(&restarted).starts_with("restarted connector tail"),
        "{}",
        restarted.stdout
    );
    api.wait_for_state("tail", "RUNNING")
        .await
        .expect("running");

    // It went on from its offset: a new line is the third event, not a re-read.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("open input");
    std::io::Write::write_all(&mut file, b"gamma\n").expect("append");
    assert_eq!(api.wait_for_events("lines", 3).await.len(), 3);

    // A new config through `update`: the connector restarts with it.
    let updated_config = dir.path().join("tail-none.yaml");
    std::fs::write(
        &updated_config,
        format!(
            "connector.class: file-source\ntopic: lines\npath: {}\nerrors.tolerance: none\n",
            input.display()
        ),
    )
    .expect("write config");
    let updated = run(
        &server,
        &[
            "update",
            "tail",
            "--config",
            updated_config.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(json_of(&updated)["config"]["errors.tolerance"], "none");
    api.wait_for_state("tail", "RUNNING")
        .await
        .expect("running");

    let plugins = run(&server, &["plugins"]);
    assert!(
        assert_success(&plugins).contains("http-sink"),
        "{}",
        plugins.stdout
    );

    let deleted = run(&server, &["delete", "tail"]);
    assert_eq!(assert_success(&deleted), "deleted connector tail\n");
    let listed = run(&server, &["list"]);
    assert_eq!(
        assert_success(&listed).lines().count(),
        1,
        "{}",
        listed.stdout
    );

    for command in [
        "get", "status", "pause", "resume", "restart", "offsets", "delete",
    ] {
        let missing = run(&server, &[command, "tail"]);
        assert_one_line_failure(&missing, "connector_not_found");
    }
    assert_eq!(api.topic_events("lines").await.len(), 3);
}

#[test]
fn a_config_error_is_the_servers_message_on_one_line() {
    let Some(node) = start_on(Backend::Embedded) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.json");
    std::fs::write(
        &config,
        r#"{"connector.class": "file-source", "topic": "lines", "max_batch": "many"}"#,
    )
    .expect("write config");
    let created = run(
        node.base_url(),
        &[
            "create",
            "--name",
            "bad",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    );
    assert_one_line_failure(&created, "invalid_connector");
    assert!(
        created.stderr.contains("path") || created.stderr.contains("max_batch"),
        "{}",
        created.stderr
    );

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "connector.class: kafka-source\ntopic: x\n").expect("write");
    let created = run(
        node.base_url(),
        &[
            "create",
            "--name",
            "k",
            "--config",
            unknown.to_str().expect("utf-8"),
        ],
    );
    assert_one_line_failure(&created, "unknown_plugin");
}
