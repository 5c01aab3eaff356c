//! Crash safety: `trellis serve` is killed with SIGKILL at random moments while several clients
//! publish, then restarted. After every restart, every event that got a 202 must be readable at
//! its offset with its id and data, the log must be readable to its end with dense offsets, and
//! no event may be stored twice. On the embedded log no batch may be half there either; on
//! JetStream the nats-server keeps running while Trellis is killed and restarted beside it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rstest::rstest;
use rstest_reuse::apply;
use serde_json::Value;
use trellis_test_support::{Backend, TrellisProcess, backends};

use crate::{bin, publish, start_with_config_on};

const KILLS: usize = 20;
const CLIENTS: usize = 6;
const BATCH_LEN: usize = 4;

/// What the clients were told: offset -> (id, data).
type Acked = Arc<Mutex<BTreeMap<u64, (String, String)>>>;

#[apply(backends)]
fn acknowledged_events_survive_sigkill_at_random_moments(#[case] backend: Backend) {
    let seed: u64 = std::env::var("TRELLIS_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: {seed} (set TRELLIS_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let acked: Acked = Arc::default();
    // The smallest segments allowed (about 15 events each), so kills also land while a segment
    // is sealed and the next one created. With 64 KiB ones, a slow or busy machine publishing
    // little in the shortest rounds failed the segment count below now and then.
    let Some(mut node) = start_with_config_on(
        backend,
        tempfile::tempdir().expect("temp dir"),
        "[storage]\nsegment_bytes = 4096\n",
    ) else {
        return;
    };

    // The embedded log recovers its files at every start, so every round checks all of it again.
    // JetStream's events are in the nats-server, which keeps running: a round checks what came
    // since the last check, and the end checks everything (reading it all every round made this
    // test the slowest of the suite).
    let mut checked = 0;
    for round in 0..KILLS {
        let base = node.base_url().to_owned();
        let from = match backend {
            Backend::Embedded => 0,
            Backend::JetStream => checked,
        };
        checked = runtime.block_on(verify(&base, &acked, round, backend, from));

        let kill_after = Duration::from_millis(rng.random_range(30..400));
        runtime.block_on(async {
            let stop = stop_flag();
            let mut clients = Vec::new();
            for client_idx in 0..CLIENTS {
                let (base, acked, stop) = (base.clone(), acked.clone(), stop.clone());
                clients.push(tokio::spawn(publish_until_stopped(
                    base, acked, stop, round, client_idx,
                )));
            }
            tokio::time::sleep(kill_after).await;
            node.kill();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for client in clients {
                let _ = client.await;
            }
        });
        node.restart();
    }
    runtime.block_on(verify(node.base_url(), &acked, KILLS, backend, 0));
    if backend == Backend::Embedded {
        let n_segments =
            std::fs::read_dir(node.data_dir().join("log/crash")).map_or(0, |entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
                    .count()
            });
        assert!(
            n_segments > KILLS,
            "kills must also hit segment rolls; only {n_segments} segments were written"
        );
    }
    let n_acked = acked.lock().map(|acked| acked.len()).unwrap_or(0);
    assert!(
        n_acked > KILLS * 10,
        "the test must actually publish; only {n_acked} events were acknowledged"
    );
}

fn stop_flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// Publishes single events (binary mode) and, from every other client, batches, recording every
/// acknowledgement, until the server dies.
async fn publish_until_stopped(
    base: String,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
    round: usize,
    client_idx: usize,
) {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/topics/crash/events");
    let mut seq = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        let (ids, request) = if client_idx.is_multiple_of(2) {
            let id = format!("r{round}-c{client_idx}-s{seq}");
            let request = client
                .post(&url)
                .header("ce-specversion", "1.0")
                .header("ce-id", &id)
                .header("ce-source", "/crash")
                .header("ce-type", "single")
                .header("content-type", "text/plain")
                .body(data_for(&id));
            (vec![id], request)
        } else {
            let ids: Vec<String> = (0..BATCH_LEN)
                .map(|n| format!("r{round}-c{client_idx}-s{seq}-b{n}"))
                .collect();
            let events: Vec<Value> = ids
                .iter()
                .map(|id| {
                    serde_json::json!({"specversion": "1.0", "id": id, "source": "/crash", "type": "batch",
                        "datacontenttype": "text/plain", "data": data_for(id)})
                })
                .collect();
            let request = client
                .post(&url)
                .header("content-type", "application/cloudevents-batch+json")
                .body(Value::Array(events).to_string());
            (ids, request)
        };
        let Ok(response) = request.send().await else {
            return;
        };
        if response.status().as_u16() != 202 {
            return;
        }
        let Ok(body) = response.json::<Value>().await else {
            return;
        };
        let Some(events) = body["events"].as_array() else {
            return;
        };
        let mut acked = acked.lock().expect("acked lock");
        for (event, id) in events.iter().zip(&ids) {
            assert_eq!(event["id"].as_str(), Some(id.as_str()));
            let offset = event["offset"].as_u64().expect("offset in ack");
            let previous = acked.insert(offset, (id.clone(), data_for(id)));
            assert!(previous.is_none(), "offset {offset} was acknowledged twice");
        }
    }
}

fn data_for(id: &str) -> String {
    format!("payload of {id} {}", "z".repeat(id.len() * 7))
}

/// Reads the topic from offset `from` to its end and checks it against what was acknowledged
/// there; returns the end (the next offset).
async fn verify(base: &str, acked: &Acked, round: usize, backend: Backend, from: u64) -> u64 {
    let client = reqwest::Client::new();
    let topic: Value = match client.get(format!("{base}/v1/topics/crash")).send().await {
        Ok(response) if response.status().as_u16() == 200 => {
            response.json().await.expect("topic json")
        }
        _ => Value::Null,
    };
    let next_offset = topic["next_offset"].as_u64().unwrap_or(0);
    let mut stored: HashMap<u64, (String, String)> = HashMap::new();
    let start = from;
    let mut from = from;
    while from < next_offset {
        let page: Value = client
            .get(format!(
                "{base}/v1/topics/crash/events?from={from}&limit=1000"
            ))
            .send()
            .await
            .expect("read page")
            .json()
            .await
            .expect("page json");
        let events = page.as_array().expect("array page");
        assert!(
            !events.is_empty(),
            "round {round}: the log is not readable to its end at offset {from}"
        );
        for event in events {
            let offset = event["offset"].as_u64().expect("offset");
            assert_eq!(offset, from, "round {round}: offsets must be dense");
            let id = event["id"].as_str().expect("id").to_owned();
            let data = event["data"].as_str().expect("text data").to_owned();
            assert_eq!(
                data,
                data_for(&id),
                "round {round}: data of {id} at {offset} is damaged"
            );
            stored.insert(offset, (id, data));
            from += 1;
        }
    }
    // Every request was sent once, and no id is in two requests: nothing may be there twice.
    let mut offset_of: HashMap<&str, u64> = HashMap::new();
    for (offset, (id, _)) in &stored {
        if let Some(first) = offset_of.insert(id, *offset) {
            panic!("round {round}: {id} is stored twice, at {first} and {offset}");
        }
    }
    let acked = acked.lock().expect("acked lock");
    for (offset, expected) in acked.range(start..) {
        assert_eq!(
            stored.get(offset),
            Some(expected),
            "round {round}: acknowledged event at offset {offset} is lost"
        );
    }
    // All-or-nothing batches: a batch's events are either all stored or none. Not on JetStream,
    // which has no atomic batch: a batch the kill cut may be partly stored (and was not
    // acknowledged), as the README's storage section says.
    if backend == Backend::JetStream {
        return next_offset;
    }
    let mut per_batch: HashMap<&str, usize> = HashMap::new();
    for (id, _) in stored.values() {
        if let Some((batch, _)) = id.rsplit_once("-b") {
            *per_batch.entry(batch).or_default() += 1;
        }
    }
    for (batch, count) in per_batch {
        assert_eq!(
            count, BATCH_LEN,
            "round {round}: batch {batch} is partly stored"
        );
    }
    next_offset
}

/// A torn tail found at start-up shows up where an operator looks: one warning in the log and
/// the dropped bytes on /metrics (the recorder must be installed before the log is recovered).
/// Embedded only: it damages a segment file of the embedded log in the data dir.
#[test]
fn a_truncated_tail_is_reported_in_the_log_and_on_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let mut process = TrellisProcess::start(bin(), dir.path(), &[]).expect("start");
    let base = process.base_url().to_owned();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for n in 0..3 {
            let response = publish(&client, &base, "torn", &format!("id-{n}"), "x".to_owned())
                .await
                .expect("publish");
            assert_eq!(response.status().as_u16(), 202);
        }
    });
    assert!(process.terminate().expect("terminate").success());

    let segment = dir.path().join("log/torn/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).expect("segment exists where the log keeps it");
    bytes.extend_from_slice(&[0xEE; 40]);
    std::fs::write(&segment, bytes).expect("damage the tail");

    let process = TrellisProcess::start(bin(), dir.path(), &[]).expect("restart");
    let base = process.base_url().to_owned();
    let (metrics, topic) = runtime.block_on(async {
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let topic: Value = reqwest::get(format!("{base}/v1/topics/torn"))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        (metrics, topic)
    });
    assert_eq!(topic["next_offset"], 3, "every whole record survives");
    assert!(
        metrics
            .lines()
            .any(|line| line == "trellis_log_recovered_truncated_bytes_total 40"),
        "the 40 dropped bytes are on /metrics:\n{metrics}"
    );
    let warnings = process
        .stderr()
        .lines()
        .filter(|line| line.contains("Truncated a torn or corrupt tail"))
        .count();
    assert_eq!(warnings, 1, "one warning: {}", process.stderr());
}
