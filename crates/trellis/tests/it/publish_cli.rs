//! `trellis publish` and `trellis subscribe` as a user runs them: the real binary as a child
//! process against a real `trellis serve` on 127.0.0.1:0, checked through the HTTP API.

use std::process::{Command, Stdio};

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::Value;
use trellis_test_support::{Backend, TrellisProcess, backends};

use crate::{Run, bin, run_trellis, start_on};

impl Run {
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
        self
    }
}

/// Runs `trellis ARGS...` with `stdin` as its input, without the environment's endpoint.
fn trellis(args: &[&str], stdin: &str) -> Run {
    run_trellis(args, "TRELLIS_GRPC_ENDPOINT", stdin)
}

fn publish(process: &TrellisProcess, topic: &str, extra: &[&str], stdin: &str) -> Run {
    let mut args = vec![
        "publish",
        "--topic",
        topic,
        "--endpoint",
        process.grpc_addr(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    trellis(&args, stdin)
}

fn subscribe(process: &TrellisProcess, group: &str, count: u64) -> Run {
    let count = count.to_string();
    trellis(
        &[
            "subscribe",
            "--topic",
            "t",
            "--group",
            group,
            "--start",
            "earliest",
            "--count",
            &count,
            "--endpoint",
            process.grpc_addr(),
        ],
        "",
    )
}

/// Every event of `topic`, each with its `offset`, through the HTTP API.
fn stored_events(process: &TrellisProcess, topic: &str) -> Vec<Value> {
    let base = process.base_url().to_owned();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        let mut stored = Vec::new();
        loop {
            let page: Vec<Value> = reqwest::get(format!(
                "{base}/v1/topics/{topic}/events?from={}&limit=1000",
                stored.len()
            ))
            .await
            .expect("read")
            .json()
            .await
            .expect("a page of events");
            if page.is_empty() {
                break stored;
            }
            stored.extend(page);
        }
    })
}

fn ids(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["id"].as_str().expect("an id"))
        .collect()
}

const EVENT_A: &str =
    r#"{"specversion":"1.0","id":"a-1","source":"/tests","type":"t","data":{"n":1}}"#;
const EVENT_B: &str = r#"{"specversion":"1.0","id":"b-2","source":"/tests","type":"t"}"#;

#[apply(backends)]
fn lines_of_stdin_become_events(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let stdin = format!("{EVENT_A}\nhello world\n\n{EVENT_B}\n");
    let run = publish(&process, "t", &[], &stdin);
    run.assert_code(0);
    assert!(run.stderr.is_empty(), "--quiet: {}", run.stderr);

    let events = stored_events(&process, "t");
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["id"], "a-1");
    assert_eq!(events[0]["data"]["n"], 1);
    assert_eq!(events[1]["data"], "hello world");
    assert_eq!(events[1]["datacontenttype"], "text/plain");
    assert_eq!(events[1]["source"], "/trellis/cli");
    assert_eq!(events[1]["type"], "dev.trellis.cli");
    assert!(!events[1]["id"].as_str().expect("an id").is_empty());
    assert_eq!(events[2]["id"], "b-2");
}

#[apply(backends)]
fn an_invalid_event_fails_alone_and_the_run_exits_1(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let invalid = r#"{"specversion":"1.0","id":"","source":"/tests","type":"t"}"#;
    let stdin = format!("{EVENT_A}\n{invalid}\n{EVENT_B}\n");
    let run = publish(&process, "t", &[], &stdin);
    run.assert_code(1);
    assert!(
        run.stderr.contains("line 2: invalid CloudEvent"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .last()
            .expect("a line")
            .starts_with("trellis: error: 1 of 3 events failed"),
        "{}",
        run.stderr
    );
    assert_eq!(ids(&stored_events(&process, "t")), ["a-1", "b-2"]);
}

#[apply(backends)]
fn generated_load_is_stored_in_full(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    let run = trellis(
        &[
            "publish",
            "--topic",
            "load",
            "--endpoint",
            process.grpc_addr(),
            "--count",
            "1000",
            "--size",
            "100",
        ],
        "",
    );
    run.assert_code(0);
    assert!(
        run.stderr
            .starts_with("published 1000 events (0 duplicates), 0 failed in "),
        "{}",
        run.stderr
    );
    let events = stored_events(&process, "load");
    assert_eq!(events.len(), 1000);
    let unique: std::collections::HashSet<&str> = ids(&events).into_iter().collect();
    assert_eq!(unique.len(), 1000, "ids are unique");
    assert_eq!(events[0]["data"].as_str().map(str::len), Some(100));
}

#[apply(backends)]
fn subscribe_prints_and_acks_so_the_group_goes_on_from_there(#[case] backend: Backend) {
    let Some(process) = start_on(backend) else {
        return;
    };
    publish(
        &process,
        "t",
        &[],
        &format!("{EVENT_A}\nhello\n{EVENT_B}\n"),
    )
    .assert_code(0);

    let run = subscribe(&process, "g", 3);
    run.assert_code(0);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(lines[0]["id"], "a-1");
    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[0]["data"]["n"], 1);
    assert_eq!(lines[1]["data"], "hello");
    assert_eq!(lines[2]["id"], "b-2");
    assert_eq!(lines[2]["offset"], 2);

    let more = r#"{"specversion":"1.0","id":"c-3","source":"/tests","type":"t"}
{"specversion":"1.0","id":"d-4","source":"/tests","type":"t"}
"#;
    publish(&process, "t", &[], more).assert_code(0);
    let run = subscribe(&process, "g", 2);
    run.assert_code(0);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(ids(&lines), ["c-3", "d-4"], "only the events not acked yet");
    assert_eq!(lines[0]["offset"], 3);
}

#[test]
fn an_unreachable_server_is_one_line_and_exit_1() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let run = trellis(
        &[
            "publish",
            "--topic",
            "t",
            "--endpoint",
            &endpoint,
            "--timeout",
            "2",
            "--quiet",
        ],
        &format!("{EVENT_A}\nhello\n"),
    );
    run.assert_code(1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "it gave up in time"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("trellis: error: 2 of 2 events failed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&endpoint), "{}", run.stderr);
}

#[apply(backends)]
fn a_closed_stdout_ends_subscribe_quietly_without_acking(#[case] backend: Backend) {
    use std::io::BufRead;

    let Some(process) = start_on(backend) else {
        return;
    };
    publish(&process, "t", &[], EVENT_A).assert_code(0);
    let mut child = Command::new(bin())
        .args([
            "subscribe",
            "--topic",
            "t",
            "--group",
            "p",
            "--start",
            "earliest",
        ])
        .args(["--endpoint", process.grpc_addr()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trellis runs");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("a line");
    assert!(first.contains("a-1"), "{first}");
    // As `| head -n 1` does: the reader goes away, and the next event's write fails.
    drop(stdout);
    let late = r#"{"specversion":"1.0","id":"late","source":"/tests","type":"t"}"#;
    publish(&process, "t", &[], late).assert_code(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscribe did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // The event that could not be printed was not acked: the group gets it again.
    let run = subscribe(&process, "p", 1);
    run.assert_code(0);
    assert!(run.stdout.contains("\"id\":\"late\""), "{}", run.stdout);
}
