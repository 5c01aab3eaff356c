//! The file sink on real files: one parseable JSON event per line, one callback per record.

use std::sync::{Arc, Mutex};

use trellis_cloudevents::CloudEvent;
use trellis_connect::{
    ConnectRecord, ConnectorConfig, ConnectorError, Position, SendCallback, SendExceptionContext,
    SendResult, Sink, SinkContext,
};
use trellis_connectors::file_sink::{FileSink, FsyncPolicy};

#[derive(Default)]
struct Outcomes(Mutex<Vec<String>>);

impl Outcomes {
    fn all(&self) -> Vec<String> {
        self.0.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl SendCallback for Outcomes {
    fn on_success(&self, result: SendResult) {
        if let Ok(mut outcomes) = self.0.lock() {
            outcomes.push(format!("{} ok", result.record_id));
        }
    }
    fn on_exception(&self, context: SendExceptionContext) {
        if let Ok(mut outcomes) = self.0.lock() {
            outcomes.push(format!("{} failed: {}", context.record_id, context.cause));
        }
    }
}

fn records(outcomes: &Arc<Outcomes>, ids: &[&str]) -> Vec<ConnectRecord> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            ConnectRecord::new(
                *id,
                Position::new("orders", i as u64 + 1),
                format!("line {id}"),
            )
            .with_extension("datacontenttype", "text/plain")
            .with_callback(outcomes.clone())
        })
        .collect()
}

async fn started(config: ConnectorConfig) -> Result<FileSink, ConnectorError> {
    let mut sink = FileSink::new();
    sink.start(SinkContext::new("out", config)).await?;
    Ok(sink)
}

#[tokio::test]
async fn each_record_becomes_one_parseable_event_line_and_one_callback() {
    for fsync in ["always", "interval", "never"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let config = ConnectorConfig::new()
            .with("path", path.to_str().expect("utf-8"))
            .with("fsync", fsync);
        let mut sink = started(config).await.expect("start");
        let outcomes = Arc::new(Outcomes::default());
        sink.put(records(&outcomes, &["a", "b"]))
            .await
            .expect("put");
        sink.put(records(&outcomes, &["c"])).await.expect("put");
        sink.stop().await.expect("stop");
        assert_eq!(outcomes.all(), ["a ok", "b ok", "c ok"], "fsync {fsync}");

        let text = std::fs::read_to_string(&path).expect("read");
        let events: Vec<CloudEvent> = text
            .lines()
            .map(|line| CloudEvent::from_structured_json(line.as_bytes()).expect("an event"))
            .collect();
        assert!(text.ends_with('\n'));
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(events[0].source, "/connectors/out");
        let json: serde_json::Value =
            serde_json::from_str(text.lines().next().unwrap_or("")).expect("plain JSON too");
        assert_eq!(json["data"], "line a");
        assert_eq!(json["connectoffset"], "1");
    }
}

#[tokio::test]
async fn an_existing_file_is_appended_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    std::fs::write(&path, "{\"kept\":true}\n").expect("seed");
    let config = ConnectorConfig::new().with("path", path.to_str().expect("utf-8"));
    let mut sink = started(config).await.expect("start");
    assert!(matches!(
        sink.fsync_policy(),
        Some(FsyncPolicy::Interval(_))
    ));
    let outcomes = Arc::new(Outcomes::default());
    sink.put(records(&outcomes, &["x"])).await.expect("put");
    sink.stop().await.expect("stop");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), 2);
    assert!(text.starts_with("{\"kept\":true}\n"));
}

#[tokio::test]
async fn a_record_that_is_no_valid_event_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let config = ConnectorConfig::new().with("path", path.to_str().expect("utf-8"));
    let mut sink = started(config).await.expect("start");
    let outcomes = Arc::new(Outcomes::default());
    let batch = vec![
        ConnectRecord::new("good", Position::new("orders", 1), "fine")
            .with_callback(outcomes.clone()),
        // An empty `source` attribute makes no valid event.
        ConnectRecord::new("bad", Position::new("orders", 2), "fine")
            .with_extension("source", "")
            .with_callback(outcomes.clone()),
    ];
    sink.put(batch).await.expect("put");
    sink.stop().await.expect("stop");
    let all = outcomes.all();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all[0].starts_with("bad failed: the record was rejected"),
        "{all:?}"
    );
    assert_eq!(all[1], "good ok");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), 1);
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let error = started(ConnectorConfig::new()).await.expect_err("no path");
    assert!(error.to_string().contains("`path`"), "{error}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let path = path.to_str().expect("utf-8");
    let error = started(
        ConnectorConfig::new()
            .with("path", path)
            .with("fsync", "sometimes"),
    )
    .await
    .expect_err("bad policy");
    assert!(error.to_string().contains("`fsync`"), "{error}");
    let error = started(
        ConnectorConfig::new()
            .with("path", path)
            .with("fsync_interval_ms", 0),
    )
    .await
    .expect_err("zero interval");
    assert!(error.to_string().contains("`fsync_interval_ms`"), "{error}");
}

/// `/dev/full` refuses every write with "no space left": a real I/O error.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_io_error_fails_every_record_of_the_batch_through_its_callback() {
    let config = ConnectorConfig::new()
        .with("path", "/dev/full")
        .with("fsync", "never");
    let mut sink = started(config).await.expect("start");
    let outcomes = Arc::new(Outcomes::default());
    sink.put(records(&outcomes, &["a", "b"]))
        .await
        .expect("put goes on");
    // The next batch tries again (and fails again), the sink is not stuck.
    sink.put(records(&outcomes, &["c"]))
        .await
        .expect("put goes on");
    sink.stop().await.expect("stop");
    let all = outcomes.all();
    assert_eq!(all.len(), 3, "{all:?}");
    for (outcome, id) in all.iter().zip(["a", "b", "c"]) {
        assert!(
            outcome.starts_with(&format!(
                "{id} failed: delivery failed: writing to the file failed"
            )),
            "{outcome}"
        );
    }
}
