//! Behaviour only the embedded store has: a persisted revision across reopens, one open handle
//! per file, the in-memory history ring, lagging watchers, and streams ending with the store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use trellis_meta::{
    CasOutcome, EmbeddedError, EmbeddedOptions, EmbeddedStore, Expect, MetaError, MetadataStore,
    WatchEvent, WatchStream,
};

use crate::{fresh_store, fresh_store_with, store_path};

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn fresh_store_starts_at_revision_one() {
    let (_dir, store) = fresh_store();
    let range = store.range("").await.expect("range");
    assert!(range.kvs.is_empty());
    assert_eq!(range.revision, 1, "etcd's empty store is at revision 1");
    assert_eq!(
        store.put("k", Bytes::from("v")).await.expect("put"),
        2,
        "the first write is revision 2"
    );
}

#[tokio::test]
async fn data_and_revision_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    let before = {
        let store = EmbeddedStore::open(&path).expect("open");
        store.put("topics/a", Bytes::from("1")).await.expect("put");
        store.put("topics/a", Bytes::from("2")).await.expect("put");
        store.put("topics/b", Bytes::from("3")).await.expect("put");
        store
            .put("topics/c", Bytes::from("gone"))
            .await
            .expect("put");
        assert!(store.delete("topics/c").await.expect("delete"));
        store.range("").await.expect("range")
    };
    assert_eq!(before.revision, 6);

    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(
        store.range("").await.expect("range"),
        before,
        "same keys, same bookkeeping, same revision"
    );
    assert_eq!(
        store.put("topics/a", Bytes::from("3")).await.expect("put"),
        7,
        "the revision continues"
    );
    let kv = store.get("topics/a").await.expect("get").expect("present");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (2, 7, 3),
        "the version continues"
    );
}

#[tokio::test]
async fn history_starts_empty_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    {
        let store = EmbeddedStore::open(&path).expect("open");
        for _ in 0..3 {
            store.put("k", Bytes::from("v")).await.expect("put");
        }
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    check_compacted(store.watch("", Some(4)).await, 4, 5);
    check_compacted(store.watch("", Some(1)).await, 1, 5);

    let mut stream = store
        .watch("", Some(5))
        .await
        .expect("watch from the reopened revision + 1");
    let revision = store.put("k", Bytes::from("after")).await.expect("put");
    assert_eq!(next_event(&mut stream).await.mod_revision(), revision);
}

#[tokio::test]
async fn watch_older_than_history_is_compacted() {
    let (_dir, store) = fresh_store_with(EmbeddedOptions::new().history_capacity(4));
    for idx in 0..10 {
        store
            .put(&format!("k{idx}"), Bytes::from("v"))
            .await
            .expect("put");
    }
    // Revisions 2..=11 were written; the ring keeps the last four, 8..=11.
    check_compacted(store.watch("", Some(7)).await, 7, 8);
    let mut stream = store
        .watch("", Some(8))
        .await
        .expect("watch from the oldest retained revision");
    let replayed: Vec<u64> = next_events(&mut stream, 4)
        .await
        .iter()
        .map(WatchEvent::mod_revision)
        .collect();
    assert_eq!(replayed, [8, 9, 10, 11]);
}

#[tokio::test]
async fn watch_from_zero_on_fresh_store_replays_everything() {
    let (_dir, store) = fresh_store();
    store.put("a", Bytes::from("1")).await.expect("put");
    store.put("b", Bytes::from("2")).await.expect("put");
    let mut stream = store.watch("", Some(0)).await.expect("watch");
    let replayed: Vec<u64> = next_events(&mut stream, 2)
        .await
        .iter()
        .map(WatchEvent::mod_revision)
        .collect();
    assert_eq!(replayed, [2, 3]);
}

#[tokio::test]
async fn lagging_watcher_catches_up_from_history() {
    let (_dir, store) =
        fresh_store_with(EmbeddedOptions::new().watch_buffer(4).history_capacity(100));
    let mut stream = store.watch("", None).await.expect("watch");
    for idx in 0..20 {
        store
            .put(&format!("k{idx}"), Bytes::from("v"))
            .await
            .expect("put");
    }
    let seen: Vec<u64> = next_events(&mut stream, 20)
        .await
        .iter()
        .map(WatchEvent::mod_revision)
        .collect();
    assert_eq!(
        seen,
        (2..=21).collect::<Vec<u64>>(),
        "no gap, no duplicate across the resume"
    );
    store.put("last", Bytes::from("v")).await.expect("put");
    assert_eq!(
        next_event(&mut stream).await.mod_revision(),
        22,
        "back on the live feed"
    );
}

#[tokio::test]
async fn lagging_watcher_past_history_gets_compacted_then_ends() {
    let (_dir, store) =
        fresh_store_with(EmbeddedOptions::new().watch_buffer(4).history_capacity(8));
    let mut stream = store.watch("", None).await.expect("watch");
    for idx in 0..20 {
        store
            .put(&format!("k{idx}"), Bytes::from("v"))
            .await
            .expect("put");
    }
    // Revisions 2..=5 fit the buffer; 6 did not, and the ring has moved on to 14..=21.
    let buffered: Vec<u64> = next_events(&mut stream, 4)
        .await
        .iter()
        .map(WatchEvent::mod_revision)
        .collect();
    assert_eq!(buffered, [2, 3, 4, 5]);
    let item = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("an item in time");
    let Some(Err(MetaError::Compacted { requested, oldest })) = item else {
        panic!("expected a compacted error, got {item:?}");
    };
    assert_eq!((requested, oldest), (6, 14));
    let item = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("an item in time");
    assert!(
        item.is_none(),
        "the stream ends after the error, got {item:?}"
    );
}

#[tokio::test]
async fn watch_stream_ends_when_store_is_dropped() {
    let (_dir, store) = fresh_store();
    let mut live = store.watch("", None).await.expect("watch");
    store.put("k", Bytes::from("v")).await.expect("put");
    let mut replaying = store.watch("", Some(2)).await.expect("watch");
    drop(store);
    assert_eq!(
        next_event(&mut live).await.mod_revision(),
        2,
        "buffered events are still delivered"
    );
    assert_eq!(next_event(&mut replaying).await.mod_revision(), 2);
    for stream in [&mut live, &mut replaying] {
        let item = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("the stream ends in time");
        assert!(item.is_none(), "got {item:?}");
    }
}

#[tokio::test]
async fn second_open_of_the_same_file_fails_naming_the_path() {
    let (dir, store) = fresh_store();
    let path = store_path(&dir);
    let Err(error) = EmbeddedStore::open(&path) else {
        panic!("a second open of {} succeeded", path.display());
    };
    let MetaError::Storage(source) = &error else {
        panic!("expected a storage error, got {error:?}");
    };
    assert!(
        matches!(
            source.downcast_ref::<EmbeddedError>(),
            Some(EmbeddedError::AlreadyOpen { .. })
        ),
        "got {source:?}"
    );
    let message = source.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the message names the path: {message}"
    );
    assert!(message.contains("already open"), "{message}");

    drop(store);
    EmbeddedStore::open(&path).expect("open once the first handle is gone");
}

#[tokio::test]
async fn open_of_a_file_that_is_not_a_store_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    std::fs::write(
        &path,
        b"this is not a redb file, just some bytes that are long enough",
    )
    .expect("write");
    let res = EmbeddedStore::open(&path);
    assert!(matches!(res, Err(MetaError::Storage(_))), "got {res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_from_spawned_tasks_has_one_winner_per_round() {
    const N_ROUNDS: usize = 10;
    const N_TASKS: usize = 16;
    let (_dir, store) = fresh_store();
    let store: Arc<dyn MetadataStore> = Arc::new(store);
    let mut expect = Expect::Absent;
    for round in 0..N_ROUNDS {
        let tasks: Vec<_> = (0..N_TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .compare_and_set("leader", expect, Bytes::from(format!("{round}/{task}")))
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            if let CasOutcome::Written { revision } =
                task.await.expect("task").expect("compare_and_set")
            {
                winners.push(revision);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner, got {winners:?}"
        );
        expect = Expect::ModRevision(winners[0]);
    }
    let kv = store.get("leader").await.expect("get").expect("present");
    assert_eq!(kv.version, N_ROUNDS as u64);
    assert_eq!(
        store.range("").await.expect("range").revision,
        1 + N_ROUNDS as u64,
        "losers wrote nothing"
    );
}

#[track_caller]
fn check_compacted(
    res: Result<WatchStream, MetaError>,
    expected_requested: u64,
    expected_oldest: u64,
) {
    match res {
        Err(MetaError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (expected_requested, expected_oldest));
        }
        Err(error) => panic!("expected a compacted error, got {error:?}"),
        Ok(_) => panic!("expected a compacted error, got a stream"),
    }
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

async fn next_events(stream: &mut WatchStream, n_events: usize) -> Vec<WatchEvent> {
    let mut res = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        res.push(next_event(stream).await);
    }
    res
}

/// A lease left in the file belonged to a process that is gone (one process holds the file):
/// the reopen ends it and deletes its keys at once, so a restarted node owns its work without
/// waiting a TTL; the lease is gone for keep-alive too, and lease ids are not handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_end_at_reopen() {
    use trellis_meta::GuardedPut;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    let (lease, revision_before) = {
        let store = EmbeddedStore::open(&path).expect("open");
        let lease = store
            .lease_grant(Duration::from_secs(60))
            .await
            .expect("lease_grant");
        store
            .guarded_put(GuardedPut::new("owners/a", "me").lease(lease.id))
            .await
            .expect("guarded_put");
        store.put("plain", Bytes::from("kept")).await.expect("put");
        (lease, store.range("").await.expect("range").revision)
    };
    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(
        store.get("owners/a").await.expect("get"),
        None,
        "the key under the dead process's lease is gone right after the reopen"
    );
    assert!(
        store.get("plain").await.expect("get").is_some(),
        "keys under no lease stay"
    );
    assert_eq!(
        store.range("").await.expect("range").revision,
        revision_before + 1,
        "the delete used a revision, as an expiry does"
    );
    assert_eq!(
        store.lease_keep_alive(lease.id).await.expect("keep_alive"),
        None,
        "the old lease no longer exists"
    );
    let next = store
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("lease_grant");
    assert!(next.id > lease.id, "lease ids are not reused");
}
