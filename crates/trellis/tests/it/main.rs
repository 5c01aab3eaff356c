//! End-to-end tests of the `trellis` binary as a user runs it: a child process on 127.0.0.1:0
//! with a temp data dir.
//!
//! A test whose subject holds on every event storage takes a [`Backend`] through
//! `#[apply(backends)]` and starts its server with [`start_on`] (or a sibling), so it runs once
//! on the embedded log and once on JetStream, on a nats-server of its own. Tests of the
//! embedded log itself (its files in the data dir) and tests whose subject never reaches event
//! storage (start-up errors, connection handling, the CLI's own checks) run once, on the
//! embedded log.

mod cli;
mod cli_subscriptions;
mod cluster_cli;
mod connect_standalone;
mod connections;
mod connectors;
mod crash;
mod damage;
mod delivery_faults;
mod delivery_scenarios;
mod delivery_tls;
mod grpc;
mod nats_access;
mod nats_outage;
mod publish_cli;
mod subscriptions;
mod topic_delete;
mod two_nodes;

use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use trellis_test_support::{Backend, NatsServer, TrellisProcess};

pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis"))
}

/// A `trellis serve` under test with everything it keeps: its temp dir (the config file and the
/// data dir, where the metadata lives on every backend) and, on JetStream, the nats-server that
/// holds its events. It dereferences to the running process; dropping it kills the process,
/// then the nats-server, then removes the dir.
pub(crate) struct Node {
    process: TrellisProcess,
    /// `serve` arguments after the data dir and listen addresses, the same on every restart.
    args: Vec<String>,
    data_dir: PathBuf,
    _nats: Option<NatsServer>,
    _dir: tempfile::TempDir,
}

/// A fresh `trellis serve` keeping its events on `backend`; `None` when that backend cannot run
/// here (nats-server is not installed), and the test returns early: it skips.
pub(crate) fn start_on(backend: Backend) -> Option<Node> {
    start_with_args_on(backend, &[])
}

/// Like [`start_on`], with extra `serve` flags.
pub(crate) fn start_with_args_on(backend: Backend, args: &[&str]) -> Option<Node> {
    let dir = tempfile::tempdir().expect("temp dir");
    Node::launch(backend, dir, None, args)
}

/// Writes `text` as `trellis.toml` in `dir` and starts `trellis serve --config` on it, with its
/// data in `dir/data` and its events on `backend`; the node keeps `dir`.
pub(crate) fn start_with_config_on(
    backend: Backend,
    dir: tempfile::TempDir,
    text: &str,
) -> Option<Node> {
    Node::launch(backend, dir, Some(text), &[])
}

impl Node {
    fn launch(
        backend: Backend,
        dir: tempfile::TempDir,
        config: Option<&str>,
        extra: &[&str],
    ) -> Option<Node> {
        let nats = match backend {
            Backend::Embedded => None,
            Backend::JetStream => Some(NatsServer::start()?),
        };
        let mut args: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        if let Some(text) = config {
            let path = dir.path().join("trellis.toml");
            std::fs::write(&path, text).expect("write config");
            args.extend(["--config".to_owned(), path.display().to_string()]);
        }
        // A flag, so that a config file's own `[storage]` section still applies beside it.
        if let Some(nats) = &nats {
            args.extend(["--storage".to_owned(), nats.url()]);
        }
        let data_dir = dir.path().join("data");
        let process = launch(&data_dir, &args);
        // Else every JetStream case would pass on the embedded log, unnoticed.
        assert_eq!(
            data_dir.join("log").exists(),
            backend == Backend::Embedded,
            "events in the data dir exactly on the embedded log"
        );
        Some(Node {
            process,
            args,
            data_dir,
            _nats: nats,
            _dir: dir,
        })
    }

    /// Another `trellis serve` with a temp and data dir of its own, keeping its events where
    /// this JetStream node does (on the same nats-server, which this node keeps running).
    pub(crate) fn beside(&self) -> Node {
        assert!(
            self.args.iter().any(|arg| arg == "--storage"),
            "only nodes on JetStream can share their events"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let process = launch(&data_dir, &self.args);
        Node {
            process,
            args: self.args.clone(),
            data_dir,
            _nats: None,
            _dir: dir,
        }
    }

    /// Starts `trellis serve` again on the same data dir, events and flags, once the running
    /// one has stopped (a test stops it the way it means to: SIGTERM or SIGKILL); one still
    /// running is killed first, as two cannot share the data dir.
    pub(crate) fn restart(&mut self) {
        self.process.kill();
        self.process = launch(&self.data_dir, &self.args);
    }

    /// The data dir: the metadata on every backend, and the events on the embedded log.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The `serve` flags that choose this node's storage and settings, to start another
    /// process the same way.
    pub(crate) fn args(&self) -> &[String] {
        &self.args
    }
}

impl Deref for Node {
    type Target = TrellisProcess;

    fn deref(&self) -> &TrellisProcess {
        &self.process
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut TrellisProcess {
        &mut self.process
    }
}

fn launch(data_dir: &Path, args: &[String]) -> TrellisProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TrellisProcess::start(bin(), data_dir, &args).expect("trellis starts")
}

/// A fresh `trellis serve` on the embedded log, in a temp data dir, for tests whose subject
/// does not reach event storage; keep both alive for the test's length.
pub(crate) fn start() -> (tempfile::TempDir, TrellisProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    (dir, process)
}

/// Writes `text` as `trellis.toml` in `dir` and starts `trellis serve --config` on it, with its
/// data in `dir/data` (the embedded log unless `text` names other storage).
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
