//! A real `nats-server` with JetStream, on a free loopback port with its own store directory,
//! for the tests of Trellis' JetStream storage.
//!
//! Without nats-server on the PATH, [`NatsServer::start`] returns `None` after saying so, and the
//! test skips; with `TRELLIS_REQUIRE_NATS` set (as the README's test command sets it) it panics
//! instead, so CI never passes by skipping.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long nats-server may take to say it is ready (it takes tens of milliseconds).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The line nats-server logs once it accepts clients, JetStream enabled by then.
const READY_LINE: &str = "Server is ready";
/// What nats-server logs before the address it listens on.
const LISTENING_LINE: &str = "Listening for client connections on ";

/// A running nats-server; killed (SIGKILL) when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// Options beyond the defaults (TLS, a user), kept for restarts.
    extra_args: Vec<String>,
    store_dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server, or returns `None` (after saying so on stderr) when nats-server is not
    /// installed and `TRELLIS_REQUIRE_NATS` is not set.
    ///
    /// # Panics
    /// When nats-server is required but missing, or does not become ready.
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with_args(&[])
    }

    /// Like [`NatsServer::start`], with more nats-server options, e.g. `--tls`, `--tlscert FILE`,
    /// `--tlskey FILE`, or `--user U --pass P`.
    pub fn start_with_args(extra_args: &[&str]) -> Option<NatsServer> {
        if !installed() {
            assert!(
                std::env::var_os("TRELLIS_REQUIRE_NATS").is_none(),
                "nats-server is required (TRELLIS_REQUIRE_NATS is set) but not installed"
            );
            eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
            return None;
        }
        let temp = tempfile::tempdir().expect("tempdir");
        let mut server = NatsServer {
            child: None,
            // The server picks its own free port at the first start (`-p -1`) and says which:
            // a port found free here and passed on could be taken by another test meanwhile.
            port: 0,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            store_dir: temp.path().join("store"),
            _temp: temp,
        };
        server.spawn();
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server gracefully if it runs, then starts it again on the same port and store;
    /// returns once it is ready.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server gracefully (SIGTERM), so that its store is flushed, and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts nats-server on `self.port` (any free port while it is 0) and waits until it is
    /// ready, learning its port from its log.
    fn spawn(&mut self) {
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(&self.store_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let (ready_tx, ready_rx) = mpsc::channel();
        if let Some(pipe) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(pipe).lines();
                let mut port = None;
                for line in lines.by_ref().map_while(Result::ok) {
                    if let Some((_, address)) = line.split_once(LISTENING_LINE) {
                        port = address
                            .trim()
                            .rsplit_once(':')
                            .and_then(|(_, port)| port.parse::<u16>().ok());
                    }
                    if line.contains(READY_LINE) {
                        let _ = ready_tx.send(port);
                        break;
                    }
                }
                // Keep draining so the server never blocks on a full pipe.
                for _ in lines {}
            });
        }
        self.child = Some(child);
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(port)) => self.port = port,
            Ok(None) => {
                self.kill();
                panic!("nats-server said it is ready but not on which port");
            }
            Err(_) => {
                self.kill();
                panic!("nats-server did not become ready (port {port})");
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
