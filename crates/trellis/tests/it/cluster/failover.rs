//! A replica that owns subscriptions and a consumer group dies (SIGKILL) under load, published
//! through all three replicas: another replica takes each over within the bound, nothing
//! acknowledged is lost, the only duplicates are the events the dead owner had delivered past
//! its last commit, and the subscriptions the others owned go on untouched.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use trellis_meta::WatchEvent;

use super::harness::{
    Acked, Cluster, LEASE_TTL, PATIENCE, SLACK, TAKEOVER_BOUND, offset_of, wait_delivered,
};
use super::hook::Delivery;
use super::member::Member;

/// What one subscription may have out for delivery at once (`MAX_IN_FLIGHT` in the runtime):
/// the bound on duplicates the issue allows, "the in-flight window".
const MAX_IN_FLIGHT: usize = 256;

/// Six subscriptions, two per replica.
const SUBSCRIPTIONS: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_owner_is_replaced_within_the_bound_without_loss() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    for name in SUBSCRIPTIONS {
        cluster
            .subscribe(0, name, "orders", &hook.url(&format!("/{name}")))
            .await;
    }
    // Handoffs settle as every replica learns of each new subscription; the load starts after.
    let owners = cluster
        .stable_owners("subscription/", SUBSCRIPTIONS.len(), |_| true)
        .await;
    let owner_id = owners["subscription/s0"].clone();
    let owner = cluster.replica_of_member(&owner_id).expect("one of ours");
    let owner_pid = cluster.pid(owner);
    // The group's member connects to the dead-to-be replica first, so that the group runs
    // there too and the kill takes both; it fails over along the other replicas.
    let mut endpoints = vec![cluster.grpc(owner)];
    endpoints.extend(
        (0..3)
            .filter(|&index| index != owner)
            .map(|index| cluster.grpc(index)),
    );
    let member = Member::join(endpoints, "orders", "billing");
    let mut commits = BTreeMap::new();
    for name in SUBSCRIPTIONS {
        commits.insert(
            name,
            cluster.follow_commits(&format!("/offsets/{name}")).await,
        );
    }
    let load_began = cluster.revision().await;
    let load = cluster.load("orders", "order", Duration::from_millis(10));

    // Delivery flows, from the owner.
    let flowing = wait_for(|| {
        hook.deliveries_to("/s0")
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
    let mut terms = BTreeMap::new();
    for name in SUBSCRIPTIONS {
        let term = cluster
            .owner_key(&format!("subscription/{name}"))
            .await
            .expect("an ownership key");
        terms.insert(name, term);
    }
    let orphans: Vec<&str> = SUBSCRIPTIONS
        .into_iter()
        .filter(|name| terms[name].0 == owner_id)
        .collect();
    assert!(orphans.contains(&"s0"));

    // Taken before the kill, so that the time measured to the first delivery from another
    // replica is never less than the real one.
    let killed_at = Instant::now();
    cluster.kill(owner);
    for name in &orphans {
        let path = format!("/{name}");
        let resumed =
            wait_for(|| first_after(&hook.deliveries_to(&path), killed_at, owner_pid).is_some())
                .await;
        assert!(
            resumed,
            "delivery of {name} resumes after its owner's death\n{}",
            cluster.diagnose(name).await
        );
        let first =
            first_after(&hook.deliveries_to(&path), killed_at, owner_pid).expect("a delivery");
        let successor = first.pid.and_then(|pid| cluster.replica_of_pid(pid));
        assert!(
            successor.is_some_and(|successor| successor != owner),
            "{name}: another of the replicas delivers, not {:?}",
            first.pid
        );
        let took = first.at - killed_at;
        eprintln!(
            "{name}: delivery resumed {took:?} after the kill (bound {TAKEOVER_BOUND:?} with a \
             {LEASE_TTL:?} TTL)"
        );
        if took > TAKEOVER_BOUND + SLACK {
            let owners = cluster
                .history(&format!("/cluster/owners/subscription/{name}"), 1)
                .await;
            panic!(
                "{name}: delivery resumed {took:?} after its owner's death, beyond \
                 {TAKEOVER_BOUND:?} + {SLACK:?}\nownership: {owners:?}\n{}",
                cluster.diagnose(name).await
            );
        }
    }

    // Keep publishing a while under the new owners, then check everything.
    load.wait_for(100).await;
    let acked = load.stop().await;
    for name in SUBSCRIPTIONS {
        let path = format!("/{name}");
        let missing = wait_delivered(&hook, &path, &acked).await;
        assert!(
            missing.is_empty(),
            "{name}: {} of {} acknowledged events never delivered, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        // Duplicates come only from the in-flight window of an ownership change: nothing
        // committed is delivered again, and each change adds at most the window.
        let deliveries = hook.deliveries_to(&path);
        let offsets: HashMap<&str, u64> = acked
            .iter()
            .map(|event| (event.id.as_str(), event.offset))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut again_after_commit = Vec::new();
        let mut duplicates = 0usize;
        for delivery in &deliveries {
            if seen.insert(delivery.id.as_str()) {
                continue;
            }
            duplicates += 1;
            let committed = commits[name].at(delivery.at);
            if let Some(&offset) = offsets.get(delivery.id.as_str())
                && offset < committed
            {
                again_after_commit.push((delivery.id.clone(), offset, committed));
            }
        }
        assert!(
            again_after_commit.is_empty(),
            "{name}: delivered again after their commit (id, offset, committed): \
             {again_after_commit:?}"
        );
        let changes = cluster
            .terms_since(&format!("subscription/{name}"), load_began)
            .await;
        eprintln!("{name}: {duplicates} duplicates over {changes} ownership changes");
        assert!(
            duplicates <= changes * MAX_IN_FLIGHT,
            "{name}: {duplicates} duplicates over {changes} ownership changes, more than the \
             in-flight window ({MAX_IN_FLIGHT}) each"
        );
        if !orphans.contains(&name) || changes != 1 {
            continue;
        }
        // The kill was the only change: its duplicates are exactly events the dead owner had
        // delivered at or past its last commit.
        let (new_id, new_term) = cluster
            .owner_key(&format!("subscription/{name}"))
            .await
            .expect("an ownership key");
        let (old_id, old_term) = &terms[name];
        assert_ne!(&new_id, old_id);
        assert!(new_term > *old_term);
        let history = cluster.history(&format!("/offsets/{name}"), 1).await;
        let last_commit = committed_before(&history, new_term);
        let window = Window::of(&acked, &deliveries, owner_pid, last_commit);
        eprintln!(
            "{name}: the dead owner had delivered {} events past its last commit (offset \
             {last_commit})",
            window.uncommitted
        );
        assert!(
            window.outside.is_empty(),
            "{name}: events delivered twice though the dead owner (pid {owner_pid}) had \
             committed them (below {last_commit}) or never sent them: {:?}",
            window.outside
        );
        assert!(window.duplicates.len() <= window.uncommitted);
    }

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
