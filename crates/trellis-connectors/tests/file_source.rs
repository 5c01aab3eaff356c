//! The file source on real files: appends, resume, rotation, truncation, partial and long lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use trellis_connect::{
    ConnectRecord, ConnectorConfig, ConnectorError, Offset, Partition, Source, SourceContext,
};
use trellis_connectors::file_source::FileSource;

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(text.as_bytes()).expect("append");
}

async fn started(
    config: ConnectorConfig,
    committed: BTreeMap<Partition, Offset>,
) -> Result<FileSource, ConnectorError> {
    let mut source = FileSource::new();
    source
        .start(SourceContext::new("file", config, committed))
        .await?;
    Ok(source)
}

async fn source_at(path: &Path, committed: Option<u64>) -> FileSource {
    let path = path.to_str().expect("utf-8 path");
    let committed = committed
        .map(|offset| BTreeMap::from([(Partition::new(path), Offset(offset))]))
        .unwrap_or_default();
    started(ConnectorConfig::new().with("path", path), committed)
        .await
        .expect("start")
}

/// Polls until `count` records came, or gives up after many empty polls.
async fn poll_records(source: &mut FileSource, count: usize) -> Vec<ConnectRecord> {
    let mut records = Vec::new();
    let mut empty_polls = 0;
    while records.len() < count && empty_polls < 20 {
        let batch = source.poll().await.expect("poll");
        if batch.is_empty() {
            empty_polls += 1;
        }
        records.extend(batch);
    }
    records
}

fn lines(records: &[ConnectRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

fn offsets(records: &[ConnectRecord]) -> Vec<u64> {
    records.iter().map(|r| r.position.offset.0).collect()
}

#[tokio::test]
async fn lines_appended_while_polling_arrive_in_order_with_their_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let mut source = source_at(&path, None).await;
    // The file does not exist yet: an empty poll, not an error.
    assert!(source.poll().await.expect("poll").is_empty());
    append(&path, "one\ntwo\n");
    let first = poll_records(&mut source, 2).await;
    append(&path, "three\n");
    let second = poll_records(&mut source, 1).await;
    let records: Vec<ConnectRecord> = first.into_iter().chain(second).collect();
    assert_eq!(lines(&records), ["one", "two", "three"]);
    assert_eq!(offsets(&records), [4, 8, 14]);
    let partition = path.to_str().expect("utf-8");
    assert!(
        records
            .iter()
            .all(|r| r.position.partition.as_str() == partition)
    );
    let ids: std::collections::BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "ids are unique");
    source.stop().await.expect("stop");
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_committed_line_with_the_same_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    append(&path, "a\nbb\nccc\n");
    let mut source = source_at(&path, None).await;
    let first = poll_records(&mut source, 3).await;
    assert_eq!(lines(&first), ["a", "bb", "ccc"]);
    source.stop().await.expect("stop");

    // Only "a" was committed (offset 2): a restart reads "bb" and "ccc" again, same ids.
    append(&path, "dddd\n");
    let mut again = source_at(&path, Some(2)).await;
    let records = poll_records(&mut again, 3).await;
    assert_eq!(lines(&records), ["bb", "ccc", "dddd"]);
    assert_eq!(offsets(&records), [5, 9, 14]);
    assert_eq!(records[0].id, first[1].id);
    assert_eq!(records[1].id, first[2].id);
}

#[tokio::test]
async fn a_committed_offset_that_is_no_line_end_restarts_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    append(&path, "xyz\n");
    // Past the end (the file was replaced by a shorter one while the source was down).
    let mut source = source_at(&path, Some(100)).await;
    assert_eq!(lines(&poll_records(&mut source, 1).await), ["xyz"]);
    // Inside a line.
    let mut source = source_at(&path, Some(2)).await;
    assert_eq!(lines(&poll_records(&mut source, 1).await), ["xyz"]);
}

#[tokio::test]
async fn rotation_by_rename_finishes_the_old_file_then_reads_the_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    append(&path, "old-1\n");
    let mut source = source_at(&path, None).await;
    assert_eq!(lines(&poll_records(&mut source, 1).await), ["old-1"]);
    // Written after the source's last read, then rotated: still read from the old file.
    append(&path, "old-2\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).expect("rotate");
    append(&path, "new-1\nnew-2\n");
    let records = poll_records(&mut source, 3).await;
    assert_eq!(lines(&records), ["old-2", "new-1", "new-2"]);
    assert_eq!(offsets(&records), [12, 6, 12]);
    assert_ne!(records[0].id, records[2].id, "same offset, other file");
}

#[tokio::test]
async fn truncation_starts_the_file_again_from_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    append(&path, "first line\nsecond line\n");
    let mut source = source_at(&path, None).await;
    let before = poll_records(&mut source, 2).await;
    assert_eq!(lines(&before), ["first line", "second line"]);
    std::fs::write(&path, "after\n").expect("truncate and write");
    let after = poll_records(&mut source, 1).await;
    assert_eq!(lines(&after), ["after"]);
    assert_eq!(offsets(&after), [6]);
}

#[tokio::test]
async fn a_partial_line_waits_for_its_newline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    append(&path, "whole\npart");
    let mut source = source_at(&path, None).await;
    let records = poll_records(&mut source, 1).await;
    assert_eq!(lines(&records), ["whole"]);
    assert!(
        source.poll().await.expect("poll").is_empty(),
        "no newline yet"
    );
    append(&path, "ial\n");
    let records = poll_records(&mut source, 1).await;
    assert_eq!(lines(&records), ["partial"]);
    assert_eq!(offsets(&records), [14]);
}

#[tokio::test]
async fn a_long_line_is_emitted_cut_and_marked_and_the_next_line_is_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let long = "x".repeat(200_000);
    append(&path, &format!("{long}\nshort\n"));
    let config = ConnectorConfig::new()
        .with("path", path.to_str().expect("utf-8"))
        .with("max_line_bytes", 10);
    let mut source = started(config, BTreeMap::new()).await.expect("start");
    let records = poll_records(&mut source, 2).await;
    assert_eq!(lines(&records), ["xxxxxxxxxx", "short"]);
    assert_eq!(records[0].extension("truncated"), Some("true"));
    assert_eq!(records[0].extension("originalbytes"), Some("200000"));
    assert_eq!(records[1].extension("truncated"), None);
    assert_eq!(offsets(&records), [200_001, 200_007]);
}

#[tokio::test]
async fn max_batch_bounds_a_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    append(&path, "1\n2\n3\n4\n5\n");
    let config = ConnectorConfig::new()
        .with("path", path.to_str().expect("utf-8"))
        .with("max_batch", 2);
    let mut source = started(config, BTreeMap::new()).await.expect("start");
    assert_eq!(lines(&source.poll().await.expect("poll")), ["1", "2"]);
    assert_eq!(lines(&source.poll().await.expect("poll")), ["3", "4"]);
    assert_eq!(lines(&source.poll().await.expect("poll")), ["5"]);
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let error = started(ConnectorConfig::new(), BTreeMap::new())
        .await
        .expect_err("no path");
    assert!(error.to_string().contains("`path`"), "{error}");
    let config = ConnectorConfig::new()
        .with("path", "/tmp/x.log")
        .with("max_batch", 0);
    let error = started(config, BTreeMap::new()).await.expect_err("zero");
    assert!(error.to_string().contains("`max_batch`"), "{error}");
    let config = ConnectorConfig::new()
        .with("path", "/tmp/x.log")
        .with("max_line_bytes", "big");
    let error = started(config, BTreeMap::new())
        .await
        .expect_err("a string");
    assert!(error.to_string().contains("`max_line_bytes`"), "{error}");
}

#[tokio::test]
async fn lines_written_in_pieces_of_any_size_come_out_whole_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let expected: Vec<String> = (0..300)
        .map(|i| format!("line {i} {}", "z".repeat(i * 37 % 300)))
        .collect();
    let text: String = expected.iter().map(|line| format!("{line}\n")).collect();
    let mut source = source_at(&path, None).await;
    let mut records = Vec::new();
    // A fixed pseudo-random sequence of piece sizes, 1 to 4000 bytes, splitting lines anywhere.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut at = 0;
    while at < text.len() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let size = usize::try_from(seed >> 33).expect("fits") % 4000 + 1;
        let end = (at + size).min(text.len());
        append(&path, &text[at..end]);
        at = end;
        records.extend(source.poll().await.expect("poll"));
    }
    let rest = expected.len() - records.len();
    records.extend(poll_records(&mut source, rest).await);
    assert_eq!(lines(&records), expected);
    let mut end = 0;
    for (record, line) in records.iter().zip(&expected) {
        end += line.len() as u64 + 1;
        assert_eq!(record.position.offset.0, end);
    }
}
