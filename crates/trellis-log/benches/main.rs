//! Benchmarks for `trellis-log`: append throughput of 1 KiB records per durability policy at 1
//! and 64 concurrent writers (`log/append/<policy>/<writers>`), and sequential read throughput
//! (`log/read/sequential`). Every benchmark reports records per second.
//!
//! The log lives under the target directory, which is on the same disk as the build, because a
//! tmpfs would make fsync free and the `always` figures meaningless.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use trellis_log::{Durability, Log, LogOptions, Topic, TopicConfig};

const RECORD_BYTES: usize = 1024;
const N_READ_RECORDS: u64 = 50_000;

criterion_group!(benches, append, read);
criterion_main!(benches);

fn append(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("log/append");
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let policies = [
        ("always", Durability::Always),
        (
            "interval_10ms",
            Durability::Interval(Duration::from_millis(10)),
        ),
        ("never", Durability::Never),
    ];
    for (policy_name, durability) in policies {
        for n_writers in [1u64, 64] {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("creating a temporary directory");
            // Retention keeps the faster policies from filling the disk; it runs between samples.
            let config = TopicConfig {
                durability,
                retention_bytes: Some(256 * 1024 * 1024),
                ..TopicConfig::default()
            };
            let (log, topic) = open(&dir, config);
            let payload = Bytes::from(vec![0x5a; RECORD_BYTES]);
            group.bench_function(format!("{policy_name}/{n_writers}"), |bencher| {
                bencher.to_async(&runtime).iter_custom(|iters| {
                    let log = log.clone();
                    let topic = topic.clone();
                    let payload = payload.clone();
                    async move {
                        log.enforce_retention().expect("enforcing retention");
                        append_concurrently(&topic, &payload, iters, n_writers).await
                    }
                });
            });
            runtime.block_on(log.close()).expect("closing the log");
        }
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let runtime = runtime();
    let dir =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("creating a temporary directory");
    let config = TopicConfig {
        durability: Durability::Never,
        ..TopicConfig::default()
    };
    let (log, topic) = open(&dir, config);
    runtime.block_on(async {
        let payload = Bytes::from(vec![0xa5; RECORD_BYTES]);
        for _ in 0..N_READ_RECORDS / 100 {
            topic
                .append(vec![payload.clone(); 100])
                .await
                .expect("appending");
        }
    });
    let mut group = c.benchmark_group("log/read");
    group.throughput(Throughput::Elements(N_READ_RECORDS));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("sequential", |bencher| {
        bencher.iter(|| {
            let mut next = 0;
            while next < N_READ_RECORDS {
                let records = topic.read(next, 1000, 1024 * 1024).expect("reading");
                next = records
                    .last()
                    .map_or(N_READ_RECORDS, |record| record.offset + 1);
            }
        });
    });
    group.finish();
    runtime.block_on(log.close()).expect("closing the log");
}

/// Appends `iters` single-record batches from `n_writers` concurrent tasks; returns the wall time.
async fn append_concurrently(
    topic: &Topic,
    payload: &Bytes,
    iters: u64,
    n_writers: u64,
) -> Duration {
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer_idx in 0..n_writers {
        let n_appends = iters / n_writers + u64::from(writer_idx < iters % n_writers);
        let topic = topic.clone();
        let payload = payload.clone();
        writers.spawn(async move {
            for _ in 0..n_appends {
                topic
                    .append(vec![payload.clone()])
                    .await
                    .expect("appending");
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("a writer task panicked");
    }
    started.elapsed()
}

fn open(dir: &tempfile::TempDir, config: TopicConfig) -> (Log, Topic) {
    let options = LogOptions {
        dir: dir.path().to_owned(),
        default_topic: config.clone(),
    };
    let log = Log::open(options).expect("opening the log");
    let topic = log
        .create_topic("bench", config)
        .expect("creating the topic");
    (log, topic)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a runtime")
}
