//! `LeaseKeeper` on the embedded store (it uses the trait only): it keeps a lease and its keys
//! past the TTL, reports the loss of a revoked lease, and lets the lease expire once dropped.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use trellis_meta::{GuardedPut, LeaseKeeper, LeaseStatus, MetadataStore, WatchEvent};

use crate::fresh_store;

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_holds_a_lease_past_its_ttl_and_reports_its_loss() {
    let (_dir, store) = fresh_store();
    let store: Arc<dyn MetadataStore> = Arc::new(store);
    let lease = store
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("lease_grant");
    store
        .guarded_put(GuardedPut::new("owners/a", "me").lease(lease.id))
        .await
        .expect("guarded_put");
    let keeper = LeaseKeeper::spawn(store.clone(), lease);
    let mut status = keeper.subscribe();

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.get("owners/a").await.expect("get").is_some(),
        "the kept lease's key outlives the TTL"
    );
    let held_until = keeper.held_until().expect("held");
    assert!(held_until > lease.held_until, "refreshes moved held_until");

    assert!(store.lease_revoke(lease.id).await.expect("lease_revoke"));
    let lost = tokio::time::timeout(EVENT_TIMEOUT, status.wait_for(|s| *s == LeaseStatus::Lost))
        .await
        .expect("the loss is reported within a refresh interval")
        .is_ok();
    assert!(lost);
    assert!(!keeper.holds());
    assert_eq!(keeper.held_until(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_keeper_lets_the_lease_expire() {
    let (_dir, store) = fresh_store();
    let store: Arc<dyn MetadataStore> = Arc::new(store);
    let lease = store
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("lease_grant");
    let written = store
        .guarded_put(GuardedPut::new("owners/a", "me").lease(lease.id))
        .await
        .expect("guarded_put");
    let trellis_meta::GuardedOutcome::Written { revision } = written else {
        panic!("expected a write, got {written:?}");
    };
    let mut stream = store
        .watch("owners/", Some(revision + 1))
        .await
        .expect("watch");
    drop(LeaseKeeper::spawn(store.clone(), lease));
    let event = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("the lease expires")
        .expect("the stream goes on")
        .expect("no watch error");
    assert!(matches!(event, WatchEvent::Delete { key, .. } if key == "owners/a"));
}

/// A subscriber taken after refreshes waits for the next change: it is not told of changes
/// it never saw as new (with a plain clone of the keeper's receiver, `changed()` returned at
/// once forever after the first refresh, and whoever looped on it spun a core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_after_refreshes_waits_for_the_next_change() {
    use futures::FutureExt;
    let (_dir, store) = fresh_store();
    let store: Arc<dyn MetadataStore> = Arc::new(store);
    let lease = store
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("lease_grant");
    let keeper = LeaseKeeper::spawn(store.clone(), lease);
    let mut early = keeper.subscribe();
    // At least one refresh (every third of the TTL).
    tokio::time::timeout(EVENT_TIMEOUT, early.changed())
        .await
        .expect("a refresh within the TTL")
        .expect("keeper alive");
    let mut late = keeper.subscribe();
    assert!(
        late.changed().now_or_never().is_none(),
        "nothing new since it subscribed"
    );
    assert!(store.lease_revoke(lease.id).await.expect("lease_revoke"));
    let lost = tokio::time::timeout(EVENT_TIMEOUT, late.wait_for(|s| *s == LeaseStatus::Lost))
        .await
        .expect("the loss is reported")
        .map(|status| *status);
    assert_eq!(lost.expect("keeper alive"), LeaseStatus::Lost);
}
