//! Writes the input to a real file (its first two bytes choose `max_line_bytes` and
//! `max_batch`), tails it with the file source and checks what comes out: one record per
//! complete line, in order, each the line's first `max_line_bytes` bytes (marked when cut), at
//! the byte offset right after its newline, with unique ids; never a panic, never the partial
//! last line.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use trellis_connect::{ConnectorConfig, Source, SourceContext};
use trellis_connectors::file_source::FileSource;

fuzz_target!(|data: &[u8]| {
    let [line_byte, batch_byte, text @ ..] = data else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("input.log");
    if std::fs::write(&path, text).is_err() {
        return;
    }
    let Some(path) = path.to_str() else {
        return;
    };
    let max_line_bytes = usize::from(*line_byte) + 1;
    let max_batch = usize::from(*batch_byte % 16) + 1;

    // The expected records: complete lines only.
    let mut expected = Vec::new();
    let mut start = 0;
    for (at, byte) in text.iter().enumerate() {
        if *byte == b'\n' {
            let line = &text[start..at];
            expected.push((line, at as u64 + 1));
            start = at + 1;
        }
    }

    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let mut source = FileSource::new();
        let config = ConnectorConfig::new()
            .with("path", path)
            .with("max_line_bytes", max_line_bytes as u64)
            .with("max_batch", max_batch as u64);
        source
            .start(SourceContext::new("fuzz", config, BTreeMap::new()))
            .await
            .expect("a valid config starts");
        let mut records = Vec::new();
        // An idle poll waits, so poll only while lines are owed (and one extra, cheap only
        // when a bug produced records out of nothing, which the checks below then catch).
        while records.len() < expected.len() {
            let batch = source.poll().await.expect("poll");
            assert!(batch.len() <= max_batch, "a batch over max_batch");
            assert!(!batch.is_empty(), "complete lines were not emitted");
            records.extend(batch);
        }
        assert_eq!(records.len(), expected.len());
        let mut ids = BTreeSet::new();
        for (record, (line, end)) in records.iter().zip(&expected) {
            let kept = &line[..line.len().min(max_line_bytes)];
            assert_eq!(&record.data[..], kept);
            assert_eq!(record.position.offset.0, *end);
            let cut = line.len() > max_line_bytes;
            assert_eq!(record.extension("truncated").is_some(), cut);
            assert!(ids.insert(record.id.clone()), "a duplicate id");
        }
        source.stop().await.expect("stop");
    });
});
