//! Starts and stops an in-process runtime for a test, and the requests and events the test
//! modules share.

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trellis_meta::EmbeddedStore;
use trellis_proto::v1;
use trellis_runtime::{RuntimeConfig, ServeError};
use trellis_storage::{EmbeddedOptions, EventStore};

pub(crate) const STRUCTURED: &str = "application/cloudevents+json";
pub(crate) const BATCH: &str = "application/cloudevents-batch+json";

/// A guard against a hung gRPC call or stream, not a timing assertion.
pub(crate) const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// A fresh runtime with default settings on a temp dir; keep both alive for the test's length.
pub(crate) async fn server() -> (tempfile::TempDir, Server) {
    server_with(RuntimeConfig::default()).await
}

/// A fresh runtime with `config` on a temp dir; keep both alive for the test's length.
pub(crate) async fn server_with(config: RuntimeConfig) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), config).await;
    (dir, server)
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
    pub(crate) async fn start(dir: &std::path::Path, config: RuntimeConfig) -> Server {
        let mut options = EmbeddedOptions::new(dir.join("log"));
        options.default_settings = config.default_topic.to_storage();
        options.dedup_window = config.dedup_window;
        options.dedup_max_entries = config.dedup_max_entries;
        options.key_of = Some(trellis_runtime::stored_event_key_of());
        let store: Arc<dyn EventStore> =
            Arc::new(trellis_storage::EmbeddedStore::open(options).expect("open the event store"));
        let meta = EmbeddedStore::open(&dir.join("meta.redb")).expect("open metadata store");
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
            Arc::new(meta),
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
