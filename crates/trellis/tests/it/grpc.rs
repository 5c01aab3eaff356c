//! The gRPC API of the real binary on the address its line prints, across restarts: a
//! duplicate is still recognised and a consumer group resumes where it committed.

use std::collections::HashMap;
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use trellis_proto::v1::trellis_client::TrellisClient;
use trellis_proto::v1::{
    Ack, CloudEvent, GroupMode, PublishRequest, StartPosition, SubscribeRequest, Subscription,
    cloud_event, event_result, subscribe_request, subscribe_response,
};
use trellis_test_support::{Backend, TrellisProcess, backends};

use crate::start_on;

const PATIENCE: Duration = Duration::from_secs(20);

/// A binary-data CloudEvent whose data is its id, as the gRPC tests publish them.
pub(crate) fn event(id: &str) -> CloudEvent {
    CloudEvent {
        id: id.to_owned(),
        source: "/trellis-tests".to_owned(),
        spec_version: "1.0".to_owned(),
        r#type: "dev.trellis.test".to_owned(),
        attributes: HashMap::new(),
        data: Some(cloud_event::Data::BinaryData(id.as_bytes().to_vec().into())),
    }
}

async fn client(process: &TrellisProcess) -> TrellisClient<Channel> {
    assert!(
        !process.grpc_addr().is_empty(),
        "the line names a gRPC address"
    );
    TrellisClient::connect(format!("http://{}", process.grpc_addr()))
        .await
        .expect("gRPC connect")
}

/// Publishes events `ids` (source `/trellis-tests`) to `orders`; (offset, duplicate) of each.
pub(crate) async fn publish(process: &TrellisProcess, ids: &[&str]) -> Vec<(u64, bool)> {
    let response = client(process)
        .await
        .publish(PublishRequest {
            batch_id: 1,
            topic: "orders".to_owned(),
            events: ids.iter().map(|id| event(id)).collect(),
        })
        .await
        .expect("publish")
        .into_inner();
    response
        .results
        .into_iter()
        .map(|result| match result.result {
            Some(event_result::Result::Stored(stored)) => (stored.offset, stored.duplicate),
            other => panic!("not stored: {other:?}"),
        })
        .collect()
}

/// The first request of a subscribe stream: join clustering group `g` on `topic` from its
/// earliest event.
pub(crate) fn join_group(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        request: Some(subscribe_request::Request::Subscription(Subscription {
            topic: topic.to_owned(),
            group: "g".to_owned(),
            mode: GroupMode::Clustering as i32,
            start: StartPosition::Earliest as i32,
            max_unacked: 0,
            ack_timeout_ms: 0,
            member: String::new(),
        })),
    }
}

/// Joins group `g`, takes `n` deliveries, acks them, and leaves; returns where it started and
/// the offsets it got.
pub(crate) async fn consume(process: &TrellisProcess, n: usize) -> (u64, Vec<u64>) {
    let (requests, outgoing) = mpsc::channel(8);
    requests.send(join_group("orders")).await.expect("send");
    let mut responses = client(process)
        .await
        .subscribe(ReceiverStream::new(outgoing))
        .await
        .expect("subscribe")
        .into_inner();
    let mut from = None;
    let mut offsets = Vec::new();
    while offsets.len() < n {
        let response = tokio::time::timeout(PATIENCE, responses.message())
            .await
            .expect("in time")
            .expect("stream ok")
            .expect("stream open");
        match response.response {
            Some(subscribe_response::Response::Subscribed(subscribed)) => {
                from = Some(subscribed.from_offset);
            }
            Some(subscribe_response::Response::Delivery(delivery)) => {
                offsets.push(delivery.offset);
            }
            None => {}
        }
    }
    requests
        .send(SubscribeRequest {
            request: Some(subscribe_request::Request::Ack(Ack {
                offsets: offsets.clone(),
            })),
        })
        .await
        .expect("ack");
    // Closing our side makes the server take the ack, then end the stream.
    drop(requests);
    while let Ok(Some(_)) = responses.message().await {}
    (from.expect("Subscribed came first"), offsets)
}

#[apply(backends)]
fn duplicates_and_group_offsets_survive_a_restart(#[case] backend: Backend) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let Some(mut process) = start_on(backend) else {
        return;
    };
    runtime.block_on(async {
        assert_eq!(
            publish(&process, &["a", "b", "c"]).await,
            vec![(0, false), (1, false), (2, false)]
        );
        assert_eq!(consume(&process, 2).await, (0, vec![0, 1]));
    });
    let status = process.terminate().expect("stops");
    assert!(status.success(), "{}", process.stderr());

    process.restart();
    runtime.block_on(async {
        assert_eq!(
            publish(&process, &["b", "d"]).await,
            vec![(1, true), (3, false)]
        );
        assert_eq!(consume(&process, 2).await, (2, vec![2, 3]));
    });
}
