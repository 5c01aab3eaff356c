//! The offset writer and store against the real embedded store, through a fault injector.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::FaultyStore;
use trellis_connect::offsets::{FlushOutcome, OffsetReader, OffsetStore, OffsetWriter};
use trellis_connect::{Offset, Partition, Position};
use trellis_meta::{EmbeddedStore, MetadataStore};

const LONG: Duration = Duration::from_secs(300);

fn p(name: &str) -> Partition {
    Partition::new(name)
}

#[tokio::test]
async fn offsets_live_under_the_connector_prefix_as_json_positions_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    {
        let meta: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(&path).expect("open"));
        let writer = OffsetWriter::new(OffsetStore::new(meta.clone(), "tail logs"), LONG);
        writer.write_offset(p("/var/log/app.log"), Offset(4096));
        assert_eq!(
            writer.commit().await,
            FlushOutcome::Committed { partitions: 1 }
        );
        let kv = meta
            .get("/connectors/tail%20logs/offsets/%2Fvar%2Flog%2Fapp.log")
            .await
            .expect("get")
            .expect("the offset's key");
        assert_eq!(
            &kv.value[..],
            br#"{"partition":"/var/log/app.log","offset":4096}"#
        );
    }
    let meta: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(&path).expect("reopen"));
    let reader = OffsetReader::new(OffsetStore::new(meta, "tail logs"));
    assert_eq!(
        reader.positions().await.expect("read"),
        vec![Position::new("/var/log/app.log", 4096)]
    );
}

#[tokio::test]
async fn deleting_a_connectors_offsets_leaves_other_connectors_alone() {
    let faulty = FaultyStore::new();
    let one = OffsetStore::new(faulty.clone(), "a");
    let other = OffsetStore::new(faulty.clone(), "ab");
    for store in [&one, &other] {
        let writer = OffsetWriter::new(store.clone(), LONG);
        writer.write_offsets([(p("x"), Offset(1)), (p("y"), Offset(2))]);
        assert!(matches!(
            writer.commit().await,
            FlushOutcome::Committed { .. }
        ));
    }
    assert_eq!(one.delete_all().await.expect("delete"), 2);
    assert!(one.read_all().await.expect("read").is_empty());
    assert_eq!(other.read_all().await.expect("read").len(), 2);
}

#[tokio::test]
async fn a_cancelled_flush_merges_back_under_newer_offsets() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "c");
    let writer = OffsetWriter::new(store.clone(), LONG);
    writer.write_offsets([(p("a"), Offset(1)), (p("b"), Offset(1))]);
    assert!(writer.begin_flush());
    writer.write_offset(p("a"), Offset(2));
    assert!(writer.cancel_flush());
    assert!(!writer.cancel_flush(), "nothing left to cancel");
    let unflushed = writer.unflushed();
    assert_eq!(unflushed.get(&p("a")), Some(&Offset(2)));
    assert_eq!(unflushed.get(&p("b")), Some(&Offset(1)));
    assert_eq!(
        writer.commit().await,
        FlushOutcome::Committed { partitions: 2 }
    );
    let committed = store.read_all().await.expect("read");
    assert_eq!(committed.get(&p("a")), Some(&Offset(2)));
    assert_eq!(committed.get(&p("b")), Some(&Offset(1)));
}

#[tokio::test]
async fn a_stale_flush_id_changes_nothing() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "c");
    let writer = OffsetWriter::new(store.clone(), LONG);
    writer.write_offset(p("a"), Offset(1));
    assert!(writer.begin_flush());
    faulty.hold();
    let first = writer.do_flush().expect("first flush");
    assert!(writer.do_flush().is_none(), "one write per flush");
    assert!(writer.cancel_flush());
    writer.write_offset(p("a"), Offset(2));
    assert!(writer.begin_flush());
    assert!(
        !writer.cancel_flush_id(first.id()),
        "a stale cancel is a no-op"
    );
    assert!(writer.is_flushing());
    let second = writer.do_flush().expect("second flush");
    assert_ne!(first.id(), second.id());
    faulty.release();
    assert_eq!(first.await, FlushOutcome::Superseded);
    assert_eq!(second.await, FlushOutcome::Committed { partitions: 1 });
    assert_eq!(store.read(&p("a")).await.expect("read"), Some(Offset(2)));
}

#[tokio::test]
async fn a_failed_flush_keeps_its_offsets_for_the_next_one() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "c");
    let writer = OffsetWriter::new(store.clone(), LONG);
    writer.write_offset(p("a"), Offset(7));
    faulty.fail_puts(true);
    assert_eq!(writer.commit().await, FlushOutcome::Failed);
    assert_eq!(writer.unflushed().get(&p("a")), Some(&Offset(7)));
    assert_eq!(writer.stats().failures, 1);
    faulty.fail_puts(false);
    assert_eq!(
        writer.commit().await,
        FlushOutcome::Committed { partitions: 1 }
    );
    assert_eq!(store.read(&p("a")).await.expect("read"), Some(Offset(7)));
}

#[tokio::test]
async fn a_timed_out_flush_is_retried_and_its_late_write_never_lands_after_a_newer_one() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "c");
    let writer = OffsetWriter::new(store.clone(), Duration::from_millis(100));
    writer.write_offset(p("a"), Offset(1));
    faulty.hold();
    assert_eq!(writer.commit().await, FlushOutcome::TimedOut);
    assert!(!writer.is_flushing());
    assert_eq!(writer.unflushed().get(&p("a")), Some(&Offset(1)));
    writer.write_offset(p("a"), Offset(2));
    assert!(writer.begin_flush());
    let retry = writer.do_flush().expect("retry");
    // The timed-out write is still waiting in the store; both go through now, in order.
    faulty.release();
    assert_eq!(retry.await, FlushOutcome::Committed { partitions: 1 });
    assert_eq!(store.read(&p("a")).await.expect("read"), Some(Offset(2)));
}

#[tokio::test]
async fn a_write_that_outlived_its_flush_lands_before_the_retry_not_after() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "c");
    let writer = OffsetWriter::new(store.clone(), Duration::from_millis(100));
    writer.write_offset(p("a"), Offset(1));
    // Only the old offset's write is slow; the retry's own write could go through at once.
    faulty.hold_values_containing(r#""offset":1}"#);
    assert_eq!(writer.commit().await, FlushOutcome::TimedOut);
    writer.write_offset(p("a"), Offset(2));
    assert!(writer.begin_flush());
    let retry = writer.do_flush().expect("retry");
    tokio::task::yield_now().await;
    faulty.release();
    assert_eq!(retry.await, FlushOutcome::Committed { partitions: 1 });
    while faulty.puts_finished() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        store.read(&p("a")).await.expect("read"),
        Some(Offset(2)),
        "the stale write must not overwrite the newer offset"
    );
}

#[tokio::test]
async fn nothing_staged_is_not_a_refusal_and_do_flush_needs_a_begun_flush() {
    let faulty = FaultyStore::new();
    let writer = OffsetWriter::new(OffsetStore::new(faulty, "c"), LONG);
    assert!(!writer.begin_flush());
    assert_eq!(writer.commit().await, FlushOutcome::NothingStaged);
    assert!(writer.do_flush().is_none());
    assert_eq!(writer.stats().begin_flush_refused, 0);
}

#[test]
fn without_a_runtime_do_flush_gives_up_and_keeps_the_offsets() {
    let faulty = FaultyStore::new();
    let writer = OffsetWriter::new(OffsetStore::new(faulty, "c"), LONG);
    writer.write_offset(p("a"), Offset(3));
    assert!(writer.begin_flush());
    assert!(writer.do_flush().is_none());
    assert!(!writer.is_flushing());
    assert_eq!(writer.unflushed().get(&p("a")), Some(&Offset(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_staging_and_flushing_lose_no_offset() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "c");
    let writer = OffsetWriter::new(store.clone(), LONG);
    const WRITERS: usize = 4;
    const WRITES: u64 = 2_000;
    let stagers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for offset in 1..=WRITES {
                    writer.write_offset(p(&format!("p{i}")), Offset(offset));
                }
            })
        })
        .collect();
    // Flush while the threads stage; refusals and empty rounds are expected along the way.
    while stagers.iter().any(|stager| !stager.is_finished()) {
        writer.commit().await;
        tokio::task::yield_now().await;
    }
    for stager in stagers {
        stager.join().expect("stager");
    }
    while !matches!(writer.commit().await, FlushOutcome::NothingStaged) {}
    let committed = store.read_all().await.expect("read");
    for i in 0..WRITERS {
        assert_eq!(committed.get(&p(&format!("p{i}"))), Some(&Offset(WRITES)));
    }
}

/// An ownership fence as a cluster replica has one: the owner key's revision when the term
/// began, and whether the lease is provably alive.
struct Owner {
    key: String,
    revision: u64,
    alive: std::sync::atomic::AtomicBool,
}

impl trellis_connect::OffsetGuard for Owner {
    fn holds(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn guard(&self, put: trellis_meta::GuardedPut) -> trellis_meta::GuardedPut {
        put.guard(
            self.key.clone(),
            trellis_meta::Expect::ModRevision(self.revision),
        )
    }
}

#[tokio::test]
async fn a_guarded_store_writes_only_while_its_owner_still_owns_the_connector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("meta.redb")).expect("open"));
    let revision = meta
        .put("/cluster/owners/connector/c", "me".into())
        .await
        .expect("own");
    let owner = Arc::new(Owner {
        key: "/cluster/owners/connector/c".to_owned(),
        revision,
        alive: true.into(),
    });
    let store = OffsetStore::new(meta.clone(), "c").guarded(owner.clone());
    let offsets = [(p("x"), Offset(1))].into_iter().collect();
    store.put_all(&offsets).await.expect("written while owned");
    assert_eq!(store.read(&p("x")).await.expect("read"), Some(Offset(1)));

    // Another term took the connector: the owner key moved on.
    meta.put("/cluster/owners/connector/c", "other".into())
        .await
        .expect("taken");
    let later = [(p("x"), Offset(9))].into_iter().collect();
    assert!(
        store.put_all(&later).await.is_err(),
        "a former owner writes nothing"
    );
    assert_eq!(store.read(&p("x")).await.expect("read"), Some(Offset(1)));

    // A lease that cannot be proven alive: not even tried.
    let revision = meta
        .put("/cluster/owners/connector/c", "me again".into())
        .await
        .expect("own again");
    let owner = Arc::new(Owner {
        key: "/cluster/owners/connector/c".to_owned(),
        revision,
        alive: false.into(),
    });
    let store = OffsetStore::new(meta.clone(), "c").guarded(owner);
    assert!(store.put_all(&later).await.is_err());
    assert_eq!(store.read(&p("x")).await.expect("read"), Some(Offset(1)));
}
