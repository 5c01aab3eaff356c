//! The end-to-end scenario: a file source tails a file into a topic, an HTTP sink
//! delivers the topic to a receiver on loopback that fails every third request with `500`.
//! Lines are appended while the runtime is SIGKILLed mid-stream and restarted, five times.
//!
//! At the end every line was delivered at least once and none was skipped; the topic holds
//! each line exactly once (a line the source reads again after a kill has the same event id, and
//! the topic drops it); and every duplicate delivery is of a record that was in flight at a
//! kill: delivered before it, at or past the sink's committed offset stored at the kill.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::apply;
use serde_json::json;
use trellis_test_support::{Backend, ReceivedRequest, Receiver, Reply, backends};

use super::{Api, event_data, file_source};
use crate::{start_on, wait_until};

const LINES: usize = 2000;
const KILLS: usize = 5;
const TOPIC: &str = "lines";

fn line(n: usize) -> String {
    format!("line-{n:06}")
}

/// The line number a delivery carries (binary mode: the body is the line).
fn line_of(request: &ReceivedRequest) -> usize {
    let text = std::str::from_utf8(&request.body).expect("UTF-8 body");
    text.strip_prefix("line-")
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("not a line of the file: {text:?}"))
}

/// The receiver answers request `index` with `500` when `index % 3 == 2`.
fn answered_ok(index: usize) -> bool {
    index % 3 != 2
}

/// How many times each line was delivered (answered `200`) so far.
fn deliveries(receiver: &Receiver) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for (index, request) in receiver.requests().iter().enumerate() {
        if answered_ok(index) {
            *counts.entry(line_of(request)).or_default() += 1;
        }
    }
    counts
}

/// What the test saw at one kill.
struct Kill {
    /// The sink's topic offset as stored at the kill: where it starts again.
    committed: u64,
    /// The lines delivered before the kill.
    delivered: BTreeSet<usize>,
}

/// The sink's offset as last stored, from `/metrics`: an HTTP sink runs on a subscription's
/// dispatcher, whose series carry `subscription="connector:<name>"`. 0 while there is none.
async fn stored_progress(api: &Api) -> u64 {
    let metrics = api.get_text("/metrics").await;
    let series = "trellis_subscription_committed_offset{subscription=\"connector:hook\"} ";
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// The sink's committed topic offset as the metadata store holds it, read while the runtime is
/// down (the contract's key, `{"offset":N,"incarnation":ID}`); 0 when none was stored yet.
async fn stored_sink_offset(data_dir: &Path) -> u64 {
    use trellis_meta::MetadataStore;
    let store = trellis_meta::EmbeddedStore::open(&data_dir.join("meta.redb"))
        .expect("the metadata store opens once the runtime is dead");
    let stored = store
        .get("/connectors/hook/topic-offset")
        .await
        .expect("read the sink's offset");
    let Some(stored) = stored else {
        return 0;
    };
    let value: serde_json::Value = serde_json::from_slice(&stored.value).expect("a JSON offset");
    value["offset"]
        .as_u64()
        .or_else(|| value.as_u64())
        .unwrap_or_else(|| panic!("not an offset: {value}"))
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn file_to_http_through_five_sigkills_delivers_every_line(#[case] backend: Backend) {
    let receiver =
        Receiver::start(|index, _| Reply::Status(if answered_ok(index) { 200 } else { 500 }))
            .await
            .expect("receiver");
    let Some(mut node) = start_on(backend) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.log");
    std::fs::File::create(&input).expect("create input");
    let mut api = Api::new(node.base_url());
    api.put_topic(TOPIC).await;
    let mut source = file_source(&input, TOPIC);
    source["max_batch"] = json!(50);
    api.create_ok("tail", source).await;
    api.create_ok(
        "hook",
        json!({
            "connector.class": "http-sink",
            "topic": TOPIC,
            "start": "earliest",
            "offsets.commit.interval.ms": 100,
            "sink": {"urls": [receiver.url("/hook")]},
            "delivery": {
                "max_attempts": 1000,
                "backoff": {"initial_ms": 5, "max_ms": 50, "jitter": false},
                "request_timeout_ms": 5000,
            },
        }),
    )
    .await;

    // The writer appends at a steady pace whatever the runtime does, kills included.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let input = input.clone();
        let writing = Arc::clone(&writing);
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&input)
                .expect("open input");
            for chunk in (0..LINES).collect::<Vec<_>>().chunks(10) {
                let text: String = chunk.iter().map(|n| format!("{}\n", line(*n))).collect();
                file.write_all(text.as_bytes()).expect("append");
                std::thread::sleep(Duration::from_millis(30));
            }
            writing.store(false, Ordering::Release);
        })
    };

    let mut kills = Vec::new();
    for k in 1..=KILLS {
        // Mid-stream: a share of the lines is through the sink, the rest on its way. The kill
        // waits for the sink to have stored that share (its committed-offset gauge is set as it
        // stores), so that every run makes progress however fast kills follow restarts.
        let threshold = (k * LINES / (KILLS + 1)) as u64;
        // And past where this run started, so each run stores progress of its own.
        let previous = kills.last().map_or(0, |kill: &Kill| kill.committed);
        let reached = wait_until(Duration::from_secs(60), async || {
            let stored = stored_progress(&api).await;
            stored >= threshold && stored > previous
        })
        .await;
        assert!(
            reached,
            "kill {k}: the sink's stored offset {} is short of {threshold}; stderr: {}",
            stored_progress(&api).await,
            node.stderr()
        );
        node.kill();
        kills.push(Kill {
            committed: stored_sink_offset(node.data_dir()).await,
            delivered: deliveries(&receiver).into_keys().collect(),
        });
        node.restart();
        api.set_base(node.base_url());
    }
    writer.join().expect("writer");
    assert!(!writing.load(Ordering::Acquire));

    let all = wait_until(Duration::from_secs(120), async || {
        deliveries(&receiver).len() >= LINES
    })
    .await;
    let counts = deliveries(&receiver);
    let missing: Vec<usize> = (0..LINES).filter(|n| !counts.contains_key(n)).collect();
    assert!(
        all && missing.is_empty(),
        "{} lines never delivered, the first {:?}; sink status {}",
        missing.len(),
        &missing[..missing.len().min(10)],
        api.get("/v1/connectors/hook/status").await.body
    );
    assert!(counts.keys().all(|n| *n < LINES), "only lines of the file");

    // The topic holds every line once: the source's re-reads after a kill were deduplicated.
    let events = api.wait_for_events(TOPIC, LINES).await;
    let mut offset_of: HashMap<usize, u64> = HashMap::new();
    for event in &events {
        let text = String::from_utf8(event_data(event)).expect("UTF-8 line");
        let n: usize = text
            .strip_prefix("line-")
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("not a line: {text:?}"));
        let offset = event["offset"].as_u64().expect("offset");
        if let Some(first) = offset_of.insert(n, offset) {
            panic!("line {n} is in the topic twice, at {first} and {offset}");
        }
    }
    assert_eq!(offset_of.len(), LINES, "every line is in the topic");

    // Duplicates come only from records in flight at a kill: delivered before it, at or past
    // the offset the sink had stored. A line in flight at j kills may come j extra times.
    let in_flight: Vec<BTreeSet<usize>> = kills
        .iter()
        .map(|kill| {
            kill.delivered
                .iter()
                .copied()
                .filter(|n| {
                    offset_of
                        .get(n)
                        .is_some_and(|offset| *offset >= kill.committed)
                })
                .collect()
        })
        .collect();
    let mut duplicates = 0;
    for (n, count) in &counts {
        let extra = count - 1;
        duplicates += extra;
        let at_kills = in_flight.iter().filter(|lines| lines.contains(n)).count();
        assert!(
            extra <= at_kills,
            "line {n} (offset {:?}) was delivered {count} times but in flight at {at_kills} kills",
            offset_of.get(n)
        );
    }
    let bound: usize = in_flight.iter().map(BTreeSet::len).sum();
    let stored: Vec<u64> = kills.iter().map(|kill| kill.committed).collect();
    let seen: Vec<usize> = kills.iter().map(|kill| kill.delivered.len()).collect();
    let per_kill: Vec<usize> = in_flight.iter().map(BTreeSet::len).collect();
    println!(
        "{backend:?}: {LINES} lines, {KILLS} SIGKILLs: {duplicates} duplicate deliveries; \
         at the kills {seen:?} lines delivered, sink offsets stored {stored:?}, in flight \
         {per_kill:?} (sum {bound}); {} requests in all",
        receiver.n_requests()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates > {bound} in flight"
    );
}
