//! What this replica tells the others about its load: the units it owns, the events it stores
//! per second and the lag of the subscriptions it runs. `GET /v1/cluster` shows it for every
//! replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use trellis_cluster::{Cluster, Load};

use crate::metrics::PublishMetrics;
use crate::subscriptions::SubscriptionRegistry;

/// How often the load is measured; the cluster writes it to the member key at most every 2 s.
const EVERY: Duration = Duration::from_secs(2);

pub(crate) async fn report(
    cluster: Cluster,
    subscriptions: Arc<SubscriptionRegistry>,
    publish: PublishMetrics,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), publish.stored());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = (Instant::now(), publish.stored());
        let seconds = now.0.duration_since(last.0).as_secs_f64();
        let events_per_second = if seconds > 0.0 {
            (now.1.saturating_sub(last.1)) as f64 / seconds
        } else {
            0.0
        };
        last = now;
        let mut load = Load {
            events_per_second: (events_per_second * 10.0).round() / 10.0,
            lag: subscriptions.owned_lag().await,
            ..Load::default()
        };
        let me = cluster.member_id().to_owned();
        for (unit, owner) in cluster.owners() {
            if owner != me {
                continue;
            }
            match unit.split('/').next() {
                Some("subscription") => load.subscriptions += 1,
                Some("connector") => load.connectors += 1,
                Some("group") => load.groups += 1,
                _ => {}
            }
        }
        cluster.set_load(load);
    }
}
