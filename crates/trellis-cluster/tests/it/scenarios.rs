//! Scenarios run on both stores: each takes a function that opens a store connection.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use trellis_cluster::{FenceError, Placement, Revoked};
use trellis_meta::MetadataStore;

use crate::{Holders, Member, SharedHolders, TTL, unit_names, wait_for};

pub(crate) type Connect =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Arc<dyn MetadataStore>> + Send + Sync>;

/// 20 Balanced units over 3 members spread 6/7/7; a 4th member takes 5 by handoff, with never
/// two holders at once and never two ownership keys (one key per unit by construction).
pub(crate) async fn balanced_spread_and_join_by_handoff(connect: Connect) {
    let units = unit_names(20);
    let holders = SharedHolders::default();
    let mut members = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        members
            .push(Member::start(connect().await, id, &units, Placement::Balanced, &holders).await);
    }
    wait_for("20 units held over 3 members, 6/7/7", || {
        let mut counts: Vec<usize> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|m| Holders::count(&holders, m))
            .collect();
        counts.sort_unstable();
        counts == [6, 7, 7]
    })
    .await;
    let owners = members[0].cluster.owners();
    assert_eq!(owners.len(), 20, "one ownership key per unit: {owners:?}");
    let before = holders.lock().expect("lock").now.clone();

    members.push(
        Member::start(
            connect().await,
            "node-d",
            &units,
            Placement::Balanced,
            &holders,
        )
        .await,
    );
    wait_for("20 units held over 4 members, 5 each", || {
        ["node-a", "node-b", "node-c", "node-d"]
            .iter()
            .all(|m| Holders::count(&holders, m) == 5)
    })
    .await;
    {
        let h = holders.lock().expect("lock");
        assert!(
            h.overlaps.is_empty(),
            "two holders at once: {:?}",
            h.overlaps
        );
        let moved = before
            .iter()
            .filter(|(unit, owner)| h.now.get(*unit) != Some(owner))
            .count();
        assert!(
            (5..=8).contains(&moved),
            "a join moved {moved} units; the joiner's share is 5"
        );
        assert!(
            h.revocations
                .iter()
                .all(|(_, _, reason)| *reason == Revoked::Handoff),
            "every move was a handoff: {:?}",
            h.revocations
        );
    }
    // Each member's view of the ownership keys follows by watch and agrees with the holders.
    for member in &members {
        wait_for("the ownership keys name the holders", || {
            member.cluster.owners() == holders.lock().expect("lock").now
        })
        .await;
    }
    assert_eq!(members[3].cluster.members().len(), 4);
    for member in &members {
        member.cluster.leave().await;
    }
}

/// A member that dies (its process gone: no release) loses its units to the others after its
/// lease runs out, and its stale fence's put is refused once ownership moved.
pub(crate) async fn dead_member_is_taken_over(connect: Connect) {
    let units = unit_names(6);
    let holders = SharedHolders::default();
    let store = connect().await;
    let mut members = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        members
            .push(Member::start(connect().await, id, &units, Placement::Balanced, &holders).await);
    }
    wait_for("6 units held, 2 each", || {
        ["node-a", "node-b", "node-c"]
            .iter()
            .all(|m| Holders::count(&holders, m) == 2)
    })
    .await;
    let (victim_units, stale) = {
        let h = holders.lock().expect("lock");
        let victim_units: Vec<String> = h
            .now
            .iter()
            .filter(|(_, m)| *m == "node-c")
            .map(|(u, _)| u.clone())
            .collect();
        let stale = h.fences[&victim_units[0]].1.clone();
        (victim_units, stale)
    };
    assert!(stale.holds(), "the owner's fence holds while it owns");
    let offset_key = format!("/offsets/{}", victim_units[0]);
    stale
        .put(&*store, &offset_key, Bytes::from("1"))
        .await
        .expect("the owner's fenced put lands");

    let victim = members.pop().expect("victim");
    let killed_at = Instant::now();
    victim.kill(&holders);
    let took = wait_for("the dead member's units taken by the others", || {
        let h = holders.lock().expect("lock");
        victim_units.iter().all(|u| h.now.contains_key(u))
    })
    .await;
    eprintln!(
        "failover took {:?} after the kill (TTL {TTL:?})",
        killed_at.elapsed().min(took)
    );
    assert!(!stale.holds(), "a dead member's fence no longer holds");
    let refused = stale.put(&*store, &offset_key, Bytes::from("2")).await;
    assert!(matches!(refused, Err(FenceError::Lost)), "{refused:?}");
    let kv = store.get(&offset_key).await.expect("get").expect("offset");
    assert_eq!(kv.value, Bytes::from("1"), "the refused put wrote nothing");
    // The guard alone refuses too, whatever the holder believes.
    let guarded = store
        .guarded_put(stale.guard(trellis_meta::GuardedPut::new(offset_key.clone(), "3")))
        .await
        .expect("guarded_put");
    assert!(matches!(
        guarded,
        trellis_meta::GuardedOutcome::Conflict { .. }
    ));
    {
        let h = holders.lock().expect("lock");
        assert!(
            h.overlaps.is_empty(),
            "two holders at once: {:?}",
            h.overlaps
        );
    }
    wait_for("the dead member gone from the members", || {
        members[0].cluster.members().len() == 2
    })
    .await;
    for member in &members {
        member.cluster.leave().await;
    }
}

/// FirstCome: the first to declare takes it, a later member never gets it for balance, and it
/// moves only when released.
pub(crate) async fn first_come(connect: Connect) {
    let a = crate::join(connect().await, "node-a").await;
    let b = crate::join(connect().await, "node-b").await;
    let mut unit_a = a.unit("group/orders/billing", Placement::FirstCome);
    let claim = tokio::time::timeout(crate::PATIENCE, unit_a.acquire())
        .await
        .expect("node-a takes the free unit");
    let mut unit_b = b.unit("group/orders/billing", Placement::FirstCome);
    let mut owner = unit_b.owner();
    owner
        .wait_for(|o| o.as_deref() == Some("node-a"))
        .await
        .expect("owner seen by node-b");
    // A third member joining changes nothing for FirstCome units.
    let c = crate::join(connect().await, "node-c").await;
    let _unit_c = c.unit("group/orders/billing", Placement::FirstCome);
    tokio::time::sleep(TTL).await;
    assert_eq!(claim.reason(), None, "never handed off for balance");
    assert_eq!(
        a.owners().get("group/orders/billing").map(String::as_str),
        Some("node-a")
    );
    // node-a withdraws the unit (else, as a FirstCome declarer, it could take it back at once).
    drop(unit_a);
    claim.release().await;
    let next = tokio::time::timeout(crate::PATIENCE, async {
        tokio::select! {
            claim = unit_b.acquire() => ("node-b", claim),
            claim = async { let mut u = _unit_c; u.acquire().await } => ("node-c", claim),
        }
    })
    .await
    .expect("another member takes the released unit");
    assert!(next.1.fence().holds());
    next.1.release().await;
    for cluster in [a, b, c] {
        cluster.leave().await;
    }
}

/// A lease revoked behind a member's back (lost for good): its claims are revoked, it
/// registers under a new lease and takes its units again.
pub(crate) async fn lost_lease_is_replaced(connect: Connect) {
    let store = connect().await;
    let a = crate::join(connect().await, "node-a").await;
    let mut unit = a.unit("connector/mirror", Placement::Balanced);
    let claim = tokio::time::timeout(crate::PATIENCE, unit.acquire())
        .await
        .expect("acquire");
    let fence = claim.fence();
    let old_lease = a.lease_id().expect("lease");
    assert!(store.lease_revoke(old_lease).await.expect("revoke"));
    tokio::time::timeout(crate::PATIENCE, claim.revoked().cancelled())
        .await
        .expect("the claim is revoked");
    assert!(
        matches!(claim.reason(), Some(Revoked::LeaseUnproven | Revoked::Lost)),
        "{:?}",
        claim.reason()
    );
    assert!(!fence.holds());
    drop(claim);
    let again = tokio::time::timeout(crate::PATIENCE, unit.acquire())
        .await
        .expect("the unit is taken again under a new lease");
    assert!(again.fence().holds());
    assert_ne!(a.lease_id(), Some(old_lease));
    assert!(a.healthy());
    assert_eq!(a.members().len(), 1, "registered again");
    again.release().await;
    a.leave().await;
}

/// A live member that never takes the units placed on it (frozen with its lease alive, or one
/// that does not declare them) keeps them free only while it is in the members list: once its
/// lease ends, the others take them.
pub(crate) async fn units_of_a_silent_member_go_once_it_is_gone(connect: Connect) {
    let units = unit_names(6);
    let holders = SharedHolders::default();
    let silent = crate::join(connect().await, "node-s").await;
    let mut members = Vec::new();
    for id in ["node-a", "node-b"] {
        members
            .push(Member::start(connect().await, id, &units, Placement::Balanced, &holders).await);
    }
    wait_for("the others hold their 4 units", || {
        Holders::count(&holders, "node-a") == 2 && Holders::count(&holders, "node-b") == 2
    })
    .await;
    tokio::time::sleep(crate::TTL / 2).await;
    assert_eq!(
        holders.lock().expect("lock").now.len(),
        4,
        "the silent member's 2 units stay free while it is listed"
    );
    drop(silent);
    wait_for("all 6 units held once the silent member is gone", || {
        Holders::count(&holders, "node-a") == 3 && Holders::count(&holders, "node-b") == 3
    })
    .await;
    assert!(holders.lock().expect("lock").overlaps.is_empty());
    for member in &members {
        member.cluster.leave().await;
    }
}

/// `set_load` reaches the member key, and so every member's view of the members.
pub(crate) async fn load_is_published(connect: Connect) {
    let a = crate::join(connect().await, "node-a").await;
    let b = crate::join(connect().await, "node-b").await;
    let load = trellis_cluster::Load {
        subscriptions: 3,
        connectors: 1,
        groups: 2,
        events_per_second: 120.5,
        lag: 42,
    };
    a.set_load(load.clone());
    wait_for("node-b sees node-a's load", || {
        b.members()
            .iter()
            .any(|m| m.id == "node-a" && m.load == load)
    })
    .await;
    let info = b
        .members()
        .into_iter()
        .find(|m| m.id == "node-a")
        .expect("node-a");
    assert_eq!(info.http, "node-a.test:8080");
    a.leave().await;
    wait_for("node-b sees node-a leave", || b.members().len() == 1).await;
    b.leave().await;
}
