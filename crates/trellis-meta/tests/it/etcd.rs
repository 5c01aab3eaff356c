//! The etcd store against a real etcd started on loopback: the conformance suite, unchanged,
//! then what only a server can show: a watch that survives a restart, compaction reported as
//! the trait says, and an unreachable etcd as an error rather than a hang or a panic.
//!
//! Each test skips when etcd is not installed, unless `TRELLIS_REQUIRE_ETCD` is set.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use trellis_etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, CompactionRequest,
    auth_client::AuthClient, kv_client::KvClient,
};
use trellis_meta::{
    EtcdOptions, EtcdStore, MetaError, MetadataStore, WatchEvent, WatchStream, conformance,
};
use trellis_test_support::EtcdServer;

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(server: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::new([server.endpoint()]))
        .await
        .expect("connect to etcd")
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(server) = EtcdServer::start() else { return };
            let store = connect(&server).await;
            conformance::$check(&store).await;
        }
    )*};
}

conformance_tests!(
    get_put_delete,
    revisions_and_versions,
    delete_of_missing_key_uses_no_revision,
    range_by_prefix_is_sorted,
    range_of_empty_prefix_returns_everything,
    cas_absent,
    cas_mod_revision,
    compare_and_delete,
    concurrent_cas_has_one_winner_per_round,
    watch_from_now,
    watch_filters_by_prefix_and_sees_deletes,
    watch_from_past_revision_replays_then_follows,
    watch_after_range_has_no_gap,
    watch_racing_writes_has_no_gap_or_duplicate,
    lease_revoke_deletes_its_keys,
    lease_expires_without_keep_alive,
    lease_keep_alive_holds_its_keys,
    guarded_put_fences_on_another_key,
    guarded_put_takes_ownership_under_a_lease,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_one_shared_etcd() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let store = connect(&server).await;
    conformance::run_all(&store).await;
}

/// A watch opened before etcd restarts delivers, after the restart, every write made while it
/// was down and after, each once and in order, without the caller doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_an_etcd_restart() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let store = connect(&server).await;
    let prefix = "subscriptions/";
    let mut stream = store.watch(prefix, None).await.expect("watch");
    let first = put(&store, "subscriptions/a", "1").await;
    assert_eq!(next_event(&mut stream).await.mod_revision(), first);

    server.restart();
    // The restarted member keeps its data; these writes land while the watch reconnects.
    let second = put_when_back(&store, "subscriptions/b", "2").await;
    let third = put(&store, "subscriptions/a", "3").await;
    assert!(store.delete("subscriptions/b").await.expect("delete"));
    let fourth = third + 1;

    let seen: Vec<u64> = [
        next_event(&mut stream).await,
        next_event(&mut stream).await,
        next_event(&mut stream).await,
    ]
    .iter()
    .map(WatchEvent::mod_revision)
    .collect();
    assert_eq!(seen, [second, third, fourth], "no gap and no duplicate");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "nothing more"
    );
}

/// A watch from a revision etcd has compacted away fails with `Compacted`, naming the oldest
/// revision still there; a watch from that revision works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_reports_compacted() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let store = connect(&server).await;
    let early = put(&store, "topics/a", "1").await;
    put(&store, "topics/a", "2").await;
    let compacted_at = put(&store, "topics/a", "3").await;
    KvClient::new(store.channel())
        .compact(CompactionRequest {
            revision: i64::try_from(compacted_at).expect("revision"),
            physical: false,
        })
        .await
        .expect("compact");

    match store.watch("topics/", Some(early)).await {
        Err(MetaError::Compacted { requested, oldest }) => {
            assert_eq!(requested, early);
            assert_eq!(oldest, compacted_at);
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut stream = store
        .watch("topics/", Some(compacted_at))
        .await
        .expect("watch from the oldest revision left");
    assert_eq!(next_event(&mut stream).await.mod_revision(), compacted_at);
}

/// Nothing listens on the endpoint: connecting fails as unavailable, within the timeouts.
#[tokio::test]
async fn unreachable_etcd_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let options = EtcdOptions::new([format!("127.0.0.1:{port}")])
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(1));
    match EtcdStore::connect(options).await {
        Err(MetaError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// Requests to a store whose etcd went away fail as unavailable and work again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_unavailable_while_etcd_is_down() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let store = EtcdStore::connect(
        EtcdOptions::new([server.endpoint()])
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("connect");
    put(&store, "k", "1").await;
    server.stop();
    match store.get("k").await {
        Err(MetaError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    server.restart();
    let kv = get_when_back(&store, "k").await;
    assert_eq!(kv.map(|kv| kv.value), Some(Bytes::from("1")));
}

async fn put(store: &EtcdStore, key: &str, value: &'static str) -> u64 {
    store.put(key, Bytes::from(value)).await.expect("put")
}

/// Retries a put while the client reconnects to a restarted etcd.
async fn put_when_back(store: &EtcdStore, key: &str, value: &'static str) -> u64 {
    for _ in 0..100 {
        match store.put(key, Bytes::from(value)).await {
            Ok(revision) => return revision,
            Err(MetaError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("put failed: {other}"),
        }
    }
    panic!("etcd did not come back");
}

async fn get_when_back(store: &EtcdStore, key: &str) -> Option<trellis_meta::KeyValue> {
    for _ in 0..100 {
        match store.get(key).await {
            Ok(kv) => return kv,
            Err(MetaError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("get failed: {other}"),
        }
    }
    panic!("etcd did not come back");
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("the watch failed: {error}"),
        Ok(None) => panic!("the watch ended early"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// While etcd is down, a `LeaseKeeper` cannot refresh, so its holder stops holding once
/// `held_until` passes; when etcd returns (which restarts every lease's TTL) it holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keeper_stops_holding_while_etcd_is_down_and_recovers() {
    use std::sync::Arc;
    use trellis_meta::{GuardedPut, LeaseKeeper};

    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let store: Arc<dyn MetadataStore> = Arc::new(
        EtcdStore::connect(
            EtcdOptions::new([server.endpoint()])
                .connect_timeout(Duration::from_millis(300))
                .request_timeout(Duration::from_millis(500)),
        )
        .await
        .expect("connect"),
    );
    let lease = store
        .lease_grant(Duration::from_secs(2))
        .await
        .expect("lease_grant");
    store
        .guarded_put(GuardedPut::new("owners/a", "me").lease(lease.id))
        .await
        .expect("guarded_put");
    let keeper = LeaseKeeper::spawn(store.clone(), lease);
    assert!(keeper.holds());

    server.stop();
    let stuck_at = keeper.held_until().expect("not lost");
    tokio::time::sleep_until((stuck_at + Duration::from_millis(100)).into()).await;
    assert!(
        !keeper.holds(),
        "past held_until without a refresh, the holder no longer holds"
    );

    server.restart();
    let mut status = keeper.subscribe();
    tokio::time::timeout(EVENT_TIMEOUT, status.wait_for(|_| keeper.holds()))
        .await
        .expect("the keeper holds again once etcd is back")
        .expect("the keeper runs");
    assert!(
        store.get("owners/a").await.expect("get").is_some(),
        "the lease, and its key, survived the restart"
    );
}

/// With etcd's authentication on, the right user and password connect and work; a wrong
/// password fails at connect, and not as `Unavailable` (retrying would not help).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authenticate() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    enable_auth(&server).await;

    let store = EtcdStore::connect(EtcdOptions::new([server.endpoint()]).user("root", "root-pw"))
        .await
        .expect("connect with the right password");
    put(&store, "k", "v").await;

    match EtcdStore::connect(EtcdOptions::new([server.endpoint()]).user("root", "wrong")).await {
        Err(MetaError::Storage(_)) => {}
        Err(other) => panic!("expected a storage error, got {other}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
    match EtcdStore::connect(EtcdOptions::new([server.endpoint()])).await {
        Err(MetaError::Storage(_)) => {}
        Err(other) => panic!("expected a storage error without credentials, got {other}"),
        Ok(_) => panic!("connected without credentials"),
    }
}

/// Over TLS, trusting the CA that signed etcd's certificate works; trusting nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_connects() {
    let tls = trellis_test_support::TestTls::for_hosts(&["127.0.0.1"]);
    let Some(server) = EtcdServer::start_with_tls(&tls) else {
        return;
    };
    let endpoint = server.tls_endpoint().expect("a TLS endpoint");
    let store = EtcdStore::connect(
        EtcdOptions::new([endpoint.clone()]).ca_pem(tls.ca_pem.as_bytes().to_vec()),
    )
    .await
    .expect("connect over TLS");
    put(&store, "k", "v").await;

    // Another CA, which did not sign etcd's certificate.
    let untrusted = trellis_test_support::TestTls::for_hosts(&["127.0.0.1"]).ca_pem;
    let result = EtcdStore::connect(
        EtcdOptions::new([endpoint])
            .ca_pem(untrusted.into_bytes())
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Duration::from_secs(1)),
    )
    .await;
    assert!(
        result.is_err(),
        "a certificate from a CA not trusted is refused"
    );
}

/// etcd forgets the tokens it handed out when it restarts (and a simple token when unused for a
/// while); the store then authenticates again by itself instead of failing every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_auth_token_is_renewed() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    enable_auth(&server).await;
    let store = EtcdStore::connect(EtcdOptions::new([server.endpoint()]).user("root", "root-pw"))
        .await
        .expect("connect with the right password");
    put(&store, "k", "1").await;

    server.restart();
    put_when_back(&store, "k", "2").await;
    let kv = store.get("k").await.expect("get after the restart");
    assert_eq!(kv.map(|kv| kv.value), Some(Bytes::from("2")));
}

/// Adds the user `root` (password `root-pw`) with etcd's root role and turns authentication on.
async fn enable_auth(server: &EtcdServer) {
    let mut admin = AuthClient::new(connect(server).await.channel());
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

/// With several endpoints, requests and watches go to one that answers: one dead endpoint in the
/// list does not stop the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_endpoint_among_several_is_skipped() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let options = EtcdOptions::new([format!("127.0.0.1:{dead_port}"), server.endpoint()])
        .connect_timeout(Duration::from_millis(500));
    let store = EtcdStore::connect(options)
        .await
        .expect("connect through the live endpoint");
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(store.watch("k", None).await.expect("watch"));
    }
    let mut revisions = Vec::new();
    for value in ["1", "2", "3", "4"] {
        revisions.push(put(&store, "k", value).await);
    }
    let kv = store.get("k").await.expect("get");
    assert_eq!(kv.map(|kv| kv.value), Some(Bytes::from("4")));
    for stream in &mut streams {
        assert_eq!(next_event(stream).await.mod_revision(), revisions[0]);
    }
}
