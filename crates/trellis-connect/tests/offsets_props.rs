//! Random interleavings of submits, acks, staging, begin/do/cancel flush, store failures and
//! flush timeouts: no acknowledged offset is lost, nothing past an unacknowledged record is ever
//! in the store, and nothing panics.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use support::FaultyStore;
use trellis_connect::offsets::{
    FlushOutcome, OffsetStore, OffsetWriter, PendingFlush, SubmittedRecord, SubmittedRecords,
};
use trellis_connect::{Offset, Partition, Position};

const PARTITIONS: usize = 3;
/// Short, so timeouts happen within a case; a timeout is behaviour here, not an assertion.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(30);

#[derive(Debug, Clone)]
enum Op {
    Submit { partition: usize, step: u64 },
    Ack { pick: usize },
    Stage,
    BeginFlush,
    DoFlush,
    CancelFlush,
    Commit,
    AwaitFlushes,
    FailPuts(bool),
    HoldPuts,
    ReleasePuts,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, 1..5u64).prop_map(|(partition, step)| Op::Submit { partition, step }),
        6 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        3 => Just(Op::Stage),
        2 => Just(Op::BeginFlush),
        2 => Just(Op::DoFlush),
        1 => Just(Op::CancelFlush),
        3 => Just(Op::Commit),
        2 => Just(Op::AwaitFlushes),
        // Faults are switched on less often than off, so healthy stretches commit too.
        1 => Just(Op::FailPuts(true)),
        2 => Just(Op::FailPuts(false)),
        1 => Just(Op::HoldPuts),
        3 => Just(Op::ReleasePuts),
    ]
}

/// What the test knows independently of the code under test: each partition's submitted
/// offsets in order and which are acknowledged.
#[derive(Default)]
struct Model {
    submitted: Vec<Vec<(Offset, bool)>>,
    next: Vec<u64>,
}

impl Model {
    /// The offset of the last record of the acknowledged prefix: the most a partition may commit.
    fn committable(&self, partition: usize) -> Option<Offset> {
        self.submitted[partition]
            .iter()
            .take_while(|(_, acked)| *acked)
            .last()
            .map(|(offset, _)| *offset)
    }

    fn highest(&self, partition: usize) -> Option<Offset> {
        self.submitted[partition].last().map(|(offset, _)| *offset)
    }

    fn ack(&mut self, partition: usize, offset: Offset) {
        if let Some(entry) = self.submitted[partition]
            .iter_mut()
            .find(|(o, _)| *o == offset)
        {
            entry.1 = true;
        }
    }
}

fn name(partition: usize) -> Partition {
    Partition::new(format!("part/{partition}"))
}

fn index(partition: &Partition) -> usize {
    (0..PARTITIONS)
        .find(|i| &name(*i) == partition)
        .expect("a known partition")
}

async fn assert_never_past_an_unacked_record(store: &OffsetStore, model: &Model) {
    let stored = store.read_all().await.expect("read offsets");
    for (partition, offset) in stored {
        let allowed = model.committable(index(&partition));
        assert!(
            allowed.is_some_and(|allowed| offset <= allowed),
            "{partition} committed {offset}, past its acknowledged prefix {allowed:?}"
        );
    }
}

async fn run(ops: Vec<Op>) {
    let faulty = FaultyStore::new();
    let store = OffsetStore::new(faulty.clone(), "prop");
    let writer = OffsetWriter::new(store.clone(), FLUSH_TIMEOUT);
    let submitted = SubmittedRecords::new();
    let mut model = Model {
        submitted: vec![Vec::new(); PARTITIONS],
        next: vec![0; PARTITIONS],
    };
    let mut unacked: Vec<SubmittedRecord> = Vec::new();
    let mut pending: Vec<PendingFlush> = Vec::new();

    for op in ops {
        match op {
            Op::Submit { partition, step } => {
                model.next[partition] += step;
                let offset = Offset(model.next[partition]);
                model.submitted[partition].push((offset, false));
                unacked.push(submitted.submit(Position {
                    partition: name(partition),
                    offset,
                }));
            }
            Op::Ack { pick } => {
                if !unacked.is_empty() {
                    let record = unacked.swap_remove(pick % unacked.len());
                    assert!(submitted.ack(&record));
                    assert!(!submitted.ack(&record));
                    model.ack(index(record.partition()), record.offset());
                }
            }
            Op::Stage => writer.write_offsets(submitted.take_committable()),
            Op::BeginFlush => {
                writer.begin_flush();
            }
            Op::DoFlush => pending.extend(writer.do_flush()),
            Op::CancelFlush => {
                writer.cancel_flush();
            }
            Op::Commit => {
                writer.commit().await;
            }
            Op::AwaitFlushes => {
                for flush in pending.drain(..) {
                    flush.await;
                }
            }
            Op::FailPuts(fail) => faulty.fail_puts(fail),
            Op::HoldPuts => faulty.hold(),
            Op::ReleasePuts => faulty.release(),
        }
        assert_never_past_an_unacked_record(&store, &model).await;
    }

    // Wind down: every record acknowledged, the store healthy, a final successful flush.
    for record in unacked.drain(..) {
        assert!(submitted.ack(&record));
        model.ack(index(record.partition()), record.offset());
    }
    assert!(submitted.await_all_acked(Duration::from_secs(1)).await);
    assert_eq!(submitted.held(), 0, "acknowledged records are not kept");
    faulty.fail_puts(false);
    faulty.release();
    for flush in pending.drain(..) {
        flush.await;
    }
    writer.write_offsets(submitted.take_committable());
    writer.cancel_flush();
    let mut outcome = writer.commit().await;
    // A slow machine may make even a healthy write outlive the short timeout; it is retried.
    for _ in 0..100 {
        if matches!(
            outcome,
            FlushOutcome::Committed { .. } | FlushOutcome::NothingStaged
        ) {
            break;
        }
        writer.cancel_flush();
        outcome = writer.commit().await;
    }
    assert!(
        matches!(
            outcome,
            FlushOutcome::Committed { .. } | FlushOutcome::NothingStaged
        ),
        "final flush: {outcome:?}"
    );
    // Earlier timed-out writes may still be landing; they are chained before the final one,
    // so once it has committed the store is final.
    let stored = store.read_all().await.expect("read offsets");
    let expected: BTreeMap<Partition, Offset> = (0..PARTITIONS)
        .filter_map(|i| model.highest(i).map(|offset| (name(i), offset)))
        .collect();
    assert_eq!(
        stored, expected,
        "every acknowledged offset is in the store"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn interleavings_never_lose_an_acked_offset_or_commit_past_an_unacked_one(
        ops in proptest::collection::vec(op(), 0..60)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(ops));
    }
}
