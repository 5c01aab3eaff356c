//! `GET /v1/cluster`: the replicas sharing this one's metadata store, what each owns, its load
//! and its lag, as the members last reported them. Any replica answers the same (give or take
//! the moment each saw the last change).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

pub(crate) async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let cluster = &state.cluster;
    let mut owns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (unit, member) in cluster.owners() {
        owns.entry(member).or_default().push(unit);
    }
    let members: Vec<Value> = cluster
        .members()
        .into_iter()
        .map(|member| {
            let started_at = i64::try_from(member.started_at_ms)
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            json!({
                "id": member.id,
                "http": member.http,
                "grpc": member.grpc,
                "version": member.version,
                "started_at": started_at,
                "load": member.load,
                "owns": owns.remove(&member.id).unwrap_or_default(),
            })
        })
        .collect();
    // Work no live replica runs this moment: one takes it within the lease TTL. (A unit whose
    // owner's member key is gone already is about to be taken over too.)
    let mut unowned: Vec<String> = owns.into_values().flatten().collect();
    unowned.extend(state.subscriptions.unowned().await);
    unowned.extend(state.connectors.unowned().await);
    unowned.sort();
    Json(json!({
        "self": cluster.member_id(),
        "lease_ttl_ms": cluster.lease_ttl().as_millis() as u64,
        "healthy": cluster.healthy(),
        "members": members,
        "unowned": unowned,
    }))
}
