//! The scenarios on a real etcd, each member on its own connection; and what only a server can
//! show: etcd stopping (health false, claims revoked) and coming back (everything recovers).
//!
//! Each test skips when etcd is not installed, unless `TRELLIS_REQUIRE_ETCD` is set.

use std::sync::Arc;

use trellis_cluster::{Placement, Revoked};
use trellis_meta::{EtcdOptions, EtcdStore, MetadataStore};
use trellis_test_support::EtcdServer;

use crate::scenarios::{self, Connect};

async fn connect_to(endpoint: String) -> Arc<dyn MetadataStore> {
    Arc::new(
        EtcdStore::connect(EtcdOptions::new([endpoint]))
            .await
            .expect("connect to etcd"),
    )
}

fn connections(server: &EtcdServer) -> Connect {
    let endpoint = server.endpoint();
    Box::new(move || Box::pin(connect_to(endpoint.clone())))
}

macro_rules! on_etcd {
    ($($scenario:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            let Some(server) = EtcdServer::start() else { return };
            scenarios::$scenario(connections(&server)).await;
        }
    )*};
}

on_etcd!(
    balanced_spread_and_join_by_handoff,
    units_of_a_silent_member_go_once_it_is_gone,
    load_is_published,
    dead_member_is_taken_over,
    first_come,
    lost_lease_is_replaced,
);

/// etcd stops: health turns false and every claim is revoked (LeaseUnproven) before the lease
/// could have expired; etcd returns: health turns true and the units are owned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_revokes_then_recovers() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let a = crate::join(connect_to(server.endpoint()).await, "node-a").await;
    let mut health = a.health();
    let mut units: Vec<_> = ["subscription/a", "connector/b"]
        .iter()
        .map(|name| a.unit(name, Placement::Balanced))
        .collect();
    let mut claims = Vec::new();
    for unit in &mut units {
        claims.push(
            tokio::time::timeout(crate::PATIENCE, unit.acquire())
                .await
                .expect("acquire"),
        );
    }
    assert!(a.healthy());
    let lease = a.lease_id();
    let revisions: Vec<u64> = claims.iter().map(|claim| claim.revision()).collect();
    server.stop();
    tokio::time::timeout(crate::PATIENCE, health.wait_for(|healthy| !healthy))
        .await
        .expect("health turns false")
        .expect("health sender");
    assert!(!a.healthy());
    for claim in &claims {
        assert!(
            claim.revoked().is_cancelled(),
            "claims revoked while etcd is down"
        );
        assert_eq!(claim.reason(), Some(Revoked::LeaseUnproven));
        assert!(!claim.fence().holds(), "no fenced write while unproven");
    }
    drop(claims);
    server.restart();
    tokio::time::timeout(crate::PATIENCE, health.wait_for(|healthy| *healthy))
        .await
        .expect("health turns true again")
        .expect("health sender");
    // etcd extends every lease when it comes back, so the lease survived: the ownership keys
    // are still ours, under it, and are adopted rather than taken anew.
    assert_eq!(a.lease_id(), lease, "the same lease, proven again");
    for (unit, revision) in units.iter_mut().zip(revisions) {
        let claim = tokio::time::timeout(crate::PATIENCE, unit.acquire())
            .await
            .expect("owned again after etcd returns");
        assert!(claim.fence().holds());
        assert_eq!(
            claim.revision(),
            revision,
            "the same ownership key, adopted"
        );
        claim.release().await;
    }
    a.leave().await;
}
