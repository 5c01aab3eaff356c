//! `trellis-batch-publish`: publishes every line of a file as its own CloudEvent, in batches
//! (`application/cloudevents-batch+json`) over keep-alive HTTP/1.1 connections, and times it.
//!
//! It is the baseline of `bench/connect.sh`: what a user on the same machine gets by sending a
//! file's lines through the HTTP API, against which the file source connector is measured.
//! Each event carries what the connector's events carry (`id`, `source`, `type`, `time`,
//! `datacontenttype: text/plain; charset=utf-8`, the line as text data), with an id unique to
//! the run and the line (`<run>-<line>`), so deduplication stores every one.
//!
//! All batch bodies are built before the clock starts, so in the timed window the tool spends
//! only what sending and reading answers cost: the fastest a client can ask of the server. Each
//! of `--connections` tasks takes the next unsent batch, sends it, reads the whole answer, and
//! takes the next; the time runs from the first request to the last answer. The tool reports
//! its own CPU time in that window (from `/proc/self/stat`), since it shares the cores with the
//! server it measures.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Publishes a file's lines, one CloudEvent each, in batches over keep-alive connections.
#[derive(Debug, Parser)]
#[command(name = "trellis-batch-publish", version)]
struct Args {
    /// The topic's events URL, e.g. `http://127.0.0.1:8080/v1/topics/t/events`. Only `http://`.
    #[arg(long)]
    url: String,
    /// The file whose lines are published; a line is the bytes before each `\n`, and bytes
    /// after the last `\n` are not sent (as the file source waits for their newline).
    #[arg(long)]
    file: PathBuf,
    /// Events per batch request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Keep-alive connections, each with one batch in flight.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The events' CloudEvents `source`.
    #[arg(long, default_value = "/trellis/bench/batch-publish")]
    source: String,
    /// The events' CloudEvents `type`.
    #[arg(long = "type", default_value = "dev.trellis.bench.line")]
    ty: String,
    /// Print one JSON object on stdout; the human line then goes to stderr.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads; one per core by default.
    #[arg(long)]
    threads: Option<usize>,
}

/// Linux's `USER_HZ`, the unit of the CPU times in `/proc/<pid>/stat`: 100 on every
/// architecture Trellis is built for.
const USER_HZ: f64 = 100.0;

const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// What every worker shares: where to send, and the prepared bodies.
struct Target {
    connect_addr: String,
    path: Uri,
    host: HeaderValue,
    bodies: Vec<Bytes>,
    /// The index of the next body to send, over all workers.
    next: AtomicUsize,
}

/// What one worker saw.
#[derive(Default)]
struct Stats {
    n_ok_batches: u64,
    n_ok_events: u64,
    n_failed_batches: u64,
    n_duplicates: u64,
    first_failure: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.batch == 0 {
        bail!("--batch must be at least 1, e.g. 500; got 0");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1, e.g. 4; got 0");
    }
    let url: Uri = args.url.parse().with_context(|| {
        format!(
            "--url must be a URL, e.g. `http://127.0.0.1:8080/v1/topics/t/events`; got `{}`",
            args.url
        )
    })?;
    if url.scheme_str() != Some("http") {
        bail!("--url must start with http://; got `{}`", args.url);
    }
    let Some(authority) = url.authority() else {
        bail!("--url must name a host; got `{}`", args.url);
    };
    let connect_addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let host = HeaderValue::from_str(authority.as_str())
        .with_context(|| format!("--url host is not a valid Host header: `{}`", args.url))?;
    let path: Uri = url
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str())
        .parse()
        .with_context(|| format!("--url has an invalid path: `{}`", args.url))?;

    let content = std::fs::read(&args.file)
        .with_context(|| format!("reading --file {}", args.file.display()))?;
    let (bodies, n_lines) = build_bodies(&content, &args)?;
    drop(content);
    if n_lines == 0 {
        bail!("--file {} holds no complete line", args.file.display());
    }
    let target = Arc::new(Target {
        connect_addr,
        path,
        host,
        bodies,
        next: AtomicUsize::new(0),
    });

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n_threads) = args.threads {
        builder.worker_threads(n_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (stats, elapsed, cpu_s) = runtime.block_on(run(Arc::clone(&target), args.connections))?;
    report(&stats, &target, n_lines, elapsed, cpu_s, &args);
    if stats.n_failed_batches > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// One batch body per `--batch` lines: a JSON array of events whose data is the line, as text
/// when it is UTF-8 (as the file source marks it) and base64 otherwise.
fn build_bodies(content: &[u8], args: &Args) -> anyhow::Result<(Vec<Bytes>, usize)> {
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true);
    // Every event's attributes but its id and data, encoded once.
    let source = serde_json::to_string(&args.source).context("encoding --source")?;
    let ty = serde_json::to_string(&args.ty).context("encoding --type")?;
    let time = serde_json::to_string(&time).context("encoding the time")?;
    let attributes = format!(
        "\"specversion\":\"1.0\",\"source\":{source},\"type\":{ty},\"time\":{time},\
         \"datacontenttype\":\"text/plain; charset=utf-8\""
    );

    let mut lines = content.split(|&byte| byte == b'\n');
    // The segment after the last `\n` is not a complete line.
    let n_lines = content.iter().filter(|&&byte| byte == b'\n').count();
    let mut bodies = Vec::with_capacity(n_lines.div_ceil(args.batch));
    let mut line_idx = 0usize;
    while line_idx < n_lines {
        let in_batch = args.batch.min(n_lines - line_idx);
        let mut body = Vec::with_capacity(in_batch * 1200);
        body.push(b'[');
        for _ in 0..in_batch {
            let line = lines.next().unwrap_or_default();
            if body.len() > 1 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"id\":\"");
            body.extend_from_slice(format!("{run_id}-{line_idx}").as_bytes());
            body.extend_from_slice(b"\",");
            body.extend_from_slice(attributes.as_bytes());
            match std::str::from_utf8(line) {
                Ok(text) => {
                    body.extend_from_slice(b",\"data\":");
                    serde_json::to_writer(&mut body, text).context("encoding a line")?;
                }
                Err(_) => {
                    use base64::Engine as _;
                    body.extend_from_slice(b",\"data_base64\":\"");
                    body.extend_from_slice(
                        base64::engine::general_purpose::STANDARD
                            .encode(line)
                            .as_bytes(),
                    );
                    body.push(b'"');
                }
            }
            body.push(b'}');
            line_idx += 1;
        }
        body.push(b']');
        bodies.push(Bytes::from(body));
    }
    Ok((bodies, n_lines))
}

/// Opens every connection, then sends all bodies. Returns the merged stats, the time from the
/// first request to the last answer, and this process's CPU seconds over that window.
async fn run(target: Arc<Target>, n_connections: usize) -> anyhow::Result<(Stats, Duration, f64)> {
    let mut senders = Vec::with_capacity(n_connections);
    for _ in 0..n_connections {
        senders.push(connect(&target.connect_addr).await?);
    }
    let cpu_before = own_cpu_seconds();
    let start = Instant::now();
    let mut workers = Vec::with_capacity(n_connections);
    for sender in senders {
        workers.push(tokio::spawn(work(Arc::clone(&target), sender)));
    }
    let mut total = Stats::default();
    for worker in workers {
        let stats = worker.await.context("a worker task panicked")?;
        total.n_ok_batches += stats.n_ok_batches;
        total.n_ok_events += stats.n_ok_events;
        total.n_failed_batches += stats.n_failed_batches;
        total.n_duplicates += stats.n_duplicates;
        if total.first_failure.is_none() {
            total.first_failure = stats.first_failure;
        }
    }
    let elapsed = start.elapsed();
    let cpu_s = match (cpu_before, own_cpu_seconds()) {
        (Some(before), Some(after)) => after - before,
        _ => f64::NAN,
    };
    Ok((total, elapsed, cpu_s))
}

/// Sends the next unsent body until none is left. A failed batch is counted, not retried: the
/// run is then not a measurement, and the tool exits 1.
async fn work(target: Arc<Target>, mut sender: SendRequest<Full<Bytes>>) -> Stats {
    let mut stats = Stats::default();
    loop {
        let idx = target.next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = target.bodies.get(idx) else {
            break;
        };
        match send(&target, &mut sender, body.clone()).await {
            Ok((status, answer)) if status.is_success() => {
                stats.n_ok_batches += 1;
                stats.n_ok_events += count_events(body);
                stats.n_duplicates += count_duplicates(&answer);
            }
            Ok((status, answer)) => {
                stats.n_failed_batches += 1;
                stats.first_failure.get_or_insert_with(|| {
                    format!(
                        "{status}: {}",
                        String::from_utf8_lossy(answer.get(..300).unwrap_or(&answer))
                    )
                });
            }
            Err(error) => {
                stats.n_failed_batches += 1;
                stats
                    .first_failure
                    .get_or_insert_with(|| format!("{error:#}"));
                // The connection is gone: open another for the rest.
                match connect(&target.connect_addr).await {
                    Ok(new_sender) => sender = new_sender,
                    Err(_) => break,
                }
            }
        }
    }
    stats
}

/// Events in a body built by `build_bodies`: each starts with `{"id":`.
fn count_events(body: &[u8]) -> u64 {
    count(body, b"{\"id\":")
}

/// Events the server answered as duplicates (already stored).
fn count_duplicates(answer: &[u8]) -> u64 {
    count(answer, b"\"duplicate\":true")
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

async fn connect(addr: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1 handshake with {addr}"))?;
    // Batches are large and few, so the connection's own task costs nothing worth saving.
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one batch and reads the whole answer.
async fn send(
    target: &Target,
    sender: &mut SendRequest<Full<Bytes>>,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.path.clone();
    request.headers_mut().insert(HOST, target.host.clone());
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_CONTENT_TYPE));
    sender.ready().await.context("connection closed")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the batch")?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, answer))
}

/// This process's user plus system CPU time so far, from `/proc/self/stat`; `None` off Linux.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `)` that ends the command name, which may itself hold spaces: utime and
    // stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn report(
    stats: &Stats,
    target: &Target,
    n_lines: usize,
    elapsed: Duration,
    cpu_s: f64,
    args: &Args,
) {
    let duration_s = elapsed.as_secs_f64();
    let rate = if duration_s > 0.0 {
        stats.n_ok_events as f64 / duration_s
    } else {
        0.0
    };
    let body_bytes: usize = target.bodies.iter().map(Bytes::len).sum();
    let cpu_us_per_line = if stats.n_ok_events > 0 {
        cpu_s * 1e6 / stats.n_ok_events as f64
    } else {
        f64::NAN
    };
    let mut line = format!(
        "{} lines in {duration_s:.3} s, {rate:.0} lines/s ({} batches of up to {} over {} \
         connections, {:.1} MiB of bodies); {} duplicates; client CPU {cpu_s:.2} s, \
         {cpu_us_per_line:.2} us per line",
        stats.n_ok_events,
        stats.n_ok_batches,
        args.batch,
        args.connections,
        body_bytes as f64 / (1024.0 * 1024.0),
        stats.n_duplicates,
    );
    if stats.n_failed_batches > 0 {
        let _ = write!(
            line,
            "; {} batches FAILED, first: {}",
            stats.n_failed_batches,
            stats.first_failure.as_deref().unwrap_or("?")
        );
    }
    if args.json {
        eprintln!("{line}");
        let object = serde_json::json!({
            "lines": n_lines,
            "ok": stats.n_ok_events,
            "batches": stats.n_ok_batches,
            "failed_batches": stats.n_failed_batches,
            "duplicates": stats.n_duplicates,
            "duration_s": duration_s,
            "rate": (rate * 10.0).round() / 10.0,
            "body_bytes": body_bytes,
            "client_cpu_s": cpu_s,
            "client_cpu_us_per_line": cpu_us_per_line,
        });
        println!("{object}");
    } else {
        println!("{line}");
    }
}
