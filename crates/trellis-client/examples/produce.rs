//! Publishes numbered events to a topic and reports where each was stored.
//!
//! ```text
//! trellis serve &
//! cargo run -p trellis-client --example produce -- 127.0.0.1:10205 orders 1000
//! ```
//!
//! Stop the server in the middle and start it again: the producer backs off, reconnects and
//! resends by itself, and every event is stored once.

use std::time::Duration;

use trellis_client::{CloudEvent, Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| trellis_client::DEFAULT_ENDPOINT.to_owned());
    let topic = args.next().unwrap_or_else(|| "examples".to_owned());
    let n_events: u64 = args.next().map_or(Ok(100), |count| count.parse())?;

    let producer = Producer::new(
        ProducerConfig::new(topic)
            .endpoints([endpoint])
            .linger(Duration::from_millis(5)),
    )?;
    let mut states = producer.state_changes();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            eprintln!("producer is {}", *states.borrow_and_update());
        }
    });

    let run = std::process::id();
    let mut results = Vec::new();
    for n in 0..n_events {
        let json = format!(
            r#"{{"specversion":"1.0","id":"{run}-{n}","source":"/examples/produce","type":"dev.trellis.example","data":{{"n":{n}}}}}"#
        );
        let event = CloudEvent::from_structured_json(json.as_bytes())?;
        results.push(producer.send(event).await?);
    }
    let mut n_failed = 0;
    for (n, result) in results.into_iter().enumerate() {
        match result.await {
            Ok(stored) => println!("{n} stored at offset {}", stored.offset),
            Err(error) => {
                eprintln!("{n} failed: {error}");
                n_failed += 1;
            }
        }
    }
    if n_failed > 0 {
        return Err(format!("{n_failed} events failed").into());
    }
    Ok(())
}
