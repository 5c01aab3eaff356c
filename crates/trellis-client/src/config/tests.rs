use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[test]
fn defaults_are_valid() {
    ProducerConfig::new("t").validate().expect("valid");
    ConsumerConfig::new("t", "g").validate().expect("valid");
}

#[test]
fn errors_name_the_setting() {
    let cases = [
        (ProducerConfig::new(""), "topic"),
        (
            ProducerConfig::new("t").endpoints(Vec::<String>::new()),
            "endpoints",
        ),
        (
            ProducerConfig::new("t").endpoints(["not a host"]),
            "endpoints",
        ),
        (
            ProducerConfig::new("t").batch_max_events(0),
            "batch_max_events",
        ),
        (ProducerConfig::new("t").max_in_flight(0), "max_in_flight"),
        (
            ProducerConfig::new("t").delivery_timeout(Duration::ZERO),
            "delivery_timeout",
        ),
        (
            ProducerConfig::new("t").retry(RetryPolicy {
                initial_backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(1),
                ..RetryPolicy::default()
            }),
            "retry.initial_backoff",
        ),
    ];
    for (config, setting) in cases {
        let error = config.validate().expect_err(setting);
        assert_eq!(error.setting, setting, "{error}");
    }
}

#[test]
fn endpoints_get_a_scheme() {
    let config = ProducerConfig::new("t").endpoints(["127.0.0.1:1", "http://[::1]:2"]);
    assert_eq!(
        config.endpoint_uris(),
        ["http://127.0.0.1:1", "http://[::1]:2"]
    );
}

proptest! {
    /// Full jitter: never more than the cap, and the cap never more than max_backoff, for any
    /// failure count.
    #[test]
    fn backoff_stays_under_its_cap(failures in 1u32..200, seed in any::<u64>()) {
        use rand::SeedableRng;
        let policy = RetryPolicy::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let delay = policy.delay(failures, &mut rng);
        let exponent = i32::try_from(failures - 1).unwrap_or(i32::MAX);
        let cap = (0.1 * 2f64.powi(exponent)).min(10.0);
        prop_assert!(delay.as_secs_f64() <= cap + 1e-9);
        prop_assert!(delay <= policy.max_backoff);
    }
}
