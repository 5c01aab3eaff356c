//! Conformance checks for [`EventStore`] backends, through the trait only, so that every backend
//! answers to the same suite.
//!
//! Each check is an async fn that panics on failure, like a test body, and works on its own
//! topics named `conformance.<check>...`; the store must hold no such topics to begin with. Keyed
//! records carry their key in the payload as well (see [`keyed`]), so a backend that rebuilds
//! its duplicate index from stored payloads is opened with [`key_of`] as its reader.
//! [`restart_persistence`] needs a way to reopen the store and so is not part of [`run_all`].
//!
//! ```no_run
//! # async fn demo(store: &dyn trellis_storage::EventStore) {
//! trellis_storage::conformance::run_all(store).await;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    AppendOutcome, AppendRecord, DedupKey, Durability, EventStore, StorageError, TopicSettings,
    TopicStore,
};

/// How long a check waits for something it expects before failing.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check that needs only one open store, one after another.
pub async fn run_all(store: &dyn EventStore) {
    dense_offsets_and_batch_order(store).await;
    reads_from_any_offset(store).await;
    wait_for_next_record(store).await;
    retention_by_size(store).await;
    retention_by_age(store).await;
    delete_and_recreate(store).await;
    settings_round_trip(store).await;
    duplicates_answer_first_offset(store).await;
    concurrent_duplicates_store_once(store).await;
    ordered_submission_under_concurrent_writers(store).await;
    error_cases(store).await;
}

/// A record whose payload starts with its key, so that [`key_of`] reads it back.
pub fn keyed(key: u128, body: &str) -> AppendRecord {
    AppendRecord::with_key(format!("key={key};{body}"), DedupKey(key))
}

/// The key a [`keyed`] payload carries.
pub fn key_of(payload: &[u8]) -> Option<DedupKey> {
    let text = std::str::from_utf8(payload).ok()?;
    let (key, _) = text.strip_prefix("key=")?.split_once(';')?;
    key.parse().ok().map(DedupKey)
}

fn plain(body: impl Into<String>) -> AppendRecord {
    AppendRecord::new(Bytes::from(body.into()))
}

/// Settings that make the checks fast: no fsync per append.
fn fast() -> TopicSettings {
    TopicSettings {
        durability: Durability::Never,
        ..TopicSettings::default()
    }
}

async fn create(
    store: &dyn EventStore,
    name: &str,
    settings: TopicSettings,
) -> Arc<dyn TopicStore> {
    store
        .create_topic(name, settings)
        .await
        .unwrap_or_else(|error| panic!("creating {name}: {error}"))
}

async fn append(topic: &dyn TopicStore, records: Vec<AppendRecord>) -> Vec<AppendOutcome> {
    topic
        .append(records)
        .await
        .unwrap_or_else(|error| panic!("appending to {}: {error}", topic.name()))
}

async fn payloads(topic: &dyn TopicStore, from: u64, max: usize) -> Vec<(u64, Bytes)> {
    topic
        .read(from, max, usize::MAX)
        .await
        .expect("read")
        .records
        .into_iter()
        .map(|record| (record.offset, record.payload))
        .collect()
}

pub async fn dense_offsets_and_batch_order(store: &dyn EventStore) {
    let topic = create(store, "conformance.dense", fast()).await;
    let info = topic.info().await.expect("info");
    assert_eq!(
        (info.first_offset, info.next_offset),
        (0, 0),
        "a new topic is empty at 0"
    );

    let first = append(&*topic, vec![plain("a"), plain("b"), plain("c")]).await;
    assert_eq!(
        first,
        vec![
            AppendOutcome::Stored(0),
            AppendOutcome::Stored(1),
            AppendOutcome::Stored(2)
        ],
        "a batch is answered in order, offsets dense from 0"
    );
    let second = append(&*topic, vec![plain("d"), plain("e")]).await;
    assert_eq!(
        second,
        vec![AppendOutcome::Stored(3), AppendOutcome::Stored(4)]
    );
    let read = payloads(&*topic, 0, 100).await;
    let expected: Vec<(u64, Bytes)> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(offset, body)| (offset as u64, Bytes::from(*body)))
        .collect();
    assert_eq!(
        read, expected,
        "records read back in order at their offsets"
    );
    let info = topic.info().await.expect("info");
    assert_eq!((info.first_offset, info.next_offset), (0, 5));
    assert!(info.size_bytes > 0, "a topic with records has a size");
}

pub async fn reads_from_any_offset(store: &dyn EventStore) {
    let topic = create(store, "conformance.reads", fast()).await;
    let records = (0..10).map(|i| plain(format!("record-{i:02}"))).collect();
    append(&*topic, records).await;
    for from in 0..10u64 {
        let read = payloads(&*topic, from, 100).await;
        assert_eq!(
            read.len() as u64,
            10 - from,
            "a read from {from} reaches the end"
        );
        assert_eq!(read[0], (from, Bytes::from(format!("record-{from:02}"))));
    }
    for past in [10, 11, 1_000_000, u64::MAX] {
        let page = topic
            .read(past, 100, usize::MAX)
            .await
            .expect("read past the end");
        assert!(page.records.is_empty(), "a read from {past} is empty");
        assert_eq!(page.damaged, None);
    }
    let capped = payloads(&*topic, 2, 3).await;
    assert_eq!(
        capped.iter().map(|(offset, _)| *offset).collect::<Vec<_>>(),
        vec![2, 3, 4],
        "max_records caps a read"
    );
    let one = topic.read(0, 100, 1).await.expect("read");
    assert_eq!(
        one.records.len(),
        1,
        "a read returns at least one record however small its byte cap"
    );
    let some = topic.read(0, 100, 3 * 9).await.expect("read");
    assert!(
        (1..=3).contains(&some.records.len()),
        "max_bytes caps a read: got {} records of 9 bytes for 27 bytes",
        some.records.len()
    );
}

pub async fn wait_for_next_record(store: &dyn EventStore) {
    let topic = create(store, "conformance.wait", fast()).await;
    append(&*topic, vec![plain("first")]).await;
    tokio::time::timeout(TIMEOUT, topic.wait_for(0))
        .await
        .expect("waiting for a stored record returns at once")
        .expect("wait_for");

    let waiting = Arc::clone(&topic);
    let waiter = tokio::spawn(async move { waiting.wait_for(1).await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "wait_for(next) waits for the record");
    append(&*topic, vec![plain("second")]).await;
    tokio::time::timeout(TIMEOUT, waiter)
        .await
        .expect("the waiter wakes when the record is stored")
        .expect("join")
        .expect("wait_for");

    // A record stored before the awaited one does not end the wait. The pauses give a backend
    // that waits through its server time to set the wait up, and to wake it wrongly.
    let waiting = Arc::clone(&topic);
    let gone = tokio::spawn(async move { waiting.wait_for(100).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&*topic, vec![plain("third")]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !gone.is_finished(),
        "wait_for(100) waits for record 100, not for the next record"
    );
    assert!(
        store
            .delete_topic("conformance.wait")
            .await
            .expect("delete")
    );
    let answer = tokio::time::timeout(TIMEOUT, gone)
        .await
        .expect("a waiter wakes when its topic is deleted")
        .expect("join");
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "a waiter on a deleted topic gets NoSuchTopic, got {answer:?}"
    );
}

async fn fill(topic: &dyn TopicStore, n_records: usize, size: usize) {
    for chunk in 0..n_records / 10 {
        let records = (0..10)
            .map(|i| plain(format!("{:0size$}", chunk * 10 + i)))
            .collect();
        append(topic, records).await;
    }
}

pub async fn retention_by_size(store: &dyn EventStore) {
    let settings = TopicSettings {
        segment_bytes: 2048,
        retention_bytes: Some(8192),
        ..fast()
    };
    let topic = create(store, "conformance.retention_size", settings).await;
    fill(&*topic, 200, 200).await;
    store.enforce_retention().await.expect("enforce_retention");
    let info = topic.info().await.expect("info");
    assert_eq!(
        info.next_offset, 200,
        "retention never changes the next offset"
    );
    assert!(
        info.first_offset > 0,
        "40 KB in a topic kept to 8 KB lose their oldest records"
    );
    assert!(
        info.size_bytes <= 8192 + 2 * 2048,
        "the topic is about its retention size, got {} bytes",
        info.size_bytes
    );
    let kept = payloads(&*topic, info.first_offset, 1000).await;
    assert_eq!(
        kept.len() as u64,
        200 - info.first_offset,
        "what is kept is dense"
    );
    assert_eq!(kept[0].0, info.first_offset);
    match topic.read(0, 10, usize::MAX).await {
        Err(StorageError::OffsetTruncated {
            offset: 0,
            first_offset,
        }) => assert_eq!(first_offset, info.first_offset),
        other => panic!("a read below the first offset is OffsetTruncated, got {other:?}"),
    }
}

pub async fn retention_by_age(store: &dyn EventStore) {
    let settings = TopicSettings {
        segment_bytes: 2048,
        retention_age: Some(Duration::from_millis(100)),
        ..fast()
    };
    let topic = create(store, "conformance.retention_age", settings).await;
    fill(&*topic, 100, 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.enforce_retention().await.expect("enforce_retention");
    let info = topic.info().await.expect("info");
    assert_eq!(
        info.next_offset, 100,
        "retention never changes the next offset"
    );
    assert!(
        info.first_offset > 0,
        "records older than the retention age are removed"
    );
    append(&*topic, vec![plain("fresh")]).await;
    let last = payloads(&*topic, 100, 10).await;
    assert_eq!(last, vec![(100, Bytes::from("fresh"))]);
}

pub async fn delete_and_recreate(store: &dyn EventStore) {
    let name = "conformance.delete";
    let old = create(store, name, fast()).await;
    append(&*old, vec![keyed(7, "a"), plain("b"), plain("c")]).await;
    assert!(
        store.delete_topic(name).await.expect("delete"),
        "deleting a topic reports true"
    );
    assert!(
        !store.delete_topic(name).await.expect("delete"),
        "deleting it again reports false"
    );
    assert!(
        store.topic(name).await.expect("topic").is_none(),
        "a deleted topic is gone"
    );
    assert!(
        !store
            .list_topics()
            .await
            .expect("list")
            .iter()
            .any(|info| info.name == name),
        "a deleted topic is not listed"
    );
    let answer = old.append(vec![plain("late")]).await;
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "appending through an old handle fails, got {answer:?}"
    );
    let answer = old.read(0, 10, usize::MAX).await;
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "reading through an old handle fails, got {answer:?}"
    );
    let answer = old.info().await;
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "an old handle's info fails, got {answer:?}"
    );
    let answer = old.configure(fast()).await;
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "configuring through an old handle fails, got {answer:?}"
    );

    let new = create(store, name, fast()).await;
    // A handle stays with its topic: the one created again under the name is another.
    let answer = old.read(0, 10, usize::MAX).await;
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "reading through an old handle fails after the topic is created again, got {answer:?}"
    );
    let answer = old.info().await;
    assert!(
        matches!(answer, Err(StorageError::NoSuchTopic(_))),
        "an old handle's info fails after the topic is created again, got {answer:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), old.wait_for(3)).await;
    assert!(
        matches!(answer, Ok(Err(StorageError::NoSuchTopic(_)))),
        "waiting through an old handle fails after the topic is created again, got {answer:?}"
    );
    let info = new.info().await.expect("info");
    assert_eq!(
        (info.first_offset, info.next_offset),
        (0, 0),
        "a re-created topic starts at 0"
    );
    assert_eq!(
        append(&*new, vec![keyed(7, "a again")]).await,
        vec![AppendOutcome::Stored(0)],
        "a re-created topic remembers no keys of the old one"
    );
    assert_eq!(payloads(&*new, 0, 10).await.len(), 1);
}

pub async fn settings_round_trip(store: &dyn EventStore) {
    let name = "conformance.settings";
    let first = TopicSettings {
        durability: Durability::Always,
        segment_bytes: 1024 * 1024,
        retention_age: Some(Duration::from_secs(3600)),
        retention_bytes: Some(10 * 1024 * 1024),
    };
    let topic = create(store, name, first.clone()).await;
    assert_eq!(topic.info().await.expect("info").settings, first);
    let second = TopicSettings {
        durability: Durability::Interval(Duration::from_millis(50)),
        segment_bytes: 2 * 1024 * 1024,
        retention_age: None,
        retention_bytes: None,
    };
    topic.configure(second.clone()).await.expect("configure");
    assert_eq!(
        topic.info().await.expect("info").settings,
        second,
        "settings read back as configured"
    );
    let again = store
        .get_or_create_topic(name, first.clone())
        .await
        .expect("get_or_create");
    assert_eq!(
        again.info().await.expect("info").settings,
        second,
        "get_or_create keeps an existing topic's settings"
    );
    let listed = store.list_topics().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "topics are listed by name");
    let info = listed
        .iter()
        .find(|info| info.name == name)
        .expect("the topic is listed");
    assert_eq!(info.settings, second, "the listing shows the settings");
}

pub async fn duplicates_answer_first_offset(store: &dyn EventStore) {
    let topic = create(store, "conformance.dedup", fast()).await;
    assert_eq!(
        append(&*topic, vec![plain("x"), keyed(1, "one")]).await,
        vec![AppendOutcome::Stored(0), AppendOutcome::Stored(1)]
    );
    assert_eq!(
        append(
            &*topic,
            vec![
                keyed(1, "one"),
                keyed(2, "two"),
                keyed(2, "two"),
                plain("y")
            ]
        )
        .await,
        vec![
            AppendOutcome::Duplicate(1),
            AppendOutcome::Stored(2),
            AppendOutcome::Duplicate(2),
            AppendOutcome::Stored(3)
        ],
        "a repeat, earlier or in the same batch, is answered with the first copy's offset"
    );
    assert_eq!(
        append(&*topic, vec![keyed(2, "two"), keyed(1, "one")]).await,
        vec![AppendOutcome::Duplicate(2), AppendOutcome::Duplicate(1)],
        "a batch of duplicates only is answered without storing"
    );
    assert_eq!(
        append(&*topic, vec![plain("x")]).await,
        vec![AppendOutcome::Stored(4)],
        "records without a key are never duplicates"
    );
    assert_eq!(topic.info().await.expect("info").next_offset, 5);
}

pub async fn concurrent_duplicates_store_once(store: &dyn EventStore) {
    let topic = create(store, "conformance.dedup_race", fast()).await;
    for round in 0..5u128 {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let topic = Arc::clone(&topic);
                tokio::spawn(async move {
                    topic
                        .append(vec![keyed(100 + round, "same"), keyed(200 + round, "also")])
                        .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("join").expect("append"));
        }
        let stored = outcomes
            .iter()
            .flatten()
            .filter(|outcome| matches!(outcome, AppendOutcome::Stored(_)))
            .count();
        assert_eq!(stored, 2, "round {round}: each key is stored once");
        assert!(
            outcomes
                .windows(2)
                .all(|pair| pair[0][0].offset() == pair[1][0].offset()
                    && pair[0][1].offset() == pair[1][1].offset()),
            "round {round}: every copy is answered with one offset: {outcomes:?}"
        );
    }
    assert_eq!(topic.info().await.expect("info").next_offset, 10);
}

pub async fn ordered_submission_under_concurrent_writers(store: &dyn EventStore) {
    let topic = create(store, "conformance.ordered", fast()).await;
    let writers: Vec<_> = (0..4u128)
        .map(|writer| {
            let topic = Arc::clone(&topic);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for batch in 0..50u128 {
                    // Every second batch repeats the key of the one before: a stream that
                    // submits before it awaits must still see it answered as a duplicate.
                    let key = writer * 1000 + batch - batch % 2;
                    let records = vec![
                        plain(format!("{writer}:{batch}:a")),
                        keyed(key, &format!("{writer}:{batch}:b")),
                    ];
                    pending.push(topic.submit(records).await.expect("submit"));
                }
                let mut answers = Vec::new();
                for answer in pending {
                    answers.push(answer.await.expect("append"));
                }
                answers
            })
        })
        .collect();
    let mut all = Vec::new();
    for (writer, task) in writers.into_iter().enumerate() {
        let answers = tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("submitted batches are answered without being awaited in turn")
            .expect("join");
        let offsets: Vec<u64> = answers.iter().map(|answer| answer[0].offset()).collect();
        assert!(
            offsets.windows(2).all(|pair| pair[0] < pair[1]),
            "writer {writer}: batches are stored in submission order: {offsets:?}"
        );
        for (batch, answer) in answers.iter().enumerate() {
            if batch % 2 == 1 {
                assert_eq!(
                    answer[1],
                    AppendOutcome::Duplicate(answers[batch - 1][1].offset()),
                    "writer {writer} batch {batch}: a repeated key is a duplicate"
                );
            }
        }
        all.extend(
            answers
                .into_iter()
                .flatten()
                .filter_map(|outcome| match outcome {
                    AppendOutcome::Stored(offset) => Some(offset),
                    AppendOutcome::Duplicate(_) => None,
                }),
        );
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..300).collect::<Vec<u64>>(),
        "offsets are dense and unique"
    );
    let read = payloads(&*topic, 0, 1000).await;
    for writer in 0..4 {
        let mine: Vec<String> = read
            .iter()
            .map(|(_, payload)| String::from_utf8_lossy(payload).into_owned())
            .filter(|text| text.starts_with(&format!("{writer}:")))
            .collect();
        let batches: Vec<u128> = mine
            .iter()
            .filter_map(|text| text.split(':').nth(1)?.parse().ok())
            .collect();
        assert!(
            batches.windows(2).all(|pair| pair[0] <= pair[1]),
            "writer {writer}'s records are stored in its order"
        );
    }
}

pub async fn error_cases(store: &dyn EventStore) {
    let name = "conformance.errors";
    let topic = create(store, name, fast()).await;
    let again = store.create_topic(name, fast()).await;
    assert!(
        matches!(again, Err(StorageError::TopicExists(_))),
        "creating an existing topic fails, got {again:?}"
    );
    for bad in ["", ".", "..", "a/b", "with space", &"x".repeat(250)] {
        let answer = store.create_topic(bad, fast()).await;
        assert!(
            matches!(answer, Err(StorageError::InvalidTopicName { .. })),
            "the name {bad:?} is refused, got {answer:?}"
        );
    }
    let empty = topic.append(Vec::new()).await;
    assert!(
        matches!(empty, Err(StorageError::EmptyAppend)),
        "an empty append fails, got {empty:?}"
    );
    let empty = topic.submit(Vec::new()).await;
    assert!(matches!(empty, Err(StorageError::EmptyAppend)));
    let huge = topic
        .append(vec![
            keyed(9, "small"),
            AppendRecord::new(vec![0u8; 65 * 1024 * 1024]),
        ])
        .await;
    assert!(
        matches!(huge, Err(StorageError::RecordTooLarge { .. })),
        "a record over the limit fails"
    );
    assert_eq!(
        topic.info().await.expect("info").next_offset,
        0,
        "a failed batch stores nothing"
    );
    assert_eq!(
        append(&*topic, vec![keyed(9, "small")]).await,
        vec![AppendOutcome::Stored(0)],
        "a failed batch leaves its keys free for the retry"
    );
    assert!(
        store
            .topic("conformance.missing")
            .await
            .expect("topic")
            .is_none()
    );
    assert!(
        !store
            .delete_topic("conformance.missing")
            .await
            .expect("delete")
    );
}

/// Writes, closes the store, reopens it with `reopen` and checks that records, offsets and
/// duplicate answers survived. Appends after `close` must fail with `Closed`.
pub async fn restart_persistence<F, Fut>(store: Arc<dyn EventStore>, reopen: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    let name = "conformance.restart";
    let topic = create(&*store, name, TopicSettings::default()).await;
    let stored = append(&*topic, vec![plain("a"), keyed(42, "answer"), plain("c")]).await;
    assert_eq!(stored[1], AppendOutcome::Stored(1));
    store.close().await.expect("close");
    let late = topic.append(vec![plain("late")]).await;
    assert!(
        matches!(late, Err(StorageError::Closed)),
        "an append after close fails with Closed, got {late:?}"
    );
    drop(topic);
    drop(store);

    let store = reopen().await;
    let topic = store
        .topic(name)
        .await
        .expect("topic")
        .expect("the topic survives a restart");
    let read = payloads(&*topic, 0, 10).await;
    assert_eq!(
        read.iter().map(|(offset, _)| *offset).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "records survive a restart at their offsets"
    );
    assert_eq!(read[0].1, Bytes::from("a"));
    assert_eq!(
        append(&*topic, vec![keyed(42, "answer"), plain("d")]).await,
        vec![AppendOutcome::Duplicate(1), AppendOutcome::Stored(3)],
        "duplicates are recognised across a restart, and offsets go on"
    );
}
