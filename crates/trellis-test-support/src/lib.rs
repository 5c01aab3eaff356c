//! Test support: runs the real `trellis` binary as a child process on `127.0.0.1:0`, learns its
//! address from the one line it prints, and stops it gracefully (SIGTERM) or brutally (SIGKILL).
//!
//! Tests never reach beyond 127.0.0.1. The process is killed when the handle drops, so a failing
//! test leaves nothing running.

mod etcd;
mod fault_proxy;
mod nats;
mod receiver;
mod spellings;
mod tls;

pub use etcd::EtcdServer;
pub use fault_proxy::{ConnectionFault, FaultProxy, FaultStats, Faults};
pub use nats::NatsServer;
pub use receiver::{ReceivedRequest, Receiver, Reply};
pub use spellings::DENIED_ADDRESS_SPELLINGS;
pub use tls::{HttpsReceiver, TestTls};

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a starting runtime may take to print its address (recovery of a big log included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `trellis serve`.
pub struct TrellisProcess {
    child: Child,
    base_url: String,
    grpc_addr: String,
    stderr: Arc<Mutex<String>>,
}

impl TrellisProcess {
    /// Starts `bin serve --data-dir DIR --http-addr 127.0.0.1:0 EXTRA...` and waits until it listens.
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> std::io::Result<TrellisProcess> {
        TrellisProcess::start_with_env(bin, data_dir, extra_args, &[])
    }

    /// Like [`TrellisProcess::start`], with extra environment variables.
    pub fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> std::io::Result<TrellisProcess> {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(extra_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || collect(pipe, &sink));
        }
        let (line_tx, line_rx) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(pipe).lines();
                if let Some(Ok(first)) = lines.next() {
                    let _ = line_tx.send(first);
                }
                // Keep draining so the child never blocks on a full pipe.
                for _ in lines {}
            });
        }
        let mut process = TrellisProcess {
            child,
            base_url: String::new(),
            grpc_addr: String::new(),
            stderr,
        };
        match line_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => match line
                .split_whitespace()
                .find(|word| word.starts_with("http://"))
            {
                Some(url) => {
                    process.base_url = url.to_owned();
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|word| word.strip_prefix("grpc://"))
                    {
                        process.grpc_addr = addr.to_owned();
                    }
                }
                None => return Err(process.failed(&format!("unexpected first line {line:?}"))),
            },
            Err(_) => return Err(process.failed("no address printed")),
        }
        Ok(process)
    }

    /// The HTTP API's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The gRPC API's address, e.g. `127.0.0.1:41235` (the `grpc://` word of the line it
    /// prints; empty if there was none).
    pub fn grpc_addr(&self) -> &str {
        &self.grpc_addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    /// SIGKILL, as a crash or power cut would stop it, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit()
    }

    /// SIGINT, then wait for a graceful exit.
    pub fn interrupt(&mut self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGINT)?;
        self.wait_exit()
    }

    /// SIGSTOP, as a long GC pause, a frozen VM or a debugger would stop it; returns once every
    /// thread of it is stopped, so nothing it does afterwards predates the call.
    pub fn freeze(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !all_threads_stopped(self.child.id()) {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("trellis did not stop after SIGSTOP"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// SIGCONT: a frozen process goes on where it stopped.
    pub fn thaw(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, signal: Signal) -> std::io::Result<()> {
        let pid = i32::try_from(self.child.id()).map_err(std::io::Error::other)?;
        kill(Pid::from_raw(pid), signal).map_err(std::io::Error::other)
    }

    fn wait_exit(&mut self) -> std::io::Result<ExitStatus> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(std::io::Error::other(
                    "trellis did not exit in time after the signal",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn failed(&mut self, what: &str) -> std::io::Error {
        self.kill();
        // Give the stderr reader a moment to collect the last words.
        std::thread::sleep(Duration::from_millis(100));
        std::io::Error::other(format!(
            "trellis did not start: {what}; stderr: {}",
            self.stderr()
        ))
    }
}

impl Drop for TrellisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        // A thread that ended meanwhile has no stat left: it runs no more either.
        let stat = std::fs::read_to_string(task.path().join("stat")).ok();
        stat.is_none_or(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t")
        })
    })
}

fn collect(pipe: impl Read, sink: &Mutex<String>) {
    let mut reader = BufReader::new(pipe);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        if let Ok(mut text) = sink.lock() {
            text.push_str(&line);
        }
        line.clear();
    }
}

/// Runs `bin ARGS...` to completion and returns its exit status, stdout and stderr.
pub fn run_to_end(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::io::Result<(ExitStatus, String, String)> {
    let output = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Where a Trellis under test keeps its events. Tests that hold for every backend take one as
/// their argument and run once per backend through the `backends` template (the test file
/// needs `use rstest::rstest; use rstest_reuse::apply;`, as the template expands to `#[rstest]`):
/// `#[apply(backends)] #[tokio::test] async fn name(#[case] backend: Backend) { ... }`, run as
/// `name::case_1_embedded` and `name::case_2_jetstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded log in the data dir.
    Embedded,
    /// NATS JetStream, on a [`NatsServer`] of the test's own.
    JetStream,
}

/// The rstest template behind `#[apply(backends)]`: one case per [`Backend`].
// `rstest` by its bare name: the template tells its own options from the test's attributes by it.
#[rstest_reuse::template]
#[export]
#[rstest]
#[case::embedded(Backend::Embedded)]
#[case::jetstream(Backend::JetStream)]
pub fn backends(#[case] backend: Backend) {}
