//! A fourth replica joins three that run 20 subscriptions under load: about a quarter of the
//! subscriptions move to it by graceful handoff, the rest stay where they were, and every
//! acknowledged event still reaches every subscription.

use std::collections::BTreeMap;
use std::time::Duration;

use super::harness::{Cluster, wait_delivered};

const SUBSCRIPTIONS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_replica_takes_about_a_quarter_without_loss() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    let names: Vec<String> = (0..SUBSCRIPTIONS).map(|n| format!("s{n:02}")).collect();
    for name in &names {
        cluster
            .subscribe(0, name, "orders", &hook.url(&format!("/{name}")))
            .await;
    }
    let before = cluster
        .stable_owners("subscription/", SUBSCRIPTIONS, |_| true)
        .await;
    let mut per_member: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in before.values() {
        *per_member.entry(owner.as_str()).or_default() += 1;
    }
    assert!(
        per_member.values().all(|&n| (6..=7).contains(&n)) && per_member.len() == 3,
        "20 subscriptions spread evenly over 3 replicas: {per_member:?}"
    );

    let load = cluster.load("orders", "order", Duration::from_millis(40));
    load.wait_for(20).await;
    let joined = cluster.add().await;
    let newcomer = cluster.member(joined);
    // Ownership may look settled before the handoffs start: wait for the newcomer's first.
    let after = cluster
        .stable_owners("subscription/", SUBSCRIPTIONS, |owners| {
            owners.values().any(|owner| *owner == newcomer)
        })
        .await;
    load.wait_for(20).await;
    let acked = load.stop().await;

    let moved: Vec<&String> = names
        .iter()
        .filter(|name| {
            let unit = format!("subscription/{name}");
            before.get(&unit) != after.get(&unit)
        })
        .collect();
    let to_newcomer = after.values().filter(|owner| **owner == newcomer).count();
    eprintln!(
        "{} subscriptions moved, {to_newcomer} to the newcomer",
        moved.len()
    );
    assert!(
        (3..=7).contains(&to_newcomer),
        "about a quarter of {SUBSCRIPTIONS} move to the fourth replica: {to_newcomer}; owners {after:?}"
    );
    assert!(
        moved.len() <= 7,
        "a join moves about a quarter of the subscriptions, not {}: {moved:?}",
        moved.len()
    );

    for name in &names {
        let missing = wait_delivered(&hook, &format!("/{name}"), &acked).await;
        assert!(
            missing.is_empty(),
            "{name}: {} of {} acknowledged events never delivered, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
    }
}
