//! `trellis subscriptions ...` as a user runs it: the real binary as a child process, talking to
//! a real `trellis serve` on 127.0.0.1:0. Failures must be one line on stderr and a non-zero
//! exit, never a panic.
//!
//! Creating a subscription reads its topic (start position, lag), so those tests run on every
//! backend; the lookups, the validation and the CLI's own checks never reach event storage and
//! run once.

use std::process::{Command, Stdio};

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_test_support::{Backend, backends};

use crate::{Run, bin, run_trellis, start, start_on};

/// Runs `trellis subscriptions ARGS... --server SERVER` with `stdin` as its input.
fn run_with_stdin(server: &str, args: &[&str], stdin: &str) -> Run {
    let mut all = vec!["subscriptions"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", server]);
    run_trellis(&all, "TRELLIS_SERVER", stdin)
}

fn run(server: &str, args: &[&str]) -> Run {
    run_with_stdin(server, args, "")
}

impl Run {
    #[track_caller]
    fn assert_success(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(self.stderr.is_empty(), "stderr: {}", self.stderr);
        self
    }

    /// Exit code 1, nothing on stdout, and exactly one line on stderr that holds `expected`.
    #[track_caller]
    fn assert_one_line_failure(&self, expected: &str) {
        assert_eq!(self.code, Some(1), "stderr: {}", self.stderr);
        assert!(self.stdout.is_empty(), "stdout: {}", self.stdout);
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "one line expected, got: {}",
            self.stderr
        );
        assert!(
            self.stderr.starts_with("trellis: "),
            "stderr: {}",
            self.stderr
        );
        assert!(
            self.stderr.contains(expected),
            "expected {expected:?} in: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).expect("stdout is JSON")
    }
}

/// Creates `audit` on `orders` with every flag the CLI has.
fn create_audit(server: &str) -> Run {
    run(
        server,
        &[
            "create",
            "--name",
            "audit",
            "--topic",
            "orders",
            "--url",
            "http://127.0.0.1:9/a",
            "--url",
            "http://127.0.0.1:9/b",
            "--strategy",
            "broadcast",
            "--mode",
            "structured",
            "--dead-letter-topic",
            "audit.dead",
            "--start",
            "earliest",
        ],
    )
}

#[apply(backends)]
fn create_list_get_and_delete_round_trip(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let server = process.base_url();

    let created = create_audit(server);
    created.assert_success();
    assert!(
        created.stdout.starts_with("name:"),
        "a key/value view: {}",
        created.stdout
    );
    assert!(created.stdout.contains("strategy:"), "{}", created.stdout);

    let listed = run(server, &["list"]);
    listed.assert_success();
    let mut lines = listed.stdout.lines();
    let header = lines.next().expect("a header");
    assert!(header.starts_with("NAME"), "{}", listed.stdout);
    let row = lines.next().expect("one row");
    assert!(row.starts_with("audit "), "{}", listed.stdout);
    assert!(row.contains("http://127.0.0.1:9/a (+1 more)"), "{row}");

    let listed = run(server, &["list", "--json"]);
    listed.assert_success();
    assert_eq!(listed.json()["subscriptions"][0]["name"], "audit");

    let shown = run(server, &["get", "audit", "--json"]);
    shown.assert_success();
    let shown = shown.json();
    assert_eq!(shown["topic"], "orders");
    assert_eq!(shown["dead_letter_topic"], "audit.dead");
    assert_eq!(shown["sink"]["strategy"], "broadcast");
    assert_eq!(shown["sink"]["mode"], "structured");
    assert_eq!(shown["start"], "earliest");
    assert_eq!(shown["status"]["lag"], 0);
    assert_eq!(shown["status"]["urls"].as_array().map(Vec::len), Some(2));

    let shown = run(server, &["get", "audit"]);
    shown.assert_success();
    for key in [
        "status:",
        "state:",
        "delivered:",
        "committed_offset:",
        "lag:",
        "circuit=",
    ] {
        assert!(shown.stdout.contains(key), "{key} in: {}", shown.stdout);
    }

    let deleted = run(server, &["delete", "audit"]);
    deleted.assert_success();
    assert_eq!(deleted.stdout, "deleted subscription audit\n");
    let listed = run(server, &["list"]);
    listed.assert_success();
    assert_eq!(listed.stdout.lines().count(), 1, "{}", listed.stdout);
}

#[apply(backends)]
fn no_header_value_is_ever_shown(#[case] backend: Backend) {
    // A name cannot tell which header carries a credential: every value is hidden, by the API
    // (`GET /v1/subscriptions/{name}`, the list, the create answer) and so by the CLI.
    let Some(process) = start_on(backend) else {
        return;
    };
    let server = process.base_url();
    let values = [
        "jwt-value-eyJhbGciOi",
        "session-value-4711",
        "pass-value-0815",
        "Bearer bearer-value-42",
        "plain-value-not-secret",
    ];
    let body = json!({
        "name": "hooks", "topic": "orders",
        "sink": {
            "urls": ["http://127.0.0.1:9/hook"],
            "headers": {
                "X-JWT": values[0],
                "X-Session": values[1],
                "X-Pass": values[2],
                "X-Forwarded-Tenant": values[3],
                "X-Env": values[4],
            },
        },
    });
    let created = run_with_stdin(
        server,
        &["create", "--file", "-", "--json"],
        &body.to_string(),
    );
    created.assert_success();
    let shown = run(server, &["get", "hooks"]);
    shown.assert_success();
    let shown_json = run(server, &["get", "hooks", "--json"]);
    shown_json.assert_success();
    let listed = run(server, &["list", "--json"]);
    listed.assert_success();
    for output in [
        &created.stdout,
        &shown.stdout,
        &shown_json.stdout,
        &listed.stdout,
    ] {
        for value in values {
            assert!(!output.contains(value), "{value} shown in: {output}");
        }
    }
    let headers = shown_json.json()["sink"]["headers"].clone();
    let headers = headers.as_object().expect("headers object");
    assert_eq!(headers.len(), values.len(), "{headers:?}");
    assert!(headers.values().all(|value| value == "***"), "{headers:?}");
    assert!(shown.stdout.contains("X-Session=***"), "{}", shown.stdout);
}

#[apply(backends)]
fn create_reads_the_body_from_stdin(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let server = process.base_url();
    let body = json!({
        "name": "billing", "topic": "invoices",
        "sink": {"urls": ["http://127.0.0.1:9/hook"]},
        "delivery": {"max_attempts": 3}
    });

    let created = run_with_stdin(
        server,
        &["create", "--file", "-", "--json"],
        &body.to_string(),
    );
    created.assert_success();
    assert_eq!(created.json()["delivery"]["max_attempts"], 3);
}

#[apply(backends)]
fn a_duplicate_is_one_line_saying_it_exists(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let server = process.base_url();
    create_audit(server).assert_success();

    create_audit(server).assert_one_line_failure(
        "subscription_exists: a subscription named \"audit\" already exists",
    );
}

#[test]
fn a_missing_subscription_is_one_line() {
    let (_dir, process) = start();
    let server = process.base_url();

    run(server, &["get", "nope"]).assert_one_line_failure("no subscription named \"nope\"");
    run(server, &["get", "nope", "--json"]).assert_one_line_failure("subscription_not_found");
    run(server, &["delete", "nope"]).assert_one_line_failure("subscription_not_found");
}

#[test]
fn an_invalid_subscription_names_the_field() {
    let (_dir, process) = start();
    let server = process.base_url();
    let body = json!({
        "name": "a", "topic": "t", "sink": {"urls": ["http://127.0.0.1:9/"]},
        "delivery": {"backoff": {"multiplier": 0.5}}
    });

    run_with_stdin(server, &["create", "--file", "-"], &body.to_string())
        .assert_one_line_failure("invalid_subscription: delivery.backoff.multiplier: must be");
    run_with_stdin(server, &["create", "--file", "-"], "{\"name\": ")
        .assert_one_line_failure("stdin is not valid JSON");
}

#[test]
fn a_closed_port_is_one_line() {
    // Bound and released: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let server = format!("http://127.0.0.1:{port}");

    for args in [&["list"][..], &["get", "x", "--json"], &["delete", "x"]] {
        run(&server, args).assert_one_line_failure(&format!(
            "cannot reach {server}: connection refused (is trellis serve running?)"
        ));
    }
}

#[test]
fn the_server_comes_from_trellis_server() {
    let (_dir, process) = start();
    let output = Command::new(bin())
        .args(["subscriptions", "list"])
        .env("TRELLIS_SERVER", process.base_url())
        .stdin(Stdio::null())
        .output()
        .expect("trellis runs");
    let listed = Run::from(output);
    listed.assert_success();
    assert!(listed.stdout.starts_with("NAME"), "{}", listed.stdout);
}

#[test]
fn a_bad_server_url_is_one_line() {
    run("https://127.0.0.1:10105", &["list"]).assert_one_line_failure("must be an http:// URL");
}

#[test]
fn a_usage_error_exits_2_as_clap_does() {
    let output = Command::new(bin())
        .args(["subscriptions", "create", "--name", "a"])
        .stdin(Stdio::null())
        .output()
        .expect("trellis runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--topic"), "{stderr}");
}
