//! The owner is frozen (SIGSTOP) past its lease TTL while it has deliveries in flight, another
//! replica takes over, and then the frozen one is resumed (SIGCONT). A replica that wakes up
//! believing it still owns the subscription would, at once, end its in-flight deliveries, commit
//! their offsets and send the next events. It must do none of that: the receiver, which knows
//! which process sent what, sees no attempt it made after the thaw, and etcd's history of the
//! offset key shows no commit of it.
//!
//! How the history proves it: before the thaw the successor has delivered and committed every
//! event (the topic's end), and nothing more is published, so no legitimate commit is left to
//! make. A commit by the woken replica would write the offset it had reached when frozen, which
//! is below the end (publishing went on under the successor). So after the thaw the key must
//! either stay untouched or only be written with the end again, and over the whole takeover
//! the committed offsets must never go back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use trellis_meta::WatchEvent;

use super::failover::wait_for;
use super::harness::{Cluster, LEASE_TTL, PATIENCE, offset_of, wait_delivered};

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_owner_wakes_without_delivering_or_committing() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let hook = cluster.hook().await;
    // Slow answers keep deliveries in flight when the owner freezes: their answers reach it
    // only after it wakes. One first attempt in 20 fails, so that retries are due then too.
    hook.set_delay(Duration::from_millis(300));
    hook.set_status(|id, attempt| {
        let number: u64 = id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if attempt == 1 && number % 20 == 7 {
            500
        } else {
            200
        }
    });
    cluster
        .subscribe_with(
            0,
            json!({"name": "ledger", "topic": "orders", "sink": {"urls": [hook.url("/ledger")]},
                   "delivery": {"max_attempts": 20, "backoff": {"initial_ms": 400, "max_ms": 800}}}),
        )
        .await;
    let owner_id = cluster.owner_when("subscription/ledger", |_| true).await;
    let owner = cluster.replica_of_member(&owner_id).expect("one of ours");
    let owner_pid = cluster.pid(owner);
    let load = cluster.load("orders", "order", Duration::from_millis(10));
    assert!(
        wait_for(|| {
            hook.deliveries_to("/ledger")
                .iter()
                .filter(|delivery| delivery.pid == Some(owner_pid))
                .count()
                >= 50
        })
        .await,
        "the owner delivers; logs:\n{}",
        cluster.logs(owner)
    );
    let (_, old_term) = cluster
        .owner_key("subscription/ledger")
        .await
        .expect("an ownership key");

    cluster.freeze(owner);
    let frozen_at = Instant::now();
    // Another replica takes over once the frozen one's lease ends.
    let successor_id = cluster
        .owner_when("subscription/ledger", |member| member != owner_id)
        .await;
    let successor = cluster
        .replica_of_member(&successor_id)
        .expect("one of ours");
    eprintln!(
        "the successor owns the subscription {:?} after the freeze (TTL {LEASE_TTL:?})",
        frozen_at.elapsed()
    );
    load.wait_for(100).await;
    let acked = load.stop().await;
    hook.set_delay(Duration::ZERO);
    let missing = wait_delivered(&hook, "/ledger", &acked).await;
    assert!(
        missing.is_empty(),
        "{} acknowledged events never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let end = cluster.next_offset("orders").await;
    let deadline = Instant::now() + PATIENCE;
    while cluster.committed("/offsets/ledger").await != Some(end) {
        assert!(
            Instant::now() < deadline,
            "the successor commits the end {end}; logs:\n{}",
            cluster.logs(successor)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = cluster.revision().await;
    let delivered_before_thaw = hook.deliveries_to("/ledger").len();

    // Taken before the thaw: nothing the woken replica makes up comes earlier.
    let thawed_wall_ms = unix_ms();
    let thawed_at = Instant::now();
    cluster.thaw(owner);
    // The woken replica finds its lease gone, joins again as a healthy member, and may even be
    // handed the subscription back in a new term: by then there is nothing left to deliver.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = cluster.view(owner).await;
        if view["healthy"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the woken replica becomes healthy again: {view}; logs:\n{}",
            cluster.logs(owner)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for whatever it would wrongly do once it runs again.
    tokio::time::sleep(LEASE_TTL).await;

    // Every finding at once: the receiver's and etcd's tell the same story from two sides.
    let mut findings = Vec::new();
    // An attempt the woken replica made up after the freeze (so after the thaw: it ran not in
    // between) is what must never be. One it made up, and was allowed to send, just before the
    // freeze can still reach the receiver after the thaw, when the freeze caught it between
    // that check and its request's write: no check in the sender can close that window, only
    // make it small. Those are told apart by the time in the attempt's request id and
    // reported, not failed.
    let (stragglers, after_thaw): (Vec<_>, Vec<_>) = hook
        .deliveries_to("/ledger")
        .into_iter()
        .filter(|delivery| delivery.pid == Some(owner_pid) && delivery.at > thawed_at)
        .partition(|delivery| {
            delivery
                .made_at_ms
                .is_some_and(|made| made < thawed_wall_ms)
        });
    if !stragglers.is_empty() {
        eprintln!(
            "{} attempts allowed before the freeze reached the receiver after the thaw: {stragglers:?}",
            stragglers.len()
        );
    }
    if !after_thaw.is_empty() {
        findings.push(format!(
            "the woken replica made {} delivery attempts after the thaw, e.g. {:?}",
            after_thaw.len(),
            &after_thaw[..after_thaw.len().min(3)]
        ));
    }
    let delivered = hook.deliveries_to("/ledger").len() - stragglers.len();
    if delivered != delivered_before_thaw {
        findings.push(format!(
            "{} deliveries after the thaw, with nothing left to deliver",
            delivered - delivered_before_thaw
        ));
    }
    let since_quiet = offsets(&cluster.history("/offsets/ledger", quiet + 1).await);
    if since_quiet.iter().any(|&offset| offset != end) {
        findings.push(format!(
            "offsets committed after the thaw: {since_quiet:?} (the end is {end}); a lower one is \
             the woken replica's"
        ));
    }
    let since_takeover = offsets(&cluster.history("/offsets/ledger", old_term).await);
    if since_takeover.windows(2).any(|pair| pair[0] > pair[1]) {
        findings.push(format!(
            "the committed offset went back during the takeover: {since_takeover:?}"
        ));
    }
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The offsets written by the puts among `events`.
fn offsets(events: &[WatchEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            WatchEvent::Put(kv) => offset_of(&kv.value),
            WatchEvent::Delete { .. } => None,
        })
        .collect()
}
