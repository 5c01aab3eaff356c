//! Topics and their subscribers: a topic in use is not deleted unless forced; a forced delete
//! leaves subscriptions waiting, and they read the next incarnation from its beginning; dead
//! letters cannot go round a cycle; deleted subscriptions leave no series on `/metrics`.

use std::time::{Duration, Instant};

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{Server, Site, assert_error, per_backend, server};

/// A sink nobody answers at: these tests look at offsets and states, not deliveries.
const SINK: &str = "http://127.0.0.1:9/hook";

async fn subscribe(server: &Server, body: Value) -> (u16, Value) {
    server
        .post("/v1/subscriptions", "application/json", body.to_string())
        .await
}

/// Creates a subscription that must be accepted.
async fn subscribe_ok(server: &Server, body: Value) {
    let (code, body) = subscribe(server, body).await;
    assert_eq!(code, 201, "{body}");
}

/// Publishes events `{prefix}-0` .. `{prefix}-{n-1}` to `topic`, each accepted.
async fn publish_n(server: &Server, topic: &str, prefix: &str, n: usize) {
    for k in 0..n {
        let (code, body) = server
            .publish_binary(topic, &format!("{prefix}-{k}"), "x")
            .await;
        assert_eq!(code, 202, "{body}");
    }
}

/// Publishes five events to `orders`, then subscribes `reader` to it from the latest offset, so
/// that its committed offset is 5.
async fn reader_after_five_events(server: &Server) {
    publish_n(server, "orders", "old", 5).await;
    subscribe_ok(
        server,
        json!({"name": "reader", "topic": "orders", "start": "latest", "sink": {"urls": [SINK]}}),
    )
    .await;
}

/// Starts a redrive of subscription `name`, which must be accepted; returns its (from, to).
async fn redrive(server: &Server, name: &str) -> (Value, Value) {
    let (code, body) = server
        .post(
            &format!("/v1/subscriptions/{name}/redrive"),
            "application/json",
            "",
        )
        .await;
    assert_eq!(code, 202, "{body}");
    (body["from"].clone(), body["to"].clone())
}

async fn status(server: &Server, name: &str) -> Value {
    let (code, body) = server.get(&format!("/v1/subscriptions/{name}")).await;
    assert_eq!(code, 200, "{body}");
    body["status"].clone()
}

/// Polls until `done` holds or 10 s pass; returns whether it held.
async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether subscription `name` reaches `state` within [`eventually`]'s patience.
async fn reaches_state(server: &Server, name: &str, state: &str) -> bool {
    eventually(async || status(server, name).await["state"] == state).await
}

/// The metadata store of a stopped runtime's data dir, to rewrite what it left.
fn open_meta(site: &Site) -> trellis_meta::EmbeddedStore {
    trellis_meta::EmbeddedStore::open(&site.path().join("meta.redb")).expect("open metadata store")
}

#[apply(backends)]
#[tokio::test]
async fn a_topic_in_use_is_not_deleted_unless_forced_and_then_its_subscribers_wait(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    // Its gauge is read below, and the gauges of both cases share one recorder.
    let reader = per_backend("reader", backend);
    subscribe_ok(
        &server,
        json!({"name": reader, "topic": "orders", "sink": {"urls": [SINK]}}),
    )
    .await;
    subscribe_ok(
        &server,
        json!({"name": "other", "topic": "payments", "dead_letter_topic": "orders", "sink": {"urls": [SINK]}}),
    )
    .await;
    let (_, before) = server.get("/v1/topics/orders").await;
    let first_incarnation = before["incarnation"]
        .as_str()
        .expect("incarnation")
        .to_owned();
    assert!(!first_incarnation.is_empty(), "{before}");

    let message = assert_error(
        &server.delete("/v1/topics/orders").await,
        409,
        "topic_in_use",
    );
    assert!(
        message.contains(&format!("\"{reader}\" (its topic)")),
        "{message}"
    );
    assert!(
        message.contains("\"other\" (its dead_letter_topic)"),
        "{message}"
    );
    assert!(message.contains("force=true"), "{message}");
    assert_eq!(server.get("/v1/topics/orders").await.0, 200, "still there");
    assert_error(
        &server.delete("/v1/topics/orders?force=maybe").await,
        400,
        "invalid_query",
    );

    assert_eq!(server.delete("/v1/topics/orders?force=true").await.0, 204);
    assert_error(
        &server.get("/v1/topics/orders").await,
        404,
        "topic_not_found",
    );
    // The subscription hears of the deletion from its store a moment after the answer.
    assert!(
        reaches_state(&server, &reader, "waiting_for_topic").await,
        "{}",
        status(&server, &reader).await
    );
    let waiting = status(&server, &reader).await;
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("deleted")),
        "{waiting}"
    );
    assert!(server.metrics().await.contains(&format!(
        "trellis_subscription_waiting_for_topic{{subscription=\"{reader}\"}} 1"
    )));
    // The subscription does not bring the topic back by itself.
    assert_error(
        &server.get("/v1/topics/orders").await,
        404,
        "topic_not_found",
    );

    let (code, created) = server.put("/v1/topics/orders", "").await;
    assert_eq!(code, 201, "{created}");
    assert_ne!(created["incarnation"], first_incarnation.as_str());
    assert!(
        reaches_state(&server, &reader, "running").await,
        "the subscription runs again once the topic exists"
    );
    assert!(status(&server, &reader).await.get("reason").is_none());
    assert!(server.metrics().await.contains(&format!(
        "trellis_subscription_waiting_for_topic{{subscription=\"{reader}\"}} 0"
    )));
    server.stop().await;
}

/// The stale-offset finding: a subscription's committed offset outlived its topic and was
/// applied, after a restart, to the topic created again under the same name.
#[apply(backends)]
#[tokio::test]
async fn an_offset_of_a_deleted_topic_is_not_applied_to_the_next_one_after_a_restart(
    #[case] backend: Backend,
) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    reader_after_five_events(&server).await;
    assert_eq!(status(&server, "reader").await["committed_offset"], 5);
    assert_eq!(server.delete("/v1/topics/orders?force=true").await.0, 204);
    server.stop().await;

    let server = site.start(RuntimeConfig::default()).await;
    // Once this replica owns it again (at once, on a node of its own).
    assert!(
        reaches_state(&server, "reader", "waiting_for_topic").await,
        "{}",
        status(&server, "reader").await
    );
    assert_error(
        &server.get("/v1/topics/orders").await,
        404,
        "topic_not_found",
    );
    publish_n(&server, "orders", "new", 2).await;
    assert!(
        reaches_state(&server, "reader", "running").await,
        "the subscription runs on the new topic"
    );
    let running = status(&server, "reader").await;
    assert_eq!(
        running["committed_offset"], 0,
        "from the beginning: {running}"
    );
    assert_eq!(running["lag"], 2, "{running}");
    server.stop().await;

    // Its offset in the new incarnation is its own again after another restart.
    let server = site.start(RuntimeConfig::default()).await;
    assert!(reaches_state(&server, "reader", "running").await);
    assert_eq!(status(&server, "reader").await["lag"], 2);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn dead_letter_cycles_are_refused_naming_the_cycle(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let sub = |name: &str, topic: &str, dead_letters: &str| json!({"name": name, "topic": topic, "dead_letter_topic": dead_letters, "sink": {"urls": [SINK]}});
    assert_eq!(subscribe(&server, sub("a", "t1", "t2")).await.0, 201);
    let message = assert_error(
        &subscribe(&server, sub("b", "t2", "t1")).await,
        400,
        "dead_letter_cycle",
    );
    assert!(message.contains("\"b\" (t2 -> t1)"), "{message}");
    assert!(message.contains("\"a\" (t1 -> t2)"), "{message}");
    assert_error(&server.get("/v1/topics/t2").await, 404, "topic_not_found");

    // A longer cycle: t1 -> t2 -> t3 -> t1.
    assert_eq!(subscribe(&server, sub("b", "t2", "t3")).await.0, 201);
    let res = subscribe(&server, sub("c", "t3", "t1")).await;
    let message = assert_error(&res, 400, "dead_letter_cycle");
    assert_eq!(res.1["field"], "dead_letter_topic");
    for name in ["\"a\"", "\"b\"", "\"c\""] {
        assert!(message.contains(name), "{message}");
    }
    // Its own topic as its dead-letter topic is the shortest cycle.
    assert_error(
        &subscribe(&server, sub("d", "t4", "t4")).await,
        400,
        "invalid_subscription",
    );
    // A chain that ends is fine.
    assert_eq!(subscribe(&server, sub("c", "t3", "t9")).await.0, 201);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn deleted_subscriptions_leave_no_series_on_metrics(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    // The recorder is shared with the other case, which churns at the same time.
    let prefix = per_backend("churn", backend);
    let names: Vec<String> = (0..200).map(|n| format!("{prefix}-{n}")).collect();
    for name in &names {
        subscribe_ok(
            &server,
            json!({"name": name, "topic": "churned", "sink": {"urls": [SINK]}}),
        )
        .await;
    }
    let per_subscription = |text: &str| {
        text.lines()
            .filter(|line| line.contains(&format!("subscription=\"{prefix}-")))
            .count()
    };
    let live = server.metrics().await;
    assert!(
        per_subscription(&live) >= 200 * 10,
        "series while they live"
    );
    for name in &names {
        assert_eq!(
            server.delete(&format!("/v1/subscriptions/{name}")).await.0,
            204
        );
    }
    let left = server.metrics().await;
    assert_eq!(per_subscription(&left), 0, "left behind");
    // Series of the other subscriptions of this process stay well formed: one TYPE per family.
    let mut types: Vec<&str> = left
        .lines()
        .filter(|line| line.starts_with("# TYPE "))
        .collect();
    let all = types.len();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), all, "a family rendered twice");
    server.stop().await;
}

/// A data dir from before incarnations: a topic with no record in the metadata store (made by a
/// publish) and a committed offset stored as bare decimal. Both are the legacy incarnation, so
/// the offset still applies; once the topic is deleted and created again it no longer does.
#[apply(backends)]
#[tokio::test]
async fn a_data_dir_without_incarnations_keeps_its_offsets_until_the_topic_is_re_created(
    #[case] backend: Backend,
) {
    use trellis_meta::MetadataStore as _;

    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    reader_after_five_events(&server).await;
    server.stop().await;
    {
        // Rewritten into the older shape.
        let meta = open_meta(&site);
        meta.delete("/topics/orders").await.expect("delete");
        meta.put("/offsets/reader", bytes::Bytes::from_static(b"3"))
            .await
            .expect("put");
    }

    let server = site.start(RuntimeConfig::default()).await;
    let (_, topic) = server.get("/v1/topics/orders").await;
    assert_eq!(topic["incarnation"], "", "{topic}");
    // The status shows the stored offset once the dispatcher has loaded it, a moment after
    // the state says running.
    let committed = async |offset: u64| {
        eventually(async || status(&server, "reader").await["committed_offset"] == offset).await
    };
    assert!(reaches_state(&server, "reader", "running").await);
    assert!(committed(3).await, "{}", status(&server, "reader").await);

    assert_eq!(server.delete("/v1/topics/orders?force=true").await.0, 204);
    let (code, created) = server.put("/v1/topics/orders", "").await;
    assert_eq!(code, 201, "{created}");
    assert_ne!(created["incarnation"], "");
    assert!(reaches_state(&server, "reader", "running").await);
    assert!(committed(0).await, "{}", status(&server, "reader").await);
    server.stop().await;
}

/// A delete cut short by a crash (its record marked, its files still there) is finished at the
/// next start: the old events never come back under a new incarnation.
#[apply(backends)]
#[tokio::test]
async fn a_delete_cut_short_is_finished_at_the_next_start(#[case] backend: Backend) {
    use trellis_meta::MetadataStore as _;

    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    assert_eq!(server.publish_binary("orders", "e-0", "x").await.0, 202);
    server.stop().await;
    {
        let meta = open_meta(&site);
        let stored = meta
            .get("/topics/orders")
            .await
            .expect("get")
            .expect("the topic has a record");
        let mut record: Value = serde_json::from_slice(&stored.value).expect("JSON record");
        record["deleting"] = Value::Bool(true);
        meta.put(
            "/topics/orders",
            bytes::Bytes::from(serde_json::to_vec(&record).expect("encode")),
        )
        .await
        .expect("put");
    }
    let server = site.start(RuntimeConfig::default()).await;
    assert_error(
        &server.get("/v1/topics/orders").await,
        404,
        "topic_not_found",
    );
    let res = server.publish_binary("orders", "e-1", "x").await;
    assert_eq!(res.1["events"][0]["offset"], 0, "a new topic: {}", res.1);
    server.stop().await;
}

/// A redrive's cursor counts in the dead-letter topic it was stored for: after that topic is
/// deleted and created again, the next redrive starts at its offset 0.
#[apply(backends)]
#[tokio::test]
async fn a_redrive_cursor_is_not_applied_to_a_re_created_dead_letter_topic(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    subscribe_ok(
        &server,
        json!({
            "name": "r", "topic": "src", "dead_letter_topic": "src.dead",
            "sink": {"urls": [SINK]},
            "delivery": {"max_attempts": 1, "breaker": {"failure_threshold": 1000}},
        }),
    )
    .await;
    let dead_letters = async || server.get("/v1/topics/src.dead").await.1["next_offset"].clone();
    publish_n(&server, "src", "e", 3).await;
    assert!(
        eventually(async || dead_letters().await == 3).await,
        "three dead letters"
    );
    assert_eq!(redrive(&server, "r").await, (json!(0), json!(3)));
    assert!(
        eventually(async || status(&server, "r").await["redrive"]["running"] == false).await,
        "the redrive ends"
    );

    assert_eq!(server.delete("/v1/topics/src.dead?force=true").await.0, 204);
    assert_eq!(server.publish_binary("src", "e-3", "x").await.0, 202);
    assert!(
        eventually(async || dead_letters().await == 1).await,
        "a new dead-letter topic"
    );
    assert_eq!(redrive(&server, "r").await, (json!(0), json!(1)));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_paused_subscription_also_shows_that_its_topic_was_deleted(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    subscribe_ok(
        &server,
        json!({"name": "resting", "topic": "quiet", "sink": {"urls": [SINK]}}),
    )
    .await;
    let (code, body) = server
        .post("/v1/subscriptions/resting/pause", "application/json", "")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&server, "resting").await["state"], "paused");
    assert_eq!(server.delete("/v1/topics/quiet?force=true").await.0, 204);
    assert!(reaches_state(&server, "resting", "waiting_for_topic").await);
    assert_eq!(status(&server, "resting").await["paused"], true);
    // Created again, it is paused on the new topic, at its beginning.
    assert_eq!(server.publish_binary("quiet", "e-0", "x").await.0, 202);
    assert!(reaches_state(&server, "resting", "paused").await);
    let paused = status(&server, "resting").await;
    assert_eq!(paused["committed_offset"], 0, "{paused}");
    assert_eq!(paused["lag"], 1, "{paused}");
    server.stop().await;
}
