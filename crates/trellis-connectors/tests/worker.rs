//! The source worker against a real runtime: records published through the topic sink into a
//! Trellis on loopback, offsets in a real metadata store.

mod far;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use far::Far;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_connect::offsets::OffsetStore;
use trellis_connect::{
    ConnectRecord, ConnectorConfig, ConnectorError, Offset, Partition, Position, SendCallback,
    SendExceptionContext, SendResult, Sink, SinkContext, Source, SourceContext, SourceWorker,
    Tolerance, WorkerSettings, WorkerState,
};
use trellis_connectors::file_source::FileSource;
use trellis_connectors::topic_sink::TopicSink;
use trellis_meta::{
    CasOutcome, EmbeddedStore, Expect, KeyValue, MetaError, MetadataStore, Range, WatchStream,
};

/// Every outcome the source's own callbacks heard, as `"<id> ok"` or `"<id> failed"`.
#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

impl Heard {
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("heard").clone()
    }
}

impl SendCallback for Heard {
    fn on_success(&self, result: SendResult) {
        self.0
            .lock()
            .expect("heard")
            .push(format!("{} ok", result.record_id));
    }
    fn on_exception(&self, context: SendExceptionContext) {
        self.0
            .lock()
            .expect("heard")
            .push(format!("{} failed", context.record_id));
    }
}

/// A source of fixed records in partition `p` (offsets 1..=n), resuming after the committed
/// offset, each with a callback of its own (as the HTTP source attaches). Record `bad`, when
/// set, carries a `datacontenttype` that is no media type, which no event can carry.
struct Script {
    records: VecDeque<ConnectRecord>,
    n: u64,
    bad: Option<u64>,
    heard: Arc<Heard>,
    /// Records after this offset wait until the gate opens.
    gate: Option<(u64, watch::Receiver<bool>)>,
}

impl Script {
    fn new(n: u64, bad: Option<u64>, heard: Arc<Heard>) -> Script {
        Script {
            records: VecDeque::new(),
            n,
            bad,
            heard,
            gate: None,
        }
    }
}

#[async_trait]
impl Source for Script {
    async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError> {
        let from = context
            .committed_offset(&Partition::new("p"))
            .map_or(0, |o| o.0);
        self.records = (from + 1..=self.n)
            .map(|i| {
                let mut record =
                    ConnectRecord::new(format!("r{i}"), Position::new("p", i), format!("line {i}"))
                        .with_callback(self.heard.clone());
                if self.bad == Some(i) {
                    record = record.with_extension("datacontenttype", "not a media type");
                }
                record
            })
            .collect();
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        let held = match (&self.gate, self.records.front()) {
            (Some((after, gate)), Some(next)) => next.position.offset.0 > *after && !*gate.borrow(),
            _ => false,
        };
        if self.records.is_empty() || held {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(Vec::new());
        }
        let take = self.records.len().min(2);
        Ok(self.records.drain(..take).collect())
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// The real topic sink, whose first `failures` puts fail as an unreachable far side would.
struct Flaky {
    inner: TopicSink,
    failures: Arc<AtomicU32>,
}

#[async_trait]
impl Sink for Flaky {
    async fn start(&mut self, context: SinkContext) -> Result<(), ConnectorError> {
        self.inner.start(context).await
    }

    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ConnectorError::failed(
                "injected: the far side is unreachable",
            ));
        }
        self.inner.put(records).await
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        self.inner.stop().await
    }
}

/// The real embedded metadata store, whose puts can be held until released: a slow flush.
struct Gated {
    inner: EmbeddedStore,
    open: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Gated {
    fn new() -> Arc<Gated> {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = EmbeddedStore::open(&dir.path().join("meta.redb")).expect("meta store");
        Arc::new(Gated {
            inner,
            open: watch::Sender::new(true),
            _dir: dir,
        })
    }
}

#[async_trait]
impl MetadataStore for Gated {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<Range, MetaError> {
        self.inner.range(prefix).await
    }
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, MetaError> {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool, MetaError> {
        self.inner.delete(key).await
    }
    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Bytes,
    ) -> Result<CasOutcome, MetaError> {
        self.inner.compare_and_set(key, expect, value).await
    }
    async fn watch(&self, prefix: &str, start: Option<u64>) -> Result<WatchStream, MetaError> {
        self.inner.watch(prefix, start).await
    }
    async fn compare_and_delete(&self, key: &str, revision: u64) -> Result<CasOutcome, MetaError> {
        self.inner.compare_and_delete(key, revision).await
    }
}

fn config(far: &Far, extra: &[(&str, serde_json::Value)]) -> ConnectorConfig {
    let mut config = ConnectorConfig::new()
        .with("connector.class", "file-source")
        .with("topic", "lines")
        .with("url", far.base.clone());
    for (key, value) in extra {
        config.insert(*key, value.clone());
    }
    config
}

fn settings(config: &ConnectorConfig) -> WorkerSettings {
    let mut settings = WorkerSettings::from_config(config).expect("valid settings");
    settings.flush_timeout = Duration::from_secs(30);
    settings
}

fn meta() -> (tempfile::TempDir, Arc<EmbeddedStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("meta.redb")).expect("meta store");
    (dir, Arc::new(store))
}

/// Waits until `check` holds, polling; fails the test after a minute.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The events of topic `lines`, none while the topic does not exist yet.
async fn events(far: &Far) -> Vec<serde_json::Value> {
    let response = reqwest::get(format!(
        "{}/v1/topics/lines/events?from=0&limit=1000",
        far.base
    ))
    .await
    .expect("read events");
    if response.status().as_u16() == 404 {
        return Vec::new();
    }
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("json")
}

fn ids(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn stop_commits_and_a_restart_resumes_after_the_last_line() {
    let far = Far::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.log");
    let lines: String = (0..40).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, &lines).expect("write file");
    // No interval commit during the test: only the stop commits.
    let config = config(
        &far,
        &[
            ("path", path.display().to_string().into()),
            ("offsets.commit.interval.ms", 3_600_000.into()),
        ],
    );
    let (_meta_dir, meta) = meta();
    let offsets = OffsetStore::new(meta.clone(), "tail");
    let run = |config: ConnectorConfig| {
        SourceWorker::new(
            "tail".to_owned(),
            config.clone(),
            Box::new(FileSource::new()),
            Box::new(TopicSink::new()),
            offsets.clone(),
            settings(&config),
        )
    };

    let worker = run(config.clone());
    let status = worker.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    until("40 events", async || events(&far).await.len() == 40).await;
    assert_eq!(
        offsets
            .read(&Partition::new(path.display().to_string()))
            .await
            .expect("read"),
        None
    );
    stop.cancel();
    task.await.expect("worker task").expect("a clean stop");
    assert_eq!(status.state(), WorkerState::Stopped);
    assert_eq!(status.counters().published, 40);
    assert_eq!(
        offsets
            .read(&Partition::new(path.display().to_string()))
            .await
            .expect("read"),
        Some(Offset(lines.len() as u64)),
        "the stop committed the end of the last line"
    );

    let more: String = (40..50).map(|i| format!("line {i}\n")).collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, more.as_bytes()))
        .expect("append");
    let worker = run(config);
    let status = worker.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    until("50 events", async || events(&far).await.len() >= 50).await;
    stop.cancel();
    task.await.expect("worker task").expect("a clean stop");
    assert_eq!(
        status.counters().polled,
        10,
        "only the new lines were read again"
    );
    // Each line once, in order: the position extension names the end of each line.
    let ends: Vec<u64> = events(&far)
        .await
        .iter()
        .filter_map(|e| e["connectoffset"].as_str().and_then(|o| o.parse().ok()))
        .collect();
    let all = format!("{lines}{more}");
    let expected: Vec<u64> = all
        .match_indices('\n')
        .map(|(at, _)| at as u64 + 1)
        .collect();
    assert_eq!(ends, expected);
    far.stop().await;
}

#[tokio::test]
async fn a_destination_failing_then_recovering_loses_nothing() {
    let far = Far::start().await;
    let heard = Arc::new(Heard::default());
    let config = config(&far, &[]);
    let (_meta_dir, meta) = meta();
    let offsets = OffsetStore::new(meta, "flaky");
    let failures = Arc::new(AtomicU32::new(4));
    let worker = SourceWorker::new(
        "flaky".to_owned(),
        config.clone(),
        Box::new(Script::new(9, None, heard.clone())),
        Box::new(Flaky {
            inner: TopicSink::new(),
            failures: failures.clone(),
        }),
        offsets.clone(),
        settings(&config),
    );
    let status = worker.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    until("9 events", async || events(&far).await.len() == 9).await;
    stop.cancel();
    task.await.expect("worker task").expect("a clean stop");
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let counters = status.counters();
    assert!(counters.retried > 0, "{counters:?}");
    assert_eq!((counters.published, counters.failed), (9, 0));
    assert_eq!(
        ids(&events(&far).await),
        (1..=9).map(|i| format!("r{i}")).collect::<Vec<_>>(),
        "every record once, in order"
    );
    let mut heard = heard.all();
    heard.sort();
    let mut expected: Vec<String> = (1..=9).map(|i| format!("r{i} ok")).collect();
    expected.sort();
    assert_eq!(
        heard, expected,
        "each source callback ended once, with success"
    );
    assert_eq!(
        offsets.read(&Partition::new("p")).await.expect("read"),
        Some(Offset(9))
    );
    far.stop().await;
}

#[tokio::test]
async fn tolerance_none_stops_with_the_failed_record_uncommitted() {
    let far = Far::start().await;
    let heard = Arc::new(Heard::default());
    let config = config(&far, &[]);
    let (_meta_dir, meta) = meta();
    let offsets = OffsetStore::new(meta, "strict");
    let worker = SourceWorker::new(
        "strict".to_owned(),
        config.clone(),
        Box::new(Script::new(6, Some(3), heard.clone())),
        Box::new(TopicSink::new()),
        offsets.clone(),
        settings(&config),
    );
    assert_eq!(worker_settings_tolerance(&config), Tolerance::None);
    let status = worker.status();
    let failed = worker
        .run(CancellationToken::new())
        .await
        .expect_err("a rejected record stops the worker");
    assert!(failed.reason.contains("r3"), "{failed}");
    assert!(matches!(status.state(), WorkerState::Failed(reason) if reason.contains("r3")));
    assert_eq!(status.counters().failed, 1);
    assert_eq!(
        offsets.read(&Partition::new("p")).await.expect("read"),
        Some(Offset(2)),
        "committed up to the record before the failed one"
    );
    assert!(
        heard.all().contains(&"r3 failed".to_owned()),
        "{:?}",
        heard.all()
    );
    far.stop().await;
}

fn worker_settings_tolerance(config: &ConnectorConfig) -> Tolerance {
    settings(config).errors.tolerance
}

#[tokio::test]
async fn tolerance_all_skips_the_failed_record_and_goes_on() {
    let far = Far::start().await;
    let heard = Arc::new(Heard::default());
    let config = config(&far, &[("errors.tolerance", "all".into())]);
    let (_meta_dir, meta) = meta();
    let offsets = OffsetStore::new(meta, "lenient");
    let worker = SourceWorker::new(
        "lenient".to_owned(),
        config.clone(),
        Box::new(Script::new(6, Some(3), heard.clone())),
        Box::new(TopicSink::new()),
        offsets.clone(),
        settings(&config),
    );
    let status = worker.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    until("5 events", async || events(&far).await.len() == 5).await;
    until("all records ended", async || heard.all().len() == 6).await;
    stop.cancel();
    task.await.expect("worker task").expect("a clean stop");
    let counters = status.counters();
    assert_eq!(
        (counters.published, counters.failed, counters.skipped),
        (5, 1, 1)
    );
    assert_eq!(ids(&events(&far).await), ["r1", "r2", "r4", "r5", "r6"]);
    assert_eq!(
        offsets.read(&Partition::new("p")).await.expect("read"),
        Some(Offset(6)),
        "the skipped record does not hold the offset back"
    );
    assert!(heard.all().contains(&"r3 failed".to_owned()));
    far.stop().await;
}

/// Seed 002 (Apache EventMesh #4795) at worker level: commits come due while a flush is stuck
/// in the store. The worker keeps publishing, each refused `begin_flush` is a warning and a
/// counter, and once the store answers, the offsets that waited land with the next cycle.
#[tokio::test]
async fn commits_during_a_slow_flush_are_refused_and_land_on_the_next_cycle() {
    let far = Far::start().await;
    let heard = Arc::new(Heard::default());
    let config = config(&far, &[("offsets.commit.interval.ms", 20.into())]);
    let gated = Gated::new();
    let offsets = OffsetStore::new(gated.clone(), "seed-002");
    gated.open.send_replace(false);
    let (source_gate, gate) = watch::channel(false);
    let mut script = Script::new(40, None, heard.clone());
    script.gate = Some((20, gate));
    let worker = SourceWorker::new(
        "seed-002".to_owned(),
        config.clone(),
        Box::new(script),
        Box::new(TopicSink::new()),
        offsets.clone(),
        settings(&config),
    );
    let status = worker.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    until("the first 20 records", async || {
        events(&far).await.len() == 20
    })
    .await;
    until("refused flushes", async || {
        status.offsets().begin_flush_refused >= 3
    })
    .await;
    // The stuck flush holds at most offset 20; the rest arrive while it is stuck.
    source_gate.send_replace(true);
    until(
        "every record published while the flush is stuck",
        async || events(&far).await.len() == 40,
    )
    .await;
    assert_eq!(status.state(), WorkerState::Running);
    assert_eq!(
        status.offsets().commits,
        0,
        "the first flush is still stuck"
    );
    assert_eq!(
        offsets.read(&Partition::new("p")).await.expect("read"),
        None
    );
    gated.open.send_replace(true);
    until("the last offset committed while running", async || {
        offsets.read(&Partition::new("p")).await.ok().flatten() == Some(Offset(40))
    })
    .await;
    assert_eq!(status.state(), WorkerState::Running);
    // The stuck flush, then the one with the offsets that waited.
    until("two commits", async || status.offsets().commits >= 2).await;
    stop.cancel();
    task.await.expect("worker task").expect("a clean stop");
    far.stop().await;
}

/// The HTTP source, told its address once the worker started it.
struct Reporting {
    inner: trellis_connectors::http_source::HttpSource,
    addr: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
}

#[async_trait]
impl Source for Reporting {
    async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError> {
        self.inner.start(context).await?;
        if let (Some(addr), Some(tell)) = (self.inner.local_addr(), self.addr.take()) {
            let _ = tell.send(addr);
        }
        Ok(())
    }
    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        self.inner.poll().await
    }
    async fn stop(&mut self) -> Result<(), ConnectorError> {
        self.inner.stop().await
    }
}

/// Through the worker, a webhook sender hears `200` only once its event is stored in the
/// runtime, and a record the runtime refuses for good is answered `422` (the worker skips it
/// under `errors.tolerance = all` and goes on).
#[tokio::test]
async fn the_http_source_answers_from_the_publish_outcome() {
    let far = Far::start().await;
    let config = config(
        &far,
        &[
            ("connector.class", "http-source".into()),
            ("listen", "127.0.0.1:0".into()),
            ("path", "/hooks".into()),
            ("errors.tolerance", "all".into()),
        ],
    );
    let (tell, told) = tokio::sync::oneshot::channel();
    let (_meta_dir, meta) = meta();
    let worker = SourceWorker::new(
        "hooks".to_owned(),
        config.clone(),
        Box::new(Reporting {
            inner: trellis_connectors::http_source::HttpSource::new(),
            addr: Some(tell),
        }),
        Box::new(TopicSink::new()),
        OffsetStore::new(meta, "hooks"),
        settings(&config),
    );
    let status = worker.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let url = format!("http://{}/hooks", told.await.expect("the source started"));
    let client = reqwest::Client::new();

    let answer = client
        .post(&url)
        .header("content-type", "application/json")
        .header("idempotency-key", "order-1")
        .body(r#"{"order": 1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 200);
    // No waiting: the answer came after the runtime stored the event.
    assert_eq!(ids(&events(&far).await), ["order-1"]);

    // An id over the runtime's attribute limit: refused for good by the runtime.
    let answer = client
        .post(&url)
        .header("content-type", "application/json")
        .header("idempotency-key", "k".repeat(5000))
        .body(r#"{"order": 2}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 422);

    let answer = client
        .post(&url)
        .header("content-type", "application/json")
        .header("idempotency-key", "order-3")
        .body(r#"{"order": 3}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(ids(&events(&far).await), ["order-1", "order-3"]);
    stop.cancel();
    task.await.expect("worker task").expect("a clean stop");
    let counters = status.counters();
    assert_eq!((counters.published, counters.skipped), (2, 1));
    far.stop().await;
}

/// The worker's record counters reach the metrics recorder, labelled by connector.
#[tokio::test(flavor = "current_thread")]
async fn the_worker_counts_its_records_per_connector() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    trellis_connect::describe_metrics();
    let far = Far::start().await;
    let config = config(&far, &[("errors.tolerance", "all".into())]);
    let (_meta_dir, meta) = meta();
    let worker = SourceWorker::new(
        "counted".to_owned(),
        config.clone(),
        Box::new(Script::new(4, Some(2), Arc::new(Heard::default()))),
        Box::new(TopicSink::new()),
        OffsetStore::new(meta, "counted"),
        settings(&config),
    );
    let stop = CancellationToken::new();
    let status = worker.status();
    let run = worker.run(stop.clone());
    let watch = async {
        until("4 records ended", async || {
            let counters = status.counters();
            counters.published + counters.failed == 4
        })
        .await;
        stop.cancel();
    };
    let (outcome, ()) = tokio::join!(run, watch);
    outcome.expect("a clean stop");
    let text = handle.render();
    for line in [
        r#"trellis_connector_records_polled_total{connector="counted"} 4"#,
        r#"trellis_connector_records_published_total{connector="counted"} 3"#,
        r#"trellis_connector_records_failed_total{connector="counted"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    far.stop().await;
}
