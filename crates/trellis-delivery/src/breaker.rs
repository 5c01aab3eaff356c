//! A circuit breaker per target URL: after enough failures it stops sending to a target that is
//! down, lets a single probe through once a cool-down has passed, and closes again when the probe
//! succeeds.
//!
//! While the circuit is open, records wait for it: the engine does not count the wait as a failed
//! attempt and does not dead-letter a record for it. That is the deliberate difference from Dapr,
//! whose open breaker turns into a permanent error.
//!
//! The breaker only counts what it is told. Which outcomes say something about the target
//! (connection errors, timeouts, 5xx, 429) is the caller's decision, and so is publishing the
//! state to metrics and to the status API. Time is always a parameter, never read from a clock
//! here, so that tests drive it.
//!
//! # States
//! - **Closed**: every request is allowed. The circuit opens on `failure_threshold` consecutive
//!   failures, or when failures make up at least `failure_ratio` of the attempts seen in the last
//!   `window`, once that window holds `min_requests` attempts.
//! - **Open**: every request is rejected until `cool_down` has passed since the circuit opened.
//!   Reports that arrive meanwhile come from requests admitted before it opened and are ignored,
//!   so a burst of late timeouts cannot keep pushing the cool-down back.
//! - **Half-open**: the cool-down has passed. The first `admit` gets a probe and everyone else is
//!   rejected until a report arrives: a success closes the circuit, a failure opens it for another
//!   full cool-down. A probe whose caller vanished without reporting would wedge the circuit, so
//!   after another `cool_down` without a report the next `admit` gets a new probe.
//!
//! Reports carry no identity, so in half-open the breaker cannot tell the probe's report from a
//! late report of a request admitted before the circuit opened. It takes whichever comes first:
//! either one is news about the target from after the cool-down.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How the breaker decides to open and when it tries again. Live-updatable through
/// [`CircuitBreaker::set_settings`].
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit; 0 turns this rule off.
    pub failure_threshold: u32,
    /// Share of failed attempts within `window` that opens the circuit (at or above it);
    /// 0.0 turns this rule off.
    pub failure_ratio: f64,
    /// Attempts the window must hold before `failure_ratio` is judged, so that two failures out
    /// of three attempts on a quiet target do not open it.
    pub min_requests: u32,
    /// How far back `failure_ratio` looks.
    pub window: Duration,
    /// How long the circuit stays open before a probe is let through; also how long a probe may
    /// stay silent before it is presumed lost and another one is allowed.
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    /// Dapr is the only peer with a circuit breaker (`sony/gobreaker` underneath; see
    /// `delivery-peers.md` §4), so its defaults are the starting point:
    /// - `failure_threshold: 5`: Dapr trips on `consecutiveFailures > 5`, i.e. on the sixth. We
    ///   trip on the fifth so that the number a user reads in the config is the number of
    ///   failures that opens the circuit.
    /// - `failure_ratio: 0.5` over `window: 60s`, judged from `min_requests: 20`: Dapr's default
    ///   trip has no ratio rule, and so misses a target that fails most requests but succeeds
    ///   often enough to reset the consecutive count (a flapping load balancer member, say).
    ///   Half the attempts failing is well beyond what retries can paper over, and 20 attempts
    ///   keep a quiet target from being judged on a handful. Dapr's 60 s `timeout` sets the scale
    ///   for the window.
    /// - `cool_down: 30s`: half of Dapr's 60 s `timeout`. A probe every 30 s costs a dead target
    ///   nothing, and 30 s is also where Vector caps its retry backoff, so a record waiting on an
    ///   open circuit waits no longer than one waiting out the longest backoff of the best-known
    ///   peer.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The state of a circuit, as shown in the status API and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

/// The answer to "may I send a request to this target now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed: send, and report the outcome.
    Allowed,
    /// The circuit is half-open and this request is its probe: send, and report the outcome,
    /// which decides whether the circuit closes.
    Probe,
    /// Do not send. Ask again after `retry_in`. In half-open this is an upper bound: the circuit
    /// may close sooner, as soon as the probe reports.
    Rejected { retry_in: Duration },
}

/// One circuit, shared by every delivery to one target URL. Cheap to call from many tasks: each
/// method holds a `std::sync::Mutex` for a few arithmetic steps and never across an `.await`.
#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            inner: Mutex::new(Inner {
                recent: RollingCounts::new(settings.window),
                settings,
                phase: Phase::Closed,
                consecutive_failures: 0,
            }),
        }
    }

    /// Whether a request may go to the target at `now`. Only `Allowed` and `Probe` expect a
    /// report through [`Self::record_success`] or [`Self::record_failure`].
    pub fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.lock();
        inner.settle(now);
        let cool_down = inner.settings.cool_down;
        match inner.phase {
            Phase::Closed => Admission::Allowed,
            Phase::Open { since } => Admission::Rejected {
                retry_in: time_left(since, cool_down, now).unwrap_or(Duration::ZERO),
            },
            Phase::HalfOpen {
                probe_admitted_at: Some(probe_admitted_at),
            } => match time_left(probe_admitted_at, cool_down, now) {
                Some(retry_in) => Admission::Rejected { retry_in },
                // The probe has been silent for a whole cool-down: presume it lost.
                None => inner.admit_probe(now),
            },
            Phase::HalfOpen {
                probe_admitted_at: None,
            } => inner.admit_probe(now),
        }
    }

    /// Reports a request that the target answered well.
    pub fn record_success(&self, now: Instant) {
        let mut inner = self.lock();
        inner.settle(now);
        match inner.phase {
            Phase::Closed => {
                inner.consecutive_failures = 0;
                inner.recent.record(now, Outcome::Success);
            }
            Phase::Open { .. } => {}
            Phase::HalfOpen { .. } => inner.close(),
        }
    }

    /// Reports a failure that says something about the target.
    pub fn record_failure(&self, now: Instant) {
        let mut inner = self.lock();
        inner.settle(now);
        match inner.phase {
            Phase::Closed => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                inner.recent.record(now, Outcome::Failure);
                if inner.should_open(now) {
                    inner.open(now);
                }
            }
            Phase::Open { .. } => {}
            Phase::HalfOpen { .. } => inner.open(now),
        }
    }

    /// The state at `now`. An open circuit whose cool-down has passed reports `HalfOpen` even if
    /// no probe has gone out yet: the next `admit` will get one, and that is what an operator
    /// looking at the status wants to know. This is also what Dapr's breaker (gobreaker) reports.
    pub fn state(&self, now: Instant) -> CircuitState {
        let mut inner = self.lock();
        inner.settle(now);
        match inner.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Applies new settings at once. A new `cool_down` applies to a circuit that is already open
    /// or probing, counted from when it opened or probed. A new `window` drops the failure-ratio
    /// history, because counts kept in buckets of the old width cannot be re-cut to the new one.
    /// Lowering `failure_threshold` below the current run of failures opens the circuit on the
    /// next failure, not here: opening needs a `now`.
    pub fn set_settings(&self, settings: BreakerSettings) {
        let mut inner = self.lock();
        if settings.window != inner.settings.window {
            inner.recent = RollingCounts::new(settings.window);
        }
        inner.settings = settings;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections are plain arithmetic that leaves `Inner` consistent at every
        // step, so even a poisoned lock would hold nothing half updated: carry on with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Inner {
    settings: BreakerSettings,
    phase: Phase,
    consecutive_failures: u32,
    recent: RollingCounts,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        since: Instant,
    },
    /// `probe_admitted_at` is `None` until the first `admit` after the cool-down.
    HalfOpen {
        probe_admitted_at: Option<Instant>,
    },
}

impl Inner {
    /// Moves an open circuit whose cool-down has passed to half-open. Doing this lazily, on each
    /// call, keeps the breaker free of timers.
    fn settle(&mut self, now: Instant) {
        if let Phase::Open { since } = self.phase
            && time_left(since, self.settings.cool_down, now).is_none()
        {
            self.phase = Phase::HalfOpen {
                probe_admitted_at: None,
            };
        }
    }

    fn admit_probe(&mut self, now: Instant) -> Admission {
        self.phase = Phase::HalfOpen {
            probe_admitted_at: Some(now),
        };
        Admission::Probe
    }

    fn should_open(&mut self, now: Instant) -> bool {
        let threshold = self.settings.failure_threshold;
        if threshold > 0 && self.consecutive_failures >= threshold {
            return true;
        }
        // `> 0.0` is also false for NaN, so a NaN ratio turns the rule off instead of doing
        // something surprising.
        let ratio_rule_on = self.settings.failure_ratio > 0.0;
        if !ratio_rule_on {
            return false;
        }
        let totals = self.recent.totals(now);
        totals.attempts > 0
            && totals.attempts >= u64::from(self.settings.min_requests)
            && totals.failures as f64 >= self.settings.failure_ratio * totals.attempts as f64
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open { since: now };
        self.reset_counts();
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.reset_counts();
    }

    /// A circuit that closes again starts from a clean slate: the failures that opened it must
    /// not count towards opening it a second time.
    fn reset_counts(&mut self) {
        self.consecutive_failures = 0;
        self.recent.clear();
    }
}

/// Time left of `period` started at `since`, or `None` once it has fully elapsed. A `now` before
/// `since` (callers on other threads may read the clock a little earlier) counts as no time
/// elapsed. Never adds to an `Instant`, so no overflow is possible.
fn time_left(since: Instant, period: Duration, now: Instant) -> Option<Duration> {
    period
        .checked_sub(now.saturating_duration_since(since))
        .filter(|left| !left.is_zero())
}

/// Buckets over `window`: the ratio rule needs counts over a sliding window, and buckets keep
/// memory constant whatever the request rate. The window therefore slides a bucket at a time,
/// covering between nine and ten tenths of `window`.
const WINDOW_BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
}

#[derive(Debug, Clone, Copy, Default)]
struct BucketCounts {
    attempts: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WindowTotals {
    attempts: u64,
    failures: u64,
}

#[derive(Debug)]
struct RollingCounts {
    bucket_width: Duration,
    buckets: [BucketCounts; WINDOW_BUCKETS],
    /// The bucket that the latest `now` fell in, and when that bucket started. `None` until the
    /// first attempt, because the breaker is created without a `now`.
    newest: Option<(usize, Instant)>,
}

impl RollingCounts {
    fn new(window: Duration) -> Self {
        Self {
            // A zero window would make zero-width buckets and a division by zero; one nanosecond
            // keeps the arithmetic defined and means what a zero window means: only now counts.
            bucket_width: (window / WINDOW_BUCKETS as u32).max(Duration::from_nanos(1)),
            buckets: [BucketCounts::default(); WINDOW_BUCKETS],
            newest: None,
        }
    }

    fn record(&mut self, now: Instant, outcome: Outcome) {
        let bucket = &mut self.buckets[self.advance_to(now)];
        bucket.attempts = bucket.attempts.saturating_add(1);
        if outcome == Outcome::Failure {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    fn totals(&mut self, now: Instant) -> WindowTotals {
        self.advance_to(now);
        self.buckets
            .iter()
            .fold(WindowTotals::default(), |totals, bucket| WindowTotals {
                attempts: totals.attempts + u64::from(bucket.attempts),
                failures: totals.failures + u64::from(bucket.failures),
            })
    }

    fn clear(&mut self) {
        self.buckets = [BucketCounts::default(); WINDOW_BUCKETS];
        self.newest = None;
    }

    /// Empties the buckets that have slid out of the window by `now` and returns the index of
    /// the bucket `now` falls in.
    fn advance_to(&mut self, now: Instant) -> usize {
        let Some((newest_idx, newest_started)) = self.newest else {
            self.newest = Some((0, now));
            return 0;
        };
        let elapsed_buckets =
            now.saturating_duration_since(newest_started).as_nanos() / self.bucket_width.as_nanos();
        if elapsed_buckets == 0 {
            return newest_idx;
        }
        if elapsed_buckets >= WINDOW_BUCKETS as u128 {
            self.clear();
            self.newest = Some((0, now));
            return 0;
        }
        // Less than WINDOW_BUCKETS, checked just above.
        let steps = elapsed_buckets as usize;
        for step in 1..=steps {
            self.buckets[(newest_idx + step) % WINDOW_BUCKETS] = BucketCounts::default();
        }
        let idx = (newest_idx + steps) % WINDOW_BUCKETS;
        // Keep buckets on their grid; `now` is a fallback that cannot actually be needed, since
        // the grid point lies between `newest_started` and `now`.
        let started = self
            .bucket_width
            .checked_mul(steps as u32)
            .and_then(|offset| newest_started.checked_add(offset))
            .unwrap_or(now);
        self.newest = Some((idx, started));
        idx
    }
}

#[cfg(test)]
mod tests;
