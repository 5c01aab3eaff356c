//! Deleting a topic that a subscription reads, end to end: refused while in use, and after a
//! forced delete the subscription delivers the re-created topic's events from offset 0, also
//! across a restart of the binary (where the old committed offset used to skip them).

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::{Value, json};
use trellis_test_support::{Backend, Receiver, backends};

use crate::{eventually, publish, start_on};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn status(client: &reqwest::Client, base: &str, name: &str) -> Value {
    send(client.get(format!("{base}/v1/subscriptions/{name}")))
        .await
        .1["status"]
        .clone()
}

/// The `ce-id`s the receiver got, in arrival order.
fn ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .filter_map(|request| request.header("ce-id").map(str::to_owned))
        .collect()
}

async fn publish_ok(client: &reqwest::Client, base: &str, id: &str) {
    let response = publish(client, base, "orders", id, id.to_owned())
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_forced_delete_leaves_the_subscription_waiting_and_it_reads_the_new_topic_from_zero(
    #[case] backend: Backend,
) {
    let receiver = Receiver::answering(200).await.expect("receiver");
    let Some(mut process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();

    let (code, body) = send(client.post(format!("{base}/v1/subscriptions")).json(
        &json!({"name": "audit", "topic": "orders", "sink": {"urls": [receiver.url("/hook")]}}),
    ))
    .await;
    assert_eq!(code, 201, "{body}");
    for id in ["old-0", "old-1", "old-2"] {
        publish_ok(&client, &base, id).await;
    }
    assert!(
        eventually(async || status(&client, &base, "audit").await["committed_offset"] == 3).await
    );

    let (code, body) = send(client.delete(format!("{base}/v1/topics/orders"))).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "topic_in_use");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("\"audit\"")),
        "{body}"
    );

    let (code, body) = send(client.delete(format!("{base}/v1/topics/orders?force=true"))).await;
    assert_eq!(code, 204, "{body}");
    // Eventually: the subscription learns of the delete a moment after it is answered.
    assert!(
        eventually(async || status(&client, &base, "audit").await["state"] == "waiting_for_topic")
            .await,
        "{}",
        status(&client, &base, "audit").await
    );

    // Re-created by a publish while the server runs: delivered from offset 0.
    publish_ok(&client, &base, "new-0").await;
    assert!(eventually(async || ids(&receiver).contains(&"new-0".to_owned())).await);
    assert!(
        eventually(async || status(&client, &base, "audit").await["committed_offset"] == 1).await
    );
    assert_eq!(status(&client, &base, "audit").await["state"], "running");

    // Deleted again, the server restarted before the topic comes back: the offset stored for
    // the deleted topic (1) must not skip the new topic's first event.
    let (code, _) = send(client.delete(format!("{base}/v1/topics/orders?force=true"))).await;
    assert_eq!(code, 204);
    assert!(process.terminate().expect("stop").success());
    process.restart();
    let base = process.base_url().to_owned();
    // Eventually: a subscription shows `running` for a moment at start, before it has looked for
    // its topic.
    assert!(
        eventually(async || status(&client, &base, "audit").await["state"] == "waiting_for_topic")
            .await,
        "{}",
        status(&client, &base, "audit").await
    );
    for id in ["again-0", "again-1"] {
        publish_ok(&client, &base, id).await;
    }
    assert!(
        eventually(async || {
            let got = ids(&receiver);
            got.contains(&"again-0".to_owned()) && got.contains(&"again-1".to_owned())
        })
        .await,
        "both events of the new topic are delivered: {:?}",
        ids(&receiver)
    );
    assert!(
        eventually(async || status(&client, &base, "audit").await["committed_offset"] == 2).await
    );

    // And the offset of the current topic holds across a restart: nothing is delivered twice.
    assert!(process.terminate().expect("stop").success());
    process.restart();
    let base = process.base_url().to_owned();
    publish_ok(&client, &base, "again-2").await;
    assert!(eventually(async || ids(&receiver).contains(&"again-2".to_owned())).await);
    let mut got = ids(&receiver);
    got.sort();
    assert_eq!(
        got,
        [
            "again-0", "again-1", "again-2", "new-0", "old-0", "old-1", "old-2"
        ],
        "each event once"
    );
    assert!(process.terminate().expect("stop").success());
}
