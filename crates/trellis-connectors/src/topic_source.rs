//! A source that reads a topic of another Trellis over its HTTP API: the other half of a
//! mesh-to-mesh bridge.
//!
//! It pages through `GET {url}/v1/topics/{topic}/events?from=N&limit=M`. Each event becomes a
//! record with the event's own id, so publishing it again after a restart is a duplicate the
//! runtime drops. The partition is `{url}/{topic}`; a record's offset is the far event's offset
//! plus one, the offset to read from once it is committed, so a restart resumes right after
//! the last committed event.
//!
//! When the far side has removed the next offset by retention (`410 offset_truncated`), the
//! source warns and goes on from the topic's oldest stored offset: those events are lost to
//! the bridge, and the warning says how many. A far side that cannot be reached, or a topic
//! that does not exist yet, gives empty polls (with a warning) until it can be read.
//!
//! Config keys ([`CONFIG_KEYS`]): `url` (the far Trellis' base URL, required), `remote_topic`
//! (the far topic; default the connector's `topic`), `max_batch` (events per poll, 1 to 1000,
//! default 100), `start` (`earliest`, the default, or `latest`: where to begin without a
//! committed offset; `latest` skips what the far topic held at the first start).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use trellis_cloudevents::parse_batch;
use trellis_connect::cloudevents::from_cloud_event;
use trellis_connect::worker::{Start, start};
use trellis_connect::{
    ConfigError, ConfigKey, ConnectRecord, ConnectorError, Partition, Position, Source,
    SourceContext,
};

use crate::topic_sink::{base_url, topic_name};

const DEFAULT_MAX_BATCH: u64 = 100;
/// The far side's own cap on a page.
const MAX_BATCH_LIMIT: u64 = 1000;
/// Keeps a poll within about a second even when the far side hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a poll that found nothing waits before it returns, so an idle bridge does not
/// spin on the far side.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// The extension the far side puts each event's offset in.
const OFFSET_FIELD: &str = "offset";

/// See the module docs.
#[derive(Default)]
pub struct TopicSource {
    state: Option<Started>,
}

struct Started {
    client: reqwest::Client,
    topic_url: String,
    partition: String,
    max_batch: u64,
    /// The far offset to read next.
    next: u64,
}

#[derive(Deserialize)]
struct TopicView {
    first_offset: u64,
    next_offset: u64,
}

#[derive(Deserialize, Default)]
struct Gone {
    error: Option<String>,
    next_offset: Option<u64>,
}

/// What one read of the far topic gave.
enum Page {
    Events(Vec<ConnectRecord>),
    Truncated,
    /// Records are damaged on the far disk up to this offset, where reading goes on.
    Damaged(u64),
    Unavailable(String),
}

impl TopicSource {
    pub fn new() -> TopicSource {
        TopicSource::default()
    }
}

impl Started {
    async fn read(&mut self) -> Result<Page, ConnectorError> {
        let url = format!(
            "{}/events?from={}&limit={}",
            self.topic_url, self.next, self.max_batch
        );
        let response = match self.client.get(&url).send().await {
            Ok(response) => response,
            Err(e) => return Ok(Page::Unavailable(e.to_string())),
        };
        let status = response.status();
        if status.as_u16() == 410 {
            // Either retention removed the offset, or records there are damaged on disk and
            // the answer says where reading goes on.
            let gone: Gone = response.json().await.unwrap_or_default();
            return Ok(match (gone.error.as_deref(), gone.next_offset) {
                (Some("records_damaged"), Some(next)) => Page::Damaged(next),
                _ => Page::Truncated,
            });
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Ok(Page::Unavailable(format!(
                "{status}: {}",
                text.chars().take(512).collect::<String>()
            )));
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return Ok(Page::Unavailable(e.to_string())),
        };
        // The far side answers `[]` past its end, which a batch parse refuses.
        if body
            .iter()
            .filter(|b| !b.is_ascii_whitespace())
            .eq(b"[]".iter())
        {
            return Ok(Page::Events(Vec::new()));
        }
        let events = parse_batch(&body).map_err(|e| {
            ConnectorError::with_source("the far Trellis sent events that do not parse", e)
        })?;
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            let offset = match event.extensions.get(OFFSET_FIELD) {
                Some(trellis_cloudevents::ExtensionValue::Integer(offset)) => {
                    u64::try_from(*offset).ok()
                }
                _ => None,
            };
            let Some(offset) = offset else {
                return Err(ConnectorError::failed(format!(
                    "the far Trellis sent event {:?} without an offset",
                    event.id
                )));
            };
            let next = offset.saturating_add(1);
            let mut record = from_cloud_event(&event, Position::new(self.partition.clone(), next));
            // The far offset is the position's business, not the event's.
            record.extensions.remove(OFFSET_FIELD);
            self.next = self.next.max(next);
            records.push(record);
        }
        Ok(Page::Events(records))
    }

    /// The far topic's next offset, 0 while it does not exist.
    async fn next_offset(&self) -> Result<u64, String> {
        let response = self
            .client
            .get(&self.topic_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().as_u16() == 404 {
            return Ok(0);
        }
        if !response.status().is_success() {
            return Err(format!("{}", response.status()));
        }
        let view: TopicView = response.json().await.map_err(|e| e.to_string())?;
        Ok(view.next_offset)
    }

    async fn first_offset(&self) -> Result<u64, String> {
        let response = self
            .client
            .get(&self.topic_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{}", response.status()));
        }
        let view: TopicView = response.json().await.map_err(|e| e.to_string())?;
        Ok(view.first_offset)
    }
}

/// The keys this connector takes besides the common ones.
pub const CONFIG_KEYS: [ConfigKey; 4] = [
    ConfigKey::required("url", "The far Trellis' base URL, http:// or https://."),
    ConfigKey::optional(
        "remote_topic",
        None,
        "The far topic to read; default the connector's topic.",
    ),
    ConfigKey::optional("max_batch", Some("100"), "Events per poll (1 to 1000)."),
    ConfigKey::optional(
        "start",
        Some("earliest"),
        "Where to begin without a committed offset: earliest or latest.",
    ),
];

/// Checks this connector's own keys without connecting anywhere.
pub fn check_config(config: &trellis_connect::ConnectorConfig) -> Result<(), ConfigError> {
    base_url(config)?;
    topic_name(config)?;
    start(config)?;
    config
        .get_u64_in("max_batch", 1, MAX_BATCH_LIMIT, DEFAULT_MAX_BATCH)
        .map(drop)
}

#[async_trait]
impl Source for TopicSource {
    async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError> {
        let config = &context.config;
        let url = base_url(config)?;
        let topic = topic_name(config)?;
        let max_batch = config.get_u64_in("max_batch", 1, MAX_BATCH_LIMIT, DEFAULT_MAX_BATCH)?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ConnectorError::with_source("building the HTTP client", e))?;
        let start = start(config)?;
        let partition = format!("{url}/{topic}");
        let committed = context
            .committed_offset(&Partition::new(partition.clone()))
            .map(|offset| offset.0);
        let mut state = Started {
            client,
            topic_url: format!("{url}/v1/topics/{topic}"),
            partition,
            max_batch,
            next: committed.unwrap_or(0),
        };
        if committed.is_none() && start == Start::Latest {
            state.next = state.next_offset().await.map_err(|reason| {
                ConnectorError::failed(format!(
                    "cannot read where the far topic ends (start = latest): {reason}"
                ))
            })?;
        }
        self.state = Some(state);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        let Some(state) = self.state.as_mut() else {
            return Err(ConnectorError::failed("poll before start"));
        };
        let page = match state.read().await? {
            Page::Truncated => match state.first_offset().await {
                Ok(first) => {
                    tracing::warn!(
                        partition = %state.partition,
                        from = state.next,
                        to = first,
                        lost = first.saturating_sub(state.next),
                        "the far topic removed events by retention before the bridge read them; going on from its oldest"
                    );
                    state.next = state.next.max(first);
                    state.read().await?
                }
                Err(reason) => Page::Unavailable(reason),
            },
            Page::Damaged(next) => {
                tracing::warn!(
                    partition = %state.partition,
                    from = state.next,
                    to = next,
                    "records of the far topic are damaged on its disk; skipping them"
                );
                state.next = state.next.max(next);
                Page::Events(Vec::new())
            }
            page => page,
        };
        match page {
            Page::Events(records) if !records.is_empty() => Ok(records),
            Page::Events(_) | Page::Truncated | Page::Damaged(_) => {
                tokio::time::sleep(IDLE_WAIT).await;
                Ok(Vec::new())
            }
            Page::Unavailable(reason) => {
                tracing::warn!(partition = %state.partition, %reason, "cannot read the far topic; trying again");
                tokio::time::sleep(IDLE_WAIT).await;
                Ok(Vec::new())
            }
        }
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        self.state = None;
        Ok(())
    }
}
