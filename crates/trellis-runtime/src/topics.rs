//! Topic settings and the registry that keeps them: settings live in the metadata store under
//! `/topics/<name>`, data lives in the log. Publishing asks the registry for a topic (creating it
//! when `auto_create_topics` is on); admin calls change both sides, metadata first.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use trellis_log::{Durability, Log, Topic, TopicConfig};
use trellis_meta::MetadataStore;

use axum::http::StatusCode;

use crate::error::{ApiError, error_chain};

const TOPIC_KEY_PREFIX: &str = "/topics/";

/// A topic's settings as users see them in the API and in the metadata store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// `always` (fsync before acknowledging, shared by concurrent publishes), `interval`, `never`.
    pub durability: DurabilityPolicy,
    /// With `interval`: how often the log is fsynced.
    pub fsync_interval_ms: u64,
    /// Size at which a segment file is sealed and the next one started.
    pub segment_bytes: u64,
    /// Delete segments whose newest event is older than this; 0 keeps them forever.
    pub retention_ms: u64,
    /// Delete the oldest segments while the topic is larger than this; 0 means no limit.
    pub retention_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityPolicy {
    Always,
    Interval,
    Never,
}

impl std::str::FromStr for DurabilityPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(DurabilityPolicy::Always),
            "interval" => Ok(DurabilityPolicy::Interval),
            "never" => Ok(DurabilityPolicy::Never),
            other => Err(format!(
                "fsync policy must be one of always, interval, never; got {other:?}"
            )),
        }
    }
}

/// A partial update: what `PUT /v1/topics/{topic}` accepts. Missing fields keep their current
/// value (or the default, for a new topic).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettingsPatch {
    pub durability: Option<DurabilityPolicy>,
    pub fsync_interval_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

// 4 KiB keeps the sparse index meaningful; 1 GiB keeps recovery scans of the active segment short.
const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            durability: DurabilityPolicy::Always,
            fsync_interval_ms: 100,
            segment_bytes: 64 * 1024 * 1024,
            retention_ms: 0,
            retention_bytes: 0,
        }
    }
}

impl TopicSettings {
    pub fn apply(&self, patch: &TopicSettingsPatch) -> TopicSettings {
        TopicSettings {
            durability: patch.durability.unwrap_or(self.durability),
            fsync_interval_ms: patch.fsync_interval_ms.unwrap_or(self.fsync_interval_ms),
            segment_bytes: patch.segment_bytes.unwrap_or(self.segment_bytes),
            retention_ms: patch.retention_ms.unwrap_or(self.retention_ms),
            retention_bytes: patch.retention_bytes.unwrap_or(self.retention_bytes),
        }
    }

    /// Checks ranges; the message names the field and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}; got {}",
                self.segment_bytes
            ));
        }
        if self.durability == DurabilityPolicy::Interval && self.fsync_interval_ms == 0 {
            return Err(
                "fsync_interval_ms must be at least 1 with durability \"interval\"; got 0"
                    .to_owned(),
            );
        }
        Ok(())
    }

    pub fn to_log_config(&self) -> TopicConfig {
        let durability = match self.durability {
            DurabilityPolicy::Always => Durability::Always,
            DurabilityPolicy::Interval => {
                Durability::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
            DurabilityPolicy::Never => Durability::Never,
        };
        TopicConfig {
            durability,
            segment_bytes: self.segment_bytes,
            retention_age: (self.retention_ms > 0)
                .then(|| Duration::from_millis(self.retention_ms)),
            retention_bytes: (self.retention_bytes > 0).then_some(self.retention_bytes),
        }
    }
}

/// Topic lookup and administration over the log and the metadata store.
#[derive(Clone)]
pub(crate) struct TopicRegistry {
    log: Log,
    meta: Arc<dyn MetadataStore>,
    defaults: TopicSettings,
    auto_create: bool,
    max_topics: usize,
    /// Held to check the topic count and create a topic, so concurrent creations cannot pass
    /// `max_topics` together. Only creations take it.
    creating: Arc<std::sync::Mutex<()>>,
    /// Serialises admin changes so the metadata store and the log agree; publishing never takes it.
    admin: Arc<tokio::sync::Mutex<()>>,
}

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    Created,
    Updated,
}

impl TopicRegistry {
    /// Brings the log in line with the stored settings: topics with stored settings get them
    /// (and are created if a crash came between storing the settings and creating the log).
    pub(crate) async fn open(
        log: Log,
        meta: Arc<dyn MetadataStore>,
        defaults: TopicSettings,
        auto_create: bool,
        max_topics: usize,
    ) -> Result<TopicRegistry, ApiError> {
        let stored = meta
            .range(TOPIC_KEY_PREFIX)
            .await
            .map_err(|error| ApiError::internal("reading topic settings", &error))?;
        for kv in stored.kvs {
            let name = &kv.key[TOPIC_KEY_PREFIX.len()..];
            let settings: TopicSettings = match serde_json::from_slice(&kv.value) {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::warn!(
                        message = "Stored topic settings are unreadable; using the defaults.",
                        topic = name,
                        error = %error
                    );
                    defaults.clone()
                }
            };
            log.get_or_create_topic(name, settings.to_log_config())
                .map_err(|error| ApiError::internal("opening a topic", &error))?
                .set_config(settings.to_log_config());
        }
        Ok(TopicRegistry {
            log,
            meta,
            defaults,
            auto_create,
            max_topics,
            creating: Arc::default(),
            admin: Arc::default(),
        })
    }

    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// Checks, before a publish reads its body, that `name` can be published to: the topic exists,
    /// or the name is valid and auto-creation is on.
    pub(crate) fn check_publish(&self, name: &str) -> Result<(), ApiError> {
        if self.log.topic(name).is_some() {
            return Ok(());
        }
        validate_name(name)?;
        if !self.auto_create {
            return Err(no_such_topic(name)
                .with_hint("create it with PUT /v1/topics/{topic} (auto_create_topics is off)"));
        }
        self.check_room(name)
    }

    /// Refuses to create `name` once `max_topics` topics exist.
    fn check_room(&self, name: &str) -> Result<(), ApiError> {
        if self.log.n_topics() < self.max_topics {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_topics",
            format!(
                "cannot create topic {:?}: {} topics exist, the most this node allows (max_topics); delete topics or raise the limit",
                truncated(name),
                self.max_topics
            ),
        ))
    }

    /// The topic, created with `config` unless it exists, within `max_topics`.
    fn create(&self, name: &str, config: TopicConfig) -> Result<Topic, ApiError> {
        let _creating = self
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(topic) = self.log.topic(name) {
            return Ok(topic);
        }
        self.check_room(name)?;
        self.log
            .get_or_create_topic(name, config)
            .map_err(|error| ApiError::internal("creating a topic", &error))
    }

    /// The topic to append a validated publish to, created with the defaults if auto-creation is
    /// on. Called only once the events are known to be good, so a refused request creates nothing.
    pub(crate) fn for_publish(&self, name: &str) -> Result<Topic, ApiError> {
        if let Some(topic) = self.log.topic(name) {
            return Ok(topic);
        }
        self.check_publish(name)?;
        self.create(name, self.defaults.to_log_config())
    }

    /// The topic a subscription reads (or dead-letters to), created with the defaults if it does
    /// not exist yet and auto-creation is on: subscribing before the first publish is normal.
    pub(crate) fn for_subscription(&self, name: &str) -> Result<Topic, ApiError> {
        self.for_publish(name)
    }

    pub(crate) fn get(&self, name: &str) -> Result<Topic, ApiError> {
        validate_name(name)?;
        self.log.topic(name).ok_or_else(|| no_such_topic(name))
    }

    /// Creates a topic or changes its settings.
    pub(crate) async fn put(
        &self,
        name: &str,
        patch: &TopicSettingsPatch,
    ) -> Result<(PutOutcome, Topic), ApiError> {
        validate_name(name)?;
        let _admin = self.admin.lock().await;
        let existing = self.log.topic(name);
        let current = match &existing {
            Some(topic) => settings_of(&topic.config()),
            None => self.defaults.clone(),
        };
        let settings = current.apply(patch);
        settings
            .validate()
            .map_err(|message| ApiError::bad_request("invalid_settings", message))?;
        if existing.is_none() {
            // Before the settings are stored, so a refused topic leaves nothing behind.
            self.check_room(name)?;
        }
        let encoded = serde_json::to_vec(&settings)
            .map_err(|error| ApiError::internal("encoding settings", &error))?;
        self.meta
            .put(&topic_key(name), Bytes::from(encoded))
            .await
            .map_err(|error| ApiError::internal("storing topic settings", &error))?;
        match existing {
            Some(topic) => {
                topic.set_config(settings.to_log_config());
                Ok((PutOutcome::Updated, topic))
            }
            None => {
                let topic = match self.create(name, settings.to_log_config()) {
                    Ok(topic) => topic,
                    Err(error) => {
                        // A publish took the last place meanwhile: take the settings back.
                        if let Err(cleanup) = self.meta.delete(&topic_key(name)).await {
                            tracing::warn!(message = "Could not remove the settings of a topic that was not created.", topic = name, error = %cleanup);
                        }
                        return Err(error);
                    }
                };
                // A publish may have auto-created it between our look-up and here.
                topic.set_config(settings.to_log_config());
                Ok((PutOutcome::Created, topic))
            }
        }
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        validate_name(name)?;
        let _admin = self.admin.lock().await;
        if self.log.topic(name).is_none() {
            return Err(no_such_topic(name));
        }
        // Settings go first: if we crash in between, the topic comes back with default settings
        // rather than its settings outliving its data.
        self.meta
            .delete(&topic_key(name))
            .await
            .map_err(|error| ApiError::internal("deleting topic settings", &error))?;
        self.log
            .delete_topic(name)
            .await
            .map_err(|error| ApiError::internal("deleting a topic", &error))?;
        Ok(())
    }
}

/// The user-facing settings of a topic, read back from the log's configuration.
pub(crate) fn settings_of(config: &TopicConfig) -> TopicSettings {
    let (durability, fsync_interval_ms) = match config.durability {
        Durability::Always => (
            DurabilityPolicy::Always,
            TopicSettings::default().fsync_interval_ms,
        ),
        Durability::Interval(every) => (DurabilityPolicy::Interval, every.as_millis() as u64),
        Durability::Never => (
            DurabilityPolicy::Never,
            TopicSettings::default().fsync_interval_ms,
        ),
    };
    TopicSettings {
        durability,
        fsync_interval_ms,
        segment_bytes: config.segment_bytes,
        retention_ms: config.retention_age.map_or(0, |age| age.as_millis() as u64),
        retention_bytes: config.retention_bytes.unwrap_or(0),
    }
}

/// A name as echoed in a message: valid names are short, but keep messages bounded anyway.
fn truncated(name: &str) -> String {
    name.chars().take(64).collect()
}

fn topic_key(name: &str) -> String {
    format!("{TOPIC_KEY_PREFIX}{name}")
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    trellis_log::validate_topic_name(name)
        .map_err(|error| ApiError::bad_request("invalid_topic_name", error_chain(&error)))
}

fn no_such_topic(name: &str) -> ApiError {
    ApiError::not_found("topic_not_found", format!("topic {name:?} does not exist"))
}

impl ApiError {
    fn with_hint(mut self, hint: &str) -> ApiError {
        self.message = format!("{}; {hint}", self.message);
        self
    }
}
