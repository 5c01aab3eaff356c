//! Reaching a NATS that asks for more than an address: TLS under a CA no system trusts, and a
//! user and password in the URL, which Trellis must use and never show.

use trellis_test_support::{NatsServer, TestTls, TrellisProcess, run_to_end};

use crate::{bin, publish};

/// `trellis serve --storage URL EXTRA...` run to its end: its exit code, stdout and stderr.
pub(crate) fn serve_until_exit(url: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let mut args = vec![
        "serve",
        "--data-dir",
        data_dir,
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--storage",
        url,
    ];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_to_end(bin(), &args, &[]).expect("trellis runs");
    (status.code(), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_over_tls_is_reached_with_its_ca_and_refused_without_it() {
    let tls = TestTls::for_hosts(&["127.0.0.1", "localhost"]);
    let files = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let ca = write("ca.pem", &tls.ca_pem);
    let cert = write("server.pem", &tls.cert_pem);
    let key = write("server-key.pem", &tls.key_pem);
    let Some(nats) = NatsServer::start_with_args(&["--tls", "--tlscert", &cert, "--tlskey", &key])
    else {
        return;
    };
    let url = format!("tls://127.0.0.1:{}", nats.port());

    // Without the CA the server's certificate is not trusted: one line, exit 1.
    let (code, _, stderr) = serve_until_exit(&url, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("cannot use NATS JetStream"), "{stderr}");

    // A CA file that does not exist is named.
    let (code, _, stderr) = serve_until_exit(&url, &["--nats-tls-ca", "/nonexistent/ca.pem"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");

    // With it, Trellis stores and serves events over TLS.
    let dir = tempfile::tempdir().expect("temp dir");
    let trellis = TrellisProcess::start(
        bin(),
        dir.path(),
        &["--storage", &url, "--nats-tls-ca", &ca],
    )
    .expect("trellis starts on NATS over TLS");
    let client = reqwest::Client::new();
    let stored = publish(
        &client,
        trellis.base_url(),
        "t",
        "e-1",
        "over tls".to_owned(),
    )
    .await
    .expect("publish");
    assert_eq!(stored.status(), 202);
    let page: serde_json::Value = client
        .get(format!("{}/v1/topics/t/events?from=0", trellis.base_url()))
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("a page");
    assert_eq!(page[0]["data"], "over tls", "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_and_password_in_the_url_are_used_and_never_shown() {
    const PASSWORD: &str = "s3cret-Pa55word";
    let Some(nats) = NatsServer::start_with_args(&["--user", "trellis", "--pass", PASSWORD]) else {
        return;
    };
    // The wrong password: refused at start, the URL shown without it.
    let wrong = format!("nats://trellis:wrong-{PASSWORD}@127.0.0.1:{}", nats.port());
    let (code, _, stderr) = serve_until_exit(&wrong, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the password is not shown: {stderr}"
    );
    assert!(stderr.contains("nats://***@127.0.0.1"), "{stderr}");

    let url = format!("nats://trellis:{PASSWORD}@127.0.0.1:{}", nats.port());
    let dir = tempfile::tempdir().expect("temp dir");
    let trellis = TrellisProcess::start(
        bin(),
        dir.path(),
        &["--storage", &url, "--log-level", "debug"],
    )
    .expect("trellis starts with the password");
    let client = reqwest::Client::new();
    let stored = publish(&client, trellis.base_url(), "t", "e-1", "x".to_owned())
        .await
        .expect("publish");
    assert_eq!(stored.status(), 202);
    let logs = trellis.stderr();
    assert!(
        logs.contains("nats://***@127.0.0.1"),
        "the start line names the storage: {logs}"
    );
    assert!(
        !logs.contains(PASSWORD),
        "no log line shows the password: {logs}"
    );
}
