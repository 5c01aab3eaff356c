//! Connectors inside `trellis serve`: their specs live in the metadata store under
//! `/connector-configs/<name>` (with the `paused` flag), a source's offsets under
//! `/connectors/<name>/offsets/` and a sink's topic offset under `/connectors/<name>/topic-offset`,
//! so connectors and their progress survive a restart. Each running connector is one run
//! (`run.rs`); pause, resume, restart and a new config stop a run and start another, so a
//! connector's lifecycle is only ever "start" and "stop" (finish or abandon in-flight work,
//! commit offsets, release), which is what a replica taking over a connector needs too.

mod metrics;
mod publish_sink;
mod run;
mod sink_deliver;
pub(crate) mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_connect::{OffsetReader, OffsetStore};
use trellis_connectors::plugins::{self, Kind};
use trellis_meta::{CasOutcome, Expect};

use crate::error::ApiError;
use crate::follow::Change;
pub(crate) use metrics::describe_metrics;
pub(crate) use run::Env;
use run::{Progress, Run};
use spec::ConnectorSpec;

const CONFIG_KEY_PREFIX: &str = "/connector-configs/";

pub(crate) struct ConnectorRegistry {
    env: Env,
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    tasks: TaskTracker,
    /// Runs that failed report here, to be paused with their error stored.
    failures: mpsc::UnboundedSender<run::Failed>,
    /// Ends the task that stores failures.
    stop: CancellationToken,
    /// The metadata store's revision when the connectors were loaded; `follow` goes on from it.
    loaded_at: u64,
}

struct Entry {
    spec: ConnectorSpec,
    /// `None` while paused, or failed to start.
    run: Option<Run>,
    /// Counts the runs, so a late report of an old run's failure changes nothing.
    generation: u64,
}

impl ConnectorRegistry {
    /// Starts every stored connector that is not paused.
    pub(crate) async fn open(env: Env) -> Result<ConnectorRegistry, ApiError> {
        let (failures, reports) = mpsc::unbounded_channel();
        let registry = ConnectorRegistry {
            env,
            entries: Arc::default(),
            tasks: TaskTracker::new(),
            failures,
            stop: CancellationToken::new(),
            loaded_at: 0,
        };
        registry.tasks.spawn(pause_failed(
            Arc::clone(&registry.entries),
            Arc::clone(&registry.env.meta),
            reports,
            registry.stop.clone(),
        ));
        let stored = registry
            .env
            .meta
            .range(CONFIG_KEY_PREFIX)
            .await
            .map_err(|error| ApiError::internal("reading connectors", &error))?;
        let registry = ConnectorRegistry {
            loaded_at: stored.revision,
            ..registry
        };
        let mut entries = registry.entries.lock().await;
        for kv in stored.kvs {
            match decode(&kv.value) {
                Ok(spec) => {
                    let entry = registry.entry(spec);
                    entries.insert(entry.spec.name.clone(), entry);
                }
                Err(error) => {
                    tracing::error!(message = "A stored connector is unreadable; it is not started.", key = %kv.key, error);
                }
            }
        }
        drop(entries);
        Ok(registry)
    }

    pub(crate) async fn create(&self, body: &Value) -> Result<Value, ApiError> {
        let spec = ConnectorSpec::from_request(body)?;
        let mut entries = self.entries.lock().await;
        match self
            .env
            .meta
            .compare_and_set(&config_key(&spec.name), Expect::Absent, encode(&spec)?)
            .await
            .map_err(|error| ApiError::internal("storing a connector", &error))?
        {
            CasOutcome::Written { .. } => {}
            CasOutcome::Conflict { .. } => {
                return Err(ApiError::new(
                    http::StatusCode::CONFLICT,
                    "connector_exists",
                    format!("a connector named {:?} already exists", spec.name),
                ));
            }
        }
        let info = spec.info();
        let entry = self.entry(spec);
        entries.insert(entry.spec.name.clone(), entry);
        Ok(info)
    }

    /// `PUT .../config`: creates the connector (`true`) or replaces its config and restarts it.
    pub(crate) async fn put_config(
        &self,
        name: &str,
        config: &Value,
    ) -> Result<(bool, Value), ApiError> {
        let mut entries = self.entries.lock().await;
        // A new config keeps a pause the user asked for, and starts a connector that failed:
        // the new config is how its failure gets fixed.
        let paused = entries
            .get(name)
            .is_some_and(|entry| entry.spec.paused && entry.spec.failed.is_none());
        let spec = ConnectorSpec::new(name.to_owned(), config.clone(), paused)?;
        self.store(&spec).await?;
        let created = match entries.remove(name) {
            Some(old) => {
                stop(old.run).await;
                false
            }
            None => true,
        };
        let info = spec.info();
        let entry = self.entry(spec);
        entries.insert(name.to_owned(), entry);
        Ok((created, info))
    }

    /// Sorted names.
    pub(crate) async fn names(&self) -> Vec<String> {
        self.entries.lock().await.keys().cloned().collect()
    }

    pub(crate) async fn info(&self, name: &str) -> Result<Value, ApiError> {
        let entries = self.entries.lock().await;
        Ok(find(&entries, name)?.spec.info())
    }

    pub(crate) async fn config(&self, name: &str) -> Result<Value, ApiError> {
        let entries = self.entries.lock().await;
        Ok(find(&entries, name)?.spec.redacted_config())
    }

    pub(crate) async fn status(&self, name: &str) -> Result<Value, ApiError> {
        let entries = self.entries.lock().await;
        Ok(status(find(&entries, name)?))
    }

    pub(crate) async fn expanded(&self, status: bool, info: bool) -> Value {
        let entries = self.entries.lock().await;
        let mut all = serde_json::Map::new();
        for (name, entry) in entries.iter() {
            let mut object = serde_json::Map::new();
            if status {
                object.insert("status".to_owned(), self::status(entry));
            }
            if info {
                object.insert("info".to_owned(), entry.spec.info());
            }
            all.insert(name.clone(), Value::Object(object));
        }
        Value::Object(all)
    }

    pub(crate) async fn pause(&self, name: &str) -> Result<Value, ApiError> {
        let mut entries = self.entries.lock().await;
        let entry = find_mut(&mut entries, name)?;
        if entry.spec.paused {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "connector_paused",
                format!("connector {name:?} is already paused"),
            ));
        }
        let mut spec = entry.spec.clone();
        spec.paused = true;
        self.store(&spec).await?;
        entry.spec = spec;
        stop(entry.run.take()).await;
        Ok(json!({"name": name, "state": "PAUSED"}))
    }

    /// Starts a paused or failed connector again, from its committed offsets.
    pub(crate) async fn resume(&self, name: &str) -> Result<Value, ApiError> {
        let mut entries = self.entries.lock().await;
        let entry = find_mut(&mut entries, name)?;
        if !entry.spec.paused && entry.spec.failed.is_none() {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "connector_not_paused",
                format!("connector {name:?} is not paused"),
            ));
        }
        let mut spec = entry.spec.clone();
        spec.paused = false;
        spec.failed = None;
        self.store(&spec).await?;
        entry.spec = spec;
        stop(entry.run.take()).await;
        self.start(entry);
        Ok(json!({"name": name, "state": state(entry).0}))
    }

    pub(crate) async fn restart(&self, name: &str) -> Result<Value, ApiError> {
        let mut entries = self.entries.lock().await;
        let entry = find_mut(&mut entries, name)?;
        stop(entry.run.take()).await;
        let mut spec = entry.spec.clone();
        spec.restarts += 1;
        if spec.failed.is_some() {
            // A restart is how Kafka Connect starts a failed connector again.
            spec.paused = false;
            spec.failed = None;
        }
        // Stored even when nothing else changed: the replica that runs it may be another.
        self.store(&spec).await?;
        entry.spec = spec;
        if !entry.spec.paused {
            self.start(entry);
        }
        Ok(json!({"name": name, "state": state(entry).0}))
    }

    pub(crate) async fn offsets(&self, name: &str) -> Result<Value, ApiError> {
        let entries = self.entries.lock().await;
        let entry = find(&entries, name)?;
        let offsets = match entry.spec.plugin.kind {
            Kind::Source => OffsetReader::new(self.offset_store(name))
                .positions()
                .await
                .map_err(|error| ApiError::internal("reading a connector's offsets", &error))?
                .into_iter()
                .map(|position| {
                    json!({"partition": position.partition.as_str(), "offset": position.offset.0})
                })
                .collect(),
            Kind::Sink => {
                let running = match entry.run.as_ref().and_then(Run::progress) {
                    Some(Progress::Sink { stats, .. })
                        if stats.offset_loaded.load(Ordering::Acquire) =>
                    {
                        Some(stats.committed.load(Ordering::Relaxed))
                    }
                    _ => None,
                };
                let offset = match running {
                    Some(offset) => Some(offset),
                    None => crate::stored_offset::load_any(
                        self.env.meta.as_ref(),
                        &run::topic_offset_key(name),
                    )
                    .await
                    .map_err(|error| ApiError::internal("reading a connector's offsets", &error))?
                    .map(|stored| stored.offset),
                };
                offset
                    .map(|offset| json!({"partition": entry.spec.topic(), "offset": offset}))
                    .into_iter()
                    .collect()
            }
        };
        Ok(json!({"offsets": Value::Array(offsets)}))
    }

    /// Forgets the committed offsets, so the next start begins afresh; only while paused, so
    /// no run commits over the reset.
    pub(crate) async fn delete_offsets(&self, name: &str) -> Result<Value, ApiError> {
        let entries = self.entries.lock().await;
        let entry = find(&entries, name)?;
        if !entry.spec.paused {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "connector_not_paused",
                format!(
                    "connector {name:?} is running; pause it before deleting its offsets, so it cannot commit over the reset"
                ),
            ));
        }
        let deleted = self.forget_offsets(name).await?;
        Ok(json!({"name": name, "deleted": deleted}))
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut entries = self.entries.lock().await;
        let entry = entries.remove(name).ok_or_else(|| not_found(name))?;
        stop(entry.run).await;
        self.env
            .meta
            .delete(&config_key(name))
            .await
            .map_err(|error| ApiError::internal("deleting a connector", &error))?;
        self.forget_offsets(name).await?;
        Ok(())
    }

    /// The prefix of stored connector configs, for `follow`.
    pub(crate) const PREFIX: &'static str = CONFIG_KEY_PREFIX;

    /// The metadata store's revision the registry loaded; follow [`Self::PREFIX`] from after it.
    pub(crate) fn loaded_at(&self) -> u64 {
        self.loaded_at
    }

    /// Applies a change of the stored connectors, made through any replica (this one's own
    /// changes arrive here too, and find nothing left to do).
    pub(crate) async fn apply(&self, change: Change) {
        match change {
            Change::Put(kv) => self.apply_stored(&kv).await,
            Change::Delete(key) => {
                if let Some(name) = key.strip_prefix(CONFIG_KEY_PREFIX) {
                    let entry = self.entries.lock().await.remove(name);
                    if let Some(entry) = entry {
                        stop(entry.run).await;
                        // If this replica ran it, its last commit came after the deleting
                        // replica forgot the offsets: forget them again, unless the name was
                        // taken anew meanwhile.
                        if let Ok(None) = self.env.meta.get(&key).await
                            && let Err(error) = self.forget_offsets(name).await
                        {
                            tracing::warn!(message = "Forgetting a deleted connector's offsets failed.", connector = name, error = %error.message);
                        }
                    }
                }
            }
            Change::Snapshot(kvs) => {
                let gone: Vec<Entry> = {
                    let mut entries = self.entries.lock().await;
                    let names = crate::follow::gone_from(&kvs, CONFIG_KEY_PREFIX, entries.keys());
                    names
                        .iter()
                        .filter_map(|name| entries.remove(name))
                        .collect()
                };
                for entry in gone {
                    stop(entry.run).await;
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
                tracing::error!(message = "A stored connector is unreadable; it is not started.", key = %kv.key, error);
                return;
            }
        };
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get_mut(&spec.name) {
            if encode(&entry.spec).is_ok_and(|stored| stored == kv.value) {
                return;
            }
            // A new config, a pause or a resume through another replica: a connector only ever
            // starts and stops.
            stop(entry.run.take()).await;
            entry.spec = spec;
            if !entry.spec.paused {
                self.start(entry);
            }
            return;
        }
        let entry = self.entry(spec);
        entries.insert(entry.spec.name.clone(), entry);
    }

    /// The units of running connectors no replica owns this moment.
    pub(crate) async fn unowned(&self) -> Vec<String> {
        let entries = self.entries.lock().await;
        entries
            .values()
            .filter(|entry| {
                entry
                    .run
                    .as_ref()
                    .is_some_and(|run| run.owner.borrow().is_none())
            })
            .map(|entry| run::unit_name(&entry.spec.name))
            .collect()
    }

    /// The sink connectors reading `topic`, for the check before the topic is deleted.
    pub(crate) async fn readers_of(&self, topic: &str) -> Vec<String> {
        self.entries
            .lock()
            .await
            .values()
            .filter(|entry| entry.spec.plugin.kind == Kind::Sink && entry.spec.topic() == topic)
            .map(|entry| format!("connector {:?} (its topic)", entry.spec.name))
            .collect()
    }

    /// Connector runs going, for the drain's progress lines.
    pub(crate) fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Stops every run; each commits its offsets.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        let entries = std::mem::take(&mut *self.entries.lock().await);
        for entry in entries.values() {
            if let Some(run) = &entry.run {
                run.stop.cancel();
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn entry(&self, spec: ConnectorSpec) -> Entry {
        let mut entry = Entry {
            spec,
            run: None,
            generation: 0,
        };
        if !entry.spec.paused {
            self.start(&mut entry);
        }
        entry
    }

    /// Starts a run; a connector that cannot start shows `FAILED` with why.
    fn start(&self, entry: &mut Entry) {
        entry.generation += 1;
        let report = run::Report {
            failures: self.failures.clone(),
            name: entry.spec.name.clone(),
            generation: entry.generation,
        };
        match run::start(&self.env, &entry.spec, &report, &self.tasks) {
            Ok(run) => entry.run = Some(run),
            Err(reason) => {
                // Paused with the reason stored, as a run that fails is.
                report.failed(reason);
            }
        }
    }

    async fn forget_offsets(&self, name: &str) -> Result<usize, ApiError> {
        let mut deleted = self
            .offset_store(name)
            .delete_all()
            .await
            .map_err(|error| ApiError::internal("deleting a connector's offsets", &error))?;
        let topic_offset = run::topic_offset_key(name);
        if self
            .env
            .meta
            .get(&topic_offset)
            .await
            .map_err(|error| ApiError::internal("deleting a connector's offsets", &error))?
            .is_some()
        {
            self.env
                .meta
                .delete(&topic_offset)
                .await
                .map_err(|error| ApiError::internal("deleting a connector's offsets", &error))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn offset_store(&self, name: &str) -> OffsetStore {
        OffsetStore::new(Arc::clone(&self.env.meta), name.to_owned())
    }

    async fn store(&self, spec: &ConnectorSpec) -> Result<(), ApiError> {
        self.env
            .meta
            .put(&config_key(&spec.name), encode(spec)?)
            .await
            .map_err(|error| ApiError::internal("storing a connector", &error))?;
        Ok(())
    }
}

/// `GET /v1/connector-plugins`: each plugin with every key it takes.
pub(crate) fn plugins_json() -> Value {
    Value::Array(
        plugins::plugins()
            .iter()
            .map(|plugin| {
                let config: Vec<Value> = plugin
                    .config_keys()
                    .into_iter()
                    .map(|key| {
                        json!({
                            "name": key.name,
                            "required": key.required,
                            "default": key.default,
                            "description": key.description,
                            "secret": key.secret,
                        })
                    })
                    .collect();
                json!({
                    "class": plugin.class,
                    "type": plugin.kind.as_str(),
                    "description": plugin.description,
                    "config": config,
                })
            })
            .collect(),
    )
}

/// The state word (Kafka Connect's) and why, when there is a why.
fn state(entry: &Entry) -> (&'static str, Option<String>) {
    if let Some(reason) = entry.spec.failed.clone() {
        return ("FAILED", Some(reason));
    }
    if entry.spec.paused {
        return ("PAUSED", None);
    }
    let Some(run) = &entry.run else {
        return ("FAILED", None);
    };
    match run.progress() {
        // Another replica runs it (Kafka Connect's workers show the same), or none does yet.
        None => match run.owner.borrow().clone() {
            Some(owner) => ("STANDBY", Some(format!("running on replica {owner}"))),
            None => ("UNASSIGNED", None),
        },
        Some(Progress::Source(status)) => source_state(&status),
        Some(Progress::Sink {
            stats,
            lifecycle,
            last_error,
            ..
        }) => {
            if let Some(reason) = stats.stopped_reason() {
                ("FAILED", Some(reason))
            } else if let Some(reason) = lifecycle.waiting_reason() {
                ("WAITING", Some(reason))
            } else if let Some(reason) = stats.storage_reason() {
                ("WAITING", Some(reason))
            } else if !stats.offset_loaded.load(Ordering::Acquire) {
                ("STARTING", None)
            } else {
                let last = last_error.lock().ok().and_then(|last| last.clone());
                ("RUNNING", last)
            }
        }
    }
}

fn source_state(status: &trellis_connect::worker::WorkerStatus) -> (&'static str, Option<String>) {
    use trellis_connect::worker::WorkerState;
    match status.state() {
        WorkerState::Starting => ("STARTING", None),
        WorkerState::Running => ("RUNNING", status.last_error()),
        WorkerState::Waiting(reason) => ("WAITING", Some(reason)),
        WorkerState::Failed(reason) => ("FAILED", Some(reason)),
        WorkerState::Stopped => ("STOPPED", None),
    }
}

fn status(entry: &Entry) -> Value {
    let (state, trace) = state(entry);
    let mut connector = serde_json::Map::new();
    connector.insert("state".to_owned(), Value::from(state));
    if let Some(trace) = trace {
        connector.insert("trace".to_owned(), Value::from(trace));
    }
    let records = match entry.run.as_ref().and_then(Run::progress) {
        Some(Progress::Source(status)) => {
            let counts = status.counters();
            let offsets = status.offsets();
            json!({
                "polled": counts.polled,
                "published": counts.published,
                "failed": counts.failed,
                "skipped": counts.skipped,
                "retried": counts.retried,
                "offset_commits": offsets.commits,
                "offset_commit_failures": offsets.failures,
                "begin_flush_refused": offsets.begin_flush_refused,
            })
        }
        Some(Progress::Sink {
            stats,
            counters,
            engine,
            ..
        }) => {
            let (put, failed) = match engine {
                Some(engine) => {
                    let status = engine.status();
                    (status.delivered, status.failed)
                }
                None => (
                    counters.put.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                ),
            };
            json!({
                "put": put,
                "failed": failed,
                "dead_lettered": stats.dead_lettered.load(Ordering::Relaxed),
                "committed_offset": stats.committed.load(Ordering::Relaxed),
            })
        }
        None => json!({}),
    };
    if let Some(owner) = entry
        .run
        .as_ref()
        .and_then(|run| run.owner.borrow().clone())
    {
        connector.insert("worker_id".to_owned(), Value::from(owner));
    }
    json!({
        "name": entry.spec.name,
        "type": entry.spec.kind(),
        "plugin": entry.spec.plugin.class,
        "connector": Value::Object(connector),
        "paused": entry.spec.paused,
        "records": records,
    })
}

/// Pauses each connector whose run failed (`errors.tolerance: none`, or a failed start), with
/// its error stored, so a restart of the runtime does not run into the same record again and
/// the status shows why until a resume or restart.
async fn pause_failed(
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    meta: Arc<dyn trellis_meta::MetadataStore>,
    mut reports: mpsc::UnboundedReceiver<run::Failed>,
    stop: CancellationToken,
) {
    loop {
        let failed = tokio::select! {
            () = stop.cancelled() => return,
            failed = reports.recv() => match failed {
                Some(failed) => failed,
                None => return,
            },
        };
        let mut entries = entries.lock().await;
        let Some(entry) = entries.get_mut(&failed.name) else {
            continue;
        };
        if entry.generation != failed.generation {
            continue;
        }
        entry.run = None;
        let mut spec = entry.spec.clone();
        spec.paused = true;
        spec.failed = Some(failed.reason);
        match encode(&spec) {
            Ok(value) => {
                if let Err(error) = meta.put(&config_key(&spec.name), value).await {
                    tracing::warn!(message = "Storing a failed connector's pause failed; it shows as failed until the runtime restarts.", connector = %spec.name, error = %crate::error::error_chain(&error));
                }
            }
            Err(error) => {
                tracing::warn!(message = "Encoding a failed connector failed.", connector = %spec.name, error = %error.message);
            }
        }
        entry.spec = spec;
    }
}

fn find<'a>(entries: &'a BTreeMap<String, Entry>, name: &str) -> Result<&'a Entry, ApiError> {
    entries.get(name).ok_or_else(|| not_found(name))
}

fn find_mut<'a>(
    entries: &'a mut BTreeMap<String, Entry>,
    name: &str,
) -> Result<&'a mut Entry, ApiError> {
    entries.get_mut(name).ok_or_else(|| not_found(name))
}

async fn stop(run: Option<Run>) {
    if let Some(run) = run {
        run.stop.cancel();
        let _ = run.done.await;
    }
}

fn decode(stored: &[u8]) -> Result<ConnectorSpec, String> {
    serde_json::from_slice::<Value>(stored)
        .map_err(|error| error.to_string())
        .and_then(|value| ConnectorSpec::from_stored(&value))
}

fn encode(spec: &ConnectorSpec) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&spec.to_stored())
        .map(Bytes::from)
        .map_err(|error| ApiError::internal("encoding a connector", &error))
}

fn config_key(name: &str) -> String {
    format!("{CONFIG_KEY_PREFIX}{name}")
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "connector_not_found",
        format!("no connector named {name:?}"),
    )
}
