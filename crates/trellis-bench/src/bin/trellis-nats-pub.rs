//! `trellis-nats-pub`: publishes events to NATS JetStream the way its async publishing is meant
//! to be used, so `bench/producer.sh` can set Trellis' streaming publish beside it on the same
//! machine.
//!
//! Each publish returns an ack future at once; up to `--window` acks are outstanding, and the
//! next publish waits only for the oldest ones. The stream is file-backed (as Trellis' log is)
//! and is created fresh for the run. Latency runs from a publish call to its ack.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
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
    /// Events to publish.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Most acks outstanding at once.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.window == 0 {
        bail!("--count and --window must be at least 1");
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
    for _ in 0..args.count {
        if outstanding.len() >= args.window {
            settle(&mut outstanding, &mut latency).await?;
        }
        let sent = Instant::now();
        let ack: PublishAckFuture = js
            .publish(subject.clone(), payload.clone())
            .await
            .context("publish failed")?;
        outstanding.push(async move { (ack.await, sent.elapsed()) });
    }
    while !outstanding.is_empty() {
        settle(&mut outstanding, &mut latency).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = args.count as f64 / elapsed;
    let ms = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "events": args.count,
                "duration_s": elapsed,
                "rate": rate,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
            })
        );
    }
    eprintln!(
        "{} events in {elapsed:.2} s: {rate:.0} events/s; ack latency p50 {:.2} ms, p99 {:.2} ms",
        args.count,
        ms(0.5),
        ms(0.99)
    );
    Ok(())
}

/// Waits for one outstanding ack and records its latency; a refused publish ends the run.
async fn settle<F>(
    outstanding: &mut FuturesUnordered<F>,
    latency: &mut Histogram<u64>,
) -> anyhow::Result<()>
where
    F: std::future::Future<
            Output = (
                Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
                Duration,
            ),
        >,
{
    if let Some((ack, elapsed)) = outstanding.next().await {
        ack.context("JetStream refused a publish")?;
        latency.saturating_record(elapsed.as_micros() as u64);
    }
    Ok(())
}
