//! Connectors inside `trellis serve`, end to end: the REST API's answers and error paths
//! (`rest.rs`), connectors across restarts of the runtime (`rest.rs`), the `trellis connectors`
//! CLI (`cli.rs`), the HTTP source's webhook checks (`http_source.rs`) and a file -> topic ->
//! HTTP pipeline through repeated SIGKILLs (`pipeline.rs`).

mod cli;
mod http_source;
mod pipeline;
mod rest;

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::{eventually, wait_until};

/// One answer of the API: status, headers and the JSON body (`Null` when empty or not JSON).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// The contract's error shape: `status`, JSON `{"error": code, "message": ...}`.
    #[track_caller]
    pub(crate) fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "answer: {}", self.body);
        assert_eq!(self.body["error"], code, "answer: {}", self.body);
        let message = self.body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "a message: {}", self.body);
        let content_type = self
            .headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "JSON errors: {content_type}"
        );
    }
}

/// A client of one node's connectors API.
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    pub(crate) fn new(base: &str) -> Api {
        Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    /// Points at another process (the same node restarted on a new port).
    pub(crate) fn set_base(&mut self, base: &str) {
        base.clone_into(&mut self.base);
    }

    pub(crate) async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    /// A text answer's body (`/metrics`); empty on any error.
    pub(crate) async fn get_text(&self, path: &str) -> String {
        match self.client.get(format!("{}{path}", self.base)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub(crate) async fn create(&self, name: &str, config: Value) -> Answer {
        let body = json!({"name": name, "config": config});
        self.send(Method::POST, "/v1/connectors", Some(&body)).await
    }

    /// Creates `name` and checks the `201`.
    pub(crate) async fn create_ok(&self, name: &str, config: Value) -> Value {
        let answer = self.create(name, config).await;
        assert_eq!(answer.status, 201, "creating {name}: {}", answer.body);
        answer.body
    }

    pub(crate) async fn state(&self, name: &str) -> Option<String> {
        let answer = self.get(&format!("/v1/connectors/{name}/status")).await;
        answer.body["connector"]["state"]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until `name`'s state is `state`; the last status seen if it never is.
    pub(crate) async fn wait_for_state(&self, name: &str, state: &str) -> Result<(), Value> {
        let held = eventually(async || self.state(name).await.as_deref() == Some(state)).await;
        if held {
            Ok(())
        } else {
            Err(self
                .get(&format!("/v1/connectors/{name}/status"))
                .await
                .body)
        }
    }

    pub(crate) async fn put_topic(&self, topic: &str) {
        let answer = self
            .send(
                Method::PUT,
                &format!("/v1/topics/{topic}"),
                Some(&json!({})),
            )
            .await;
        assert!(
            matches!(answer.status, 200 | 201),
            "creating topic {topic}: {}",
            answer.body
        );
    }

    /// Every event of `topic`, read page by page to its end.
    pub(crate) async fn topic_events(&self, topic: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let path = format!("/v1/topics/{topic}/events?from={}&limit=1000", events.len());
            let answer = self.get(&path).await;
            let Some(page) = answer.body.as_array() else {
                return events;
            };
            if page.is_empty() {
                return events;
            }
            events.extend(page.iter().cloned());
        }
    }

    /// Waits until `topic` holds at least `count` events; what it holds then.
    pub(crate) async fn wait_for_events(&self, topic: &str, count: usize) -> Vec<Value> {
        wait_until(Duration::from_secs(30), async || {
            self.topic_events(topic).await.len() >= count
        })
        .await;
        self.topic_events(topic).await
    }
}

/// The data of an event as read from a topic: text, JSON as text, or decoded `data_base64`.
pub(crate) fn event_data(event: &Value) -> Vec<u8> {
    use base64::Engine;
    if let Some(encoded) = event["data_base64"].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("valid base64");
    }
    match &event["data"] {
        Value::Null => Vec::new(),
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// A loopback port free now, for a connector that listens (an HTTP source).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A file source's config: tails `path` into `topic`, committing offsets often so that a
/// restart finds them.
pub(crate) fn file_source(path: &std::path::Path, topic: &str) -> Value {
    json!({
        "connector.class": "file-source",
        "topic": topic,
        "path": path.display().to_string(),
        "offsets.commit.interval.ms": 100,
    })
}
