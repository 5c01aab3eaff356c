//! `trellis-loadgen`: an HTTP/1.1 keep-alive load generator for the Trellis benchmarks.
//!
//! Each of `--connections` tasks owns one hyper connection, drives its I/O itself, and keeps one
//! request in flight on it.
//! Without `--rate` the loop is closed: a connection sends its next request as soon as the previous
//! answer is in, which finds the peak rate. With `--rate` the loop is open: every connection follows
//! a fixed schedule, and latency runs from the *scheduled* send time, so a server that stalls is
//! charged for every request it held back (no coordinated omission, as in wrk2).
//!
//! `--requests` turns the run into a fixed amount of work (`bench/delivery.sh` publishes an exact
//! number of events that way), and `--send-time-header` stamps each request with its wall-clock
//! send time, so a receiver downstream of the server can time the whole path.
//!
//! `--topics N` spreads the requests over N URLs: `{topic}` in `--url` becomes `0` to `N - 1`,
//! taken in turn by every request of every connection (`bench/topics.sh`).
//!
//! `--url` given several times spreads the connections over several servers with the same
//! path, connection `i` going to the `i`-th URL modulo their number (the replicas of a cluster,
//! `bench/cluster.sh`); the report then counts the 2xx answers of each URL.
//!
//! It runs on the same cores as the server it measures, so the hot loop avoids allocating where
//! that is easy: the body and headers are built once and shared by reference count.
//! It deliberately speaks only plain HTTP/1.1: no TLS, no HTTP/2, no redirects.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// HTTP/1.1 load generator: keep-alive connections, one request in flight on each.
#[derive(Debug, Parser)]
#[command(name = "trellis-loadgen", version)]
struct Args {
    /// Target URL, e.g. `http://127.0.0.1:8080/v1/topics/t/events`. Only `http://` is supported.
    /// Repeat it to spread the connections over several servers (the same path on each).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Number of keep-alive connections, one worker task each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time in seconds, after the warm-up.
    #[arg(long = "duration", value_name = "SECS", default_value_t = 10.0)]
    duration_secs: f64,
    /// Warm-up time in seconds: requests are sent but not counted.
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 2.0)]
    warmup_secs: f64,
    /// Total requests per second, spread evenly over the connections (open loop). Without it,
    /// each connection sends as fast as answers come back (closed loop).
    #[arg(long, value_name = "REQ_PER_SEC")]
    rate: Option<f64>,
    /// Request body size in bytes: that many `x`s.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    body_size: usize,
    /// Send this file's contents as every request's body instead of `--body-size` bytes, e.g. a
    /// CloudEvents batch.
    #[arg(long, value_name = "PATH", conflicts_with = "body_size")]
    body_file: Option<PathBuf>,
    /// Send at most this many requests in all, warm-up included, then end the run early once
    /// the last answer is in. `duration_s` and `rate` then cover the measured time actually used;
    /// `--duration` still bounds the run.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Request method.
    #[arg(long, default_value = "POST")]
    method: Method,
    /// Extra request header as `NAME:VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// CloudEvents binary mode: give every request a unique `ce-id` header,
    /// `<run>-<connection>-<seq>`, where `<run>` is the start time in nanoseconds: Trellis drops
    /// an event whose (source, id) it already stored within its deduplication window, so ids
    /// must not repeat across the runs of one benchmark either.
    /// The other `ce-*` headers come from `--header`.
    #[arg(long)]
    ce_binary: bool,
    /// Put each request's wall-clock send time, in nanoseconds since the Unix epoch, in this
    /// header, e.g. `ce-sentns` (a CloudEvents extension attribute in binary mode), so that a
    /// receiver on the same machine can time the way from here to it.
    #[arg(long, value_name = "NAME")]
    send_time_header: Option<HeaderName>,
    /// Print one JSON object on stdout; the human line then goes to stderr.
    #[arg(long)]
    json: bool,
    /// Replace `{topic}` in `--url` with 0 to N-1 in turn, one per request over all
    /// connections, e.g. `--url 'http://127.0.0.1:8080/v1/topics/t-{topic}/events' --topics 100`.
    #[arg(long, value_name = "N")]
    topics: Option<u64>,
    /// Runtime worker threads; one per core by default.
    #[arg(long)]
    threads: Option<usize>,
}

/// How early an open-loop worker may wake before a request is due; see `Worker::drive`.
// tokio rounds a deadline up to its next millisecond tick, and the driver's park timeout is
// rounded up again, so a timer fires up to about 2 ms late. Waking 2 ms early means a request
// almost never leaves late because of the timer itself; only a busy machine makes it late.
const TIMER_SLACK: Duration = Duration::from_millis(2);

const CE_ID: HeaderName = HeaderName::from_static("ce-id");

/// What `--topics` replaces in `--url`.
const TOPIC_PLACEHOLDER: &str = "{topic}";

/// Upper bound for `--duration` and `--warmup`: one week.
const MAX_PHASE_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// Latencies are recorded in microseconds, up to one minute, to three significant digits.
const LATENCY_MAX_US: u64 = 60_000_000;

/// One server of `--url`: where its connections go, and the headers of its requests.
struct Server {
    /// `host:port`, as `TcpStream::connect` takes it.
    connect_addr: String,
    /// `--header`s and this server's `Host`.
    headers: HeaderMap,
}

/// Everything a worker needs that does not change between requests.
struct Target {
    /// One per `--url`; connection `i` uses server `i % servers.len()`.
    servers: Vec<Server>,
    method: Method,
    /// The origin-form request targets (`/v1/topics/t/events`), the same on every server: one,
    /// or one per topic with `--topics`.
    paths: Vec<Uri>,
    /// Which of `paths` the next request takes, over all connections.
    next_path: AtomicU64,
    body: Bytes,
    ce_binary: bool,
    /// The `<run>` part of every `ce-id`.
    run_id: u64,
    send_time_header: Option<HeaderName>,
}

/// The validated run: how long, how hard, and where the measured window lies.
#[derive(Clone, Copy)]
struct Plan {
    n_connections: usize,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
    max_requests: Option<u64>,
}

/// Instants shared by all workers. Only answers that arrive in `measure_start..=end` count.
#[derive(Clone, Copy)]
struct Phases {
    measure_start: Instant,
    end: Instant,
}

/// An open-loop schedule: request `seq` of a connection is due at
/// `start + offset + seq * interval`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    offset_ns: f64,
    interval_ns: f64,
}

/// What one worker saw in the measured window; workers merge into one at the end.
struct Stats {
    n_ok: u64,
    n_non_2xx: u64,
    n_errors: u64,
    n_reconnects: u64,
    /// 2xx answers per `--url`, in their order.
    n_ok_by_server: Vec<u64>,
    /// Every answer, 2xx or not; transport errors have no latency.
    latency_us: Histogram<u64>,
    /// Open loop only: how late each request left against its schedule. This is the load
    /// generator's own delay (timer granularity, scheduling), and it is part of `latency_us`.
    send_lag_us: Histogram<u64>,
    first_error: Option<String>,
    first_non_2xx: Option<StatusCode>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (target, plan) = validate(&args)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n_threads) = args.threads {
        builder.worker_threads(n_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (stats, measured) = runtime.block_on(run(Arc::new(target), plan))?;
    report(&stats, &plan, measured, args.json);
    Ok(())
}

fn validate(args: &Args) -> anyhow::Result<(Target, Plan)> {
    let example = "http://127.0.0.1:8080/v1/topics/t/events";
    let mut headers = HeaderMap::new();
    for raw in &args.headers {
        let (name, value) = parse_header(raw)?;
        if args.ce_binary && name == CE_ID {
            bail!("--header `{raw}` conflicts with --ce-binary, which sets ce-id per request");
        }
        if args.send_time_header.as_ref() == Some(&name) {
            bail!("--header `{raw}` conflicts with --send-time-header, which sets it per request");
        }
        headers.append(name, value);
    }
    let mut servers = Vec::with_capacity(args.urls.len());
    let mut paths = Vec::new();
    for raw_url in &args.urls {
        let (server, server_paths) = parse_url(args, raw_url, &headers)?;
        if servers.is_empty() {
            paths = server_paths;
        } else if server_paths != paths {
            bail!(
                "every --url must have the same path, e.g. `{example}` on each server; got `{}` and `{raw_url}`",
                args.urls[0]
            );
        }
        servers.push(server);
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1; got 0");
    }
    // A week bounds both, so that `start + warmup + duration` cannot overflow an `Instant`.
    if !(args.duration_secs > 0.0 && args.duration_secs <= MAX_PHASE_SECS) {
        bail!(
            "--duration must be a positive number of seconds up to a week, e.g. 10; got {}",
            args.duration_secs
        );
    }
    if !(args.warmup_secs >= 0.0 && args.warmup_secs <= MAX_PHASE_SECS) {
        bail!(
            "--warmup must be zero or more seconds up to a week, e.g. 2; got {}",
            args.warmup_secs
        );
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        bail!("--rate must be a positive number of requests per second, e.g. 20000; got {rate}");
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1, e.g. 100000; got 0");
    }
    let body = match &args.body_file {
        Some(path) => Bytes::from(
            std::fs::read(path)
                .with_context(|| format!("reading --body-file {}", path.display()))?,
        ),
        None => Bytes::from(vec![b'x'; args.body_size]),
    };

    let target = Target {
        servers,
        method: args.method.clone(),
        paths,
        next_path: AtomicU64::new(0),
        body,
        ce_binary: args.ce_binary,
        run_id: unix_now_ns(),
        send_time_header: args.send_time_header.clone(),
    };
    let plan = Plan {
        n_connections: args.connections,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        duration: Duration::from_secs_f64(args.duration_secs),
        rate: args.rate,
        max_requests: args.requests,
    };
    Ok((target, plan))
}

/// One `--url`: its server (with `headers` and its `Host`) and its paths, one per topic.
fn parse_url(
    args: &Args,
    raw_url: &str,
    headers: &HeaderMap,
) -> anyhow::Result<(Server, Vec<Uri>)> {
    let example = "http://127.0.0.1:8080/v1/topics/t/events";
    let has_placeholder = raw_url.contains(TOPIC_PLACEHOLDER);
    match args.topics {
        Some(0) => bail!("--topics must be at least 1; got 0"),
        Some(_) if !has_placeholder => {
            bail!(
                "--topics needs `{TOPIC_PLACEHOLDER}` in --url, e.g. `http://127.0.0.1:8080/v1/topics/t-{TOPIC_PLACEHOLDER}/events`"
            )
        }
        None if has_placeholder => bail!("`{TOPIC_PLACEHOLDER}` in --url needs --topics"),
        _ => {}
    }
    let url_of = |topic: u64| raw_url.replace(TOPIC_PLACEHOLDER, &topic.to_string());
    let url: Uri = url_of(0)
        .parse()
        .with_context(|| format!("--url must be a URL, e.g. `{example}`; got `{raw_url}`"))?;
    if url.scheme_str() != Some("http") {
        bail!("--url must start with http://, e.g. `{example}`; got `{raw_url}`");
    }
    let Some(authority) = url.authority() else {
        bail!("--url must name a host, e.g. `{example}`; got `{raw_url}`");
    };
    let connect_addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let mut paths = Vec::new();
    for topic in 0..args.topics.unwrap_or(1) {
        let url: Uri = url_of(topic)
            .parse()
            .with_context(|| format!("--url has an invalid path: `{raw_url}`"))?;
        let path: Uri = url
            .path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str())
            .parse()
            .with_context(|| format!("--url has an invalid path: `{raw_url}`"))?;
        paths.push(path);
    }
    let mut headers = headers.clone();
    let host = HeaderValue::from_str(authority.as_str())
        .with_context(|| format!("--url host is not a valid Host header: `{raw_url}`"))?;
    headers.insert(HOST, host);
    Ok((
        Server {
            connect_addr,
            headers,
        },
        paths,
    ))
}

fn parse_header(raw: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let Some((name, value)) = raw.split_once(':') else {
        bail!("--header must be NAME:VALUE, e.g. `ce-type: dev.trellis.bench`; got `{raw}`");
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("--header `{raw}` has an invalid name"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("--header `{raw}` has an invalid value"))?;
    Ok((name, value))
}

/// Opens every connection, then runs the workers through warm-up and the measured window.
/// Returns what they saw and how much of the measured window the run used: all of it, unless
/// `--requests` ran out first.
async fn run(target: Arc<Target>, plan: Plan) -> anyhow::Result<(Stats, Duration)> {
    // Connect first, so the clock starts with every connection open and the warm-up is all load.
    let mut conns = Vec::with_capacity(plan.n_connections);
    for conn_idx in 0..plan.n_connections {
        conns.push(connect(&target.server(conn_idx).connect_addr).await?);
    }

    let empty = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .context("creating the latency histogram")?;
    let start = Instant::now();
    let phases = Phases {
        measure_start: start + plan.warmup,
        end: start + plan.warmup + plan.duration,
    };
    let budget = plan.max_requests.map(|n| Arc::new(AtomicU64::new(n)));
    let mut workers = Vec::with_capacity(plan.n_connections);
    for (conn_idx, conn) in conns.into_iter().enumerate() {
        // Connections take turns within one interval, so the total rate is even, not bursty.
        let schedule = plan.rate.map(|rate| {
            let interval_ns = 1e9 * plan.n_connections as f64 / rate;
            Schedule {
                start,
                offset_ns: interval_ns * conn_idx as f64 / plan.n_connections as f64,
                interval_ns,
            }
        });
        let worker = Worker {
            conn_idx,
            target: Arc::clone(&target),
            phases,
            schedule,
            stats: Stats::new(&empty, target.servers.len()),
            ce_id: String::with_capacity(32),
            seq: 0,
            budget: budget.clone(),
        };
        workers.push(tokio::spawn(worker.run(conn)));
    }

    let mut total = Stats::new(&empty, target.servers.len());
    for worker in workers {
        let stats = worker.await.context("a worker task panicked")?;
        total.merge(&stats)?;
    }
    // Workers stop at `phases.end` at the latest, or after their last answer once the budget
    // is spent, so this is when the last of them stopped, bounded by the window.
    let measured = Instant::now()
        .min(phases.end)
        .saturating_duration_since(phases.measure_start);
    Ok((total, measured))
}

/// One worker: a connection, its schedule and its share of the results.
struct Worker {
    conn_idx: usize,
    target: Arc<Target>,
    phases: Phases,
    schedule: Option<Schedule>,
    stats: Stats,
    /// Reused buffer for the `ce-id` value.
    ce_id: String,
    /// Requests sent so far on this worker, across reconnects.
    seq: u64,
    /// With `--requests`: how many requests all workers together may still send.
    budget: Option<Arc<AtomicU64>>,
}

/// Why `Worker::drive` returned.
enum Closed {
    /// The run is over.
    Ended,
    /// The connection is gone; the worker opens a new one.
    Lost,
}

impl Worker {
    async fn run(mut self, first: Conn) -> Stats {
        let stop = tokio::time::sleep_until(self.phases.end);
        tokio::pin!(stop);
        let mut conn = first;
        loop {
            match self.drive(conn, stop.as_mut()).await {
                Closed::Ended => break,
                Closed::Lost => match self.reconnect(stop.as_mut()).await {
                    Some(new_conn) => conn = new_conn,
                    None => break,
                },
            }
        }
        self.stats
    }

    /// Sends requests on one connection, one at a time, until the run ends or the connection is
    /// lost. The connection's I/O future is polled here rather than spawned, so an answer wakes
    /// one task instead of two; that is most of the per-request CPU a client spends.
    async fn drive(&mut self, conn: Conn, mut stop: Pin<&mut Sleep>) -> Closed {
        let Conn {
            mut sender,
            connection,
        } = conn;
        tokio::pin!(connection);
        let mut is_closed = false;
        let mut connection_error = None;
        loop {
            if is_closed {
                // The server closed it after a complete answer: not an error, just reconnect.
                return Closed::Lost;
            }
            let due = match self.schedule {
                Some(schedule) => {
                    let due = match schedule.due(self.seq) {
                        Some(due) if due < self.phases.end => due,
                        _ => return Closed::Ended,
                    };
                    // tokio's timer has millisecond granularity, so sleeping until `due` would
                    // send up to ~2 ms late and charge that to the server. Waking up to
                    // `TIMER_SLACK` early instead, and counting from whichever is earlier, `due`
                    // or the actual send, keeps the offered rate exact and the latency honest:
                    // a request never leaves more than `TIMER_SLACK` early, so over any second
                    // the rate is as asked. Behind schedule, it sends at once and still counts
                    // from `due`.
                    if let Some(wake) = due.checked_sub(TIMER_SLACK)
                        && wake > Instant::now()
                    {
                        tokio::time::sleep_until(wake).await;
                    }
                    Some(due)
                }
                None => None,
            };
            if let Some(budget) = &self.budget
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
            {
                return Closed::Ended;
            }
            let request = build_request(&self.target, self.conn_idx, self.seq, &mut self.ce_id);
            self.seq += 1;

            let sent = Instant::now();
            // Closed loop: a request is due when it is sent. Open loop: a request sent early is
            // timed from when it left, one sent late from when it should have left.
            let timed_from = due.map_or(sent, |due| due.min(sent));
            let exchange = send(&mut sender, request);
            tokio::pin!(exchange);
            let res = loop {
                tokio::select! {
                    biased;
                    // First, so that the answer it reads completes `exchange` in the same poll.
                    res = &mut connection, if !is_closed => {
                        is_closed = true;
                        connection_error = res.err();
                    }
                    res = &mut exchange => break res,
                    // An answer after the end would not count anyway; drop the request.
                    _ = &mut stop => return Closed::Ended,
                }
            };
            let done = Instant::now();
            let in_window = self.phases.measure_start <= done && done <= self.phases.end;

            match res {
                Ok(status) => {
                    if in_window {
                        let send_lag = due.map(|due| sent.saturating_duration_since(due));
                        let server = self.conn_idx % self.target.servers.len();
                        self.stats
                            .record(server, status, done - timed_from, send_lag);
                    }
                }
                Err(error) => {
                    if in_window {
                        // The connection's own error names the cause ("connection reset");
                        // the request's only says that the connection went away.
                        let error = match connection_error {
                            Some(cause) => anyhow::Error::new(cause).context("connection failed"),
                            None => error,
                        };
                        self.stats.record_error(&error);
                    }
                    return Closed::Lost;
                }
            }
        }
    }

    /// Opens a new connection, pausing between failed attempts so a dead server does not turn
    /// this loop into a busy spin on the cores the server needs. `None` when the run ends first.
    async fn reconnect(&mut self, mut stop: Pin<&mut Sleep>) -> Option<Conn> {
        loop {
            let res = tokio::select! {
                biased;
                res = connect(&self.target.server(self.conn_idx).connect_addr) => res,
                _ = &mut stop => return None,
            };
            match res {
                Ok(conn) => {
                    self.stats.n_reconnects += 1;
                    return Some(conn);
                }
                Err(error) => {
                    if self.phases.measure_start <= Instant::now() {
                        self.stats.record_error(&error);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        _ = &mut stop => return None,
                    }
                }
            }
        }
    }
}

/// One HTTP/1 connection: the handle requests go through, and the future that does its I/O.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

async fn connect(addr: &str) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // One small request at a time per connection: without this, Nagle holds requests back.
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1 handshake with {addr}"))?;
    Ok(Conn { sender, connection })
}

/// Builds one request from the target. Only `ce-id` and the send time are allocated per request;
/// the method, path, headers and body are shared by reference count.
fn build_request(
    target: &Target,
    conn_idx: usize,
    seq: u64,
    ce_id: &mut String,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(target.body.clone()));
    *request.method_mut() = target.method.clone();
    let path_idx = target.next_path.fetch_add(1, Ordering::Relaxed) % target.paths.len() as u64;
    *request.uri_mut() = target.paths[path_idx as usize].clone();
    *request.headers_mut() = target.server(conn_idx).headers.clone();
    if target.ce_binary {
        ce_id.clear();
        // Writing to a `String` cannot fail, and digits and `-` always make a valid header value.
        let _ = write!(ce_id, "{}-{conn_idx}-{seq}", target.run_id);
        if let Ok(value) = HeaderValue::from_str(ce_id) {
            request.headers_mut().insert(CE_ID, value);
        }
    }
    if let Some(name) = &target.send_time_header {
        // Stamped last, just before the caller sends, so the time is as close to the send as
        // this code can get.
        request
            .headers_mut()
            .insert(name.clone(), HeaderValue::from(unix_now_ns()));
    }
    request
}

fn unix_now_ns() -> u64 {
    // A clock before 1970 reads as 0, and one past 2554 saturates: neither happens on a bench box.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// Sends one request and reads the answer to the end, returning its status.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<StatusCode> {
    sender.ready().await.context("connection closed")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.context("reading the response body")?;
    }
    Ok(status)
}

impl Target {
    /// The server connection `conn_idx` talks to.
    fn server(&self, conn_idx: usize) -> &Server {
        &self.servers[conn_idx % self.servers.len()]
    }
}

impl Schedule {
    /// `None` when the time is past what `Instant` can hold, which is also after the run.
    fn due(&self, seq: u64) -> Option<Instant> {
        // The float-to-int cast saturates, so a huge interval cannot wrap around.
        let after_start_ns = (self.offset_ns + seq as f64 * self.interval_ns) as u64;
        self.start.checked_add(Duration::from_nanos(after_start_ns))
    }
}

impl Stats {
    fn new(empty: &Histogram<u64>, n_servers: usize) -> Stats {
        Stats {
            n_ok: 0,
            n_non_2xx: 0,
            n_errors: 0,
            n_reconnects: 0,
            n_ok_by_server: vec![0; n_servers],
            latency_us: empty.clone(),
            send_lag_us: empty.clone(),
            first_error: None,
            first_non_2xx: None,
        }
    }

    fn record(
        &mut self,
        server: usize,
        status: StatusCode,
        latency: Duration,
        send_lag: Option<Duration>,
    ) {
        if status.is_success() {
            self.n_ok += 1;
            if let Some(n_ok) = self.n_ok_by_server.get_mut(server) {
                *n_ok += 1;
            }
        } else {
            self.n_non_2xx += 1;
            self.first_non_2xx.get_or_insert(status);
        }
        self.latency_us.saturating_record(micros(latency));
        if let Some(send_lag) = send_lag {
            self.send_lag_us.saturating_record(micros(send_lag));
        }
    }

    fn record_error(&mut self, error: &anyhow::Error) {
        self.n_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }

    fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.n_ok += other.n_ok;
        self.n_non_2xx += other.n_non_2xx;
        self.n_errors += other.n_errors;
        self.n_reconnects += other.n_reconnects;
        for (n_ok, other_n_ok) in self.n_ok_by_server.iter_mut().zip(&other.n_ok_by_server) {
            *n_ok += other_n_ok;
        }
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")?;
        self.send_lag_us
            .add(&other.send_lag_us)
            .context("merging send-lag histograms")?;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        if self.first_non_2xx.is_none() {
            self.first_non_2xx = other.first_non_2xx;
        }
        Ok(())
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Prints the human line (stdout, or stderr with `--json`) and, with `--json`, one JSON object.
/// `rate` counts 2xx answers only: a fast stream of errors is not throughput.
fn report(stats: &Stats, plan: &Plan, measured: Duration, json: bool) {
    let duration_s = measured.as_secs_f64();
    let n_requests = stats.n_ok + stats.n_non_2xx + stats.n_errors;
    // Zero only if `--requests` ran out during the warm-up; there is then no rate to report.
    let rate = if duration_s > 0.0 {
        stats.n_ok as f64 / duration_s
    } else {
        0.0
    };
    let ms = |quantile: f64| stats.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    let (p50_ms, p90_ms, p99_ms) = (ms(0.5), ms(0.9), ms(0.99));
    let max_ms = stats.latency_us.max() as f64 / 1000.0;
    let send_lag_p99_ms = plan
        .rate
        .map(|_| stats.send_lag_us.value_at_quantile(0.99) as f64 / 1000.0);

    let mut line = format!(
        "{n_requests} requests in {duration_s:.1} s, {rate:.0} ok/s \
         (ok {}, non-2xx {}, errors {}); latency p50 {p50_ms:.3} ms, p90 {p90_ms:.3} ms, \
         p99 {p99_ms:.3} ms, max {max_ms:.3} ms",
        stats.n_ok, stats.n_non_2xx, stats.n_errors,
    );
    if let (Some(target_rate), Some(lag)) = (plan.rate, send_lag_p99_ms) {
        let _ = write!(
            line,
            "; open loop at {target_rate:.0} req/s, send lag p99 {lag:.3} ms"
        );
    }
    if stats.n_reconnects > 0 {
        let _ = write!(line, "; {} reconnects", stats.n_reconnects);
    }
    if let Some(status) = stats.first_non_2xx {
        let _ = write!(line, "; first non-2xx: {status}");
    }
    if let Some(error) = &stats.first_error {
        let _ = write!(line, "; first error: {error}");
    }

    if json {
        eprintln!("{line}");
        let object = serde_json::json!({
            "requests": n_requests,
            "ok": stats.n_ok,
            "errors": stats.n_errors,
            "non_2xx": stats.n_non_2xx,
            "duration_s": duration_s,
            "rate": (rate * 10.0).round() / 10.0,
            "p50_ms": p50_ms,
            "p90_ms": p90_ms,
            "p99_ms": p99_ms,
            "max_ms": max_ms,
            "reconnects": stats.n_reconnects,
            "send_lag_p99_ms": send_lag_p99_ms,
            "ok_by_url": stats.n_ok_by_server,
        });
        println!("{object}");
    } else {
        println!("{line}");
    }
}
