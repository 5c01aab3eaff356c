//! A fault-injection TCP proxy on loopback: a test puts it between a client and a server to see
//! how the client copes with the network failing under it, reproducibly.
//!
//! The proxy is a plain byte pipe, so anything over TCP goes through it unchanged (HTTP/1,
//! HTTP/2, gRPC) until a fault strikes. The faults are those a real network or a dying peer
//! produces, and that a framework server will not produce on demand:
//!
//! - **reset**: the connection is reset (an RST, as when the peer crashes or a middlebox drops the
//!   flow) after a random number of bytes or a random delay;
//! - **blackhole**: the connection silently stops forwarding and is never closed, as when a route
//!   disappears; only the client's own timeouts can get it out;
//! - **delay** and **jitter**: latency added to every chunk forwarded;
//! - **down**/**up**: the whole proxy goes away (new connections are refused, live ones reset) and
//!   comes back on the same address, as a restarting server does.
//!
//! Every random decision derives from [`Faults::seed`] and the connection's number (0 for the first
//! connection accepted, then 1, ...), so a failing run is reproduced by running it again with the
//! same seed. What a connection will suffer is known in advance: [`Faults::connection_fault`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How much one read may take in; also the largest unit that is delayed as one chunk.
const CHUNK_SIZE: usize = 64 * 1024;

/// Bytes a direction holds while they wait out their latency: about what a fast link holds in
/// flight, so a slow reader still pushes back on the sender. Counted in bytes, not chunks: reads
/// on a busy loopback socket return a few KiB each, and a bound of 256 chunks capped a link with
/// 20 ms of latency at about 50 MB/s.
const DELAY_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Backlog of the listening socket: tests open many connections in bursts.
const LISTEN_BACKLOG: u32 = 1024;

/// The faults to inject. Probabilities are per connection; outside `0.0..=1.0` they act as the
/// nearest bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Seeds every random decision, so a run can be repeated exactly.
    pub seed: u64,
    /// Chance that a connection is reset at a random point: after a random number of bytes (at
    /// most [`Faults::MAX_FAULT_BYTES`], both directions counted) or a random delay (at most
    /// [`Faults::MAX_RESET_DELAY`]) after the upstream connection is made.
    pub reset_probability: f64,
    /// Latency added to every chunk, in both directions.
    pub delay: Duration,
    /// Extra latency drawn uniformly from `0..=jitter` for every chunk.
    pub jitter: Duration,
    /// Chance that a connection, after a random number of bytes (at most
    /// [`Faults::MAX_FAULT_BYTES`]), stops forwarding anything without closing. A connection is
    /// reset or blackholed, never both: the two probabilities are of exclusive outcomes, and when
    /// they add up to more than 1, reset takes the share first.
    pub blackhole_probability: f64,
}

/// What one connection suffers, decided when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionFault {
    /// Forwarded faithfully (with the configured delay and jitter).
    None,
    /// Reset once this many bytes (both directions together) have been forwarded.
    ResetAfterBytes(u64),
    /// Reset this long after the upstream connection is made, whatever the traffic.
    ResetAfterDelay(Duration),
    /// Forwards this many bytes (both directions together), then nothing, and never closes.
    BlackholeAfterBytes(u64),
}

impl Faults {
    /// The most bytes a connection forwards before a byte-triggered reset or blackhole. Small, so
    /// that faults strike within the first few messages rather than after the test is over.
    pub const MAX_FAULT_BYTES: u64 = 16 * 1024;
    /// The longest a connection lives before a time-triggered reset.
    pub const MAX_RESET_DELAY: Duration = Duration::from_secs(1);

    /// No faults at all: the proxy is a transparent pipe.
    pub const fn none() -> Faults {
        Faults {
            seed: 0,
            reset_probability: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            blackhole_probability: 0.0,
        }
    }

    pub const fn with_seed(self, seed: u64) -> Faults {
        Faults { seed, ..self }
    }

    pub const fn with_reset_probability(self, reset_probability: f64) -> Faults {
        Faults {
            reset_probability,
            ..self
        }
    }

    pub const fn with_delay(self, delay: Duration) -> Faults {
        Faults { delay, ..self }
    }

    pub const fn with_jitter(self, jitter: Duration) -> Faults {
        Faults { jitter, ..self }
    }

    pub const fn with_blackhole_probability(self, blackhole_probability: f64) -> Faults {
        Faults {
            blackhole_probability,
            ..self
        }
    }

    /// The fault connection number `connection` suffers: a pure function of the seed, the
    /// probabilities and the number, which is what makes a run reproducible.
    pub fn connection_fault(&self, connection: u64) -> ConnectionFault {
        let mut rng = connection_rng(self.seed, connection, RngPurpose::Decision);
        // Every value is drawn whatever the outcome, so changing a probability changes which
        // fault a connection gets but not the byte counts or delays drawn for it.
        let draw: f64 = rng.random();
        let by_bytes: bool = rng.random();
        let bytes = rng.random_range(0..=Faults::MAX_FAULT_BYTES);
        let delay = rng.random_range(Duration::ZERO..=Faults::MAX_RESET_DELAY);
        if draw < self.reset_probability {
            if by_bytes {
                ConnectionFault::ResetAfterBytes(bytes)
            } else {
                ConnectionFault::ResetAfterDelay(delay)
            }
        } else if draw < self.reset_probability + self.blackhole_probability {
            ConnectionFault::BlackholeAfterBytes(bytes)
        } else {
            ConnectionFault::None
        }
    }

    /// These faults under the first seed, counting up from [`Faults::seed`], that resets each of
    /// the first `connections` connections after it carried something. A client that keeps one connection would otherwise
    /// meet a per-connection reset chance once, and most seeds would spare it entirely.
    /// `None` when resets are off or no seed among the next million does it.
    pub fn resetting_first(self, connections: u64) -> Option<Faults> {
        const SEEDS_TRIED: u64 = 1_000_000;
        if self.reset_probability <= 0.0 {
            return None;
        }
        (0..SEEDS_TRIED)
            .map(|step| self.with_seed(self.seed.wrapping_add(step)))
            .find(|faults| {
                (0..connections).all(|connection| {
                    // A reset before the first byte looks like a refused connection, not like
                    // the loss of one that worked.
                    matches!(
                        faults.connection_fault(connection),
                        ConnectionFault::ResetAfterBytes(1..) | ConnectionFault::ResetAfterDelay(_)
                    )
                })
            })
    }

    /// The latency for the next chunk: the delay plus a jitter drawn from `rng`.
    fn chunk_latency(&self, rng: &mut StdRng) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        self.delay + rng.random_range(Duration::ZERO..=self.jitter)
    }
}

impl Default for Faults {
    fn default() -> Faults {
        Faults::none()
    }
}

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Connections accepted from clients (each also numbers the connection).
    pub connections_accepted: u64,
    /// Connections reset by a [`Faults::reset_probability`] fault; resets by
    /// [`FaultProxy::down`] are not counted.
    pub connections_reset: u64,
    /// Connections that went into a blackhole.
    pub connections_blackholed: u64,
    /// Bytes written to the upstream server.
    pub bytes_to_upstream: u64,
    /// Bytes written back to clients.
    pub bytes_to_client: u64,
}

/// A running proxy from `127.0.0.1:<port>` to an upstream address. Dropping it resets every
/// connection it still carries and stops listening.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// `None` while down.
    serving: Mutex<Option<Serving>>,
}

/// What the proxy's tasks share with its handle.
struct Shared {
    faults: Mutex<Faults>,
    next_connection: AtomicU64,
    connections_accepted: AtomicU64,
    connections_reset: AtomicU64,
    connections_blackholed: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
}

/// The tasks of one up period: the accept loop and its connections.
struct Serving {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on `127.0.0.1:0`.
    pub async fn start(upstream: SocketAddr, faults: Faults) -> io::Result<FaultProxy> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            next_connection: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_reset: AtomicU64::new(0),
            connections_blackholed: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
        });
        let serving = serve(listener, upstream, &shared);
        Ok(FaultProxy {
            addr,
            upstream,
            shared,
            serving: Mutex::new(Some(serving)),
        })
    }

    /// Where clients connect; the same across [`FaultProxy::down`] and [`FaultProxy::up`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn faults(&self) -> Faults {
        *lock(&self.shared.faults)
    }

    /// Replaces the faults. Delay and jitter apply to live connections from their next chunk;
    /// reset and blackhole are decided when a connection is accepted, so they apply to the
    /// connections accepted from now on (use [`FaultProxy::down`] to cut the live ones).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Takes the proxy down as a crashed server goes: it stops listening, so new connections are
    /// refused, and resets every live connection, on both sides. It returns once all of that is
    /// done, so a test's next connection attempt is refused for sure. Does nothing if already down.
    pub async fn down(&self) {
        let Some(serving) = lock(&self.serving).take() else {
            return;
        };
        serving.stop.cancel();
        serving.tasks.close();
        serving.tasks.wait().await;
    }

    /// Brings the proxy back on the same address. Fails if something else took the port
    /// meanwhile. Does nothing if already up.
    pub async fn up(&self) -> io::Result<()> {
        let mut serving = lock(&self.serving);
        if serving.is_none() {
            let listener = listen(self.addr)?;
            *serving = Some(serve(listener, self.upstream, &self.shared));
        }
        Ok(())
    }

    pub fn is_up(&self) -> bool {
        lock(&self.serving).is_some()
    }

    pub fn stats(&self) -> FaultStats {
        let shared = &self.shared;
        FaultStats {
            connections_accepted: shared.connections_accepted.load(Ordering::Relaxed),
            connections_reset: shared.connections_reset.load(Ordering::Relaxed),
            connections_blackholed: shared.connections_blackholed.load(Ordering::Relaxed),
            bytes_to_upstream: shared.bytes_to_upstream.load(Ordering::Relaxed),
            bytes_to_client: shared.bytes_to_client.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The tasks notice, reset their connections and end on their own: drop cannot wait.
        if let Some(serving) = lock(&self.serving).take() {
            serving.stop.cancel();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so that [`FaultProxy::up`] gets its old port back at once.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn serve(listener: TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) -> Serving {
    let serving = Serving {
        stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
    };
    serving.tasks.spawn(accept_loop(
        listener,
        upstream,
        Arc::clone(shared),
        serving.stop.clone(),
        serving.tasks.clone(),
    ));
    serving
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, _)) => {
                let number = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(serve_connection(
                    client,
                    number,
                    upstream,
                    Arc::clone(&shared),
                    stop.clone(),
                ));
            }
            Err(error) => {
                // Such errors (a connection aborted before it was accepted, too many open files)
                // concern one connection or pass; the pause keeps a lasting one from spinning.
                tracing::warn!(%error, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How a relayed connection ended.
enum End {
    /// Both directions reached EOF and passed it on: close quietly.
    Closed,
    /// The injected reset.
    Fault,
    /// A side failed (reset by its peer, most often): pass the failure on as a reset.
    Broken,
    /// The proxy went down or was dropped.
    Stopped,
}

async fn serve_connection(
    mut client: TcpStream,
    number: u64,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let faults = *lock(&shared.faults);
    let fault = faults.connection_fault(number);
    tracing::debug!(
        connection = number,
        seed = faults.seed,
        ?fault,
        "fault proxy: accepted"
    );
    let connected = tokio::select! {
        () = stop.cancelled() => return reset(client),
        connected = TcpStream::connect(upstream) => connected,
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(error) => {
            // A proxy whose upstream refuses can only fail the client, as abruptly.
            tracing::debug!(connection = number, %error, "fault proxy: upstream unreachable");
            return reset(client);
        }
    };
    // The proxy must add no latency of its own: Nagle would hold back small chunks.
    for stream in [&client, &upstream] {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(connection = number, %error, "fault proxy: TCP_NODELAY not set");
        }
    }
    let link = Link {
        number,
        seed: faults.seed,
        fault,
        shared: &shared,
        forwarded: AtomicU64::new(0),
        blackholed: AtomicBool::new(false),
    };
    let end = tokio::select! {
        () = stop.cancelled() => End::Stopped,
        end = relay(&mut client, &mut upstream, &link) => end,
    };
    match end {
        End::Closed => {}
        End::Fault => {
            shared.connections_reset.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(connection = number, ?fault, "fault proxy: injected reset");
            reset(client);
            reset(upstream);
        }
        End::Broken | End::Stopped => {
            reset(client);
            reset(upstream);
        }
    }
}

/// Closes with an RST rather than a FIN, so the peer sees "connection reset", not a clean EOF.
fn reset(stream: TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "fault proxy: SO_LINGER not set, closing without a reset");
    }
    drop(stream);
}

/// One connection's state, shared by its two directions.
struct Link<'a> {
    number: u64,
    seed: u64,
    fault: ConnectionFault,
    shared: &'a Shared,
    /// Bytes forwarded so far, both directions together, for the byte-triggered faults.
    forwarded: AtomicU64,
    blackholed: AtomicBool,
}

/// Why a direction stopped before its EOF.
enum Cut {
    Fault,
    Broken,
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

async fn relay(client: &mut TcpStream, upstream: &mut TcpStream, link: &Link<'_>) -> End {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let both = async {
        tokio::try_join!(
            forward(
                &mut client_read,
                &mut upstream_write,
                Direction::ToUpstream,
                link
            ),
            forward(
                &mut upstream_read,
                &mut client_write,
                Direction::ToClient,
                link
            ),
        )
    };
    let reset_timer = async {
        match link.fault {
            ConnectionFault::ResetAfterDelay(delay) => tokio::time::sleep(delay).await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        ended = both => match ended {
            Ok(_) => End::Closed,
            Err(Cut::Fault) => End::Fault,
            Err(Cut::Broken) => End::Broken,
        },
        () = reset_timer => End::Fault,
    }
}

/// Copies one direction chunk by chunk (rather than with `tokio::io::copy`) so each chunk can be
/// delayed, cut short or swallowed.
///
/// Delay and jitter make a delay line, as a real link's latency does: reading goes on while
/// earlier chunks wait for their time, so latency costs no throughput. (Sleeping before each
/// write instead would cap a connection at one chunk per delay, which no network does.) A chunk
/// never leaves before the one read ahead of it, so the byte stream keeps its order.
async fn forward<R, W>(
    from: &mut R,
    to: &mut W,
    direction: Direction,
    link: &Link<'_>,
) -> Result<(), Cut>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The budget bounds the line; the channel only carries it, one entry per chunk.
    let line_budget = Semaphore::new(DELAY_LINE_BYTES);
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<InFlight<'_>>();
    let read_side = async {
        let mut jitter_rng = connection_rng(link.seed, link.number, RngPurpose::Jitter(direction));
        let mut last_due = tokio::time::Instant::now();
        // One buffer, split per chunk: its memory comes back once the writer dropped the chunks
        // cut from it, so a busy connection neither allocates nor zeroes per read. The proxy
        // shares the cores with what it measures.
        let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
        loop {
            buf.reserve(CHUNK_SIZE);
            let n = from.read_buf(&mut buf).await.map_err(|_| Cut::Broken)?;
            if n == 0 {
                // The writer may have ended (a fault); then there is nobody to tell.
                let _ = line_tx.send(InFlight::End);
                return Ok::<(), Cut>(());
            }
            let chunk = buf.split().freeze();
            // Reads are at most CHUNK_SIZE, far below u32::MAX, and the semaphore is never closed.
            let Ok(budget) = line_budget.acquire_many(n as u32).await else {
                return Ok(());
            };
            let latency = lock(&link.shared.faults).chunk_latency(&mut jitter_rng);
            let due = (tokio::time::Instant::now() + latency).max(last_due);
            last_due = due;
            if line_tx
                .send(InFlight::Chunk {
                    due,
                    bytes: chunk,
                    _budget: budget,
                })
                .is_err()
            {
                // The writer stopped, for a fault or a broken peer; its result says which.
                return Ok(());
            }
        }
    };
    let write_side = async {
        while let Some(item) = line_rx.recv().await {
            // The chunk's budget goes back once it is written, when `item` is dropped.
            let (due, bytes) = match &item {
                InFlight::Chunk { due, bytes, .. } => (*due, bytes),
                InFlight::End => {
                    if link.blackholed.load(Ordering::Relaxed) {
                        // Even the EOF vanishes: a blackhole tells nobody anything.
                        return std::future::pending().await;
                    }
                    // A half-close is passed on as one: HTTP/1 clients may end a request that way.
                    return to.shutdown().await.map_err(|_| Cut::Broken);
                }
            };
            tokio::time::sleep_until(due).await;
            let admitted = link.admit(bytes.len());
            if admitted.bytes > 0 {
                to.write_all(&bytes[..admitted.bytes])
                    .await
                    .map_err(|_| Cut::Broken)?;
                link.count(direction, admitted.bytes);
            }
            if admitted.reset {
                return Err(Cut::Fault);
            }
        }
        Ok(())
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}

/// A chunk on its way through the delay line, or the end of the stream behind the last one.
enum InFlight<'budget> {
    Chunk {
        due: tokio::time::Instant,
        bytes: Bytes,
        _budget: SemaphorePermit<'budget>,
    },
    End,
}

/// How much of a chunk to forward, and whether to reset after it.
struct Admitted {
    bytes: usize,
    reset: bool,
}

impl Link<'_> {
    /// Applies the byte-triggered faults to a chunk of `n` bytes. The two directions run in one
    /// task, never at the same time, so the load and the update cannot interleave.
    fn admit(&self, n: usize) -> Admitted {
        let limit = match self.fault {
            ConnectionFault::ResetAfterBytes(limit)
            | ConnectionFault::BlackholeAfterBytes(limit) => limit,
            ConnectionFault::None | ConnectionFault::ResetAfterDelay(_) => {
                return Admitted {
                    bytes: n,
                    reset: false,
                };
            }
        };
        let before = self.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        // At most n, so the conversion back cannot truncate.
        let bytes = limit.saturating_sub(before).min(n as u64) as usize;
        let reached = before.saturating_add(n as u64) >= limit;
        match self.fault {
            ConnectionFault::ResetAfterBytes(_) => Admitted {
                bytes,
                reset: reached,
            },
            _ => {
                if reached && !self.blackholed.swap(true, Ordering::Relaxed) {
                    self.shared
                        .connections_blackholed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(connection = self.number, fault = ?self.fault, "fault proxy: blackholed");
                }
                Admitted {
                    bytes,
                    reset: false,
                }
            }
        }
    }

    fn count(&self, direction: Direction, bytes: usize) {
        let counter = match direction {
            Direction::ToUpstream => &self.shared.bytes_to_upstream,
            Direction::ToClient => &self.shared.bytes_to_client,
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// What a random stream is for: each gets its own, so drawing more jitter (more chunks) never
/// shifts a connection's fault decision.
#[derive(Debug, Clone, Copy)]
enum RngPurpose {
    Decision,
    Jitter(Direction),
}

/// A generator keyed by (seed, connection, purpose) itself rather than by a hash of them, so no
/// two connections or purposes can share a stream.
fn connection_rng(seed: u64, connection: u64, purpose: RngPurpose) -> StdRng {
    let mut key = [0; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&connection.to_le_bytes());
    key[16] = match purpose {
        RngPurpose::Decision => 0,
        RngPurpose::Jitter(Direction::ToUpstream) => 1,
        RngPurpose::Jitter(Direction::ToClient) => 2,
    };
    StdRng::from_seed(key)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
