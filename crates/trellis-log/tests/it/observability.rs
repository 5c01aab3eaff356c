//! The telemetry contract: metric names and labels, and one recovery warning per topic.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::{TestResult, append_range, config, open, segment_files};

/// Every metric recorded by any test in this binary, by `name{label=value,..}`: counters hold
/// their total, gauges their last value, histograms how many values they got.
#[derive(Default)]
struct Recorded(Mutex<HashMap<String, f64>>);

struct Handle {
    key: String,
    recorded: Arc<Recorded>,
}

struct TestRecorder(Arc<Recorded>);

impl Recorded {
    fn get(&self, key: &str) -> f64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0.0)
    }

    fn update(&self, key: &str, update: impl FnOnce(&mut f64)) {
        update(
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.to_owned())
                .or_default(),
        );
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.recorded
            .update(&self.key, |total| *total += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.recorded
            .update(&self.key, |total| *total = total.max(value as f64));
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.recorded.update(&self.key, |gauge| *gauge += value);
    }
    fn decrement(&self, value: f64) {
        self.recorded.update(&self.key, |gauge| *gauge -= value);
    }
    fn set(&self, value: f64) {
        self.recorded.update(&self.key, |gauge| *gauge = value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        self.recorded.update(&self.key, |n_values| *n_values += 1.0);
    }
}

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut text = key.name().to_owned();
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        if !labels.is_empty() {
            let _ = write!(text, "{{{}}}", labels.join(","));
        }
        Arc::new(Handle {
            key: text,
            recorded: Arc::clone(&self.0),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

/// The process-wide recorder; installed by the first test that asks.
fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Arc<Recorded>> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded = Arc::new(Recorded::default());
        // Fails only if another recorder is installed, and nothing else in this binary installs one.
        let _ = metrics::set_global_recorder(TestRecorder(Arc::clone(&recorded)));
        recorded
    })
}

/// Collects the fields of every warning.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = FieldText(String::new());
            event.record(&mut text);
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(text.0);
        }
    }
}

#[tokio::test]
async fn appends_record_fsync_time_and_topic_size() -> TestResult {
    let recorded = recorded();
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024))?;
    let n_fsyncs_before = recorded.get("trellis_log_fsync_seconds");
    append_range(&topic, 0, 30, 3).await?;
    assert!(recorded.get("trellis_log_fsync_seconds") >= n_fsyncs_before + 10.0);
    // Other tests use the same topic name; this one only checks the label and the last value it set.
    let gauge = recorded.get("trellis_log_size_bytes{topic=events}");
    assert!(gauge > 0.0);
    log.close().await?;
    Ok(())
}

#[tokio::test]
async fn recovery_warns_once_per_topic_and_counts_truncated_bytes() -> TestResult {
    let recorded = recorded();
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 40, 1).await?;
    let other = log.create_topic("healthy", config(1024))?;
    append_range(&other, 0, 40, 1).await?;
    log.close().await?;
    let last = segment_files(dir.path())?.pop().ok_or("no segments")?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .and_then(|mut file| {
            use std::io::Write;
            file.write_all(&[0xee; 123])
        })?;

    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    let truncated_before = recorded.get("trellis_log_recovered_truncated_bytes_total");
    let (_log, _topic) =
        tracing::subscriber::with_default(subscriber, || open(dir.path(), &config(1024)))?;
    let warnings = warnings
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("dropped_bytes=123"), "{warnings:?}");
    // Garbage after the last whole batch: no record was dropped, and the warning says so.
    assert!(warnings[0].contains("dropped_records=0"), "{warnings:?}");
    assert!(warnings[0].contains("from_offset=40"), "{warnings:?}");
    assert!(warnings[0].contains("topic=\"events\""), "{warnings:?}");
    assert!(
        recorded.get("trellis_log_recovered_truncated_bytes_total") >= truncated_before + 123.0
    );
    Ok(())
}

#[tokio::test]
async fn a_hole_is_warned_about_with_its_offsets_and_counted() -> TestResult {
    let recorded = recorded();
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024 * 1024))?;
    append_range(&topic, 0, 60, 1).await?;
    log.close().await?;
    let segment = segment_files(dir.path())?.pop().ok_or("no segments")?;
    // A payload byte of record 30 (records 0..30 come first), and no index to lean on.
    let position: u64 = (0..30).map(|n| 25 + crate::payload(n).len() as u64).sum();
    let mut bytes = std::fs::read(&segment)?;
    bytes[usize::try_from(position)? + 27] ^= 0x10;
    std::fs::write(&segment, bytes)?;
    std::fs::remove_file(segment.with_extension("idx"))?;

    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    let damaged_before = recorded.get("trellis_log_damaged_records_total{topic=events}");
    let (_log, topic) =
        tracing::subscriber::with_default(subscriber, || open(dir.path(), &config(1024 * 1024)))?;
    let warnings = warnings
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for field in [
        "topic=\"events\"",
        "segment=0",
        "first_offset=30",
        "next_offset=31",
        "damaged_records=1",
    ] {
        assert!(warnings[0].contains(field), "{field} in {warnings:?}");
    }
    assert!(
        recorded.get("trellis_log_damaged_records_total{topic=events}") >= damaged_before + 1.0
    );
    assert_eq!(topic.stats().next_offset, 60);
    Ok(())
}
