//! Replicas of one cluster in one test process: each runtime has its own connection to a
//! shared JetStream and shares one metadata store, as replicas share etcd. What is created,
//! changed or deleted through one replica must be known to the others within moments.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_meta::{EmbeddedStore, MetadataStore};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, Receiver};

use crate::support::{Server, Site};

/// A guard against a hang, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn config() -> RuntimeConfig {
    RuntimeConfig {
        webhook_deny: Vec::new(),
        ..RuntimeConfig::default()
    }
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two replicas on one JetStream site and one metadata store; `None` skips the test.
async fn two_replicas() -> Option<(Site, Arc<dyn MetadataStore>, Server, Server)> {
    let site = Site::new(Backend::JetStream)?;
    let meta: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&site.path().join("meta.redb")).expect("open metadata store"));
    let a = site.start_replica(config(), Arc::clone(&meta)).await;
    let b = site.start_replica(config(), Arc::clone(&meta)).await;
    Some((site, meta, a, b))
}

fn subscription(name: &str, topic: &str, url: &str) -> String {
    json!({"name": name, "topic": topic, "sink": {"urls": [url], "validate": false}}).to_string()
}

#[tokio::test]
async fn a_subscription_made_through_one_replica_is_known_to_the_other_and_goes_with_its_delete() {
    let Some((_site, _meta, a, b)) = two_replicas().await else {
        return;
    };
    let receiver = Receiver::answering(200).await.expect("receiver");
    let made = a
        .post(
            "/v1/subscriptions",
            "application/json",
            subscription("shared", "orders", &receiver.url("/")),
        )
        .await;
    assert_eq!(made.0, 201, "{}", made.1);
    let seen = eventually("the subscription on the other replica", async || {
        let (status, body) = b.get("/v1/subscriptions/shared").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(seen["topic"], "orders");

    let paused = b
        .post("/v1/subscriptions/shared/pause", "application/json", "")
        .await;
    assert_eq!(paused.0, 200, "{}", paused.1);
    eventually("the pause on the first replica", async || {
        let (_, body) = a.get("/v1/subscriptions/shared").await;
        (body["paused"] == Value::Bool(true)).then_some(())
    })
    .await;

    let deleted = b.delete("/v1/subscriptions/shared").await;
    assert_eq!(deleted.0, 204, "{}", deleted.1);
    eventually("the delete on the first replica", async || {
        let (status, _) = a.get("/v1/subscriptions/shared").await;
        (status == 404).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_topic_made_through_one_replica_keeps_its_settings_and_incarnation_on_the_other() {
    let Some((_site, meta, a, b)) = two_replicas().await else {
        return;
    };
    let made = a
        .put("/v1/topics/audit", r#"{"retention_ms": 3600000}"#)
        .await;
    assert_eq!(made.0, 201, "{}", made.1);
    let stored_before = meta
        .get("/topics/audit")
        .await
        .expect("read")
        .expect("record");

    // Published through the other replica: the same topic, not a second creation.
    let published = b.publish_binary("audit", "a1", "hello").await;
    assert_eq!(published.0, 202, "{}", published.1);
    let shown = eventually("the topic on the other replica", async || {
        let (status, body) = b.get("/v1/topics/audit").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(shown["settings"]["retention_ms"], 3_600_000, "{shown}");
    let stored_after = meta
        .get("/topics/audit")
        .await
        .expect("read")
        .expect("record");
    assert_eq!(
        stored_before.value, stored_after.value,
        "the record, and so the incarnation, is the first replica's"
    );
    let (_, read) = a.get("/v1/topics/audit/events?from=0").await;
    assert_eq!(read[0]["id"], "a1", "{read}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_connector_made_through_one_replica_is_known_to_the_other() {
    let Some((_site, _meta, a, b)) = two_replicas().await else {
        return;
    };
    let receiver = Receiver::answering(200).await.expect("receiver");
    let made = a
        .post(
            "/v1/connectors",
            "application/json",
            json!({"name": "mirror", "config": {
                "connector.class": "http-sink",
                "topic": "orders",
                "sink": {"urls": [receiver.url("/")]},
            }})
            .to_string(),
        )
        .await;
    assert_eq!(made.0, 201, "{}", made.1);
    eventually("the connector on the other replica", async || {
        let (status, _) = b.get("/v1/connectors/mirror").await;
        (status == 200).then_some(())
    })
    .await;
    let deleted = b.delete("/v1/connectors/mirror").await;
    assert_eq!(deleted.0, 204, "{}", deleted.1);
    eventually("the delete on the first replica", async || {
        let (status, _) = a.get("/v1/connectors/mirror").await;
        (status == 404).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// The ids the receiver got, in arrival order.
fn delivered_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .filter_map(|request| request.header("ce-id").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn one_replica_delivers_a_subscription_and_the_other_takes_it_over_when_it_stops() {
    let Some((_site, _meta, a, b)) = two_replicas().await else {
        return;
    };
    let receiver = Receiver::answering(200).await.expect("receiver");
    let made = a
        .post(
            "/v1/subscriptions",
            "application/json",
            subscription("owned", "payments", &receiver.url("/")),
        )
        .await;
    assert_eq!(made.0, 201, "{}", made.1);
    let owner = eventually("an owner", async || {
        let (_, body) = b.get("/v1/subscriptions/owned").await;
        body["status"]["owner"].as_str().map(str::to_owned)
    })
    .await;
    let (_, on_a) = a.get("/v1/subscriptions/owned").await;
    assert_eq!(
        on_a["status"]["owner"],
        owner.as_str(),
        "both replicas agree"
    );
    let (_, cluster) = a.get("/v1/cluster").await;
    let members = cluster["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{cluster}");
    let owning: Vec<&Value> = members
        .iter()
        .filter(|member| {
            member["owns"]
                .as_array()
                .is_some_and(|owns| owns.iter().any(|unit| unit == "subscription/owned"))
        })
        .collect();
    assert_eq!(owning.len(), 1, "exactly one owner: {cluster}");
    assert_eq!(owning[0]["id"], owner.as_str());

    // Published through both replicas; delivered once each, by the owner alone.
    for n in 0..20 {
        let via = if n % 2 == 0 { &a } else { &b };
        let published = via.publish_binary("payments", &format!("p{n}"), "x").await;
        assert_eq!(published.0, 202, "{}", published.1);
    }
    eventually("20 deliveries", async || {
        (receiver.n_requests() >= 20).then_some(())
    })
    .await;
    let mut ids = delivered_ids(&receiver);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(receiver.n_requests(), 20, "no event delivered twice");

    // The owner stops (a rolling restart): the other replica takes over at once, from the
    // committed offset.
    let a_id = cluster["self"].as_str().expect("self").to_owned();
    let (owner_server, other) = if owner == a_id { (a, b) } else { (b, a) };
    owner_server.stop().await;
    for n in 20..30 {
        let published = other
            .publish_binary("payments", &format!("p{n}"), "x")
            .await;
        assert_eq!(published.0, 202, "{}", published.1);
    }
    eventually("the 10 events after the stop", async || {
        let ids = delivered_ids(&receiver);
        (20..30)
            .all(|n| ids.contains(&format!("p{n}")))
            .then_some(())
    })
    .await;
    let (_, status) = other.get("/v1/subscriptions/owned").await;
    assert_ne!(status["status"]["owner"], owner.as_str(), "{status}");
    assert_eq!(
        receiver.n_requests(),
        30,
        "a graceful handover commits first: nothing is delivered twice"
    );
    other.stop().await;
}
