//! Topic settings and the registry that keeps them: settings live in the metadata store under
//! `/topics/<name>`, data lives in the event store. Publishing asks the registry for a topic (creating it
//! when `auto_create_topics` is on); admin calls change both sides, metadata first.
//!
//! Each topic has an incarnation id, made when the topic is created (by `PUT` or by a first
//! publish) and stored in its metadata record before the store's topic exists. Deleting and
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
use trellis_meta::{CasOutcome, Expect, KeyValue, MetadataStore};
use trellis_storage::{Durability, EventStore, StorageError, TopicInfo};

use axum::http::StatusCode;

use crate::error::{ApiError, error_chain};
use crate::event_store::TopicHandle;
use crate::follow::Change;

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

    /// The settings as the event store takes them.
    pub fn to_storage(&self) -> trellis_storage::TopicSettings {
        let durability = match self.durability {
            DurabilityPolicy::Always => Durability::Always,
            DurabilityPolicy::Interval => {
                Durability::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
            DurabilityPolicy::Never => Durability::Never,
        };
        trellis_storage::TopicSettings {
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

/// Topic lookup and administration over the event store and the metadata store.
#[derive(Clone)]
pub(crate) struct TopicRegistry {
    store: Arc<dyn EventStore>,
    meta: Arc<dyn MetadataStore>,
    defaults: TopicSettings,
    auto_create: bool,
    max_topics: usize,
    /// Serialises admin changes and topic creations (a publish's too) so the metadata store and
    /// the log agree and `max_topics` holds; publishing to an existing topic never takes it.
    admin: Arc<tokio::sync::Mutex<()>>,
    /// Every topic the store holds, with a handle and its incarnation. An entry is added after
    /// the store's topic is created and removed before it is deleted, so an entry always speaks
    /// for the topic there. Kept here so that looking a topic up on a publish is a map look-up,
    /// not a call into the store.
    topics: Arc<RwLock<HashMap<String, (TopicHandle, Incarnation)>>>,
    /// Bumped after every creation and deletion: subscribers waiting for a topic watch it.
    changes: Arc<watch::Sender<u64>>,
    /// The metadata store's revision when the records were loaded; `follow` goes on from it.
    loaded_at: u64,
}

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    Created,
    Updated,
}

impl TopicRegistry {
    /// Brings the event store in line with the stored settings: topics with stored settings get
    /// them (and are created if a crash came between storing the settings and creating the
    /// store's topic).
    pub(crate) async fn open(
        store: Arc<dyn EventStore>,
        meta: Arc<dyn MetadataStore>,
        defaults: TopicSettings,
        auto_create: bool,
        max_topics: usize,
    ) -> Result<TopicRegistry, ApiError> {
        let stored = meta
            .range(TOPIC_KEY_PREFIX)
            .await
            .map_err(|error| ApiError::internal("reading topic settings", &error))?;
        let mut topics: HashMap<String, (TopicHandle, Incarnation)> = HashMap::new();
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
                store
                    .delete_topic(name)
                    .await
                    .map_err(|error| ApiError::storage("deleting a topic", &error))?;
                meta.delete(&kv.key)
                    .await
                    .map_err(|error| ApiError::internal("deleting topic settings", &error))?;
                continue;
            }
            let settings = record.settings.as_ref().unwrap_or(&defaults).to_storage();
            let topic = store
                .get_or_create_topic(name, settings.clone())
                .await
                .map_err(|error| ApiError::storage("opening a topic", &error))?;
            if record.settings.is_some() {
                topic
                    .configure(settings)
                    .await
                    .map_err(|error| ApiError::storage("configuring a topic", &error))?;
            }
            topics.insert(name.to_owned(), (topic, record.incarnation));
        }
        // Topics without a record were made by a publish before incarnations existed.
        let listed = store
            .list_topics()
            .await
            .map_err(|error| ApiError::storage("listing topics", &error))?;
        for info in listed {
            if topics.contains_key(&info.name) {
                continue;
            }
            let topic = store
                .topic(&info.name)
                .await
                .map_err(|error| ApiError::storage("opening a topic", &error))?;
            if let Some(topic) = topic {
                topics.insert(info.name, (topic, Incarnation::legacy()));
            }
        }
        Ok(TopicRegistry {
            store,
            meta,
            defaults,
            auto_create,
            max_topics,
            admin: Arc::default(),
            topics: Arc::new(RwLock::new(topics)),
            changes: Arc::new(watch::Sender::new(0)),
            loaded_at: stored.revision,
        })
    }

    /// The metadata store's revision the registry loaded; follow `/topics/` from after it.
    pub(crate) fn loaded_at(&self) -> u64 {
        self.loaded_at
    }

    /// The prefix of topic records, for `follow`.
    pub(crate) const PREFIX: &'static str = TOPIC_KEY_PREFIX;

    /// Applies a change another replica (or this one) made to the topic records: a topic
    /// created elsewhere is opened here under its incarnation; one being deleted or deleted is
    /// forgotten, so its readers wait for the next incarnation.
    pub(crate) async fn apply(&self, change: Change) {
        match change {
            Change::Put(kv) => self.adopt(&kv).await,
            Change::Delete(key) => {
                if let Some(name) = key.strip_prefix(TOPIC_KEY_PREFIX) {
                    self.forget(name);
                }
            }
            Change::Snapshot(kvs) => {
                let gone = self
                    .topics
                    .read()
                    .map(|topics| {
                        // A legacy topic has no record to keep it.
                        let recorded = topics
                            .iter()
                            .filter(|(_, (_, incarnation))| !incarnation.as_str().is_empty())
                            .map(|(name, _)| name);
                        crate::follow::gone_from(&kvs, TOPIC_KEY_PREFIX, recorded)
                    })
                    .unwrap_or_default();
                for name in gone {
                    self.forget(&name);
                }
                for kv in &kvs {
                    self.adopt(kv).await;
                }
            }
        }
    }

    async fn adopt(&self, kv: &KeyValue) {
        let Some(name) = kv.key.strip_prefix(TOPIC_KEY_PREFIX) else {
            return;
        };
        let record = match TopicRecord::decode(&kv.value) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(message = "A topic record another replica stored is unreadable; ignoring it.", topic = name, error = %error);
                return;
            }
        };
        // After any local admin change of the topic, which may be this very record.
        let _admin = self.admin.lock().await;
        if let Err(error) = self.adopt_locked(name, record).await {
            tracing::warn!(message = "Opening a topic another replica created failed.", topic = name, error = %error.message);
        }
    }

    /// Makes the registry agree with `record`; the caller holds the admin lock.
    async fn adopt_locked(
        &self,
        name: &str,
        record: TopicRecord,
    ) -> Result<Option<TopicHandle>, ApiError> {
        if record.deleting {
            self.forget(name);
            return Ok(None);
        }
        if let Some((topic, incarnation)) = self.current(name)
            && incarnation == record.incarnation
        {
            return Ok(Some(topic));
        }
        let settings = record
            .settings
            .as_ref()
            .unwrap_or(&self.defaults)
            .to_storage();
        let topic = self
            .store
            .get_or_create_topic(name, settings)
            .await
            .map_err(|error| ApiError::storage("opening a topic", &error))?;
        self.set_current(name, Some((Arc::clone(&topic), record.incarnation)));
        Ok(Some(topic))
    }

    fn forget(&self, name: &str) {
        if self.current(name).is_some() {
            self.set_current(name, None);
        }
    }

    /// Stores the record of a topic this replica creates, unless another replica stored one
    /// first: then that topic (and its incarnation) is the one, and is returned instead.
    async fn store_new_record(
        &self,
        name: &str,
        record: &TopicRecord,
    ) -> Result<Option<TopicHandle>, ApiError> {
        let outcome = self
            .meta
            .compare_and_set(&topic_key(name), Expect::Absent, record.encode()?)
            .await
            .map_err(|error| ApiError::internal("storing topic settings", &error))?;
        match outcome {
            CasOutcome::Written { .. } => Ok(None),
            CasOutcome::Conflict { current: None } => Err(ApiError::new(
                StatusCode::CONFLICT,
                "topic_changing",
                format!(
                    "topic {:?} is being changed by another replica; try again",
                    truncated(name)
                ),
            )),
            CasOutcome::Conflict { current: Some(kv) } => {
                let record = TopicRecord::decode(&kv.value).map_err(|error| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!(
                            "the stored record of topic {:?} is unreadable: {error}",
                            truncated(name)
                        ),
                    )
                })?;
                match self.adopt_locked(name, record).await? {
                    Some(topic) => Ok(Some(topic)),
                    None => Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "topic_changing",
                        format!(
                            "topic {:?} is being deleted; try again once it is gone",
                            truncated(name)
                        ),
                    )),
                }
            }
        }
    }

    /// The topic and its incarnation, if it exists now.
    pub(crate) fn current(&self, name: &str) -> Option<(TopicHandle, Incarnation)> {
        let topics = self.topics.read().ok()?;
        let (topic, incarnation) = topics.get(name)?;
        Some((Arc::clone(topic), incarnation.clone()))
    }

    /// The topic, if it exists now.
    pub(crate) fn handle(&self, name: &str) -> Option<TopicHandle> {
        let topics = self.topics.read().ok()?;
        topics.get(name).map(|(topic, _)| Arc::clone(topic))
    }

    fn n_topics(&self) -> usize {
        self.topics.read().map_or(0, |topics| topics.len())
    }

    /// Every topic with its incarnation, as the store reports them, sorted by name.
    pub(crate) async fn list(&self) -> Result<Vec<(TopicInfo, Incarnation)>, ApiError> {
        let infos = self
            .store
            .list_topics()
            .await
            .map_err(|error| ApiError::storage("listing topics", &error))?;
        let topics = self
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(infos
            .into_iter()
            .map(|info| {
                let incarnation = topics
                    .get(&info.name)
                    .map_or_else(Incarnation::legacy, |(_, incarnation)| incarnation.clone());
                (info, incarnation)
            })
            .collect())
    }

    /// The event store the registry's topics live in.
    pub(crate) fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Changes whenever a topic is created or deleted.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn set_current(&self, name: &str, current: Option<(TopicHandle, Incarnation)>) {
        if let Ok(mut topics) = self.topics.write() {
            match current {
                Some(current) => topics.insert(name.to_owned(), current),
                None => topics.remove(name),
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

    /// Checks, before a publish reads its body, that `name` can be published to: the topic exists,
    /// or the name is valid and auto-creation is on.
    pub(crate) fn check_publish(&self, name: &str) -> Result<(), ApiError> {
        if self.handle(name).is_some() {
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
        if self.n_topics() < self.max_topics {
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

    /// The store's topic, created with `settings` unless it exists, within `max_topics`.
    /// Callers hold the admin lock, so concurrent creations cannot pass the limit together.
    async fn create(
        &self,
        name: &str,
        settings: trellis_storage::TopicSettings,
    ) -> Result<TopicHandle, ApiError> {
        if let Some(topic) = self.handle(name) {
            return Ok(topic);
        }
        self.check_room(name)?;
        self.store
            .get_or_create_topic(name, settings)
            .await
            .map_err(|error| ApiError::storage("creating a topic", &error))
    }

    /// The topic to append a validated publish to, created with the defaults if auto-creation is
    /// on. Called only once the events are known to be good, so a refused request creates nothing.
    pub(crate) async fn for_publish(&self, name: &str) -> Result<TopicHandle, ApiError> {
        if let Some(topic) = self.handle(name) {
            return Ok(topic);
        }
        self.check_publish(name)?;
        let _admin = self.admin.lock().await;
        if let Some(topic) = self.handle(name) {
            return Ok(topic);
        }
        // The record first: a crash before the store's topic exists leaves a record that the
        // next start turns into an empty topic of this incarnation.
        self.check_room(name)?;
        let incarnation = Incarnation::fresh();
        let record = TopicRecord {
            settings: None,
            incarnation: incarnation.clone(),
            deleting: false,
        };
        if let Some(topic) = self.store_new_record(name, &record).await? {
            return Ok(topic);
        }
        let topic = self.create(name, self.defaults.to_storage()).await?;
        self.set_current(name, Some((Arc::clone(&topic), incarnation)));
        Ok(topic)
    }

    /// The topic a subscription reads (or dead-letters to), and its incarnation, created with
    /// the defaults if it does not exist yet and auto-creation is on: subscribing before the
    /// first publish is normal.
    pub(crate) async fn for_subscription(
        &self,
        name: &str,
    ) -> Result<(TopicHandle, Incarnation), ApiError> {
        self.for_publish(name).await?;
        // A delete may come in between; the caller then sees the topic as missing.
        self.current(name).ok_or_else(|| no_such_topic(name))
    }

    /// The topic, also one that another node made in a shared event store since this one
    /// started (it is adopted, as topics without a record are at start-up).
    pub(crate) async fn get(&self, name: &str) -> Result<TopicHandle, ApiError> {
        validate_name(name)?;
        if let Some(topic) = self.handle(name) {
            return Ok(topic);
        }
        let _admin = self.admin.lock().await;
        if let Some(topic) = self.handle(name) {
            return Ok(topic);
        }
        ApiError::check_available(self.store.as_ref())?;
        let topic = self
            .store
            .topic(name)
            .await
            .map_err(|error| ApiError::storage("opening a topic", &error))?
            .ok_or_else(|| no_such_topic(name))?;
        self.set_current(name, Some((Arc::clone(&topic), Incarnation::legacy())));
        Ok(topic)
    }

    /// Creates a topic or changes its settings.
    pub(crate) async fn put(
        &self,
        name: &str,
        patch: &TopicSettingsPatch,
    ) -> Result<(PutOutcome, TopicHandle), ApiError> {
        validate_name(name)?;
        let _admin = self.admin.lock().await;
        let existing = self.handle(name);
        let current = match &existing {
            Some(topic) => settings_of(&info_of(topic.as_ref()).await?.settings),
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
        let record = TopicRecord {
            settings: Some(settings.clone()),
            incarnation: incarnation.clone(),
            deleting: false,
        };
        let existing = match existing {
            Some(topic) => {
                self.store_record(name, &record).await?;
                Some(topic)
            }
            // Created by another replica meanwhile: this becomes a change of its settings.
            None => match self.store_new_record(name, &record).await? {
                Some(topic) => {
                    self.store_record(
                        name,
                        &TopicRecord {
                            incarnation: self
                                .current(name)
                                .map_or_else(Incarnation::legacy, |(_, incarnation)| incarnation),
                            ..record
                        },
                    )
                    .await?;
                    Some(topic)
                }
                None => None,
            },
        };
        let (outcome, topic) = match existing {
            Some(topic) => (PutOutcome::Updated, topic),
            None => (
                PutOutcome::Created,
                self.create(name, settings.to_storage()).await?,
            ),
        };
        topic
            .configure(settings.to_storage())
            .await
            .map_err(|error| ApiError::storage("configuring a topic", &error))?;
        if outcome == PutOutcome::Created {
            self.set_current(name, Some((Arc::clone(&topic), incarnation)));
        }
        Ok((outcome, topic))
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
        let settings = settings_of(&info_of(topic.as_ref()).await?.settings);
        self.store_record(
            name,
            &TopicRecord {
                settings: Some(settings),
                incarnation,
                deleting: true,
            },
        )
        .await?;
        drop(topic);
        self.set_current(name, None);
        self.store
            .delete_topic(name)
            .await
            .map_err(|error| ApiError::storage("deleting a topic", &error))?;
        self.meta
            .delete(&topic_key(name))
            .await
            .map_err(|error| ApiError::internal("deleting topic settings", &error))?;
        Ok(())
    }
}

/// A topic's state, in the API's terms when it fails.
pub(crate) async fn info_of(
    topic: &dyn trellis_storage::TopicStore,
) -> Result<TopicInfo, ApiError> {
    topic.info().await.map_err(|error| match error {
        StorageError::NoSuchTopic(name) => no_such_topic(&name),
        other => ApiError::storage("reading a topic's state", &other),
    })
}

/// The user-facing settings of a topic, read back from the store's settings.
pub(crate) fn settings_of(config: &trellis_storage::TopicSettings) -> TopicSettings {
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
        // A level this runtime does not know yet: shown as the strongest it knows.
        _ => (
            DurabilityPolicy::Always,
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
    trellis_storage::validate_topic_name(name)
        .map_err(|error| ApiError::bad_request("invalid_topic_name", error_chain(&error)))
}

pub(crate) fn no_such_topic(name: &str) -> ApiError {
    ApiError::not_found("topic_not_found", format!("topic {name:?} does not exist"))
}

impl ApiError {
    fn with_hint(mut self, hint: &str) -> ApiError {
        self.message = format!("{}; {hint}", self.message);
        self
    }
}
