//! One consumer group with members on two replicas; the replica that owns the group dies
//! (SIGKILL). Both members keep receiving (the one whose replica died fails over to the third
//! replica through its endpoint list), every event is acked in the end, the events a member held
//! unacked are delivered again, and etcd's history of the group's offset shows each commit once:
//! it never goes back, and nothing committed before the death is delivered after it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::failover::wait_for;
use super::harness::{Cluster, PATIENCE, offset_of};
use super::member::{Habits, Member};
use trellis_meta::WatchEvent;

#[tokio::test(flavor = "multi_thread")]
async fn a_group_survives_the_death_of_its_owner() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let (a, b, c) = (cluster.grpc(0), cluster.grpc(1), cluster.grpc(2));
    // Small windows and some work per event, so that the group needs both members: it cannot
    // hand everything to whichever acks first.
    let habits = Habits {
        max_unacked: 4,
        work: Duration::from_millis(20),
        ..Habits::default()
    };
    let holder = Member::join_with(
        vec![a, c.clone()],
        "orders",
        "billing",
        // Its first three deliveries stay unacked until the owner dies, in a window of 8.
        Habits {
            hold_first: 3,
            max_unacked: 8,
            ..habits
        },
    );
    let other = Member::join_with(vec![b, c], "orders", "billing", habits);
    let group_commits = cluster.follow_commits("/groups/orders/billing").await;
    let load = cluster.load("orders", "order", Duration::from_millis(10));
    // Both members get events, whichever replica owns the group.
    assert!(
        wait_for(|| holder.got().len() >= 10 && other.got().len() >= 10).await,
        "both members receive: {} and {}",
        holder.got().len(),
        other.got().len()
    );
    // One group, wherever its members connect: while one replica runs it, no event goes to
    // both members as a first delivery (a redelivery, attempt > 1, may: a member's stream that
    // broke gives its unacked events back).
    let firsts: HashSet<String> = holder
        .got()
        .into_iter()
        .filter(|got| got.attempt == 1)
        .map(|got| got.id)
        .collect();
    let both: Vec<String> = other
        .got()
        .into_iter()
        .filter(|got| got.attempt == 1 && firsts.contains(&got.id))
        .map(|got| got.id)
        .collect();
    let terms = cluster.terms_since("group/orders/billing", 0).await;
    if terms == 1 {
        assert!(
            both.is_empty(),
            "events given to both members as first deliveries by one owner: {both:?}"
        );
    } else {
        eprintln!("the group changed owner {terms} times before the kill; {both:?} went to both");
    }
    let owner_id = cluster.owner_when("group/orders/billing", |_| true).await;
    let owner = cluster.replica_of_member(&owner_id).expect("one of ours");
    assert!(
        owner < 2,
        "a replica with members owns the group, not {owner_id}"
    );
    let (_, old_term) = cluster
        .owner_key("group/orders/billing")
        .await
        .expect("an ownership key");

    let killed_at = Instant::now();
    cluster.kill(owner);
    holder.release();
    load.wait_for(200).await;
    let acked = load.stop().await;
    let all: HashSet<&str> = acked.iter().map(|event| event.id.as_str()).collect();

    // Every acknowledged event gets acked by a member.
    let settled = wait_for(|| {
        let mut done = holder.got();
        done.extend(other.got());
        let done: HashSet<String> = done
            .into_iter()
            .filter(|got| got.acked)
            .map(|got| got.id)
            .collect();
        all.iter().all(|id| done.contains(*id))
    })
    .await;
    let held = holder.got();
    let others = other.got();
    assert!(
        settled,
        "every acknowledged event is acked by a member in the end"
    );
    for (name, got) in [("the holder", &held), ("the other", &others)] {
        assert!(
            got.iter().any(|got| got.at > killed_at),
            "{name} keeps receiving after the owner's death"
        );
    }
    // Held events come again, to either member, and are acked then (before the death if the
    // holder's stream broke earlier: its unacked events are given back).
    let held_back: Vec<(u64, Instant)> = held
        .iter()
        .filter(|got| !got.acked)
        .map(|got| (got.offset, got.at))
        .collect();
    assert!(!held_back.is_empty(), "the holder held some events");
    let never_again: Vec<u64> = held_back
        .iter()
        .filter(|(offset, at)| {
            !held
                .iter()
                .chain(&others)
                .any(|got| got.offset == *offset && got.at > *at && got.acked)
        })
        .map(|(offset, _)| *offset)
        .collect();
    assert!(
        never_again.is_empty(),
        "events held unacked and never delivered again: {never_again:?}"
    );

    // The group's committed offset reaches the end, and never goes back.
    let end = cluster.next_offset("orders").await;
    let deadline = Instant::now() + PATIENCE;
    while cluster.committed("/groups/orders/billing").await != Some(end) {
        assert!(
            Instant::now() < deadline,
            "the group commits the end {end}: {:?}",
            cluster.committed("/groups/orders/billing").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (new_id, new_term) = cluster
        .owner_key("group/orders/billing")
        .await
        .expect("an ownership key");
    assert_ne!(new_id, owner_id, "another replica owns the group");
    let history = cluster.history("/groups/orders/billing", 1).await;
    let commits: Vec<u64> = history
        .iter()
        .filter_map(|event| match event {
            WatchEvent::Put(kv) => offset_of(&kv.value),
            WatchEvent::Delete { .. } => None,
        })
        .collect();
    assert!(
        commits.windows(2).all(|pair| pair[0] <= pair[1]),
        "the group's committed offset went back: {commits:?}"
    );
    assert!(old_term < new_term);
    // Nothing committed is delivered again: each delivery after the death is set against the
    // committed offset as the test had seen it by then.
    let mut again = Vec::new();
    for (name, got) in [("holder", &held), ("other", &others)] {
        for got in got.iter().filter(|got| got.at > killed_at) {
            let committed = group_commits.at(got.at);
            if got.offset < committed {
                again.push(format!(
                    "{name} got {} (attempt {}) {:?} after the kill, committed {committed}",
                    got.offset,
                    got.attempt,
                    got.at - killed_at
                ));
            }
        }
    }
    if !again.is_empty() {
        let owners = cluster
            .history("/cluster/owners/group/orders/billing", 1)
            .await;
        panic!(
            "{} deliveries of events already committed, e.g. {:#?}\ncommits: {commits:?}\n\
             ownership: {owners:?}",
            again.len(),
            &again[..again.len().min(8)]
        );
    }
    holder.leave().await;
    other.leave().await;
}
