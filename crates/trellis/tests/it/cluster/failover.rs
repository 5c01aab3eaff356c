//! The owner of a subscription and of a consumer group dies (SIGKILL) under load: another
//! replica takes over within the bound, nothing acknowledged is lost, and the only duplicates
//! are the events the dead owner had delivered past its last commit.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use trellis_meta::WatchEvent;

use super::harness::{
    Acked, Cluster, LEASE_TTL, PATIENCE, SLACK, TAKEOVER_BOUND, offset_of, wait_delivered,
};
use super::hook::Delivery;
use super::member::{Member, ack_all};

/// What one subscription may have out for delivery at once (`MAX_IN_FLIGHT` in the runtime):
/// the bound on duplicates the issue allows, "the in-flight window".
const MAX_IN_FLIGHT: usize = 256;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_owner_is_replaced_within_the_bound_without_loss() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    cluster
        .subscribe(0, "audit", "orders", &hook.url("/audit"))
        .await;
    let owner_id = cluster.owner_when("subscription/audit", |_| true).await;
    let owner = cluster.replica_of_member(&owner_id).expect("one of ours");
    let owner_pid = cluster.pid(owner);
    // The group's member connects to the subscription's owner first, so that the group runs
    // there too and the kill takes both; it fails over along the other replicas.
    let mut endpoints = vec![cluster.grpc(owner)];
    endpoints.extend(
        (0..3)
            .filter(|&index| index != owner)
            .map(|index| cluster.grpc(index)),
    );
    let member = Member::join(endpoints, "orders", "billing", ack_all);
    let load = cluster.load("orders", "order", Duration::from_millis(10));

    // Delivery flows, from the owner.
    let flowing = wait_for(|| {
        hook.deliveries_to("/audit")
            .iter()
            .filter(|delivery| delivery.pid == Some(owner_pid))
            .count()
            >= 50
    })
    .await;
    assert!(
        flowing,
        "the owner delivers; logs:\n{}",
        cluster.logs(owner)
    );
    let (_, old_term) = cluster
        .owner_key("subscription/audit")
        .await
        .expect("an ownership key");

    // Taken before the kill, so that the time measured to the first delivery from another
    // replica is never less than the real one.
    let killed_at = Instant::now();
    cluster.kill(owner);
    let resumed =
        wait_for(|| first_after(&hook.deliveries_to("/audit"), killed_at, owner_pid).is_some())
            .await;
    assert!(resumed, "delivery resumes after the owner's death");
    let first =
        first_after(&hook.deliveries_to("/audit"), killed_at, owner_pid).expect("a delivery");
    let took = first.at - killed_at;
    eprintln!(
        "delivery resumed {took:?} after the kill (bound {TAKEOVER_BOUND:?} with a {LEASE_TTL:?} TTL)"
    );
    assert!(
        took <= TAKEOVER_BOUND + SLACK,
        "delivery resumed {took:?} after the owner's death, beyond {TAKEOVER_BOUND:?} + {SLACK:?}"
    );
    let new_owner = cluster.replica_of_pid(first.pid.expect("a known sender"));
    assert_ne!(new_owner, Some(owner), "another replica delivers");

    // Keep publishing a while under the new owner, then check everything.
    load.wait_for(100).await;
    let acked = load.stop().await;
    let missing = wait_delivered(&hook, "/audit", &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never delivered, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );

    // Duplicates: only events the dead owner delivered at or past its last commit.
    let (new_id, new_term) = cluster
        .owner_key("subscription/audit")
        .await
        .expect("an ownership key");
    assert_ne!(new_id, owner_id);
    assert!(new_term > old_term);
    let history = cluster.history("/offsets/audit", 1).await;
    let last_commit = committed_before(&history, new_term);
    let deliveries = hook.deliveries_to("/audit");
    let window = Window::of(&acked, &deliveries, owner_pid, last_commit);
    eprintln!(
        "{} duplicates; the dead owner had delivered {} events past its last commit (offset {last_commit})",
        window.duplicates.len(),
        window.uncommitted
    );
    assert!(
        window.outside.is_empty(),
        "events delivered twice though the dead owner had committed them or never sent them: {:?}",
        window.outside
    );
    assert!(
        window.duplicates.len() <= window.uncommitted.min(MAX_IN_FLIGHT),
        "{} duplicates, more than the dead owner's uncommitted deliveries ({}) or the in-flight \
         window ({MAX_IN_FLIGHT})",
        window.duplicates.len(),
        window.uncommitted
    );

    // The consumer group lost nothing either: its member, failed over, got every event.
    let group_missing = wait_for(|| {
        let got: std::collections::HashSet<String> =
            member.got().into_iter().map(|got| got.id).collect();
        acked.iter().all(|event| got.contains(&event.id))
    })
    .await;
    let got = member.leave().await;
    assert!(
        group_missing,
        "the group's member got {} deliveries; some acknowledged event never came",
        got.len()
    );
}

/// Polls `done` every 20 ms for `PATIENCE` at most; whether it held.
pub(crate) async fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// The first delivery that arrived after `instant` from another process than `dead`.
fn first_after(deliveries: &[Delivery], instant: Instant, dead: u32) -> Option<Delivery> {
    deliveries
        .iter()
        .find(|delivery| {
            delivery.at > instant && delivery.pid.is_some() && delivery.pid != Some(dead)
        })
        .cloned()
}

/// The offset committed last before revision `revision` (0 if none was).
pub(crate) fn committed_before(history: &[WatchEvent], revision: u64) -> u64 {
    history
        .iter()
        .filter(|event| event.mod_revision() < revision)
        .filter_map(|event| match event {
            WatchEvent::Put(kv) => offset_of(&kv.value),
            WatchEvent::Delete { .. } => None,
        })
        .next_back()
        .unwrap_or(0)
}

/// The duplicates of a failover, set against the dead owner's uncommitted deliveries.
struct Window {
    /// Events delivered more than once.
    duplicates: Vec<String>,
    /// Events the dead owner delivered at or past its last committed offset.
    uncommitted: usize,
    /// Duplicates that are not among those: what must never happen.
    outside: Vec<String>,
}

impl Window {
    fn of(acked: &[Acked], deliveries: &[Delivery], dead: u32, last_commit: u64) -> Window {
        let offsets: HashMap<&str, u64> = acked
            .iter()
            .map(|event| (event.id.as_str(), event.offset))
            .collect();
        let mut by_id: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
        for delivery in deliveries {
            by_id
                .entry(delivery.id.as_str())
                .or_default()
                .push(delivery);
        }
        let from_dead_past_commit = |id: &str| {
            offsets.get(id).is_some_and(|&offset| offset >= last_commit)
                && by_id[id].iter().any(|delivery| delivery.pid == Some(dead))
        };
        let uncommitted = by_id.keys().filter(|id| from_dead_past_commit(id)).count();
        let duplicates: Vec<String> = by_id
            .iter()
            .filter(|(_, copies)| copies.len() > 1)
            .map(|(id, _)| (*id).to_owned())
            .collect();
        // A legitimate duplicate came once from the dead owner and once from its successor.
        let outside = duplicates
            .iter()
            .filter(|id| {
                !from_dead_past_commit(id)
                    || by_id[id.as_str()]
                        .iter()
                        .filter(|delivery| delivery.pid == Some(dead))
                        .count()
                        > 1
                    || by_id[id.as_str()].len() > 2
            })
            .cloned()
            .collect();
        Window {
            duplicates,
            uncommitted,
            outside,
        }
    }
}
