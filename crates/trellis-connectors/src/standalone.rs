//! One connector in a process of its own, talking to a runtime over its HTTP API, with its
//! offsets in a local file.
//!
//! - A source plugin runs as `SourceWorker(source -> TopicSink)`: each batch is published into
//!   the runtime's `topic`, keeping the records' ids, so whatever is published again after a
//!   crash (polled and published, but not yet committed) is dropped by the runtime's
//!   deduplication.
//! - A sink plugin runs as `SourceWorker(TopicSource -> sink)`: the runtime's `topic` is read
//!   from the committed offset (or per `start`), and under `errors.tolerance = all` records that
//!   fail for good are published into `dead_letter_topic` (default `<name>.dlq`) of the runtime.
//!   The offset's partition names the runtime's URL and topic, so pointing the connector at
//!   another URL starts it afresh.
//! - `http-sink` runs the same way, its sink being the delivery engine in this process
//!   ([`HttpSink`]: the same `sink` and `delivery` settings as a webhook subscription, with the
//!   runtime's default address deny list and the system's trusted roots).
//!
//! Offsets live in an embedded metadata store (redb) at `offsets_file`, through the same
//! `OffsetStore` as inside the runtime; the file is locked while the connector runs, so two
//! processes cannot share it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use trellis_connect::offsets::OffsetStore;
use trellis_connect::worker::{dead_letter_topic, event_defaults, topic};
use trellis_connect::{
    ConfigError, ConnectorConfig, Role, SourceWorker, Tolerance, WorkerFailed, WorkerSettings,
};

use trellis_connect::Sink;
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::tls::WebhookTls;

use crate::http_sink::{self, HttpSink};
use crate::plugins::{self, HTTP_SINK, Kind};
use crate::topic_sink::{TopicSink, base_url};
use crate::topic_source::TopicSource;

/// Why a standalone connector could not run, or stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandaloneError {
    /// The connector's config is invalid; the error names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the connector name must be 1 to 128 characters without `/` or control characters")]
    InvalidName,
    #[error("--url must be the runtime's http:// or https:// base URL")]
    InvalidUrl,
    #[error("the connector class {0} cannot run standalone")]
    NotStandalone(String),
    #[error("the HTTP sink's TLS roots cannot be loaded")]
    Tls(#[source] trellis_delivery::tls::TlsError),
    #[error("cannot open the offsets file {path}")]
    Offsets {
        path: PathBuf,
        #[source]
        source: trellis_meta::MetaError,
    },
    /// The worker stopped by its error policy, or could not start.
    #[error(transparent)]
    Failed(#[from] WorkerFailed),
}

impl StandaloneError {
    /// Whether the error is in the connector's config (the name, the URL or a key).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StandaloneError::Config(_)
                | StandaloneError::InvalidName
                | StandaloneError::InvalidUrl
                | StandaloneError::NotStandalone(_)
        )
    }
}

/// Checks what `run` would refuse before it starts anything: the name, the runtime URL and
/// the config.
pub fn check(
    name: &str,
    config: &ConnectorConfig,
    runtime_url: &str,
) -> Result<&'static plugins::Plugin, StandaloneError> {
    if name.is_empty()
        || name.chars().count() > 128
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(StandaloneError::InvalidName);
    }
    base_url(&ConnectorConfig::new().with("url", runtime_url))
        .map_err(|_| StandaloneError::InvalidUrl)?;
    let plugin = plugins::check(config)?;
    if plugin.class == HTTP_SINK {
        // The catalog leaves these to whoever runs the engine: here, this process.
        http_sink::specs(config)?;
    }
    Ok(plugin)
}

/// Runs the connector `name` until `stop` is cancelled (then it commits its offsets and
/// returns `Ok`) or its error policy stops it. See the module docs.
pub async fn run(
    name: &str,
    config: ConnectorConfig,
    runtime_url: &str,
    offsets_file: &Path,
    stop: CancellationToken,
) -> Result<(), StandaloneError> {
    let plugin = check(name, &config, runtime_url)?;
    let settings = WorkerSettings::from_config(&config)?;
    let topic = topic(&config)?.to_owned();
    let meta = trellis_meta::EmbeddedStore::open(offsets_file).map_err(|source| {
        StandaloneError::Offsets {
            path: offsets_file.to_owned(),
            source,
        }
    })?;
    let offsets = OffsetStore::new(Arc::new(meta), name);
    let worker = match plugin.kind {
        Kind::Source => {
            let Some(source) = plugins::new_source(plugin.class) else {
                return Err(StandaloneError::NotStandalone(plugin.class.to_owned()));
            };
            let defaults = event_defaults(name, &config)?;
            let publish = ConnectorConfig::new()
                .with("url", runtime_url)
                .with("topic", topic)
                .with("event.source", defaults.source)
                .with("event.type", defaults.ty);
            SourceWorker::new(
                name.to_owned(),
                config,
                source,
                Box::new(TopicSink::new()),
                offsets,
                settings,
            )
            .with_destination_config(publish)
        }
        Kind::Sink => {
            let sink: Box<dyn Sink> = if plugin.class == HTTP_SINK {
                let guard = AddressGuard::new(AddressGuard::default_deny_list());
                let tls = WebhookTls::new(None).map_err(StandaloneError::Tls)?;
                Box::new(HttpSink::new(Arc::new(guard), tls))
            } else {
                match plugins::new_sink(plugin.class) {
                    Some(sink) => sink,
                    None => return Err(StandaloneError::NotStandalone(plugin.class.to_owned())),
                }
            };
            let mut read = ConnectorConfig::new()
                .with("url", runtime_url)
                .with("topic", topic);
            if let Some(start) = config.get("start") {
                read.insert("start", start.clone());
            }
            let dead_letters = dead_letter_topic(name, &config)?;
            let tolerance = settings.errors.tolerance;
            let mut worker = SourceWorker::new(
                name.to_owned(),
                read,
                Box::new(TopicSource::new()),
                sink,
                offsets,
                settings,
            )
            .with_destination_config(config)
            .with_role(Role::Sink);
            if tolerance == Tolerance::All {
                worker = worker.with_dead_letters(
                    Box::new(TopicSink::new()),
                    ConnectorConfig::new()
                        .with("url", runtime_url)
                        .with("topic", dead_letters),
                );
            }
            worker
        }
    };
    worker.run(stop).await.map_err(StandaloneError::from)
}
