//! The scenarios on the embedded store (one handle shared by every member, as one process owns
//! the file), and a restart that owns its work at once.

use std::sync::Arc;

use trellis_cluster::Placement;
use trellis_meta::{EmbeddedStore, MetadataStore};

use crate::scenarios::{self, Connect};

fn shared(dir: &tempfile::TempDir) -> Connect {
    let store: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("meta.redb")).expect("open"));
    Box::new(move || {
        let store = store.clone();
        Box::pin(async move { store })
    })
}

macro_rules! on_embedded {
    ($($scenario:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            let dir = tempfile::tempdir().expect("tempdir");
            scenarios::$scenario(shared(&dir)).await;
        }
    )*};
}

on_embedded!(
    balanced_spread_and_join_by_handoff,
    units_of_a_silent_member_go_once_it_is_gone,
    load_is_published,
    dead_member_is_taken_over,
    first_come,
    lost_lease_is_replaced,
);

/// A single node that crashed (no release) and restarts owns its units at once: the reopen
/// ends the dead process's lease, so nothing waits for a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_owns_its_work_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.redb");
    {
        let store: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(&path).expect("open"));
        let cluster = crate::join(store.clone(), "node-a").await;
        let mut unit = cluster.unit("subscription/orders", Placement::Balanced);
        let claim = unit.acquire().await;
        assert!(claim.fence().holds());
        // A crash: the cluster's tasks stop first, so nothing is released, and the lease is
        // far from expired (the TTL is 1 s, the reopen follows at once).
        drop(cluster);
        drop(claim);
        drop(unit);
        assert!(
            store
                .get("/cluster/owners/subscription/orders")
                .await
                .expect("get")
                .is_some(),
            "the ownership key is left behind"
        );
    }
    // The stopped tasks let go of the store (and its file) as they end.
    let mut attempts = 0;
    let store = loop {
        match EmbeddedStore::open(&path) {
            Ok(store) => break store,
            Err(error) => {
                attempts += 1;
                assert!(attempts < 100, "the store stays open: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let store: Arc<dyn MetadataStore> = Arc::new(store);
    assert!(
        store
            .get("/cluster/owners/subscription/orders")
            .await
            .expect("get")
            .is_none(),
        "the dead process's ownership key is gone at open"
    );
    let cluster = crate::join(store, "node-a").await;
    let mut unit = cluster.unit("subscription/orders", Placement::Balanced);
    let claim = tokio::time::timeout(std::time::Duration::from_millis(900), unit.acquire())
        .await
        .expect("owned well within one TTL");
    claim.release().await;
    cluster.leave().await;
}
