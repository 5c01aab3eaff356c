//! One accepted connection: what it has done lately ([`ConnState`]), the socket wrapper that
//! records it and can be cut off ([`TrackedIo`]), and the watchdog that cuts it off when a
//! timeout of its listener expires.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::head_gate::HeadGate;
use super::limits::{Activity, ConnectionLimits, Expiry, deadline};
use super::metrics;

const NONE: u64 = u64::MAX;

/// The first bytes of every HTTP/2 connection. A connection that starts with them has no
/// request heads to time, only streams.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Counts over all connections of one listener, for the drain's progress lines and the gauge.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    pub(crate) open: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
}

/// What one connection has done lately, shared by its socket, its requests and its watchdog.
pub(crate) struct ConnState {
    listener: &'static str,
    accepted: Instant,
    last_read: AtomicU64,
    idle_since: AtomicU64,
    head_started: AtomicU64,
    in_flight: AtomicUsize,
    bodies_reading: AtomicUsize,
    /// Set once the first bytes show an HTTP/2 connection.
    http2: AtomicBool,
    first_read_seen: AtomicBool,
    /// Cancelled when the connection must end (a timeout, the end of the drain) or has ended.
    kill: CancellationToken,
    stats: Arc<ListenerStats>,
}

impl ConnState {
    pub(crate) fn new(
        listener: &'static str,
        kill: CancellationToken,
        stats: Arc<ListenerStats>,
    ) -> ConnState {
        ConnState {
            listener,
            accepted: Instant::now(),
            last_read: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            in_flight: AtomicUsize::new(0),
            bodies_reading: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            first_read_seen: AtomicBool::new(false),
            kill,
            stats,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now_ms();
        self.last_read.store(now, Ordering::Relaxed);
        // "PRI" is no HTTP/1 method; three bytes tell an HTTP/2 preface from a request line.
        if !self.first_read_seen.swap(true, Ordering::Relaxed)
            && bytes.starts_with(&H2_PREFACE_START[..3])
        {
            self.http2.store(true, Ordering::Relaxed);
        }
        if !self.http2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    /// A request (or an HTTP/2 call) arrived; it counts until the returned guard drops, which
    /// is when its answer has been sent or abandoned.
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.head_started.store(NONE, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(Arc::clone(self))
    }

    /// A request body began to be read; it counts until the returned guard drops.
    pub(crate) fn body_started(self: &Arc<Self>) -> BodyGuard {
        self.bodies_reading.fetch_add(1, Ordering::Relaxed);
        BodyGuard(Arc::clone(self))
    }

    fn activity(&self) -> Activity {
        let head = self.head_started.load(Ordering::Relaxed);
        Activity {
            last_read: self.last_read.load(Ordering::Relaxed),
            idle_since: self.idle_since.load(Ordering::Relaxed),
            head_started: (head != NONE).then_some(head),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            bodies_reading: self.bodies_reading.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.0;
        state.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if state.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            state.idle_since.store(state.now_ms(), Ordering::Relaxed);
        }
    }
}

pub(crate) struct BodyGuard(Arc<ConnState>);

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.0.bodies_reading.fetch_sub(1, Ordering::Relaxed);
        // The wait for the body's next bytes starts now, not at the last read before it.
        self.0.last_read.store(self.0.now_ms(), Ordering::Relaxed);
    }
}

/// Handed to tonic as the connection's info, so a call can find its connection.
#[derive(Clone)]
pub(crate) struct ConnHandle(pub(crate) Arc<ConnState>);

/// An accepted socket that records when bytes arrive and fails every read and write once its
/// connection is killed, so the HTTP or gRPC connection on it ends wherever it is waiting.
pub(crate) struct TrackedIo {
    stream: TcpStream,
    state: Arc<ConnState>,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// HTTP/1 only: heads are checked before hyper sees them (see `head_gate.rs`).
    gated: Option<Box<Gated>>,
    _permit: OwnedSemaphorePermit,
}

/// The gate and the bytes it keeps from hyper: an incomplete head (`held`), bytes it released
/// that hyper has not taken yet (`ready`), and the JSON answer to a refused head.
#[derive(Default)]
struct Gated {
    gate: HeadGate,
    held: Vec<u8>,
    ready: Vec<u8>,
    ready_at: usize,
    answer: Option<(Vec<u8>, usize)>,
    /// After the refusal: until when the rest of the client's input is read and dropped.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    lingered_bytes: usize,
}

/// How long, and for how many bytes at most, a connection whose head was refused reads on
/// after answering. Closing a socket with unread input sends a reset, and a reset can destroy
/// the answer before the client reads it; a client still sending its oversized head is the
/// usual case.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

impl TrackedIo {
    /// Wraps `stream` and starts its watchdog.
    pub(crate) fn new(
        stream: TcpStream,
        state: Arc<ConnState>,
        limits: &ConnectionLimits,
        permit: OwnedSemaphorePermit,
        gate_heads: bool,
    ) -> TrackedIo {
        state.stats.open.fetch_add(1, Ordering::Relaxed);
        metrics::opened(state.listener);
        tokio::spawn(watchdog(Arc::clone(&state), limits.clone()));
        TrackedIo {
            stream,
            killed: Box::pin(state.kill.clone().cancelled_owned()),
            state,
            gated: gate_heads.then(Box::default),
            _permit: permit,
        }
    }

    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    fn check_killed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was closed by the server",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        self.state.stats.open.fetch_sub(1, Ordering::Relaxed);
        metrics::closed(self.state.listener);
        // Stops the watchdog.
        self.state.kill.cancel();
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_killed(cx)?;
        let this = &mut *self;
        let Some(gated) = this.gated.as_deref_mut().filter(|gated| {
            !gated.gate.is_aside() || gated.ready_at < gated.ready.len() || !gated.held.is_empty()
        }) else {
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = polled
                && buf.filled().len() > before
            {
                this.state.on_read(&buf.filled()[before..]);
            }
            return polled;
        };
        loop {
            if gated.ready_at < gated.ready.len() {
                let n = buf.remaining().min(gated.ready.len() - gated.ready_at);
                buf.put_slice(&gated.ready[gated.ready_at..gated.ready_at + n]);
                gated.ready_at += n;
                if gated.ready_at == gated.ready.len() {
                    gated.ready.clear();
                    gated.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // A refused head: hyper gets the end of the input there, answers what came before
            // and shuts the connection down, which writes the refusal (`poll_shutdown`).
            if gated.gate.refused().is_some() {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            this.state.on_read(&buf.filled()[before..]);
            if gated.held.is_empty() {
                // The usual case: the bytes pass where they are, up to an incomplete head.
                let scan = gated.gate.scan(&buf.filled()[before..]);
                if scan.hold {
                    gated
                        .held
                        .extend_from_slice(&buf.filled()[before + scan.pass..]);
                }
                buf.set_filled(before + scan.pass);
                if scan.pass > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // The held head comes first: everything goes through `ready`.
                let new_from = gated.held.len();
                gated.held.extend_from_slice(&buf.filled()[before..]);
                buf.set_filled(before);
                let scan = gated.gate.scan_more(&gated.held, new_from);
                gated.ready.extend_from_slice(&gated.held[..scan.pass]);
                gated.held.drain(..scan.pass);
                if !scan.hold {
                    gated.held.clear();
                }
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_killed(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_killed(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_killed(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(gated) = this.gated.as_deref_mut()
            && let Some(refusal) = gated.gate.refused()
        {
            let (answer, written) = gated.answer.get_or_insert_with(|| (refusal.response(), 0));
            while *written < answer.len() {
                match ready!(Pin::new(&mut this.stream).poll_write(cx, &answer[*written..])) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => *written += n,
                }
            }
            *written = answer.len();
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            let linger = gated
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
            let mut scratch = [0u8; 4096];
            while gated.lingered_bytes < LINGER_BYTES {
                let mut discard = ReadBuf::new(&mut scratch);
                match Pin::new(&mut this.stream).poll_read(cx, &mut discard) {
                    Poll::Ready(Ok(())) if !discard.filled().is_empty() => {
                        gated.lingered_bytes += discard.filled().len();
                    }
                    Poll::Ready(_) => break,
                    Poll::Pending => {
                        if linger.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        break;
                    }
                }
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TrackedIo {
    type ConnectInfo = ConnHandle;

    fn connect_info(&self) -> ConnHandle {
        ConnHandle(Arc::clone(&self.state))
    }
}

/// Ends the connection when a timeout of its listener expires. It wakes at the earliest
/// deadline and at least every shortest timeout, so a change of state that brings a deadline
/// closer (a head starting on an idle connection) is never noticed late.
async fn watchdog(state: Arc<ConnState>, limits: ConnectionLimits) {
    let Some(shortest) = [
        limits.header_read_timeout,
        limits.idle_timeout,
        limits.body_read_timeout,
    ]
    .into_iter()
    .flatten()
    .min() else {
        return;
    };
    let shortest = u64::try_from(shortest.as_millis()).unwrap_or(NONE).max(1);
    loop {
        let now = state.now_ms();
        let wake = match deadline(&state.activity(), &limits) {
            Some((at, why)) if at <= now => {
                expire(&state, why);
                return;
            }
            Some((at, _)) => at.min(now.saturating_add(shortest)),
            None => now.saturating_add(shortest),
        };
        let wake = state.accepted + Duration::from_millis(wake);
        tokio::select! {
            () = state.kill.cancelled() => return,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

fn expire(state: &ConnState, why: Expiry) {
    tracing::debug!(
        message = "Closing a connection: a timeout expired.",
        listener = state.listener,
        reason = why.label()
    );
    metrics::timed_out(state.listener, why);
    state.kill.cancel();
}
