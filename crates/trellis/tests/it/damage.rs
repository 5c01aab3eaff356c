//! A damaged record in the middle of a topic, end to end: 1000 events published over HTTP,
//! SIGTERM, one byte flipped in record 500, the index deleted, restart. Every intact event
//! stays readable at its offset, reads say where the damage is, the next publish gets offset
//! 1000, a subscription delivers every intact event and dead-letters a marker for the damaged
//! one, and a consumer group goes past it.
//!
//! Embedded only: these tests damage the embedded log's files in the data dir. JetStream keeps
//! its store in the nats-server, out of Trellis' reach, and checks it there.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use trellis_test_support::{Receiver, TrellisProcess};

use crate::{bin, eventually, publish};

const TOPIC: &str = "orders";
const N_EVENTS: u64 = 1000;
const DAMAGED: u64 = 500;

fn id(offset: u64) -> String {
    format!("order-{offset}")
}

fn data(offset: u64) -> String {
    format!("order number {offset}, with some text to make the record longer")
}

/// Publishes events `from..to` in one batched-mode request.
async fn publish_batch(client: &reqwest::Client, base: &str, from: u64, to: u64) {
    let events: Vec<Value> = (from..to)
        .map(|offset| {
            json!({"specversion": "1.0", "id": id(offset), "source": "/shop", "type": "order.placed",
                   "datacontenttype": "text/plain", "data": data(offset)})
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/topics/{TOPIC}/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&events).expect("json"))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
}

/// The topic's only segment file.
fn segment(data_dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log").join(TOPIC))
        .expect("topic dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 1, "one segment expected");
    logs.remove(0)
}

/// Flips a byte in the middle of record `offset`'s payload, walking the frames by their
/// length fields (`len u32` counts the 17 header bytes after the CRC plus the payload).
fn flip_record(segment: &Path, offset: u64) {
    let mut bytes = std::fs::read(segment).expect("read segment");
    let mut position = 0usize;
    for _ in 0..offset {
        let len = u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes"));
        position += 8 + len as usize;
    }
    let len = u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes"));
    let stored_offset = u64::from_le_bytes(
        bytes[position + 8..position + 16]
            .try_into()
            .expect("8 bytes"),
    );
    assert_eq!(stored_offset, offset, "walked to the wrong frame");
    bytes[position + 25 + (len as usize - 17) / 2] ^= 0x20;
    std::fs::write(segment, bytes).expect("write segment");
}

async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client.get(url).send().await.expect("request")
}

/// Reads the whole topic as a client would, going past damage where the answer says to.
async fn read_all(client: &reqwest::Client, base: &str) -> (Vec<Value>, Vec<u64>) {
    let mut events = Vec::new();
    let mut skipped = Vec::new();
    let mut next = 0u64;
    loop {
        let response = get(
            client,
            &format!("{base}/v1/topics/{TOPIC}/events?from={next}&limit=300"),
        )
        .await;
        if response.status() == 410 {
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"], "records_damaged", "{body}");
            let first = body["first_offset"].as_u64().expect("first_offset");
            let after = body["next_offset"].as_u64().expect("next_offset");
            assert_eq!(first, next);
            skipped.extend(first..after);
            next = after;
            continue;
        }
        assert_eq!(response.status(), 200);
        let page: Vec<Value> = response.json().await.expect("json");
        let Some(last) = page.last() else {
            return (events, skipped);
        };
        next = last["offset"].as_u64().expect("offset") + 1;
        events.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_record_is_skipped_visibly_and_nothing_intact_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let mut process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let base = process.base_url().to_owned();
    for from in (0..N_EVENTS).step_by(50) {
        publish_batch(&client, &base, from, from + 50).await;
    }
    assert!(process.terminate().expect("SIGTERM").success());

    let segment = segment(dir.path());
    flip_record(&segment, DAMAGED);
    std::fs::remove_file(segment.with_extension("idx")).expect("remove the index");

    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis restarts");
    let base = process.base_url().to_owned();
    // Log lines reach stderr in batches, a moment after they are written.
    let warned = eventually(async || {
        let stderr = process.stderr();
        stderr.contains("Damaged records are skipped") && stderr.contains(TOPIC)
    })
    .await;
    assert!(warned, "recovery warns: {}", process.stderr());

    // The topic's status names the damage; nothing was cut.
    let topic: Value = get(&client, &format!("{base}/v1/topics/{TOPIC}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(topic["next_offset"], N_EVENTS);
    assert_eq!(topic["damaged"][0]["first_offset"], DAMAGED);
    assert_eq!(topic["damaged"][0]["next_offset"], DAMAGED + 1);

    // A page stops short before the damage and says where it is and where to go on.
    let response = get(
        &client,
        &format!("{base}/v1/topics/{TOPIC}/events?from=450&limit=100"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("trellis-damaged-offsets")
            .and_then(|v| v.to_str().ok()),
        Some("500-500")
    );
    assert_eq!(
        response
            .headers()
            .get("trellis-next-offset")
            .and_then(|v| v.to_str().ok()),
        Some("501")
    );
    let page: Vec<Value> = response.json().await.expect("json");
    assert_eq!(page.len(), 50);
    assert_eq!(page[49]["offset"], 499);

    // Every intact event reads back at its offset.
    let (events, skipped) = read_all(&client, &base).await;
    assert_eq!(skipped, vec![DAMAGED]);
    let offsets: Vec<u64> = events
        .iter()
        .map(|event| event["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(
        offsets,
        (0..N_EVENTS)
            .filter(|offset| *offset != DAMAGED)
            .collect::<Vec<_>>()
    );
    for event in &events {
        let offset = event["offset"].as_u64().expect("offset");
        assert_eq!(event["id"], id(offset));
        assert_eq!(event["data"], data(offset));
    }

    // The next publish gets a new offset.
    let response = publish(&client, &base, TOPIC, "order-next", "next".to_owned())
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
    let ack: Value = response.json().await.expect("json");
    assert_eq!(ack["events"][0]["offset"], N_EVENTS, "{ack}");

    // A subscription from the start delivers every intact event and dead-letters a marker.
    let receiver = Receiver::answering(200).await.expect("receiver");
    let response = client
        .post(format!("{base}/v1/subscriptions"))
        .json(
            &json!({"name": "fulfilment", "topic": TOPIC, "start": "earliest",
                      "sink": {"urls": [receiver.url("/")]}}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let status_url = format!("{base}/v1/subscriptions/fulfilment");
    let committed = eventually(async || {
        let view: Value = get(&client, &status_url).await.json().await.expect("json");
        view["status"]["committed_offset"] == N_EVENTS + 1
    })
    .await;
    let view: Value = get(&client, &status_url).await.json().await.expect("json");
    assert!(committed, "the subscription went past the damage: {view}");
    assert_eq!(view["status"]["state"], "running");
    assert_eq!(view["status"]["dead_lettered"], 1);
    let mut delivered: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|request| request.header("ce-id").map(str::to_owned))
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len() as u64, N_EVENTS);
    assert!(!delivered.contains(&id(DAMAGED)));

    let letters: Vec<Value> = get(
        &client,
        &format!("{base}/v1/topics/fulfilment.dlq/events?from=0"),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["trellisfailure"], "damaged");
    assert_eq!(letters[0]["trellistopic"], TOPIC);
    assert_eq!(letters[0]["trellisoffset"], "500");
    assert_eq!(letters[0]["type"], "dev.trellis.record.damaged");

    // A redrive passes the marker over: it stands for nothing that could be delivered.
    let n_before = receiver.n_requests();
    let response = client
        .post(format!("{status_url}/redrive"))
        .send()
        .await
        .expect("redrive");
    assert_eq!(response.status(), 202);
    let redrive: Value = response.json().await.expect("json");
    assert_eq!(redrive["events"], 1, "{redrive}");
    let finished = eventually(async || {
        let view: Value = get(&client, &status_url).await.json().await.expect("json");
        view["status"]["redrive"]["running"] == false
    })
    .await;
    let view: Value = get(&client, &status_url).await.json().await.expect("json");
    assert!(finished, "{view}");
    assert_eq!(view["status"]["redrive"]["delivered"], 0, "{view}");
    assert_eq!(view["status"]["redrive"]["dead_lettered"], 0, "{view}");
    assert_eq!(receiver.n_requests(), n_before);

    // A consumer group goes past the damage too, rather than stalling.
    let (from, offsets) = crate::grpc::consume(&process, N_EVENTS as usize).await;
    assert_eq!(from, 0);
    let mut offsets = offsets;
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..=N_EVENTS)
            .filter(|offset| *offset != DAMAGED)
            .collect::<Vec<_>>()
    );
}

/// A read error a subscription cannot go past (the segment file cut short under the running
/// server) shows as `state: stopped` with the reason; once the file is whole again, a resume
/// delivers everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_that_cannot_read_shows_stopped_and_restarts_when_resumed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("trellis starts");
    let base = process.base_url().to_owned();
    let receiver = Receiver::answering(200).await.expect("receiver");
    let response = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({"name": "audit", "topic": TOPIC, "sink": {"urls": [receiver.url("/")]}}))
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let response = client
        .post(format!("{base}/v1/subscriptions/audit/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(response.status(), 200);
    publish_batch(&client, &base, 0, 10).await;

    let segment = segment(dir.path());
    let whole = std::fs::read(&segment).expect("read segment");
    std::fs::write(&segment, b"").expect("cut the segment");
    let status_url = format!("{base}/v1/subscriptions/audit");
    let resume = async || {
        let response = client
            .post(format!("{status_url}/resume"))
            .send()
            .await
            .expect("resume");
        assert_eq!(response.status(), 200);
    };
    resume().await;
    let stopped = eventually(async || {
        let view: Value = get(&client, &status_url).await.json().await.expect("json");
        view["status"]["state"] == "stopped"
    })
    .await;
    let view: Value = get(&client, &status_url).await.json().await.expect("json");
    assert!(stopped, "{view}");
    assert!(
        view["status"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("offset 0")),
        "{view}"
    );
    assert_eq!(receiver.n_requests(), 0);

    std::fs::write(&segment, &whole).expect("restore the segment");
    resume().await;
    assert!(eventually(async || receiver.n_requests() == 10).await);
    let view: Value = get(&client, &status_url).await.json().await.expect("json");
    assert_eq!(view["status"]["state"], "running", "{view}");
}
