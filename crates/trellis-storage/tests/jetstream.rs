//! The conformance suite and JetStream-specific checks against a real nats-server, started on a
//! free loopback port with its own store directory. Without nats-server on the PATH these tests
//! skip with a message, unless `TRELLIS_REQUIRE_NATS` is set (as `scripts/test.sh` does), in which
//! case they fail.

use std::sync::Arc;
use std::time::Duration;

use trellis_storage::{
    AppendOutcome, AppendRecord, EventStore, JetStreamOptions, JetStreamStore, StorageError,
    TopicSettings, conformance, stream_name, topic_name,
};
use trellis_test_support::{ConnectionFault, FaultProxy, Faults, NatsServer};

/// A real nats-server, and stores connected to it.
struct Server {
    nats: NatsServer,
}

impl Server {
    /// `None` when nats-server is not installed and not required (the test then skips).
    fn start() -> Option<Server> {
        NatsServer::start().map(|nats| Server { nats })
    }

    fn url(&self) -> String {
        self.nats.url()
    }

    fn stop(&mut self) {
        self.nats.stop();
    }

    fn options(&self) -> JetStreamOptions {
        let mut options = JetStreamOptions::new(self.url());
        options.request_timeout = Duration::from_secs(2);
        options
    }

    async fn store(&self) -> Arc<dyn EventStore> {
        Arc::new(
            JetStreamStore::connect(self.options())
                .await
                .expect("connect to nats-server"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_store_passes_the_conformance_suite() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    conformance::run_all(&*store).await;
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_store_keeps_records_and_duplicates_across_a_server_restart() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let restarted = &mut server;
    conformance::restart_persistence(store, || async move {
        restarted.nats.restart();
        restarted.store().await
    })
    .await;
}

#[test]
fn topic_names_map_to_stream_names_and_back() {
    for topic in ["orders", "orders.eu-west_1", "a.b.c", "a_b", "-", "..a"] {
        let stream = stream_name(topic);
        assert!(!stream.contains('.'), "{stream} has no dot");
        assert_eq!(topic_name(&stream).as_deref(), Some(topic));
    }
    assert_eq!(topic_name("tr~a.b"), None, "a stream name has no dot");
    assert_eq!(topic_name("tr~~"), None, "\".\" is no topic name");
    assert_ne!(stream_name("a.b"), stream_name("a_b"));
    assert_ne!(stream_name("a.b"), stream_name("a-b"));
    assert_eq!(
        topic_name("ORDERS"),
        None,
        "streams not made by Trellis are no topics"
    );
    assert!(
        stream_name(&"x".repeat(249)).len() <= 255,
        "fits a file name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_dedup_window_turns_deduplication_off() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut options = server.options();
    options.dedup_window = Duration::ZERO;
    let store = JetStreamStore::connect(options).await.expect("connect");
    let topic = store
        .create_topic("jetstream.no-dedup", TopicSettings::default())
        .await
        .expect("create");
    let outcomes = topic
        .append(vec![conformance::keyed(1, "a"), conformance::keyed(1, "a")])
        .await
        .expect("append");
    assert_eq!(
        outcomes,
        vec![AppendOutcome::Stored(0), AppendOutcome::Stored(1)]
    );
}

#[tokio::test]
async fn a_dedup_window_shorter_than_jetstreams_shortest_is_refused() {
    // Refused before any server is reached: the server would refuse every topic's stream.
    let mut options = JetStreamOptions::new("nats://127.0.0.1:1");
    options.dedup_window = Duration::from_millis(50);
    match JetStreamStore::connect(options).await {
        Err(StorageError::InvalidOptions(message)) => {
            assert!(message.contains("100ms"), "{message}");
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
}

/// A handle knows its stream by the stream's creation time, which the server keeps across a
/// restart: a handle made before one still works after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_outlives_a_server_restart() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let topic = store
        .create_topic("jetstream.restarted", TopicSettings::default())
        .await
        .expect("create");
    topic
        .append(vec![AppendRecord::new("kept")])
        .await
        .expect("append");
    server.nats.restart();
    // The client reconnects by itself; until then the store is unavailable.
    let mut answer = topic.read(0, 10, usize::MAX).await;
    for _ in 0..200 {
        if !matches!(answer, Err(StorageError::Unavailable(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = topic.read(0, 10, usize::MAX).await;
    }
    let page = answer.expect("a read through the old handle");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].payload, "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_stores_only_what_is_missing() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let topic = store
        .create_topic("jetstream.resend", TopicSettings::default())
        .await
        .expect("create");
    // As if a batch failed after its first two records were stored.
    let first = topic
        .append(vec![conformance::keyed(1, "a"), conformance::keyed(2, "b")])
        .await
        .expect("append");
    assert_eq!(
        first,
        vec![AppendOutcome::Stored(0), AppendOutcome::Stored(1)]
    );
    let resent = topic
        .append(vec![
            conformance::keyed(1, "a"),
            conformance::keyed(2, "b"),
            conformance::keyed(3, "c"),
        ])
        .await
        .expect("resend");
    assert_eq!(
        resent,
        vec![
            AppendOutcome::Duplicate(0),
            AppendOutcome::Duplicate(1),
            AppendOutcome::Stored(2)
        ]
    );
    // Another client (another Trellis replica) gets the same answers.
    let other = server.store().await;
    let same = other
        .topic("jetstream.resend")
        .await
        .expect("topic")
        .expect("exists");
    assert_eq!(
        same.append(vec![conformance::keyed(3, "c")])
            .await
            .expect("append"),
        vec![AppendOutcome::Duplicate(2)]
    );
    assert_eq!(topic.info().await.expect("info").next_offset, 3);
}

/// Batches sent again after their connection broke part-way store every record exactly once:
/// the connection to nats-server runs through a proxy that resets it after a random number of
/// bytes, so batches fail in the middle, with some of their records stored and others not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cut_by_a_broken_connection_and_sent_again_store_each_record_once() {
    const BATCHES: u128 = 20;
    const BATCH_SIZE: u128 = 40;
    /// Resets before the proxy turns faithful, so the test ends.
    const RESETS: u64 = 6;
    let Some(server) = Server::start() else {
        return;
    };
    let upstream = format!("127.0.0.1:{}", server.nats.port())
        .parse()
        .expect("address");
    // Resets by byte count, not by time, so they strike while batches are sent.
    let faults = (0..)
        .map(|seed| Faults::none().with_reset_probability(1.0).with_seed(seed))
        .find(|faults| {
            (0..RESETS).all(|connection| {
                matches!(
                    faults.connection_fault(connection),
                    ConnectionFault::ResetAfterBytes(bytes) if bytes > 2048
                )
            })
        })
        .expect("a seed");
    let proxy = FaultProxy::start(upstream, faults).await.expect("proxy");
    let mut options = JetStreamOptions::new(format!("nats://{}", proxy.addr()));
    options.request_timeout = Duration::from_secs(1);
    let store = JetStreamStore::connect(options).await.expect("connect");
    let topic = store
        .create_topic("jetstream.cut", TopicSettings::default())
        .await
        .expect("create");

    let mut acknowledged = Vec::new();
    let mut failures = 0;
    let mut partly_stored_before = 0;
    for batch in 0..BATCHES {
        let records: Vec<AppendRecord> = (0..BATCH_SIZE)
            .map(|n| {
                let key = batch * BATCH_SIZE + n;
                conformance::keyed(key, &format!("{key:0>200}"))
            })
            .collect();
        // As a client does: the same batch again until it is answered.
        let outcomes = loop {
            match topic.append(records.clone()).await {
                Ok(outcomes) => break outcomes,
                Err(StorageError::Unavailable(_)) => {
                    failures += 1;
                    if proxy.stats().connections_reset >= RESETS {
                        proxy.set_faults(Faults::none());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("batch {batch}: {other}"),
            }
        };
        if outcomes
            .iter()
            .any(|outcome| matches!(outcome, AppendOutcome::Duplicate(_)))
        {
            partly_stored_before += 1;
        }
        acknowledged.extend(outcomes.iter().map(|outcome| outcome.offset()));
    }
    assert!(failures > 0, "the proxy broke no batch");
    // Some failed batch had stored records before it broke: the resend found them.
    assert!(
        partly_stored_before > 0,
        "no broken batch had stored anything"
    );

    // Every record once, in order, at the offset it was acknowledged at.
    let total = usize::try_from(BATCHES * BATCH_SIZE).expect("small");
    let mut stored = Vec::new();
    while stored.len() < total + 1 {
        let page = topic
            .read(
                u64::try_from(stored.len()).expect("small"),
                1000,
                usize::MAX,
            )
            .await
            .expect("read");
        if page.records.is_empty() {
            break;
        }
        stored.extend(page.records);
    }
    assert_eq!(stored.len(), total, "each record stored exactly once");
    // Each at the offset it was acknowledged with. Within a batch that broke, the order may
    // differ from the batch's: records lost with the connection are stored by the resend, after
    // records the client still held and sent once it reconnected (see the module doc).
    let mut keys: Vec<u128> = stored
        .iter()
        .map(|record| {
            conformance::key_of(&record.payload)
                .expect("a keyed record")
                .0
        })
        .collect();
    for (record, key) in stored.iter().zip(&keys) {
        let index = usize::try_from(*key).expect("small");
        assert_eq!(acknowledged[index], record.offset, "record {key}");
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), total, "no record twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let topic = store
        .create_topic("jetstream.down", TopicSettings::default())
        .await
        .expect("create");
    server.stop();
    let answer = topic.append(vec![AppendRecord::new("lost?")]).await;
    assert!(
        matches!(answer, Err(StorageError::Unavailable(_))),
        "an append with the server down is Unavailable, got {answer:?}"
    );
    let answer = store.list_topics().await;
    assert!(
        matches!(answer, Err(StorageError::Unavailable(_))),
        "a listing with the server down is Unavailable, got {answer:?}"
    );
    let refused = JetStreamStore::connect(server.options()).await;
    assert!(
        matches!(refused, Err(StorageError::Unavailable(_))),
        "connecting to a stopped server is Unavailable, got {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_settings_become_the_stream_settings() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let settings = TopicSettings {
        retention_age: Some(Duration::from_secs(60)),
        retention_bytes: Some(1 << 20),
        ..TopicSettings::default()
    };
    store
        .create_topic("orders.eu-west_1", settings)
        .await
        .expect("create");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_stream("tr~orders~eu-west_1")
        .await
        .expect("the topic's stream");
    let config = &stream.cached_info().config;
    assert_eq!(
        config.subjects,
        vec!["trellis.tr~orders~eu-west_1".to_owned()]
    );
    assert_eq!(config.max_age, Duration::from_secs(60));
    assert_eq!(config.max_bytes, 1 << 20);
    assert_eq!(config.num_replicas, 1);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(
        config.duplicate_window,
        Duration::from_secs(60),
        "the duplicate window is capped at the retention age"
    );
    // A stream that is not a Trellis topic is not listed.
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".to_owned(),
            subjects: vec!["other".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create another stream");
    let names: Vec<String> = store
        .list_topics()
        .await
        .expect("list")
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, vec!["orders.eu-west_1".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_the_clients_in_flight_limit_are_stored() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let topic = store
        .create_topic("jetstream.big", TopicSettings::default())
        .await
        .expect("create");
    // async-nats allows 5000 unanswered publishes per connection.
    let records: Vec<AppendRecord> = (0..6000u128)
        .map(|key| conformance::keyed(key, "x"))
        .collect();
    let first = topic.submit(records.clone()).await.expect("submit");
    let second = topic.submit(records).await.expect("submit a repeat");
    let first = first.await.expect("the first batch");
    let second = second.await.expect("the repeat");
    assert_eq!(first.len(), 6000);
    assert!(
        first
            .iter()
            .enumerate()
            .all(|(i, outcome)| *outcome == AppendOutcome::Stored(i as u64))
    );
    assert!(
        second
            .iter()
            .enumerate()
            .all(|(i, outcome)| *outcome == AppendOutcome::Duplicate(i as u64))
    );
    assert_eq!(topic.info().await.expect("info").next_offset, 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_wakes_waiters_and_refuses_appends() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = server.store().await;
    let topic = store
        .create_topic("jetstream.close", TopicSettings::default())
        .await
        .expect("create");
    let waiting = Arc::clone(&topic);
    let waiter = tokio::spawn(async move { waiting.wait_for(5).await });
    // The waiter is parked on its consumer once its consumer exists on the server.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    for _ in 0..500 {
        let mut stream = jetstream
            .get_stream("tr~jetstream~close")
            .await
            .expect("stream");
        if stream.info().await.expect("info").state.consumer_count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiter.is_finished(), "nothing is stored at 5 yet");
    store.close().await.expect("close");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("close wakes the waiter")
        .expect("join");
    assert!(
        matches!(answer, Err(StorageError::Closed)),
        "a waiter wakes with Closed, got {answer:?}"
    );
    let late = topic.append(vec![AppendRecord::new("late")]).await;
    assert!(matches!(late, Err(StorageError::Closed)), "got {late:?}");
}
