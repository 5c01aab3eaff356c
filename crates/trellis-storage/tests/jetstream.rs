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
use trellis_test_support::NatsServer;

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
