//! Cluster mode end to end: several real `trellis serve` replicas sharing one etcd (metadata,
//! membership, ownership) and one nats-server (events), all on loopback, with the lease TTL cut
//! to 2 s so that failovers take seconds. What each test asserts is what a user would check:
//! every acknowledged event reaches its webhook, which replica delivered it, what
//! `GET /v1/cluster` says, and what etcd's history of an offset key proves.
//!
//! Each test runs its own etcd, nats-server and replicas, so they run in parallel; each skips
//! where etcd or nats-server is missing, unless `TRELLIS_REQUIRE_ETCD` / `TRELLIS_REQUIRE_NATS`
//! is set.

mod failover;
mod freeze;
mod groups;
mod harness;
mod hook;
mod join;
mod member;
mod partition;
mod rejoin;
mod restarts;

use std::time::Duration;

use serde_json::json;
use trellis_test_support::TrellisProcess;

use crate::{bin, eventually, publish};
use harness::Cluster;
use hook::Hook;

/// The receiver names the process that sent each delivery: the one `trellis serve` that owns
/// the subscription, for every delivery.
#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_tells_which_process_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let pids = hook::Pids::default();
    pids.lock().expect("pids").insert(process.pid(), 7);
    let hook = Hook::start(pids).await;
    let client = reqwest::Client::new();
    let base = process.base_url();
    let created = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({"name": "audit", "topic": "orders", "sink": {"urls": [hook.url("/audit")]}}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    hook.set_delay(Duration::from_millis(20));
    for n in 0..5 {
        let id = format!("e-{n}");
        let response = publish(&client, base, "orders", &id, id.clone())
            .await
            .expect("publish");
        assert_eq!(response.status(), 202);
    }
    assert!(eventually(async || hook.deliveries_to("/audit").len() == 5).await);
    let deliveries = hook.deliveries();
    assert!(
        deliveries
            .iter()
            .all(|delivery| delivery.pid == Some(process.pid()) && delivery.attempt == 1),
        "{deliveries:?}"
    );
    let mut ids: Vec<&str> = deliveries
        .iter()
        .map(|delivery| delivery.id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e-0", "e-1", "e-2", "e-3", "e-4"]);
}

/// Three replicas start against one etcd and one nats-server, and each lists all three as
/// members in `GET /v1/cluster`, itself healthy, with the TTL it was given.
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_see_each_other() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    for index in 0..3 {
        let view = cluster.view(index).await;
        assert_eq!(view["self"], cluster.member(index), "{view}");
        assert_eq!(view["healthy"], true, "{view}");
        assert_eq!(view["lease_ttl_ms"], 2000, "{view}");
        let members = view["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{view}");
        assert_eq!(view["unowned"], serde_json::json!([]), "{view}");
        for member in members {
            let id = member["id"].as_str().expect("id");
            let replica = cluster.replica_of_member(id).expect("one of ours");
            assert_eq!(
                member["http"].as_str().map(|http| format!("http://{http}")),
                Some(cluster.base(replica)),
                "{view}"
            );
            assert_eq!(
                member["grpc"].as_str().map(|grpc| format!("http://{grpc}")),
                Some(cluster.grpc(replica)),
                "{view}"
            );
            assert!(member["started_at"].is_string(), "{view}");
            assert!(member["load"]["subscriptions"].is_u64(), "{view}");
            assert!(member["owns"].is_array(), "{view}");
        }
    }
}

/// The harness's freeze stops the whole process (it answers nothing) until the thaw, after
/// which it answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_process_answers_only_after_the_thaw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let healthz = format!("{}/healthz", process.base_url());
    process.freeze().expect("SIGSTOP");
    assert!(
        client.get(&healthz).send().await.is_err(),
        "no answer while frozen"
    );
    process.thaw().expect("SIGCONT");
    let answered = eventually(async || {
        client
            .get(&healthz)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(answered, "answers after the thaw");
}
