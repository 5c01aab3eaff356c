//! `trellis-produce`: publishes a fixed number of events through the Rust SDK's `Producer`
//! (gRPC streaming publish) and reports the rate, the latency from `send` to each record's
//! result, and this process's peak RSS, for `bench/producer.sh`.
//!
//! Every record must end `Ok`: the producer retries transient failures itself, so any error is
//! counted and makes the run exit 1.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use trellis_client::{ConnectionState, DeliveryFuture, Producer, ProducerConfig};
use trellis_cloudevents::{CloudEvent, Data};

const LATENCY_MAX_US: u64 = 600_000_000;

/// Publishes `--count` events of `--size` bytes through the SDK's producer.
#[derive(Debug, Parser)]
#[command(name = "trellis-produce", version)]
struct Args {
    /// gRPC endpoint `host:port`; repeatable.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Data size of each event in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Batches in flight on the stream.
    #[arg(long, default_value_t = 8)]
    max_in_flight: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 500)]
    batch_events: usize,
    /// Prefix of the event ids, so runs into one topic never collide.
    #[arg(long, default_value = "bench")]
    id_prefix: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The producer's own logs (reconnects, resends), on stderr when RUST_LOG asks for them.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args))
}

struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    duplicates: u64,
    failed: u64,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let producer = Producer::new(
        ProducerConfig::new(args.topic.clone())
            .endpoints(args.endpoints.clone())
            .max_in_flight(args.max_in_flight)
            .batch_max_events(args.batch_events),
    )
    .context("invalid producer settings")?;
    let mut transitions = producer.transitions();
    let watch_started = Instant::now();
    let timeline = tokio::spawn(async move {
        let mut timeline = Vec::new();
        while let Ok(state) = transitions.recv().await {
            timeline.push((watch_started.elapsed(), state));
        }
        timeline
    });

    // Results are awaited as they come, beside the sending loop, so each latency ends when its
    // record's answer arrives rather than when the sender gets round to it.
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<(Instant, DeliveryFuture)>();
    let collector = tokio::spawn(async move {
        let mut tally = Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            duplicates: 0,
            failed: 0,
        };
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                next = pending_rx.recv(), if open => match next {
                    Some((sent, result)) => in_flight.push(async move { (result.await, sent.elapsed()) }),
                    None => open = false,
                },
                Some((result, elapsed)) = in_flight.next(), if !in_flight.is_empty() => {
                    tally.latency_us.saturating_record(micros(elapsed));
                    match result {
                        Ok(stored) => {
                            tally.ok += 1;
                            tally.duplicates += u64::from(stored.duplicate);
                        }
                        Err(error) => {
                            if tally.failed == 0 {
                                eprintln!("a record failed: {error}");
                            }
                            tally.failed += 1;
                        }
                    }
                }
            }
        }
        tally
    });

    let data = Bytes::from(vec![b'x'; args.size]);
    let started = Instant::now();
    for n in 0..args.count {
        let event = CloudEvent {
            id: format!("{}-{n}", args.id_prefix),
            source: "/trellis/bench".to_owned(),
            specversion: "1.0".to_owned(),
            ty: "dev.trellis.bench.produce".to_owned(),
            datacontenttype: Some("application/octet-stream".to_owned()),
            dataschema: None,
            subject: None,
            time: None,
            extensions: Default::default(),
            data: Some(Data::Binary(data.clone())),
        };
        let sent = Instant::now();
        let result = producer.send(event).await.context("send failed")?;
        if pending_tx.send((sent, result)).is_err() {
            bail!("the result collector stopped early");
        }
    }
    drop(pending_tx);
    let tally = collector.await.context("the result collector panicked")?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(producer);
    let timeline = tokio::time::timeout(Duration::from_secs(5), timeline)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let n_transitions = timeline.len();
    let not_ready = time_not_ready(&timeline, watch_started.elapsed());
    let rate = tally.ok as f64 / elapsed;
    let ms = |quantile: f64| tally.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    let peak_rss_kib = peak_rss_kib().unwrap_or(0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "events": args.count,
                "ok": tally.ok,
                "duplicates": tally.duplicates,
                "failed": tally.failed,
                "duration_s": elapsed,
                "rate": rate,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "max_ms": tally.latency_us.max() as f64 / 1000.0,
                "peak_rss_kib": peak_rss_kib,
                "state_transitions": n_transitions,
                "not_ready_ms": not_ready.as_secs_f64() * 1000.0,
            })
        );
    }
    eprintln!(
        "{} ok ({} duplicates), {} failed in {elapsed:.2} s: {rate:.0} events/s; send->result p50 {:.2} ms, p99 {:.2} ms; peak RSS {} KiB; {n_transitions} state transitions, {:.0} ms not ready{}",
        tally.ok,
        tally.duplicates,
        tally.failed,
        ms(0.5),
        ms(0.99),
        peak_rss_kib,
        not_ready.as_secs_f64() * 1000.0,
        timeline
            .iter()
            .map(|(at, state)| format!(" {state:?}@{:.3}s", at.as_secs_f64()))
            .collect::<String>(),
    );
    if tally.failed > 0 {
        bail!("{} records failed", tally.failed);
    }
    Ok(())
}

/// How long the producer spent out of `Ready`, from its transitions until `end`.
fn time_not_ready(timeline: &[(Duration, ConnectionState)], end: Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut left_ready = None;
    for &(at, state) in timeline {
        match (state, left_ready) {
            (ConnectionState::Ready, Some(since)) => {
                total += at.saturating_sub(since);
                left_ready = None;
            }
            (ConnectionState::Ready, None) => {}
            (_, None) => left_ready = Some(at),
            (_, Some(_)) => {}
        }
    }
    if let Some(since) = left_ready {
        total += end.saturating_sub(since);
    }
    total
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// `VmHWM` of this process: the most memory it held at once.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}
