use super::*;

use proptest::prelude::*;

#[test]
fn starts_at_the_resume_position() {
    let tracker = OffsetTracker::new(42);
    assert_eq!(tracker.committable(), 42);
    assert_eq!(tracker.in_flight(), 0);
}

#[test]
fn in_order_completion_advances_one_by_one() {
    let mut tracker = OffsetTracker::new(0);
    for offset in 0..3 {
        tracker.track(offset).expect("in order");
    }
    assert_eq!(tracker.complete(0), Ok(Some(1)));
    assert_eq!(tracker.complete(1), Ok(Some(2)));
    assert_eq!(tracker.complete(2), Ok(Some(3)));
    assert_eq!(tracker.in_flight(), 0);
}

#[test]
fn a_slow_record_holds_back_the_ones_after_it() {
    let mut tracker = OffsetTracker::new(10);
    for offset in 10..14 {
        tracker.track(offset).expect("in order");
    }
    assert_eq!(tracker.complete(11), Ok(None));
    assert_eq!(tracker.complete(13), Ok(None));
    assert_eq!(tracker.committable(), 10);
    assert_eq!(tracker.in_flight(), 2);
    // The slow one ends: the prefix jumps over everything that ended meanwhile.
    assert_eq!(tracker.complete(10), Ok(Some(12)));
    assert_eq!(tracker.complete(12), Ok(Some(14)));
}

#[test]
fn gaps_count_as_ended() {
    let mut tracker = OffsetTracker::new(0);
    tracker.track(0).expect("first");
    tracker.track(5).expect("after a gap");
    assert_eq!(tracker.complete(0), Ok(Some(5)));
    // With nothing in flight, tracking past a gap moves the position over it.
    assert_eq!(tracker.complete(5), Ok(Some(6)));
    tracker.track(9).expect("after a gap");
    assert_eq!(tracker.committable(), 9);
}

#[test]
fn refuses_out_of_order_and_repeated_tracking() {
    let mut tracker = OffsetTracker::new(5);
    assert_eq!(
        tracker.track(4),
        Err(OffsetError::OutOfOrder {
            offset: 4,
            expected_at_least: 5
        })
    );
    tracker.track(7).expect("after a gap");
    let before = tracker.clone();
    assert_eq!(
        tracker.track(7),
        Err(OffsetError::OutOfOrder {
            offset: 7,
            expected_at_least: 8
        })
    );
    assert_eq!(
        tracker.track(6),
        Err(OffsetError::OutOfOrder {
            offset: 6,
            expected_at_least: 8
        })
    );
    assert_eq!(tracker, before);
}

#[test]
fn refuses_to_complete_what_was_not_handed_out() {
    let mut tracker = OffsetTracker::new(5);
    tracker.track(5).expect("first");
    tracker.track(8).expect("after a gap");
    let before = tracker.clone();
    assert_eq!(
        tracker.complete(9),
        Err(OffsetError::NotTracked { offset: 9 })
    );
    // Below the resume position, and inside a gap: those offsets have already ended.
    assert_eq!(
        tracker.complete(4),
        Err(OffsetError::AlreadyEnded { offset: 4 })
    );
    assert_eq!(
        tracker.complete(6),
        Err(OffsetError::AlreadyEnded { offset: 6 })
    );
    assert_eq!(tracker, before);
}

#[test]
fn refuses_double_completion_and_changes_nothing() {
    let mut tracker = OffsetTracker::new(0);
    tracker.track(0).expect("first");
    tracker.track(1).expect("second");
    assert_eq!(tracker.complete(1), Ok(None));
    let before = tracker.clone();
    assert_eq!(
        tracker.complete(1),
        Err(OffsetError::AlreadyEnded { offset: 1 })
    );
    assert_eq!(tracker, before);
    assert_eq!(tracker.complete(0), Ok(Some(2)));
    assert_eq!(
        tracker.complete(0),
        Err(OffsetError::AlreadyEnded { offset: 0 })
    );
    assert_eq!(tracker.committable(), 2);
}

#[test]
fn the_largest_offset_cannot_be_tracked() {
    let mut tracker = OffsetTracker::new(u64::MAX - 1);
    tracker.track(u64::MAX - 1).expect("representable");
    let before = tracker.clone();
    assert_eq!(
        tracker.track(u64::MAX),
        Err(OffsetError::Exhausted { offset: u64::MAX })
    );
    assert_eq!(tracker, before);
    assert_eq!(tracker.complete(u64::MAX - 1), Ok(Some(u64::MAX)));
}

/// One step of the property test; offsets are relative to the tracker's start.
#[derive(Debug, Clone)]
enum Op {
    /// Track the offset `gap` past the frontier (0 = the very next one).
    Track { gap: u64 },
    /// Track an offset below the frontier, `back` before it (1 = the last one tracked).
    Retrack { back: u64 },
    /// Complete an offset picked anywhere in the tracked range or just beyond it: in
    /// flight, ended already, in a gap, or never handed out.
    Complete { pick: proptest::sample::Index },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Skipped over: never handed out, and counts as ended.
    Gap,
    InFlight,
    Ended,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..3).prop_map(|gap| Op::Track { gap }),
        1 => (1u64..4).prop_map(|back| Op::Retrack { back }),
        5 => any::<proptest::sample::Index>().prop_map(|pick| Op::Complete { pick }),
    ]
}

proptest! {
    #[test]
    fn matches_a_model_of_the_contiguous_prefix(
        start in 0u64..1000,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let mut tracker = OffsetTracker::new(start);
        // model[i] is the state of offset start + i; its length is the frontier.
        let mut model: Vec<State> = Vec::new();
        let mut last_committable = tracker.committable();
        for op in ops {
            match op {
                Op::Track { gap } => {
                    let relative = model.len() as u64 + gap;
                    prop_assert_eq!(tracker.track(start + relative), Ok(()));
                    for _ in 0..gap {
                        model.push(State::Gap);
                    }
                    model.push(State::InFlight);
                }
                Op::Retrack { back } => {
                    let frontier = start + model.len() as u64;
                    let Some(offset) = frontier.checked_sub(back) else { continue };
                    let before = tracker.clone();
                    prop_assert_eq!(
                        tracker.track(offset),
                        Err(OffsetError::OutOfOrder { offset, expected_at_least: frontier })
                    );
                    prop_assert_eq!(&tracker, &before);
                }
                Op::Complete { pick } => {
                    // Up to two offsets past the frontier, to hit never-tracked ones.
                    let index = pick.index(model.len() + 3);
                    let offset = index as u64;
                    let before = tracker.clone();
                    let result = tracker.complete(start + offset);
                    match model.get(index).copied() {
                        Some(State::InFlight) => {
                            model[index] = State::Ended;
                            let moved = tracker.committable() != before.committable();
                            prop_assert_eq!(result, Ok(moved.then_some(tracker.committable())));
                        }
                        Some(State::Ended | State::Gap) => {
                            prop_assert_eq!(result, Err(OffsetError::AlreadyEnded { offset: start + offset }));
                            prop_assert_eq!(&tracker, &before);
                        }
                        None => {
                            prop_assert_eq!(result, Err(OffsetError::NotTracked { offset: start + offset }));
                            prop_assert_eq!(&tracker, &before);
                        }
                    }
                }
            }
            let prefix = model
                .iter()
                .position(|state| *state == State::InFlight)
                .unwrap_or(model.len());
            let committable = tracker.committable();
            prop_assert_eq!(committable, start + prefix as u64);
            prop_assert!(committable >= last_committable, "committable went back");
            // Never past an offset that has not ended.
            for (index, state) in model.iter().enumerate() {
                if *state == State::InFlight {
                    prop_assert!(committable <= start + index as u64);
                }
            }
            let in_flight = model.iter().filter(|state| **state == State::InFlight).count();
            prop_assert_eq!(tracker.in_flight(), in_flight);
            last_committable = committable;
        }
    }
}
