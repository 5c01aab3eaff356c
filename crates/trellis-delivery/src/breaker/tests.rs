use proptest::prelude::*;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// Only the consecutive-failure rule, so that tests of it are not disturbed by the other.
fn consecutive_only(failure_threshold: u32, cool_down: Duration) -> BreakerSettings {
    BreakerSettings {
        failure_threshold,
        failure_ratio: 0.0,
        min_requests: 0,
        window: Duration::from_secs(60),
        cool_down,
    }
}

fn ratio_only(failure_ratio: f64, min_requests: u32, window: Duration) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: 0,
        failure_ratio,
        min_requests,
        window,
        cool_down: Duration::from_secs(10),
    }
}

/// A breaker that has just opened at `start`, with a 10 s cool-down.
fn opened_breaker(start: Instant) -> CircuitBreaker {
    let breaker = CircuitBreaker::new(consecutive_only(1, 10 * SECOND));
    breaker.record_failure(start);
    assert_eq!(breaker.state(start), CircuitState::Open);
    breaker
}

#[test]
fn a_closed_circuit_allows_every_request() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(BreakerSettings::default());
    for n in 0..100 {
        assert_eq!(breaker.admit(start + n * SECOND), Admission::Allowed);
    }
    assert_eq!(breaker.state(start), CircuitState::Closed);
}

#[test]
fn opens_exactly_at_the_consecutive_failure_threshold() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(consecutive_only(3, 10 * SECOND));
    breaker.record_failure(start);
    breaker.record_failure(start);
    assert_eq!(breaker.state(start), CircuitState::Closed);
    breaker.record_failure(start);
    assert_eq!(breaker.state(start), CircuitState::Open);
}

#[test]
fn a_success_restarts_the_consecutive_count() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(consecutive_only(3, 10 * SECOND));
    for _ in 0..10 {
        breaker.record_failure(start);
        breaker.record_failure(start);
        breaker.record_success(start);
    }
    assert_eq!(breaker.state(start), CircuitState::Closed);
}

#[test]
fn a_zero_threshold_turns_the_consecutive_rule_off() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(consecutive_only(0, 10 * SECOND));
    for _ in 0..1000 {
        breaker.record_failure(start);
    }
    assert_eq!(breaker.state(start), CircuitState::Closed);
}

#[test]
fn the_failure_ratio_opens_once_min_requests_were_seen() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(ratio_only(0.5, 10, 60 * SECOND));
    // Alternating success and failure: the ratio is 0.5 from the second attempt on, but
    // judging it waits for ten attempts.
    for n in 0..4 {
        breaker.record_success(start + n * SECOND);
        breaker.record_failure(start + n * SECOND);
    }
    assert_eq!(breaker.state(start + 4 * SECOND), CircuitState::Closed);
    breaker.record_success(start + 4 * SECOND);
    breaker.record_failure(start + 4 * SECOND);
    assert_eq!(breaker.state(start + 4 * SECOND), CircuitState::Open);
}

#[test]
fn a_failure_ratio_below_the_setting_keeps_the_circuit_closed() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(ratio_only(0.5, 10, 60 * SECOND));
    for n in 0..100 {
        breaker.record_success(start + n * SECOND / 10);
        breaker.record_success(start + n * SECOND / 10);
        breaker.record_failure(start + n * SECOND / 10);
    }
    assert_eq!(breaker.state(start + 10 * SECOND), CircuitState::Closed);
}

#[test]
fn failures_older_than_the_window_no_longer_count() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(ratio_only(0.5, 4, 10 * SECOND));
    for _ in 0..3 {
        breaker.record_failure(start);
    }
    // The three failures have slid out of the window; the fourth failure is alone in it,
    // short of `min_requests`.
    let later = start + 11 * SECOND;
    breaker.record_failure(later);
    assert_eq!(breaker.state(later), CircuitState::Closed);
    // Four successes inside the window: it takes four failures to reach one half.
    for _ in 0..4 {
        breaker.record_success(later);
    }
    breaker.record_failure(later);
    breaker.record_failure(later);
    assert_eq!(breaker.state(later), CircuitState::Closed);
    breaker.record_failure(later);
    assert_eq!(breaker.state(later), CircuitState::Open);
}

#[test]
fn a_zero_ratio_turns_the_ratio_rule_off() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(ratio_only(0.0, 0, 60 * SECOND));
    for _ in 0..1000 {
        breaker.record_failure(start);
    }
    assert_eq!(breaker.state(start), CircuitState::Closed);
}

#[test]
fn a_zero_window_judges_only_the_present_instant() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(ratio_only(1.0, 2, Duration::ZERO));
    breaker.record_failure(start);
    breaker.record_failure(start + SECOND);
    assert_eq!(breaker.state(start + SECOND), CircuitState::Closed);
    breaker.record_failure(start + SECOND);
    assert_eq!(breaker.state(start + SECOND), CircuitState::Open);
}

#[test]
fn an_open_circuit_rejects_with_the_time_left_of_its_cool_down() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    assert_eq!(
        breaker.admit(start),
        Admission::Rejected {
            retry_in: 10 * SECOND
        }
    );
    assert_eq!(
        breaker.admit(start + 7 * SECOND),
        Admission::Rejected {
            retry_in: 3 * SECOND
        }
    );
    assert_eq!(breaker.state(start + 7 * SECOND), CircuitState::Open);
}

#[test]
fn after_the_cool_down_one_probe_goes_out_and_the_rest_wait() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    let after_cool_down = start + 10 * SECOND;
    assert_eq!(breaker.state(after_cool_down), CircuitState::HalfOpen);
    assert_eq!(breaker.admit(after_cool_down), Admission::Probe);
    assert_eq!(
        breaker.admit(after_cool_down + SECOND),
        Admission::Rejected {
            retry_in: 9 * SECOND
        }
    );
    assert_eq!(
        breaker.state(after_cool_down + SECOND),
        CircuitState::HalfOpen
    );
}

#[test]
fn a_successful_probe_closes_the_circuit_with_clean_counts() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(consecutive_only(2, 10 * SECOND));
    breaker.record_failure(start);
    breaker.record_failure(start);
    let after_cool_down = start + 10 * SECOND;
    assert_eq!(breaker.admit(after_cool_down), Admission::Probe);
    breaker.record_success(after_cool_down);
    assert_eq!(breaker.state(after_cool_down), CircuitState::Closed);
    assert_eq!(breaker.admit(after_cool_down), Admission::Allowed);
    // The two failures that opened the circuit are forgotten: one more does not reopen it.
    breaker.record_failure(after_cool_down);
    assert_eq!(breaker.state(after_cool_down), CircuitState::Closed);
}

#[test]
fn a_failed_probe_reopens_the_circuit_for_a_full_cool_down() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    let probe_failed_at = start + 12 * SECOND;
    assert_eq!(breaker.admit(start + 10 * SECOND), Admission::Probe);
    breaker.record_failure(probe_failed_at);
    assert_eq!(breaker.state(probe_failed_at), CircuitState::Open);
    assert_eq!(
        breaker.admit(probe_failed_at),
        Admission::Rejected {
            retry_in: 10 * SECOND
        }
    );
    assert_eq!(
        breaker.admit(probe_failed_at + 10 * SECOND),
        Admission::Probe
    );
}

#[test]
fn a_probe_that_never_reports_is_replaced_after_another_cool_down() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    let probe_sent_at = start + 10 * SECOND;
    assert_eq!(breaker.admit(probe_sent_at), Admission::Probe);
    // Its caller was dropped: no report ever comes.
    assert!(matches!(
        breaker.admit(probe_sent_at + 9 * SECOND),
        Admission::Rejected { .. }
    ));
    assert_eq!(breaker.admit(probe_sent_at + 10 * SECOND), Admission::Probe);
    assert!(matches!(
        breaker.admit(probe_sent_at + 10 * SECOND),
        Admission::Rejected { .. }
    ));
}

#[test]
fn reports_while_open_are_ignored() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    // Late reports from requests admitted before the circuit opened.
    breaker.record_success(start + SECOND);
    assert_eq!(breaker.state(start + SECOND), CircuitState::Open);
    breaker.record_failure(start + 9 * SECOND);
    // The cool-down still ends ten seconds after opening, not after the late failure.
    assert_eq!(breaker.admit(start + 10 * SECOND), Admission::Probe);
}

#[test]
fn a_report_after_the_cool_down_decides_even_before_a_probe_went_out() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    breaker.record_success(start + 10 * SECOND);
    assert_eq!(breaker.state(start + 10 * SECOND), CircuitState::Closed);
}

#[test]
fn a_new_cool_down_applies_to_an_open_circuit() {
    let start = Instant::now();
    let breaker = opened_breaker(start);
    breaker.set_settings(consecutive_only(1, 3 * SECOND));
    assert_eq!(
        breaker.admit(start + 2 * SECOND),
        Admission::Rejected { retry_in: SECOND }
    );
    assert_eq!(breaker.admit(start + 3 * SECOND), Admission::Probe);
}

#[test]
fn a_lowered_threshold_opens_on_the_next_failure() {
    let start = Instant::now();
    let breaker = CircuitBreaker::new(consecutive_only(10, 10 * SECOND));
    for _ in 0..5 {
        breaker.record_failure(start);
    }
    breaker.set_settings(consecutive_only(3, 10 * SECOND));
    assert_eq!(breaker.state(start), CircuitState::Closed);
    breaker.record_failure(start);
    assert_eq!(breaker.state(start), CircuitState::Open);
}

#[test]
fn state_serializes_in_snake_case() -> Result<(), serde_json::Error> {
    assert_eq!(
        serde_json::to_string(&CircuitState::HalfOpen)?,
        r#""half_open""#
    );
    Ok(())
}

#[test]
fn the_breaker_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CircuitBreaker>();
}

#[derive(Debug, Clone)]
enum Op {
    Advance(Duration),
    Admit,
    Succeed,
    Fail,
    /// The newest outstanding probe's caller goes away without reporting.
    DropProbe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..120).prop_map(|millis| Op::Advance(Duration::from_millis(millis))),
        4 => Just(Op::Admit),
        2 => Just(Op::Succeed),
        3 => Just(Op::Fail),
        1 => Just(Op::DropProbe),
    ]
}

fn settings() -> impl Strategy<Value = BreakerSettings> {
    (
        0u32..6,
        prop_oneof![Just(0.0), 0.1f64..=1.0],
        0u32..8,
        0u64..300,
        1u64..100,
    )
        .prop_map(
            |(failure_threshold, failure_ratio, min_requests, window_ms, cool_down_ms)| {
                BreakerSettings {
                    failure_threshold,
                    failure_ratio,
                    min_requests,
                    window: Duration::from_millis(window_ms),
                    cool_down: Duration::from_millis(cool_down_ms),
                }
            },
        )
}

/// What the test knows independently of the breaker's internals.
#[derive(Debug, Default)]
struct Model {
    /// Consecutive failures reported while closed, since it last closed or saw a success.
    consecutive_failures: u32,
    /// When the circuit last opened.
    opened_at: Option<Instant>,
    /// When each probe of the current half-open spell went out, reported or dropped or not:
    /// the breaker cannot know about dropped ones.
    probes_this_spell: Vec<Instant>,
    /// Probes whose callers are still around to report.
    reportable_probes: usize,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_breaker_keeps_its_promises(
        settings in settings(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let breaker = CircuitBreaker::new(settings.clone());
        let cool_down = settings.cool_down;
        let ratio_rule_on = settings.failure_ratio > 0.0;
        let mut now = Instant::now();
        let mut model = Model::default();
        for op in ops {
            let before = breaker.state(now);
            match op {
                Op::Advance(by) => now += by,
                Op::Admit => {
                    let admission = breaker.admit(now);
                    match before {
                        CircuitState::Closed => prop_assert_eq!(admission, Admission::Allowed),
                        CircuitState::Open => {
                            // Open always rejects before the cool-down has elapsed, with
                            // exactly the time left.
                            let opened_at = model.opened_at.ok_or_else(|| {
                                TestCaseError::fail("open without having opened")
                            })?;
                            let elapsed = now.duration_since(opened_at);
                            prop_assert!(elapsed < cool_down);
                            prop_assert_eq!(
                                admission,
                                Admission::Rejected { retry_in: cool_down - elapsed }
                            );
                        }
                        CircuitState::HalfOpen => {
                            // Never more than one live probe: a probe goes out exactly when
                            // every earlier probe of this spell has been silent for a
                            // whole cool-down.
                            let live_probe = model
                                .probes_this_spell
                                .iter()
                                .any(|sent_at| now.duration_since(*sent_at) < cool_down);
                            if live_probe {
                                let rejected = matches!(admission, Admission::Rejected { .. });
                                prop_assert!(rejected, "a second live probe: {:?}", admission);
                            } else {
                                prop_assert_eq!(admission, Admission::Probe);
                                model.probes_this_spell.push(now);
                                model.reportable_probes += 1;
                            }
                        }
                    }
                }
                Op::Succeed => {
                    model.reportable_probes = model.reportable_probes.saturating_sub(1);
                    breaker.record_success(now);
                    if before == CircuitState::Closed {
                        model.consecutive_failures = 0;
                    }
                }
                Op::Fail => {
                    model.reportable_probes = model.reportable_probes.saturating_sub(1);
                    breaker.record_failure(now);
                    if before == CircuitState::Closed {
                        model.consecutive_failures += 1;
                        let must_open = settings.failure_threshold > 0
                            && model.consecutive_failures >= settings.failure_threshold;
                        let opened = breaker.state(now) == CircuitState::Open;
                        // The consecutive rule opens exactly at the threshold; with the ratio
                        // rule on too, it may open earlier but never later.
                        prop_assert!(opened || !must_open);
                        prop_assert!(!opened || must_open || ratio_rule_on);
                    }
                }
                Op::DropProbe => {
                    model.reportable_probes = model.reportable_probes.saturating_sub(1);
                }
            }
            let after = breaker.state(now);
            let allowed = match (&op, before, after) {
                (_, x, y) if x == y => true,
                // Time alone moves an open circuit to half-open, and only at the cool-down.
                (Op::Advance(_), CircuitState::Open, CircuitState::HalfOpen) => model
                    .opened_at
                    .is_some_and(|opened_at| now.duration_since(opened_at) >= cool_down),
                (Op::Fail, CircuitState::Closed | CircuitState::HalfOpen, CircuitState::Open)
                | (Op::Succeed, CircuitState::HalfOpen, CircuitState::Closed) => true,
                _ => false,
            };
            prop_assert!(allowed, "{:?} moved the circuit from {:?} to {:?}", op, before, after);
            // A report in half-open decides: a success closes, a failure reopens.
            if before == CircuitState::HalfOpen {
                match op {
                    Op::Succeed => prop_assert_eq!(after, CircuitState::Closed),
                    Op::Fail => prop_assert_eq!(after, CircuitState::Open),
                    _ => {}
                }
            }
            if after != before {
                if after == CircuitState::Open {
                    model.opened_at = Some(now);
                }
                // Any change either leaves or enters Closed, and both restart the count.
                model.consecutive_failures = 0;
                if before == CircuitState::HalfOpen {
                    model.probes_this_spell.clear();
                    model.reportable_probes = 0;
                }
            }
        }
    }
}
