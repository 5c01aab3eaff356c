//! Two `trellis serve` processes on one JetStream, each with a data dir of its own (they share
//! no metadata yet): the events live in JetStream, so what one stored the other serves, and a
//! retry that reaches the other is answered as the duplicate it is, with the first copy's offset.
//!
//! The second node starts before the topic exists: a topic another node created in the shared
//! store is found on first use.

use serde_json::{Value, json};
use trellis_test_support::Backend;

use crate::{publish, start_on};

async fn ack(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("ack json");
    body["events"][0].clone()
}

async fn read(client: &reqwest::Client, base: &str, from: u64) -> Vec<Value> {
    let response = client
        .get(format!("{base}/v1/topics/orders/events?from={from}"))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200, "reading through {base}");
    response.json().await.expect("a page of events")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_through_one_node_is_read_and_deduplicated_through_the_other() {
    let Some(first) = start_on(Backend::JetStream) else {
        return;
    };
    let one = first.base_url();
    let client = reqwest::Client::new();
    let second = first.beside();
    let two = second.base_url();

    let stored = ack(
        publish(&client, one, "orders", "order-1", "first".to_owned())
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(stored, json!({"id": "order-1", "offset": 0}));

    let page = read(&client, two, 0).await;
    assert_eq!(page.len(), 1, "{page:?}");
    assert_eq!(page[0]["offset"], 0);
    assert_eq!(page[0]["id"], "order-1");
    assert_eq!(page[0]["source"], "/trellis-tests");
    assert_eq!(page[0]["data"], "first");

    // The producer's retry lands on the other node: not stored again, whatever its data says.
    let retried = ack(
        publish(&client, two, "orders", "order-1", "again".to_owned())
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(
        retried,
        json!({"id": "order-1", "offset": 0, "duplicate": true})
    );
    // A batch through the other node: its new event is stored after the first, its retried one
    // is answered with the first copy's offset.
    let batch: Vec<Value> = ["order-2", "order-1"]
        .iter()
        .map(|id| {
            json!({"specversion": "1.0", "id": id, "source": "/trellis-tests",
                   "type": "dev.trellis.test", "datacontenttype": "text/plain", "data": id})
        })
        .collect();
    let response = client
        .post(format!("{two}/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(batch).to_string())
        .send()
        .await
        .expect("publish batch");
    assert_eq!(response.status(), 202);
    let acks: Value = response.json().await.expect("ack json");
    assert_eq!(
        acks["events"],
        json!([
            {"id": "order-2", "offset": 1},
            {"id": "order-1", "offset": 0, "duplicate": true},
        ])
    );

    // A retry through gRPC, on the first node, of what the second stored.
    assert_eq!(
        crate::grpc::publish(&first, &["order-2"]).await,
        [(1, true)]
    );

    // Both nodes see the same two events, and nothing twice.
    for base in [one, two] {
        let page = read(&client, base, 0).await;
        let ids: Vec<&str> = page
            .iter()
            .map(|event| event["id"].as_str().expect("an id"))
            .collect();
        assert_eq!(ids, ["order-1", "order-2"], "through {base}");
        assert_eq!(page[0]["data"], "first", "the first copy is kept");
        let topic: Value = client
            .get(format!("{base}/v1/topics/orders"))
            .send()
            .await
            .expect("topic")
            .json()
            .await
            .expect("topic json");
        assert_eq!(topic["next_offset"], 2, "through {base}: {topic}");
    }
}
