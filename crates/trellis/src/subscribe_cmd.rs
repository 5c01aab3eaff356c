//! `trellis subscribe`: a consumer-group member through the SDK's [`Consumer`] that prints each
//! event as one JSON line on stdout and acks it once the line is written.
//!
//! The ack comes after the write, so an event whose line never reached stdout (a closed pipe,
//! a signal) is not acked and the group gets it again. A line is the structured CloudEvent with
//! the event's `offset` as its first member, as the HTTP API's reads render events.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use trellis_client::{
    CloudEvent, ConnectionState, Consumer, ConsumerConfig, ConsumerError, GroupMode, StartPosition,
};

use crate::cli::{SubscribeArgs, SubscribeMode, SubscribeStart};
use crate::publish_cmd::flag_error;

/// The SDK's default window: events delivered and not yet acked.
const MAX_UNACKED: u64 = 1000;
/// How long to wait for the member to leave: its last acks sent and the server's side ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(6);

pub(crate) fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    if args.member.is_some() && args.mode != SubscribeMode::Broadcast {
        anyhow::bail!("--member: only applies with --mode broadcast");
    }
    let mut config = ConsumerConfig::new(args.topic.clone(), args.group.clone())
        .endpoints(args.endpoint.endpoints.clone())
        .start(match args.start {
            SubscribeStart::Latest => StartPosition::Latest,
            SubscribeStart::Earliest => StartPosition::Earliest,
        })
        .mode(match args.mode {
            SubscribeMode::Clustering => GroupMode::Clustering,
            SubscribeMode::Broadcast => GroupMode::Broadcast,
        });
    if let Some(count) = args.count {
        if count == 0 {
            return Ok(());
        }
        // Hold no more than will be printed: in a clustering group, events held here are kept
        // from the other members until this one leaves.
        let window = u32::try_from(count.min(MAX_UNACKED)).unwrap_or(u32::MAX);
        config = config.max_unacked(window);
    }
    if let Some(member) = &args.member {
        config = config.member(member.clone());
    }
    config.validate().map_err(flag_error)?;

    // Two workers: writes to stdout block, and the consumer's task must keep running meanwhile.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(subscribe(
        config,
        args.count,
        &args.endpoint.endpoints.join(", "),
    ))
}

async fn subscribe(
    config: ConsumerConfig,
    count: Option<u64>,
    endpoints: &str,
) -> anyhow::Result<()> {
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let mut consumer = Consumer::new(config).map_err(flag_error)?;
    let mut states = consumer.state_changes();
    let mut states_open = true;
    let mut warned = false;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0;
    let result = loop {
        if count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        tokio::select! {
            _ = terminate.recv() => break Ok(()),
            _ = interrupt.recv() => break Ok(()),
            changed = states.changed(), if states_open => {
                if changed.is_err() {
                    states_open = false;
                    continue;
                }
                let state = *states.borrow_and_update();
                // The consumer retries for ever; say so once per outage instead of hanging
                // silently.
                if state == ConnectionState::Backoff && !warned {
                    eprintln!("trellis: warning: cannot reach trellis at {endpoints}; retrying until stopped");
                    warned = true;
                } else if state == ConnectionState::Ready {
                    warned = false;
                }
            }
            delivery = consumer.recv() => match delivery {
                Ok(delivery) => {
                    let line = json_line(delivery.offset, &delivery.event);
                    match stdout.write_all(&line).and_then(|()| stdout.flush()) {
                        Ok(()) => {}
                        // The reader is gone (`| head`): a normal way to stop. Not acked, so
                        // the group gets the event again.
                        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break Ok(()),
                        Err(error) => break Err(anyhow::Error::new(error).context("cannot write to stdout")),
                    }
                    if consumer.ack(delivery.offset).is_err() {
                        break Err(anyhow::anyhow!("the consumer stopped before offset {} was acked", delivery.offset));
                    }
                    printed += 1;
                }
                // Not acked: the server offers it again after the ack timeout.
                Err(ConsumerError::InvalidEvent { offset, error }) => {
                    eprintln!("trellis: warning: skipping the invalid event at offset {offset}: {error}");
                }
                Err(error) => break Err(anyhow::Error::new(error)),
            }
        }
    };
    close(consumer).await;
    result
}

/// Leaves the group with the acks made so far delivered to the server, so the next run does not
/// get those events again; a server that does not answer is not waited for long.
async fn close(consumer: Consumer) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, consumer.close()).await;
}

/// `{"offset":N,` then the structured event's members, and a newline.
fn json_line(offset: u64, event: &CloudEvent) -> Vec<u8> {
    let json = event.to_structured_json();
    let mut line = Vec::with_capacity(json.len() + 32);
    line.extend_from_slice(format!("{{\"offset\":{offset},").as_bytes());
    // The structured form is an object with at least the required attributes, never `{}`.
    line.extend_from_slice(json.get(1..).unwrap_or_default());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::json_line;
    use trellis_client::CloudEvent;

    #[test]
    fn a_line_is_the_event_with_its_offset_first() {
        let event = CloudEvent::from_structured_json(
            br#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{"n":1}}"#,
        )
        .expect("valid event");
        let line = String::from_utf8(json_line(7, &event)).expect("UTF-8");
        assert_eq!(
            line,
            "{\"offset\":7,\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"/s\",\"type\":\"t\",\"data\":{\"n\":1}}\n"
        );
    }
}
