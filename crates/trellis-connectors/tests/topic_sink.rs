//! The topic sink against a real Trellis runtime on loopback.

use std::sync::{Arc, Mutex};

use trellis_connect::{
    ConnectRecord, ConnectorConfig, ConnectorError, Position, SendCallback, SendExceptionContext,
    SendResult, Sink, SinkContext,
};
use trellis_connectors::topic_sink::TopicSink;

use far::Far;

mod far;

#[derive(Default)]
struct Outcomes(Mutex<Vec<(String, Option<bool>)>>);

impl Outcomes {
    /// Each record's id with `Some(final)` on failure, `None` on success.
    fn take(&self) -> Vec<(String, Option<bool>)> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

impl SendCallback for Outcomes {
    fn on_success(&self, result: SendResult) {
        self.0.lock().expect("lock").push((result.record_id, None));
    }
    fn on_exception(&self, context: SendExceptionContext) {
        let is_final = context.cause.is_final();
        self.0
            .lock()
            .expect("lock")
            .push((context.record_id, Some(is_final)));
    }
}

fn batch(outcomes: &Arc<Outcomes>) -> Vec<ConnectRecord> {
    (1..=3)
        .map(|n| {
            ConnectRecord::new(
                format!("line-{n}"),
                Position::new("file", n),
                format!("text {n}"),
            )
            .with_extension("datacontenttype", "text/plain")
            .with_callback(outcomes.clone())
        })
        .collect()
}

async fn started(url: &str, topic: &str) -> TopicSink {
    let mut sink = TopicSink::new();
    let config = ConnectorConfig::new().with("url", url).with("topic", topic);
    sink.start(SinkContext::new("bridge", config))
        .await
        .expect("start");
    sink
}

#[tokio::test]
async fn records_arrive_with_their_ids_and_a_resent_batch_is_stored_once() {
    let far = Far::start().await;
    let outcomes = Arc::new(Outcomes::default());
    let mut sink = started(&far.base, "bridged").await;

    sink.put(batch(&outcomes)).await.expect("put");
    sink.put(batch(&outcomes)).await.expect("put again");
    sink.stop().await.expect("stop");

    let ok = |id: &str| (id.to_owned(), None);
    assert_eq!(
        outcomes.take(),
        [
            ok("line-1"),
            ok("line-2"),
            ok("line-3"),
            ok("line-1"),
            ok("line-2"),
            ok("line-3")
        ]
    );
    let events = far.events("bridged").await;
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["line-1", "line-2", "line-3"]);
    assert_eq!(events[1]["data"], "text 2");
    assert_eq!(events[1]["source"], "/connectors/bridge");
    far.stop().await;
}

#[tokio::test]
async fn a_batch_the_far_side_refuses_fails_each_record_for_good() {
    let far = Far::start().await;
    let outcomes = Arc::new(Outcomes::default());
    // Too long for a topic name: the far side answers 400.
    let mut sink = started(&far.base, &"t".repeat(300)).await;
    sink.put(batch(&outcomes)).await.expect("put");
    let failed = |id: &str| (id.to_owned(), Some(true));
    assert_eq!(
        outcomes.take(),
        [failed("line-1"), failed("line-2"), failed("line-3")]
    );
    far.stop().await;
}

#[tokio::test]
async fn an_unreachable_far_side_leaves_the_records_to_be_sent_again() {
    // A port that was free a moment ago: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let outcomes = Arc::new(Outcomes::default());
    let mut sink = started(&url, "bridged").await;
    let result = sink.put(batch(&outcomes)).await;
    assert!(
        matches!(result, Err(ConnectorError::Failed { .. })),
        "{result:?}"
    );
    let dropped = |id: &str| (id.to_owned(), Some(false));
    assert_eq!(
        outcomes.take(),
        [dropped("line-1"), dropped("line-2"), dropped("line-3")]
    );
}

#[tokio::test]
async fn config_errors_name_the_key() {
    for (config, key) in [
        (ConnectorConfig::new().with("topic", "t"), "url"),
        (
            ConnectorConfig::new()
                .with("url", "ftp://x")
                .with("topic", "t"),
            "url",
        ),
        (
            ConnectorConfig::new().with("url", "http://127.0.0.1:1"),
            "topic",
        ),
        (
            ConnectorConfig::new()
                .with("url", "http://127.0.0.1:1")
                .with("topic", "t")
                .with("timeout_ms", 0),
            "timeout_ms",
        ),
    ] {
        let error = TopicSink::new()
            .start(SinkContext::new("bridge", config))
            .await
            .expect_err("a bad config");
        assert!(error.to_string().contains(key), "{key}: {error}");
    }
}
