//! Seed 002 (Apache EventMesh #4795): offset commits arrive while a flush is slow. The second
//! `begin_flush` must be refused with a warning, not thrown, the caller keeps going, and the
//! offsets it could not flush go out with the next cycle.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use support::FaultyStore;
use trellis_connect::offsets::{FlushOutcome, OffsetReader, OffsetStore, OffsetWriter};
use trellis_connect::{Offset, Partition};

/// Collects formatted log lines so the test can read the warning a user would see.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test]
async fn a_second_begin_flush_during_a_slow_flush_is_refused_and_its_offsets_go_next_cycle() {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "seed-002");
    // A flush timeout far beyond the test: the slow flush must be refused, not timed out.
    let writer = OffsetWriter::new(store.clone(), Duration::from_secs(300));
    let a = Partition::new("a");
    let b = Partition::new("b");

    writer.write_offset(a.clone(), Offset(10));
    faulty.hold();
    assert!(writer.begin_flush());
    let slow = writer.do_flush().expect("a flush to write");

    // Commits arrive while the first flush is stuck in the store.
    writer.write_offset(a.clone(), Offset(20));
    writer.write_offset(b.clone(), Offset(5));

    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let began = tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || writer.begin_flush())
    });
    assert!(!began, "a second begin_flush is refused, not started");
    let refused = metrics.render().lines().any(|line| {
        line == r#"trellis_connector_begin_flush_refused_total{connector="seed-002"} 1"#
    });
    assert!(refused, "refusal counted:\n{}", metrics.render());
    let log = logs.text();
    assert!(
        log.contains("WARN") && log.contains("offset flush already in progress"),
        "refusal logged as a warning: {log}"
    );

    // The caller keeps running: another commit attempt is refused again, nothing fails.
    assert_eq!(writer.commit().await, FlushOutcome::Refused);
    assert_eq!(writer.stats().begin_flush_refused, 2);

    faulty.release();
    assert_eq!(slow.await, FlushOutcome::Committed { partitions: 1 });
    let reader = OffsetReader::new(store.clone());
    assert_eq!(reader.offset(&a).await.expect("read"), Some(Offset(10)));
    assert_eq!(reader.offset(&b).await.expect("read"), None);

    // The next cycle flushes what was skipped.
    assert_eq!(
        writer.commit().await,
        FlushOutcome::Committed { partitions: 2 }
    );
    let committed = reader.offsets().await.expect("read");
    assert_eq!(committed.get(&a), Some(&Offset(20)));
    assert_eq!(committed.get(&b), Some(&Offset(5)));
    assert_eq!(writer.stats().commits, 2);
    assert_eq!(writer.stats().failures, 0);
}
