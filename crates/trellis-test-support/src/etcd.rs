//! A real single-member `etcd` on free loopback ports with its own data directory, for the
//! tests of Trellis' etcd metadata store.
//!
//! Without etcd on the PATH, [`EtcdServer::start`] returns `None` after saying so, and the test
//! skips; with `TRELLIS_REQUIRE_ETCD` set (as the README's test command sets it) it panics
//! instead, so CI never passes by skipping. It runs with a 10 ms heartbeat and a 100 ms election
//! timeout, so it is ready in about a tenth of a second.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long etcd may take to report healthy (it takes about 100 ms).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many pairs of free ports to try before giving up.
const START_ATTEMPTS: usize = 3;

/// A running etcd; killed (SIGKILL) when dropped, and its data directory removed.
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    /// With TLS: the port of the TLS client listener, beside the plain one used for health.
    tls_port: Option<u16>,
    /// With TLS: the server certificate and key files.
    tls_files: Option<(PathBuf, PathBuf)>,
    data_dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts a server, or returns `None` (after saying so on stderr) when etcd is not installed
    /// and `TRELLIS_REQUIRE_ETCD` is not set.
    ///
    /// # Panics
    /// When etcd is required but missing, or does not become healthy.
    pub fn start() -> Option<EtcdServer> {
        EtcdServer::start_inner(None)
    }

    /// Like [`EtcdServer::start`], also serving clients over TLS with this certificate (made for
    /// `127.0.0.1`) on [`EtcdServer::tls_endpoint`].
    pub fn start_with_tls(tls: &crate::TestTls) -> Option<EtcdServer> {
        EtcdServer::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<&crate::TestTls>) -> Option<EtcdServer> {
        if !installed() {
            assert!(
                std::env::var_os("TRELLIS_REQUIRE_ETCD").is_none(),
                "etcd is required (TRELLIS_REQUIRE_ETCD is set) but not installed"
            );
            eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
            return None;
        }
        let temp = tempfile::tempdir().expect("tempdir");
        let tls_files = tls.map(|tls| {
            let cert = temp.path().join("server.crt");
            let key = temp.path().join("server.key");
            std::fs::write(&cert, &tls.cert_pem).expect("write the server certificate");
            std::fs::write(&key, &tls.key_pem).expect("write the server key");
            (cert, key)
        });
        let mut server = EtcdServer {
            child: None,
            client_port: 0,
            peer_port: 0,
            tls_port: None,
            tls_files,
            data_dir: temp.path().join("data"),
            _temp: temp,
        };
        // etcd cannot pick its own ports and say which, so they are found free here. Another
        // test could take one before etcd binds it; then etcd exits, and new ports are tried.
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            server.client_port = free_port();
            server.peer_port = free_port();
            server.tls_port = server.tls_files.as_ref().map(|_| free_port());
            match server.try_spawn() {
                Ok(()) => return Some(server),
                Err(error) => last_error = error,
            }
        }
        panic!("{last_error}");
    }

    /// `127.0.0.1:PORT`, the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `https://127.0.0.1:PORT`, the TLS client endpoint of a server started with TLS.
    pub fn tls_endpoint(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// Stops the server gracefully (SIGTERM) and reaps it; its data stays.
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

    /// Stops the server if it runs and starts it again on the same ports and data; returns once
    /// it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(error) = self.try_spawn() {
            panic!("{error}");
        }
    }

    /// Starts etcd on the chosen ports and waits until it is healthy; on failure it is killed.
    fn try_spawn(&mut self) -> Result<(), String> {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        let mut listen = client_url.clone();
        if let (Some(port), Some((cert, key))) = (self.tls_port, &self.tls_files) {
            listen.push_str(&format!(",https://127.0.0.1:{port}"));
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = command
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("failed to spawn etcd: {error}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.healthy() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "etcd did not become healthy on port {} (exited: {exited})",
                    self.client_port
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// Whether `GET /health` answers `"health":"true"`.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
