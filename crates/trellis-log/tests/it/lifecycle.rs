//! Topic lifecycle: names, creation, deletion and re-creation, closing the log.

use std::time::Duration;

use bytes::Bytes;
use trellis_log::{Log, LogError, LogOptions, validate_topic_name};

use crate::{TOPIC, TestResult, append_range, check_records, config, open, read_all};

#[track_caller]
fn check_name(name: &str, valid: bool) {
    let res = validate_topic_name(name);
    assert_eq!(res.is_ok(), valid, "{name:?}: {res:?}");
}

#[test]
fn topic_names_are_checked() {
    check_name("orders", true);
    check_name("orders.eu-west_1", true);
    check_name("...", true);
    check_name(&"a".repeat(249), true);
    check_name("", false);
    check_name(".", false);
    check_name("..", false);
    check_name("a/b", false);
    check_name("a b", false);
    check_name("über", false);
    check_name("~deleted~1", false);
    check_name(&"a".repeat(250), false);
}

#[test]
fn a_bad_topic_name_error_says_what_is_allowed() {
    let error = validate_topic_name("a/b")
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("[A-Za-z0-9._-]"), "{error}");
    assert!(error.contains("a/b"), "{error}");
}

#[tokio::test]
async fn creating_an_existing_topic_fails_but_get_or_create_returns_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 3, 1).await?;
    assert!(matches!(
        log.create_topic(TOPIC, config(1024)),
        Err(LogError::TopicExists(_))
    ));
    let again = log.get_or_create_topic(TOPIC, config(1024))?;
    assert_eq!(again.stats().next_offset, 3);
    assert!(matches!(
        log.create_topic("a/b", config(1024)),
        Err(LogError::InvalidTopicName { .. })
    ));
    Ok(())
}

#[test]
fn get_or_create_is_safe_against_concurrent_callers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = Log::open(LogOptions {
        dir: dir.path().to_owned(),
        default_topic: config(1024),
    })?;
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                log.get_or_create_topic("shared", config(1024))
                    .map(|topic| topic.stats())
            })
        })
        .collect();
    for handle in handles {
        let stats = handle.join().map_err(|_| "thread panicked")??;
        assert_eq!(stats.next_offset, 0);
    }
    assert_eq!(log.topics().len(), 1);
    Ok(())
}

#[tokio::test]
async fn topics_are_listed_by_name_and_found_again_after_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = LogOptions {
        dir: dir.path().to_owned(),
        default_topic: config(1024),
    };
    let log = Log::open(options.clone())?;
    for name in ["b", "c", "a"] {
        log.create_topic(name, config(1024))?;
    }
    let names: Vec<String> = log
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    log.close().await?;
    let log = Log::open(options)?;
    let names: Vec<String> = log
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(log.topic("b").is_some());
    assert!(log.topic("d").is_none());
    Ok(())
}

#[tokio::test]
async fn a_deleted_topic_can_be_created_again_from_offset_zero() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(512))?;
    append_range(&topic, 0, 40, 3).await?;
    assert!(log.delete_topic(TOPIC).await?);
    assert!(!log.delete_topic(TOPIC).await?);
    assert!(log.topic(TOPIC).is_none());
    assert!(!dir.path().join(TOPIC).exists());

    let recreated = log.create_topic(TOPIC, config(512))?;
    assert_eq!(recreated.stats().next_offset, 0);
    assert!(recreated.read(0, 10, usize::MAX)?.is_empty());
    append_range(&recreated, 0, 5, 1).await?;
    check_records(&read_all(&recreated, 0)?, 0..5);

    // The old handle stays dead.
    assert!(matches!(
        topic.append(vec![Bytes::from_static(b"x")]).await,
        Err(LogError::NoSuchTopic(_))
    ));
    assert!(matches!(
        topic.read(0, 10, usize::MAX),
        Err(LogError::NoSuchTopic(_))
    ));
    log.close().await?;

    let (_log, reopened) = open(dir.path(), &config(512))?;
    check_records(&read_all(&reopened, 0)?, 0..5);
    let entries: Vec<_> = std::fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
    assert_eq!(entries.len(), 1, "leftover directories: {entries:?}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_topic_wakes_waiters_with_no_such_topic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 1, 1).await?;
    let waiter = tokio::spawn({
        let topic = topic.clone();
        async move { topic.wait_for(100).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    log.delete_topic(TOPIC).await?;
    let res = tokio::time::timeout(Duration::from_secs(5), waiter).await??;
    assert!(matches!(res, Err(LogError::NoSuchTopic(_))), "got {res:?}");
    assert!(matches!(
        topic.wait_for(100).await,
        Err(LogError::NoSuchTopic(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_fails_or_finishes_every_pending_append() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(4096))?;
    let mut appends = tokio::task::JoinSet::new();
    for n in 0..200u64 {
        let topic = topic.clone();
        appends.spawn(async move { topic.append(vec![crate::payload(n)]).await });
    }
    log.delete_topic(TOPIC).await?;
    while let Some(joined) = appends.join_next().await {
        match joined? {
            Ok(_) | Err(LogError::NoSuchTopic(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    assert!(log.topic(TOPIC).is_none());
    Ok(())
}

#[tokio::test]
async fn after_close_appends_fail_and_waiters_wake() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, topic) = open(dir.path(), &config(1024))?;
    append_range(&topic, 0, 3, 1).await?;
    let waiter = tokio::spawn({
        let topic = topic.clone();
        async move { topic.wait_for(10).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    log.close().await?;
    let res = tokio::time::timeout(Duration::from_secs(5), waiter).await??;
    assert!(matches!(res, Err(LogError::Closed)), "got {res:?}");
    assert!(matches!(
        topic.append(vec![Bytes::from_static(b"x")]).await,
        Err(LogError::Closed)
    ));
    assert!(matches!(
        log.create_topic("other", config(1024)),
        Err(LogError::Closed)
    ));
    // What was written stays readable, and closing twice is harmless.
    check_records(&read_all(&topic, 0)?, 0..3);
    log.close().await?;
    Ok(())
}

#[tokio::test]
async fn close_finishes_queued_appends() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = trellis_log::TopicConfig {
        durability: trellis_log::Durability::Never,
        ..config(4096)
    };
    let (log, topic) = open(dir.path(), &config)?;
    let mut appends = Vec::new();
    for n in 0..50u64 {
        let topic = topic.clone();
        appends.push(tokio::spawn(async move {
            topic.append(vec![crate::payload(n)]).await
        }));
    }
    // Let every append reach the writer's queue before closing.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.close().await?;
    let mut n_acked = 0;
    for append in appends {
        if append.await?.is_ok() {
            n_acked += 1;
        }
    }
    let (_log, topic) = open(dir.path(), &config)?;
    assert_eq!(topic.stats().next_offset, n_acked);
    Ok(())
}
