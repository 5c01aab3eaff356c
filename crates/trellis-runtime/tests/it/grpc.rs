//! The gRPC API through a real tonic client: publishing (unary and streams, per-event errors,
//! duplicates) and consumer groups (clustering, broadcast, redelivery, committed offsets).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use trellis_proto::v1::{
    self, Ack, CloudEvent, Delivery, GroupMode, PublishRequest, PublishResponse, StartPosition,
    SubscribeRequest, SubscribeResponse, Subscription, cloud_event, event_result,
    subscribe_request, subscribe_response,
};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{PATIENCE, Server, Site, grpc_event, server, server_with};

fn event(id: &str) -> CloudEvent {
    grpc_event(id, "text/plain", &format!("data of {id}"))
}

fn batch(batch_id: u64, topic: &str, ids: &[&str]) -> PublishRequest {
    PublishRequest {
        batch_id,
        topic: topic.to_owned(),
        events: ids.iter().map(|id| event(id)).collect(),
    }
}

/// (offset, duplicate) of a stored result; panics on an error result.
fn stored(response: &PublishResponse, idx: usize) -> (u64, bool) {
    match &response.results[idx].result {
        Some(event_result::Result::Stored(stored)) => (stored.offset, stored.duplicate),
        other => panic!("event {idx} was not stored: {other:?}"),
    }
}

fn error(response: &PublishResponse, idx: usize) -> v1::Error {
    match &response.results[idx].result {
        Some(event_result::Result::Error(error)) => error.clone(),
        other => panic!("event {idx} did not fail: {other:?}"),
    }
}

async fn publish(server: &Server, topic: &str, ids: &[&str]) -> PublishResponse {
    server
        .grpc_client()
        .await
        .publish(batch(1, topic, ids))
        .await
        .expect("publish")
        .into_inner()
}

#[apply(backends)]
#[tokio::test]
async fn unary_publish_stores_a_batch_readable_over_http(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let response = publish(&server, "orders", &["a", "b"]).await;
    assert_eq!(response.batch_id, 1);
    assert_eq!(stored(&response, 0), (0, false));
    assert_eq!(stored(&response, 1), (1, false));
    let (status, events) = server.get("/v1/topics/orders/events").await;
    assert_eq!(status, 200);
    assert_eq!(events[1]["id"], "b");
    assert_eq!(events[1]["data"], "data of b");
    assert_eq!(events[1]["datacontenttype"], "text/plain");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn an_invalid_event_fails_alone_and_the_rest_of_its_batch_is_stored(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let mut request = batch(7, "t", &["a", "b", "c"]);
    request.events[1].r#type.clear();
    let response = server
        .grpc_client()
        .await
        .publish(request)
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(stored(&response, 0), (0, false));
    let failure = error(&response, 1);
    assert_eq!(failure.code, Code::InvalidArgument as i32);
    assert_eq!(failure.attribute, "type");
    assert_eq!(stored(&response, 2), (1, false));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn an_oversized_event_fails_with_failed_precondition(#[case] backend: Backend) {
    let config = RuntimeConfig {
        max_event_bytes: 1024,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    let mut request = batch(1, "t", &["small", "big"]);
    request.events[1].data = Some(cloud_event::Data::BinaryData(vec![7; 4096].into()));
    let response = server
        .grpc_client()
        .await
        .publish(request)
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(stored(&response, 0), (0, false));
    assert_eq!(error(&response, 1).code, Code::FailedPrecondition as i32);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_bad_topic_name_is_invalid_argument(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let status = server
        .grpc_client()
        .await
        .publish(batch(1, "no/slashes", &["a"]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_topic_beyond_max_topics_is_failed_precondition(#[case] backend: Backend) {
    let config = RuntimeConfig {
        max_topics: 1,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    assert_eq!(
        stored(&publish(&server, "first", &["a"]).await, 0),
        (0, false)
    );
    let status = server
        .grpc_client()
        .await
        .publish(batch(1, "second", &["a"]))
        .await
        .expect_err("refused");
    // Not RESOURCE_EXHAUSTED: the SDK would retry that, and only an operator can make room.
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("max_topics"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn duplicates_are_flagged_with_the_first_offset(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish(&server, "t", &["a"]).await;
    let again = publish(&server, "t", &["b", "a"]).await;
    assert_eq!(stored(&again, 0), (1, false));
    assert_eq!(stored(&again, 1), (0, true));
    // Across the APIs too: the key is a duplicate whichever one stored it first.
    let (_, body) = server.publish_binary("t", "h", "x").await;
    assert_eq!(body["events"][0]["offset"], 2);
    let mut from_http = batch(2, "t", &["h"]);
    from_http.events[0].source = "/tests".to_owned();
    let response = server
        .grpc_client()
        .await
        .publish(from_http)
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(stored(&response, 0), (2, true));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_publish_stream_answers_every_batch_in_flight_once_and_stores_them_in_order(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let (requests, outgoing) = mpsc::channel(64);
    let mut answers = server
        .grpc_client()
        .await
        .publish_stream(ReceiverStream::new(outgoing))
        .await
        .expect("stream")
        .into_inner();
    let n_batches = 20u64;
    for batch_id in 0..n_batches {
        let ids = [format!("{batch_id}-a"), format!("{batch_id}-b")];
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        requests
            .send(batch(batch_id, "stream", &ids))
            .await
            .expect("send");
    }
    drop(requests);
    let mut seen_batches = BTreeSet::new();
    let mut offsets = BTreeSet::new();
    while let Some(answer) = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .expect("answers in time")
        .expect("stream ok")
    {
        assert!(seen_batches.insert(answer.batch_id), "answered twice");
        assert_eq!(answer.results.len(), 2);
        for idx in 0..2 {
            let (offset, duplicate) = stored(&answer, idx);
            assert!(!duplicate);
            assert!(offsets.insert(offset));
            // Stored in the order sent, whatever the order of the answers.
            assert_eq!(
                offset,
                2 * answer.batch_id + idx as u64,
                "batch {} event {idx}",
                answer.batch_id
            );
        }
    }
    assert_eq!(seen_batches, (0..n_batches).collect());
    assert_eq!(offsets, (0..2 * n_batches).collect());
    server.stop().await;
}

/// A member's two halves: acks in, deliveries out.
pub(crate) struct Member {
    pub(crate) acks: mpsc::Sender<SubscribeRequest>,
    pub(crate) deliveries: Streaming<SubscribeResponse>,
    pub(crate) from_offset: u64,
}

pub(crate) fn subscription(topic: &str, group: &str, mode: GroupMode) -> Subscription {
    Subscription {
        topic: topic.to_owned(),
        group: group.to_owned(),
        mode: mode as i32,
        start: StartPosition::Earliest as i32,
        max_unacked: 0,
        ack_timeout_ms: 0,
        member: String::new(),
    }
}

pub(crate) async fn join(server: &Server, subscription: Subscription) -> Member {
    let (acks, outgoing) = mpsc::channel(64);
    acks.send(SubscribeRequest {
        request: Some(subscribe_request::Request::Subscription(subscription)),
    })
    .await
    .expect("send subscription");
    let mut deliveries = server
        .grpc_client()
        .await
        .subscribe(ReceiverStream::new(outgoing))
        .await
        .expect("subscribe")
        .into_inner();
    let first = next(&mut deliveries).await;
    let Some(subscribe_response::Response::Subscribed(subscribed)) = first.response else {
        panic!("the first response must be Subscribed, got {first:?}");
    };
    Member {
        acks,
        deliveries,
        from_offset: subscribed.from_offset,
    }
}

async fn next(deliveries: &mut Streaming<SubscribeResponse>) -> SubscribeResponse {
    tokio::time::timeout(PATIENCE, deliveries.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

impl Member {
    pub(crate) async fn delivery(&mut self) -> Delivery {
        match next(&mut self.deliveries).await.response {
            Some(subscribe_response::Response::Delivery(delivery)) => delivery,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    pub(crate) async fn ack(&self, offsets: Vec<u64>) {
        self.acks
            .send(SubscribeRequest {
                request: Some(subscribe_request::Request::Ack(Ack { offsets })),
            })
            .await
            .expect("send ack");
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|n| format!("e-{n}")).collect()
}

async fn publish_n(server: &Server, topic: &str, n: usize) {
    let ids = ids(n);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    publish(server, topic, &ids).await;
}

#[apply(backends)]
#[tokio::test]
async fn clustering_splits_events_between_members_and_each_is_acked_once(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "split", 20).await;
    let window = Subscription {
        max_unacked: 5,
        ..subscription("split", "workers", GroupMode::Clustering)
    };
    let mut first = join(&server, window.clone()).await;
    assert_eq!(first.from_offset, 0);
    let mut second = join(&server, window).await;

    // Each holds a full window before anything is acked: the group split the events.
    let mut held: BTreeMap<u64, u32> = BTreeMap::new();
    let mut first_got = Vec::new();
    let mut second_got = Vec::new();
    for _ in 0..5 {
        first_got.push(first.delivery().await);
        second_got.push(second.delivery().await);
    }
    for delivery in first_got.iter().chain(&second_got) {
        assert_eq!(delivery.attempt, 1);
        *held.entry(delivery.offset).or_default() += 1;
    }
    assert_eq!(held.len(), 10, "no event went to both members");

    first
        .ack(first_got.iter().map(|d| d.offset).collect())
        .await;
    second
        .ack(second_got.iter().map(|d| d.offset).collect())
        .await;
    while held.len() < 20 {
        let delivery = tokio::select! {
            delivery = first.delivery() => { first.ack(vec![delivery.offset]).await; delivery }
            delivery = second.delivery() => { second.ack(vec![delivery.offset]).await; delivery }
        };
        assert_eq!(delivery.attempt, 1);
        *held.entry(delivery.offset).or_default() += 1;
    }
    assert_eq!(
        held.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert!(held.values().all(|n| *n == 1), "{held:?}");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn an_unacked_event_is_delivered_again_after_the_ack_timeout(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "slow", 1).await;
    let mut member = join(
        &server,
        Subscription {
            ack_timeout_ms: 100,
            ..subscription("slow", "g", GroupMode::Clustering)
        },
    )
    .await;
    let first = member.delivery().await;
    assert_eq!((first.offset, first.attempt), (0, 1));
    let again = member.delivery().await;
    assert_eq!((again.offset, again.attempt), (0, 2));
    assert_eq!(again.event, first.event);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn events_a_member_held_go_to_another_when_it_leaves(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "leave", 3).await;
    let mut leaving = join(&server, subscription("leave", "g", GroupMode::Clustering)).await;
    for offset in 0..3 {
        assert_eq!(leaving.delivery().await.offset, offset);
    }
    leaving.ack(vec![1]).await;
    let mut staying = join(&server, subscription("leave", "g", GroupMode::Clustering)).await;
    drop(leaving);
    let mut redelivered = BTreeSet::new();
    for _ in 0..2 {
        let delivery = staying.delivery().await;
        assert_eq!(delivery.attempt, 2);
        redelivered.insert(delivery.offset);
    }
    assert_eq!(redelivered, BTreeSet::from([0, 2]));
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn broadcast_gives_every_member_every_event(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "fanout", 5).await;
    let mut one = join(&server, subscription("fanout", "g", GroupMode::Broadcast)).await;
    let mut two = join(
        &server,
        Subscription {
            member: "two".to_owned(),
            ..subscription("fanout", "g", GroupMode::Broadcast)
        },
    )
    .await;
    for member in [&mut one, &mut two] {
        let mut offsets = Vec::new();
        for _ in 0..5 {
            offsets.push(member.delivery().await.offset);
        }
        offsets.sort_unstable();
        assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    }
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_groups_committed_offset_survives_a_restart(#[case] backend: Backend) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    publish_n(&server, "durable", 5).await;
    let mut member = join(&server, subscription("durable", "g", GroupMode::Clustering)).await;
    let mut offsets = Vec::new();
    for _ in 0..5 {
        offsets.push(member.delivery().await.offset);
    }
    // 0..=2 acked and 4 acked: only the contiguous prefix (3) may be committed.
    member.ack(vec![0, 1, 2, 4]).await;
    // The ack is in once a later request on the same stream is; leaving makes sure of it.
    drop(member.acks);
    while member.deliveries.message().await.ok().flatten().is_some() {}
    server.stop().await;

    let server = site.start(RuntimeConfig::default()).await;
    let mut member = join(&server, subscription("durable", "g", GroupMode::Clustering)).await;
    assert_eq!(member.from_offset, 3);
    let delivery = member.delivery().await;
    assert_eq!(delivery.offset, 3);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn the_first_subscribe_request_must_be_a_subscription(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let (requests, outgoing) = mpsc::channel(4);
    requests
        .send(SubscribeRequest {
            request: Some(subscribe_request::Request::Ack(Ack { offsets: vec![1] })),
        })
        .await
        .expect("send");
    let status = server
        .grpc_client()
        .await
        .subscribe(ReceiverStream::new(outgoing))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn subscribe_streams_end_with_unavailable_at_shutdown(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let mut member = join(&server, subscription("quiet", "g", GroupMode::Clustering)).await;
    let stopping = tokio::spawn(server.stop());
    let status = loop {
        match tokio::time::timeout(PATIENCE, member.deliveries.message())
            .await
            .expect("the stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    drop(member);
    stopping.await.expect("stopped");
}

#[apply(backends)]
#[tokio::test]
async fn a_stream_with_one_batch_in_flight_at_most_still_answers_them_all(
    #[case] backend: Backend,
) {
    let config = RuntimeConfig {
        grpc_max_batches_in_flight: 1,
        ..RuntimeConfig::default()
    };
    let Some((_site, server)) = server_with(backend, config).await else {
        return;
    };
    let (requests, outgoing) = mpsc::channel(64);
    for batch_id in 0..10u64 {
        let id = format!("one-{batch_id}");
        requests
            .send(batch(batch_id, "narrow", &[id.as_str()]))
            .await
            .expect("send");
    }
    drop(requests);
    let mut answers = server
        .grpc_client()
        .await
        .publish_stream(ReceiverStream::new(outgoing))
        .await
        .expect("stream")
        .into_inner();
    let mut offsets = Vec::new();
    while let Some(answer) = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .expect("answers in time")
        .expect("stream ok")
    {
        // One at a time: each batch is stored before the next is read, so in order.
        assert_eq!(stored(&answer, 0).0, answer.batch_id);
        offsets.push(answer.batch_id);
    }
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_named_broadcast_member_resumes_its_own_cursor_after_a_restart(#[case] backend: Backend) {
    let Some(site) = Site::new(backend) else {
        return;
    };
    let server = site.start(RuntimeConfig::default()).await;
    publish_n(&server, "fan", 3).await;
    let named = Subscription {
        member: "alice".to_owned(),
        ..subscription("fan", "g", GroupMode::Broadcast)
    };
    let mut alice = join(&server, named.clone()).await;
    for offset in 0..3 {
        assert_eq!(alice.delivery().await.offset, offset);
    }
    alice.ack(vec![0, 1, 2]).await;
    drop(alice.acks);
    while alice.deliveries.message().await.ok().flatten().is_some() {}
    server.stop().await;

    let server = site.start(RuntimeConfig::default()).await;
    let alice = join(&server, named).await;
    assert_eq!(alice.from_offset, 3);
    // An unnamed member of the same group is not held back by alice's cursor.
    let mut anonymous = join(&server, subscription("fan", "g", GroupMode::Broadcast)).await;
    assert_eq!(anonymous.from_offset, 0);
    assert_eq!(anonymous.delivery().await.offset, 0);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_second_subscription_on_one_stream_ends_it_with_invalid_argument(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let mut member = join(&server, subscription("twice", "g", GroupMode::Clustering)).await;
    member
        .acks
        .send(SubscribeRequest {
            request: Some(subscribe_request::Request::Subscription(subscription(
                "twice",
                "g",
                GroupMode::Clustering,
            ))),
        })
        .await
        .expect("send");
    let status = tokio::time::timeout(PATIENCE, member.deliveries.message())
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn events_acked_before_a_clean_leave_go_to_nobody_again(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "acked", 3).await;
    // The acks and the leave can reach the group in one wake-up; the acked events must not go
    // to anyone again. A few rounds, as the timing is up to the scheduler.
    for round in 0..3 {
        let group = format!("g{round}");
        let mut leaving = join(
            &server,
            subscription("acked", &group, GroupMode::Clustering),
        )
        .await;
        for offset in 0..3 {
            assert_eq!(leaving.delivery().await.offset, offset);
        }
        leaving.ack(vec![0, 1, 2]).await;
        // A clean leave: the request stream ends after the ack (dropping the whole call could
        // cancel it before the ack is even sent), and the member waits for the server to end
        // the response stream.
        let Member {
            acks,
            mut deliveries,
            ..
        } = leaving;
        drop(acks);
        let ended = tokio::time::timeout(PATIENCE, deliveries.message())
            .await
            .expect("the server ends the stream once the member's requests end");
        assert!(matches!(ended, Ok(None)), "round {round}: {ended:?}");
        let mut next_member = join(
            &server,
            subscription("acked", &group, GroupMode::Clustering),
        )
        .await;
        let again =
            tokio::time::timeout(Duration::from_millis(300), next_member.deliveries.message())
                .await;
        assert!(
            again.is_err(),
            "round {round}: an acked event came again: {again:?}"
        );
    }
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn a_topic_a_group_reads_is_deleted_only_when_forced_and_the_group_starts_the_new_one_at_zero(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "grouped", 3).await;
    let mut member = join(&server, subscription("grouped", "g", GroupMode::Clustering)).await;
    for _ in 0..3 {
        let offset = member.delivery().await.offset;
        member.ack(vec![offset]).await;
    }
    // The acks are in once the member has left; the next member starts after them.
    drop(member.acks);
    while member.deliveries.message().await.ok().flatten().is_some() {}
    let mut member = join(&server, subscription("grouped", "g", GroupMode::Clustering)).await;
    assert_eq!(member.from_offset, 3);
    // An unnamed broadcast member reads with a cursor of its own; it counts too.
    let watcher = join(
        &server,
        subscription("grouped", "watchers", GroupMode::Broadcast),
    )
    .await;
    let res = server.delete("/v1/topics/grouped").await;
    let message = crate::support::assert_error(&res, 409, "topic_in_use");
    assert!(message.contains("consumer group \"g\""), "{message}");
    assert!(message.contains("consumer group \"watchers\""), "{message}");
    drop(watcher);

    assert_eq!(server.delete("/v1/topics/grouped?force=true").await.0, 204);
    // The member hears that its topic went; the group stores its offset (3) as it ends.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match member.deliveries.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert_eq!(ended, Some(tonic::Code::NotFound));

    publish_n(&server, "grouped", 2).await;
    let mut subscription = subscription("grouped", "g", GroupMode::Clustering);
    subscription.start = StartPosition::Latest as i32;
    let mut member = join(&server, subscription).await;
    assert_eq!(member.from_offset, 0, "the new topic from its beginning");
    assert_eq!(member.delivery().await.offset, 0);
    server.stop().await;
}

/// Each module describes its own metrics; `/metrics` shows the help text of every family, from
/// the publish core, the listeners, the subscriptions and the consumer groups alike.
#[apply(backends)]
#[tokio::test]
async fn metrics_carry_the_help_text_of_every_module(#[case] backend: Backend) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    publish_n(&server, "described", 1).await;
    let (code, body) = server
        .post(
            "/v1/subscriptions",
            "application/json",
            serde_json::json!({
                "name": "described",
                "topic": "described",
                "sink": {"urls": ["http://127.0.0.1:9/hook"]},
            })
            .to_string(),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let _member = join(
        &server,
        subscription("described", "g", GroupMode::Clustering),
    )
    .await;
    let text = server.metrics().await;
    for help in [
        "# HELP trellis_publish_requests_total Publish requests by outcome",
        "# HELP trellis_connections_accepted_total Connections accepted and served",
        "# HELP trellis_subscription_waiting_for_topic 1 while the subscription waits",
        "# HELP trellis_group_members Connected consumer-group members.",
    ] {
        assert!(
            text.contains(help),
            "{help:?} missing from /metrics:\n{text}"
        );
    }
    server.stop().await;
}
