use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const QUARANTINE: Duration = Duration::from_secs(10);

fn endpoints(n: usize) -> Endpoints {
    Endpoints::new(
        (0..n).map(|i| format!("127.0.0.1:{}", 1000 + i)).collect(),
        QUARANTINE,
    )
}

#[test]
fn stays_on_an_endpoint_that_works() {
    let now = Instant::now();
    let mut endpoints = endpoints(3);
    assert_eq!(endpoints.pick(now).0, 0);
    endpoints.succeeded(0);
    assert_eq!(endpoints.pick(now).0, 0);
}

#[test]
fn skips_a_failed_endpoint_until_its_quarantine_ends() {
    let now = Instant::now();
    let mut endpoints = endpoints(3);
    endpoints.failed(0, now);
    assert_eq!(endpoints.pick(now).0, 1);
    endpoints.failed(1, now);
    assert_eq!(endpoints.pick(now).0, 2);
    endpoints.failed(2, now + Duration::from_secs(1));
    // All in quarantine: the one that comes out first.
    assert_eq!(endpoints.pick(now + Duration::from_secs(2)).0, 0);
    // 0 and 1 are out of quarantine; the search goes on from where it is.
    assert_eq!(endpoints.pick(now + QUARANTINE).0, 0);
}

#[test]
fn a_single_endpoint_is_always_picked() {
    let now = Instant::now();
    let mut endpoints = endpoints(1);
    endpoints.failed(0, now);
    assert_eq!(endpoints.pick(now), (0, "127.0.0.1:1000"));
}

proptest! {
    /// Whatever failed when, the pick is in range, and it is never an endpoint in quarantine
    /// while another one is not.
    #[test]
    fn never_picks_a_quarantined_endpoint_when_another_is_free(
        n in 1usize..5,
        steps in proptest::collection::vec((0usize..5, 0u64..30, any::<bool>()), 0..50),
    ) {
        let start = Instant::now();
        let mut endpoints = endpoints(n);
        let mut quarantined_until = vec![start; n];
        for (index, secs, fail) in steps {
            let now = start + Duration::from_secs(secs);
            let index = index % n;
            if fail {
                endpoints.failed(index, now);
                quarantined_until[index] = now + QUARANTINE;
            } else {
                endpoints.succeeded(index);
                quarantined_until[index] = start;
            }
            let (picked, _) = endpoints.pick(now);
            prop_assert!(picked < n);
            let any_free = quarantined_until.iter().any(|until| *until <= now);
            if any_free {
                prop_assert!(quarantined_until[picked] <= now);
            }
        }
    }
}
