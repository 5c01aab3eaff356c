//! Integration tests for trellis-cluster: several `Cluster`s in one process, each on its own
//! store connection (one shared handle for the embedded store, which one process owns), on the
//! embedded store and on a real etcd.

mod embedded;
mod etcd;
mod scenarios;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_cluster::{Claim, Cluster, ClusterSettings, Fence, Placement, Revoked, Unit};
use trellis_meta::MetadataStore;

/// The lease TTL of the tests: short, so failover is quick.
const TTL: Duration = Duration::from_secs(2);
/// How long a test waits for what should happen in about a TTL, so a slow machine does not fail.
const PATIENCE: Duration = Duration::from_secs(15);

fn settings(id: &str) -> ClusterSettings {
    ClusterSettings {
        member_id: id.to_owned(),
        http: format!("{id}.test:8080"),
        grpc: None,
        version: "test".to_owned(),
        lease_ttl: TTL,
    }
}

async fn join(store: Arc<dyn MetadataStore>, id: &str) -> Cluster {
    Cluster::join(store, settings(id)).await.expect("join")
}

/// Polls `check` until it is true; panics with `what` after [`PATIENCE`]. Returns how long it took.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Who holds a `Claim` right now, per unit, as the holders themselves say; and any moment two
/// holders overlapped.
#[derive(Default)]
struct Holders {
    now: BTreeMap<String, String>,
    fences: BTreeMap<String, (String, Fence)>,
    overlaps: Vec<String>,
    revocations: Vec<(String, String, Revoked)>,
}

type SharedHolders = Arc<Mutex<Holders>>;

impl Holders {
    fn count(holders: &SharedHolders, member: &str) -> usize {
        let holders = holders.lock().expect("lock");
        holders.now.values().filter(|m| *m == member).count()
    }
}

/// Runs a unit the way the runtime will: acquire, hold until revoked, then (on a handoff)
/// release, and again. Records holders so a test can see two at once if it ever happens.
fn run_unit(
    store: Arc<dyn MetadataStore>,
    mut unit: Unit,
    member: String,
    holders: SharedHolders,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let claim: Claim = unit.acquire().await;
            let name = unit.name().to_owned();
            {
                let mut h = holders.lock().expect("lock");
                if let Some(other) = h.now.get(&name)
                    && *other != member
                {
                    let overlap = format!("{name}: {other} and {member}");
                    h.overlaps.push(overlap);
                }
                // A dead holder cannot say it stopped; its fence must have stopped holding.
                if let Some((other, fence)) = h.fences.get(&name)
                    && *other != member
                    && fence.holds()
                {
                    let overlap = format!("{name}: {other}'s fence still holds for {member}");
                    h.overlaps.push(overlap);
                }
                h.now.insert(name.clone(), member.clone());
                h.fences
                    .insert(name.clone(), (member.clone(), claim.fence()));
            }
            let fence = claim.fence();
            let offset_key = format!("/offsets/{name}");
            claim.revoked().cancelled().await;
            let reason = claim.reason().expect("a revoked claim has a reason");
            if reason == Revoked::Handoff {
                // Handing off, the holder may still commit what it finished.
                let committed = fence.put(&*store, &offset_key, "final".into()).await;
                if committed.is_err() {
                    let failure =
                        format!("{name}: {member}'s commit at handoff failed: {committed:?}");
                    holders.lock().expect("lock").overlaps.push(failure);
                }
            }
            {
                let mut h = holders.lock().expect("lock");
                if h.now.get(&name) == Some(&member) {
                    h.now.remove(&name);
                }
                h.revocations.push((name.clone(), member.clone(), reason));
            }
            claim.release().await;
            // Released, the fence refuses: nothing is written.
            let late = fence.put(&*store, &offset_key, "late".into()).await;
            if fence.holds() || !matches!(late, Err(trellis_cluster::FenceError::Lost)) {
                let failure =
                    format!("{name}: {member}'s fence still writes after release: {late:?}");
                holders.lock().expect("lock").overlaps.push(failure);
            }
        }
    })
}

/// A member and the tasks running its units.
struct Member {
    cluster: Cluster,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Member {
    async fn start(
        store: Arc<dyn MetadataStore>,
        id: &str,
        units: &[String],
        placement: Placement,
        holders: &SharedHolders,
    ) -> Member {
        let cluster = join(store.clone(), id).await;
        let tasks = units
            .iter()
            .map(|name| {
                run_unit(
                    store.clone(),
                    cluster.unit(name, placement),
                    id.to_owned(),
                    holders.clone(),
                )
            })
            .collect();
        Member { cluster, tasks }
    }

    /// Dies: no release, no revoke; the lease runs out on its own. Its holders' entries go
    /// (a dead process holds nothing; its fences are checked instead).
    fn kill(self, holders: &SharedHolders) {
        let id = self.cluster.member_id().to_owned();
        drop(self.cluster);
        for task in self.tasks {
            task.abort();
        }
        holders
            .lock()
            .expect("lock")
            .now
            .retain(|_, member| *member != id);
    }
}

fn unit_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("subscription/s{i:02}")).collect()
}

/// The runtime moves these across tasks: they must be Send and Sync, and so must `acquire`.
#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Cluster>();
    send_sync::<Unit>();
    send_sync::<Claim>();
    send_sync::<Fence>();
    let _ = |mut unit: Unit| {
        let acquire = async move { unit.acquire().await };
        send(&acquire);
    };
}
