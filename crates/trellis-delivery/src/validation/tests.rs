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

#[tokio::test]
async fn a_denied_literal_address_gets_no_validation_request() {
    // A listener on loopback, denied here: a connection would show as an accepted socket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let mut deny = AddressGuard::default_deny_list();
    deny.push("127.0.0.0/8".parse().expect("network"));
    let tls = WebhookTls::new(None).expect("system roots");
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        format!("http://127.1:{port}/hook"),
    ] {
        let error = handshake(
            &url,
            "trellis",
            Duration::from_secs(2),
            Arc::new(AddressGuard::new(deny.clone())),
            &tls,
        )
        .await
        .expect_err("refused");
        assert!(
            matches!(&error, ValidationError::Denied { reason, .. } if reason.contains("127.0.0.0/8")),
            "{url}: {error}"
        );
    }
    let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
    assert!(accepted.is_err(), "a validation request was sent");
}
