//! Retention by size and by age: whole sealed segments go, the active one never does.

use std::time::Duration;

use trellis_log::{LogError, TopicConfig};

use crate::{TestResult, append_range, check_records, config, open, read_all, segment_files};

#[tokio::test]
async fn retention_by_size_deletes_the_oldest_sealed_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = TopicConfig {
        retention_bytes: Some(4096),
        ..config(1024)
    };
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 300, 2).await?;
    let before = topic.stats();
    assert!(before.size_bytes > 4096);
    log.enforce_retention()?;
    let after = topic.stats();
    assert!(after.size_bytes <= 4096, "{after:?}");
    assert!(
        after.size_bytes > 4096 - 1024,
        "deleted more than needed: {after:?}"
    );
    assert!(after.first_offset > 0);
    assert_eq!(after.next_offset, 300);
    assert_eq!(after.n_segments, segment_files(dir.path())?.len());

    let res = topic.read(0, 10, usize::MAX);
    assert!(
        matches!(res, Err(LogError::OffsetTruncated { offset: 0, first_offset }) if first_offset == after.first_offset),
        "got {res:?}"
    );
    check_records(
        &read_all(&topic, after.first_offset)?,
        after.first_offset..300,
    );

    // Retention survives a reopen, and a second pass has nothing left to do.
    log.close().await?;
    let (log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats(), after);
    log.enforce_retention()?;
    assert_eq!(topic.stats(), after);
    Ok(())
}

#[tokio::test]
async fn retention_by_age_deletes_old_sealed_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = TopicConfig {
        // Long enough that appending 100 records on a loaded CI box never ages a segment past
        // it (at 100 ms, it did), short enough to wait out.
        retention_age: Some(Duration::from_secs(1)),
        ..config(1024)
    };
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 100, 3).await?;
    log.enforce_retention()?;
    assert_eq!(topic.stats().first_offset, 0, "fresh segments must stay");

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    append_range(&topic, 100, 130, 3).await?;
    // Everything before the segment that holds record 100 is old.
    let bases = segment_bases(dir.path())?;
    let expected_first = bases
        .iter()
        .copied()
        .filter(|base| *base <= 100)
        .max()
        .ok_or("no segments")?;
    assert!(expected_first > 0);
    log.enforce_retention()?;
    let stats = topic.stats();
    assert_eq!(stats.first_offset, expected_first, "{stats:?}");
    assert_eq!(
        segment_bases(dir.path())?.first().copied(),
        Some(expected_first)
    );
    check_records(
        &read_all(&topic, stats.first_offset)?,
        stats.first_offset..130,
    );
    Ok(())
}

fn segment_bases(dir: &std::path::Path) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut bases = Vec::new();
    for path in segment_files(dir)? {
        bases.push(
            path.file_stem()
                .and_then(|stem| stem.to_str())
                .ok_or("bad name")?
                .parse()?,
        );
    }
    Ok(bases)
}

#[tokio::test]
async fn retention_never_deletes_the_active_segment() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = TopicConfig {
        retention_bytes: Some(0),
        retention_age: Some(Duration::ZERO),
        ..config(1024)
    };
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 100, 1).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    log.enforce_retention()?;
    let stats = topic.stats();
    assert_eq!(stats.n_segments, 1);
    assert_eq!(stats.next_offset, 100);
    check_records(
        &read_all(&topic, stats.first_offset)?,
        stats.first_offset..100,
    );
    // Appends go on at the right offset.
    append_range(&topic, 100, 110, 4).await?;
    check_records(
        &read_all(&topic, stats.first_offset)?,
        stats.first_offset..110,
    );
    Ok(())
}

#[tokio::test]
async fn without_retention_settings_nothing_is_deleted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 100, 1).await?;
    let before = topic.stats();
    log.enforce_retention()?;
    assert_eq!(topic.stats(), before);
    Ok(())
}
