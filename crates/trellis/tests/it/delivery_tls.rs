//! `https` webhooks end to end: a receiver whose certificate is not trusted is named as such in
//! the log and the dead letter, and trusting its CA through `[delivery] webhook_ca_file` lets
//! the same delivery through.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};

use rstest::rstest;
use rstest_reuse::apply;
use trellis_test_support::{Backend, backends};

use crate::{eventually, publish, start_on, start_with_config_on};

/// An `https` receiver on loopback whose certificate (for `localhost` and 127.0.0.1) a
/// throwaway CA signed, so the system's roots do not trust it.
struct HttpsReceiver {
    port: u16,
    ca_pem: String,
    /// The `ce-id` of each request that got past the TLS handshake.
    ids: Arc<Mutex<Vec<String>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl HttpsReceiver {
    async fn start() -> HttpsReceiver {
        let tls = trellis_test_support::TestTls::for_hosts(&["localhost", "127.0.0.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let ids = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&ids);
        let accept_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let id = request
                                .headers()
                                .get("ce-id")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            seen.lock().expect("requests lock").push(id);
                            async {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Empty::<Bytes>::new(),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsReceiver {
            port,
            ca_pem: tls.ca_pem,
            ids,
            accept_task,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hook", self.port)
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().expect("requests lock").clone()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Creates subscription `name` on topic `t` to `url`, with a budget that dead-letters in
/// moments.
async fn subscribe(client: &reqwest::Client, base: &str, name: &str, url: String) {
    let created = client
        .post(format!("{base}/v1/subscriptions"))
        .json(&json!({
            "name": name, "topic": "t", "sink": {"urls": [url]},
            "delivery": {
                "max_attempts": 2,
                "backoff": {"initial_ms": 10, "max_ms": 20},
                "request_timeout_ms": 2000,
            },
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
}

async fn dead_letters(client: &reqwest::Client, base: &str, name: &str) -> Vec<Value> {
    let Ok(response) = client
        .get(format!("{base}/v1/topics/{name}.dlq/events?from=0"))
        .send()
        .await
    else {
        return Vec::new();
    };
    if !response.status().is_success() {
        return Vec::new();
    }
    response
        .json::<Vec<Value>>()
        .await
        .expect("dead letters as JSON")
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_https_certificate_is_named_in_the_log_and_the_dead_letter(
    #[case] backend: Backend,
) {
    let receiver = HttpsReceiver::start().await;
    let Some(process) = start_on(backend) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    subscribe(&client, &base, "hooks", receiver.url()).await;
    let published = publish(&client, &base, "t", "tls-1", "x".to_owned())
        .await
        .expect("publish");
    assert_eq!(published.status(), 202);

    let mut letters = Vec::new();
    assert!(
        eventually(async || {
            letters = dead_letters(&client, &base, "hooks").await;
            !letters.is_empty()
        })
        .await,
        "the event is dead-lettered; log: {}",
        process.stderr()
    );
    let letter = &letters[0];
    assert_eq!(letter["id"], "tls-1");
    assert_eq!(letter["trellisfailure"], "retries_exhausted");
    let reason = letter["trellisreason"].as_str().expect("trellisreason");
    assert!(
        reason.contains("the receiver's TLS certificate is not accepted: invalid peer certificate"),
        "{reason}"
    );
    assert!(!reason.contains("cannot connect"), "{reason}");
    assert!(receiver.ids().is_empty(), "no request got past TLS");

    // The operator reading the log learns the same for that delivery. Log lines reach stderr a
    // moment after they are written, which may be after the dead letter is readable.
    let failed_line = |log: &str| {
        log.lines()
            .any(|line| line.contains("Delivery failed.") && line.contains("tls-1"))
    };
    eventually(async || failed_line(&process.stderr())).await;
    let log = process.stderr();
    let line = log
        .lines()
        .find(|line| line.contains("Delivery failed.") && line.contains("tls-1"))
        .unwrap_or_else(|| panic!("a log line for the failed delivery: {log}"));
    assert!(
        line.contains("the receiver's TLS certificate is not accepted"),
        "{line}"
    );
    assert!(!line.contains("cannot connect"), "{line}");
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_ca_file_lets_the_https_delivery_through(#[case] backend: Backend) {
    let receiver = HttpsReceiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("receiver-ca.pem");
    std::fs::write(&ca_file, &receiver.ca_pem).expect("write CA file");
    let config = format!("[delivery]\nwebhook_ca_file = {:?}\n", ca_file);
    let Some(process) = start_with_config_on(backend, dir, &config) else {
        return;
    };
    let base = process.base_url().to_owned();
    let client = reqwest::Client::new();
    subscribe(&client, &base, "hooks", receiver.url()).await;
    let published = publish(&client, &base, "t", "tls-1", "x".to_owned())
        .await
        .expect("publish");
    assert_eq!(published.status(), 202);

    assert!(
        eventually(async || !receiver.ids().is_empty()).await,
        "the receiver gets the event; log: {}",
        process.stderr()
    );
    assert_eq!(receiver.ids(), ["tls-1"]);
    assert!(dead_letters(&client, &base, "hooks").await.is_empty());
}
