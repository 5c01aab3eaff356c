//! Runtime settings: what the `trellis` binary hands the runtime after merging its config file,
//! environment and flags. Plain data; validation of user input happens where it is parsed.

use std::time::Duration;

use trellis_delivery::tls::WebhookTls;

use crate::net::ConnectionLimits;
use crate::topics::TopicSettings;

/// Settings of the HTTP API and the topics it creates.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// A single event larger than this (in its stored, structured JSON form) is refused with 413.
    pub max_event_bytes: usize,
    /// A request body (one event or a whole batch) larger than this is refused with 413.
    pub max_batch_bytes: usize,
    /// A batch with more events than this is refused with 413.
    pub max_batch_events: usize,
    /// JSON event data nesting arrays and objects deeper than this is refused with 400
    /// (`invalid_event`, attribute `data`), over HTTP and gRPC.
    pub max_json_depth: usize,
    /// Publishing to a topic that does not exist creates it with `default_topic`.
    pub auto_create_topics: bool,
    /// No topic is created (by a publish, `PUT` or a subscription) once this many exist; the
    /// request is answered 409 `too_many_topics` (gRPC `FAILED_PRECONDITION`). Topics already
    /// on disk are always opened, even beyond it.
    pub max_topics: usize,
    /// Settings for topics created without explicit ones.
    pub default_topic: TopicSettings,
    /// How often retention runs over every topic.
    pub retention_check_interval: Duration,
    /// Address ranges webhook targets may not resolve to; by default the link-local ranges
    /// (where cloud metadata servers answer), 0.0.0.0/8 and multicast.
    pub webhook_deny: Vec<ipnet::IpNet>,
    /// The `WebHook-Request-Origin` of validation handshakes: the name receivers allow.
    pub webhook_origin: String,
    /// Whom `https` webhooks must prove to be. `None`: the system's CA store only, loaded when
    /// the runtime starts. The binary builds it from `[delivery] webhook_ca_file`, so a bad
    /// file is refused with the other configuration errors, before anything listens.
    pub webhook_tls: Option<WebhookTls>,
    /// An event whose `(source, id)` its topic stored less than this long ago is answered with
    /// the first copy's offset and not stored again. Zero turns deduplication off.
    pub dedup_window: Duration,
    /// At most this many `(source, id)` pairs are remembered over all topics (a fixed size
    /// each, as digests, whatever the ids' size); beyond it the oldest are forgotten first, so the
    /// window may in effect be shorter.
    /// After a restart each topic's last `dedup_max_entries` records are read back, at most.
    /// Both dedup settings go to the event store, which deduplicates: whoever builds the store
    /// (the binary, for the embedded one) passes them on.
    pub dedup_max_entries: usize,
    /// gRPC `PublishStream`: batches one stream may have in flight. A stream that sends more
    /// is not read until one is answered (back-pressure).
    pub grpc_max_batches_in_flight: usize,
    /// Connection limits and timeouts of the HTTP listener.
    pub http_connections: ConnectionLimits,
    /// Connection limits and timeouts of the gRPC listener.
    pub grpc_connections: ConnectionLimits,
    /// After the shutdown signal, requests and calls in flight get this long to finish; then
    /// the connections still open are closed and the log is flushed.
    pub shutdown_timeout: Duration,
    /// Who this replica is among the others sharing the metadata store.
    pub cluster: ClusterConfig,
}

/// This replica's identity in the cluster, as the binary resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Unique per running process; `None`: the runtime makes one up.
    pub node_id: Option<String>,
    /// `HOST:PORT` other replicas and clients reach the HTTP API at; `None`: the bound address.
    pub advertise_http: Option<String>,
    /// `HOST:PORT` of the gRPC API, likewise.
    pub advertise_grpc: Option<String>,
    /// How long the member's lease outlives its last refresh.
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            advertise_http: None,
            advertise_grpc: None,
            lease_ttl: Duration::from_secs(5),
        }
    }
}

impl RuntimeConfig {
    /// What every published event is held to beyond the CloudEvents rules.
    pub(crate) fn event_limits(&self) -> trellis_cloudevents::EventLimits {
        trellis_cloudevents::EventLimits {
            max_json_depth: self.max_json_depth,
            ..trellis_cloudevents::EventLimits::default()
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_event_bytes: 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
            max_json_depth: trellis_cloudevents::EventLimits::default().max_json_depth,
            auto_create_topics: true,
            max_topics: 10_000,
            default_topic: TopicSettings::default(),
            retention_check_interval: Duration::from_secs(30),
            webhook_deny: trellis_delivery::guard::AddressGuard::default_deny_list(),
            webhook_origin: "trellis".to_owned(),
            webhook_tls: None,
            dedup_window: Duration::from_secs(10 * 60),
            dedup_max_entries: 1_000_000,
            grpc_max_batches_in_flight: 64,
            http_connections: ConnectionLimits::http_default(),
            grpc_connections: ConnectionLimits::grpc_default(),
            shutdown_timeout: Duration::from_secs(30),
            cluster: ClusterConfig::default(),
        }
    }
}
