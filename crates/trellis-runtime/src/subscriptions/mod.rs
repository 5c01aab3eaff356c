//! Subscriptions: their settings live in the metadata store under `/subscriptions/<name>` and
//! their committed offsets under `/offsets/<name>`, so both survive restarts. Each running
//! subscription is one dispatcher task (see `dispatcher`) driving one delivery engine.
//!
//! Each subscription is its own consumer group: two subscriptions on one topic each get every
//! event.

mod dead_letter;
mod dispatcher;
mod lifecycle;
mod redrive;
pub(crate) mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_delivery::config::SpecError;
use trellis_delivery::engine::{Engine, EngineStatus};
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::tls::WebhookTls;
use trellis_meta::{CasOutcome, Expect, GuardedOutcome, GuardedPut, MetadataStore};

use crate::follow::Change;
use crate::ownership::{FenceGate, TermEnd, while_owned};
use trellis_cluster::{Cluster, Placement};

use crate::error::ApiError;
use crate::topics::TopicRegistry;
pub(crate) use dead_letter::DeadLetterTarget;
pub(crate) use dispatcher::{
    CommitMetrics, Deliver, DispatcherStats, OnFailure, Outcome, ToDispatcher,
};
pub(crate) use lifecycle::describe_metrics;
pub(crate) use lifecycle::{Lifecycle, Supervisor};
use redrive::RedriveStats;
pub(crate) use spec::Start;
use spec::{SubscriptionSpec, field_error, reject_unknown};

const SUBSCRIPTION_KEY_PREFIX: &str = "/subscriptions/";
const OFFSET_KEY_PREFIX: &str = "/offsets/";
const REDRIVE_KEY_PREFIX: &str = "/redrive/";

/// Records one subscription may have out for delivery at once; reading waits beyond it. Enough
/// to keep 64 adaptive-concurrency slots per URL busy through retries, small enough that even
/// 1 MiB events stay well inside the memory targets.
const MAX_IN_FLIGHT: usize = 256;
/// How often a moving committed offset is written to the metadata store (and always at shutdown).
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) struct SubscriptionRegistry {
    meta: Arc<dyn MetadataStore>,
    cluster: Cluster,
    topics: TopicRegistry,
    guard: Arc<AddressGuard>,
    tls: WebhookTls,
    /// What the validation handshake sends as `WebHook-Request-Origin`.
    webhook_origin: String,
    running: Mutex<BTreeMap<String, Running>>,
    tasks: TaskTracker,
    /// The metadata store's revision when the subscriptions were loaded; `follow` goes on
    /// from it.
    loaded_at: u64,
}

struct Running {
    spec: SubscriptionSpec,
    engine: Engine,
    paused: watch::Sender<bool>,
    batch: watch::Sender<Option<trellis_delivery::config::BatchSpec>>,
    stop: CancellationToken,
    stats: Arc<DispatcherStats>,
    done: tokio::task::JoinHandle<()>,
    redrive: Arc<RedriveStats>,
    lifecycle: Arc<Lifecycle>,
    /// The replica that owns the subscription now, if any; only it delivers.
    owner: watch::Receiver<Option<String>>,
}

/// `GET /v1/subscriptions/{name}`'s live part.
#[derive(Serialize)]
pub(crate) struct SubscriptionStatus {
    pub(crate) delivered: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) in_flight: u64,
    pub(crate) committed_offset: u64,
    /// Events published but not yet ended for this subscription.
    pub(crate) lag: u64,
    /// `standby` (another replica, `owner`, runs it; the counters here are this replica's),
    /// `unowned` (no replica runs it at the moment: one takes it within the lease TTL),
    /// `running`, `paused`, `waiting_for_topic` (its topic was deleted or does not exist yet;
    /// it reads the next incarnation from its beginning), `waiting_for_storage` (the event
    /// store cannot be reached; it goes on by itself once it can) or `stopped` (it cannot go
    /// on).
    pub(crate) state: &'static str,
    /// Why, for `waiting_for_topic`, `waiting_for_storage` and `stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    pub(crate) paused: bool,
    pub(crate) urls: Vec<trellis_delivery::engine::TargetStatus>,
    /// The last redrive of the dead-letter topic, if any.
    pub(crate) redrive: redrive::RedriveView,
    /// The replica that runs the subscription (the only one that delivers it), if any.
    pub(crate) owner: Option<String>,
}

impl SubscriptionRegistry {
    /// Starts every stored subscription from its committed offset (see `lifecycle`).
    pub(crate) async fn open(
        meta: Arc<dyn MetadataStore>,
        cluster: Cluster,
        topics: TopicRegistry,
        guard: Arc<AddressGuard>,
        tls: WebhookTls,
        webhook_origin: String,
    ) -> Result<SubscriptionRegistry, ApiError> {
        let registry = SubscriptionRegistry {
            meta,
            cluster,
            topics,
            guard,
            tls,
            webhook_origin,
            running: Mutex::new(BTreeMap::new()),
            tasks: TaskTracker::new(),
            loaded_at: 0,
        };
        let stored = registry
            .meta
            .range(SUBSCRIPTION_KEY_PREFIX)
            .await
            .map_err(|error| ApiError::internal("reading subscriptions", &error))?;
        let registry = SubscriptionRegistry {
            loaded_at: stored.revision,
            ..registry
        };
        for kv in stored.kvs {
            let spec = match decode(&kv.value) {
                Ok(spec) => spec,
                Err(error) => {
                    tracing::error!(message = "A stored subscription is unreadable; it is not started.", key = %kv.key, error);
                    continue;
                }
            };
            let name = spec.name.clone();
            if let Err(error) = registry.start(spec).await {
                tracing::error!(message = "A stored subscription cannot start.", subscription = name, error = %error.message);
            }
        }
        Ok(registry)
    }

    pub(crate) async fn create(&self, body: &Value) -> Result<Value, ApiError> {
        let spec = SubscriptionSpec::from_request(body).map_err(invalid)?;
        // First here, so a refused subscription creates no topic; again below, under the lock.
        refuse_dead_letter_cycle(&spec, self.running.lock().await.values().map(|e| &e.spec))?;
        let (topic, incarnation) = self.topics.for_subscription(&spec.topic).await?;
        let info = crate::topics::info_of(topic.as_ref()).await?;
        let start = start_offset(&spec, &info);
        if let Start::Offset(offset) = spec.start {
            let next = info.next_offset;
            if offset > next {
                return Err(invalid(field_error(
                    "start",
                    &format!(
                        "offset {offset} is past the end of topic {:?} (next offset {next})",
                        spec.topic
                    ),
                )));
            }
        }
        let mut spec = spec;
        if spec.sink.validate {
            spec.allowed_rates = self.validate_urls(&spec).await?;
        }
        // Build the engine before storing anything, so a refused URL leaves no trace.
        let engine = self.engine(&spec)?;
        let stored = encode(&spec)?;
        let mut running = self.running.lock().await;
        refuse_dead_letter_cycle(&spec, running.values().map(|entry| &entry.spec))?;
        let exists = || {
            ApiError::new(
                http::StatusCode::CONFLICT,
                "subscription_exists",
                format!("a subscription named {:?} already exists", spec.name),
            )
        };
        // The offset before the subscription: whichever replica owns it reads the offset as
        // soon as it sees the subscription, so it must be there first. Only while no
        // subscription of the name exists, so an existing one's offset is never overwritten.
        let offset = GuardedPut::new(
            offset_key(&spec.name),
            crate::stored_offset::encode(start, &incarnation),
        )
        .guard(subscription_key(&spec.name), Expect::Absent);
        if let GuardedOutcome::Conflict { .. } = self
            .meta
            .guarded_put(offset)
            .await
            .map_err(|error| ApiError::internal("storing a subscription's offset", &error))?
        {
            return Err(exists());
        }
        match self
            .meta
            .compare_and_set(&subscription_key(&spec.name), Expect::Absent, stored)
            .await
            .map_err(|error| ApiError::internal("storing a subscription", &error))?
        {
            CasOutcome::Written { .. } => {}
            CasOutcome::Conflict { .. } => return Err(exists()),
        }
        let view = view_json(&spec)?;
        let handle = self.spawn(spec, engine);
        // What the status says until the dispatcher has started, which it does from here.
        handle.stats.committed.store(start, Ordering::Relaxed);
        running.insert(handle.spec.name.clone(), handle);
        Ok(view)
    }

    pub(crate) async fn list(&self) -> Result<Vec<Value>, ApiError> {
        let running = self.running.lock().await;
        running
            .values()
            .map(|running| view_json(&running.spec))
            .collect()
    }

    pub(crate) async fn get(&self, name: &str) -> Result<Value, ApiError> {
        let running = self.running.lock().await;
        let running = running.get(name).ok_or_else(|| not_found(name))?;
        let mut view = view_json(&running.spec)?;
        let status = self.status(running).await;
        if let Value::Object(object) = &mut view {
            object.insert(
                "status".to_owned(),
                serde_json::to_value(status)
                    .map_err(|error| ApiError::internal("encoding status", &error))?,
            );
        }
        Ok(view)
    }

    /// `PATCH`: a JSON merge patch over `delivery`; other fields cannot change after creation.
    pub(crate) async fn patch(&self, name: &str, body: &Value) -> Result<Value, ApiError> {
        let object = body.as_object().ok_or_else(|| {
            invalid(field_error(
                "body",
                "must be a JSON object such as {\"delivery\": {...}}",
            ))
        })?;
        reject_unknown(object, &["delivery"]).map_err(invalid)?;
        let mut running = self.running.lock().await;
        let entry = running.get_mut(name).ok_or_else(|| not_found(name))?;
        let patch = object.get("delivery").cloned().unwrap_or(Value::Null);
        let delivery = entry
            .spec
            .delivery
            .patched(&patch, "delivery")
            .map_err(invalid)?;
        let mut spec = entry.spec.clone();
        spec.delivery = delivery;
        self.store(&spec).await?;
        entry.engine.update_delivery(&spec.delivery);
        entry.batch.send_replace(spec.delivery.batch.clone());
        entry.spec = spec;
        view_json(&entry.spec)
    }

    pub(crate) async fn set_paused(&self, name: &str, paused: bool) -> Result<Value, ApiError> {
        let mut running = self.running.lock().await;
        let entry = running.get_mut(name).ok_or_else(|| not_found(name))?;
        let mut spec = entry.spec.clone();
        spec.paused = paused;
        self.store(&spec).await?;
        entry.spec = spec;
        entry.paused.send_replace(paused);
        if !paused {
            entry.engine.resume();
        }
        view_json(&entry.spec)
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut running = self.running.lock().await;
        let entry = running.remove(name).ok_or_else(|| not_found(name))?;
        entry.stop.cancel();
        let _ = entry.done.await;
        // Its dispatcher has ended, so nothing registers its series again.
        crate::metrics::removable().remove(&[("subscription", name)]);
        self.meta
            .delete(&subscription_key(name))
            .await
            .map_err(|error| ApiError::internal("deleting a subscription", &error))?;
        for key in [offset_key(name), redrive_key(name)] {
            self.meta
                .delete(&key)
                .await
                .map_err(|error| ApiError::internal("deleting a subscription's offsets", &error))?;
        }
        Ok(())
    }

    /// Delivers the subscription's dead letters again, from where the last redrive stopped to
    /// the end of the dead-letter topic now. Answers at once; progress shows in the status.
    pub(crate) async fn redrive(&self, name: &str) -> Result<Value, ApiError> {
        let running = self.running.lock().await;
        let entry = running.get(name).ok_or_else(|| not_found(name))?;
        if entry.redrive.running.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "redrive_running",
                format!("a redrive of {name:?} is already running"),
            ));
        }
        let spec = &entry.spec;
        let Some((dead_letters, incarnation)) = self.topics.current(&spec.dead_letter_topic) else {
            return Ok(serde_json::json!({"from": 0, "to": 0, "events": 0}));
        };
        let info = crate::topics::info_of(dead_letters.as_ref()).await?;
        let from = match self.stored_u64(&redrive_key(name), &incarnation).await? {
            Some(cursor) => cursor.max(info.first_offset),
            None => info.first_offset,
        };
        let to = info.next_offset.max(from);
        // An engine of its own: a redrive must not trip the live subscription's circuit or
        // take its concurrency. It keeps the rate the URLs granted, like the live one.
        let (engine, outcomes) = self.engine(spec)?;
        let stats = Arc::clone(&entry.redrive);
        stats.from.store(from, Ordering::Relaxed);
        stats.to.store(to, Ordering::Relaxed);
        stats.delivered.store(0, Ordering::Relaxed);
        stats.dead_lettered.store(0, Ordering::Relaxed);
        stats.running.store(true, Ordering::Relaxed);
        self.tasks.spawn(
            redrive::Redrive {
                name: spec.name.clone(),
                dead_letters,
                dead_letter: self.dead_letter_target(spec),
                engine,
                outcomes,
                meta: Arc::clone(&self.meta),
                cursor_key: redrive_key(name),
                incarnation,
                from,
                to,
                stop: entry.stop.child_token(),
                stats,
            }
            .run(),
        );
        Ok(serde_json::json!({"from": from, "to": to, "events": to - from}))
    }

    /// The prefix of stored subscriptions, for `follow`.
    pub(crate) const PREFIX: &'static str = SUBSCRIPTION_KEY_PREFIX;

    /// The metadata store's revision the registry loaded; follow [`Self::PREFIX`] from after it.
    pub(crate) fn loaded_at(&self) -> u64 {
        self.loaded_at
    }

    /// Applies a change of the stored subscriptions, made through any replica (this one's own
    /// changes arrive here too, and find nothing left to do).
    pub(crate) async fn apply(&self, change: Change) {
        match change {
            Change::Put(kv) => self.apply_stored(&kv).await,
            Change::Delete(key) => {
                if let Some(name) = key.strip_prefix(SUBSCRIPTION_KEY_PREFIX) {
                    self.forget(name).await;
                }
            }
            Change::Snapshot(kvs) => {
                let gone = crate::follow::gone_from(
                    &kvs,
                    SUBSCRIPTION_KEY_PREFIX,
                    self.running.lock().await.keys(),
                );
                for name in gone {
                    self.forget(&name).await;
                }
                for kv in &kvs {
                    self.apply_stored(kv).await;
                }
            }
        }
    }

    async fn apply_stored(&self, kv: &trellis_meta::KeyValue) {
        let spec = match decode(&kv.value) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::error!(message = "A stored subscription is unreadable; it is not started.", key = %kv.key, error);
                return;
            }
        };
        let mut running = self.running.lock().await;
        if let Some(entry) = running.get_mut(&spec.name) {
            if encode(&entry.spec).is_ok_and(|stored| stored == kv.value) {
                return;
            }
            if entry.spec.topic == spec.topic
                && entry.spec.dead_letter_topic == spec.dead_letter_topic
                && entry.spec.sink == spec.sink
            {
                // What `PATCH` and pause/resume change, applied as they apply it.
                entry.engine.update_delivery(&spec.delivery);
                entry.batch.send_replace(spec.delivery.batch.clone());
                entry.paused.send_replace(spec.paused);
                if !spec.paused {
                    entry.engine.resume();
                }
                entry.spec = spec;
                return;
            }
            // Deleted and made again elsewhere, in between two reads of the store.
            if let Some(entry) = running.remove(&spec.name) {
                entry.stop.cancel();
                let _ = entry.done.await;
            }
        }
        let name = spec.name.clone();
        match self.engine(&spec) {
            Ok(engine) => {
                let handle = self.spawn(spec, engine);
                running.insert(name, handle);
            }
            Err(error) => {
                tracing::error!(message = "A stored subscription cannot start.", subscription = name, error = %error.message);
            }
        }
    }

    /// Stops a subscription deleted through another replica.
    async fn forget(&self, name: &str) {
        let mut running = self.running.lock().await;
        if let Some(entry) = running.remove(name) {
            entry.stop.cancel();
            let _ = entry.done.await;
            crate::metrics::removable().remove(&[("subscription", name)]);
            // If this replica ran it, its last commit came after the deleting replica removed
            // the offsets: remove them again, unless the name was taken anew meanwhile.
            if let Ok(None) = self.meta.get(&subscription_key(name)).await {
                for key in [offset_key(name), redrive_key(name)] {
                    if let Err(error) = self.meta.delete(&key).await {
                        tracing::warn!(message = "Deleting a deleted subscription's offset failed.", key, error = %crate::error::error_chain(&error));
                    }
                }
            }
        }
    }

    /// The lag of the subscriptions this replica runs, summed: events stored and not yet
    /// ended for them, as their dispatchers last published it.
    pub(crate) async fn owned_lag(&self) -> u64 {
        // Gathered under the lock, asked of the store after it: a slow store must not hold up
        // the API.
        let mut committed_by_topic: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        {
            let running = self.running.lock().await;
            let me = self.cluster.member_id();
            for entry in running.values() {
                if entry.owner.borrow().as_deref() == Some(me) {
                    committed_by_topic
                        .entry(entry.spec.topic.clone())
                        .or_default()
                        .push(entry.stats.committed.load(Ordering::Relaxed));
                }
            }
        }
        let mut lag = 0u64;
        for (topic, committed) in committed_by_topic {
            let Some(topic) = self.topics.handle(&topic) else {
                continue;
            };
            if let Ok(info) = topic.info().await {
                for committed in committed {
                    lag = lag.saturating_add(info.next_offset.saturating_sub(committed));
                }
            }
        }
        lag
    }

    /// The units of subscriptions no replica owns this moment.
    pub(crate) async fn unowned(&self) -> Vec<String> {
        let running = self.running.lock().await;
        running
            .values()
            .filter(|entry| entry.owner.borrow().is_none())
            .map(|entry| unit_name(&entry.spec.name))
            .collect()
    }

    /// Dispatchers (and redrives) running, for the drain's progress lines.
    pub(crate) fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Stops every dispatcher and waits until each has stored its committed offset.
    pub(crate) async fn shutdown(&self) {
        let running = std::mem::take(&mut *self.running.lock().await);
        for entry in running.values() {
            entry.stop.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Refuses with 409, naming them, while subscriptions (as their topic or their dead-letter
    /// topic) or the users `other_users` names (consumer groups with members, say) use the
    /// topic, unless `force`. A forced delete leaves the subscriptions waiting for the topic's
    /// next incarnation. Holding the subscriptions' lock keeps a subscription from being created
    /// meanwhile; `other_users` is awaited under it. The caller passes the other users in, so
    /// that subscriptions need not know the gRPC consumer groups.
    pub(crate) async fn delete_topic(
        &self,
        name: &str,
        force: bool,
        other_users: impl Future<Output = Vec<String>>,
    ) -> Result<(), ApiError> {
        self.topics.get(name).await?;
        let running = self.running.lock().await;
        let mut users: Vec<String> = running
            .values()
            .filter_map(|entry| {
                let spec = &entry.spec;
                if spec.topic == name {
                    Some(format!("subscription {:?} (its topic)", spec.name))
                } else if spec.dead_letter_topic == name {
                    Some(format!(
                        "subscription {:?} (its dead_letter_topic)",
                        spec.name
                    ))
                } else {
                    None
                }
            })
            .collect();
        users.extend(other_users.await);
        if !users.is_empty() && !force {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "topic_in_use",
                format!(
                    "topic {name:?} is used by {}; delete those first, or delete with ?force=true (subscriptions then wait for the topic to be created again and read it from its beginning)",
                    users.join(", ")
                ),
            ));
        }
        self.topics.delete(name).await?;
        drop(running);
        // Their coordinators end with the topic; a group that reads it again starts afresh.
        crate::metrics::removable().remove(&[("topic", name)]);
        Ok(())
    }

    async fn start(&self, spec: SubscriptionSpec) -> Result<(), ApiError> {
        let engine = self.engine(&spec)?;
        let handle = self.spawn(spec, engine);
        self.running
            .lock()
            .await
            .insert(handle.spec.name.clone(), handle);
        Ok(())
    }

    /// The CloudEvents webhook handshake with every URL; the rates they granted.
    async fn validate_urls(&self, spec: &SubscriptionSpec) -> Result<Vec<Option<u32>>, ApiError> {
        let timeout = std::time::Duration::from_millis(
            spec.delivery
                .connect_timeout_ms
                .saturating_add(spec.delivery.request_timeout_ms),
        );
        let mut rates = Vec::with_capacity(spec.sink.urls.len());
        for (index, url) in spec.sink.urls.iter().enumerate() {
            let rate = trellis_delivery::validation::handshake(
                url,
                &self.webhook_origin,
                timeout,
                Arc::clone(&self.guard),
                &self.tls,
            )
            .await
            .map_err(|error| {
                ApiError::bad_request("validation_failed", error.to_string())
                    .with_field(format!("sink.urls[{index}]"))
            })?;
            rates.push(rate);
        }
        Ok(rates)
    }

    /// The subscription's delivery engine, with the rates its URLs granted, and the channel
    /// its outcomes arrive on.
    fn engine(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<(Engine, mpsc::UnboundedReceiver<Outcome>), ApiError> {
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        let engine = Engine::new(
            &spec.name,
            &spec.sink,
            &spec.delivery,
            Arc::clone(&self.guard),
            self.tls.clone(),
            Arc::new(ToDispatcher(outcomes_tx)),
        )
        .map_err(|error| ApiError::bad_request("invalid_subscription", error.to_string()))?;
        for (index, rate) in spec.allowed_rates.iter().enumerate() {
            engine.limit_rate(index, *rate);
        }
        Ok((engine, outcomes))
    }

    fn dead_letter_target(&self, spec: &SubscriptionSpec) -> DeadLetterTarget {
        DeadLetterTarget {
            topic_name: spec.dead_letter_topic.clone(),
            topics: self.topics.clone(),
        }
    }

    /// Runs the subscription: its dispatcher once its topic exists, on each incarnation in turn.
    fn spawn(
        &self,
        spec: SubscriptionSpec,
        (engine, outcomes): (Engine, mpsc::UnboundedReceiver<Outcome>),
    ) -> Running {
        let (paused_tx, paused) = watch::channel(spec.paused);
        let (batch_tx, batch) = watch::channel(spec.delivery.batch.clone());
        let stop = CancellationToken::new();
        let stats = Arc::new(DispatcherStats::default());
        let lifecycle = Arc::new(Lifecycle::new(&spec.name));
        let supervisor = Supervisor {
            name: spec.name.clone(),
            topic_name: spec.topic.clone(),
            start: spec.start,
            topics: self.topics.clone(),
            dead_letter: self.dead_letter_target(&spec),
            meta: Arc::clone(&self.meta),
            offset_key: offset_key(&spec.name),
            target: Arc::new(engine.clone()),
            on_failure: OnFailure::DeadLetter,
            outcomes: Some(outcomes),
            max_in_flight: MAX_IN_FLIGHT,
            commit_interval: COMMIT_INTERVAL,
            paused,
            batch,
            stats: Arc::clone(&stats),
            lifecycle: Arc::clone(&lifecycle),
        };
        let unit = self
            .cluster
            .unit(&unit_name(&spec.name), Placement::Balanced);
        let owner = unit.owner();
        let supervisor = Arc::new(tokio::sync::Mutex::new(supervisor));
        let term_engine = engine.clone();
        let terms = while_owned(unit, stop.clone(), move |fence, stop| {
            term_engine.set_gate(FenceGate::of(&fence));
            let supervisor = Arc::clone(&supervisor);
            async move {
                // Subscriptions dead-letter their failures: only a stop ends a term.
                let _ = supervisor.lock().await.run(fence, stop).await;
                TermEnd::Stopped
            }
        });
        let done = self.tasks.spawn(async move {
            let _ = terms.await;
        });
        Running {
            spec,
            engine,
            paused: paused_tx,
            batch: batch_tx,
            stop,
            stats,
            done,
            redrive: Arc::default(),
            lifecycle,
            owner,
        }
    }

    async fn status(&self, running: &Running) -> SubscriptionStatus {
        let EngineStatus {
            delivered,
            failed: _,
            retries,
            in_flight,
            targets,
        } = running.engine.status();
        let owner = running.owner.borrow().clone();
        let here = owner.as_deref() == Some(self.cluster.member_id());
        let committed = if here {
            running.stats.committed.load(Ordering::Relaxed)
        } else {
            // Another replica commits it: what it stored last.
            match self.topics.current(&running.spec.topic) {
                Some((_, incarnation)) => self
                    .stored_u64(&offset_key(&running.spec.name), &incarnation)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0),
                None => 0,
            }
        };
        let waiting = running.lifecycle.waiting_reason();
        let storage = running.stats.storage_reason();
        // Asking an unreachable store would only wait out its timeout.
        let reachable = self.topics.store().available();
        let next = match (&waiting, self.topics.handle(&running.spec.topic)) {
            (None, Some(topic)) if reachable => topic
                .info()
                .await
                .map_or(committed, |info| info.next_offset),
            _ => committed,
        };
        // Reading failed in a way the dispatcher cannot go past (a resume retries).
        let stopped = running.stats.stopped_reason();
        let loaded = running.stats.offset_loaded.load(Ordering::Acquire);
        let state = match (&stopped, &waiting, &storage, loaded, running.spec.paused) {
            _ if !here && owner.is_some() => "standby",
            _ if !here => "unowned",
            (Some(_), _, _, _, _) => "stopped",
            (None, Some(_), _, _, _) => "waiting_for_topic",
            (None, None, Some(_), _, _) => "waiting_for_storage",
            (None, None, None, false, _) => "starting",
            (None, None, None, true, true) => "paused",
            (None, None, None, true, false) => "running",
        };
        SubscriptionStatus {
            delivered,
            retried: retries,
            dead_lettered: running.stats.dead_lettered.load(Ordering::Relaxed),
            in_flight,
            committed_offset: committed,
            lag: next.saturating_sub(committed),
            state,
            reason: stopped.or(waiting).or(storage),
            paused: running.spec.paused,
            urls: targets,
            redrive: running.redrive.view(),
            owner,
        }
    }

    async fn stored_u64(
        &self,
        key: &str,
        incarnation: &crate::topics::Incarnation,
    ) -> Result<Option<u64>, ApiError> {
        crate::stored_offset::load(self.meta.as_ref(), key, incarnation)
            .await
            .map_err(|error| ApiError::internal("reading a subscription's offset", &error))
    }

    async fn store(&self, spec: &SubscriptionSpec) -> Result<(), ApiError> {
        self.meta
            .put(&subscription_key(&spec.name), encode(spec)?)
            .await
            .map_err(|error| ApiError::internal("storing a subscription", &error))?;
        Ok(())
    }
}

fn start_offset(spec: &SubscriptionSpec, stats: &trellis_storage::TopicInfo) -> u64 {
    match spec.start {
        Start::Latest => stats.next_offset,
        Start::Earliest => stats.first_offset,
        Start::Offset(offset) => offset.max(stats.first_offset),
    }
}

/// Refuses a subscription whose dead letters would come back to it: its dead-letter topic is
/// read by a subscription whose dead letters go (perhaps through others) to its own topic. The
/// existing subscriptions hold no cycle, so any new one runs through `new`.
fn refuse_dead_letter_cycle<'a>(
    new: &SubscriptionSpec,
    existing: impl Iterator<Item = &'a SubscriptionSpec>,
) -> Result<(), ApiError> {
    let existing: Vec<&SubscriptionSpec> = existing.collect();
    // Breadth first over topics, from `new`'s dead-letter topic; each reached topic remembers
    // the subscription that dead-letters into it, to name the cycle.
    let mut reached: BTreeMap<&str, Option<&SubscriptionSpec>> = BTreeMap::new();
    reached.insert(new.dead_letter_topic.as_str(), None);
    let mut queue = std::collections::VecDeque::from([new.dead_letter_topic.as_str()]);
    while let Some(topic) = queue.pop_front() {
        for spec in existing.iter().filter(|spec| spec.topic == topic) {
            let next = spec.dead_letter_topic.as_str();
            if reached.contains_key(next) {
                continue;
            }
            reached.insert(next, Some(spec));
            if next == new.topic {
                let mut chain = vec![*spec];
                let mut at = spec.topic.as_str();
                while let Some(Some(before)) = reached.get(at) {
                    chain.push(before);
                    at = before.topic.as_str();
                }
                chain.push(new);
                chain.reverse();
                let steps: Vec<String> = chain
                    .iter()
                    .map(|spec| {
                        format!(
                            "{:?} ({} -> {})",
                            spec.name, spec.topic, spec.dead_letter_topic
                        )
                    })
                    .collect();
                return Err(ApiError::bad_request(
                    "dead_letter_cycle",
                    format!(
                        "dead letters would go round a cycle and be delivered again for ever: {}",
                        steps.join(", then ")
                    ),
                )
                .with_field("dead_letter_topic".to_owned()));
            }
            queue.push_back(next);
        }
    }
    Ok(())
}

fn decode(stored: &[u8]) -> Result<SubscriptionSpec, String> {
    serde_json::from_slice::<Value>(stored)
        .map_err(|error| error.to_string())
        .and_then(|value| SubscriptionSpec::from_stored(&value).map_err(|error| error.to_string()))
}

fn encode(spec: &SubscriptionSpec) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&spec.to_stored())
        .map(Bytes::from)
        .map_err(|error| ApiError::internal("encoding a subscription", &error))
}

fn view_json(spec: &SubscriptionSpec) -> Result<Value, ApiError> {
    serde_json::to_value(spec.view())
        .map_err(|error| ApiError::internal("encoding a subscription", &error))
}

fn invalid(error: SpecError) -> ApiError {
    ApiError::bad_request("invalid_subscription", error.to_string()).with_field(error.field)
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "subscription_not_found",
        format!("no subscription named {name:?}"),
    )
}

/// The subscription's name among the cluster's units of work.
fn unit_name(name: &str) -> String {
    format!("subscription/{name}")
}

fn subscription_key(name: &str) -> String {
    format!("{SUBSCRIPTION_KEY_PREFIX}{name}")
}

fn redrive_key(name: &str) -> String {
    format!("{REDRIVE_KEY_PREFIX}{name}")
}

fn offset_key(name: &str) -> String {
    format!("{OFFSET_KEY_PREFIX}{name}")
}
