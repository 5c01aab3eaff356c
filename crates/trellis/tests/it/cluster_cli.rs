//! `trellis serve --meta etcd://...` and `trellis cluster status` as a user runs them: the real
//! binary against a real etcd and nats-server on loopback ports of their own. Start-up failures
//! must be one line on stderr and exit 1; a password never shows in a line.
//!
//! Each test skips when etcd or nats-server is not installed, unless `TRELLIS_REQUIRE_ETCD` /
//! `TRELLIS_REQUIRE_NATS` is set.

use std::path::Path;

use trellis_etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, auth_client::AuthClient,
};
use trellis_meta::{EtcdOptions, EtcdStore, MetadataStore};
use trellis_test_support::{EtcdServer, NatsServer, TestTls, TrellisProcess, run_to_end};

use crate::{bin, eventually, publish, run_trellis};

/// `trellis serve ARGS...` on a fresh data dir and ports 0, run to its end: exit code and stderr.
fn serve_until_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let mut all = vec![
        "serve",
        "--data-dir",
        data_dir,
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let (status, _, stderr) = run_to_end(bin(), &all, &[]).expect("trellis runs");
    (status.code(), stderr)
}

#[track_caller]
fn assert_one_line(code: Option<i32>, stderr: &str, expected: &str) {
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("trellis: error: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

async fn healthz(process: &TrellisProcess) -> u16 {
    reqwest::get(format!("{}/healthz", process.base_url()))
        .await
        .expect("GET /healthz")
        .status()
        .as_u16()
}

/// With etcd holding the metadata and NATS the events, the node answers, keeps nothing but its
/// lock in the data dir, and what it creates lands in etcd.
#[tokio::test(flavor = "multi_thread")]
async fn serves_with_etcd_metadata_and_nats_events() {
    let (Some(etcd), Some(nats)) = (EtcdServer::start(), NatsServer::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = format!("etcd://{}", etcd.endpoint());
    let trellis = TrellisProcess::start(
        bin(),
        dir.path(),
        &["--meta", &meta, "--storage", &nats.url()],
    )
    .expect("trellis starts on etcd and NATS");
    assert_eq!(healthz(&trellis).await, 200);

    let stored = publish(
        &reqwest::Client::new(),
        trellis.base_url(),
        "orders",
        "e-1",
        "first".to_owned(),
    )
    .await
    .expect("publish");
    assert_eq!(stored.status(), 202);
    let store = EtcdStore::connect(EtcdOptions::new([etcd.endpoint()]))
        .await
        .expect("connect to etcd");
    assert!(
        eventually(async || store
            .get("/topics/orders")
            .await
            .is_ok_and(|kv| kv.is_some()))
        .await,
        "the auto-created topic is recorded in etcd"
    );
    assert_eq!(
        entries(dir.path()),
        ["LOCK"],
        "the data dir holds only its lock"
    );
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the data dir")
        .map(|entry| {
            entry
                .expect("a dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// etcd over TLS under a CA no system trusts: `etcds://` with `--meta-ca` connects; without a
/// CA it is refused before any connection.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_is_reached_with_its_ca() {
    let tls = TestTls::for_hosts(&["127.0.0.1"]);
    let (Some(etcd), Some(nats)) = (EtcdServer::start_with_tls(&tls), NatsServer::start()) else {
        return;
    };
    let endpoint = etcd.tls_endpoint().expect("a TLS endpoint");
    let meta = endpoint.replacen("https://", "etcds://", 1);
    let files = tempfile::tempdir().expect("temp dir");
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).expect("write the CA");
    let ca = ca.to_str().expect("utf-8 path");

    let (code, stderr) = serve_until_exit(&["--meta", &meta, "--storage", &nats.url()]);
    assert_one_line(code, &stderr, "needs --meta-ca");

    let dir = tempfile::tempdir().expect("temp dir");
    let trellis = TrellisProcess::start(
        bin(),
        dir.path(),
        &["--meta", &meta, "--meta-ca", ca, "--storage", &nats.url()],
    )
    .expect("trellis starts on etcd over TLS");
    assert_eq!(healthz(&trellis).await, 200);
}

/// etcd that does not answer at start: one line naming the endpoints, exit 1, nothing served.
#[test]
fn an_unreachable_etcd_is_one_line_and_exit_1() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let meta = format!("etcd://127.0.0.1:{}", dead_port());
    let (code, stderr) = serve_until_exit(&["--meta", &meta, "--storage", &nats.url()]);
    assert_one_line(
        code,
        &stderr,
        &format!("cannot reach the etcd metadata store at {meta}: "),
    );
}

/// Replicas must share events as well as metadata: etcd beside the embedded log is refused
/// before anything is opened.
#[test]
fn etcd_metadata_with_the_embedded_event_log_is_refused() {
    let (code, stderr) = serve_until_exit(&["--meta", "etcd://127.0.0.1:2379"]);
    assert_one_line(code, &stderr, "needs NATS storage");
}

/// With etcd's authentication on: a wrong password is one line without the password; the right
/// one, given through the environment or the config file, starts the node.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_users_authenticate_from_flags_env_and_file() {
    let (Some(etcd), Some(nats)) = (EtcdServer::start(), NatsServer::start()) else {
        return;
    };
    enable_auth(&etcd).await;
    let files = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let wrong = write("wrong", "hunter2\n");
    let right = write("right", "root-pw\n");
    let meta = format!("etcd://{}", etcd.endpoint());

    let (code, stderr) = serve_until_exit(&[
        "--meta",
        &meta,
        "--storage",
        &nats.url(),
        "--meta-user",
        "root",
        "--meta-password-file",
        &wrong,
    ]);
    assert_one_line(
        code,
        &stderr,
        &format!("cannot use the etcd metadata store at {meta}: "),
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let (code, stderr) = serve_until_exit(&[
        "--meta",
        &meta,
        "--storage",
        &nats.url(),
        "--meta-user",
        "root",
        "--meta-password-file",
        "/nonexistent/password",
    ]);
    assert_one_line(
        code,
        &stderr,
        "cannot read the etcd password file /nonexistent/password",
    );

    // The environment.
    let env_dir = tempfile::tempdir().expect("temp dir");
    let from_env = TrellisProcess::start_with_env(
        bin(),
        env_dir.path(),
        &[],
        &[
            ("TRELLIS_META", &meta),
            ("TRELLIS_STORAGE", &nats.url()),
            ("TRELLIS_META_USER", "root"),
            ("TRELLIS_META_PASSWORD_FILE", &right),
            ("TRELLIS_NODE_ID", "node-env"),
            ("TRELLIS_LEASE_TTL_MS", "2000"),
        ],
    )
    .expect("trellis starts with etcd settings from the environment");
    assert_eq!(healthz(&from_env).await, 200);
    let log = from_env.stderr();
    assert!(log.contains("node_id=node-env"), "{log}");
    assert!(log.contains(&format!("meta={meta}")), "{log}");
    assert!(!log.contains("root-pw"), "{log}");

    // The config file.
    let file_dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        "trellis.toml",
        &format!(
            "[storage]\nurl = \"{}\"\n\
             [meta]\nurl = \"{meta}\"\nuser = \"root\"\npassword_file = \"{right}\"\n\
             [cluster]\nnode_id = \"node-file\"\nadvertise_http = \"127.0.0.1:1\"\nlease_ttl_ms = 3000\n",
            nats.url()
        ),
    );
    let from_file = TrellisProcess::start(bin(), file_dir.path(), &["--config", &config])
        .expect("trellis starts with etcd settings from the config file");
    assert_eq!(healthz(&from_file).await, 200);
    let log = from_file.stderr();
    assert!(log.contains("node_id=node-file"), "{log}");
    assert!(!log.contains("root-pw"), "{log}");
}

/// Adds the user `root` (password `root-pw`) with etcd's root role and turns authentication on.
async fn enable_auth(etcd: &EtcdServer) {
    let store = EtcdStore::connect(EtcdOptions::new([etcd.endpoint()]))
        .await
        .expect("connect to etcd");
    let mut admin = AuthClient::new(store.channel());
    admin
        .user_add(AuthUserAddRequest {
            name: "root".into(),
            password: "root-pw".into(),
            ..AuthUserAddRequest::default()
        })
        .await
        .expect("add root");
    admin
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .expect("grant root");
    admin
        .auth_enable(AuthEnableRequest {})
        .await
        .expect("enable auth");
}

/// `trellis cluster status` with no server there: one line naming it, exit 1.
#[test]
fn cluster_status_against_no_server_is_one_line_and_exit_1() {
    let server = format!("http://127.0.0.1:{}", dead_port());
    for output in ["text", "json"] {
        let run = run_trellis(
            &["cluster", "status", "--server", &server, "--output", output],
            "TRELLIS_SERVER",
            "",
        );
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("cannot reach {server}")),
            "{}",
            run.stderr
        );
    }
}
