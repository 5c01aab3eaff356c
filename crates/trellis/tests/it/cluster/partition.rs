//! The owner alone loses etcd (its connections reset, new ones refused) while the others keep
//! it. It cannot prove its lease alive, so it must stop delivering before that lease could have
//! expired: its lease was refreshed at the latest when etcd went away, so no delivery of it may
//! arrive later than the TTL after the cut, nor after its successor's first. It reports not
//! ready meanwhile, and once etcd is back it is healthy again by itself; nothing acknowledged is
//! lost.

use std::time::{Duration, Instant};

use super::failover::wait_for;
use super::harness::{Cluster, LEASE_TTL, wait_delivered};

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_cut_off_etcd_stops_before_its_lease_could_end() {
    let Some(cluster) = Cluster::start_isolatable(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    cluster
        .subscribe(0, "audit", "orders", &hook.url("/audit"))
        .await;
    let owner_id = cluster.owner_when("subscription/audit", |_| true).await;
    let owner = cluster.replica_of_member(&owner_id).expect("one of ours");
    let owner_pid = cluster.pid(owner);
    let load = cluster.load("orders", "order", Duration::from_millis(10));
    assert!(
        wait_for(|| {
            hook.deliveries_to("/audit")
                .iter()
                .filter(|delivery| delivery.pid == Some(owner_pid))
                .count()
                >= 50
        })
        .await,
        "the owner delivers"
    );

    let cut_at = Instant::now();
    cluster.cut_etcd(owner).await;
    let readyz = format!("{}/readyz", cluster.base(owner));
    let not_ready = crate::eventually(async || {
        reqwest::get(&readyz)
            .await
            .is_ok_and(|response| response.status() == 503)
    })
    .await;
    assert!(not_ready, "the replica cut off etcd reports not ready");
    let successor = cluster
        .owner_when("subscription/audit", |member| member != owner_id)
        .await;
    let successor_pid = cluster.pid(cluster.replica_of_member(&successor).expect("ours"));
    assert!(
        wait_for(|| {
            hook.deliveries_to("/audit")
                .iter()
                .any(|delivery| delivery.pid == Some(successor_pid) && delivery.at > cut_at)
        })
        .await,
        "the successor delivers"
    );
    load.wait_for(100).await;

    // Once mended it may own the subscription again, in a new term: deliveries from then on
    // are legitimate.
    let mended_at = Instant::now();
    cluster.mend_etcd(owner).await;
    let healthy = crate::eventually(async || cluster.view(owner).await["healthy"] == true).await;
    assert!(
        healthy,
        "the replica is healthy again once etcd is back; logs:\n{}",
        cluster.logs(owner)
    );
    let acked = load.stop().await;
    let missing = wait_delivered(&hook, "/audit", &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never delivered, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );

    let deliveries = hook.deliveries_to("/audit");
    let successor_first = deliveries
        .iter()
        .find(|delivery| delivery.pid == Some(successor_pid) && delivery.at > cut_at)
        .map(|delivery| delivery.at)
        .expect("the successor delivered");
    let last_of_cut_off = deliveries
        .iter()
        .filter(|delivery| delivery.pid == Some(owner_pid) && delivery.at < mended_at)
        .map(|delivery| delivery.at)
        .max()
        .expect("the owner delivered");
    eprintln!(
        "the cut-off owner's last delivery came {:?} after the cut; the successor's first {:?}",
        last_of_cut_off.saturating_duration_since(cut_at),
        successor_first.saturating_duration_since(cut_at)
    );
    assert!(
        last_of_cut_off < cut_at + LEASE_TTL,
        "the cut-off owner delivered {:?} after the cut, past the TTL {LEASE_TTL:?}",
        last_of_cut_off - cut_at
    );
    assert!(
        last_of_cut_off < successor_first,
        "two owners delivered at once: the cut-off one {:?} after the successor's first delivery",
        last_of_cut_off - successor_first
    );
}
