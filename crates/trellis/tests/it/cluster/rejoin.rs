//! Subscriptions created while a replica is down are served by it once it is back and owns
//! them: first those balance hands it, then, when it is left alone, all of them.

use std::collections::BTreeSet;
use std::time::Duration;

use super::harness::{Cluster, PATIENCE, wait_delivered};

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_back_from_the_dead_serves_what_was_created_meanwhile() {
    let Some(mut cluster) = Cluster::start(2).await else {
        return;
    };
    let hook = cluster.hook().await;
    cluster.kill(1);
    cluster.wait_members().await;
    let names = ["late-a", "late-b", "late-c", "late-d"];
    for name in names {
        cluster
            .subscribe(0, name, "orders", &hook.url(&format!("/{name}")))
            .await;
    }
    for name in names {
        let owner = cluster
            .owner_when(&format!("subscription/{name}"), |_| true)
            .await;
        assert_eq!(owner, cluster.member(0), "the only replica owns {name}");
    }

    cluster.restart(1).await;
    let returned = cluster.member(1);
    let returned_pid = cluster.pid(1);
    // Balance hands it its share (two of four); wait until all four are owned again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let theirs: BTreeSet<String> = loop {
        let owners = cluster.owners().await;
        let all_owned = names
            .iter()
            .all(|name| owners.contains_key(&format!("subscription/{name}")));
        let theirs: BTreeSet<String> = names
            .iter()
            .filter(|name| owners.get(&format!("subscription/{name}")) == Some(&returned))
            .map(|name| (*name).to_owned())
            .collect();
        if all_owned && theirs.len() == 2 {
            break theirs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the returned replica gets its share: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let load = cluster.load("orders", "first", Duration::from_millis(20));
    load.wait_for(50).await;
    let acked = load.stop().await;
    for name in names {
        let path = format!("/{name}");
        let missing = wait_delivered(&hook, &path, &acked).await;
        assert!(missing.is_empty(), "{name}: never delivered: {missing:?}");
        if theirs.contains(name) {
            let senders: BTreeSet<Option<u32>> = hook
                .deliveries_to(&path)
                .iter()
                .filter(|delivery| acked.iter().any(|event| event.id == delivery.id))
                .map(|delivery| delivery.pid)
                .collect();
            assert_eq!(
                senders,
                BTreeSet::from([Some(returned_pid)]),
                "{name} is served by the returned replica, its owner"
            );
        }
    }

    // Left alone, it serves all four.
    cluster.kill(0);
    for name in names {
        cluster
            .owner_when(&format!("subscription/{name}"), |owner| owner == returned)
            .await;
    }
    let load = cluster.load("orders", "second", Duration::from_millis(20));
    load.wait_for(50).await;
    let acked = load.stop().await;
    for name in names {
        let path = format!("/{name}");
        let missing = wait_delivered(&hook, &path, &acked).await;
        assert!(missing.is_empty(), "{name}: never delivered: {missing:?}");
        assert!(
            hook.deliveries_to(&path)
                .iter()
                .filter(|delivery| acked.iter().any(|event| event.id == delivery.id))
                .all(|delivery| delivery.pid == Some(returned_pid)),
            "{name} is served by the only replica"
        );
    }
}
