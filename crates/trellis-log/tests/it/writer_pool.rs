//! The writer threads shared by every topic: order within a topic, group commit per topic, a
//! busy topic not starving a quiet one, and many topics over few threads and files.

use bytes::Bytes;
use trellis_log::{Durability, Log, LogOptions, LogResources, TopicConfig};

use crate::{TestResult, check_records, config, payload, read_all};

fn open_with(
    dir: &std::path::Path,
    resources: &LogResources,
) -> Result<Log, trellis_log::LogError> {
    Log::open_with(
        LogOptions {
            dir: dir.to_owned(),
            default_topic: config(64 * 1024 * 1024),
        },
        resources,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_submitted_in_order_are_stored_in_order_on_every_topic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let resources = LogResources {
        writer_threads: 2,
        ..LogResources::default()
    };
    let log = open_with(dir.path(), &resources)?;
    let topics: Vec<_> = (0..20)
        .map(|idx| log.create_topic(&format!("t{idx}"), config(4096)))
        .collect::<Result<_, _>>()?;
    // Interleaved over the topics, so the pool serves them all at once; each topic's appends
    // are submitted one after another and awaited together.
    let mut pending = Vec::new();
    for n in 0..50u64 {
        for topic in &topics {
            pending.push((topic.clone(), n, topic.submit(vec![payload(n)]).await?));
        }
    }
    for (topic, n, append) in pending {
        let ack = append.await?;
        assert_eq!(ack.first_offset, n, "topic {}", topic.name());
    }
    for topic in &topics {
        check_records(&read_all(topic, 0)?, 0..50);
        // Several segments of 4 KiB each: rolling works under the pool too.
        assert!(topic.stats().n_segments > 1);
    }
    log.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_topic_does_not_make_a_quiet_one_wait_for_its_whole_queue() -> TestResult {
    let dir = tempfile::tempdir()?;
    let resources = LogResources {
        writer_threads: 1,
        ..LogResources::default()
    };
    let log = open_with(dir.path(), &resources)?;
    let busy = log.create_topic("busy", config(1024 * 1024 * 1024))?;
    let quiet = log.create_topic("quiet", config(1024 * 1024 * 1024))?;
    // 48 MiB queued on one topic: a dozen group commits of at most 4 MiB each.
    let mut busy_appends = Vec::new();
    for _ in 0..48 {
        busy_appends.push(
            busy.submit(vec![Bytes::from(vec![7u8; 1024 * 1024])])
                .await?,
        );
    }
    let before = busy.stats().next_offset;
    quiet.append(vec![Bytes::from_static(b"hello")]).await?;
    let after = busy.stats().next_offset;
    // A group takes four of these appends (4 MiB). The quiet topic had its turn after the busy
    // topic's group in progress; by the time we look, the busy one may have done one more.
    assert!(
        after <= before + 8,
        "the quiet topic waited for {} of the busy topic's appends",
        after - before
    );
    for append in busy_appends {
        append.await?;
    }
    assert_eq!(busy.stats().next_offset, 48);
    log.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_many_topics_are_all_stored() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open_with(dir.path(), &LogResources::default())?;
    let topics: Vec<_> = (0..8)
        .map(|idx| log.create_topic(&format!("t{idx}"), config(64 * 1024 * 1024)))
        .collect::<Result<_, _>>()?;
    let mut appends = tokio::task::JoinSet::new();
    for n in 0..64u64 {
        for topic in &topics {
            let topic = topic.clone();
            appends.spawn(async move { topic.append(vec![payload(n)]).await });
        }
    }
    while let Some(joined) = appends.join_next().await {
        joined??;
    }
    for topic in &topics {
        let records = read_all(topic, 0)?;
        assert_eq!(records.len(), 64);
    }
    log.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_topics_are_synced_in_the_background_and_survive_a_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let interval = TopicConfig {
        durability: Durability::Interval(std::time::Duration::from_millis(5)),
        ..config(64 * 1024 * 1024)
    };
    {
        let log = open_with(dir.path(), &LogResources::default())?;
        for idx in 0..10 {
            let topic = log.create_topic(&format!("t{idx}"), interval.clone())?;
            for n in 0..5 {
                topic.append(vec![payload(n)]).await?;
            }
        }
        // Dropped without `close`: each writer's last turn syncs what it has.
    }
    let log = open_with(dir.path(), &LogResources::default())?;
    for idx in 0..10 {
        let topic = log.topic(&format!("t{idx}")).ok_or("topic lost")?;
        check_records(&read_all(&topic, 0)?, 0..5);
    }
    Ok(())
}
