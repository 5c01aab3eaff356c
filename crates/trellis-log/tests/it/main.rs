//! Integration tests for `trellis-log`, through the public API only.
//!
//! Tests that damage files by hand know the on-disk layout the crate documents:
//! `<dir>/<topic>/<base offset, 20 digits>.log` plus a `.idx` next to it.

mod damage;
mod lifecycle;
mod model;
mod observability;
mod recovery;
mod retention;
mod roundtrip;
mod writer_pool;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use trellis_log::{Durability, Log, LogOptions, Record, Topic, TopicConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TOPIC: &str = "events";

fn config(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        durability: Durability::Always,
        segment_bytes,
        ..TopicConfig::default()
    }
}

fn open(dir: &Path, config: &TopicConfig) -> Result<(Log, Topic), trellis_log::LogError> {
    let log = Log::open(LogOptions {
        dir: dir.to_owned(),
        default_topic: config.clone(),
    })?;
    let topic = log.get_or_create_topic(TOPIC, config.clone())?;
    Ok((log, topic))
}

/// A recognisable payload of varying length for record `n`.
fn payload(n: u64) -> Bytes {
    let len = 10 + (n * 37 % 150) as usize;
    let text = format!("record-{n:08}|");
    Bytes::from(text.bytes().cycle().take(len).collect::<Vec<u8>>())
}

/// Appends records `from..to` in batches of `batch` records.
async fn append_range(topic: &Topic, from: u64, to: u64, batch: u64) -> TestResult {
    let mut next = from;
    while next < to {
        let end = (next + batch).min(to);
        let ack = topic.append((next..end).map(payload).collect()).await?;
        assert_eq!(ack.first_offset, next);
        assert_eq!(ack.n_records, end - next);
        next = end;
    }
    Ok(())
}

fn read_all(topic: &Topic, from: u64) -> Result<Vec<Record>, trellis_log::LogError> {
    let mut records = Vec::new();
    let mut next = from;
    loop {
        let batch = topic.read(next, 50, 4096)?;
        let Some(last) = batch.last() else {
            return Ok(records);
        };
        next = last.offset + 1;
        records.extend(batch);
    }
}

#[track_caller]
fn check_records(records: &[Record], expected: std::ops::Range<u64>) {
    let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, expected.clone().collect::<Vec<_>>());
    for record in records {
        assert_eq!(
            record.payload,
            payload(record.offset),
            "payload of record {}",
            record.offset
        );
    }
}

/// The topic's `.log` files, oldest first.
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.join(TOPIC))? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "log") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
