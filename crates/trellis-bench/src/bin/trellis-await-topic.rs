//! `trellis-await-topic`: times how long a topic takes to fill, optionally from a request that
//! sets the filling off (creating a connector).
//!
//! `bench/connect.sh` times the file source connector with it: the clock starts as the
//! `--post` request (`POST /v1/connectors`) leaves, and stops at the first poll of
//! `GET /v1/topics/{topic}` whose `next_offset` reaches `--until`. Polls go every
//! `--interval-ms` over one keep-alive connection, so the poller costs the runtime about one
//! small request per interval (a `curl` process per poll would cost the shared cores far more);
//! the time it reports is late by up to one interval, the resolution it prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

/// Polls a topic until it holds `--until` events and reports how long that took.
#[derive(Debug, Parser)]
#[command(name = "trellis-await-topic", version)]
struct Args {
    /// The runtime's base URL, e.g. `http://127.0.0.1:8080`. Only `http://`.
    #[arg(long)]
    url: String,
    /// The topic to watch.
    #[arg(long)]
    topic: String,
    /// Stop when the topic's `next_offset` is at least this.
    #[arg(long)]
    until: u64,
    /// Poll interval in milliseconds: the resolution of the time reported.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// A path to POST `--post-body` to (as `application/json`) when the clock starts, e.g.
    /// `/v1/connectors`; it must answer 2xx.
    #[arg(long, requires = "post_body")]
    post: Option<String>,
    /// The file holding the body of `--post`.
    #[arg(long, requires = "post")]
    post_body: Option<PathBuf>,
    /// Print one JSON object on stdout; the human line then goes to stderr.
    #[arg(long)]
    json: bool,
}

/// What the polls saw.
struct Seen {
    /// From the start to the poll that saw `--until`.
    elapsed: Duration,
    /// From the start to the first poll that saw any event, and what it saw.
    first: Option<(Duration, u64)>,
    next_offset: u64,
    n_polls: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.interval_ms == 0 {
        bail!("--interval-ms must be at least 1, e.g. 50; got 0");
    }
    if !(args.timeout > 0.0 && args.timeout <= 7.0 * 24.0 * 3600.0) {
        bail!(
            "--timeout must be a positive number of seconds up to a week; got {}",
            args.timeout
        );
    }
    let base: Uri = args.url.parse().with_context(|| {
        format!(
            "--url must be a URL, e.g. `http://127.0.0.1:8080`; got `{}`",
            args.url
        )
    })?;
    if base.scheme_str() != Some("http") {
        bail!("--url must start with http://; got `{}`", args.url);
    }
    let Some(authority) = base.authority() else {
        bail!("--url must name a host; got `{}`", args.url);
    };
    let connect_addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let host = HeaderValue::from_str(authority.as_str())
        .with_context(|| format!("--url host is not a valid Host header: `{}`", args.url))?;
    let post = match (&args.post, &args.post_body) {
        (Some(path), Some(body_path)) => {
            let body = std::fs::read(body_path)
                .with_context(|| format!("reading --post-body {}", body_path.display()))?;
            let path: Uri = path.parse().with_context(|| {
                format!("--post must be a path, e.g. /v1/connectors; got `{path}`")
            })?;
            Some((path, Bytes::from(body)))
        }
        _ => None,
    };
    let topic_path: Uri = format!("/v1/topics/{}", args.topic)
        .parse()
        .with_context(|| format!("--topic `{}` does not make a valid path", args.topic))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let seen = runtime.block_on(async {
        let mut sender = connect(&connect_addr).await?;
        let start = Instant::now();
        if let Some((path, body)) = post {
            let (status, answer) = request(&mut sender, &host, Method::POST, &path, body).await?;
            if !status.is_success() {
                bail!(
                    "POST {path} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
        }
        watch(&mut sender, &host, &topic_path, &args, start).await
    })?;

    let interval_s = args.interval_ms as f64 / 1000.0;
    let elapsed_s = seen.elapsed.as_secs_f64();
    let rate = seen.next_offset as f64 / elapsed_s;
    // After the first event: the rate once running, without the start-up.
    let (first_s, first_offset) = seen
        .first
        .map_or((f64::NAN, 0), |(at, offset)| (at.as_secs_f64(), offset));
    let running_rate = (seen.next_offset - first_offset) as f64 / (elapsed_s - first_s);
    let line = format!(
        "topic {} reached {} events in {elapsed_s:.3} s ({rate:.0} events/s; first events \
         after {first_s:.3} s, {running_rate:.0} events/s from there); {} polls every {} ms, \
         so up to {interval_s:.3} s late",
        args.topic, seen.next_offset, seen.n_polls, args.interval_ms
    );
    if args.json {
        eprintln!("{line}");
        let object = serde_json::json!({
            "topic": args.topic,
            "next_offset": seen.next_offset,
            "duration_s": elapsed_s,
            "rate": (rate * 10.0).round() / 10.0,
            "first_seen_s": first_s,
            "first_seen_offset": first_offset,
            "running_rate": (running_rate * 10.0).round() / 10.0,
            "polls": seen.n_polls,
            "resolution_s": interval_s,
        });
        println!("{object}");
    } else {
        println!("{line}");
    }
    Ok(())
}

/// Polls until the topic reaches `--until` or the timeout passes. A topic not created yet
/// (404) holds nothing.
async fn watch(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &HeaderValue,
    topic_path: &Uri,
    args: &Args,
    start: Instant,
) -> anyhow::Result<Seen> {
    let deadline = start + Duration::from_secs_f64(args.timeout);
    let mut ticks = tokio::time::interval(Duration::from_millis(args.interval_ms));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = None;
    let mut n_polls = 0;
    loop {
        ticks.tick().await;
        let (status, answer) = request(sender, host, Method::GET, topic_path, Bytes::new()).await?;
        n_polls += 1;
        let next_offset = match status {
            StatusCode::OK => next_offset(&answer)?,
            StatusCode::NOT_FOUND => 0,
            other => bail!(
                "GET {topic_path} answered {other}: {}",
                String::from_utf8_lossy(&answer)
            ),
        };
        let now = Instant::now();
        if next_offset > 0 && first.is_none() {
            first = Some((now - start, next_offset));
        }
        if next_offset >= args.until {
            return Ok(Seen {
                elapsed: now - start,
                first,
                next_offset,
                n_polls,
            });
        }
        if now >= deadline {
            bail!(
                "topic {} holds {next_offset} events after {} s, not {}",
                args.topic,
                args.timeout,
                args.until
            );
        }
    }
}

fn next_offset(answer: &[u8]) -> anyhow::Result<u64> {
    let topic: serde_json::Value =
        serde_json::from_slice(answer).context("the topic's answer is not JSON")?;
    topic
        .get("next_offset")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| {
            format!(
                "the topic's answer has no next_offset: {}",
                String::from_utf8_lossy(answer)
            )
        })
}

async fn connect(addr: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1 handshake with {addr}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn request(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &HeaderValue,
    method: Method,
    path: &Uri,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = path.clone();
    request.headers_mut().insert(HOST, host.clone());
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    sender.ready().await.context("connection closed")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("sending {path}"))?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, answer))
}
