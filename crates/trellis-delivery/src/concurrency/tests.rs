use proptest::prelude::*;
use tokio::time::timeout;

use super::*;

const RTT: Duration = Duration::from_millis(100);

fn adaptive(min: usize, max: usize, initial: usize) -> ConcurrencySettings {
    ConcurrencySettings { min, max, initial }
}

/// Feeds `controller` one interval's worth of completions (each `rtt` long, ending at
/// `*now`), with the limit reached or not, and returns the limit afterwards.
fn run_interval(
    controller: &mut AimdController,
    now: &mut Instant,
    rtt: Duration,
    signal: Signal,
    limit_reached: bool,
) -> usize {
    if limit_reached {
        controller.note_limit_reached();
    }
    for _ in 0..controller.limit {
        controller.observe(*now, rtt, signal);
    }
    *now += rtt;
    controller.observe(*now, rtt, signal)
}

/// A controller whose RTT baseline is `rtt`, at limit `initial`.
fn with_baseline(settings: &ConcurrencySettings, rtt: Duration) -> (AimdController, Instant) {
    let mut controller = AimdController::new(&settings.normalized());
    let mut now = Instant::now();
    for _ in 0..3 {
        run_interval(&mut controller, &mut now, rtt, Signal::Ok, false);
    }
    assert_eq!(controller.limit, settings.initial);
    (controller, now)
}

#[test]
fn steady_rtt_under_saturation_grows_the_limit_to_max() {
    let (mut controller, mut now) = with_baseline(&adaptive(1, 10, 1), RTT);
    let mut limits = Vec::new();
    for _ in 0..20 {
        limits.push(run_interval(
            &mut controller,
            &mut now,
            RTT,
            Signal::Ok,
            true,
        ));
    }
    assert_eq!(limits[..9], [2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert!(limits[9..].iter().all(|limit| *limit == 10));
}

#[test]
fn without_saturation_the_limit_does_not_grow() {
    let (mut controller, mut now) = with_baseline(&adaptive(1, 10, 3), RTT);
    for _ in 0..20 {
        run_interval(&mut controller, &mut now, RTT, Signal::Ok, false);
    }
    assert_eq!(controller.limit, 3);
}

#[test]
fn backpressure_decreases_multiplicatively_down_to_min() {
    let (mut controller, mut now) = with_baseline(&adaptive(5, 100, 50), RTT);
    let mut limits = Vec::new();
    for _ in 0..30 {
        limits.push(run_interval(
            &mut controller,
            &mut now,
            RTT,
            Signal::Backpressure,
            true,
        ));
    }
    assert_eq!(limits[..5], [45, 40, 36, 32, 28]);
    assert!(limits.windows(2).all(|pair| pair[1] <= pair[0]));
    assert_eq!(limits.last(), Some(&5));
}

#[test]
fn backpressure_decreases_even_before_a_baseline() {
    let mut controller = AimdController::new(&adaptive(1, 100, 20));
    let mut now = Instant::now();
    // Every request times out: no RTT ever feeds the averages.
    for _ in 0..3 {
        run_interval(
            &mut controller,
            &mut now,
            Duration::from_secs(30),
            Signal::Backpressure,
            true,
        );
    }
    assert!(controller.limit < 20, "limit {}", controller.limit);
}

#[test]
fn the_limit_decreases_at_most_once_per_interval() {
    let (mut controller, now) = with_baseline(&adaptive(1, 100, 50), RTT);
    // A 429 every hundredth of an RTT: the interval that began at `now` ends with the
    // hundredth, and the next one is only half over by the hundred-and-fiftieth.
    for n in 1..=150 {
        controller.observe(now + n * RTT / 100, RTT, Signal::Backpressure);
    }
    assert_eq!(controller.limit, 45);
}

#[test]
fn a_clearly_rising_rtt_decreases_the_limit() {
    let (mut controller, mut now) = with_baseline(&adaptive(1, 100, 20), RTT);
    let limit = run_interval(&mut controller, &mut now, 3 * RTT, Signal::Ok, true);
    assert_eq!(limit, 18);
}

#[test]
fn a_slightly_rising_rtt_holds_the_limit() {
    let (mut controller, mut now) = with_baseline(&adaptive(1, 100, 20), RTT);
    let limit = run_interval(&mut controller, &mut now, RTT * 21 / 20, Signal::Ok, true);
    assert_eq!(limit, 20);
}

#[test]
fn fixed_settings_never_move_the_limit() {
    let mut controller = AimdController::new(&ConcurrencySettings::fixed(7).normalized());
    let mut now = Instant::now();
    for (rtt, signal) in [
        (RTT, Signal::Ok),
        (RTT, Signal::Ok),
        (10 * RTT, Signal::Ok),
        (RTT, Signal::Backpressure),
        (RTT, Signal::Ok),
    ] {
        for _ in 0..5 {
            let limit = run_interval(&mut controller, &mut now, rtt, signal, true);
            assert_eq!(limit, 7);
        }
    }
}

#[test]
fn nonsensical_settings_are_made_usable() {
    assert_eq!(
        adaptive(0, 0, 0).normalized(),
        ConcurrencySettings::fixed(1)
    );
    assert_eq!(
        adaptive(4, 2, 9).normalized(),
        ConcurrencySettings::fixed(4)
    );
    assert_eq!(adaptive(1, 8, 20).normalized(), adaptive(1, 8, 8));
    assert!(ConcurrencySettings::fixed(3).is_fixed());
    assert!(!ConcurrencySettings::default().is_fixed());
}

/// Lets every runnable task run until it waits.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Whether `limiter` hands out a permit without waiting on a permit to come back. Under
/// paused time, `timeout` fires only once every task is idle, so this asserts nothing about
/// wall-clock time.
async fn acquires_now(limiter: &ConcurrencyLimiter) -> Option<Permit> {
    timeout(Duration::from_secs(1), limiter.acquire())
        .await
        .ok()
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_at_the_limit_and_wakes_when_a_permit_returns() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(2));
    let first = limiter.acquire().await;
    let _second = limiter.acquire().await;
    assert_eq!(limiter.in_flight(), 2);

    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire().await }
    });
    settle().await;
    assert!(!waiter.is_finished());

    drop(first);
    let third = waiter.await;
    assert!(third.is_ok());
    assert_eq!(limiter.in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(1));
    let held = limiter.acquire().await;
    let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
    for waiter_idx in 0..3 {
        let limiter = limiter.clone();
        let served_tx = served_tx.clone();
        tokio::spawn(async move {
            let permit = limiter.acquire().await;
            let _ = served_tx.send(waiter_idx);
            drop(permit);
        });
        // Each waiter queues before the next one is spawned.
        settle().await;
    }
    drop(held);
    let mut order = Vec::new();
    for _ in 0..3 {
        order.extend(served_rx.recv().await);
    }
    assert_eq!(order, [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_takes_no_slot() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(1));
    let held = limiter.acquire().await;
    assert!(acquires_now(&limiter).await.is_none());
    drop(held);
    assert_eq!(limiter.in_flight(), 0);
    let permit = acquires_now(&limiter).await;
    assert!(permit.is_some());
    assert_eq!(limiter.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lower_limit_takes_effect_as_permits_return() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(4));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(limiter.acquire().await);
    }
    limiter.set_settings(ConcurrencySettings::fixed(2));
    assert_eq!(limiter.limit(), 2);
    assert_eq!(limiter.in_flight(), 4);

    // Two of the four slots are swallowed as they come back...
    drop(held.pop());
    drop(held.pop());
    assert!(acquires_now(&limiter).await.is_none());
    // ...and only then does a returning slot free a place again.
    drop(held.pop());
    let permit = acquires_now(&limiter).await;
    assert!(permit.is_some());
    assert!(acquires_now(&limiter).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_lower_limit_removes_idle_slots_at_once() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(4));
    limiter.set_settings(ConcurrencySettings::fixed(2));
    let _first = limiter.acquire().await;
    let _second = limiter.acquire().await;
    assert!(acquires_now(&limiter).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_higher_limit_wakes_waiters() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(1));
    let _held = limiter.acquire().await;
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire().await }
    });
    settle().await;
    assert!(!waiter.is_finished());
    limiter.set_settings(ConcurrencySettings::fixed(2));
    assert!(waiter.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_first_cancels_owed_slots() {
    let limiter = ConcurrencyLimiter::new(ConcurrencySettings::fixed(4));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(limiter.acquire().await);
    }
    limiter.set_settings(ConcurrencySettings::fixed(2));
    limiter.set_settings(ConcurrencySettings::fixed(3));
    // Four are still in flight against a limit of three: adding a free slot instead of
    // forgiving an owed one would let a fifth through.
    assert!(acquires_now(&limiter).await.is_none());
    held.clear();
    assert_eq!(limiter.in_flight(), 0);
    let mut reacquired = Vec::new();
    for _ in 0..3 {
        reacquired.extend(acquires_now(&limiter).await);
    }
    assert_eq!(reacquired.len(), 3);
    assert!(acquires_now(&limiter).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn completions_under_load_grow_the_limit() {
    let limiter = ConcurrencyLimiter::new(adaptive(1, 4, 1));
    for _ in 0..40 {
        let mut permits = Vec::new();
        for _ in 0..limiter.limit() {
            permits.push(limiter.acquire().await);
        }
        tokio::time::advance(RTT).await;
        for permit in permits {
            permit.complete(RTT, Signal::Ok);
        }
    }
    assert_eq!(limiter.limit(), 4);
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_completions_shrink_the_limit() {
    let limiter = ConcurrencyLimiter::new(adaptive(1, 64, 20));
    for _ in 0..5 {
        let permit = limiter.acquire().await;
        tokio::time::advance(RTT).await;
        permit.complete(RTT, Signal::Backpressure);
    }
    assert!(limiter.limit() < 20, "limit {}", limiter.limit());
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_permit_frees_its_slot_without_feedback() {
    let limiter = ConcurrencyLimiter::new(adaptive(1, 64, 20));
    for _ in 0..50 {
        let permit = limiter.acquire().await;
        tokio::time::advance(RTT).await;
        drop(permit);
    }
    assert_eq!(limiter.limit(), 20);
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn limiters_and_permits_can_cross_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ConcurrencyLimiter>();
    assert_send_sync::<Permit>();
}

#[derive(Debug, Clone)]
enum ControllerOp {
    Complete {
        after: Duration,
        rtt: Duration,
        signal: Signal,
    },
    ReachLimit,
    SetBounds {
        min: usize,
        max: usize,
    },
}

fn controller_op() -> impl Strategy<Value = ControllerOp> {
    let signal = prop_oneof![4 => Just(Signal::Ok), 1 => Just(Signal::Backpressure)];
    prop_oneof![
        8 => (0u64..300, 1u64..500, signal).prop_map(|(after_ms, rtt_ms, signal)| {
            ControllerOp::Complete {
                after: Duration::from_millis(after_ms),
                rtt: Duration::from_millis(rtt_ms),
                signal,
            }
        }),
        3 => Just(ControllerOp::ReachLimit),
        1 => (0usize..20, 0usize..40).prop_map(|(min, max)| ControllerOp::SetBounds { min, max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_limit_stays_within_bounds_and_moves_by_aimd_steps(
        min in 0usize..20,
        max in 0usize..40,
        initial in 0usize..50,
        ops in prop::collection::vec(controller_op(), 1..200),
    ) {
        let settings = ConcurrencySettings { min, max, initial }.normalized();
        let mut controller = AimdController::new(&settings);
        let mut now = Instant::now();
        prop_assert!(settings.min <= controller.limit && controller.limit <= settings.max);
        for op in ops {
            let before = controller.limit;
            match op {
                ControllerOp::Complete { after, rtt, signal } => {
                    now += after;
                    let limit = controller.observe(now, rtt, signal);
                    prop_assert_eq!(limit, controller.limit);
                    let decreased = ((before as f64 * DECREASE_RATIO) as usize).max(controller.min);
                    prop_assert!(
                        limit == before || limit == before + 1 || limit == decreased,
                        "{} -> {}", before, limit
                    );
                    if controller.is_fixed() {
                        prop_assert_eq!(limit, before);
                    }
                }
                ControllerOp::ReachLimit => controller.note_limit_reached(),
                ControllerOp::SetBounds { min, max } => {
                    let bounds = ConcurrencySettings { min, max, initial: 0 }.normalized();
                    controller.set_bounds(bounds.min, bounds.max);
                }
            }
            prop_assert!(1 <= controller.min);
            prop_assert!(controller.min <= controller.limit && controller.limit <= controller.max);
        }
    }
}
