//! Trellis on NATS JetStream when NATS goes away: an unreachable server at start stops it with
//! one line; a server lost at run time makes publishes and admin calls answer `503` with
//! `Retry-After`, `/readyz` not ready and deliveries wait; once the server is back everything
//! goes on by itself, with nothing acknowledged lost and nothing stored twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_proto::v1::trellis_client::TrellisClient;
use trellis_proto::v1::{
    Ack, PublishRequest, SubscribeRequest, event_result, subscribe_request, subscribe_response,
};
use trellis_test_support::{NatsServer, Receiver, TrellisProcess};

use crate::{bin, eventually, publish};

/// A JetStream-backed `trellis serve` on `nats`, with its data dir.
fn start_on(nats: &NatsServer) -> (tempfile::TempDir, TrellisProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = TrellisProcess::start(bin(), dir.path(), &["--storage", &nats.url()])
        .expect("trellis starts on JetStream");
    (dir, process)
}

/// Stops or starts nats-server from async code: both wait for the process, briefly.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

async fn readyz(client: &reqwest::Client, base: &str) -> u16 {
    match client.get(format!("{base}/readyz")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

async fn storage_gauge(client: &reqwest::Client, base: &str) -> Option<String> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|line| line.starts_with("trellis_storage_available "))
        .map(|line| line["trellis_storage_available ".len()..].trim().to_owned())
}

/// Checks a `503 unavailable` as a client would read it: a `Retry-After` in seconds, the JSON
/// error, and a message that does not claim what cannot be known.
async fn assert_unavailable(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 503, "{what}");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|seconds| seconds >= 1),
        "{what}: Retry-After in seconds, got {retry_after:?}"
    );
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"], "unavailable", "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unavailable"),
        "{what}: the message says why: {body}"
    );
}

/// A gRPC `Publish` of one event: its offset, or the status code it failed with.
async fn grpc_publish(process: &TrellisProcess, topic: &str, id: &str) -> Result<u64, tonic::Code> {
    let mut client = TrellisClient::connect(format!("http://{}", process.grpc_addr()))
        .await
        .expect("gRPC connect");
    let response = client
        .publish(PublishRequest {
            batch_id: 1,
            topic: topic.to_owned(),
            events: vec![crate::grpc::event(id)],
        })
        .await
        .map_err(|status| status.code())?
        .into_inner();
    match response
        .results
        .first()
        .and_then(|result| result.result.clone())
    {
        Some(event_result::Result::Stored(stored)) => Ok(stored.offset),
        Some(event_result::Result::Error(error)) => Err(tonic::Code::from(error.code)),
        None => Err(tonic::Code::Unknown),
    }
}

fn structured(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/trellis-tests", "type": "dev.trellis.test", "data": id})
}

/// Every event of `topic` as (offset, id), read page by page from offset 0.
async fn read_all(client: &reqwest::Client, base: &str, topic: &str) -> Vec<(u64, String)> {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page: Vec<Value> = client
            .get(format!(
                "{base}/v1/topics/{topic}/events?from={from}&limit=1000"
            ))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("a JSON page");
        let Some(last) = page.last() else {
            return events;
        };
        from = last["offset"].as_u64().expect("an offset") + 1;
        events.extend(page.iter().map(|event| {
            (
                event["offset"].as_u64().expect("an offset"),
                event["id"].as_str().expect("an id").to_owned(),
            )
        }));
    }
}

#[test]
fn an_unreachable_nats_at_start_is_one_line_on_stderr_and_a_failed_exit() {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let (code, stdout, stderr) = crate::nats_access::serve_until_exit(&url, &[]);
    assert_eq!(code, Some(1), "an exit code, not a signal: {stderr}");
    assert!(
        !stdout.contains("listening"),
        "it never says it listens: {stdout}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(&url), "it names the server: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "no panic: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_stopped_calls_answer_503_and_readyz_is_not_ready_until_it_is_back() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (_dir, trellis) = start_on(&nats);
    let base = trellis.base_url().to_owned();
    let client = reqwest::Client::new();
    let stored = publish(&client, &base, "orders", "before", "1".to_owned())
        .await
        .expect("publish");
    assert_eq!(stored.status(), 202);
    assert_eq!(readyz(&client, &base).await, 200);

    blocking(|| nats.stop());
    assert!(
        eventually(async || readyz(&client, &base).await == 503).await,
        "/readyz says not ready while NATS is down"
    );
    let why = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz")
        .text()
        .await
        .expect("text");
    assert!(why.contains("event store"), "with the reason: {why}");
    assert_eq!(storage_gauge(&client, &base).await.as_deref(), Some("0"));

    let binary = publish(&client, &base, "orders", "during-1", "2".to_owned())
        .await
        .expect("publish");
    assert_unavailable(binary, "a binary publish").await;
    let structured_publish = client
        .post(format!("{base}/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(structured("during-2").to_string())
        .send()
        .await
        .expect("publish");
    assert_unavailable(structured_publish, "a structured publish").await;
    let batch = client
        .post(format!("{base}/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([structured("during-3"), structured("during-4")]).to_string())
        .send()
        .await
        .expect("publish");
    assert_unavailable(batch, "a batch publish").await;
    for (what, url) in [
        ("listing topics", format!("{base}/v1/topics")),
        ("a topic's state", format!("{base}/v1/topics/orders")),
        (
            "reading events",
            format!("{base}/v1/topics/orders/events?from=0"),
        ),
    ] {
        let response = client.get(url).send().await.expect("request");
        assert_unavailable(response, what).await;
    }
    let created = client
        .put(format!("{base}/v1/topics/invoices"))
        .send()
        .await
        .expect("request");
    assert_unavailable(created, "creating a topic").await;
    assert_eq!(
        grpc_publish(&trellis, "orders", "during-5").await,
        Err(tonic::Code::Unavailable),
        "a gRPC publish fails with a transient status"
    );

    blocking(|| nats.restart());
    assert!(
        eventually(async || readyz(&client, &base).await == 200).await,
        "/readyz is ready again without restarting trellis"
    );
    assert_eq!(storage_gauge(&client, &base).await.as_deref(), Some("1"));
    let again = publish(&client, &base, "orders", "after", "3".to_owned())
        .await
        .expect("publish");
    assert_eq!(again.status(), 202);
    let answer: Value = again.json().await.expect("json");
    let offset = answer["events"][0]["offset"].as_u64().expect("an offset");
    assert!(grpc_publish(&trellis, "orders", "after-grpc").await.is_ok());
    let events = read_all(&client, &base, "orders").await;
    let ids: Vec<&str> = events.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.first(), Some(&"before"), "{ids:?}");
    assert!(events.contains(&(offset, "after".to_owned())), "{events:?}");
    let created = client
        .put(format!("{base}/v1/topics/invoices"))
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
}

/// What one publisher got acknowledged: id -> offset.
type Acked = HashMap<String, u64>;

/// Publishes `p{n}-{i}` for i = 0.. until `stop`, each until it is acknowledged: on `503` (or a
/// request that fails) it sends the same id again, as a client should.
async fn keep_publishing(
    client: reqwest::Client,
    base: String,
    n: usize,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
) -> Acked {
    let mut acked = Acked::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("p{n}-{i}");
        loop {
            let answer = publish(&client, &base, "load", &id, id.clone()).await;
            match answer {
                Ok(response) if response.status() == 202 => {
                    let body: Value = response.json().await.expect("json");
                    let offset = body["events"][0]["offset"].as_u64().expect("an offset");
                    acked.insert(id.clone(), offset);
                    break;
                }
                Ok(response) if response.status() == 503 => {
                    assert!(response.headers().contains_key("retry-after"));
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => panic!(
                    "a publish failed other than as unavailable: {} {:?}",
                    response.status(),
                    response.text().await
                ),
                Err(error) => panic!("the request failed: {error}"),
            }
            // Shorter than Retry-After, to keep the test short.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i += 1;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_publish_load_loses_no_acknowledged_event_and_stores_none_twice() {
    const PUBLISHERS: usize = 4;
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (_dir, trellis) = start_on(&nats);
    let base = trellis.base_url().to_owned();
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|n| {
            tokio::spawn(keep_publishing(
                client.clone(),
                base.clone(),
                n,
                Arc::clone(&stop),
                Arc::clone(&refused),
            ))
        })
        .collect();
    let stored = async || {
        client
            .get(format!("{base}/v1/topics/load"))
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()?["next_offset"]
            .as_u64()
    };
    assert!(
        eventually(async || stored().await.is_some_and(|next| next >= 100)).await,
        "publishing is under way"
    );

    // Stopped in the middle of publishes; down until some were refused.
    blocking(|| nats.stop());
    assert!(
        eventually(async || refused.load(Ordering::Relaxed) >= 5 * PUBLISHERS).await,
        "publishes are refused while NATS is down"
    );
    blocking(|| nats.restart());
    let mut before = None;
    assert!(
        eventually(async || {
            before = stored().await;
            before.is_some()
        })
        .await,
        "the topic can be read once NATS is back"
    );
    let before = before.unwrap_or_default();
    assert!(
        eventually(async || stored().await.is_some_and(|next| next >= before + 100)).await,
        "publishing goes on once NATS is back"
    );
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::new();
    for publisher in publishers {
        acked.extend(publisher.await.expect("a publisher"));
    }

    let events = read_all(&client, &base, "load").await;
    let mut seen = HashSet::new();
    for (offset, id) in &events {
        assert!(
            seen.insert(id.clone()),
            "{id} stored twice (again at {offset})"
        );
    }
    let by_offset: HashMap<u64, &str> = events
        .iter()
        .map(|(offset, id)| (*offset, id.as_str()))
        .collect();
    for (id, offset) in &acked {
        assert_eq!(
            by_offset.get(offset).copied(),
            Some(id.as_str()),
            "acknowledged {id} at offset {offset}"
        );
    }
    assert!(acked.len() > 200, "{} acknowledged", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_subscription_waits_while_nats_is_down_and_delivers_everything_after() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (_dir, trellis) = start_on(&nats);
    let base = trellis.base_url().to_owned();
    let client = reqwest::Client::new();
    let receiver = Receiver::answering(200).await.expect("receiver");
    // Paused through the outage, resumed after it: it must not have ended meanwhile.
    let held = Receiver::answering(200).await.expect("receiver");
    for (name, receiver) in [("audit", &receiver), ("held", &held)] {
        let created = client
            .post(format!("{base}/v1/subscriptions"))
            .json(&json!({
                "name": name,
                "topic": "orders",
                "start": "earliest",
                "sink": {"urls": [receiver.url("/hook")]},
            }))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), 201);
    }
    let paused = client
        .post(format!("{base}/v1/subscriptions/held/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    let status = async || {
        let view: Value = client
            .get(format!("{base}/v1/subscriptions/audit"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(view["status"].clone())
    };
    let ids = |receiver: &Receiver| -> Vec<String> {
        receiver
            .requests()
            .iter()
            .filter_map(|request| request.header("ce-id").map(str::to_owned))
            .collect()
    };
    let received = || ids(&receiver);
    for id in ["b1", "b2", "b3"] {
        let stored = publish(&client, &base, "orders", id, id.to_owned())
            .await
            .expect("publish");
        assert_eq!(stored.status(), 202);
    }
    assert!(
        eventually(async || received().len() == 3).await,
        "{:?}",
        received()
    );

    blocking(|| nats.stop());
    assert!(
        eventually(async || {
            status()
                .await
                .is_some_and(|status| status["state"] == "waiting_for_storage")
        })
        .await,
        "the status shows the wait: {:?}",
        status().await
    );
    let waiting = status().await.expect("status");
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("unavailable")),
        "{waiting}"
    );

    blocking(|| nats.restart());
    for id in ["a1", "a2", "a3"] {
        let published = async || {
            publish(&client, &base, "orders", id, id.to_owned())
                .await
                .is_ok_and(|response| response.status() == 202)
        };
        assert!(
            eventually(published).await,
            "{id} published once NATS is back"
        );
    }
    let all = ["b1", "b2", "b3", "a1", "a2", "a3"];
    assert!(
        eventually(async || received().len() >= all.len()).await,
        "every event arrives: {:?}",
        received()
    );
    let mut got = received();
    got.sort();
    let mut want: Vec<String> = all.iter().map(|id| (*id).to_owned()).collect();
    want.sort();
    // Nothing was in flight during the outage, so nothing is delivered twice.
    assert_eq!(got, want);
    let resumed = client
        .post(format!("{base}/v1/subscriptions/held/resume"))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    assert!(
        eventually(async || ids(&held).len() >= all.len()).await,
        "the paused subscription delivers once resumed: {:?}",
        ids(&held)
    );
    let mut got = ids(&held);
    got.sort();
    assert_eq!(got, want);
    assert!(
        eventually(async || status()
            .await
            .is_some_and(|status| status["state"] == "running"))
        .await,
        "{:?}",
        status().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_member_stays_joined_while_nats_is_down_and_gets_what_follows() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (_dir, trellis) = start_on(&nats);
    for id in ["b1", "b2"] {
        assert!(grpc_publish(&trellis, "orders", id).await.is_ok());
    }
    let (requests, outgoing) = mpsc::channel(8);
    requests
        .send(crate::grpc::join_group("orders"))
        .await
        .expect("send");
    let mut client = TrellisClient::connect(format!("http://{}", trellis.grpc_addr()))
        .await
        .expect("gRPC connect");
    let mut responses = client
        .subscribe(ReceiverStream::new(outgoing))
        .await
        .expect("subscribe")
        .into_inner();
    // The next delivery's offset; the stream must stay open throughout.
    let mut next_delivery = async || loop {
        let response = tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .expect("a delivery in time")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        if let Some(subscribe_response::Response::Delivery(delivery)) = response.response {
            return delivery.offset;
        }
    };
    let ack = |offsets: Vec<u64>| SubscribeRequest {
        request: Some(subscribe_request::Request::Ack(Ack { offsets })),
    };
    assert_eq!(next_delivery().await, 0);
    assert_eq!(next_delivery().await, 1);
    requests.send(ack(vec![0, 1])).await.expect("ack");

    blocking(|| nats.stop());
    assert_eq!(
        grpc_publish(&trellis, "orders", "during").await,
        Err(tonic::Code::Unavailable)
    );
    blocking(|| nats.restart());
    let mut published = None;
    assert!(
        eventually(async || {
            published = grpc_publish(&trellis, "orders", "a1").await.ok();
            published.is_some()
        })
        .await,
        "publishing works again"
    );
    assert_eq!(Some(next_delivery().await), published, "the member gets it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_stops_on_sigterm_while_nats_is_down() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (_dir, mut trellis) = start_on(&nats);
    let base = trellis.base_url().to_owned();
    let client = reqwest::Client::new();
    let stored = publish(&client, &base, "orders", "before", "1".to_owned())
        .await
        .expect("publish");
    assert_eq!(stored.status(), 202);
    blocking(|| nats.stop());
    assert!(eventually(async || readyz(&client, &base).await == 503).await);
    // `terminate` gives up (and fails) if the process has not exited in 30 s.
    let status = blocking(|| trellis.terminate()).expect("trellis exits on SIGTERM");
    // Nothing acknowledged waits to be sent, but the store could not confirm its close.
    assert_eq!(status.code(), Some(1), "{}", trellis.stderr());
    assert!(
        trellis.stderr().contains("event store") || trellis.stderr().contains("NATS"),
        "{}",
        trellis.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_answers_unavailable_while_nats_is_down_and_stays_usable() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (_dir, trellis) = start_on(&nats);
    let base = trellis.base_url().to_owned();
    let client = reqwest::Client::new();
    let mut grpc = TrellisClient::connect(format!("http://{}", trellis.grpc_addr()))
        .await
        .expect("gRPC connect");
    let (batches, outgoing) = mpsc::channel(8);
    let mut answers = grpc
        .publish_stream(ReceiverStream::new(outgoing))
        .await
        .expect("publish stream")
        .into_inner();
    let batch = |batch_id: u64, ids: &[&str]| PublishRequest {
        batch_id,
        topic: "orders".to_owned(),
        events: ids.iter().map(|id| crate::grpc::event(id)).collect(),
    };
    // Each event's result: its offset, or the code it failed with.
    let mut answer = async || -> Vec<Result<u64, tonic::Code>> {
        let response = tokio::time::timeout(Duration::from_secs(30), answers.message())
            .await
            .expect("an answer in time")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        response
            .results
            .into_iter()
            .map(|result| match result.result {
                Some(event_result::Result::Stored(stored)) => Ok(stored.offset),
                Some(event_result::Result::Error(error)) => Err(tonic::Code::from(error.code)),
                None => Err(tonic::Code::Unknown),
            })
            .collect()
    };
    batches.send(batch(1, &["s1", "s2"])).await.expect("send");
    assert_eq!(answer().await, vec![Ok(0), Ok(1)]);

    blocking(|| nats.stop());
    assert!(eventually(async || readyz(&client, &base).await == 503).await);
    batches.send(batch(2, &["s3", "s4"])).await.expect("send");
    assert_eq!(
        answer().await,
        vec![Err(tonic::Code::Unavailable), Err(tonic::Code::Unavailable)],
        "each event of the batch fails with a transient code"
    );

    blocking(|| nats.restart());
    assert!(eventually(async || readyz(&client, &base).await == 200).await);
    // The same batch again, on the same stream, as a producer resends it.
    batches.send(batch(3, &["s3", "s4"])).await.expect("send");
    assert_eq!(answer().await, vec![Ok(2), Ok(3)]);
}
