//! `trellis serve` start-up, configuration and shutdown, seen from outside the process.
//!
//! Shutdown keeps what was acknowledged on every backend; the checks of flags, files and
//! addresses at start-up come before any storage is opened and run once.

use rstest::rstest;
use rstest_reuse::apply;
use trellis_test_support::{Backend, TrellisProcess, backends, run_to_end};

use crate::{bin, publish, start_on, start_with_args_on};

/// Start-up failures print exactly one line on stderr and exit non-zero, never a panic.
#[track_caller]
fn assert_one_line_failure(args: &[&str], env: &[(&str, &str)], expected: &str) {
    let (status, _stdout, stderr) = run_to_end(bin(), args, env).expect("run trellis");
    assert!(
        !status.success(),
        "expected failure, got {status}; stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line expected, got: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `trellis serve` with the listener named by `flag` on a port already taken, the other free.
#[track_caller]
fn assert_port_in_use_is_one_clear_line(flag: &str, expected: &str) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8");
    let addr_of = |listener: &str| {
        if listener == flag {
            addr.as_str()
        } else {
            "127.0.0.1:0"
        }
    };
    assert_one_line_failure(
        &[
            "serve",
            "--data-dir",
            data,
            "--http-addr",
            addr_of("--http-addr"),
            "--grpc-addr",
            addr_of("--grpc-addr"),
        ],
        &[],
        expected,
    );
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    assert_port_in_use_is_one_clear_line("--http-addr", "cannot listen on");
}

#[test]
fn a_grpc_port_in_use_is_one_clear_line() {
    assert_port_in_use_is_one_clear_line("--grpc-addr", "(gRPC)");
}

#[test]
fn an_unusable_data_dir_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let data = file.join("data");
    assert_one_line_failure(
        &[
            "serve",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
        &[],
        "cannot create data dir",
    );
}

#[test]
fn a_bad_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("trellis.toml");
    std::fs::write(&config, "[storage]\nfsync = \"sometimes\"\n").expect("write");
    assert_one_line_failure(
        &["serve", "--config", config.to_str().expect("utf-8")],
        &[],
        "trellis.toml line 2",
    );
}

#[test]
fn dedup_max_entries_of_zero_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("trellis.toml");
    std::fs::write(&config, "[dedup]\nmax_entries = 0\n").expect("write");
    assert_one_line_failure(
        &["serve", "--config", config.to_str().expect("utf-8")],
        &[],
        "dedup.max_entries must be at least 1",
    );
}

/// On JetStream too: the data dir holds the metadata, which two processes must not share.
#[apply(backends)]
fn a_data_dir_in_use_is_refused(#[case] backend: Backend) {
    let Some(first) = start_on(backend) else {
        return;
    };
    let mut args = vec![
        "serve",
        "--data-dir",
        first.data_dir().to_str().expect("utf-8"),
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    args.extend(first.args().iter().map(String::as_str));
    assert_one_line_failure(&args, &[], "in use by another trellis process");
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("trellis.toml");
    std::fs::write(
        &config,
        "http_addr = \"127.0.0.1:1\"\n[log]\nlevel = \"warn\"\n",
    )
    .expect("write");
    let config = config.to_str().expect("utf-8");
    // The file says port 1 (not bindable by a test); the environment says a bad address, so a
    // successful start proves the flag (port 0, from TrellisProcess) won over both.
    let process = TrellisProcess::start_with_env(
        bin(),
        &dir.path().join("data"),
        &["--config", config],
        &[("TRELLIS_HTTP_ADDR", "not-an-address")],
    )
    .expect("flags win");
    drop(process);
    // Without the flag the environment wins over the file, and its bad value is reported.
    assert_one_line_failure(
        &["serve", "--config", config],
        &[
            ("TRELLIS_HTTP_ADDR", "not-an-address"),
            (
                "TRELLIS_DATA_DIR",
                dir.path().join("d2").to_str().expect("utf-8"),
            ),
        ],
        "http_addr must be an IP address",
    );
}

#[apply(backends)]
fn sigterm_finishes_in_flight_work_and_exits_zero(#[case] backend: Backend) {
    let Some(mut process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let acked = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut acked = 0;
        for n in 0..20 {
            let response = publish(&client, &base, "t", &format!("id-{n}"), "x".to_owned())
                .await
                .expect("publish");
            assert_eq!(response.status().as_u16(), 202);
            acked += 1;
        }
        acked
    });
    let status = process.terminate().expect("terminate");
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        process.stderr()
    );
    assert!(!process.stderr().contains("panicked"));

    process.restart();
    let base = process.base_url().to_owned();
    let next = runtime.block_on(async {
        let topic: serde_json::Value = reqwest::get(format!("{base}/v1/topics/t"))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        topic["next_offset"].as_u64()
    });
    assert_eq!(next, Some(acked));
}

#[apply(backends)]
fn sigint_exits_zero(#[case] backend: Backend) {
    let Some(mut process) = start_on(backend) else {
        return;
    };
    let status = process.interrupt().expect("interrupt");
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        process.stderr()
    );
}

/// On JetStream too, where the NATS client's own logs pass through the same subscriber.
#[apply(backends)]
fn json_logs_are_one_object_per_line(#[case] backend: Backend) {
    let Some(mut process) = start_with_args_on(backend, &["--log-format", "json"]) else {
        return;
    };
    process.terminate().expect("terminate");
    let stderr = process.stderr();
    assert!(stderr.lines().count() >= 2, "{stderr}");
    for line in stderr.lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line}");
    }
}

/// SIGTERM in the middle of concurrent publishing: Trellis exits 0, and every event that got a
/// 202 before it stopped is there after a restart. A request it could not finish must fail
/// visibly (an error or a non-202), never succeed and then vanish.
#[apply(backends)]
fn sigterm_under_load_keeps_every_acknowledged_event(#[case] backend: Backend) {
    let Some(mut process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let n_acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|client_idx| {
            let (base, stop, n_acked) = (base.clone(), stop.clone(), n_acked.clone());
            runtime.spawn(async move {
                let client = reqwest::Client::new();
                let mut acked = Vec::new();
                for seq in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("c{client_idx}-{seq}");
                    let sent = publish(&client, &base, "drain", &id, "x".to_owned()).await;
                    match sent {
                        Ok(response) if response.status().as_u16() == 202 => {
                            let body: serde_json::Value = response.json().await.expect("ack body");
                            acked.push((body["events"][0]["offset"].as_u64().expect("offset"), id));
                            n_acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Refused while draining, or the connection closed: not acknowledged.
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Under load: once a good number of publishes were acknowledged, however slowly the
    // machine runs (a fixed pause found too few on a busy one).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while n_acked.load(std::sync::atomic::Ordering::Relaxed) < 100
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = process.terminate().expect("terminate");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        process.stderr()
    );
    let acked: Vec<(u64, String)> = runtime.block_on(async {
        let mut all = Vec::new();
        for client in clients {
            all.extend(client.await.expect("client task"));
        }
        all
    });
    assert!(
        acked.len() > 20,
        "the test must publish under load; only {} acks",
        acked.len()
    );

    process.restart();
    let base = process.base_url().to_owned();
    let stored: Vec<serde_json::Value> = runtime.block_on(async {
        let mut stored = Vec::new();
        loop {
            let page: Vec<serde_json::Value> = reqwest::get(format!(
                "{base}/v1/topics/drain/events?from={}&limit=1000",
                stored.len()
            ))
            .await
            .expect("read")
            .json()
            .await
            .expect("page");
            if page.is_empty() {
                break stored;
            }
            stored.extend(page);
        }
    });
    for (offset, id) in &acked {
        let event = usize::try_from(*offset)
            .ok()
            .and_then(|offset| stored.get(offset));
        assert_eq!(
            event.map(|event| &event["id"]),
            Some(&serde_json::Value::from(id.as_str())),
            "acked {id} at {offset} is lost"
        );
    }
}
