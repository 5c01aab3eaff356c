//! Every record with a callback ends in exactly one call, whatever a connector does with its
//! completion: report it, drop it, split it (and do the same to the parts), in any order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use trellis_connect::{
    Completion, ConnectRecord, Position, SendCallback, SendError, SendExceptionContext, SendResult,
};

#[derive(Default)]
struct Counts {
    /// Per record id: (successes, exceptions).
    calls: Mutex<BTreeMap<String, (u32, u32)>>,
}

impl Counts {
    fn bump(&self, record_id: String, success: bool) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let entry = calls.entry(record_id).or_default();
        if success {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<String, (u32, u32)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SendCallback for Counts {
    fn on_success(&self, result: SendResult) {
        self.bump(result.record_id, true);
    }
    fn on_exception(&self, context: SendExceptionContext) {
        self.bump(context.record_id, false);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Succeed(usize),
    Fail(usize),
    Drop(usize),
    Split(usize, usize),
    /// Clone the record that holds the handle and drop the clone: must call nothing.
    CloneRecord(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<usize>().prop_map(Op::Succeed),
        any::<usize>().prop_map(Op::Fail),
        any::<usize>().prop_map(Op::Drop),
        (any::<usize>(), 0usize..4).prop_map(|(i, n)| Op::Split(i, n)),
        any::<usize>().prop_map(Op::CloneRecord),
    ]
}

/// What a live handle is in: the record itself, or a bare completion after a split.
enum Live {
    Record(ConnectRecord),
    Part(Completion),
}

proptest! {
    #[test]
    fn every_record_ends_in_exactly_one_callback(
        records in 1usize..6,
        ops in prop::collection::vec(op(), 0..40),
        all_succeed in any::<bool>(),
    ) {
        let counts = Arc::new(Counts::default());
        let callback: Arc<dyn SendCallback> = counts.clone();
        // Which record each live handle belongs to, and whether any of its handles failed.
        let mut live: Vec<(usize, Live)> = (0..records)
            .map(|i| {
                let record = ConnectRecord::new(format!("r{i}"), Position::new("p", i as u64), "x")
                    .with_callback(callback.clone());
                (i, Live::Record(record))
            })
            .collect();
        let mut any_failed = vec![false; records];
        for op in ops {
            if live.is_empty() {
                break;
            }
            let pick = |i: usize| i % live.len();
            match op {
                Op::Succeed(i) => match live.swap_remove(pick(i)).1 {
                    Live::Record(record) => record.succeed(Some("t".to_owned())),
                    Live::Part(part) => part.succeed(Some("t".to_owned())),
                },
                Op::Fail(i) => {
                    let (owner, handle) = live.swap_remove(pick(i));
                    any_failed[owner] = true;
                    let cause = SendError::Delivery("no".to_owned());
                    match handle {
                        Live::Record(record) => record.fail(None, cause),
                        Live::Part(part) => part.fail(None, cause),
                    }
                }
                Op::Drop(i) => {
                    let (owner, handle) = live.swap_remove(pick(i));
                    any_failed[owner] = true;
                    drop(handle);
                }
                Op::Split(i, n) => {
                    let (owner, handle) = live.swap_remove(pick(i));
                    let completion = match handle {
                        Live::Record(mut record) => record.take_completion(),
                        Live::Part(part) => part,
                    };
                    for part in completion.split(n) {
                        live.push((owner, Live::Part(part)));
                    }
                }
                Op::CloneRecord(i) => {
                    let index = pick(i);
                    if let Live::Record(record) = &live[index].1 {
                        drop(record.clone());
                    }
                }
            }
            // No record has been reported twice at any point.
            for (id, (ok, err)) in counts.snapshot() {
                prop_assert!(ok + err <= 1, "{id} reported {ok} successes and {err} exceptions");
            }
        }
        // The rest end now: all reported, or all dropped.
        for (owner, handle) in live.drain(..) {
            if all_succeed {
                match handle {
                    Live::Record(record) => record.succeed(None),
                    Live::Part(part) => part.succeed(None),
                }
            } else {
                any_failed[owner] = true;
                drop(handle);
            }
        }
        let calls = counts.snapshot();
        for (i, failed) in any_failed.iter().enumerate() {
            let (ok, err) = calls.get(&format!("r{i}")).copied().unwrap_or_default();
            prop_assert_eq!(ok + err, 1, "r{} reported {} successes and {} exceptions", i, ok, err);
            // A failure of any handle, part of a part included, reaches the record; a record
            // none of whose handles failed succeeded.
            prop_assert_eq!(err, u32::from(*failed), "r{} failed: {}", i, failed);
        }
    }
}

#[test]
fn a_split_reports_once_when_its_last_part_ends_with_the_first_failure() {
    let failures = Arc::new(Mutex::new(Vec::new()));
    struct Causes(Arc<Mutex<Vec<String>>>);
    impl SendCallback for Causes {
        fn on_success(&self, _result: SendResult) {}
        fn on_exception(&self, context: SendExceptionContext) {
            if let Ok(mut causes) = self.0.lock() {
                causes.push(context.cause.to_string());
            }
        }
    }
    let completion = Completion::new(
        "r",
        Position::new("p", 1),
        Arc::new(Causes(failures.clone())),
    );
    let mut parts = completion.split(3).into_iter();
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    if let Some(a) = a {
        a.fail(None, SendError::Delivery("first".to_owned()));
    }
    if let Some(b) = b {
        b.fail(None, SendError::Delivery("second".to_owned()));
    }
    assert!(
        failures.lock().map(|f| f.is_empty()).unwrap_or(false),
        "reported before the last part"
    );
    drop(c);
    assert_eq!(
        *failures.lock().unwrap_or_else(|e| e.into_inner()),
        vec!["delivery failed: first".to_owned()]
    );
}

/// Sinks finish records from their own tasks, and workers hold connectors as trait objects.
#[test]
fn records_and_completions_move_between_tasks_and_connectors_are_objects() {
    fn send_and_sync<T: Send + Sync + 'static>() {}
    send_and_sync::<ConnectRecord>();
    send_and_sync::<Completion>();
    fn objects(
        _: Option<Box<dyn trellis_connect::Source>>,
        _: Option<Box<dyn trellis_connect::Sink>>,
    ) {
    }
    objects(None, None);
}
