//! `trellis publish`: events from stdin, or generated load, through the SDK's [`Producer`].
//!
//! The reader (stdin or the generator) hands each event to the producer and passes the future
//! of its result, in order, to a collector task that awaits them and keeps the tally; the
//! producer's own buffer limit is what holds the reader back when the server is slow. An event
//! fails for good when the server refuses it or it is not acknowledged within `--timeout` (the
//! producer's delivery timeout), so a dead server ends the run instead of hanging it.

mod input;
mod progress;

use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use trellis_client::{CloudEvent, ConfigError, DeliveryFuture, Producer, ProducerConfig};

use crate::cli::PublishArgs;
use input::{Generator, Origin, Template};
use progress::{Failure, Progress, Totals};

/// Results waiting for the collector; the producer's buffer bounds memory, this only keeps the
/// channel from growing when answers are slow.
const PENDING_RESULTS: usize = 64 * 1024;
/// The largest `--size`: well beyond the server's default event limit, yet no accidental
/// gigabyte allocation.
const MAX_SIZE: usize = 64 * 1024 * 1024;
/// How long the connection attempt may take at most; a shorter `--timeout` shortens it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One event on its way: sent and awaiting its answer, or failed before it could be sent.
enum Pending {
    Sent(DeliveryFuture),
    Failed(Failure),
}

pub(crate) fn run(args: PublishArgs) -> anyhow::Result<()> {
    let timeout = parse_timeout(args.timeout)?;
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        anyhow::bail!("--rate: must be a positive number of events per second; got {rate}");
    }
    if args.size > MAX_SIZE {
        anyhow::bail!(
            "--size: must be at most {MAX_SIZE} bytes; got {}",
            args.size
        );
    }
    let template = Template {
        source: args.source.clone(),
        ty: args.event_type.clone(),
    };
    template.validate().map_err(anyhow::Error::msg)?;
    let config = ProducerConfig::new(args.topic.clone())
        .endpoints(args.endpoint.endpoints.clone())
        .delivery_timeout(timeout)
        // Waiting for room in the buffer is waiting for the server too.
        .buffer_timeout(timeout)
        .connect_timeout(timeout.min(CONNECT_TIMEOUT));
    // Lines land in the topic in their order with any number of batches in flight: the server
    // stores a stream's batches in the order they came.
    config.validate().map_err(flag_error)?;

    // Two workers: the producer's task encodes and sends while the reader builds events.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let totals = runtime.block_on(publish(config, &args, template))?;
    if totals.failed == 0 {
        return Ok(());
    }
    let total = totals.stored + totals.failed;
    if totals.stored == 0 && totals.timed_out == totals.failed {
        anyhow::bail!(
            "{} of {total} events failed: none was acknowledged within the {timeout:?} --timeout; is trellis serving gRPC at {}?",
            totals.failed,
            args.endpoint.endpoints.join(", ")
        );
    }
    if totals.timed_out > 0 {
        anyhow::bail!(
            "{} of {total} events failed ({} not acknowledged within the {timeout:?} --timeout)",
            totals.failed,
            totals.timed_out
        );
    }
    anyhow::bail!("{} of {total} events failed", totals.failed)
}

async fn publish(
    config: ProducerConfig,
    args: &PublishArgs,
    template: Template,
) -> anyhow::Result<Totals> {
    let producer = Producer::new(config).map_err(flag_error)?;
    let progress = Progress::new(args.count, args.quiet);
    let (pending_tx, pending_rx) = mpsc::channel(PENDING_RESULTS);
    let collector = tokio::spawn(collect(pending_rx, progress));
    let read = match args.count {
        Some(count) => {
            let generator = Generator::new(template, args.size);
            generate(&producer, &pending_tx, &generator, count, args.rate).await
        }
        None => read_stdin(&producer, &pending_tx, &template).await,
    };
    // Without a handle left the producer sends what it holds at once, without lingering.
    drop(producer);
    drop(pending_tx);
    let totals = collector
        .await
        .context("the result collector stopped")?
        .finish();
    read?;
    Ok(totals)
}

/// Sends one event and queues the future of its result.
async fn send(
    producer: &Producer,
    pending: &mpsc::Sender<(Origin, Pending)>,
    origin: Origin,
    event: Result<CloudEvent, String>,
) {
    let item = match event {
        Ok(event) => match producer.send(event).await {
            Ok(future) => Pending::Sent(future),
            Err(error) => Pending::Failed(Failure::Producer(error)),
        },
        Err(message) => Pending::Failed(Failure::Input(message)),
    };
    // The collector lives until this channel closes, so the send only fails if it panicked;
    // its join error reports that.
    let _ = pending.send((origin, item)).await;
}

async fn read_stdin(
    producer: &Producer,
    pending: &mpsc::Sender<(Origin, Pending)>,
    template: &Template,
) -> anyhow::Result<()> {
    let mut stdin = tokio::io::BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        // Bytes, not `lines()`: a line that is not UTF-8 fails alone instead of ending the run.
        if stdin
            .read_until(b'\n', &mut line)
            .await
            .context("cannot read stdin")?
            == 0
        {
            return Ok(());
        }
        number += 1;
        if let Some(event) = input::event_from_line(&line, template) {
            send(producer, pending, Origin::Line(number), event).await;
        }
    }
}

async fn generate(
    producer: &Producer,
    pending: &mpsc::Sender<(Origin, Pending)>,
    generator: &Generator,
    count: u64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    for n in 0..count {
        if let Some(rate) = rate {
            // Open loop: event n is due at n / rate whatever the answers do, so a slow server
            // shows up as latency and a backlog, not as a lower offered rate. Behind schedule,
            // events go out at once until caught up.
            #[allow(clippy::cast_precision_loss)]
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        send(
            producer,
            pending,
            Origin::Generated(n),
            Ok(generator.event(n)),
        )
        .await;
    }
    Ok(())
}

/// Awaits the results in the order the events were sent (the producer answers in about that
/// order) and counts them.
async fn collect(
    mut pending: mpsc::Receiver<(Origin, Pending)>,
    mut progress: Progress,
) -> Progress {
    while let Some((origin, item)) = pending.recv().await {
        let result = match item {
            Pending::Sent(future) => future.await.map_err(Failure::Producer),
            Pending::Failed(failure) => Err(failure),
        };
        progress.record(origin, result);
    }
    progress
}

fn parse_timeout(secs: f64) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(timeout) if !timeout.is_zero() => Ok(timeout),
        _ => anyhow::bail!("--timeout: must be a positive number of seconds; got {secs}"),
    }
}

/// A producer setting refused, named by the flag that set it.
pub(crate) fn flag_error(error: ConfigError) -> anyhow::Error {
    let flag = match error.setting {
        "topic" => "--topic",
        "group" => "--group",
        "endpoints" => "--endpoint",
        "delivery_timeout" | "buffer_timeout" | "connect_timeout" => "--timeout",
        other => other,
    };
    anyhow::anyhow!("{flag}: {}", error.message)
}
