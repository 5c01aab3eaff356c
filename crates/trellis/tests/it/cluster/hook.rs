//! A webhook receiver for the cluster tests that knows which replica sent each delivery.
//!
//! Every replica connects from 127.0.0.1, and one subscription has one URL whoever owns it, so
//! neither the source address nor the path can tell the replicas apart; nor can the time set
//! against ownership, since a replica that lost ownership without knowing it is exactly what the
//! tests look for. What does tell them apart is who holds the client end of the TCP connection.
//! At accept, the receiver finds the connection's client socket in `/proc/net/tcp` (its local
//! address is the peer address the receiver sees, its remote one the receiver's) and then the
//! replica process with that socket's inode among its file descriptors. A connection belongs to
//! one process for its whole life, so every request on it is that process's. This needs no clock
//! and no guess, and holds for a frozen process too: the kernel keeps its sockets.
//!
//! It answers 200, or what the test's status function says for a delivery (a failed attempt is
//! retried after a backoff), after a delay the test may set (a slow receiver keeps deliveries in
//! flight).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Every `trellis serve` process a cluster started, by pid: which replica it was.
pub(crate) type Pids = Arc<Mutex<BTreeMap<u32, usize>>>;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// When it arrived (before any delay).
    pub(crate) at: Instant,
    pub(crate) path: String,
    /// Its `ce-id`.
    pub(crate) id: String,
    /// Its `trellis-delivery-attempt`.
    pub(crate) attempt: u32,
    /// When the sender made up the attempt: the time in its `x-request-id`, a UUIDv7 the
    /// delivery engine makes for each attempt just before it asks whether it may still send
    /// (Unix milliseconds).
    pub(crate) made_at_ms: Option<u64>,
    /// The replica process that sent it; `None` if none of the cluster's processes held the
    /// connection (one killed while it connected).
    pub(crate) pid: Option<u32>,
}

/// A running receiver; it stops when dropped.
pub(crate) struct Hook {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

/// The status to answer a delivery with, from its `ce-id` and attempt.
type Status = dyn Fn(&str, u32) -> u16 + Send + Sync;

struct State {
    deliveries: Mutex<Vec<Delivery>>,
    delay_ms: AtomicU64,
    status: Mutex<Arc<Status>>,
    pids: Pids,
}

impl Hook {
    /// A receiver on `127.0.0.1:0` that tells deliveries apart by the processes in `pids`.
    pub(crate) async fn start(pids: Pids) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let state = Arc::new(State {
            deliveries: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
            status: Mutex::new(Arc::new(|_: &str, _: u32| 200)),
            pids,
        });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let candidates: Vec<u32> = lock(&state.pids).keys().copied().collect();
                    let pid = tokio::task::spawn_blocking(move || sender(peer, addr, &candidates))
                        .await
                        .ok()
                        .flatten();
                    let service =
                        service_fn(move |request| answer(Arc::clone(&state), pid, request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook {
            addr,
            state,
            accept,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Makes every answer from now on wait this long.
    pub(crate) fn set_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(millis, Ordering::Relaxed);
    }

    /// Answers each delivery from now on with `status(ce-id, attempt)`.
    pub(crate) fn set_status(&self, status: impl Fn(&str, u32) -> u16 + Send + Sync + 'static) {
        *lock(&self.state.status) = Arc::new(status);
    }

    /// Every request so far, in arrival order.
    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state.deliveries).clone()
    }

    /// The requests so far to `path`.
    pub(crate) fn deliveries_to(&self, path: &str) -> Vec<Delivery> {
        lock(&self.state.deliveries)
            .iter()
            .filter(|delivery| delivery.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    state: Arc<State>,
    pid: Option<u32>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let at = Instant::now();
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("ce-id");
    let attempt = header("trellis-delivery-attempt").parse().unwrap_or(1);
    let made_at_ms = uuid::Uuid::parse_str(&header("x-request-id"))
        .ok()
        .and_then(|id| id.get_timestamp())
        .map(|timestamp| {
            let (secs, nanos) = timestamp.to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        });
    // Read the body whole, as a real receiver would before answering.
    let _ = request.into_body().collect().await;
    let status = (lock(&state.status))(&id, attempt);
    lock(&state.deliveries).push(Delivery {
        at,
        path,
        id,
        attempt,
        made_at_ms,
        pid,
    });
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(response)
}

/// Which of `candidates` holds the client end of the connection from `peer` to `hook`.
fn sender(peer: SocketAddr, hook: SocketAddr, candidates: &[u32]) -> Option<u32> {
    let target = format!("socket:[{}]", socket_inode(peer, hook)?);
    candidates.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
            })
        })
    })
}

/// The inode of the IPv4 TCP socket whose local address is `local` and remote one `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (local, remote) = (proc_address(local)?, proc_address(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // Columns: sl, local_address, rem_address, st, tx:rx queues, tr:when, retrnsmt, uid,
    // timeout, inode. A connection in TIME_WAIT keeps its line with inode 0.
    table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let inode: u64 = columns.get(9)?.parse().ok()?;
        (columns.get(1) == Some(&local.as_str())
            && columns.get(2) == Some(&remote.as_str())
            && inode != 0)
            .then_some(inode)
    })
}

/// An address as `/proc/net/tcp` prints it: the IPv4 address as the 32-bit word in memory
/// (network order read natively), then the port, both in upper-case hex.
fn proc_address(address: SocketAddr) -> Option<String> {
    let SocketAddr::V4(address) = address else {
        return None;
    };
    Some(format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(address.ip().octets()),
        address.port()
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
