//! The Rust SDK (`trellis-client`) against the real `trellis serve`: through a proxy that resets
//! connections and goes down, across a SIGKILL and restart, with a refused event in the middle,
//! and a consumer that resubscribes by itself. What the topic holds afterwards is read back over
//! the HTTP API.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use trellis_client::{
    CloudEvent, Code, ConnectionState, Consumer, ConsumerConfig, DeliveryFuture, Producer,
    ProducerConfig, ProducerError, RetryPolicy, StartPosition,
};
use trellis_test_support::{FaultProxy, Faults, TrellisProcess};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis"))
}

fn grpc_addr(process: &TrellisProcess) -> SocketAddr {
    process
        .grpc_addr()
        .parse()
        .expect("the ready line gives a gRPC address")
}

/// A 1 KiB-or-less event: the data is `size` bytes of text.
fn event(id: &str, size: usize) -> CloudEvent {
    let json = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/sdk-tests","type":"dev.trellis.test","datacontenttype":"text/plain","data":"{}"}}"#,
        "x".repeat(size)
    );
    CloudEvent::from_structured_json(json.as_bytes()).expect("valid event")
}

fn producer_config(topic: &str, endpoint: SocketAddr) -> ProducerConfig {
    ProducerConfig::new(topic)
        .endpoints([endpoint.to_string()])
        .retry(RetryPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        })
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
}

/// Every event id in `topic`, in offset order, read over HTTP.
async fn topic_ids(base_url: &str, topic: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut from = 0u64;
    loop {
        let page: Vec<serde_json::Value> = client
            .get(format!(
                "{base_url}/v1/topics/{topic}/events?from={from}&limit=1000"
            ))
            .send()
            .await
            .expect("read the topic")
            .error_for_status()
            .expect("a page of events")
            .json()
            .await
            .expect("JSON events");
        let Some(last) = page.last() else {
            return ids;
        };
        from = last["offset"].as_u64().expect("an offset") + 1;
        ids.extend(
            page.iter()
                .map(|event| event["id"].as_str().expect("an id").to_owned()),
        );
    }
}

fn assert_each_once(ids: &[String], expected: impl Iterator<Item = String>) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {duplicated:?}"
    );
    let expected: HashSet<String> = expected.collect();
    let stored: HashSet<String> = ids.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&stored).take(5).collect();
    assert!(missing.is_empty(), "never stored: {missing:?}");
    assert_eq!(stored.len(), expected.len(), "nothing else stored");
}

async fn await_all(results: Vec<DeliveryFuture>) {
    for (n, result) in results.into_iter().enumerate() {
        if let Err(error) = result.await {
            panic!("record {n} failed: {error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_through_resets_and_an_outage_are_each_stored_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let proxy = FaultProxy::start(
        grpc_addr(&process),
        Faults::none()
            .with_reset_probability(0.1)
            .resetting_first(2)
            .expect("some seed resets the first connections"),
    )
    .await
    .expect("proxy starts");
    let producer = Producer::new(producer_config("load", proxy.addr())).expect("config");
    let n_events = 100_000;
    let mut results = Vec::with_capacity(n_events);
    for n in 0..n_events {
        if n == n_events / 2 {
            proxy.down().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            proxy.up().await.expect("the proxy comes back");
        }
        results.push(
            producer
                .send(event(&format!("load-{n}"), 200))
                .await
                .expect("buffered"),
        );
    }
    await_all(results).await;
    assert!(
        proxy.stats().connections_reset > 0,
        "connections were reset"
    );
    let ids = topic_ids(process.base_url(), "load").await;
    assert_eq!(ids.len(), n_events);
    assert_each_once(&ids, (0..n_events).map(|n| format!("load-{n}")));
    // And in the order of send, resends through resets and the outage included.
    let in_order: Vec<String> = (0..n_events).map(|n| format!("load-{n}")).collect();
    assert!(ids == in_order, "the topic keeps the order of send");
}

/// A TCP relay on a fixed port whose upstream can change: the runtime comes back on a new port
/// after a restart, and the producer must not be told.
struct Relay {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let upstream = Arc::new(Mutex::new(upstream));
        let target = upstream.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = *target.lock().expect("relay lock");
                tokio::spawn(async move {
                    // A dead upstream closes the client's connection: what a restarting server
                    // looks like from outside.
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { addr, upstream }
    }

    fn point_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("relay lock") = upstream;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_recovers_from_a_killed_runtime_without_any_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let relay = Relay::start(grpc_addr(&process)).await;
    // Several batches in flight (the default), and the order in the topic is checked too: the
    // server stores a stream's batches in the order they came, resends included.
    let producer = Producer::new(producer_config("crash", relay.addr)).expect("config");
    let mut transitions = producer.transitions();
    assert_eq!(producer.state(), ConnectionState::Ready);

    let n_events = 10_000;
    let mut results = Vec::with_capacity(n_events);
    for n in 0..n_events / 2 {
        results.push(
            producer
                .send(event(&format!("crash-{n}"), 200))
                .await
                .expect("buffered"),
        );
    }
    process.kill();
    process = tokio::task::block_in_place(|| TrellisProcess::start(bin(), dir.path(), &[]))
        .expect("trellis restarts on the same data dir");
    relay.point_to(grpc_addr(&process));
    for n in n_events / 2..n_events {
        results.push(
            producer
                .send(event(&format!("crash-{n}"), 200))
                .await
                .expect("buffered"),
        );
    }
    await_all(results).await;

    let ids = topic_ids(process.base_url(), "crash").await;
    assert_each_once(&ids, (0..n_events).map(|n| format!("crash-{n}")));
    let in_order: Vec<String> = (0..n_events).map(|n| format!("crash-{n}")).collect();
    assert!(ids == in_order, "the topic keeps the order of send");

    let mut seen = Vec::new();
    while let Ok(state) = transitions.try_recv() {
        seen.push(state);
    }
    // Attempts made while the runtime was down add Recovering -> Backoff rounds in between.
    assert_eq!(seen.first(), Some(&ConnectionState::Backoff), "{seen:?}");
    assert_eq!(
        &seen[seen.len() - 2..],
        [ConnectionState::Recovering, ConnectionState::Ready],
        "{seen:?}"
    );
    for pair in seen.windows(2) {
        assert!(
            matches!(
                (pair[0], pair[1]),
                (ConnectionState::Backoff, ConnectionState::Recovering)
                    | (ConnectionState::Recovering, ConnectionState::Backoff)
                    | (ConnectionState::Recovering, ConnectionState::Ready)
                    | (ConnectionState::Ready, ConnectionState::Backoff)
            ),
            "{seen:?}"
        );
    }
    assert_eq!(producer.state(), ConnectionState::Ready);
}

#[tokio::test]
async fn an_invalid_event_in_the_middle_of_a_stream_fails_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let producer = Producer::new(producer_config("mixed", grpc_addr(&process))).expect("config");
    let mut results = Vec::new();
    for n in 0..100 {
        let mut event = event(&format!("mixed-{n}"), 100);
        if n == 50 {
            // Built by hand: the SDK leaves validation to the server.
            event.ty.clear();
        }
        results.push(producer.send(event).await.expect("buffered"));
    }
    for (n, result) in results.into_iter().enumerate() {
        let outcome = result.await;
        if n == 50 {
            match outcome {
                Err(ProducerError::Rejected {
                    code: Code::InvalidArgument,
                    attribute,
                    ..
                }) => assert_eq!(attribute.as_deref(), Some("type")),
                other => panic!("the invalid event: {other:?}"),
            }
        } else {
            outcome.unwrap_or_else(|error| panic!("mixed-{n}: {error}"));
        }
    }
    assert_eq!(producer.state(), ConnectionState::Ready);
    let ids = topic_ids(process.base_url(), "mixed").await;
    assert_each_once(
        &ids,
        (0..100).filter(|n| *n != 50).map(|n| format!("mixed-{n}")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resubscribes_by_itself_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let relay = Relay::start(grpc_addr(&process)).await;
    let producer = Producer::new(producer_config("orders", relay.addr)).expect("config");
    let mut consumer = Consumer::new(
        ConsumerConfig::new("orders", "billing")
            .endpoints([relay.addr.to_string()])
            .start(StartPosition::Earliest)
            .retry(RetryPolicy {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                ..RetryPolicy::default()
            }),
    )
    .expect("config");

    let publish = |range: std::ops::Range<usize>| {
        let producer = producer.clone();
        async move {
            let mut results = Vec::new();
            for n in range {
                results.push(
                    producer
                        .send(event(&format!("order-{n}"), 50))
                        .await
                        .expect("buffered"),
                );
            }
            await_all(results).await;
        }
    };
    let mut received = HashSet::new();
    publish(0..50).await;
    while received.len() < 50 {
        let delivery = consumer.recv().await.expect("a delivery");
        consumer.ack(delivery.offset).expect("ack");
        received.insert(delivery.event.id);
    }

    process.kill();
    process = tokio::task::block_in_place(|| TrellisProcess::start(bin(), dir.path(), &[]))
        .expect("trellis restarts on the same data dir");
    relay.point_to(grpc_addr(&process));
    publish(50..100).await;
    // Events whose ack was not committed before the kill may come again; all must come.
    while received.len() < 100 {
        let delivery = consumer.recv().await.expect("a delivery");
        consumer.ack(delivery.offset).expect("ack");
        received.insert(delivery.event.id);
    }
    let expected: HashSet<String> = (0..100).map(|n| format!("order-{n}")).collect();
    assert_eq!(received, expected);
    assert_eq!(consumer.state(), ConnectionState::Ready);
    drop(process);
}
