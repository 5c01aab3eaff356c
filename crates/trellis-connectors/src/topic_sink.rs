//! A sink that publishes into a topic of another Trellis over its HTTP API: a mesh-to-mesh
//! bridge.
//!
//! Each batch is one `POST {url}/v1/topics/{topic}/events` in batch mode. The events keep the
//! records' ids, so a batch sent again after a retry or a restart is answered as duplicates by
//! the far side's deduplication and stored once. Outcomes:
//! - `202`: every record succeeds (an entry flagged `duplicate` was stored before, a success);
//! - another `4xx`: the far side refuses the batch and will again, so every record fails as
//!   [`SendError::Rejected`] (final); `408` and `429` say "later" and count as a `5xx`;
//! - a `5xx`, a timeout or a connection error: `put` returns an error and the records end as
//!   [`SendError::Dropped`], which is not final, so they are read and sent again.
//!
//! Config keys ([`CONFIG_KEYS`]): `url` (the far Trellis' base URL, required), `remote_topic`
//! (the far topic; default the connector's `topic`), `timeout_ms` (per request, default
//! 10000). Records that set no CloudEvents `source` or `type` get `event.source` (default
//! `/connectors/<name>`) and `event.type` (default `trellis.connector.<connector.class>`).

use std::time::Duration;

use async_trait::async_trait;
use trellis_connect::cloudevents::{EventDefaults, to_cloud_event};
use trellis_connect::worker::event_defaults;
use trellis_connect::{
    ConfigError, ConfigKey, ConnectRecord, ConnectorError, SendError, Sink, SinkContext,
};

const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const MAX_TIMEOUT_MS: u64 = 600_000;
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// See the module docs.
#[derive(Default)]
pub struct TopicSink {
    state: Option<Started>,
}

struct Started {
    client: reqwest::Client,
    endpoint: String,
    topic: String,
    defaults: EventDefaults,
}

impl TopicSink {
    pub fn new() -> TopicSink {
        TopicSink::default()
    }
}

/// The base URL from `url`: http or https, without a trailing slash.
pub(crate) fn base_url(config: &trellis_connect::ConnectorConfig) -> Result<String, ConfigError> {
    let url = config.get_str("url")?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(ConfigError::new("url", "an http:// or https:// URL").found(url)),
    }
}

/// The far topic: `remote_topic`, else `topic`; non-empty and safe in a URL path. The far
/// side judges the rest.
pub(crate) fn topic_name(config: &trellis_connect::ConnectorConfig) -> Result<String, ConfigError> {
    let key = if config.get_opt_str("remote_topic")?.is_some() {
        "remote_topic"
    } else {
        "topic"
    };
    let topic = config.get_str(key)?;
    if topic.is_empty() || topic.contains(['/', '?', '#', '%', ' ']) {
        return Err(ConfigError::new(key, "a topic name").found(topic));
    }
    Ok(topic.to_owned())
}

/// The keys this connector takes besides the common ones.
pub const CONFIG_KEYS: [ConfigKey; 3] = [
    ConfigKey::required("url", "The far Trellis' base URL, http:// or https://."),
    ConfigKey::optional(
        "remote_topic",
        None,
        "The far topic to publish into; default the connector's topic.",
    ),
    ConfigKey::optional(
        "timeout_ms",
        Some("10000"),
        "Timeout of each request to the far Trellis (1 to 600000).",
    ),
];

/// Checks this connector's own keys without connecting anywhere.
pub fn check_config(config: &trellis_connect::ConnectorConfig) -> Result<(), ConfigError> {
    base_url(config)?;
    topic_name(config)?;
    config
        .get_u64_in("timeout_ms", 1, MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS)
        .map(drop)
}

#[async_trait]
impl Sink for TopicSink {
    async fn start(&mut self, context: SinkContext) -> Result<(), ConnectorError> {
        let config = &context.config;
        let url = base_url(config)?;
        let topic = topic_name(config)?;
        let timeout_ms = config.get_u64_in("timeout_ms", 1, MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .build()
            .map_err(|e| ConnectorError::with_source("building the HTTP client", e))?;
        self.state = Some(Started {
            client,
            endpoint: format!("{url}/v1/topics/{topic}/events"),
            topic,
            defaults: event_defaults(&context.name, config)?,
        });
        Ok(())
    }

    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
        let Some(state) = &self.state else {
            return Err(ConnectorError::failed("put before start"));
        };
        let mut body = Vec::from(&b"["[..]);
        let mut sendable = Vec::with_capacity(records.len());
        for record in records {
            match to_cloud_event(&record, &state.defaults) {
                Ok(event) => {
                    if !sendable.is_empty() {
                        body.push(b',');
                    }
                    body.extend_from_slice(&event.to_structured_json());
                    sendable.push(record);
                }
                Err(e) => record.fail(
                    Some(state.topic.clone()),
                    SendError::Rejected(e.to_string()),
                ),
            }
        }
        body.push(b']');
        if sendable.is_empty() {
            return Ok(());
        }
        let response = state
            .client
            .post(&state.endpoint)
            .header("content-type", BATCH_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| ConnectorError::with_source("sending to the far Trellis", e))?;
        let status = response.status();
        if status.as_u16() == 202 {
            for record in sendable {
                record.succeed(Some(state.topic.clone()));
            }
            return Ok(());
        }
        // The far side's JSON error, shortened: it goes into each record's failure.
        let text = response.text().await.unwrap_or_default();
        let detail: String = text.chars().take(512).collect();
        // 408 and 429 say "later", not "never".
        let retriable = matches!(status.as_u16(), 408 | 429);
        if status.is_client_error() && !retriable {
            tracing::warn!(topic = %state.topic, %status, "the far Trellis rejected a batch");
            for record in sendable {
                record.fail(
                    Some(state.topic.clone()),
                    SendError::Rejected(format!("{status}: {detail}")),
                );
            }
            return Ok(());
        }
        Err(ConnectorError::failed(format!(
            "the far Trellis answered {status}: {detail}"
        )))
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        self.state = None;
        Ok(())
    }
}
