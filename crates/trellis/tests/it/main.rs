//! End-to-end tests of the `trellis` binary as a user runs it: a child process on 127.0.0.1:0
//! with a temp data dir.

mod cli;
mod cli_subscriptions;
mod connections;
mod crash;
mod damage;
mod delivery_faults;
mod delivery_scenarios;
mod delivery_tls;
mod grpc;
mod nats_outage;
mod publish_cli;
mod subscriptions;
mod topic_delete;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use trellis_test_support::TrellisProcess;

pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis"))
}

/// A fresh `trellis serve` on a temp data dir; keep both alive for the test's length.
pub(crate) fn start() -> (tempfile::TempDir, TrellisProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    (dir, process)
}

/// Writes `text` as `trellis.toml` in `dir` and starts `trellis serve --config` on it, with its
/// data in `dir/data`.
pub(crate) fn start_with_config(dir: &Path, text: &str) -> TrellisProcess {
    let config = dir.join("trellis.toml");
    std::fs::write(&config, text).expect("write config");
    let config = config.to_str().expect("utf-8 path");
    TrellisProcess::start(bin(), &dir.join("data"), &["--config", config]).expect("trellis starts")
}

/// Polls until `done` holds or `patience` runs out; returns whether it held.
pub(crate) async fn wait_until(patience: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Polls until `done` holds or 20 s pass, ample for what the server does within a second or
/// two; returns whether it held.
pub(crate) async fn eventually(done: impl AsyncFnMut() -> bool) -> bool {
    wait_until(Duration::from_secs(20), done).await
}

/// What one run of a `trellis` client command left.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `trellis ARGS...` with `stdin` as its input and without the environment variable
/// `unset`, so a setting in the tester's environment cannot redirect the command.
pub(crate) fn run_trellis(args: &[&str], unset: &str, stdin: &str) -> Run {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove(unset)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trellis runs");
    let mut pipe = child.stdin.take().expect("piped stdin");
    pipe.write_all(stdin.as_bytes()).expect("write stdin");
    drop(pipe);
    Run::from(child.wait_with_output().expect("trellis ends"))
}

/// Publishes one binary-mode event with text data to `topic`, as a producer would.
pub(crate) async fn publish(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
    id: &str,
    data: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/v1/topics/{topic}/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/trellis-tests")
        .header("ce-type", "dev.trellis.test")
        .header("content-type", "text/plain")
        .body(data)
        .send()
        .await
}
