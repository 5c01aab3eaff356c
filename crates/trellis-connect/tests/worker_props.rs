//! The source worker's bookkeeping under random outcomes: records that succeed at once or
//! later, fail in ways that may pass (retriable, dropped, a failed `put`) a few times, or fail
//! for good, over two partitions, under both error tolerances. Whatever happens:
//! - every record's own callback ends exactly once, with success only if the destination took
//!   it;
//! - the committed offset of a partition never passes a record that did not succeed (or, under
//!   `all`, was skipped);
//! - under `all` the worker never fails and commits every partition to its end; under `none`
//!   it fails exactly when some polled record failed for good.

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use support::FaultyStore;
use tokio_util::sync::CancellationToken;
use trellis_connect::offsets::OffsetStore;
use trellis_connect::{
    ConnectRecord, ConnectorConfig, ConnectorError, Offset, Partition, Position, SendCallback,
    SendError, SendExceptionContext, SendResult, Sink, SinkContext, Source, SourceContext,
    SourceWorker, Tolerance, WorkerSettings,
};

/// What the destination does with one attempt of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Succeed,
    /// Succeeds from a task of its own, after `put` returned.
    SucceedLater,
    Retriable,
    /// Dropped unended: reports `Dropped`.
    Drop,
    Final,
}

/// A record's steps: a few failures that may pass, then success or a final failure.
fn plan() -> impl Strategy<Value = Vec<Step>> {
    (
        prop::collection::vec(prop_oneof![Just(Step::Retriable), Just(Step::Drop)], 0..3),
        prop_oneof![
            4 => Just(Step::Succeed),
            2 => Just(Step::SucceedLater),
            1 => Just(Step::Final),
        ],
    )
        .prop_map(|(mut steps, last)| {
            steps.push(last);
            steps
        })
}

#[derive(Default)]
struct Heard(Mutex<HashMap<String, Vec<bool>>>);

impl Heard {
    fn note(&self, id: String, ok: bool) {
        self.0
            .lock()
            .expect("heard")
            .entry(id)
            .or_default()
            .push(ok);
    }
}

impl SendCallback for Heard {
    fn on_success(&self, result: SendResult) {
        self.note(result.record_id, true);
    }
    fn on_exception(&self, context: SendExceptionContext) {
        self.note(context.record_id, false);
    }
}

struct Script {
    records: VecDeque<ConnectRecord>,
    batches: VecDeque<usize>,
}

#[async_trait]
impl Source for Script {
    async fn start(&mut self, _context: SourceContext) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        if self.records.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Ok(Vec::new());
        }
        let take = self
            .batches
            .pop_front()
            .unwrap_or(1)
            .min(self.records.len());
        Ok(self.records.drain(..take).collect())
    }
    async fn stop(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

struct Scripted {
    plans: HashMap<String, Vec<Step>>,
    attempts: HashMap<String, usize>,
    /// Whether each put, in order, fails as a whole (its records end `Dropped`).
    put_failures: VecDeque<bool>,
}

#[async_trait]
impl Sink for Scripted {
    async fn start(&mut self, _context: SinkContext) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
        if self.put_failures.pop_front().unwrap_or(false) {
            return Err(ConnectorError::failed("injected put failure"));
        }
        for record in records {
            let attempt = self.attempts.entry(record.id.clone()).or_default();
            let plan = self.plans.get(&record.id).map(Vec::as_slice).unwrap_or(&[]);
            // Past its plan a record keeps its last step.
            let step = plan
                .get(*attempt)
                .or(plan.last())
                .copied()
                .unwrap_or(Step::Succeed);
            *attempt += 1;
            match step {
                Step::Succeed => record.succeed(None),
                Step::SucceedLater => {
                    tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        record.succeed(None);
                    });
                }
                Step::Retriable => record.fail(None, SendError::Retriable("busy".to_owned())),
                Step::Drop => drop(record),
                Step::Final => record.fail(None, SendError::Rejected("bad".to_owned())),
            }
        }
        Ok(())
    }
    async fn stop(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// Per record: its partition (0 or 1) and its plan.
    records: Vec<(u8, Vec<Step>)>,
    batches: Vec<usize>,
    put_failures: Vec<bool>,
    all: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0u8..2, plan()), 1..24),
        prop::collection::vec(1usize..6, 0..12),
        prop::collection::vec(prop::bool::weighted(0.2), 0..12),
        any::<bool>(),
    )
        .prop_map(|(records, batches, put_failures, all)| Case {
            records,
            batches,
            put_failures,
            all,
        })
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run_case_async(case))
}

async fn run_case_async(case: &Case) -> Result<(), TestCaseError> {
    let heard = Arc::new(Heard::default());
    let mut next = [0u64; 2];
    let mut records = VecDeque::new();
    let mut plans = HashMap::new();
    // Per partition, in order: (offset, id, whether the record ends in success).
    let mut expected: BTreeMap<u8, Vec<(u64, String, bool)>> = BTreeMap::new();
    for (i, (partition, plan)) in case.records.iter().enumerate() {
        let slot = usize::from(*partition);
        next[slot] += 10;
        let id = format!("r{i}");
        let position = Position::new(format!("p{partition}"), next[slot]);
        records
            .push_back(ConnectRecord::new(id.clone(), position, "x").with_callback(heard.clone()));
        let succeeds = plan.last() != Some(&Step::Final);
        expected
            .entry(*partition)
            .or_default()
            .push((next[slot], id.clone(), succeeds));
        plans.insert(id, plan.clone());
    }
    let store = FaultyStore::new();
    let offsets = OffsetStore::new(store.clone(), "props");
    let settings = WorkerSettings {
        commit_interval: Duration::from_millis(5),
        flush_timeout: Duration::from_secs(30),
        errors: trellis_connect::ErrorPolicy {
            tolerance: if case.all {
                Tolerance::All
            } else {
                Tolerance::None
            },
            retry_timeout: Duration::from_secs(60),
        },
        max_in_flight: 8,
        retry_backoff: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(4),
    };
    let worker = SourceWorker::new(
        "props".to_owned(),
        ConnectorConfig::new(),
        Box::new(Script {
            records,
            batches: case.batches.iter().copied().collect(),
        }),
        Box::new(Scripted {
            plans,
            attempts: HashMap::new(),
            put_failures: case.put_failures.iter().copied().collect(),
        }),
        offsets.clone(),
        settings,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let total = case.records.len();
    let any_final = case
        .records
        .iter()
        .any(|(_, plan)| plan.last() == Some(&Step::Final));
    // Under `all` every record ends; under `none` the worker may stop first.
    for _ in 0..6000 {
        if heard.0.lock().expect("heard").len() == total || task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    let outcome = task.await.expect("the worker never panics");

    let heard = heard.0.lock().expect("heard").clone();
    prop_assert_eq!(heard.len(), total, "every record's callback was called");
    for (id, calls) in &heard {
        prop_assert_eq!(calls.len(), 1, "{} heard {:?}", id, calls);
    }
    let committed = offsets.read_all().await.expect("read offsets");
    for (partition, records) in &expected {
        let committed = committed
            .get(&Partition::new(format!("p{partition}")))
            .copied()
            .unwrap_or(Offset(0));
        // The committed offset stays before the first record that did not end acknowledged.
        let first_blocker = records
            .iter()
            .find(|(_, id, succeeds)| {
                let published = heard.get(id).is_some_and(|calls| calls == &[true]);
                let skipped = case.all && !*succeeds;
                !published && !skipped
            })
            .map(|(offset, _, _)| *offset);
        if let Some(blocker) = first_blocker {
            prop_assert!(
                committed.0 < blocker,
                "committed {} past {}",
                committed.0,
                blocker
            );
        }
        if case.all {
            let last = records.last().map_or(0, |(offset, _, _)| *offset);
            prop_assert_eq!(
                committed.0,
                last,
                "under `all` every partition is committed to its end"
            );
        }
    }
    for records in expected.values() {
        for (_, id, succeeds) in records {
            if heard.get(id).is_some_and(|calls| calls == &[true]) {
                prop_assert!(*succeeds, "{} succeeded against its plan", id);
            }
            if case.all {
                prop_assert_eq!(heard.get(id).map(Vec::as_slice), Some(&[*succeeds][..]));
            }
        }
    }
    if case.all {
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
    } else {
        prop_assert_eq!(outcome.is_err(), any_final, "{:?}", outcome);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_worker_keeps_its_books_under_any_outcomes(case in case()) {
        run_case(&case)?;
    }
}
