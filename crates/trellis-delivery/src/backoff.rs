//! How long to wait before the next attempt: exponential backoff with full jitter, and the
//! target's own `Retry-After`.
//!
//! Pure functions of their inputs: the random source and the clock are parameters, so tests are
//! deterministic and nothing here sleeps. Capping Retry-After and choosing between it and the
//! backoff is the caller's policy; [`honour_retry_after`] is the rule the engine uses.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Exponential backoff settings.
///
/// The cap before attempt `n + 1` after `n` failures is `min(max, initial * multiplier^(n-1))`;
/// with `jitter` the actual delay is drawn uniformly from `[0, cap]` ("full jitter", from the AWS
/// Architecture Blog's "Exponential Backoff and Jitter"), without it the delay is the cap.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffSettings {
    /// The cap after the first failure.
    pub initial: Duration,
    /// The largest cap, however many failures.
    pub max: Duration,
    /// Growth of the cap per failure. Values below 1.0 and NaN are treated as 1.0: a backoff that
    /// shrinks would hammer a target that keeps failing.
    pub multiplier: f64,
    /// Draw the delay uniformly from `[0, cap]` instead of waiting exactly the cap.
    pub jitter: bool,
}

impl Default for BackoffSettings {
    /// 1 s initial, doubling, at most 60 s, full jitter.
    fn default() -> Self {
        // initial 1 s is Vector's HTTP sink default; Knative's 0.2 s runs through its 10 retries
        // within a typical pod restart. Doubling is Knative's "exponential" and the AWS article's
        // base; Vector's Fibonacci grows a little slower (about x1.6) and is not worth the
        // difference. max 60 s is Dapr's maxInterval and Kafka Connect's errors.retry.delay.max;
        // with full jitter the mean wait at the cap is 30 s, which is Vector's cap. Full jitter is
        // Vector's default too: without it, every client that failed together retries together
        // and the recovering target takes the whole herd at once.
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl BackoffSettings {
    /// Delay before attempt `failed_attempts + 1`, after `failed_attempts` (>= 1) failures.
    ///
    /// Full jitter: uniform in `[0, min(max, initial * multiplier^(failed_attempts-1))]`; without
    /// jitter the cap itself. `failed_attempts == 0` is treated as 1. Never overflows or panics,
    /// whatever the attempt count or the floats: an infinite or overflowing product is `max`, and
    /// `initial > max` means `max`.
    pub fn delay(&self, failed_attempts: u32, rng: &mut impl Rng) -> Duration {
        let cap = self.cap(failed_attempts);
        if !self.jitter || cap.is_zero() {
            return cap;
        }
        // Nanosecond resolution is plenty, and a cap beyond u64 nanoseconds (584 years) is
        // clamped rather than overflowing.
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap_nanos))
    }

    /// The upper bound of the delay after `failed_attempts` failures; monotone in the attempts.
    pub fn cap(&self, failed_attempts: u32) -> Duration {
        let max = self.max;
        let initial = self.initial.min(max);
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            // Also catches NaN, which compares false with everything.
            1.0
        };
        let exponent = failed_attempts.saturating_sub(1);
        // f64 keeps this total: powf saturates to infinity instead of overflowing, and the
        // comparison below turns infinity into `max`.
        let secs = initial.as_secs_f64() * multiplier.powf(f64::from(exponent));
        if secs.is_nan() {
            // 0 s * infinity: a zero initial stays zero.
            return initial;
        }
        if secs >= max.as_secs_f64() {
            return max;
        }
        Duration::try_from_secs_f64(secs).map_or(max, |cap| cap.clamp(initial, max))
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date taken relative
/// to `now`. A date in the past gives `Duration::ZERO`; anything else (negative numbers,
/// fractions, garbage) gives `None`. A number too large for `u64` saturates instead of failing:
/// the target asked for a very long wait, and the caller's cap decides how long is too long.
pub fn parse_retry_after(value: &http::HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    // `u64::from_str` would also take "+5", which is not delta-seconds.
    if text.bytes().all(|byte| byte.is_ascii_digit()) {
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before a retry when the target may have sent `Retry-After`: the longer of the
/// backoff and the Retry-After capped at `retry_after_max`.
///
/// The longer wins (as in Knative's `retryAfterMax`) because Retry-After is the target's minimum
/// and the backoff is ours; the cap keeps a hostile or buggy target from parking a subscription
/// for days. A `retry_after_max` of zero ignores Retry-After.
pub fn honour_retry_after(
    backoff: Duration,
    retry_after: Option<Duration>,
    retry_after_max: Duration,
) -> Duration {
    match retry_after {
        Some(retry_after) => backoff.max(retry_after.min(retry_after_max)),
        None => backoff,
    }
}

#[cfg(test)]
mod tests;
