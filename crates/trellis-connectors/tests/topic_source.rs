//! The topic source against a real Trellis runtime on loopback.

use std::collections::BTreeMap;

use trellis_connect::{
    ConnectRecord, ConnectorConfig, Offset, Partition, Position, Sink, SinkContext, Source,
    SourceContext,
};
use trellis_connectors::topic_sink::TopicSink;
use trellis_connectors::topic_source::TopicSource;

use far::Far;

mod far;

/// Plenty of polls for a few events; a guard against a source that never delivers.
const MAX_POLLS: usize = 100;

async fn started(far: &Far, topic: &str, committed: Option<u64>) -> TopicSource {
    let config = ConnectorConfig::new()
        .with("url", far.base.as_str())
        .with("topic", topic)
        .with("max_batch", 2);
    let committed = committed
        .map(|offset| {
            BTreeMap::from([(
                Partition::new(format!("{}/{topic}", far.base)),
                Offset(offset),
            )])
        })
        .unwrap_or_default();
    let mut source = TopicSource::new();
    source
        .start(SourceContext::new("bridge", config, committed))
        .await
        .expect("start");
    source
}

/// Polls until `n` records came.
async fn read(source: &mut TopicSource, n: usize) -> Vec<ConnectRecord> {
    let mut records = Vec::new();
    for _ in 0..MAX_POLLS {
        if records.len() >= n {
            break;
        }
        records.extend(source.poll().await.expect("poll"));
    }
    records
}

#[tokio::test]
async fn events_come_out_in_order_with_their_ids_and_positions() {
    let far = Far::start().await;
    far.publish("orders", &["e-1", "e-2", "e-3", "e-4", "e-5"])
        .await;
    let mut source = started(&far, "orders", None).await;
    let records = read(&mut source, 5).await;
    source.stop().await.expect("stop");

    let partition = format!("{}/orders", far.base);
    let seen: Vec<(&str, Position)> = records
        .iter()
        .map(|r| (r.id.as_str(), r.position.clone()))
        .collect();
    let expected: Vec<(&str, Position)> = ["e-1", "e-2", "e-3", "e-4", "e-5"]
        .into_iter()
        .zip(1..)
        .map(|(id, offset)| (id, Position::new(partition.as_str(), offset)))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(&records[2].data[..], b"data of e-3");
    assert_eq!(records[2].extension("origin"), Some("far"));
    assert_eq!(records[2].extension("offset"), None);
    far.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_after_the_committed_offset() {
    let far = Far::start().await;
    far.publish("orders", &["e-1", "e-2", "e-3", "e-4"]).await;
    // Offset 2 committed: e-1 and e-2 (far offsets 0 and 1) were published.
    let mut source = started(&far, "orders", Some(2)).await;
    let records = read(&mut source, 2).await;
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["e-3", "e-4"]);
    assert_eq!(records[0].position.offset, Offset(3));
    // Nothing more until more is published.
    assert!(source.poll().await.expect("poll").is_empty());
    far.publish("orders", &["e-5"]).await;
    let more = read(&mut source, 1).await;
    assert_eq!(more.first().map(|r| r.id.as_str()), Some("e-5"));
    source.stop().await.expect("stop");
    far.stop().await;
}

#[tokio::test]
async fn a_bridge_of_source_and_sink_copies_a_topic_with_its_ids() {
    let (a, b) = (Far::start().await, Far::start().await);
    a.publish("orders", &["e-1", "e-2", "e-3"]).await;
    let mut source = started(&a, "orders", None).await;
    let mut sink = TopicSink::new();
    let config = ConnectorConfig::new()
        .with("url", b.base.as_str())
        .with("topic", "copied");
    sink.start(SinkContext::new("bridge", config))
        .await
        .expect("start sink");
    let records = read(&mut source, 3).await;
    sink.put(records.clone()).await.expect("put");
    // A retry after a lost answer: stored once.
    sink.put(records).await.expect("put again");
    let copied = b.events("copied").await;
    let ids: Vec<&str> = copied.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["e-1", "e-2", "e-3"]);
    assert_eq!(copied[0]["source"], "/far");
    assert_eq!(copied[0]["data"], "data of e-1");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn config_errors_name_the_key() {
    for (config, key) in [
        (ConnectorConfig::new().with("topic", "t"), "url"),
        (
            ConnectorConfig::new().with("url", "http://127.0.0.1:1"),
            "topic",
        ),
        (
            ConnectorConfig::new()
                .with("url", "http://127.0.0.1:1")
                .with("topic", "t")
                .with("max_batch", 0),
            "max_batch",
        ),
    ] {
        let error = TopicSource::new()
            .start(SourceContext::new("bridge", config, BTreeMap::new()))
            .await
            .expect_err("a bad config");
        assert!(error.to_string().contains(key), "{key}: {error}");
    }
}

#[tokio::test]
async fn events_removed_by_retention_are_skipped_and_reading_goes_on_from_the_oldest() {
    let far = Far::start_with(trellis_runtime::RuntimeConfig {
        retention_check_interval: std::time::Duration::from_millis(50),
        ..trellis_runtime::RuntimeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/v1/topics/short", far.base))
        .body(r#"{"segment_bytes": 4096, "retention_bytes": 8192}"#)
        .send()
        .await
        .expect("create topic");
    assert_eq!(created.status().as_u16(), 201);
    let ids: Vec<String> = (0..200).map(|n| format!("e-{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // In small batches: a segment rolls between appends, and retention removes whole segments.
    for chunk in ids.chunks(10) {
        far.publish("short", chunk).await;
    }
    // Waits for retention to run; a guard against waiting forever, not a timing assertion.
    let mut first_offset = 0;
    for _ in 0..400 {
        let topic: serde_json::Value = client
            .get(format!("{}/v1/topics/short", far.base))
            .send()
            .await
            .expect("topic")
            .json()
            .await
            .expect("json");
        first_offset = topic["first_offset"].as_u64().unwrap_or(0);
        if first_offset > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(first_offset > 0, "retention never removed anything");

    let mut source = started(&far, "short", None).await;
    let records = read(&mut source, 1).await;
    source.stop().await.expect("stop");
    let first = records.first().expect("a record after the gap");
    // Retention may have run again since: the source starts at or after the offset seen.
    let far_offset = first.position.offset.0 - 1;
    assert!(far_offset >= first_offset, "{far_offset} < {first_offset}");
    assert_eq!(first.id, format!("e-{far_offset}"));
    far.stop().await;
}
