use super::*;
use http::HeaderValue;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn settings(initial_ms: u64, max_ms: u64, multiplier: f64, jitter: bool) -> BackoffSettings {
    BackoffSettings {
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_millis(max_ms),
        multiplier,
        jitter,
    }
}

#[test]
fn default_is_one_second_doubling_to_a_minute_with_jitter() {
    let settings = BackoffSettings::default();
    assert_eq!(settings.initial, Duration::from_secs(1));
    assert_eq!(settings.max, Duration::from_secs(60));
    assert!((settings.multiplier - 2.0).abs() < f64::EPSILON);
    assert!(settings.jitter);
}

#[test]
fn without_jitter_the_delay_is_the_cap() {
    let settings = settings(100, 5_000, 2.0, false);
    let mut rng = StdRng::seed_from_u64(7);
    let expected_ms = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000];
    for (failed_attempts, expected_ms) in (1..).zip(expected_ms) {
        assert_eq!(
            settings.delay(failed_attempts, &mut rng),
            Duration::from_millis(expected_ms),
            "after {failed_attempts} failures"
        );
    }
}

#[test]
fn zero_failures_is_treated_as_one() {
    let settings = settings(100, 5_000, 2.0, false);
    let mut rng = StdRng::seed_from_u64(7);
    assert_eq!(settings.delay(0, &mut rng), Duration::from_millis(100));
}

#[test]
fn jittered_delays_stay_within_zero_and_the_cap() {
    let settings = settings(100, 10_000, 2.0, true);
    let mut rng = StdRng::seed_from_u64(42);
    for failed_attempts in 1..=20 {
        let cap = settings.cap(failed_attempts);
        let mut below_half = 0;
        for _ in 0..500 {
            let delay = settings.delay(failed_attempts, &mut rng);
            assert!(delay <= cap, "{delay:?} > {cap:?}");
            if delay < cap / 2 {
                below_half += 1;
            }
        }
        // Full jitter spreads over the whole range, not just near the cap. With a fixed seed
        // this is deterministic; the bounds are wide enough for any reasonable seed.
        assert!(
            (150..=350).contains(&below_half),
            "{below_half} of 500 below half the cap"
        );
    }
}

#[test]
fn the_cap_grows_monotonically_up_to_max() {
    for multiplier in [1.0, 1.1, 1.618, 2.0, 10.0, 1e300, f64::INFINITY] {
        let settings = settings(250, 30_000, multiplier, false);
        let mut previous = Duration::ZERO;
        for failed_attempts in (1..200).chain([1_000, 100_000, u32::MAX - 1, u32::MAX]) {
            let cap = settings.cap(failed_attempts);
            assert!(cap >= previous, "x{multiplier}: {cap:?} < {previous:?}");
            assert!(cap <= settings.max, "x{multiplier}: {cap:?} > max");
            previous = cap;
        }
    }
}

#[test]
fn huge_attempt_counts_and_odd_floats_do_not_panic() {
    let mut rng = StdRng::seed_from_u64(1);
    let odd_multipliers = [
        1.0,
        0.5,
        0.0,
        -3.0,
        1e308,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::MIN_POSITIVE,
    ];
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(1),
        Duration::MAX,
    ];
    for multiplier in odd_multipliers {
        for initial in durations {
            for max in durations {
                for jitter in [false, true] {
                    let settings = BackoffSettings {
                        initial,
                        max,
                        multiplier,
                        jitter,
                    };
                    for failed_attempts in [0, 1, 2, 64, 1_100, u32::MAX] {
                        let delay = settings.delay(failed_attempts, &mut rng);
                        assert!(delay <= max, "{settings:?} after {failed_attempts}");
                    }
                }
            }
        }
    }
}

#[test]
fn multiplier_one_is_constant_and_below_one_does_not_shrink() {
    for multiplier in [1.0, 0.5, f64::NAN] {
        let settings = settings(300, 10_000, multiplier, false);
        for failed_attempts in [1, 2, 10, u32::MAX] {
            assert_eq!(settings.cap(failed_attempts), Duration::from_millis(300));
        }
    }
}

#[test]
fn huge_multiplier_jumps_to_max_after_the_first_failure() {
    let settings = settings(300, 10_000, 1e300, false);
    assert_eq!(settings.cap(1), Duration::from_millis(300));
    assert_eq!(settings.cap(2), Duration::from_millis(10_000));
    assert_eq!(settings.cap(u32::MAX), Duration::from_millis(10_000));
}

#[test]
fn initial_above_max_is_max() {
    let settings = settings(5_000, 1_000, 2.0, false);
    assert_eq!(settings.cap(1), Duration::from_millis(1_000));
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("valid header value")
}

fn at(secs_since_epoch: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs_since_epoch)
}

// 2015-10-21T07:28:00Z, the date in RFC 9110's example.
const DATE_SECS: u64 = 1_445_412_480;

#[test]
fn retry_after_seconds() {
    let now = at(DATE_SECS);
    assert_eq!(
        parse_retry_after(&header("120"), now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(&header("0"), now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after(&header(" 7 "), now),
        Some(Duration::from_secs(7))
    );
}

#[test]
fn retry_after_http_date_is_relative_to_now() {
    let value = header("Wed, 21 Oct 2015 07:28:00 GMT");
    assert_eq!(
        parse_retry_after(&value, at(DATE_SECS - 90)),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        parse_retry_after(&value, at(DATE_SECS)),
        Some(Duration::ZERO)
    );
}

#[test]
fn retry_after_obsolete_date_formats_are_accepted() {
    let now = at(DATE_SECS - 10);
    for value in [
        "Wednesday, 21-Oct-15 07:28:00 GMT",
        "Wed Oct 21 07:28:00 2015",
    ] {
        assert_eq!(
            parse_retry_after(&header(value), now),
            Some(Duration::from_secs(10)),
            "{value}"
        );
    }
}

#[test]
fn retry_after_date_in_the_past_is_zero() {
    let value = header("Wed, 21 Oct 2015 07:28:00 GMT");
    assert_eq!(
        parse_retry_after(&value, at(DATE_SECS + 3_600)),
        Some(Duration::ZERO)
    );
}

#[test]
fn retry_after_garbage_is_none() {
    let now = at(DATE_SECS);
    for value in [
        "",
        " ",
        "soon",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "12s",
        "0x10",
        "Wed, 32 Oct 2015",
    ] {
        assert_eq!(parse_retry_after(&header(value), now), None, "{value:?}");
    }
    let opaque = HeaderValue::from_bytes(b"\xff\xfe").expect("opaque header value");
    assert_eq!(parse_retry_after(&opaque, now), None);
}

#[test]
fn retry_after_huge_number_saturates() {
    let now = at(DATE_SECS);
    assert_eq!(
        parse_retry_after(&header("18446744073709551615"), now),
        Some(Duration::from_secs(u64::MAX))
    );
    assert_eq!(
        parse_retry_after(&header("99999999999999999999999999999999"), now),
        Some(Duration::from_secs(u64::MAX))
    );
}

#[test]
fn retry_after_is_capped_and_never_shortens_the_backoff() {
    let backoff = Duration::from_secs(4);
    let cap = Duration::from_secs(60);
    assert_eq!(honour_retry_after(backoff, None, cap), backoff);
    assert_eq!(
        honour_retry_after(backoff, Some(Duration::from_secs(1)), cap),
        backoff
    );
    assert_eq!(
        honour_retry_after(backoff, Some(Duration::from_secs(30)), cap),
        Duration::from_secs(30)
    );
    assert_eq!(
        honour_retry_after(backoff, Some(Duration::from_secs(u64::MAX)), cap),
        cap
    );
    assert_eq!(
        honour_retry_after(backoff, Some(Duration::from_secs(30)), Duration::ZERO),
        backoff
    );
}
