//! A Trellis runtime in-process on loopback, the far side of a bridge under test.

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A runtime on the embedded log in a temp dir.
pub(crate) struct Far {
    _dir: tempfile::TempDir,
    pub(crate) base: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), trellis_runtime::ServeError>>,
}

impl Far {
    pub(crate) async fn start() -> Far {
        Far::start_with(trellis_runtime::RuntimeConfig::default()).await
    }

    pub(crate) async fn start_with(config: trellis_runtime::RuntimeConfig) -> Far {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = trellis_storage::EmbeddedOptions::new(dir.path().join("log"));
        options.key_of = Some(trellis_runtime::stored_event_key_of());
        let store = Arc::new(trellis_storage::EmbeddedStore::open(options).expect("event store"));
        let meta =
            trellis_meta::EmbeddedStore::open(&dir.path().join("meta.redb")).expect("meta store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(trellis_runtime::serve(
            listener,
            store,
            Arc::new(meta),
            config,
            shutdown.clone(),
        ));
        Far {
            _dir: dir,
            base,
            shutdown,
            task,
        }
    }

    #[allow(dead_code)] // not every test binary reads the far topic this way
    pub(crate) async fn events(&self, topic: &str) -> Vec<Value> {
        let response = reqwest::get(format!(
            "{}/v1/topics/{topic}/events?from=0&limit=1000",
            self.base
        ))
        .await
        .expect("read events");
        assert_eq!(response.status().as_u16(), 200);
        let page: Value = response.json().await.expect("json");
        page.as_array().cloned().unwrap_or_default()
    }

    /// Publishes text events with `ids`, in order, as one batch.
    #[allow(dead_code)] // not every test binary publishes to the far topic
    pub(crate) async fn publish(&self, topic: &str, ids: &[&str]) {
        let events: Vec<Value> = ids
            .iter()
            .map(|id| {
                serde_json::json!({"specversion": "1.0", "id": id, "source": "/far", "type": "com.example.test", "datacontenttype": "text/plain", "data": format!("data of {id}"), "origin": "far"})
            })
            .collect();
        let response = reqwest::Client::new()
            .post(format!("{}/v1/topics/{topic}/events", self.base))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).expect("json"))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status().as_u16(), 202);
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
    }
}
