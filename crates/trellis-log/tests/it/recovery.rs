//! Recovery from damaged files: torn tails, flipped bytes, garbage, torn batches, missing or
//! garbage indexes, an empty segment left by a roll, damage inside a sealed segment.
//!
//! Each test writes records, closes the log, damages the files by hand and reopens.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use trellis_log::{LogError, TopicConfig};

use crate::{
    TestResult, append_range, check_records, config, open, payload, read_all, segment_files,
};

/// Bytes of the frame of record `n` (header plus payload).
fn frame_len(n: u64) -> u64 {
    25 + payload(n).len() as u64
}

/// Writes records `0..n`, in batches of `batch`, and closes the log.
async fn write_and_close(dir: &Path, config: &TopicConfig, n: u64, batch: u64) -> TestResult {
    let (log, topic) = open(dir, config)?;
    append_range(&topic, 0, n, batch).await?;
    log.close().await?;
    Ok(())
}

fn last_segment(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(segment_files(dir)?.pop().ok_or("no segment files")?)
}

fn truncate_by(path: &Path, n_bytes: u64) -> TestResult {
    let file = OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    file.set_len(len - n_bytes)?;
    Ok(())
}

fn flip_byte(path: &Path, position_from_end: u64) -> TestResult {
    let mut bytes = fs::read(path)?;
    let idx = bytes.len() - position_from_end as usize;
    bytes[idx] ^= 0x5a;
    fs::write(path, bytes)?;
    Ok(())
}

fn append_bytes(path: &Path, extra: &[u8]) -> TestResult {
    OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(extra)?;
    Ok(())
}

/// Reopens and checks that exactly records `0..n_kept` survived and that appends continue at `n_kept`.
async fn check_recovered(dir: &Path, config: &TopicConfig, n_kept: u64) -> TestResult {
    let (log, topic) = open(dir, config)?;
    check_records(&read_all(&topic, 0)?, 0..n_kept);
    assert_eq!(topic.stats().next_offset, n_kept);
    append_range(&topic, n_kept, n_kept + 5, 2).await?;
    check_records(&read_all(&topic, 0)?, 0..n_kept + 5);
    log.close().await?;
    // The repaired log needs no further repair.
    let (_log, topic) = open(dir, config)?;
    check_records(&read_all(&topic, 0)?, 0..n_kept + 5);
    Ok(())
}

#[tokio::test]
async fn a_record_cut_mid_frame_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    truncate_by(&last_segment(dir.path())?, 7)?;
    check_recovered(dir.path(), &config, 99).await
}

#[tokio::test]
async fn a_record_cut_inside_its_header_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    truncate_by(&last_segment(dir.path())?, frame_len(99) - 10)?;
    check_recovered(dir.path(), &config, 99).await
}

#[tokio::test]
async fn a_record_with_flipped_bytes_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    flip_byte(&last_segment(dir.path())?, 3)?;
    check_recovered(dir.path(), &config, 99).await
}

#[tokio::test]
async fn a_record_with_a_flipped_header_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    // A byte of the offset field of the last frame.
    flip_byte(&last_segment(dir.path())?, frame_len(99) - 9)?;
    check_recovered(dir.path(), &config, 99).await
}

#[tokio::test]
async fn appended_garbage_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    let garbage: Vec<u8> = (0..300u32).map(|n| (n * 7 + 3) as u8).collect();
    append_bytes(&last_segment(dir.path())?, &garbage)?;
    check_recovered(dir.path(), &config, 100).await
}

#[tokio::test]
async fn appended_zeros_are_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    append_bytes(&last_segment(dir.path())?, &[0; 4096])?;
    check_recovered(dir.path(), &config, 100).await
}

#[tokio::test]
async fn a_garbage_length_pointing_past_the_end_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write_and_close(dir.path(), &config, 100, 1).await?;
    append_bytes(
        &last_segment(dir.path())?,
        &[0xff, 0xff, 0x00, 0x00, 1, 2, 3, 4, 5],
    )?;
    check_recovered(dir.path(), &config, 100).await
}

#[tokio::test]
async fn a_torn_batch_is_dropped_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024);
    // Batches of 5: the last batch is records 95..100.
    write_and_close(dir.path(), &config, 100, 5).await?;
    truncate_by(&last_segment(dir.path())?, frame_len(99) / 2)?;
    check_recovered(dir.path(), &config, 95).await
}

#[tokio::test]
async fn a_batch_with_a_corrupt_last_record_is_dropped_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024);
    write_and_close(dir.path(), &config, 100, 5).await?;
    flip_byte(&last_segment(dir.path())?, 1)?;
    check_recovered(dir.path(), &config, 95).await
}

#[tokio::test]
async fn damage_in_the_last_of_several_segments_is_repaired() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1024);
    write_and_close(dir.path(), &config, 200, 1).await?;
    assert!(segment_files(dir.path())?.len() > 5);
    truncate_by(&last_segment(dir.path())?, 1)?;
    check_recovered(dir.path(), &config, 199).await
}

#[tokio::test]
async fn a_large_active_segment_recovers_from_its_index() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1024 * 1024);
    write_and_close(dir.path(), &config, 2000, 10).await?;
    assert_eq!(segment_files(dir.path())?.len(), 1);
    truncate_by(&last_segment(dir.path())?, 3)?;
    check_recovered(dir.path(), &config, 1990).await
}

#[tokio::test]
async fn an_empty_segment_left_by_a_roll_becomes_the_active_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1024);
    write_and_close(dir.path(), &config, 50, 1).await?;
    let n_segments = segment_files(dir.path())?.len();
    // A roll creates the next segment, empty, before anything is written to it.
    fs::File::create(
        dir.path()
            .join(crate::TOPIC)
            .join(format!("{:020}.log", 50)),
    )?;
    let (log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().n_segments, n_segments + 1);
    log.close().await?;
    check_recovered(dir.path(), &config, 50).await
}

#[tokio::test]
async fn a_segment_emptied_by_a_torn_write_keeps_its_place() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1024);
    write_and_close(dir.path(), &config, 50, 1).await?;
    let last = last_segment(dir.path())?;
    let last_base: u64 = last
        .file_stem()
        .and_then(|stem| stem.to_str())
        .ok_or("bad name")?
        .parse()?;
    assert!(last_base > 0 && last_base < 50);
    // Cut the last segment down to a torn fragment of its first frame.
    let file = OpenOptions::new().write(true).open(&last)?;
    file.set_len(10)?;
    check_recovered(dir.path(), &config, last_base).await
}

#[tokio::test]
async fn missing_and_garbage_indexes_are_rebuilt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(16 * 1024);
    write_and_close(dir.path(), &config, 800, 3).await?;
    let segments = segment_files(dir.path())?;
    assert!(segments.len() > 3);
    for (segment_idx, segment) in segments.iter().enumerate() {
        let idx = segment.with_extension("idx");
        match segment_idx % 3 {
            0 => fs::remove_file(&idx)?,
            1 => fs::write(&idx, vec![0xa7; 333])?,
            _ => truncate_by(&idx, 5)?,
        }
    }
    let (_log, topic) = open(dir.path(), &config)?;
    for from in (0..800).step_by(7) {
        check_records(&topic.read(from, 5, usize::MAX)?, from..(from + 5).min(800));
    }
    for segment in &segments {
        assert!(segment.with_extension("idx").exists());
    }
    Ok(())
}

#[tokio::test]
async fn damage_inside_a_sealed_segment_is_reported_not_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1024);
    write_and_close(dir.path(), &config, 100, 1).await?;
    let segments = segment_files(dir.path())?;
    // The last record of the first segment.
    flip_byte(&segments[0], 2)?;
    let (_log, topic) = open(dir.path(), &config)?;
    // Nothing was dropped: the damaged record is reported, everything else reads back.
    assert_eq!(topic.stats().next_offset, 100);
    let second_base: u64 = segments[1]
        .file_stem()
        .and_then(|stem| stem.to_str())
        .ok_or("bad name")?
        .parse()?;
    check_records(&topic.read(0, 1, usize::MAX)?, 0..1);
    // A read stops short before the damaged record; one that starts there says where to go on.
    let first_segment = topic.read(0, 1000, usize::MAX)?;
    check_records(&first_segment, 0..second_base - 1);
    let res = topic.read(second_base - 1, 1000, usize::MAX);
    assert!(
        matches!(&res, Err(LogError::Damaged { range, .. }) if range.segment == 0 && range.next_offset == second_base),
        "got {res:?}"
    );
    check_records(&read_all(&topic, second_base)?, second_base..100);
    Ok(())
}

#[tokio::test]
async fn stray_files_and_directories_are_ignored() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1024);
    write_and_close(dir.path(), &config, 20, 1).await?;
    fs::write(dir.path().join("README"), b"not a topic")?;
    fs::create_dir(dir.path().join("not a topic"))?;
    fs::write(dir.path().join(crate::TOPIC).join("notes.txt"), b"hello")?;
    fs::write(
        dir.path()
            .join(crate::TOPIC)
            .join(format!("{:020}.idx", 999_999)),
        b"orphan",
    )?;
    let (log, topic) = open(dir.path(), &config)?;
    assert_eq!(log.topics().len(), 1);
    check_records(&read_all(&topic, 0)?, 0..20);
    assert!(
        !dir.path()
            .join(crate::TOPIC)
            .join(format!("{:020}.idx", 999_999))
            .exists()
    );
    Ok(())
}

/// The writer keeps zeros ahead of its records so group commits need not write the inode; a
/// crash leaves them behind. Recovery reads them as the end of the records, not as damage.
#[tokio::test]
async fn a_preallocated_zero_tail_is_the_end_of_the_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1 << 20);
    write_and_close(dir.path(), &config, 10, 3).await?;
    let segment = last_segment(dir.path())?;
    let records_len: u64 = (0..10).map(frame_len).sum();
    assert_eq!(
        fs::metadata(&segment)?.len(),
        records_len,
        "close trims the zero tail"
    );
    append_bytes(&segment, &vec![0u8; 300_000])?;
    check_recovered(dir.path(), &config, 10).await
}

/// Zeros do not hide damage: a torn frame before them is still dropped, whole batches kept.
#[tokio::test]
async fn garbage_before_a_zero_tail_is_still_damage() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1 << 20);
    write_and_close(dir.path(), &config, 10, 1).await?;
    let segment = last_segment(dir.path())?;
    let mut tail = vec![0xAB_u8; 17];
    tail.extend(vec![0u8; 100_000]);
    append_bytes(&segment, &tail)?;
    check_recovered(dir.path(), &config, 10).await
}

/// While open, the active segment's file runs ahead of its records; readers and stats see only
/// the records.
#[tokio::test]
async fn an_open_segment_reports_only_its_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(1 << 20);
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 10, 3).await?;
    let records_len: u64 = (0..10).map(frame_len).sum();
    assert!(
        fs::metadata(last_segment(dir.path())?)?.len() > records_len,
        "the file is preallocated"
    );
    assert_eq!(topic.stats().size_bytes, records_len);
    check_records(&read_all(&topic, 0)?, 0..10);
    log.close().await?;
    Ok(())
}
