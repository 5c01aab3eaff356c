//! The fault proxy against a real echo server on loopback. No test asserts an upper bound on a
//! time: a loaded machine makes everything slower, never faster than a sleep.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_test_support::{ConnectionFault, FaultProxy, FaultStats, Faults};

/// Generous: only reached when the behaviour under test is missing.
const PATIENCE: Duration = Duration::from_secs(10);

/// An echo server on loopback; it runs until the test's runtime ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the echo server");
    let addr = listener.local_addr().expect("echo server address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                // Errors are the tests' faults arriving; the echo just stops.
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// Bytes that differ from one position to the next, so a reordering or a lost chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// One small message there and back.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(message).await?;
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed).await?;
    assert_eq!(echoed, message, "the echo changed the bytes");
    Ok(())
}

/// Waits for the proxy's counters to catch up: they are updated just after the bytes move.
async fn stats_reach(proxy: &FaultProxy, reached: impl Fn(&FaultStats) -> bool) -> FaultStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = proxy.stats();
        if reached(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `down` waits for the proxy's tasks; bounded, so a task that never ends fails the test.
async fn down(proxy: &FaultProxy) {
    tokio::time::timeout(PATIENCE, proxy.down())
        .await
        .expect("down() returns once its tasks are done");
}

fn is_reset(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

#[tokio::test]
async fn without_faults_bytes_echo_unchanged_in_both_directions() {
    let proxy = FaultProxy::start(echo_server().await, Faults::none())
        .await
        .expect("start the proxy");
    // Several chunks' worth, written while reading, as a streaming protocol does.
    let sent = pattern(300 * 1024);
    let stream = TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy");
    let (mut read, mut write) = stream.into_split();
    let to_write = sent.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&to_write).await.expect("write through");
        // A half-close must reach the server, and its own come back as EOF.
        write.shutdown().await.expect("half-close");
    });
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, read.read_to_end(&mut received))
        .await
        .expect("the echo ends with EOF")
        .expect("read the echo");
    writer.await.expect("writer task");
    assert!(
        received == sent,
        "{} bytes echoed for {}",
        received.len(),
        sent.len()
    );

    let total = sent.len() as u64;
    let stats = stats_reach(&proxy, |stats| stats.bytes_to_client == total).await;
    assert_eq!(
        stats,
        FaultStats {
            connections_accepted: 1,
            connections_reset: 0,
            connections_blackholed: 0,
            bytes_to_upstream: total,
            bytes_to_client: total,
        }
    );
}

#[tokio::test]
async fn reset_probability_one_resets_every_connection() {
    let proxy = FaultProxy::start(
        echo_server().await,
        Faults::none().with_seed(7).with_reset_probability(1.0),
    )
    .await
    .expect("start the proxy");
    for connection in 0..4_u64 {
        let mut stream = TcpStream::connect(proxy.addr())
            .await
            .expect("connect to the proxy");
        // Round trips until the fault: it strikes within MAX_FAULT_BYTES or MAX_RESET_DELAY.
        let outcome = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Err(error) = round_trip(&mut stream, &pattern(1024)).await {
                    return error;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let error = outcome.unwrap_or_else(|_| panic!("connection {connection} was never reset"));
        // A clean EOF (UnexpectedEof here) would mean a FIN: the linger-0 close did not happen.
        assert!(
            is_reset(error.kind()),
            "connection {connection}: {error:?} is not a reset"
        );
    }
    let stats = stats_reach(&proxy, |stats| stats.connections_reset == 4).await;
    assert_eq!(
        (stats.connections_accepted, stats.connections_reset),
        (4, 4)
    );
}

#[tokio::test]
async fn set_faults_applies_to_the_next_connection() {
    let proxy = FaultProxy::start(echo_server().await, Faults::none())
        .await
        .expect("start the proxy");
    let mut healthy = TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy");
    round_trip(&mut healthy, b"before")
        .await
        .expect("no faults yet");

    // Connection 1, the next one, must get a reset; connection 0 keeps the plan it started with.
    let faults = Faults::none().with_reset_probability(1.0);
    proxy.set_faults(faults);
    assert_eq!(proxy.faults(), faults);
    assert!(matches!(
        faults.connection_fault(1),
        ConnectionFault::ResetAfterBytes(_) | ConnectionFault::ResetAfterDelay(_)
    ));
    let mut faulty = TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy");
    let reset = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Err(error) = round_trip(&mut faulty, &pattern(1024)).await {
                return error;
            }
        }
    })
    .await
    .expect("the new connection is reset");
    assert!(is_reset(reset.kind()), "{reset:?} is not a reset");
    // The connection accepted before the change keeps its fault-free plan.
    round_trip(&mut healthy, b"after")
        .await
        .expect("the old connection is untouched");
}

#[tokio::test]
async fn down_refuses_and_resets_then_up_serves_on_the_same_address() {
    let proxy = FaultProxy::start(echo_server().await, Faults::none())
        .await
        .expect("start the proxy");
    let addr = proxy.addr();
    let mut live = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    round_trip(&mut live, b"hello")
        .await
        .expect("echo while up");

    down(&proxy).await;
    assert!(!proxy.is_up());
    let mut byte = [0; 1];
    let cut = live.read(&mut byte).await;
    assert!(
        matches!(&cut, Err(error) if is_reset(error.kind())),
        "the live connection was not reset: {cut:?}"
    );
    let refused = TcpStream::connect(addr).await;
    assert!(
        matches!(&refused, Err(error) if error.kind() == ErrorKind::ConnectionRefused),
        "a connection while down was not refused: {refused:?}"
    );

    proxy.up().await.expect("back up");
    assert!(proxy.is_up());
    assert_eq!(proxy.addr(), addr);
    let mut again = TcpStream::connect(addr).await.expect("connect after up");
    round_trip(&mut again, b"again")
        .await
        .expect("echo after up");
    // Down twice and up twice are harmless.
    down(&proxy).await;
    down(&proxy).await;
    proxy.up().await.expect("up");
    proxy.up().await.expect("up again");
    let mut last = TcpStream::connect(addr).await.expect("connect");
    round_trip(&mut last, b"last").await.expect("echo");
}

#[tokio::test]
async fn a_delayed_round_trip_takes_at_least_the_delay_each_way() {
    let delay = Duration::from_millis(100);
    let proxy = FaultProxy::start(
        echo_server().await,
        Faults::none()
            .with_delay(delay)
            .with_jitter(Duration::from_millis(20)),
    )
    .await
    .expect("start the proxy");
    let mut stream = TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy");
    for _ in 0..3 {
        let started = Instant::now();
        round_trip(&mut stream, b"ping").await.expect("echo");
        let took = started.elapsed();
        // There and back: one delayed chunk each way. Only the lower bound cannot flake.
        assert!(took >= 2 * delay, "a round trip took {took:?}");
    }
    // Delay changes reach a live connection.
    proxy.set_faults(Faults::none());
    round_trip(&mut stream, b"fast again").await.expect("echo");
}

#[tokio::test]
async fn a_blackholed_connection_stops_forwarding_without_closing() {
    let proxy = FaultProxy::start(
        echo_server().await,
        Faults::none().with_seed(3).with_blackhole_probability(1.0),
    )
    .await
    .expect("start the proxy");
    let sent = 4 * Faults::MAX_FAULT_BYTES as usize;
    let mut stream = TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy");
    // The proxy swallows what it no longer forwards, so these writes cannot block.
    tokio::time::timeout(PATIENCE, stream.write_all(&pattern(sent)))
        .await
        .expect("writes into a blackhole complete")
        .expect("write into the blackhole");
    let mut received = 0;
    let mut buf = vec![0; 64 * 1024];
    let quiet = loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            // Silence: what a blackhole gives.
            Err(_) => break true,
            Ok(Ok(0)) => panic!("the blackhole closed the connection"),
            Ok(Ok(n)) => received += n,
            Ok(Err(error)) => panic!("the blackhole failed the connection: {error:?}"),
        }
    };
    assert!(quiet);
    assert!(
        received as u64 <= Faults::MAX_FAULT_BYTES,
        "{received} bytes came back through a blackhole"
    );
    assert_eq!(proxy.stats().connections_blackholed, 1);
}

#[test]
fn the_same_seed_gives_the_same_decisions() {
    let faults = Faults::none()
        .with_seed(42)
        .with_reset_probability(0.3)
        .with_blackhole_probability(0.2);
    let decide = |faults: Faults| {
        (0..1000)
            .map(|n| faults.connection_fault(n))
            .collect::<Vec<_>>()
    };
    let first = decide(faults);
    assert_eq!(first, decide(faults), "same seed, different decisions");
    assert_ne!(
        first,
        decide(faults.with_seed(43)),
        "the seed changes nothing"
    );
    // Delay and jitter draw from other streams: they cannot shift the decisions.
    assert_eq!(
        first,
        decide(
            faults
                .with_delay(Duration::from_millis(5))
                .with_jitter(Duration::from_millis(5))
        )
    );

    let count = |wanted: fn(&ConnectionFault) -> bool| first.iter().filter(|f| wanted(f)).count();
    let by_bytes = count(|f| matches!(f, ConnectionFault::ResetAfterBytes(_)));
    let by_delay = count(|f| matches!(f, ConnectionFault::ResetAfterDelay(_)));
    let blackholes = count(|f| matches!(f, ConnectionFault::BlackholeAfterBytes(_)));
    // Fixed seed, so fixed counts: the bounds only check the probabilities are honoured.
    assert!(
        (250..=350).contains(&(by_bytes + by_delay)),
        "{by_bytes} + {by_delay} resets"
    );
    assert!(
        by_bytes > 100 && by_delay > 100,
        "{by_bytes} by bytes, {by_delay} by delay"
    );
    assert!((150..=250).contains(&blackholes), "{blackholes} blackholes");
    for fault in &first {
        match *fault {
            ConnectionFault::ResetAfterBytes(bytes)
            | ConnectionFault::BlackholeAfterBytes(bytes) => {
                assert!(bytes <= Faults::MAX_FAULT_BYTES)
            }
            ConnectionFault::ResetAfterDelay(delay) => assert!(delay <= Faults::MAX_RESET_DELAY),
            ConnectionFault::None => {}
        }
    }
}

#[test]
fn probabilities_zero_and_one_are_exact() {
    let none = Faults::none().with_seed(9);
    assert!((0..500).all(|n| none.connection_fault(n) == ConnectionFault::None));
    let reset = none
        .with_reset_probability(1.0)
        .with_blackhole_probability(1.0);
    assert!((0..500).all(|n| matches!(
        reset.connection_fault(n),
        ConnectionFault::ResetAfterBytes(_) | ConnectionFault::ResetAfterDelay(_)
    )));
    let blackhole = none.with_blackhole_probability(1.0);
    assert!((0..500).all(|n| matches!(
        blackhole.connection_fault(n),
        ConnectionFault::BlackholeAfterBytes(_)
    )));
}

#[test]
fn resetting_first_moves_the_seed_until_the_first_connections_are_reset() {
    let faults = Faults::none().with_seed(7).with_reset_probability(0.1);
    let resetting = faults
        .resetting_first(3)
        .expect("some seed resets three connections in a row");
    assert!(resetting.seed >= faults.seed, "the seed only moves on");
    assert_eq!(
        resetting.with_seed(faults.seed),
        faults,
        "nothing but the seed changes"
    );
    assert!((0..3).all(|n| matches!(
        resetting.connection_fault(n),
        ConnectionFault::ResetAfterBytes(_) | ConnectionFault::ResetAfterDelay(_)
    )));
    // The connections after them keep the configured chance: not all of them are reset.
    assert!((3..200).any(|n| resetting.connection_fault(n) == ConnectionFault::None));

    assert_eq!(
        faults.resetting_first(0),
        Some(faults),
        "nothing to move for"
    );
    assert_eq!(
        Faults::none().resetting_first(1),
        None,
        "no seed resets anything without a reset chance"
    );
}

/// An h2c (prior knowledge) server answering every request with its own body, as gRPC's
/// transport is HTTP/2 without TLS on loopback.
async fn http2_echo_server() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the HTTP/2 server");
    let addr = listener.local_addr().expect("HTTP/2 server address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|request: Request<Incoming>| async move {
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(Response::new(Full::new(body)))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn http2_requests_multiplexed_on_one_connection_pass_through() {
    use http_body_util::{BodyExt, Full};
    use hyper::Request;
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let proxy = FaultProxy::start(
        http2_echo_server().await,
        Faults::none().with_delay(Duration::from_millis(5)),
    )
    .await
    .expect("start the proxy");
    let stream = TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake through the proxy");
    tokio::spawn(connection);

    // Concurrent streams interleave their frames in both directions on the one connection.
    let requests = (0..8_usize).map(|i| {
        let mut sender = sender.clone();
        async move {
            let body = Bytes::from(pattern(1000 + i * 10_000));
            let request = Request::post("http://proxy/echo")
                .body(Full::new(body.clone()))
                .expect("build the request");
            let response = sender.send_request(request).await.expect("response");
            assert_eq!(response.status(), 200);
            let echoed = response
                .into_body()
                .collect()
                .await
                .expect("response body")
                .to_bytes();
            assert!(echoed == body, "stream {i}: the body changed");
        }
    });
    tokio::time::timeout(PATIENCE, all_spawned(requests))
        .await
        .expect("every stream answered");
    assert_eq!(proxy.stats().connections_accepted, 1);
}

/// Runs the futures as concurrent tasks and waits for all; a failed assertion in one fails the test.
async fn all_spawned<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        task.await.expect("stream task");
    }
}
