//! What the embedded backend does beyond the conformance suite: damage on disk, and the limits of
//! its in-memory duplicate index.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trellis_storage::conformance::{key_of, keyed};
use trellis_storage::{
    AppendOutcome, AppendRecord, Durability, EmbeddedOptions, EmbeddedStore, EventStore,
    TopicSettings,
};

fn open(dir: &Path, configure: impl FnOnce(&mut EmbeddedOptions)) -> EmbeddedStore {
    let mut options = EmbeddedOptions::new(dir);
    options.key_of = Some(Arc::new(key_of));
    configure(&mut options);
    EmbeddedStore::open(options).expect("open the embedded store")
}

fn fast() -> TopicSettings {
    TopicSettings {
        durability: Durability::Never,
        segment_bytes: 1024,
        ..TopicSettings::default()
    }
}

#[tokio::test]
async fn a_damaged_record_is_reported_with_the_offset_to_go_on_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), |_| {});
    let topic = store.create_topic("damaged", fast()).await.expect("create");
    for batch in 0..4 {
        let records = (0..10)
            .map(|i| AppendRecord::new(format!("{:0100}", batch * 10 + i)))
            .collect();
        topic.append(records).await.expect("append");
    }
    // Flip a payload byte of record 0, the first frame of the first (sealed) segment; a frame's
    // header is 25 bytes.
    let segment = dir.path().join("damaged").join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    bytes[30] ^= 0x40;
    std::fs::write(&segment, bytes).expect("damage the segment");

    let page = topic.read(0, 100, usize::MAX).await.expect("read");
    assert!(
        page.records.is_empty(),
        "nothing readable before the damage"
    );
    let range = page.damaged.expect("the damage is reported");
    assert_eq!((range.first_offset, range.next_offset), (0, 1));
    let after = topic
        .read(range.next_offset, 100, usize::MAX)
        .await
        .expect("read after the damage");
    assert_eq!(after.records.first().map(|record| record.offset), Some(1));
    let info = topic.info().await.expect("info");
    assert_eq!(
        info.damaged
            .iter()
            .map(|range| (range.first_offset, range.next_offset))
            .collect::<Vec<_>>(),
        vec![(0, 1)],
        "the topic's info lists the damage a read met"
    );
}

#[tokio::test]
async fn a_key_is_forgotten_after_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), |options| {
        options.dedup_window = Duration::from_millis(50);
    });
    let topic = store.create_topic("window", fast()).await.expect("create");
    let first = topic.append(vec![keyed(1, "a")]).await.expect("append");
    assert_eq!(first, vec![AppendOutcome::Stored(0)]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = topic.append(vec![keyed(1, "a")]).await.expect("append");
    assert_eq!(
        again,
        vec![AppendOutcome::Stored(1)],
        "a repeat after the window is a new event"
    );
}

#[tokio::test]
async fn the_oldest_keys_are_forgotten_beyond_the_capacity_over_all_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), |options| options.dedup_max_entries = 3);
    let first = store.create_topic("first", fast()).await.expect("create");
    let second = store.create_topic("second", fast()).await.expect("create");
    first
        .append(vec![keyed(0, "x"), keyed(1, "x")])
        .await
        .expect("append");
    second
        .append(vec![keyed(0, "x"), keyed(1, "x")])
        .await
        .expect("append");
    assert_eq!(
        store.remembered_keys(),
        3,
        "the capacity bounds all topics together"
    );
    let again = first
        .append(vec![keyed(0, "x"), keyed(1, "x")])
        .await
        .expect("append");
    assert_eq!(
        again,
        vec![AppendOutcome::Stored(2), AppendOutcome::Duplicate(1)],
        "the oldest key is forgotten, newer ones remembered"
    );
    let again = second.append(vec![keyed(1, "x")]).await.expect("append");
    assert_eq!(
        again,
        vec![AppendOutcome::Duplicate(1)],
        "topics keep their keys apart"
    );
}

#[tokio::test]
async fn a_zero_window_turns_deduplication_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), |options| options.dedup_window = Duration::ZERO);
    let topic = store.create_topic("off", fast()).await.expect("create");
    let outcomes = topic
        .append(vec![keyed(1, "a"), keyed(1, "a")])
        .await
        .expect("append");
    assert_eq!(
        outcomes,
        vec![AppendOutcome::Stored(0), AppendOutcome::Stored(1)]
    );
}

#[tokio::test]
async fn the_dedup_memory_is_reported_through_the_trait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn EventStore> = Arc::new(open(dir.path(), |_| {}));
    let empty = store
        .dedup_usage()
        .expect("the embedded store reports its index");
    assert_eq!(empty.remembered_keys, 0);
    let topic = store.create_topic("usage", fast()).await.expect("create");
    topic
        .append((0..100).map(|i| keyed(i, "x")).collect())
        .await
        .expect("append");
    let usage = store.dedup_usage().expect("usage");
    assert_eq!(usage.remembered_keys, 100, "one key per stored event");
    assert!(
        usage.memory_bytes >= 100 * 16,
        "at least the keys themselves are counted: {usage:?}"
    );
}
