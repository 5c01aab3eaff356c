//! Appends and reads: across segments, from any offset, within limits, concurrently, after reopen.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use trellis_log::{Durability, LogError, TopicConfig};

use crate::{
    TestResult, append_range, check_records, config, open, payload, read_all, segment_files,
};

#[tokio::test]
async fn appends_and_reads_back_across_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 300, 7).await?;
    check_records(&read_all(&topic, 0)?, 0..300);
    let stats = topic.stats();
    assert_eq!((stats.first_offset, stats.next_offset), (0, 300));
    assert!(stats.n_segments > 10, "only {} segments", stats.n_segments);
    assert_eq!(stats.n_segments, segment_files(dir.path())?.len());
    Ok(())
}

#[tokio::test]
async fn reads_from_every_offset() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Segments bigger than the index interval, so reads go through index entries too.
    let (_log, topic) = open(dir.path(), &config(16 * 1024))?;
    append_range(&topic, 0, 600, 13).await?;
    assert!(topic.stats().n_segments > 2);
    for from in 0..600 {
        let records = topic.read(from, 3, usize::MAX)?;
        check_records(&records, from..(from + 3).min(600));
    }
    Ok(())
}

#[tokio::test]
async fn reads_stop_at_max_bytes_but_return_at_least_one_record() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 20, 20).await?;
    check_records(&topic.read(5, 100, 1)?, 5..6);
    let three_payloads = (5..8).map(|n| payload(n).len()).sum();
    check_records(&topic.read(5, 100, three_payloads)?, 5..8);
    check_records(&topic.read(5, 100, three_payloads + 1)?, 5..8);
    check_records(&topic.read(5, 2, usize::MAX)?, 5..7);
    assert!(topic.read(5, 0, usize::MAX)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn reads_at_or_past_the_end_are_empty() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    assert!(topic.read(0, 10, usize::MAX)?.is_empty());
    append_range(&topic, 0, 5, 1).await?;
    assert!(topic.read(5, 10, usize::MAX)?.is_empty());
    assert!(topic.read(1_000_000, 10, usize::MAX)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn records_carry_a_storage_timestamp() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    append_range(&topic, 0, 3, 1).await?;
    let records = topic.read(0, 10, usize::MAX)?;
    assert!(records.iter().all(|record| record.timestamp_ms >= before));
    assert!(
        records
            .windows(2)
            .all(|pair| pair[0].timestamp_ms <= pair[1].timestamp_ms)
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_append_fails() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    assert!(matches!(
        topic.append(Vec::new()).await,
        Err(LogError::EmptyAppend)
    ));
    assert_eq!(topic.stats().next_offset, 0);
    Ok(())
}

#[tokio::test]
async fn empty_payloads_are_records_too() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    topic.append(vec![Bytes::new(), Bytes::new()]).await?;
    let records = topic.read(0, 10, usize::MAX)?;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|record| record.payload.is_empty()));
    Ok(())
}

#[tokio::test]
async fn wait_for_wakes_on_append() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024))?;
    let waiter = tokio::spawn({
        let topic = topic.clone();
        async move { topic.wait_for(2).await }
    });
    append_range(&topic, 0, 2, 1).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "woke before offset 2 was written");
    append_range(&topic, 2, 3, 1).await?;
    tokio::time::timeout(Duration::from_secs(5), waiter).await???;
    // An offset that is already readable resolves at once.
    tokio::time::timeout(Duration::from_secs(5), topic.wait_for(0)).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_dense_unique_offsets() -> TestResult {
    const N_WRITERS: u64 = 64;
    const N_APPENDS: u64 = 20;
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(8 * 1024))?;
    let mut writers = tokio::task::JoinSet::new();
    for writer_idx in 0..N_WRITERS {
        let topic = topic.clone();
        writers.spawn(async move {
            let mut sent = Vec::new();
            for append_idx in 0..N_APPENDS {
                let n_records = 1 + (writer_idx + append_idx) % 3;
                let records: Vec<Bytes> = (0..n_records)
                    .map(|record_idx| {
                        Bytes::from(format!("w{writer_idx}-a{append_idx}-r{record_idx}"))
                    })
                    .collect();
                let ack = topic.append(records.clone()).await?;
                assert_eq!(ack.n_records, n_records);
                sent.extend((ack.first_offset..).zip(records));
            }
            Ok::<_, LogError>(sent)
        });
    }
    let mut sent = Vec::new();
    while let Some(joined) = writers.join_next().await {
        sent.extend(joined??);
    }
    sent.sort_by_key(|(offset, _)| *offset);
    let offsets: Vec<u64> = sent.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (0..sent.len() as u64).collect::<Vec<_>>(),
        "offsets are not dense and unique"
    );
    let records = crate::read_all(&topic, 0)?;
    assert_eq!(records.len(), sent.len());
    for (record, (offset, payload)) in records.iter().zip(&sent) {
        assert_eq!((record.offset, &record.payload), (*offset, payload));
    }
    let unique: HashSet<&Bytes> = sent.iter().map(|(_, payload)| payload).collect();
    assert_eq!(unique.len(), sent.len());
    Ok(())
}

#[tokio::test]
async fn reopen_preserves_everything() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(2048);
    let (log, topic) = open(dir.path(), &config)?;
    append_range(&topic, 0, 150, 4).await?;
    let before = read_all(&topic, 0)?;
    let stats_before = topic.stats();
    log.close().await?;

    let (log, topic) = open(dir.path(), &config)?;
    assert_eq!(read_all(&topic, 0)?, before);
    assert_eq!(topic.stats(), stats_before);
    append_range(&topic, 150, 160, 3).await?;
    log.close().await?;

    let (_log, topic) = open(dir.path(), &config)?;
    check_records(&read_all(&topic, 0)?, 0..160);
    Ok(())
}

#[tokio::test]
async fn every_durability_policy_stores_and_recovers_records() -> TestResult {
    for durability in [
        Durability::Always,
        Durability::Interval(Duration::from_millis(5)),
        Durability::Never,
    ] {
        let dir = tempfile::tempdir()?;
        let config = TopicConfig {
            durability,
            ..config(1024)
        };
        let (log, topic) = open(dir.path(), &config)?;
        append_range(&topic, 0, 100, 3).await?;
        check_records(&read_all(&topic, 0)?, 0..100);
        log.close().await?;
        let (_log, topic) = open(dir.path(), &config)?;
        check_records(&read_all(&topic, 0)?, 0..100);
    }
    Ok(())
}

#[tokio::test]
async fn set_config_takes_effect_on_the_next_append() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), &config(1024 * 1024))?;
    append_range(&topic, 0, 50, 5).await?;
    assert_eq!(topic.stats().n_segments, 1);
    topic.set_config(TopicConfig {
        durability: Durability::Never,
        ..config(512)
    });
    assert_eq!(topic.config().segment_bytes, 512);
    append_range(&topic, 50, 100, 5).await?;
    assert!(topic.stats().n_segments > 5);
    check_records(&read_all(&topic, 0)?, 0..100);
    Ok(())
}

#[tokio::test]
async fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(256))?;
    append_range(&topic, 0, 2, 2).await?;
    append_range(&topic, 2, 40, 38).await?;
    append_range(&topic, 40, 41, 1).await?;
    check_records(&read_all(&topic, 0)?, 0..41);
    log.close().await?;
    let (_log, topic) = open(dir.path(), &config(256))?;
    check_records(&read_all(&topic, 0)?, 0..41);
    Ok(())
}
