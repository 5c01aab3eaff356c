//! Connections as a hostile or careless client holds them, against the real binary: half-sent
//! requests at shutdown, a second signal, the connection limit, running out of file descriptors
//! and the timeouts. Everything here speaks raw TCP, so nothing in a client library can hide
//! what the server does.
//!
//! Shutdown and the requests that publish or subscribe run on every backend; the limits and
//! timeouts of the listeners and the parsing of requests never reach event storage and run once.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rstest::rstest;
use rstest_reuse::apply;
use trellis_test_support::{Backend, TrellisProcess, backends};

use crate::{bin, start_with_args_on, start_with_config, start_with_config_on};

/// How long a test waits for something the server should do within a second or two.
const PATIENCE: Duration = Duration::from_secs(20);

fn addr(process: &TrellisProcess) -> String {
    process.base_url().trim_start_matches("http://").to_owned()
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    stream
}

/// Sends `request` on a fresh connection and reads the answer to the end; `None` if the server
/// closed the connection without answering.
fn exchange(addr: &str, request: &[u8]) -> Option<String> {
    let mut stream = connect(addr);
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) if !answer.is_empty() => Some(String::from_utf8_lossy(&answer).into_owned()),
        _ => None,
    }
}

fn get(addr: &str, path: &str) -> Option<String> {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: trellis\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn publish_text(addr: &str, topic: &str, id: &str) -> String {
    let request = format!(
        "POST /v1/topics/{topic}/events HTTP/1.1\r\nHost: trellis\r\nConnection: close\r\n\
         ce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /tests\r\nce-type: t\r\n\
         content-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    );
    exchange(addr, request.as_bytes()).expect("an answer to the publish")
}

/// Waits until the server has closed `stream` (end of file or a reset), reading whatever it
/// sends first. Fails the test if it is still open after [`PATIENCE`].
fn assert_closed_by_server(mut stream: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the server kept the connection open")
            }
            Err(_) => return,
        }
    }
}

/// Polls `check` until it holds or [`PATIENCE`] runs out.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: a gRPC client that then stalls.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens what a stalled client leaves behind: a request cut off in its headers, one cut off in
/// its body, and a gRPC connection that stopped after its SETTINGS.
fn stalled_clients(process: &TrellisProcess) -> Vec<TcpStream> {
    let http = addr(process);
    let mut partial_head = connect(&http);
    partial_head
        .write_all(b"POST /v1/topics/held/events HTTP/1.1\r\nHost: trellis\r\nce-id: ")
        .expect("write partial head");
    let mut partial_body = connect(&http);
    partial_body
        .write_all(
            b"POST /v1/topics/held/events HTTP/1.1\r\nHost: trellis\r\nce-specversion: 1.0\r\n\
              ce-id: x\r\nce-source: /t\r\nce-type: t\r\ncontent-type: text/plain\r\n\
              content-length: 100\r\n\r\nonly ten b",
        )
        .expect("write partial body");
    let mut grpc = connect(process.grpc_addr());
    grpc.write_all(H2_PREFACE_AND_SETTINGS)
        .expect("write preface");
    // Once a request is known to be served, the server has read what came before it on the other
    // connections too (they were accepted first, in order).
    eventually("the server answers", || get(&http, "/healthz").is_some());
    vec![partial_head, partial_body, grpc]
}

fn signal(process: &TrellisProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits until `/healthz` is served again, once the clients that held the server back left.
fn served_again(addr: &str) {
    eventually("a request is served again", || {
        get(addr, "/healthz").is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
    });
}

/// Asserts that `/metrics` has a line for `series` (its name and labels).
fn assert_series(addr: &str, series: &str) {
    let metrics = get(addr, "/metrics").expect("metrics");
    assert!(
        metrics.lines().any(|line| line.starts_with(series)),
        "{series} missing: {metrics}"
    );
}

fn read_ids(addr: &str, topic: &str) -> String {
    get(addr, &format!("/v1/topics/{topic}/events?from=0&limit=100")).unwrap_or_default()
}

#[apply(backends)]
fn half_sent_requests_hold_shutdown_no_longer_than_the_shutdown_timeout(#[case] backend: Backend) {
    let Some(mut process) = start_with_args_on(backend, &["--shutdown-timeout-ms", "1000"]) else {
        return;
    };
    let http = addr(&process);
    for id in ["before-1", "before-2", "before-3"] {
        assert!(publish_text(&http, "kept", id).starts_with("HTTP/1.1 202"));
    }
    let _held = stalled_clients(&process);

    // Without a bound the drain waits for these clients for ever, and `terminate` gives up.
    let status = process.terminate().expect("trellis exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The last lines reach the test through a pipe a moment after the exit.
    eventually("the flush is logged", || {
        process.stderr().contains("Stopped; the log is flushed.")
    });
    let log = process.stderr();
    assert!(
        log.contains("Shutting down: draining connections."),
        "{log}"
    );
    assert!(
        log.contains("The shutdown timeout is up: closing the connections still open."),
        "{log}"
    );

    process.restart();
    let events = read_ids(&addr(&process), "kept");
    for id in ["before-1", "before-2", "before-3"] {
        assert!(events.contains(id), "{id} missing after restart: {events}");
    }
}

#[apply(backends)]
fn a_second_signal_stops_at_once_with_the_log_flushed(#[case] backend: Backend) {
    // A drain far longer than `terminate` waits: only the second signal can end it in time.
    let Some(mut process) = start_with_args_on(backend, &["--shutdown-timeout-ms", "600000"])
    else {
        return;
    };
    let http = addr(&process);
    assert!(publish_text(&http, "kept", "before-second").starts_with("HTTP/1.1 202"));
    let _held = stalled_clients(&process);

    signal(&process, "TERM");
    eventually("the drain starts", || {
        process
            .stderr()
            .contains("Shutting down: draining connections.")
    });
    let status = process
        .terminate()
        .expect("trellis exits at the second SIGTERM");
    assert!(status.success(), "exit status {status}");
    eventually("the flush is logged", || {
        process.stderr().contains("Stopped; the log is flushed.")
    });
    let log = process.stderr();
    assert!(log.contains("Second signal: stopping now"), "{log}");

    process.restart();
    let events = read_ids(&addr(&process), "kept");
    assert!(events.contains("before-second"), "{events}");
}

#[test]
fn connections_beyond_the_limit_are_refused_and_served_again_once_others_close() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = start_with_config(dir.path(), "[http]\nmax_connections = 2\n");
    let http = addr(&process);
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(&http)).collect();

    assert_eq!(
        get(&http, "/healthz"),
        None,
        "a third connection is refused"
    );
    eventually("the limit is logged", || {
        process.stderr().contains("Connection limit reached")
    });

    drop(idle);
    served_again(&http);
    assert_series(
        &http,
        "trellis_connections_refused_total{listener=\"http\"}",
    );
}

#[test]
fn running_out_of_file_descriptors_is_logged_and_service_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The binary under a small descriptor limit, as `sh -c 'ulimit -n 64; exec trellis ...'`.
    let wrapper = dir.path().join("trellis-ulimit");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 64\nexec '{}' \"$@\"\n",
            bin().display()
        ),
    )
    .expect("write wrapper");
    let status = std::process::Command::new("chmod")
        .args(["+x", wrapper.to_str().expect("utf-8 path")])
        .status()
        .expect("chmod");
    assert!(status.success());
    let process = TrellisProcess::start(&wrapper, &dir.path().join("data"), &[])
        .expect("trellis starts under ulimit -n 64");
    let http = addr(&process);

    let idle: Vec<TcpStream> = (0..80).map(|_| connect(&http)).collect();
    eventually("the accept failure is logged", || {
        process
            .stderr()
            .contains("Accepting a connection failed; new clients wait until it works again.")
    });
    drop(idle);
    served_again(&http);
    assert_series(
        &http,
        "trellis_connection_accept_errors_total{listener=\"http\"}",
    );
}

#[test]
fn header_body_and_idle_timeouts_close_the_sockets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = start_with_config(
        dir.path(),
        "[http]\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\nidle_timeout_ms = 600\n\
         [grpc]\nidle_timeout_ms = 300\n",
    );
    let http = addr(&process);

    let mut partial_head = connect(&http);
    partial_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .expect("write");
    assert_closed_by_server(partial_head, "a head never finished");

    let mut partial_body = connect(&http);
    partial_body
        .write_all(
            b"POST /v1/topics/t/events HTTP/1.1\r\nHost: trellis\r\nce-specversion: 1.0\r\n\
              ce-id: x\r\nce-source: /t\r\nce-type: t\r\ncontent-type: text/plain\r\n\
              content-length: 100\r\n\r\nten bytes.",
        )
        .expect("write");
    assert_closed_by_server(partial_body, "a body never finished");

    let silent = connect(&http);
    assert_closed_by_server(silent, "a connection that never sent anything");

    let mut kept_alive = connect(&http);
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: trellis\r\n\r\n")
        .expect("write");
    assert_closed_by_server(kept_alive, "an idle keep-alive connection");

    let mut grpc = connect(process.grpc_addr());
    grpc.write_all(H2_PREFACE_AND_SETTINGS).expect("write");
    assert_closed_by_server(grpc, "an HTTP/2 connection stalled after SETTINGS");

    for series in [
        "trellis_connections_timed_out_total{listener=\"http\",reason=\"header_timeout\"}",
        "trellis_connections_timed_out_total{listener=\"http\",reason=\"body_timeout\"}",
        "trellis_connections_timed_out_total{listener=\"http\",reason=\"idle_timeout\"}",
        "trellis_connections_timed_out_total{listener=\"grpc\",reason=\"idle_timeout\"}",
    ] {
        assert_series(&http, series);
    }
}

#[apply(backends)]
fn a_request_that_takes_its_time_within_the_timeouts_is_served(#[case] backend: Backend) {
    let Some(process) = start_with_config_on(
        backend,
        tempfile::tempdir().expect("temp dir"),
        "[http]\nheader_read_timeout_ms = 2000\nbody_read_timeout_ms = 2000\n",
    ) else {
        return;
    };
    let mut stream = connect(&addr(&process));
    let head = b"POST /v1/topics/slow/events HTTP/1.1\r\nHost: trellis\r\nConnection: close\r\n\
                 ce-specversion: 1.0\r\nce-id: slow-1\r\nce-source: /t\r\nce-type: t\r\n\
                 content-type: text/plain\r\ncontent-length: 4\r\n\r\n";
    // A slow but steady client: each pause well within the body read timeout.
    stream.write_all(head).expect("write head");
    for byte in b"data" {
        std::thread::sleep(Duration::from_millis(100));
        stream.write_all(&[*byte]).expect("write body byte");
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

/// The status line and the JSON body of an answer.
fn status_and_json(answer: &str) -> (String, serde_json::Value) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let json = serde_json::from_str(body)
        .unwrap_or_else(|error| panic!("body is not JSON ({error}): {answer}"));
    (status, json)
}

#[test]
fn requests_hyper_cannot_parse_are_answered_with_json() {
    let (_dir, process) = crate::start();
    let http = addr(&process);
    let huge_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: trellis\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let huge_path = format!(
        "GET /{} HTTP/1.1\r\nHost: trellis\r\n\r\n",
        "p".repeat(70_000)
    );
    for (request, expected) in [
        (huge_headers.as_bytes(), "HTTP/1.1 431"),
        (huge_path.as_bytes(), "HTTP/1.1 414"),
        (&b"NOT A REQUEST LINE\r\n\r\n"[..], "HTTP/1.1 400"),
        (
            b"POST /v1/topics/t/events HTTP/1.1\r\nHost: trellis\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ] {
        let answer = exchange(&http, request).expect("an answer");
        let (status, json) = status_and_json(&answer);
        assert!(
            status.starts_with(expected),
            "{status}, expected {expected}"
        );
        assert!(
            json["error"].is_string() && json["message"].is_string(),
            "{json}"
        );
    }

    // A malformed request after a good one on the same connection: the good one is answered
    // as usual, then the refusal.
    let mut pipelined = b"GET /healthz HTTP/1.1\r\nHost: trellis\r\n\r\n".to_vec();
    pipelined.extend_from_slice(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    let answer = exchange(&http, &pipelined).expect("answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let refusal = &answer[answer.find("HTTP/1.1 400").expect("then a 400")..];
    let (_, json) = status_and_json(refusal);
    assert_eq!(json["error"], "malformed_request", "{json}");
}

#[apply(backends)]
fn a_quiet_subscribe_stream_keeps_its_connection_past_the_idle_timeout(#[case] backend: Backend) {
    use trellis_proto::v1::subscribe_response;
    use trellis_proto::v1::trellis_client::TrellisClient;

    let Some(process) = start_with_config_on(
        backend,
        tempfile::tempdir().expect("temp dir"),
        "[grpc]\nidle_timeout_ms = 200\n",
    ) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        let (requests, outgoing) = tokio::sync::mpsc::channel(8);
        requests
            .send(crate::grpc::join_group("quiet"))
            .await
            .expect("send");
        let mut responses = TrellisClient::connect(format!("http://{}", process.grpc_addr()))
            .await
            .expect("gRPC connect")
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .expect("subscribe")
            .into_inner();
        let first = tokio::time::timeout(PATIENCE, responses.message())
            .await
            .expect("in time")
            .expect("stream ok");
        assert!(matches!(
            first.and_then(|response| response.response),
            Some(subscribe_response::Response::Subscribed(_))
        ));
        // Five idle timeouts without a byte either way: only a connection without calls is idle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let http = addr(&process);
        tokio::task::spawn_blocking(move || publish_text(&http, "quiet", "after-the-quiet"))
            .await
            .expect("publish");
        let delivery = tokio::time::timeout(PATIENCE, responses.message())
            .await
            .expect("in time")
            .expect("the stream is still open")
            .and_then(|response| response.response);
        assert!(
            matches!(delivery, Some(subscribe_response::Response::Delivery(_))),
            "{delivery:?}"
        );
        drop(requests);
    });
}
