//! Replicas of one cluster in one test process: each runtime has its own connection to a
//! shared JetStream and shares one metadata store, as replicas share etcd. What is created,
//! changed or deleted through one replica must be known to the others within moments.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_meta::{EmbeddedStore, MetadataStore};
use trellis_proto::v1::{GroupMode, StartPosition, Subscription};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, Receiver};

use crate::grpc::{Member, join, subscription as member_of};
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
    let Some((_site, meta, a, b)) = two_replicas().await else {
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
    // Whichever replica ran it committed last; its offset goes all the same.
    eventually("the offset gone", async || {
        let offset = meta.get("/offsets/shared").await.expect("read");
        offset.is_none().then_some(())
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

/// A short lease, so that a replica that dies unannounced is replaced within moments (yet
/// not so short that a loaded test machine makes a live one lose it).
fn short_lease() -> RuntimeConfig {
    let mut config = config();
    config.cluster.lease_ttl = Duration::from_secs(2);
    config
}

/// Waits until the group's owner has committed the five acked events. Should the group have
/// moved meanwhile (a lease that could not be proven on a loaded machine), its new owner starts
/// from the last commit and delivers them again: they are acked again, as a client would.
async fn first_five_committed(meta: &dyn MetadataStore, member: &mut Member) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = committed(meta, "/groups/failover/g").await;
        if now == Some(5) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for the owner's commit of the acked events: {now:?}"
        );
        let again = tokio::time::timeout(Duration::from_millis(50), member.delivery()).await;
        if let Ok(delivery) = again
            && delivery.offset < 5
        {
            member.ack(vec![delivery.offset]).await;
        }
    }
}

/// The members that own `unit`, as `/v1/cluster` through `server` shows them.
async fn owners_of(server: &Server, unit: &str) -> Vec<String> {
    let (_, cluster) = server.get("/v1/cluster").await;
    cluster["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|member| {
            member["owns"]
                .as_array()
                .is_some_and(|owns| owns.iter().any(|owned| owned == unit))
        })
        .filter_map(|member| member["id"].as_str().map(str::to_owned))
        .collect()
}

async fn self_id(server: &Server) -> String {
    let (_, cluster) = server.get("/v1/cluster").await;
    cluster["self"].as_str().expect("self").to_owned()
}

/// A group's committed offset as stored.
async fn committed(meta: &dyn MetadataStore, key: &str) -> Option<u64> {
    let stored = meta.get(key).await.expect("read")?;
    let value: Value = serde_json::from_slice(&stored.value).ok()?;
    value["offset"].as_u64()
}

async fn publish_ids(server: &Server, topic: &str, ids: std::ops::Range<usize>) {
    for n in ids {
        let published = server.publish_binary(topic, &format!("e-{n}"), "x").await;
        assert_eq!(published.0, 202, "{}", published.1);
    }
}

#[tokio::test]
async fn a_group_with_members_on_two_replicas_gives_each_event_to_one_of_them_once() {
    let Some((_site, _meta, a, b)) = two_replicas().await else {
        return;
    };
    publish_ids(&a, "split", 0..10).await;
    publish_ids(&b, "split", 10..20).await;
    let window = Subscription {
        max_unacked: 5,
        ..member_of("split", "workers", GroupMode::Clustering)
    };
    let mut on_a = join(&a, window.clone()).await;
    let mut on_b = join(&b, window).await;

    // Each holds a full window before anything is acked: one coordinator split the events.
    let mut a_got = Vec::new();
    let mut b_got = Vec::new();
    for _ in 0..5 {
        a_got.push(on_a.delivery().await.offset);
        b_got.push(on_b.delivery().await.offset);
    }
    let mut held: BTreeMap<u64, u32> = BTreeMap::new();
    for offset in a_got.iter().chain(&b_got) {
        *held.entry(*offset).or_default() += 1;
    }
    assert_eq!(held.len(), 10, "no event went to both: {a_got:?} {b_got:?}");
    on_a.ack(a_got).await;
    on_b.ack(b_got).await;
    while held.len() < 20 {
        let delivery = tokio::select! {
            delivery = on_a.delivery() => { on_a.ack(vec![delivery.offset]).await; delivery }
            delivery = on_b.delivery() => { on_b.ack(vec![delivery.offset]).await; delivery }
        };
        assert_eq!(delivery.attempt, 1, "{delivery:?}");
        *held.entry(delivery.offset).or_default() += 1;
    }
    assert_eq!(
        held.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert!(held.values().all(|n| *n == 1), "{held:?}");
    assert_eq!(
        owners_of(&a, "group/split/workers").await.len(),
        1,
        "one replica runs the group"
    );
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn broadcast_members_on_two_replicas_each_get_every_event() {
    let Some((_site, _meta, a, b)) = two_replicas().await else {
        return;
    };
    publish_ids(&a, "fanout", 0..4).await;
    let broadcast = member_of("fanout", "g", GroupMode::Broadcast);
    let named = |member: &str| Subscription {
        member: member.to_owned(),
        ..broadcast.clone()
    };
    let mut bob = join(&b, named("bob")).await;
    let mut anonymous = join(&b, broadcast.clone()).await;
    let mut on_a = join(&a, named("carol")).await;
    for member in [&mut bob, &mut anonymous, &mut on_a] {
        let mut offsets = Vec::new();
        for _ in 0..4 {
            offsets.push(member.delivery().await.offset);
        }
        offsets.sort_unstable();
        assert_eq!(offsets, vec![0, 1, 2, 3]);
    }

    // Two streams of one named member on two replicas share its one cursor.
    let alice = Subscription {
        max_unacked: 2,
        ..named("alice")
    };
    let mut alice_a = join(&a, alice.clone()).await;
    let mut alice_b = join(&b, alice).await;
    let mut offsets = Vec::new();
    for _ in 0..2 {
        offsets.push(alice_a.delivery().await.offset);
        offsets.push(alice_b.delivery().await.offset);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, vec![0, 1, 2, 3], "split, not copied");
    drop((bob, anonymous, on_a, alice_a, alice_b));
    a.stop().await;
    b.stop().await;
}

/// What the member on the surviving replica saw after its group's owner went: the offsets
/// delivered, and that every unacked event came again while no acked one did.
async fn members_keep_receiving_after_the_owner_goes(
    meta: &dyn MetadataStore,
    survivor: &Server,
    on_survivor: &mut Member,
) {
    // The survivor takes the group over from the committed offset: the unacked 5..10 again.
    publish_ids(survivor, "failover", 10..15).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 10 {
        let delivery = on_survivor.delivery().await;
        assert!(
            delivery.offset >= 5,
            "an acked and committed event came again: {delivery:?}"
        );
        seen.insert(delivery.offset);
        on_survivor.ack(vec![delivery.offset]).await;
    }
    assert_eq!(seen, (5..15).collect::<BTreeSet<_>>());
    eventually("the survivor's commit of every acked event", async || {
        (committed(meta, "/groups/failover/g").await == Some(15)).then_some(())
    })
    .await;
    assert_eq!(
        owners_of(survivor, "group/failover/g").await,
        vec![self_id(survivor).await]
    );
}

/// Joins a member on `owner` first (so that replica takes the group) and one on `other`;
/// publishes ten events, which all go to the member on `other` (the one with room), acks the
/// first five and waits for the owner to commit them. Returns both members.
async fn a_group_owned_by_the_first(owner: &Server, other: &Server) -> (Member, Member) {
    let group = member_of("failover", "g", GroupMode::Clustering);
    let on_owner = join(
        owner,
        Subscription {
            max_unacked: 1,
            start: StartPosition::Latest as i32,
            // It acks nothing: what it may be given should the group move comes back soon.
            ack_timeout_ms: 1000,
            ..group.clone()
        },
    )
    .await;
    let mut on_other = join(
        other,
        Subscription {
            max_unacked: 100,
            // What a member holds comes back soon should the group move before its commit.
            ack_timeout_ms: 1000,
            ..group
        },
    )
    .await;
    assert_eq!(
        owners_of(owner, "group/failover/g").await,
        vec![self_id(owner).await]
    );
    publish_ids(other, "failover", 0..10).await;
    let mut offsets = BTreeSet::new();
    while offsets.len() < 10 {
        offsets.insert(on_other.delivery().await.offset);
    }
    assert_eq!(offsets, (0..10).collect::<BTreeSet<_>>());
    on_other.ack((0..5).collect()).await;
    (on_owner, on_other)
}

#[tokio::test]
async fn a_groups_members_on_the_other_replica_keep_receiving_when_its_owner_stops() {
    let Some(site) = Site::new(Backend::JetStream) else {
        return;
    };
    let meta: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&site.path().join("meta.redb")).expect("open metadata store"));
    let a = site.start_replica(short_lease(), Arc::clone(&meta)).await;
    let b = site.start_replica(short_lease(), Arc::clone(&meta)).await;
    let (mut on_a, mut on_b) = a_group_owned_by_the_first(&a, &b).await;
    first_five_committed(meta.as_ref(), &mut on_b).await;

    a.stop().await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match on_a.deliveries.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stopped replica's member hears of it");
    assert_eq!(ended, Some(tonic::Code::Unavailable));
    members_keep_receiving_after_the_owner_goes(meta.as_ref(), &b, &mut on_b).await;
    drop(on_b);
    b.stop().await;
}

#[tokio::test]
async fn a_groups_members_on_the_other_replica_keep_receiving_when_its_owner_dies() {
    let Some(site) = Site::new(Backend::JetStream) else {
        return;
    };
    let meta: Arc<dyn MetadataStore> =
        Arc::new(EmbeddedStore::open(&site.path().join("meta.redb")).expect("open metadata store"));
    let a = site.start_replica_apart(short_lease(), Arc::clone(&meta));
    let b = site.start_replica(short_lease(), Arc::clone(&meta)).await;
    let (_on_a, mut on_b) = a_group_owned_by_the_first(a.server(), &b).await;
    first_five_committed(meta.as_ref(), &mut on_b).await;

    // No goodbye: its ownership key stays until its lease expires.
    a.crash();
    members_keep_receiving_after_the_owner_goes(meta.as_ref(), &b, &mut on_b).await;
    let text = b.metrics().await;
    assert!(
        text.contains("trellis_group_relay_reconnects_total"),
        "the relay's move is counted:\n{text}"
    );
    drop(on_b);
    b.stop().await;
}

#[tokio::test]
async fn a_relayed_subscription_is_never_relayed_again() {
    let Some((_site, _meta, a, b)) = two_replicas().await else {
        return;
    };
    let group = member_of("norelay", "g", GroupMode::Clustering);
    let _on_a = join(&a, group.clone()).await;
    assert_eq!(
        owners_of(&a, "group/norelay/g").await,
        vec![self_id(&a).await]
    );
    // As another replica would relay it, but to one that does not run the group.
    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
    requests
        .send(trellis_proto::v1::SubscribeRequest {
            request: Some(trellis_proto::v1::subscribe_request::Request::Subscription(
                group,
            )),
        })
        .await
        .expect("send");
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request
        .metadata_mut()
        .insert("trellis-relayed-by", "elsewhere".parse().expect("ascii"));
    let status = tokio::time::timeout(PATIENCE, b.grpc_client().await.subscribe(request))
        .await
        .expect("an answer in time")
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    drop(requests);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_group_whose_ownership_is_lost_starts_again_from_its_committed_offset() {
    let Some((_site, meta, a, b)) = two_replicas().await else {
        return;
    };
    let group = member_of("revoked", "g", GroupMode::Clustering);
    let mut on_a = join(
        &a,
        Subscription {
            max_unacked: 100,
            ..group.clone()
        },
    )
    .await;
    let mut on_b = join(
        &b,
        Subscription {
            max_unacked: 1,
            ..group
        },
    )
    .await;
    assert_eq!(
        owners_of(&a, "group/revoked/g").await,
        vec![self_id(&a).await]
    );
    publish_ids(&a, "revoked", 0..4).await;
    let mut offsets = BTreeSet::new();
    for _ in 0..4 {
        offsets.insert(on_a.delivery().await.offset);
    }
    assert_eq!(offsets, (0..4).collect::<BTreeSet<_>>());
    on_a.ack(vec![0, 1]).await;
    eventually("the commit of the acked events", async || {
        (committed(meta.as_ref(), "/groups/revoked/g").await == Some(2)).then_some(())
    })
    .await;

    // The ownership key goes from under the owner (as when its lease ended unseen): its term
    // is over; whichever replica takes the group next starts from the committed offset.
    let owner_key = "/cluster/owners/group/revoked/g";
    assert!(meta.delete(owner_key).await.expect("delete"));
    let mut again = BTreeSet::new();
    while again.len() < 2 {
        let (delivery, by) = tokio::select! {
            delivery = on_a.delivery() => (delivery, &on_a),
            delivery = on_b.delivery() => (delivery, &on_b),
        };
        assert!(
            delivery.offset >= 2,
            "an acked and committed event came again: {delivery:?}"
        );
        assert_eq!(delivery.attempt, 1, "a new term: {delivery:?}");
        again.insert(delivery.offset);
        by.ack(vec![delivery.offset]).await;
    }
    assert_eq!(again, BTreeSet::from([2, 3]));
    eventually("the new owner's commit", async || {
        (committed(meta.as_ref(), "/groups/revoked/g").await == Some(4)).then_some(())
    })
    .await;
    assert_eq!(owners_of(&a, "group/revoked/g").await.len(), 1);
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}
