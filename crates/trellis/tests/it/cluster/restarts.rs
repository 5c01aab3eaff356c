//! Restarts under load lose no acknowledged event: every replica in turn (a rolling restart,
//! as a deployment does it), then etcd and nats-server each (stopped for a second, started again
//! on the same ports and data). While etcd is away the replicas keep taking publishes, as the
//! issue wants of an etcd outage.

use std::time::{Duration, Instant};

use super::harness::{Cluster, wait_delivered};

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_loses_no_acknowledged_event() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    cluster
        .subscribe(0, "audit", "orders", &hook.url("/audit"))
        .await;
    let load = cluster.load("orders", "order", Duration::from_millis(10));
    load.wait_for(50).await;
    for index in 0..cluster.len() {
        cluster.terminate(index);
        load.wait_for(20).await;
        cluster.restart(index).await;
        load.wait_for(20).await;
    }
    let acked = load.stop().await;
    let missing = wait_delivered(&hook, "/audit", &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never delivered, e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)],
        cluster.diagnose("audit").await
    );
    // Whoever owns it now is one of the restarted processes.
    let owner = cluster.owner_when("subscription/audit", |_| true).await;
    let index = cluster.replica_of_member(&owner).expect("one of ours");
    assert_eq!(owner, cluster.member(index), "a live process owns it");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_of_etcd_and_nats_lose_no_acknowledged_event() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    cluster
        .subscribe(0, "audit", "orders", &hook.url("/audit"))
        .await;
    let load = cluster.load("orders", "order", Duration::from_millis(10));
    load.wait_for(50).await;

    cluster.stop_etcd();
    let etcd_down = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let etcd_up = Instant::now();
    cluster.restart_etcd();
    load.wait_for(50).await;

    cluster.stop_nats();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart_nats();
    load.wait_for(50).await;

    let acked = load.stop().await;
    // Replicas keep taking publishes while etcd is away: events live in NATS.
    let during_outage = acked
        .iter()
        .filter(|event| event.at > etcd_down && event.at < etcd_up)
        .count();
    assert!(
        during_outage > 0,
        "no event acknowledged while etcd was down"
    );
    let missing = wait_delivered(&hook, "/audit", &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never delivered, e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)],
        cluster.diagnose("audit").await
    );
    // Every replica is healthy again by itself.
    for index in 0..cluster.len() {
        let healthy =
            crate::eventually(async || cluster.view(index).await["healthy"] == true).await;
        assert!(
            healthy,
            "replica {index} is healthy again; logs:\n{}",
            cluster.logs(index)
        );
    }
}
