//! The producer against an in-process gRPC server that stores and deduplicates like Trellis,
//! behind the fault-injection proxy: connections reset at random, the whole endpoint going away,
//! a dead endpoint, refused records.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use trellis_client::{
    CloudEvent, Code, ConnectionState, Producer, ProducerConfig, ProducerError, RetryPolicy,
};
use trellis_proto::v1;
use trellis_proto::v1::trellis_server::{Trellis, TrellisServer};
use trellis_test_support::{FaultProxy, Faults};

/// What the fake server stored: event ids in order, and the (source, id) index it deduplicates
/// with.
#[derive(Default)]
struct Log {
    ids: Vec<String>,
    offsets: HashMap<(String, String), u64>,
}

impl Log {
    fn store(&mut self, events: Vec<v1::CloudEvent>) -> Vec<v1::EventResult> {
        events
            .into_iter()
            .map(|event| {
                let result = if event.id.starts_with("invalid") {
                    v1::event_result::Result::Error(v1::Error {
                        code: Code::InvalidArgument as i32,
                        message: "refused by the test".to_owned(),
                        attribute: "id".to_owned(),
                    })
                } else {
                    let key = (event.source.clone(), event.id.clone());
                    match self.offsets.get(&key) {
                        Some(&offset) => v1::event_result::Result::Stored(v1::Stored {
                            offset,
                            duplicate: true,
                        }),
                        None => {
                            let offset = self.ids.len() as u64;
                            self.ids.push(event.id);
                            self.offsets.insert(key, offset);
                            v1::event_result::Result::Stored(v1::Stored {
                                offset,
                                duplicate: false,
                            })
                        }
                    }
                };
                v1::EventResult {
                    result: Some(result),
                }
            })
            .collect()
    }
}

#[derive(Clone, Default)]
struct FakeTrellis {
    log: Arc<Mutex<Log>>,
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Trellis for FakeTrellis {
    async fn publish(
        &self,
        _request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        Err(Status::unimplemented("the test server streams only"))
    }

    type PublishStreamStream = Answers<v1::PublishResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut requests = request.into_inner();
        let log = self.log.clone();
        let (answers, answers_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                let results = log.lock().expect("log lock").store(request.events);
                let answer = v1::PublishResponse {
                    batch_id: request.batch_id,
                    results,
                };
                if answers.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answers_rx))))
    }

    type SubscribeStream = Answers<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        _request: Request<Streaming<v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("the test server publishes only"))
    }
}

async fn start_server() -> (SocketAddr, Arc<Mutex<Log>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test server");
    let addr = listener.local_addr().expect("local addr");
    let server = FakeTrellis::default();
    let log = server.log.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TrellisServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, log)
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("local addr")
}

fn event(id: &str) -> CloudEvent {
    let json = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/recovery-test","type":"dev.trellis.test","data":"{}"}}"#,
        "x".repeat(100)
    );
    CloudEvent::from_structured_json(json.as_bytes()).expect("valid event")
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}

fn config(endpoints: &[SocketAddr]) -> ProducerConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    ProducerConfig::new("recovery")
        .endpoints(endpoints.iter().map(ToString::to_string))
        .retry(fast_retry())
        .endpoint_quarantine(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_an_outage_neither_lose_nor_duplicate_records() {
    let (server, log) = start_server().await;
    let proxy = FaultProxy::start(
        server,
        Faults::none()
            .with_reset_probability(0.1)
            .resetting_first(2)
            .expect("some seed resets the first connections"),
    )
    .await
    .expect("start the proxy");
    let producer = Producer::new(config(&[proxy.addr()]).batch_max_events(200)).expect("config");
    let n_events = 20_000;
    let mut results = Vec::with_capacity(n_events);
    for n in 0..n_events {
        if n == n_events / 2 {
            proxy.down().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            proxy.up().await.expect("the proxy comes back");
        }
        results.push(
            producer
                .send(event(&format!("e-{n}")))
                .await
                .expect("buffered"),
        );
    }
    for (n, result) in results.into_iter().enumerate() {
        let stored = result
            .await
            .unwrap_or_else(|error| panic!("e-{n}: {error}"));
        let log = log.lock().expect("log lock");
        assert_eq!(log.ids[stored.offset as usize], format!("e-{n}"));
    }
    let log = log.lock().expect("log lock");
    assert_eq!(log.ids.len(), n_events);
    let distinct: HashSet<&String> = log.ids.iter().collect();
    assert_eq!(distinct.len(), n_events, "each id stored once");
    assert!(
        proxy.stats().connections_reset > 0,
        "the proxy did reset connections"
    );
}

#[tokio::test]
async fn state_goes_ready_backoff_recovering_ready_without_help() {
    let (server, log) = start_server().await;
    let proxy = FaultProxy::start(server, Faults::none())
        .await
        .expect("start the proxy");
    let producer = Producer::new(config(&[proxy.addr()])).expect("config");
    let mut transitions = producer.transitions();
    assert_eq!(producer.state(), ConnectionState::Ready);
    producer
        .send(event("before"))
        .await
        .expect("buffered")
        .await
        .expect("stored");

    proxy.down().await;
    let pending = producer.send(event("during")).await.expect("buffered");
    let mut seen = vec![transitions.recv().await.expect("a transition")];
    assert_eq!(seen, [ConnectionState::Backoff]);
    proxy.up().await.expect("the proxy comes back");
    let stored = pending.await.expect("stored after the outage");
    while seen.last() != Some(&ConnectionState::Ready) {
        seen.push(transitions.recv().await.expect("a transition"));
    }
    // Reconnection attempts made while the proxy was down add Recovering -> Backoff rounds.
    for pair in seen.windows(2) {
        let valid = matches!(
            (pair[0], pair[1]),
            (ConnectionState::Backoff, ConnectionState::Recovering)
                | (ConnectionState::Recovering, ConnectionState::Backoff)
                | (ConnectionState::Recovering, ConnectionState::Ready)
        );
        assert!(valid, "{seen:?}");
    }
    assert_eq!(
        &seen[seen.len() - 2..],
        [ConnectionState::Recovering, ConnectionState::Ready]
    );
    assert_eq!(producer.state(), ConnectionState::Ready);
    assert_eq!(
        log.lock().expect("log lock").ids[stored.offset as usize],
        "during"
    );
}

#[tokio::test]
async fn a_refused_record_fails_alone() {
    let (server, log) = start_server().await;
    let producer =
        Producer::new(config(&[server]).linger(Duration::from_millis(50))).expect("config");
    let mut results = Vec::new();
    for id in ["a", "b", "invalid-c", "d", "e"] {
        results.push(producer.send(event(id)).await.expect("buffered"));
    }
    let mut outcomes = Vec::new();
    for result in results {
        outcomes.push(result.await);
    }
    assert!(
        matches!(
            &outcomes[2],
            Err(ProducerError::Rejected { code: Code::InvalidArgument, attribute: Some(attribute), .. }) if attribute == "id"
        ),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .enumerate()
            .all(|(n, outcome)| n == 2 || outcome.is_ok())
    );
    assert_eq!(log.lock().expect("log lock").ids, ["a", "b", "d", "e"]);
    // And the producer goes on.
    producer
        .send(event("f"))
        .await
        .expect("buffered")
        .await
        .expect("stored");
    assert_eq!(producer.state(), ConnectionState::Ready);
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_for_the_next_one() {
    let (server, log) = start_server().await;
    let producer = Producer::new(config(&[dead_addr().await, server])).expect("config");
    let stored = producer
        .send(event("failover"))
        .await
        .expect("buffered")
        .await
        .expect("stored through the second endpoint");
    assert_eq!(
        log.lock().expect("log lock").ids[stored.offset as usize],
        "failover"
    );
}

#[tokio::test]
async fn a_record_nobody_acknowledges_fails_with_a_timeout() {
    let producer =
        Producer::new(config(&[dead_addr().await]).delivery_timeout(Duration::from_millis(300)))
            .expect("config");
    let result = producer.send(event("lost")).await.expect("buffered").await;
    assert_eq!(
        result,
        Err(ProducerError::DeliveryTimeout(Duration::from_millis(300)))
    );
    assert!(result.expect_err("timed out").is_transient());
}

#[tokio::test]
async fn send_waits_for_room_then_fails_clearly() {
    let producer = Producer::new(
        config(&[dead_addr().await])
            .max_buffered_bytes(200)
            .buffer_timeout(Duration::from_millis(200)),
    )
    .expect("config");
    let _first = producer.send(event("fits")).await.expect("room for one");
    let second = producer.send(event("waits")).await;
    assert!(
        matches!(second, Err(ProducerError::BufferFull(timeout)) if timeout == Duration::from_millis(200)),
        "{second:?}"
    );
}

#[tokio::test]
async fn flush_waits_for_every_record_sent_before_it() {
    let (server, log) = start_server().await;
    let producer =
        Producer::new(config(&[server]).linger(Duration::from_secs(60))).expect("config");
    let results: Vec<_> = {
        let mut results = Vec::new();
        for n in 0..10 {
            results.push(
                producer
                    .send(event(&format!("f-{n}")))
                    .await
                    .expect("buffered"),
            );
        }
        results
    };
    producer.flush().await.expect("flushed");
    assert_eq!(
        log.lock().expect("log lock").ids.len(),
        10,
        "the linger did not hold them back"
    );
    for result in results {
        result.await.expect("stored");
    }
}

#[tokio::test]
async fn an_outage_longer_than_max_elapsed_fails_the_waiting_records_but_not_the_producer() {
    let (server, log) = start_server().await;
    let proxy = FaultProxy::start(server, Faults::none())
        .await
        .expect("start the proxy");
    proxy.down().await;
    let producer = Producer::new(config(&[proxy.addr()]).retry(RetryPolicy {
        max_elapsed: Some(Duration::from_millis(300)),
        ..fast_retry()
    }))
    .expect("config");
    let result = producer
        .send(event("stranded"))
        .await
        .expect("buffered")
        .await;
    assert_eq!(
        result,
        Err(ProducerError::RetriesExhausted(Duration::from_millis(300)))
    );
    // Nothing to clear: once the endpoint is back, the same producer stores the next record.
    proxy.up().await.expect("the proxy comes back");
    producer
        .send(event("later"))
        .await
        .expect("buffered")
        .await
        .expect("stored");
    assert_eq!(log.lock().expect("log lock").ids, ["later"]);
}
