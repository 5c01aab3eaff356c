//! gRPC refusals: a status a client can act on (permanent ones not retried by the SDK), with
//! echoed input cut short so the status fits the header it travels in, and the event limits
//! of HTTP publishing.

use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use trellis_client::{
    ConnectionState, Consumer, ConsumerConfig, ConsumerError, Producer, ProducerConfig,
    ProducerError,
};
use trellis_proto::v1::{
    CloudEvent, PublishRequest, SubscribeRequest, Subscription, event_result, subscribe_request,
};
use trellis_runtime::RuntimeConfig;
use trellis_test_support::{Backend, backends};

use crate::support::{PATIENCE, grpc_event, server, server_with};

fn batch(topic: &str, events: Vec<CloudEvent>) -> PublishRequest {
    PublishRequest {
        batch_id: 1,
        topic: topic.to_owned(),
        events,
    }
}

/// Names whose echo, percent-encoded into the `grpc-message` header, used to outgrow the
/// client's 16 KiB header limit: the client then saw an h2 protocol error (INTERNAL, or
/// RESOURCE_EXHAUSTED in other clients), which retries.
fn long_names() -> [String; 3] {
    [
        "a".repeat(10_000),
        "\u{e9}".repeat(10_000),
        "\"".repeat(10_000),
    ]
}

#[apply(backends)]
#[tokio::test]
async fn a_10000_character_topic_name_is_invalid_argument_with_the_name_cut_short(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let mut client = server.grpc_client().await;
    for name in long_names() {
        let status = client
            .publish(batch(&name, vec![grpc_event("1", "text/plain", "x")]))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("invalid topic name"),
            "{status:?}"
        );
        assert!(status.message().len() < 1_000, "{}", status.message());

        let (requests, inbound) = mpsc::channel(1);
        requests
            .send(SubscribeRequest {
                request: Some(subscribe_request::Request::Subscription(Subscription {
                    topic: name.clone(),
                    group: "g".to_owned(),
                    ..Subscription::default()
                })),
            })
            .await
            .expect("send");
        let status = client
            .subscribe(ReceiverStream::new(inbound))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() < 1_000, "{}", status.message());
    }
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn the_sdk_treats_a_10000_character_topic_name_as_permanent_and_does_not_retry(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let name = "\u{e9}".repeat(10_000);

    let producer = Producer::new(
        ProducerConfig::new(name.clone())
            .endpoints([server.grpc.clone()])
            .delivery_timeout(Duration::from_secs(600)),
    )
    .expect("producer");
    let mut transitions = producer.transitions();
    let event = trellis_client::CloudEvent::from_structured_json(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
    )
    .expect("event");
    let answer = tokio::time::timeout(PATIENCE, async {
        producer.send(event).await.expect("queued").await
    })
    .await
    .expect("answered, not retried until the delivery timeout");
    match answer {
        Err(error @ ProducerError::Rejected { code, .. }) => {
            assert_eq!(code, Code::InvalidArgument, "{error}");
            assert!(!error.is_transient(), "{error}");
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    // A transient failure would have taken the producer through Backoff.
    assert!(
        transitions.try_recv().is_err(),
        "the producer changed state"
    );
    assert_eq!(producer.state(), ConnectionState::Ready);

    let mut consumer =
        Consumer::new(ConsumerConfig::new(name, "g").endpoints([server.grpc.clone()]))
            .expect("consumer");
    let refused = tokio::time::timeout(PATIENCE, consumer.recv())
        .await
        .expect("refused, not retried");
    match refused {
        Err(error @ ConsumerError::Rejected { code, .. }) => {
            assert_eq!(code, Code::InvalidArgument, "{error}");
            assert!(!error.is_transient(), "{error}");
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    server.stop().await;
}

fn small_messages() -> RuntimeConfig {
    RuntimeConfig {
        max_event_bytes: 16 * 1024,
        max_batch_bytes: 64 * 1024,
        max_batch_events: 100,
        ..RuntimeConfig::default()
    }
}

#[apply(backends)]
#[tokio::test]
async fn a_message_over_the_size_limit_is_out_of_range_on_calls_and_streams(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server_with(backend, small_messages()).await else {
        return;
    };
    let mut client = server.grpc_client().await;
    let oversized = || {
        batch(
            "t",
            vec![grpc_event("big", "text/plain", &"x".repeat(300 * 1024))],
        )
    };

    let status = client.publish(oversized()).await.expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(!trellis_client::is_transient_code(status.code()));

    // On a stream the batches before it are answered, then the stream ends with the status
    // instead of as if the client had finished.
    let (requests, inbound) = mpsc::channel(2);
    requests
        .send(batch("t", vec![grpc_event("small", "text/plain", "x")]))
        .await
        .expect("send");
    requests.send(oversized()).await.expect("send");
    let mut answers = client
        .publish_stream(ReceiverStream::new(inbound))
        .await
        .expect("stream")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .expect("answered")
        .expect("an answer")
        .expect("not ended");
    assert!(matches!(
        first.results[0].result,
        Some(event_result::Result::Stored(_))
    ));
    let end = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .expect("ended")
        .expect_err("ended with a status");
    assert_eq!(end.code(), Code::OutOfRange, "{end:?}");
    server.stop().await;
}

#[apply(backends)]
#[tokio::test]
async fn events_over_the_limits_fail_alone_with_invalid_argument_naming_the_attribute(
    #[case] backend: Backend,
) {
    let Some((_site, server)) = server(backend).await else {
        return;
    };
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    let very_deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let response = server
        .grpc_client()
        .await
        .publish(batch(
            "t",
            vec![
                grpc_event("1", "application/json", &deep),
                grpc_event("2", "application/json", "[[1]]"),
                grpc_event(&"i".repeat(4097), "text/plain", "x"),
                grpc_event("4", "application/json", &very_deep),
            ],
        ))
        .await
        .expect("publish")
        .into_inner();
    let error_of = |idx: usize| match &response.results[idx].result {
        Some(event_result::Result::Error(error)) => error.clone(),
        other => panic!("event {idx} did not fail: {other:?}"),
    };
    assert_eq!(error_of(0).code, Code::InvalidArgument as i32);
    assert_eq!(error_of(0).attribute, "data");
    assert!(
        error_of(0).message.contains("64 levels"),
        "{:?}",
        error_of(0)
    );
    assert!(matches!(
        response.results[1].result,
        Some(event_result::Result::Stored(_))
    ));
    assert_eq!(error_of(2).attribute, "id");
    assert_eq!(error_of(3).attribute, "data");
    server.stop().await;
}
