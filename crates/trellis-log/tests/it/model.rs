//! A property test of offset bookkeeping: random sequences of appends, reads, reopens and
//! restarts, with segments small enough to roll all the time, agree with a `Vec<Vec<u8>>`.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use trellis_log::{Durability, TopicConfig};

use crate::open;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    /// `from` is taken modulo the model's length plus two, so reads past the end happen too.
    Read {
        from: u64,
        max_records: usize,
        max_bytes: usize,
    },
    /// Close the log and open it again.
    Reopen,
    /// Drop the log without closing it, as a crashed process would, and open it again.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let payload = prop::collection::vec(any::<u8>(), 0..160);
    prop_oneof![
        6 => prop::collection::vec(payload, 1..6).prop_map(Op::Append),
        4 => (any::<u64>(), 1..12usize, 0..1500usize)
            .prop_map(|(from, max_records, max_bytes)| Op::Read { from, max_records, max_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Restart),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Always),
        Just(Durability::Interval(Duration::from_millis(1))),
        Just(Durability::Never),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_log_agrees_with_a_vec_of_records(
        segment_bytes in 48u64..1500,
        durability in durability(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
        runtime.block_on(run(TopicConfig { durability, segment_bytes, ..TopicConfig::default() }, ops))?;
    }
}

async fn run(config: TopicConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let (mut log, mut topic) = open(dir.path(), &config).map_err(fail)?;
    let mut model: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        match op {
            Op::Append(batch) => {
                let ack = topic
                    .append(batch.iter().cloned().map(Bytes::from).collect())
                    .await
                    .map_err(fail)?;
                prop_assert_eq!(ack.first_offset, model.len() as u64);
                prop_assert_eq!(ack.n_records, batch.len() as u64);
                model.extend(batch);
            }
            Op::Read {
                from,
                max_records,
                max_bytes,
            } => {
                let from = from % (model.len() as u64 + 2);
                let records = topic.read(from, max_records, max_bytes).map_err(fail)?;
                let got: Vec<(u64, &[u8])> = records
                    .iter()
                    .map(|record| (record.offset, record.payload.as_ref()))
                    .collect();
                prop_assert_eq!(got, model_read(&model, from, max_records, max_bytes));
            }
            Op::Reopen => {
                log.close().await.map_err(fail)?;
                (log, topic) = open(dir.path(), &config).map_err(fail)?;
            }
            Op::Restart => {
                drop((log, topic));
                (log, topic) = open(dir.path(), &config).map_err(fail)?;
            }
        }
        prop_assert_eq!(topic.stats().next_offset, model.len() as u64);
    }
    let records = topic.read(0, usize::MAX, usize::MAX).map_err(fail)?;
    let got: Vec<&[u8]> = records
        .iter()
        .map(|record| record.payload.as_ref())
        .collect();
    let expected: Vec<&[u8]> = model.iter().map(Vec::as_slice).collect();
    prop_assert_eq!(got, expected);
    log.close().await.map_err(fail)?;
    Ok(())
}

/// What `Topic::read` promises, on the model.
fn model_read(
    model: &[Vec<u8>],
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut n_bytes = 0;
    for (offset, payload) in model.iter().enumerate().skip(from as usize) {
        if out.len() == max_records || (!out.is_empty() && n_bytes + payload.len() > max_bytes) {
            break;
        }
        n_bytes += payload.len();
        out.push((offset as u64, payload.as_slice()));
    }
    out
}

fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}
