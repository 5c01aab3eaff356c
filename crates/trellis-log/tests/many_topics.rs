//! Ten thousand topics in one process: the writer threads and open files stay bounded, and
//! every append is there after a reopen.
//!
//! A test binary of its own, so that no other test's threads or files are counted.

use bytes::Bytes;
use trellis_log::{Log, LogOptions, LogResources, TopicConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const N_TOPICS: usize = 10_000;
const MAX_OPEN_FILES: usize = 256;
const WRITER_THREADS: usize = 3;

fn n_threads() -> Result<usize, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .ok_or("no Threads line in /proc/self/status")?;
    Ok(line.trim().parse()?)
}

fn n_open_fds() -> Result<usize, std::io::Error> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

fn open(dir: &std::path::Path) -> Result<Log, trellis_log::LogError> {
    Log::open_with(
        LogOptions {
            dir: dir.to_owned(),
            default_topic: TopicConfig::default(),
        },
        &LogResources {
            writer_threads: WRITER_THREADS,
            max_open_files: MAX_OPEN_FILES,
        },
    )
}

fn payload(idx: usize) -> Bytes {
    Bytes::from(format!("event of topic {idx}"))
}

#[test]
fn ten_thousand_topics_share_a_few_threads_and_a_bounded_set_of_files() -> TestResult {
    // One thread of our own drives every append, so the threads added are the log's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = scratch_dir()?;
    let threads_before = n_threads()?;
    let fds_before = n_open_fds()?;
    runtime.block_on(async {
        let log = open(dir.path())?;
        let mut pending = Vec::with_capacity(N_TOPICS);
        let mut topics = Vec::new();
        for idx in 0..N_TOPICS {
            topics.push(log.create_topic(&format!("topic-{idx}"), TopicConfig::default())?);
        }
        for (idx, topic) in topics.iter().enumerate() {
            pending.push(topic.submit(vec![payload(idx)]).await?);
        }
        for (idx, append) in pending.into_iter().enumerate() {
            let ack = append.await?;
            assert_eq!(ack.first_offset, 0, "topic-{idx}");
        }
        let added_threads = n_threads()? - threads_before;
        assert!(
            added_threads <= WRITER_THREADS,
            "{N_TOPICS} topics added {added_threads} threads"
        );
        let added_fds = n_open_fds()?.saturating_sub(fds_before);
        assert!(
            added_fds <= MAX_OPEN_FILES + 16,
            "{N_TOPICS} topics hold {added_fds} descriptors"
        );
        // A topic whose files were closed long ago reads and appends as before.
        let first = log.topic("topic-0").ok_or("topic-0 lost")?;
        assert_eq!(first.read(0, 10, 1024)?[0].payload, payload(0));
        assert_eq!(first.append(vec![payload(0)]).await?.first_offset, 1);
        log.close().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    runtime.block_on(async {
        let log = open(dir.path())?;
        assert_eq!(log.n_topics(), N_TOPICS);
        assert!(n_open_fds()?.saturating_sub(fds_before) <= MAX_OPEN_FILES + 16);
        for idx in 0..N_TOPICS {
            let topic = log.topic(&format!("topic-{idx}")).ok_or("topic lost")?;
            let records = topic.read(0, 10, 1024)?;
            let expected = if idx == 0 { 2 } else { 1 };
            assert_eq!(records.len(), expected, "topic-{idx}");
            assert_eq!(records[0].payload, payload(idx), "topic-{idx}");
        }
        log.close().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // A few KiB per topic, not a megabyte of zeros each.
    let disk_bytes = du(dir.path())?;
    assert!(
        disk_bytes < (N_TOPICS as u64) * 64 * 1024,
        "{N_TOPICS} topics of one event use {disk_bytes} bytes"
    );
    Ok(())
}

/// A directory on tmpfs where there is one. What this test checks (threads, descriptors, data
/// after a reopen) does not depend on the disk, and creating 10,000 directories on a busy disk
/// can take longer than everything else here together.
fn scratch_dir() -> Result<tempfile::TempDir, std::io::Error> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::tempdir()
}

/// Bytes allocated on disk under `dir`.
fn du(dir: &std::path::Path) -> Result<u64, std::io::Error> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += metadata.blocks() * 512;
        if metadata.is_dir() {
            total += du(&entry.path())?;
        }
    }
    Ok(total)
}
