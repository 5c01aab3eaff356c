//! Topic settings and the registry that keeps them: settings live in the metadata store under
//! `/topics/<name>`, data lives in the log. Publishing asks the registry for a topic (creating it
//! when `auto_create_topics` is on); admin calls change both sides, metadata first.
//!
//! Each topic has an incarnation id, made when the topic is created (by `PUT` or by a first
//! publish) and stored in its metadata record before the log's topic exists. Deleting and
//! re-creating a topic makes a new incarnation, and every offset stored elsewhere
//! (`stored_offset.rs`) carries the incarnation it counts in, so it is never applied to another.
//! A topic of a data dir older than incarnations has none stored: it is the legacy incarnation,
//! as are offsets stored without one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
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

/// One life of a topic name: from its creation to its deletion. The empty id is the legacy
/// incarnation (a topic, or an offset, stored before incarnations existed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Incarnation(String);

impl Incarnation {
    fn fresh() -> Incarnation {
        Incarnation(uuid::Uuid::new_v4().simple().to_string())
    }

    pub(crate) fn legacy() -> Incarnation {
        Incarnation(String::new())
    }

    pub(crate) fn from_stored(id: &str) -> Incarnation {
        Incarnation(id.to_owned())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A topic's record in the metadata store: its settings (absent for a topic created by a
/// publish, which follows the defaults), its incarnation, and whether a delete is under way.
struct TopicRecord {
    settings: Option<TopicSettings>,
    incarnation: Incarnation,
    /// Written before the log's files are removed, so a crash mid-delete finishes the delete at
    /// the next start instead of bringing the old records back under a new incarnation.
    deleting: bool,
}

impl TopicRecord {
    fn encode(&self) -> Result<Bytes, ApiError> {
        let mut object = match &self.settings {
            Some(settings) => match serde_json::to_value(settings) {
                Ok(Value::Object(object)) => object,
                Ok(_) => serde_json::Map::new(),
                Err(error) => return Err(ApiError::internal("encoding settings", &error)),
            },
            None => serde_json::Map::new(),
        };
        if !self.incarnation.0.is_empty() {
            object.insert(
                "incarnation".to_owned(),
                Value::from(self.incarnation.as_str()),
            );
        }
        if self.deleting {
            object.insert("deleting".to_owned(), Value::Bool(true));
        }
        serde_json::to_vec(&object)
            .map(Bytes::from)
            .map_err(|error| ApiError::internal("encoding settings", &error))
    }

    fn decode(bytes: &[u8]) -> Result<TopicRecord, String> {
        let mut value: Value = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| "not a JSON object".to_owned())?;
        let incarnation = match object.remove("incarnation") {
            Some(Value::String(id)) => Incarnation(id),
            _ => Incarnation::legacy(),
        };
        let deleting = matches!(object.remove("deleting"), Some(Value::Bool(true)));
        let settings = if object.is_empty() {
            None
        } else {
            Some(serde_json::from_value(value).map_err(|error| error.to_string())?)
        };
        Ok(TopicRecord {
            settings,
            incarnation,
            deleting,
        })
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
    /// Serialises admin changes and topic creations (a publish's too) so the metadata store and
    /// the log agree and `max_topics` holds; publishing to an existing topic never takes it.
    admin: Arc<tokio::sync::Mutex<()>>,
    /// The incarnation of every topic the log holds. An entry is added after the log's topic is
    /// created and removed before it is deleted, so an entry always speaks for the topic there.
    incarnations: Arc<RwLock<HashMap<String, Incarnation>>>,
    /// Bumped after every creation and deletion: subscribers waiting for a topic watch it.
    changes: Arc<watch::Sender<u64>>,
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
        let mut incarnations = HashMap::new();
        for kv in stored.kvs {
            let name = &kv.key[TOPIC_KEY_PREFIX.len()..];
            let record = match TopicRecord::decode(&kv.value) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(
                        message = "Stored topic settings are unreadable; using the defaults.",
                        topic = name,
                        error = %error
                    );
                    TopicRecord {
                        settings: Some(defaults.clone()),
                        incarnation: Incarnation::legacy(),
                        deleting: false,
                    }
                }
            };
            if record.deleting {
                tracing::warn!(
                    message =
                        "Finishing the delete of a topic that was under way at the last stop.",
                    topic = name
                );
                log.delete_topic(name)
                    .await
                    .map_err(|error| ApiError::internal("deleting a topic", &error))?;
                meta.delete(&kv.key)
                    .await
                    .map_err(|error| ApiError::internal("deleting topic settings", &error))?;
                continue;
            }
            let config = record
                .settings
                .as_ref()
                .unwrap_or(&defaults)
                .to_log_config();
            let topic = log
                .get_or_create_topic(name, config.clone())
                .map_err(|error| ApiError::internal("opening a topic", &error))?;
            if record.settings.is_some() {
                topic.set_config(config);
            }
            incarnations.insert(name.to_owned(), record.incarnation);
        }
        // Topics without a record were made by a publish before incarnations existed.
        for topic in log.topics() {
            incarnations
                .entry(topic.name().to_owned())
                .or_insert_with(Incarnation::legacy);
        }
        Ok(TopicRegistry {
            log,
            meta,
            defaults,
            auto_create,
            max_topics,
            admin: Arc::default(),
            incarnations: Arc::new(RwLock::new(incarnations)),
            changes: Arc::new(watch::Sender::new(0)),
        })
    }

    /// The topic and its incarnation, if it exists now.
    pub(crate) fn current(&self, name: &str) -> Option<(Topic, Incarnation)> {
        let incarnations = self.incarnations.read().ok()?;
        let incarnation = incarnations.get(name)?.clone();
        let topic = self.log.topic(name)?;
        Some((topic, incarnation))
    }

    /// Changes whenever a topic is created or deleted.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn set_incarnation(&self, name: &str, incarnation: Option<Incarnation>) {
        if let Ok(mut incarnations) = self.incarnations.write() {
            match incarnation {
                Some(incarnation) => incarnations.insert(name.to_owned(), incarnation),
                None => incarnations.remove(name),
            };
        }
        self.changes.send_modify(|generation| *generation += 1);
    }

    async fn store_record(&self, name: &str, record: &TopicRecord) -> Result<(), ApiError> {
        self.meta
            .put(&topic_key(name), record.encode()?)
            .await
            .map_err(|error| ApiError::internal("storing topic settings", &error))?;
        Ok(())
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

    /// The topic, created with `config` unless it exists, within `max_topics`. Callers hold the
    /// admin lock, so concurrent creations cannot pass the limit together.
    fn create(&self, name: &str, config: TopicConfig) -> Result<Topic, ApiError> {
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
    pub(crate) async fn for_publish(&self, name: &str) -> Result<Topic, ApiError> {
        if let Some(topic) = self.log.topic(name) {
            return Ok(topic);
        }
        self.check_publish(name)?;
        let _admin = self.admin.lock().await;
        if let Some(topic) = self.log.topic(name) {
            return Ok(topic);
        }
        // The record first: a crash before the log's topic exists leaves a record that the next
        // start turns into an empty topic of this incarnation.
        self.check_room(name)?;
        let incarnation = Incarnation::fresh();
        self.store_record(
            name,
            &TopicRecord {
                settings: None,
                incarnation: incarnation.clone(),
                deleting: false,
            },
        )
        .await?;
        let topic = self.create(name, self.defaults.to_log_config())?;
        self.set_incarnation(name, Some(incarnation));
        Ok(topic)
    }

    /// The topic a subscription reads (or dead-letters to), and its incarnation, created with
    /// the defaults if it does not exist yet and auto-creation is on: subscribing before the
    /// first publish is normal.
    pub(crate) async fn for_subscription(
        &self,
        name: &str,
    ) -> Result<(Topic, Incarnation), ApiError> {
        self.for_publish(name).await?;
        // A delete may come in between; the caller then sees the topic as missing.
        self.current(name).ok_or_else(|| no_such_topic(name))
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
            // Before the record is stored, so a refused topic leaves nothing behind.
            self.check_room(name)?;
        }
        // Creations take the admin lock (a publish's too), so the topic cannot appear meanwhile.
        let incarnation = match &existing {
            Some(_) => self
                .current(name)
                .map_or_else(Incarnation::legacy, |(_, incarnation)| incarnation),
            None => Incarnation::fresh(),
        };
        self.store_record(
            name,
            &TopicRecord {
                settings: Some(settings.clone()),
                incarnation: incarnation.clone(),
                deleting: false,
            },
        )
        .await?;
        match existing {
            Some(topic) => {
                topic.set_config(settings.to_log_config());
                Ok((PutOutcome::Updated, topic))
            }
            None => {
                let topic = self.create(name, settings.to_log_config())?;
                topic.set_config(settings.to_log_config());
                self.set_incarnation(name, Some(incarnation));
                Ok((PutOutcome::Created, topic))
            }
        }
    }

    /// Deletes the topic's records and settings. Who still uses it is the caller's question
    /// (`SubscriptionRegistry::delete_topic`).
    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        validate_name(name)?;
        let _admin = self.admin.lock().await;
        let Some((topic, incarnation)) = self.current(name) else {
            return Err(no_such_topic(name));
        };
        // Mark the record first: a crash before the end finishes the delete at the next start.
        self.store_record(
            name,
            &TopicRecord {
                settings: Some(settings_of(&topic.config())),
                incarnation,
                deleting: true,
            },
        )
        .await?;
        drop(topic);
        self.set_incarnation(name, None);
        self.log
            .delete_topic(name)
            .await
            .map_err(|error| ApiError::internal("deleting a topic", &error))?;
        self.meta
            .delete(&topic_key(name))
            .await
            .map_err(|error| ApiError::internal("deleting topic settings", &error))?;
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
