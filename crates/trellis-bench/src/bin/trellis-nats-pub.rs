//! `trellis-nats-pub`: publishes events to NATS JetStream the way its async publishing is meant
//! to be used, so `bench/producer.sh` and `bench/publish.sh` can set Trellis beside it on the
//! same machine.
//!
//! Each publish returns an ack future at once; up to `--window` acks are outstanding, and the
//! next publish waits only for the oldest ones. The stream is file-backed (as Trellis' log is)
//! and is created fresh for the run. Latency runs from a publish call to its ack.
//!
//! With `--duration` the run is timed like `trellis-loadgen`'s: it publishes for `--warmup`
//! plus `--duration` seconds (or until `--count`), and the rate and latency count only the acks
//! of publishes sent after the warm-up.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_nats::{HeaderMap, header};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;

/// NATS JetStream async publisher: a fixed number of events, a window of outstanding acks.
#[derive(Debug, Parser)]
#[command(name = "trellis-nats-pub", version)]
struct Args {
    /// Server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Stream to (re)create, file-backed, holding `<stream>.events`.
    #[arg(long, default_value = "TRELLIS_BENCH")]
    stream: String,
    /// Events to publish (at most, with `--duration`).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Measured seconds: publish for `--warmup` plus this long, then stop.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds published before the measured window, with `--duration`.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Most acks outstanding at once.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Send the headers Trellis' JetStream backend sends: a unique `Nats-Msg-Id` (so the
    /// server's duplicate window tracks every message) and `Nats-Expected-Stream`.
    #[arg(long)]
    trellis_headers: bool,
    /// Delete the stream after the run, so the next run starts on a quiet server.
    #[arg(long)]
    delete_after: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.window == 0 {
        bail!("--count and --window must be at least 1");
    }
    if args.duration.is_some_and(|duration| duration <= 0.0) || args.warmup < 0.0 {
        bail!("--duration must be positive and --warmup not negative");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.url)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    // The client's own cap on acks in flight (5,000 by default) must not be below the window:
    // each unawaited ack future holds a permit, so publishing would wait for acks this loop only
    // collects once the window is full.
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(args.window)
        .build(client);
    // A fresh stream, so the run writes to an empty one as Trellis does to a new topic.
    let _ = js.delete_stream(&args.stream).await;
    let subject = format!("{}.events", args.stream);
    js.create_stream(stream::Config {
        name: args.stream.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("cannot create the stream")?;

    let payload = Bytes::from(vec![b'x'; args.size]);
    // Bounded, not auto-resizing: `saturating_record` would clamp at the initial bound otherwise.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let mut outstanding = FuturesUnordered::new();
    let started = Instant::now();
    let measured_from = started + Duration::from_secs_f64(args.warmup);
    let stop_at = args
        .duration
        .map(|duration| measured_from + Duration::from_secs_f64(duration));
    let mut measured = 0u64;
    let mut sent = 0u64;
    while sent < args.count && stop_at.is_none_or(|stop| Instant::now() < stop) {
        if outstanding.len() >= args.window {
            measured += settle(&mut outstanding, &mut latency).await?;
        }
        let at = Instant::now();
        let ack: PublishAckFuture = if args.trellis_headers {
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_EXPECTED_STREAM, args.stream.as_str());
            headers.insert(header::NATS_MESSAGE_ID, format!("{sent:032x}").as_str());
            js.publish_with_headers(subject.clone(), headers, payload.clone())
                .await
        } else {
            js.publish(subject.clone(), payload.clone()).await
        }
        .context("publish failed")?;
        sent += 1;
        let counted = at >= measured_from;
        outstanding.push(async move { (ack.await, at.elapsed(), counted) });
    }
    // The last acks arrive after the publishing stops: the window ends with the last one, as
    // the load generator's ends with its last answer.
    while !outstanding.is_empty() {
        measured += settle(&mut outstanding, &mut latency).await?;
    }
    let elapsed = measured_from.elapsed().as_secs_f64();
    let rate = measured as f64 / elapsed;
    if args.delete_after {
        js.delete_stream(&args.stream)
            .await
            .context("cannot delete the stream")?;
    }
    let ms = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "events": sent,
                "measured": measured,
                "duration_s": elapsed,
                "rate": rate,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
            })
        );
    }
    eprintln!(
        "{sent} events published, {measured} measured in {elapsed:.2} s: {rate:.0} events/s; ack \
         latency p50 {:.2} ms, p99 {:.2} ms",
        ms(0.5),
        ms(0.99)
    );
    Ok(())
}

/// The outcome of one publish: its ack, the time to it, and whether it falls in the measured
/// window.
type Acked = (
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    Duration,
    bool,
);

/// Waits for one outstanding ack and records its latency if measured; a refused publish ends the
/// run. Returns how many measured acks it settled (0 or 1).
async fn settle<F>(
    outstanding: &mut FuturesUnordered<F>,
    latency: &mut Histogram<u64>,
) -> anyhow::Result<u64>
where
    F: std::future::Future<Output = Acked>,
{
    match outstanding.next().await {
        Some((ack, elapsed, counted)) => {
            ack.context("JetStream refused a publish")?;
            if counted {
                latency.saturating_record(elapsed.as_micros() as u64);
                Ok(1)
            } else {
                Ok(0)
            }
        }
        None => Ok(0),
    }
}
