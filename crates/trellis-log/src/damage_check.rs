//! The recovery promise, checked end to end over damage chosen by the input: records are written
//! through a real log, the files are damaged by hand, the log is opened again and read back the
//! way a client reads (skipping what is reported damaged). Behind the `recovery_damage` fuzz
//! target and the proptest that runs the same body in the normal test suite.
//!
//! The promise: every intact acknowledged record survives with its offset and payload, except
//! the records after the last intact end of a batch in the active segment (a torn tail, cut as
//! it always was); nothing is read back that was not written at that offset; and the offset the
//! next append gets is above every record that survived.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::files::{self, SegmentFile};
use crate::frame;
use crate::{Durability, Log, LogOptions, TopicConfig};

const TOPIC: &str = "damaged";

/// Reads the decisions the check makes from the input; past its end every answer is zero.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    fn below(&mut self, bound: u64) -> u64 {
        let raw =
            u64::from(self.byte()) << 16 | u64::from(self.byte()) << 8 | u64::from(self.byte());
        if bound == 0 { 0 } else { raw % bound }
    }
}

/// Where one written record's frame lies, and whether it ended its batch.
struct Written {
    offset: u64,
    segment: usize,
    start: u64,
    end: u64,
    end_of_batch: bool,
}

/// The record written at `offset`: its length comes from the input, its bytes name its offset.
fn payload(offset: u64, len: u8) -> Bytes {
    let text = format!("record {offset}|");
    Bytes::from(
        text.bytes()
            .cycle()
            .take(text.len() + usize::from(len))
            .collect::<Vec<u8>>(),
    )
}

/// Runs the whole check in `dir` (which must be empty), panicking on a broken promise.
pub(crate) fn check_recovery_after_damage(dir: &Path, data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let config = TopicConfig {
        durability: Durability::Never,
        segment_bytes: [512, 2048, 64 * 1024 * 1024][usize::from(input.byte() % 3)],
        ..TopicConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("starting a runtime: {error}"),
    };
    let options = LogOptions {
        dir: dir.to_owned(),
        default_topic: config.clone(),
    };

    // Write records in batches; every append resolves, so every record is acknowledged.
    let n_records = 1 + input.below(160);
    let mut payloads = Vec::new();
    let mut batch_ends = Vec::new();
    runtime.block_on(async {
        let log = Log::open(options.clone()).unwrap_or_else(|error| panic!("open: {error}"));
        let topic = log
            .get_or_create_topic(TOPIC, config.clone())
            .unwrap_or_else(|error| panic!("create: {error}"));
        let mut next = 0;
        while next < n_records {
            let batch = (1 + input.below(5)).min(n_records - next);
            let records: Vec<Bytes> = (next..next + batch)
                .map(|offset| payload(offset, input.byte() % 120))
                .collect();
            payloads.extend(records.iter().cloned());
            let ack = topic
                .append(records)
                .await
                .unwrap_or_else(|error| panic!("append: {error}"));
            assert_eq!(ack.first_offset, next);
            next += batch;
            batch_ends.push(next - 1);
        }
        log.close()
            .await
            .unwrap_or_else(|error| panic!("close: {error}"));
    });

    // Where each record's frame is: segments are named by base offset and hold whole frames.
    let topic_dir = dir.join(TOPIC);
    let segments = segment_files(&topic_dir);
    let mut written = Vec::new();
    for (offset, record) in (0u64..).zip(&payloads) {
        let segment = segments.partition_point(|(base, _)| *base <= offset) - 1;
        let start = match written.last() {
            Some(Written {
                segment: previous,
                end,
                ..
            }) if *previous == segment => *end,
            _ => 0,
        };
        let end = start + frame::frame_bytes(record.len()) as u64;
        written.push(Written {
            offset,
            segment,
            start,
            end,
            end_of_batch: batch_ends.contains(&offset),
        });
    }

    // Damage, as chosen by the input: (segment, start..end) ranges whose bytes changed.
    let mut damaged: Vec<(usize, u64, u64)> = Vec::new();
    for _ in 0..1 + input.below(4) {
        let segment = input.below(segments.len() as u64) as usize;
        let path = &segments[segment].1;
        let mut bytes = fs::read(path).unwrap_or_else(|error| panic!("read: {error}"));
        let len = bytes.len() as u64;
        match input.byte() % 7 {
            0 | 1 if len > 0 => {
                let at = input.below(len);
                bytes[at as usize] ^= input.byte() | 1;
                damaged.push((segment, at, at + 1));
            }
            2 if len > 0 => {
                let at = input.below(len);
                let end = (at + 1 + input.below(300)).min(len);
                for byte in &mut bytes[at as usize..end as usize] {
                    *byte = input.byte().wrapping_mul(167).wrapping_add(13);
                }
                damaged.push((segment, at, end));
            }
            3 if len > 0 => {
                let at = input.below(len);
                let end = (at + 1 + input.below(300)).min(len);
                bytes[at as usize..end as usize].fill(0);
                damaged.push((segment, at, end));
            }
            4 => {
                let at = input.below(len + 1);
                bytes.truncate(at as usize);
                damaged.push((segment, at, u64::MAX));
            }
            5 => {
                // Garbage after the last segment's records: damages no record.
                let path = &segments[segments.len() - 1].1;
                let mut last = fs::read(path).unwrap_or_else(|error| panic!("read: {error}"));
                last.extend((0..1 + input.below(300)).map(|n| (n as u8).wrapping_mul(91) ^ 0xa5));
                write_file(path, &last);
                continue;
            }
            _ => {
                let idx = path.with_extension("idx");
                if input.byte().is_multiple_of(2) {
                    let _ = fs::remove_file(&idx);
                } else {
                    write_file(&idx, &vec![input.byte(); 1 + input.below(100) as usize]);
                }
                continue;
            }
        }
        write_file(path, &bytes);
    }

    // What must survive: every intact record, but in the last segment only up to its last
    // intact end of a batch (what follows is a torn tail).
    let intact = |record: &Written| {
        !damaged.iter().any(|(segment, start, end)| {
            *segment == record.segment && *start < record.end && record.start < *end
        })
    };
    let last_segment = segments.len() - 1;
    let tail_start = written
        .iter()
        .filter(|record| record.segment == last_segment && record.end_of_batch && intact(record))
        .map(|record| record.end)
        .max()
        .unwrap_or(0);
    let must_survive: Vec<u64> = written
        .iter()
        .filter(|record| {
            intact(record) && (record.segment < last_segment || record.end <= tail_start)
        })
        .map(|record| record.offset)
        .collect();

    runtime.block_on(async {
        let log = Log::open(options.clone()).unwrap_or_else(|error| panic!("reopen: {error}"));
        let topic = log
            .topic(TOPIC)
            .unwrap_or_else(|| panic!("the topic is gone after recovery"));
        let stats = topic.stats();
        // Read everything back as a client would, skipping what is reported damaged.
        let mut read = Vec::new();
        let mut next = 0;
        loop {
            let page = topic
                .read_page(next, 17, 2048)
                .unwrap_or_else(|error| panic!("read from {next}: {error}"));
            let before = next;
            for record in &page.records {
                assert!(record.offset >= next, "offsets went backwards");
                next = record.offset + 1;
                read.push(record.offset);
                let original = usize::try_from(record.offset)
                    .ok()
                    .and_then(|offset| payloads.get(offset));
                assert_eq!(
                    Some(&record.payload),
                    original,
                    "record {} is not what was written there",
                    record.offset
                );
            }
            match page.damaged {
                Some(range) => {
                    assert!(range.first_offset == next && range.next_offset > next);
                    next = range.next_offset;
                }
                None if page.records.is_empty() => break,
                None => {}
            }
            assert!(next > before, "a read made no progress at {before}");
        }
        for offset in &must_survive {
            assert!(
                read.binary_search(offset).is_ok(),
                "intact acknowledged record {offset} was lost (read {read:?})"
            );
        }
        let last_read = read.last().map_or(0, |offset| offset + 1);
        assert!(stats.next_offset >= last_read, "an offset would be reused");
        for range in &stats.damaged {
            assert!(range.first_offset < range.next_offset);
            assert!(
                !read
                    .iter()
                    .any(|offset| (range.first_offset..range.next_offset).contains(offset))
            );
        }
        let ack = topic
            .append(vec![Bytes::from_static(b"after")])
            .await
            .unwrap_or_else(|error| panic!("append after recovery: {error}"));
        assert_eq!(ack.first_offset, stats.next_offset);
        log.close()
            .await
            .unwrap_or_else(|error| panic!("close: {error}"));
    });
}

/// The topic's segments, by base offset, oldest first.
fn segment_files(topic_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(topic_dir).unwrap_or_else(|error| panic!("list: {error}"));
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(SegmentFile::Log(base)) = name.to_str().and_then(files::parse_segment_file_name)
        {
            segments.push((base, entry.path()));
        }
    }
    segments.sort();
    segments
}

fn write_file(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}
