//! The view of `GET /v1/cluster` answers shaped like the API's.

use serde_json::{Value, json};

use super::cluster_status;

/// Two replicas, one without gRPC and owning nothing yet, and a unit nobody owns.
fn two_members() -> Value {
    json!({
        "self": "node-a",
        "lease_ttl_ms": 5000,
        "healthy": true,
        "members": [
            {"id": "node-a", "http": "127.0.0.1:8080", "grpc": "127.0.0.1:9090", "version": "0.1.0",
             "started_at": "2026-12-05T07:00:00Z",
             "load": {"subscriptions": 2, "connectors": 1, "groups": 0, "events_per_second": 120.55, "lag": 42},
             "owns": ["subscription/orders", "connector/mirror", "subscription/audit"]},
            {"id": "node-b", "http": "10.0.0.2:10105", "grpc": null, "version": "0.1.0",
             "started_at": "2026-12-05T07:01:30Z",
             "load": {"subscriptions": 0, "connectors": 0, "groups": 0, "events_per_second": 0.0, "lag": 0},
             "owns": []}
        ],
        "unowned": ["subscription/new-one"]
    })
}

#[test]
fn a_table_of_members_then_what_each_owns() {
    assert_eq!(
        cluster_status(&two_members()),
        "\
ID      HTTP            GRPC            SUBS  CONNECTORS  GROUPS  EVENTS/S  LAG  STARTED
node-a  127.0.0.1:8080  127.0.0.1:9090  2     1           0       120.5     42   2026-12-05T07:00:00Z
node-b  10.0.0.2:10105  -               0     0           0       0.0       0    2026-12-05T07:01:30Z

answered by node-a: healthy, lease TTL 5000 ms
node-a owns 3:
  connector/mirror
  subscription/audit
  subscription/orders
node-b owns nothing
unowned 1:
  subscription/new-one
"
    );
}

#[test]
fn an_unhealthy_replica_says_so_and_nothing_unowned_is_left_out() {
    let mut answer = two_members();
    answer["healthy"] = json!(false);
    answer["unowned"] = json!([]);
    let text = cluster_status(&answer);
    assert!(text.contains("answered by node-a: NOT healthy"), "{text}");
    assert!(!text.contains("unowned"), "{text}");
}

#[test]
fn fields_the_server_leaves_out_show_as_dashes() {
    let answer = json!({"members": [{"id": "node-c"}]});
    assert_eq!(
        cluster_status(&answer),
        "\
ID      HTTP  GRPC  SUBS  CONNECTORS  GROUPS  EVENTS/S  LAG  STARTED
node-c  -     -     -     -           -       -         -    -

answered by -: health unknown
node-c owns nothing
"
    );
}

#[test]
fn no_members_is_an_empty_table() {
    let answer = json!({"self": "node-a", "healthy": false, "lease_ttl_ms": 5000, "members": [], "unowned": []});
    let text = cluster_status(&answer);
    assert!(text.starts_with("ID  HTTP"), "{text}");
    assert_eq!(text.lines().nth(1), Some(""), "{text}");
}
