//! Starts and stops an in-process runtime for a test, on the embedded log or on JetStream, and
//! the requests and events the test modules share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trellis_meta::EmbeddedStore;
use trellis_proto::v1;
use trellis_runtime::{RuntimeConfig, ServeError};
use trellis_storage::{EmbeddedOptions, EventStore, JetStreamOptions, JetStreamStore};
use trellis_test_support::{Backend, NatsServer};

pub(crate) const STRUCTURED: &str = "application/cloudevents+json";
pub(crate) const BATCH: &str = "application/cloudevents-batch+json";

/// A guard against a hung gRPC call or stream, not a timing assertion.
pub(crate) const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a JetStream request may take before the store says `Unavailable`: short, so that a
/// test on a lost server fails in seconds rather than hangs, yet far above a loopback round trip.
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a test's runtime keeps its state, for as long as the test lasts: a temp dir (the
/// metadata store, and the log on the embedded backend) and, on JetStream, a nats-server of the
/// test's own. Runtimes started one after the other on one site see each other's events, as a
/// restarted `trellis serve` would.
pub(crate) struct Site {
    dir: tempfile::TempDir,
    /// Set on JetStream: the site's events live there.
    nats: Option<NatsServer>,
}

impl Site {
    /// A fresh site on `backend`; `None` when JetStream is asked for but nats-server is not
    /// installed (it says so on stderr), and the test then skips by returning.
    pub(crate) fn new(backend: Backend) -> Option<Site> {
        let nats = match backend {
            Backend::Embedded => None,
            Backend::JetStream => Some(NatsServer::start()?),
        };
        Some(Site {
            dir: tempfile::tempdir().expect("temp dir"),
            nats,
        })
    }

    /// The data dir: the metadata store is `meta.redb` in it.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A runtime with `config` on this site.
    pub(crate) async fn start(&self, config: RuntimeConfig) -> Server {
        let store = self.event_store(&config).await;
        Server::start_on(store, self.path(), config).await
    }

    /// One replica of a cluster on this JetStream site: its own connection to the site's
    /// nats-server, and `meta` shared with the other replicas (as they would share etcd).
    pub(crate) async fn start_replica(
        &self,
        config: RuntimeConfig,
        meta: Arc<dyn trellis_meta::MetadataStore>,
    ) -> Server {
        let store = self.event_store(&config).await;
        Server::start_with_meta(store, meta, config).await
    }

    /// The event store a `trellis serve` with `config` would open on this site.
    async fn event_store(&self, config: &RuntimeConfig) -> Arc<dyn EventStore> {
        match &self.nats {
            Some(nats) => {
                let mut options = JetStreamOptions::new(nats.url());
                options.dedup_window = config.dedup_window;
                options.request_timeout = NATS_REQUEST_TIMEOUT;
                Arc::new(
                    JetStreamStore::connect(options)
                        .await
                        .expect("connect to the test's nats-server"),
                )
            }
            None => {
                let mut options = EmbeddedOptions::new(self.path().join("log"));
                options.default_settings = config.default_topic.to_storage();
                options.dedup_window = config.dedup_window;
                options.dedup_max_entries = config.dedup_max_entries;
                options.key_of = Some(trellis_runtime::stored_event_key_of());
                Arc::new(
                    trellis_storage::EmbeddedStore::open(options).expect("open the event store"),
                )
            }
        }
    }
}

/// A fresh runtime with default settings on `backend`; keep both alive for the test's length.
/// `None`: the backend cannot run here, and the test skips.
pub(crate) async fn server(backend: Backend) -> Option<(Site, Server)> {
    server_with(backend, RuntimeConfig::default()).await
}

/// A fresh runtime with `config` on `backend`; keep both alive for the test's length.
/// `None`: the backend cannot run here, and the test skips.
pub(crate) async fn server_with(backend: Backend, config: RuntimeConfig) -> Option<(Site, Server)> {
    let site = Site::new(backend)?;
    let server = site.start(config).await;
    Some((site, server))
}

pub(crate) struct Server {
    pub(crate) base: String,
    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub(crate) grpc: String,
    pub(crate) client: reqwest::Client,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// A runtime over `store`, its metadata in `dir`.
    async fn start_on(store: Arc<dyn EventStore>, dir: &Path, config: RuntimeConfig) -> Server {
        let meta = EmbeddedStore::open(&dir.join("meta.redb")).expect("open metadata store");
        Server::start_with_meta(store, Arc::new(meta), config).await
    }

    async fn start_with_meta(
        store: Arc<dyn EventStore>,
        meta: Arc<dyn trellis_meta::MetadataStore>,
        config: RuntimeConfig,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC");
        let grpc = format!("http://{}", grpc_listener.local_addr().expect("local addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(trellis_runtime::serve_with_grpc(
            listener,
            Some(grpc_listener),
            store,
            meta,
            config,
            shutdown.clone(),
        ));
        Server {
            base,
            grpc,
            client: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
    }

    /// A gRPC client of this server.
    pub(crate) async fn grpc_client(
        &self,
    ) -> trellis_proto::v1::trellis_client::TrellisClient<tonic::transport::Channel> {
        trellis_proto::v1::trellis_client::TrellisClient::connect(self.grpc.clone())
            .await
            .expect("gRPC connect")
    }

    /// The text of `/metrics`.
    pub(crate) async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Publishes one binary-mode event and returns the status and JSON body.
    pub(crate) async fn publish_binary(&self, topic: &str, id: &str, data: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(&format!("/v1/topics/{topic}/events")))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/tests")
            .header("ce-type", "com.example.test")
            .header("content-type", "text/plain")
            .body(data.to_owned())
            .send()
            .await
            .expect("publish request");
        json_of(response).await
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        json_of(response).await
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        json_of(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub(crate) async fn put(&self, path: &str, body: &str) -> (u16, Value) {
        json_of(
            self.client
                .put(self.url(path))
                .body(body.to_owned())
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub(crate) async fn delete(&self, path: &str) -> (u16, Value) {
        json_of(
            self.client
                .delete(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }
}

pub(crate) async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// Asserts the API's error shape and returns the message.
#[track_caller]
pub(crate) fn assert_error(res: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!(res.0, status, "unexpected status; body {}", res.1);
    assert_eq!(
        res.1["error"], code,
        "unexpected error code; body {}",
        res.1
    );
    res.1["message"]
        .as_str()
        .expect("message is a string")
        .to_owned()
}

pub(crate) fn event(id: &str) -> Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "/tests", "type": "com.example.test", "data": {"n": 1}})
}

/// A gRPC CloudEvent with a string `datacontenttype` and text data.
pub(crate) fn grpc_event(id: &str, datacontenttype: &str, data: &str) -> v1::CloudEvent {
    v1::CloudEvent {
        id: id.to_owned(),
        source: "/grpc-tests".to_owned(),
        spec_version: "1.0".to_owned(),
        r#type: "com.example.test".to_owned(),
        attributes: std::collections::HashMap::from([(
            "datacontenttype".to_owned(),
            v1::CloudEventAttributeValue {
                attr: Some(v1::cloud_event_attribute_value::Attr::CeString(
                    datacontenttype.to_owned(),
                )),
            },
        )]),
        data: Some(v1::cloud_event::Data::TextData(data.to_owned())),
    }
}

/// `name`, made distinct per backend. The metrics recorder is process-wide and the two cases of
/// a test run at the same time, so a name that becomes a metric label (a topic, a subscription)
/// must differ between them for each case to read its own series.
pub(crate) fn per_backend(name: &str, backend: Backend) -> String {
    match backend {
        Backend::Embedded => format!("{name}-embedded"),
        Backend::JetStream => format!("{name}-jetstream"),
    }
}
