//! Receives a topic's events as a member of a consumer group, prints each and acks it.
//!
//! ```text
//! cargo run -p trellis-client --example consume -- 127.0.0.1:10205 orders printers
//! ```
//!
//! Restart the server while it runs: the consumer resubscribes by itself, and events it had not
//! acked come again.

use trellis_client::{Consumer, ConsumerConfig, StartPosition};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| trellis_client::DEFAULT_ENDPOINT.to_owned());
    let topic = args.next().unwrap_or_else(|| "examples".to_owned());
    let group = args.next().unwrap_or_else(|| "examples".to_owned());

    let mut consumer = Consumer::new(
        ConsumerConfig::new(topic, group)
            .endpoints([endpoint])
            .start(StartPosition::Earliest),
    )?;
    loop {
        let delivery = consumer.recv().await?;
        println!(
            "offset {} (attempt {}): {} {}",
            delivery.offset,
            delivery.attempt,
            delivery.event.id,
            String::from_utf8_lossy(&delivery.event.to_structured_json()),
        );
        consumer.ack(delivery.offset)?;
    }
}
