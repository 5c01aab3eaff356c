//! `trellis-bench-receiver`: the smallest HTTP/1 server hyper allows, used as a throughput ceiling.
//!
//! It reads every request body to the end and answers a fixed status (202 by default) with an
//! empty body or `{}`. `bench/publish.sh` drives it with the same load generator and settings as
//! `trellis serve`, so the ratio between the two rates is what Trellis itself costs on this box.
//! It can also stand in for a webhook endpoint (`--status 200`).
//!
//! Without `--stats` it keeps no state, does no routing and logs nothing per request, on purpose:
//! anything it did would lower the ceiling it exists to measure. With `--stats` (used by
//! `bench/delivery.sh`, for the ceiling and for delivery alike, so both pay the same) it also
//! counts requests, keeps the wall-clock times of the first and the last one, and, for requests
//! that carry a send time (`ce-sentns` by default, nanoseconds since the Unix epoch, set by
//! `trellis-loadgen --send-time-header`), records send-to-receipt latency in an HDR histogram.
//! It also keeps the longest gap between two receipts and when it ended: with events published
//! at a steady rate, that is how long deliveries stopped while a subscription moved from a
//! killed replica to another (`bench/cluster.sh`).
//! `GET /stats` answers those figures as JSON and `POST /stats/reset` clears them; neither
//! request is counted. Sender and receiver must share a clock, which holds on one machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Minimal HTTP/1 server: reads each request body and answers a fixed status.
#[derive(Debug, Parser)]
#[command(name = "trellis-bench-receiver", version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the bound address is printed on stdout
    /// as `listening on <addr>`.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Status code of every answer.
    #[arg(long, default_value = "202", value_parser = parse_status)]
    status: StatusCode,
    /// Answer `{}` with `content-type: application/json` instead of an empty body.
    #[arg(long)]
    json_body: bool,
    /// Count requests and record send-to-receipt latency; serve `GET /stats` and
    /// `POST /stats/reset`.
    #[arg(long)]
    stats: bool,
    /// With `--stats`: the request header holding the send time, in nanoseconds since the Unix
    /// epoch. Trellis delivers a `sentns` extension attribute as `ce-sentns` in binary mode.
    #[arg(long, value_name = "NAME", default_value = "ce-sentns")]
    sent_header: HeaderName,
    /// Runtime worker threads; one per core by default.
    #[arg(long)]
    threads: Option<usize>,
}

/// The fixed answer; cloning it only bumps reference counts.
#[derive(Clone)]
struct Reply {
    status: StatusCode,
    body: Bytes,
    is_json: bool,
    /// `Some` with `--stats`.
    stats: Option<Arc<Stats>>,
}

/// What `--stats` records. A reset while requests arrive may leave a request half counted
/// (say, in `n_requests` but not in `first_ns`); the benchmark resets only between phases.
struct Stats {
    sent_header: HeaderName,
    n_requests: AtomicU64,
    /// Wall-clock receipt times, nanoseconds since the Unix epoch; 0 before the first request.
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// The longest time between two receipts since the reset, and the receipt that ended it,
    /// nanoseconds since the Unix epoch; (0, 0) before the second request.
    max_gap: Mutex<(u64, u64)>,
    /// Requests whose send-time header was missing or not a number.
    n_without_sent: AtomicU64,
    /// Requests whose send time was after their receipt (clock trouble); recorded as 0.
    n_sent_in_future: AtomicU64,
    /// Send-to-receipt latency in microseconds. A std `Mutex`: nothing awaits while holding it,
    /// and only requests with a send time take it.
    latency_us: Mutex<Histogram<u64>>,
}

/// Latencies are recorded in microseconds, up to one hour (a backlog delivered late is still a
/// figure worth seeing), to three significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n_threads) = args.threads {
        builder.worker_threads(n_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(args))
}

/// Accepts connections until SIGTERM or Ctrl-C, then returns; open connections are dropped.
async fn serve(args: Args) -> anyhow::Result<()> {
    let stats = if args.stats {
        let latency_us = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
            .context("creating the latency histogram")?;
        Some(Arc::new(Stats {
            sent_header: args.sent_header.clone(),
            n_requests: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            max_gap: Mutex::new((0, 0)),
            n_without_sent: AtomicU64::new(0),
            n_sent_in_future: AtomicU64::new(0),
            latency_us: Mutex::new(latency_us),
        }))
    } else {
        None
    };
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    // Rust's stdout is line-buffered, so a script waiting on this line sees it at once.
    println!("listening on {local_addr}");

    let reply = Reply {
        status: args.status,
        body: if args.json_body {
            Bytes::from_static(b"{}")
        } else {
            Bytes::new()
        },
        is_json: args.json_body,
        stats,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, reply.clone()));
                }
                Err(error) => {
                    // Usually out of file descriptors; keep serving the connections we have.
                    eprintln!("Accept failed: {error}.");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigterm.recv() => break,
            _ = &mut ctrl_c => break,
        }
    }
    Ok(())
}

async fn serve_connection(stream: TcpStream, reply: Reply) {
    // Small answers on a keep-alive connection: without this, Nagle holds them back.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let service = service_fn(move |request| answer(request, reply.clone()));
    // A client that hangs up mid-request is routine when a load generator stops; nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    reply: Reply,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if let Some(stats) = &reply.stats {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/stats") => return Ok(json_response(stats.to_json())),
            (&Method::POST, "/stats/reset") => {
                stats.reset();
                return Ok(json_response(serde_json::json!({})));
            }
            _ => {}
        }
    }
    // The send time is read before the body is consumed, but the receipt is timed after it.
    let stats = reply.stats.as_deref();
    let sent_ns = stats.and_then(|stats| parse_sent_ns(request.headers().get(&stats.sent_header)));
    // Read the body to the end, as a real server must, but keep none of it.
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    if let Some(stats) = stats {
        stats.record(sent_ns);
    }
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    if reply.is_json {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(response)
}

impl Stats {
    fn record(&self, sent_ns: Option<u64>) {
        let now_ns = unix_now_ns();
        self.n_requests.fetch_add(1, Ordering::Relaxed);
        // Only the first request after a reset finds 0 here.
        let _ = self
            .first_ns
            .compare_exchange(0, now_ns, Ordering::Relaxed, Ordering::Relaxed);
        let previous_ns = self.last_ns.fetch_max(now_ns, Ordering::Relaxed);
        if previous_ns != 0 && now_ns > previous_ns {
            let gap_ns = now_ns - previous_ns;
            let mut max_gap = self
                .max_gap
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if gap_ns > max_gap.0 {
                *max_gap = (gap_ns, now_ns);
            }
        }
        let Some(sent_ns) = sent_ns else {
            self.n_without_sent.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if sent_ns > now_ns {
            self.n_sent_in_future.fetch_add(1, Ordering::Relaxed);
        }
        let latency_us = now_ns.saturating_sub(sent_ns) / 1000;
        // A poisoned lock only means another request panicked mid-record; the counts still hold.
        let mut histogram = self
            .latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        histogram.saturating_record(latency_us);
    }

    fn reset(&self) {
        self.n_requests.store(0, Ordering::Relaxed);
        self.first_ns.store(0, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
        *self
            .max_gap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (0, 0);
        self.n_without_sent.store(0, Ordering::Relaxed);
        self.n_sent_in_future.store(0, Ordering::Relaxed);
        self.latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reset();
    }

    /// `rate` is requests per second between the first and the last receipt: n - 1 gaps.
    fn to_json(&self) -> serde_json::Value {
        let n_requests = self.n_requests.load(Ordering::Relaxed);
        let first_ns = self.first_ns.load(Ordering::Relaxed);
        let last_ns = self.last_ns.load(Ordering::Relaxed);
        let window_s = last_ns.saturating_sub(first_ns) as f64 / 1e9;
        let rate = if n_requests > 1 && window_s > 0.0 {
            (n_requests - 1) as f64 / window_s
        } else {
            0.0
        };
        let (max_gap_ns, max_gap_end_ns) = *self
            .max_gap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let histogram = self
            .latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        serde_json::json!({
            "requests": n_requests,
            "first_ns": first_ns,
            "last_ns": last_ns,
            "window_s": window_s,
            "rate": (rate * 10.0).round() / 10.0,
            "max_gap_ms": max_gap_ns as f64 / 1e6,
            "max_gap_end_ns": max_gap_end_ns,
            "without_sent": self.n_without_sent.load(Ordering::Relaxed),
            "sent_in_future": self.n_sent_in_future.load(Ordering::Relaxed),
            "latency_count": histogram.len(),
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": histogram.max() as f64 / 1000.0,
            "mean_ms": histogram.mean() / 1000.0,
        })
    }
}

fn parse_sent_ns(value: Option<&HeaderValue>) -> Option<u64> {
    value?.to_str().ok()?.trim().parse().ok()
}

fn unix_now_ns() -> u64 {
    // A clock before 1970 reads as 0, and one past 2554 saturates: neither happens on a bench box.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn json_response(object: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(object.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn parse_status(raw: &str) -> Result<StatusCode, String> {
    raw.parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            format!("must be an HTTP status code from 100 to 999, e.g. 202; got `{raw}`")
        })
}
