//! Unit tests that need crate internals: fsync sharing, write-failure handling, the fuzz hook.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::{Durability, Log, LogError, LogOptions, Topic, TopicConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn open(dir: &std::path::Path, durability: Durability) -> Result<(Log, Topic), LogError> {
    let config = TopicConfig {
        durability,
        ..TopicConfig::default()
    };
    let log = Log::open(LogOptions {
        dir: dir.to_owned(),
        default_topic: config.clone(),
    })?;
    let topic = log.get_or_create_topic("events", config)?;
    Ok((log, topic))
}

fn n_data_syncs(topic: &Topic) -> u64 {
    topic.inner.shared.n_data_syncs.load(Ordering::Acquire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), Durability::Always)?;
    let mut appends = tokio::task::JoinSet::new();
    for writer_idx in 0..64u32 {
        let topic = topic.clone();
        appends.spawn(async move {
            topic
                .append(vec![Bytes::from(writer_idx.to_le_bytes().to_vec())])
                .await
        });
    }
    while let Some(joined) = appends.join_next().await {
        joined??;
    }
    let n_syncs = n_data_syncs(&topic);
    assert!(n_syncs <= 16, "64 concurrent appends took {n_syncs} fsyncs");
    assert_eq!(topic.stats().next_offset, 64);
    log.close().await?;
    Ok(())
}

#[tokio::test]
async fn each_sequential_append_is_fsynced_under_always() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(dir.path(), Durability::Always)?;
    for n in 1..=3 {
        topic.append(vec![Bytes::from_static(b"x")]).await?;
        assert_eq!(n_data_syncs(&topic), n);
    }
    Ok(())
}

#[tokio::test]
async fn never_acks_without_fsync_and_close_syncs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), Durability::Never)?;
    topic.append(vec![Bytes::from_static(b"x")]).await?;
    assert_eq!(n_data_syncs(&topic), 0);
    log.close().await?;
    assert_eq!(n_data_syncs(&topic), 1);
    Ok(())
}

#[tokio::test]
async fn interval_syncs_in_the_background() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, topic) = open(
        dir.path(),
        Durability::Interval(std::time::Duration::from_millis(20)),
    )?;
    topic.append(vec![Bytes::from_static(b"x")]).await?;
    for _ in 0..100 {
        if n_data_syncs(&topic) > 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err("no background fsync within a second".into())
}

#[tokio::test]
async fn a_failed_write_fails_the_group_and_the_topic_stays_usable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), Durability::Always)?;
    topic.append(vec![Bytes::from_static(b"first")]).await?;
    let size_before = topic.stats().size_bytes;

    topic
        .inner
        .shared
        .fail_next_write
        .store(true, Ordering::Release);
    let res = topic
        .append(vec![
            Bytes::from_static(b"lost"),
            Bytes::from_static(b"lost too"),
        ])
        .await;
    assert!(matches!(res, Err(LogError::Io { .. })), "got {res:?}");
    assert_eq!(topic.stats().size_bytes, size_before);
    let segment_path = dir.path().join("events").join("00000000000000000000.log");
    assert_eq!(
        std::fs::metadata(&segment_path)?.len(),
        size_before,
        "the failed write was not truncated"
    );

    let ack = topic.append(vec![Bytes::from_static(b"second")]).await?;
    assert_eq!(ack.first_offset, 1);
    log.close().await?;

    let (_log, topic) = open(dir.path(), Durability::Always)?;
    let payloads: Vec<Bytes> = topic
        .read(0, 10, usize::MAX)?
        .into_iter()
        .map(|record| record.payload)
        .collect();
    assert_eq!(
        payloads,
        [Bytes::from_static(b"first"), Bytes::from_static(b"second")]
    );
    Ok(())
}

#[test]
fn the_fuzz_hook_accepts_frames_garbage_and_nothing() {
    let mut frames = Vec::new();
    for offset in 0..5u64 {
        let meta = crate::frame::FrameMeta {
            offset: 9 + offset,
            timestamp_ms: 1,
            end_of_batch: offset % 2 == 1,
        };
        crate::frame::encode(&mut frames, meta, &offset.to_le_bytes());
    }
    crate::fuzz_frame_decode(&frames);
    crate::fuzz_frame_decode(&frames[..frames.len() - 3]);
    crate::fuzz_frame_decode(&[]);
    crate::fuzz_frame_decode(&[0xff; 300]);
    let mut garbage_tail = frames.clone();
    garbage_tail.extend_from_slice(&[17, 0, 0, 0, 1, 2, 3]);
    crate::fuzz_frame_decode(&garbage_tail);
}

proptest::proptest! {
    /// The `frame_decode` fuzz hook over whole frames with bytes flipped here and there: the
    /// scan's invariants hold with holes in the middle as well as at the end.
    #[test]
    fn the_fuzz_hook_holds_over_frames_with_flipped_bytes(
        payload_lens in proptest::collection::vec(0..90usize, 1..40),
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1..=255u8), 0..4),
    ) {
        let mut frames = Vec::new();
        for (offset, len) in (0u64..).zip(&payload_lens) {
            let meta = crate::frame::FrameMeta {
                offset,
                timestamp_ms: 7,
                end_of_batch: offset % 3 == 2,
            };
            crate::frame::encode(&mut frames, meta, &vec![offset as u8; *len]);
        }
        for (at, mask) in flips {
            let at = at % frames.len();
            frames[at] ^= mask;
        }
        crate::fuzz_frame_decode(&frames);
    }
}
