//! Damage with intact records after it: a hole, never a cut. Every intact record stays readable
//! at its offset, reads stop short at the damage and name it, offsets are never reused.
//!
//! Each test writes records, damages a segment by hand (with the log closed, or under an open
//! log to stand for bit rot after start-up) and checks what a reader sees.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use trellis_log::{DamagedRange, LogError, Topic, TopicConfig};

use crate::{TestResult, append_range, check_records, config, open, payload, segment_files};

fn frame_len(n: u64) -> u64 {
    25 + payload(n).len() as u64
}

/// Where record `n` starts in the segment based at `base`.
fn position_of(base: u64, n: u64) -> u64 {
    (base..n).map(frame_len).sum()
}

fn base_of(segment: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(segment
        .file_stem()
        .and_then(|stem| stem.to_str())
        .ok_or("bad segment name")?
        .parse()?)
}

/// The segment file that holds record `n`, and its base offset.
fn segment_of(dir: &Path, n: u64) -> Result<(PathBuf, u64), Box<dyn std::error::Error>> {
    let mut found = None;
    for segment in segment_files(dir)? {
        let base = base_of(&segment)?;
        if base <= n {
            found = Some((segment, base));
        }
    }
    found.ok_or_else(|| "no segment holds the record".into())
}

/// XORs the byte `at` bytes into record `n`'s frame (0..4 is its length field, 25.. its payload).
fn flip(dir: &Path, n: u64, at: u64) -> TestResult {
    let (segment, base) = segment_of(dir, n)?;
    let mut bytes = fs::read(&segment)?;
    let idx = usize::try_from(position_of(base, n) + at)?;
    bytes[idx] ^= 0x40;
    fs::write(&segment, bytes)?;
    Ok(())
}

fn remove_index(dir: &Path, n: u64) -> TestResult {
    let (segment, _) = segment_of(dir, n)?;
    fs::remove_file(segment.with_extension("idx"))?;
    Ok(())
}

/// Reads every record from `from` on, skipping damage as a client would; the damage met.
fn read_skipping(
    topic: &Topic,
    from: u64,
) -> Result<(Vec<trellis_log::Record>, Vec<DamagedRange>), LogError> {
    let mut records = Vec::new();
    let mut damaged = Vec::new();
    let mut next = from;
    loop {
        let page = topic.read_page(next, 64, 8192)?;
        if let Some(last) = page.records.last() {
            next = last.offset + 1;
        }
        let stopped = page.records.is_empty();
        records.extend(page.records);
        match page.damaged {
            Some(range) => {
                next = range.next_offset;
                damaged.push(range);
            }
            None if stopped => return Ok((records, damaged)),
            None => {}
        }
    }
}

/// Every offset in `0..n` except `damaged`, with its own payload.
#[track_caller]
fn check_all_but(records: &[trellis_log::Record], n: u64, damaged: &[u64]) {
    let expected: Vec<u64> = (0..n).filter(|offset| !damaged.contains(offset)).collect();
    let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, expected);
    for record in records {
        assert_eq!(record.payload, payload(record.offset));
    }
}

#[track_caller]
fn check_ranges(damaged: &[DamagedRange], expected: &[(u64, u64)]) {
    let ranges: Vec<(u64, u64)> = damaged
        .iter()
        .map(|range| (range.first_offset, range.next_offset))
        .collect();
    assert_eq!(ranges, expected);
}

async fn write(dir: &Path, config: &TopicConfig, n: u64, batch: u64) -> TestResult {
    let (log, topic) = open(dir, config)?;
    append_range(&topic, 0, n, batch).await?;
    log.close().await?;
    Ok(())
}

/// Appends one record after recovery and checks it gets the offset after every old one.
async fn check_next_append(topic: &Topic, expected: u64) -> TestResult {
    let ack = topic.append(vec![payload(expected)]).await?;
    assert_eq!(ack.first_offset, expected, "an offset was reused");
    Ok(())
}

/// The reproduction: 1000 records, one byte flipped in the middle, the index deleted.
#[tokio::test]
async fn a_flipped_byte_mid_segment_without_its_index_is_a_hole_not_a_cut() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    write(dir.path(), &config, 1000, 1).await?;
    flip(dir.path(), 500, 40)?;
    remove_index(dir.path(), 500)?;

    let (log, topic) = open(dir.path(), &config)?;
    let stats = topic.stats();
    assert_eq!(stats.next_offset, 1000);
    check_ranges(&stats.damaged, &[(500, 501)]);
    // A read stops short before the damage, and one at the damage names where to go on.
    let page = topic.read_page(495, 100, usize::MAX)?;
    check_records(&page.records, 495..500);
    check_ranges(&page.damaged.into_iter().collect::<Vec<_>>(), &[(500, 501)]);
    let res = topic.read(500, 10, usize::MAX);
    assert!(
        matches!(&res, Err(LogError::Damaged { range, .. }) if range.next_offset == 501),
        "got {res:?}"
    );
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 1000, &[500]);
    check_ranges(&damaged, &[(500, 501)]);
    check_next_append(&topic, 1000).await?;
    log.close().await?;

    // Recovery's repair holds: the next start keeps everything, and reads still meet the hole.
    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 1001);
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 1001, &[500]);
    check_ranges(&damaged, &[(500, 501)]);
    Ok(())
}

/// A flipped length field: the next frame is not where the damaged frame says, so recovery tries
/// every byte after it.
#[tokio::test]
async fn a_flipped_length_field_is_resynchronised_byte_by_byte() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    write(dir.path(), &config, 300, 1).await?;
    flip(dir.path(), 150, 1)?;
    let (segment, _) = segment_of(dir.path(), 150)?;
    fs::write(segment.with_extension("idx"), vec![0x5a; 97])?;

    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 300);
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 300, &[150]);
    check_ranges(&damaged, &[(150, 151)]);
    check_next_append(&topic, 300).await
}

/// Garbage over several records mid-segment, inside batches: the damaged ones form one hole and
/// the intact records of the same batches are kept.
#[tokio::test]
async fn garbage_over_several_records_keeps_the_records_around_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    write(dir.path(), &config, 400, 7).await?;
    let (segment, base) = segment_of(dir.path(), 200)?;
    let mut bytes = fs::read(&segment)?;
    // From inside record 200 to inside record 203.
    let from = usize::try_from(position_of(base, 200) + 30)?;
    let to = usize::try_from(position_of(base, 203) + 30)?;
    for (n, byte) in bytes[from..to].iter_mut().enumerate() {
        *byte = (n * 31 + 7) as u8;
    }
    fs::write(&segment, bytes)?;
    remove_index(dir.path(), 200)?;

    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 400);
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 400, &[200, 201, 202, 203]);
    check_ranges(&damaged, &[(200, 204)]);
    check_next_append(&topic, 400).await
}

/// Two damaged records far apart: two holes.
#[tokio::test]
async fn two_damaged_records_are_two_holes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    write(dir.path(), &config, 500, 1).await?;
    flip(dir.path(), 100, 60)?;
    flip(dir.path(), 400, 2)?;
    remove_index(dir.path(), 0)?;

    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 500);
    check_ranges(&topic.stats().damaged, &[(100, 101), (400, 401)]);
    let (records, _) = read_skipping(&topic, 0)?;
    check_all_but(&records, 500, &[100, 400]);
    Ok(())
}

/// A sealed segment is never cut: damage in its middle is a hole, damage at its end a hole up to
/// the next segment, with and without its index.
#[tokio::test]
async fn damage_in_sealed_segments_is_a_hole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(4096);
    write(dir.path(), &config, 300, 1).await?;
    let segments = segment_files(dir.path())?;
    assert!(segments.len() > 4);
    let second = base_of(&segments[1])?;
    let third = base_of(&segments[2])?;
    let fourth = base_of(&segments[3])?;
    // Mid-segment in the second, index deleted.
    let mid = second + (third - second) / 2;
    flip(dir.path(), mid, 30)?;
    remove_index(dir.path(), mid)?;
    // The last record of the third, index kept.
    flip(dir.path(), fourth - 1, 27)?;

    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 300);
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 300, &[mid, fourth - 1]);
    check_ranges(&damaged, &[(mid, mid + 1), (fourth - 1, fourth)]);
    check_next_append(&topic, 300).await
}

/// Bit rot after start-up, under a valid index: a read meets it, returns the records before it,
/// and learns the damaged range for the next readers and the topic's stats.
#[tokio::test]
async fn damage_after_start_up_is_found_by_reads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(32 * 1024);
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 1000, 3).await?;
    assert!(segment_files(dir.path())?.len() > 2);
    // Under the open log: one record in a sealed segment, one in the active one.
    let (_, active_base) = segment_of(dir.path(), 999)?;
    flip(dir.path(), 300, 30)?;
    let late = active_base + (999 - active_base) / 2;
    flip(dir.path(), late, 0)?;
    assert!(topic.stats().damaged.is_empty(), "nothing has met it yet");

    let page = topic.read_page(290, 100, usize::MAX)?;
    check_records(&page.records, 290..300);
    assert_eq!(
        page.damaged
            .map(|range| (range.first_offset, range.next_offset)),
        Some((300, 301))
    );
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 1000, &[300, late]);
    check_ranges(&damaged, &[(300, 301), (late, late + 1)]);
    check_ranges(&topic.stats().damaged, &[(300, 301), (late, late + 1)]);
    // Appends go on after it.
    check_next_append(&topic, 1000).await?;
    let (records, _) = read_skipping(&topic, late - 2)?;
    assert_eq!(
        records
            .iter()
            .map(|record| record.offset)
            .collect::<Vec<_>>(),
        vec![late - 2, late - 1]
            .into_iter()
            .chain(late + 1..=1000)
            .collect::<Vec<_>>()
    );
    log.close().await?;

    // After a restart under the same (valid) index, reads meet the damage again.
    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 1001);
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 1001, &[300, late]);
    check_ranges(&damaged, &[(300, 301), (late, late + 1)]);
    Ok(())
}

/// A torn tail is still cut, and nothing before it becomes a hole.
#[tokio::test]
async fn a_torn_tail_is_cut_not_a_hole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    write(dir.path(), &config, 100, 1).await?;
    flip(dir.path(), 99, 3)?;
    remove_index(dir.path(), 0)?;
    let (_log, topic) = open(dir.path(), &config)?;
    let stats = topic.stats();
    assert_eq!(stats.next_offset, 99);
    assert!(stats.damaged.is_empty());
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 99, &[]);
    assert!(damaged.is_empty());
    Ok(())
}

/// A payload that carries a whole valid frame of its own, with a later offset, does not fool
/// resynchronisation when the record carrying it is damaged: in its payload (the length still
/// leads past it) or in its length field (the byte scan meets the forgery first, and the genuine
/// record after it repeats the offset the forgery claims).
#[tokio::test]
async fn a_frame_forged_inside_a_damaged_payload_is_not_taken() -> TestResult {
    forged_frame_case(30).await?;
    forged_frame_case(2).await
}

async fn forged_frame_case(flip_at: u64) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 50, 1).await?;
    // Record 50 carries a copy of a frame claiming offset 51, then filler.
    let forged_payload = b"forged record";
    let mut forged = Vec::new();
    forged.extend_from_slice(&((17 + forged_payload.len()) as u32).to_le_bytes());
    forged.extend_from_slice(&[0; 4]);
    forged.extend_from_slice(&51u64.to_le_bytes());
    forged.extend_from_slice(&0i64.to_le_bytes());
    forged.push(1);
    forged.extend_from_slice(forged_payload);
    let crc = crc32c(&forged[8..]);
    forged[4..8].copy_from_slice(&crc.to_le_bytes());
    let mut carrier = vec![b'x'; 40];
    carrier.extend_from_slice(&forged);
    carrier.extend_from_slice(&[b'y'; 40]);
    topic.append(vec![bytes::Bytes::from(carrier)]).await?;
    for n in 51..60 {
        topic.append(vec![payload(n)]).await?;
    }
    log.close().await?;
    // Damage record 50's payload (before the forged frame), and lose the index.
    let (segment, base) = segment_of(dir.path(), 50)?;
    let mut bytes = fs::read(&segment)?;
    let idx = usize::try_from(position_of(base, 50) + flip_at)?;
    bytes[idx] ^= 0x01;
    fs::write(&segment, bytes)?;
    remove_index(dir.path(), 0)?;

    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, 60);
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_ranges(&damaged, &[(50, 51)]);
    let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, (0..50).chain(51..60).collect::<Vec<_>>());
    for record in records {
        assert_eq!(
            record.payload,
            payload(record.offset),
            "record {}",
            record.offset
        );
    }
    Ok(())
}

/// CRC-32C as the frame format uses it, written out so the test does not trust the crate's.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

proptest! {
    // A few dozen cases in the normal suite (each writes and fsyncs a real log); set
    // PROPTEST_CASES for a longer run.
    #![proptest_config(ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            ProptestConfig::default().cases
        } else {
            24
        },
        ..ProptestConfig::default()
    })]

    /// The body of the `recovery_damage` fuzz target: random records, random damage, recovery;
    /// every intact acknowledged record survives with its offset and no offset is reused.
    #[test]
    fn recovery_keeps_every_intact_record_over_random_damage(
        data in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let dir = tempfile::tempdir().map_err(|error| TestCaseError::fail(error.to_string()))?;
        trellis_log::check_recovery_after_damage(dir.path(), &data);
    }
}

/// Bit rot in the last record of the active segment, under an open log: nothing intact follows
/// it yet, so a read names it up to the end; once more records are appended, reads find them
/// after it.
#[tokio::test]
async fn damage_at_the_end_of_the_open_segment_is_passed_once_records_follow() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(64 * 1024 * 1024);
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 100, 1).await?;
    flip(dir.path(), 99, 30)?;

    let page = topic.read_page(90, 100, usize::MAX)?;
    check_records(&page.records, 90..99);
    assert_eq!(
        page.damaged
            .map(|range| (range.first_offset, range.next_offset)),
        Some((99, 100))
    );
    append_range(&topic, 100, 120, 4).await?;
    let (records, damaged) = read_skipping(&topic, 0)?;
    check_all_but(&records, 120, &[99]);
    check_ranges(&damaged, &[(99, 100)]);
    check_ranges(&topic.stats().damaged, &[(99, 100)]);
    log.close().await?;
    Ok(())
}

/// The `recovery_damage` fuzz target's seeds hold the promise too.
#[test]
fn the_recovery_fuzz_seeds_hold() -> TestResult {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/recovery_damage");
    let mut n_seeds = 0;
    for entry in fs::read_dir(seeds)? {
        let data = fs::read(entry?.path())?;
        let dir = tempfile::tempdir()?;
        trellis_log::check_recovery_after_damage(dir.path(), &data);
        n_seeds += 1;
    }
    assert!(n_seeds >= 3);
    Ok(())
}
