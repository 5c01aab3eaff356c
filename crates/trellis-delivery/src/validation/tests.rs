use super::*;

#[tokio::test(start_paused = true)]
async fn a_rate_gate_spaces_requests_evenly() {
    let gate = RateGate::per_minute(120);
    let started = Instant::now();
    for _ in 0..3 {
        gate.wait().await;
    }
    // The first goes at once, the next two half a second apart.
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}
