//! Adaptive concurrency per target URL: how many requests may be in flight to one URL at once.
//! The limit is found by AIMD on round-trip time, after Vector's Adaptive Request Concurrency
//! (ARC), or fixed by configuration.
//!
//! # Algorithm
//! The limit starts at `initial` and moves within `[min, max]`; `min == max` fixes it.
//! - Completions are grouped into *observation intervals*, each about one mean round-trip time
//!   long. An interval gathers the mean RTT of its `Signal::Ok` completions (a timeout's duration
//!   says nothing about the target's latency, so back-pressure RTTs are left out), whether any
//!   completion reported back-pressure, and whether the limit was reached: a request found no
//!   free slot, or in-flight requests reached the limit.
//! - The past is an exponentially weighted mean and variance of earlier intervals' mean RTTs.
//! - When an interval ends there is at most one decision:
//!   - **decrease** to `max(min, floor(limit × 0.9))` on back-pressure, or when the interval's
//!     mean RTT exceeds the past mean by more than 2.5 standard deviations (and by at least a
//!     tenth of the mean, so that a very steady target is not throttled by jitter);
//!   - otherwise **increase** by one, up to `max`, if the limit was reached and the interval's
//!     mean RTT was not above the past mean;
//!   - otherwise hold.
//!
//!   Growing only when the RTT did not rise is what stops the limit short of the target's
//!   queueing point: past it, every extra request in flight only adds to the RTT. Growing only
//!   when the limit was reached keeps it from climbing on evidence it never had.
//!
//! The constants are Vector's defaults (`ewma_alpha` 0.4, `decrease_ratio` 0.9,
//! `rtt_deviation_scale` 2.5); see `delivery-peers.md` §2.2. One difference: Vector never
//! decreases before a first successful RTT has set the baseline, so a target that only ever
//! times out keeps its limit; here back-pressure decreases the limit with or without a baseline.
//!
//! # Enforcement
//! A tokio `Semaphore` holds one permit per free slot. Its waiters queue in FIFO order and leave
//! the queue cleanly when their `acquire` future is dropped, which gives [`ConcurrencyLimiter::acquire`]
//! its fairness and cancel safety. Growing adds permits. Shrinking removes idle permits at once
//! and swallows busy ones as they come back, so a lower limit takes effect as requests finish,
//! never by cutting one short.
//!
//! This module does not classify responses (the caller says `Ok` or `Backpressure`) and does not
//! publish metrics; the engine reads [`ConcurrencyLimiter::limit`] and
//! [`ConcurrencyLimiter::in_flight`] for that.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds for one URL's concurrency. Live-updatable through
/// [`ConcurrencyLimiter::set_settings`].
///
/// Settings that make no sense are made usable rather than refused, because the limiter has no
/// way to report an error and config validation is where refusals belong: `min` is raised to
/// one (a zero limit would stall the URL for good), `max` to `min`, and `initial` is clamped
/// into `[min, max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencySettings {
    pub min: usize,
    pub max: usize,
    /// Where the limit starts. Ignored by `set_settings`, which keeps the current limit.
    pub initial: usize,
}

impl ConcurrencySettings {
    /// Exactly `n` requests in flight, never adapted.
    pub fn fixed(n: usize) -> Self {
        Self {
            min: n,
            max: n,
            initial: n,
        }
    }

    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }

    fn normalized(&self) -> Self {
        let min = self.min.clamp(1, Semaphore::MAX_PERMITS);
        let max = self.max.clamp(min, Semaphore::MAX_PERMITS);
        Self {
            min,
            max,
            initial: self.initial.clamp(min, max),
        }
    }
}

impl Default for ConcurrencySettings {
    /// - `initial: 1`, as Vector: nothing is known of a new target's capacity, and the first
    ///   few RTTs both set the baseline and grow the limit by one each while latency holds.
    /// - `min: 1`: back-pressure may bring a struggling target down to one request at a time.
    /// - `max: 64` rather than Vector's 200: Vector's sinks mostly feed log and metrics
    ///   clusters, while a webhook receiver is usually an ordinary application server. 64 is
    ///   Redpanda Connect's `http_client` `max_in_flight`, and it caps the sockets one URL can
    ///   hold when its latency is flat enough for the limit to keep climbing.
    fn default() -> Self {
        Self {
            min: 1,
            max: 64,
            initial: 1,
        }
    }
}

/// What a completed request says about the target's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The target answered without complaining about load; its RTT feeds the averages.
    Ok,
    /// The target is overloaded or unreachable: a timeout, 429, 503, connection refused or
    /// reset.
    Backpressure,
}

/// The concurrency limit of one URL, shared by every delivery to it. Cloning is cheap and clones
/// share the limit.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    shared: Arc<Shared>,
}

impl ConcurrencyLimiter {
    pub fn new(settings: ConcurrencySettings) -> Self {
        let settings = settings.normalized();
        Self {
            shared: Arc::new(Shared {
                free_slots: Arc::new(Semaphore::new(settings.initial)),
                state: Mutex::new(LimiterState {
                    controller: AimdController::new(&settings),
                    in_flight: 0,
                    owed_slots: 0,
                }),
            }),
        }
    }

    /// Waits for a free slot, first come first served. Cancel-safe: dropping the future gives up
    /// the place in the queue and takes no slot.
    pub async fn acquire(&self) -> Permit {
        let slot = match Arc::clone(&self.shared.free_slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_no_free_slot) => {
                // A request that has to wait is the evidence that lets the limit grow.
                self.shared.lock().controller.note_limit_reached();
                Arc::clone(&self.shared.free_slots)
                    .acquire_owned()
                    .await
                    // `acquire_owned` fails only on a closed semaphore, and this one is private
                    // and never closed.
                    .expect("the free-slot semaphore is never closed")
            }
        };
        let mut state = self.shared.lock();
        state.in_flight += 1;
        if state.in_flight >= state.controller.limit {
            state.controller.note_limit_reached();
        }
        drop(state);
        Permit {
            shared: Arc::clone(&self.shared),
            slot: Some(slot),
        }
    }

    pub fn limit(&self) -> usize {
        self.shared.lock().controller.limit
    }

    /// Requests holding a permit. Briefly above `limit` after the limit fell, until enough of
    /// them complete.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Applies new bounds at once and clamps the current limit into them; `initial` is ignored.
    /// A lower limit takes effect as permits come back: requests in flight are never cut short.
    pub fn set_settings(&self, settings: ConcurrencySettings) {
        let settings = settings.normalized();
        let mut state = self.shared.lock();
        let old_limit = state.controller.limit;
        state.controller.set_bounds(settings.min, settings.max);
        let new_limit = state.controller.limit;
        self.shared.resize(&mut state, old_limit, new_limit);
    }
}

/// One slot of a URL's concurrency, held for the duration of one request.
#[derive(Debug)]
#[must_use = "dropping a permit frees its slot at once"]
pub struct Permit {
    shared: Arc<Shared>,
    /// `None` only once `complete` or `drop` has handed it back.
    slot: Option<OwnedSemaphorePermit>,
}

impl Permit {
    /// Frees the slot and feeds the request's round-trip time and outcome to the limit.
    /// Dropping a permit instead frees the slot without feedback, which is right for requests
    /// that never reached the target (shutdown, an open circuit, a refused address).
    pub fn complete(mut self, rtt: Duration, signal: Signal) {
        // tokio's clock rather than std's, so that tests running on paused time see the time
        // they advance.
        let now = tokio::time::Instant::now().into_std();
        if let Some(slot) = self.slot.take() {
            self.shared
                .release(slot, Some(Feedback { now, rtt, signal }));
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.shared.release(slot, None);
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// One permit per free slot.
    free_slots: Arc<Semaphore>,
    state: Mutex<LimiterState>,
}

/// Kept so that `free_slots.available_permits() + in_flight == limit + owed_slots`, give or take
/// permits that the semaphore has handed to a waiter whose `acquire` has not resumed yet.
#[derive(Debug)]
struct LimiterState {
    controller: AimdController,
    in_flight: usize,
    /// Slots to swallow as they come back, because the limit fell while they were busy.
    owed_slots: usize,
}

#[derive(Debug, Clone, Copy)]
struct Feedback {
    now: Instant,
    rtt: Duration,
    signal: Signal,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LimiterState> {
        // The critical sections are a few arithmetic steps and semaphore calls that leave the
        // state consistent at every step, so even a poisoned lock would hold nothing half
        // updated: carry on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, slot: OwnedSemaphorePermit, feedback: Option<Feedback>) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(Feedback { now, rtt, signal }) = feedback {
            let old_limit = state.controller.limit;
            let new_limit = state.controller.observe(now, rtt, signal);
            self.resize(&mut state, old_limit, new_limit);
        }
        if state.owed_slots > 0 {
            state.owed_slots -= 1;
            slot.forget();
        } else {
            drop(slot);
        }
    }

    /// Makes the semaphore match a new limit. Called with the state locked, so that two resizes
    /// cannot interleave.
    fn resize(&self, state: &mut LimiterState, old_limit: usize, new_limit: usize) {
        if new_limit > old_limit {
            let grow_by = new_limit - old_limit;
            // Slots still owed from an earlier shrink are simply kept instead.
            let kept = grow_by.min(state.owed_slots);
            state.owed_slots -= kept;
            self.free_slots.add_permits(grow_by - kept);
        } else if new_limit < old_limit {
            let shrink_by = old_limit - new_limit;
            let removed_now = self.free_slots.forget_permits(shrink_by);
            state.owed_slots += shrink_by - removed_now;
        }
    }
}

/// Vector's `ewma_alpha`: the weight of the latest interval in the past RTT averages.
const RTT_EWMA_ALPHA: f64 = 0.4;
/// Vector's `decrease_ratio`.
const DECREASE_RATIO: f64 = 0.9;
/// Vector's `rtt_deviation_scale`: standard deviations above the past mean that count as the
/// RTT rising.
const RTT_DEVIATION_SCALE: f64 = 2.5;
/// The smallest rise, as a share of the past mean, that counts as the RTT rising. The variance
/// of a very steady target tends to zero, and without a floor any jitter at all would cut its
/// limit.
const MIN_RTT_RISE_RATIO: f64 = 0.1;
/// Equal RTTs can average to a hair above themselves in floating point (Vector rounds RTTs in
/// its tests for this reason); "not above the past mean" allows for that hair.
const RTT_COMPARISON_SLACK: f64 = 1e-9;

/// The AIMD decision rule, without slots or waiting: plain arithmetic over what completions
/// report, with time passed in.
#[derive(Debug)]
struct AimdController {
    min: usize,
    max: usize,
    limit: usize,
    /// Averages over earlier intervals' mean RTTs, in seconds; `None` until an interval has had
    /// a successful RTT.
    past_rtt: Option<RttAverages>,
    interval: ObservationInterval,
}

#[derive(Debug, Default)]
struct ObservationInterval {
    /// `None` until the first completion, which starts the first interval.
    ends_at: Option<Instant>,
    rtt_sum_secs: f64,
    n_rtts: u32,
    had_backpressure: bool,
    limit_reached: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct RttAverages {
    mean: f64,
    variance: f64,
}

impl RttAverages {
    fn updated(self, sample: f64) -> Self {
        // The incremental exponentially weighted mean and variance (Finch, "Incremental
        // calculation of weighted mean and variance", 2009), as in Vector's `EwmaVar`.
        let difference = sample - self.mean;
        let increment = RTT_EWMA_ALPHA * difference;
        Self {
            mean: self.mean + increment,
            variance: (1.0 - RTT_EWMA_ALPHA) * (self.variance + difference * increment),
        }
    }

    /// How far above the mean an interval's RTT must be to count as rising.
    fn rise_allowance(self) -> f64 {
        (RTT_DEVIATION_SCALE * self.variance.sqrt()).max(MIN_RTT_RISE_RATIO * self.mean)
    }
}

impl AimdController {
    /// `settings` must be normalized.
    fn new(settings: &ConcurrencySettings) -> Self {
        Self {
            min: settings.min,
            max: settings.max,
            limit: settings.initial,
            past_rtt: None,
            interval: ObservationInterval::default(),
        }
    }

    fn is_fixed(&self) -> bool {
        self.min == self.max
    }

    fn note_limit_reached(&mut self) {
        self.interval.limit_reached = true;
    }

    /// `min` and `max` must be normalized.
    fn set_bounds(&mut self, min: usize, max: usize) {
        self.min = min;
        self.max = max;
        self.limit = self.limit.clamp(min, max);
    }

    /// Takes in one completion and returns the limit, changed if it ended an interval.
    fn observe(&mut self, now: Instant, rtt: Duration, signal: Signal) -> usize {
        match signal {
            Signal::Ok => {
                self.interval.rtt_sum_secs += rtt.as_secs_f64();
                self.interval.n_rtts = self.interval.n_rtts.saturating_add(1);
            }
            Signal::Backpressure => self.interval.had_backpressure = true,
        }
        let Some(ends_at) = self.interval.ends_at else {
            self.interval.ends_at = Some(self.next_interval_end(now, rtt));
            return self.limit;
        };
        if now < ends_at {
            return self.limit;
        }
        let interval_rtt = (self.interval.n_rtts > 0)
            .then(|| self.interval.rtt_sum_secs / f64::from(self.interval.n_rtts));
        if !self.is_fixed() {
            self.limit = self.decide(interval_rtt);
        }
        if let Some(interval_rtt) = interval_rtt {
            self.past_rtt = Some(match self.past_rtt {
                None => RttAverages {
                    mean: interval_rtt,
                    variance: 0.0,
                },
                Some(past_rtt) => past_rtt.updated(interval_rtt),
            });
        }
        self.interval = ObservationInterval {
            ends_at: Some(self.next_interval_end(now, rtt)),
            ..ObservationInterval::default()
        };
        self.limit
    }

    fn decide(&self, interval_rtt: Option<f64>) -> usize {
        // A float-to-int `as` rounds toward zero, which for a non-negative product is the floor
        // wanted; for any limit of at least one the result is at least one lower.
        let decreased = ((self.limit as f64 * DECREASE_RATIO) as usize).max(self.min);
        if self.interval.had_backpressure {
            return decreased;
        }
        let (Some(past_rtt), Some(interval_rtt)) = (self.past_rtt, interval_rtt) else {
            // No baseline to compare with yet.
            return self.limit;
        };
        if interval_rtt > past_rtt.mean + past_rtt.rise_allowance() {
            return decreased;
        }
        if self.interval.limit_reached
            && interval_rtt <= past_rtt.mean * (1.0 + RTT_COMPARISON_SLACK)
        {
            return (self.limit + 1).min(self.max);
        }
        self.limit
    }

    /// About one mean RTT from now: long enough for the requests in flight to complete and show
    /// the effect of the last decision, short enough to react within a few round trips.
    fn next_interval_end(&self, now: Instant, latest_rtt: Duration) -> Instant {
        let length = self
            .past_rtt
            .and_then(|past_rtt| Duration::try_from_secs_f64(past_rtt.mean).ok())
            .unwrap_or(latest_rtt);
        now.checked_add(length).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests;
