//! `trellis serve`: opens the data directory (embedded log and metadata store) or connects to
//! etcd and NATS JetStream, binds the HTTP and gRPC APIs, prints where they listen, and runs until SIGTERM or SIGINT, then drains (for at
//! most the shutdown timeout) and flushes. A second signal skips the rest of the drain.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use trellis_meta::{EmbeddedStore, EtcdStore, MetaError, MetadataStore};
use trellis_storage::{EmbeddedOptions, EventStore, JetStreamOptions, JetStreamStore};

use crate::cli::ServeArgs;
use crate::config::{MetaBackend, Settings, StorageBackend};

/// Blocking-pool threads at most: segment reads are short positional reads, mostly from the
/// page cache, so a few threads keep up, and the process stays at a few dozen threads in all.
const MAX_BLOCKING_THREADS: usize = 16;

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    let _flush_logs_on_return = crate::logging::init(&settings.log_level, settings.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Reads, retention and the dedup rebuild run on blocking threads; 512 of them (tokio's
        // default) under many readers of many topics would cost far more than they overlap.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")?;
    let stopped = runtime.block_on(serve(settings));
    match stopped {
        // Tasks left behind (connections, a retention pass) must not hold the exit.
        Ok(Stopped::Cut) => runtime.shutdown_background(),
        _ => runtime.shutdown_timeout(Duration::from_secs(1)),
    }
    // Returning drops the log guard, which writes the last lines.
    stopped.map(|_| ())
}

/// How `serve` ended.
enum Stopped {
    /// After the drain (bounded by the shutdown timeout).
    Drained,
    /// At a second signal, without waiting for the drain; the event log is flushed.
    Cut,
}

async fn serve(mut settings: Settings) -> anyhow::Result<Stopped> {
    // Bind first: a port in use is the most common start-up failure and costs nothing to find.
    let listener = TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    let grpc_listener = TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", settings.grpc_addr))?;
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let _lock = lock_data_dir(data_dir)?;

    // Before the log opens, so what recovery counts reaches /metrics.
    trellis_runtime::install_metrics_recorder();
    // etcd before anything that logs, so that a failure to reach it is the one line printed.
    let etcd = connect_etcd(&settings).await?;
    // The runtime sees the event store only as `Arc<dyn EventStore>`.
    let store = open_event_store(&settings).await?;
    let meta = match etcd {
        Some(etcd) => etcd,
        None => {
            let meta_path = data_dir.join("meta.redb");
            let meta = EmbeddedStore::open(&meta_path).with_context(|| {
                format!("cannot open the metadata store {}", meta_path.display())
            })?;
            Arc::new(meta)
        }
    };

    // Signal handlers exist before we say we listen, so a signal sent right after never hits the
    // default action (which would kill the process without a flush).
    let signals = Signals::install().context("cannot install signal handlers")?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let grpc_addr = grpc_listener
        .local_addr()
        .context("cannot read the gRPC listening address")?;
    let cluster = &mut settings.runtime.cluster;
    if cluster.advertise_http.is_none() || cluster.advertise_grpc.is_none() {
        if settings.meta != MetaBackend::Embedded && local_addr.ip().is_unspecified() {
            tracing::warn!(
                message = "Listening on every interface without --advertise-http/--advertise-grpc: other replicas are told an address they cannot reach.",
                http = %local_addr
            );
        }
        cluster
            .advertise_http
            .get_or_insert_with(|| local_addr.to_string());
        cluster
            .advertise_grpc
            .get_or_insert_with(|| grpc_addr.to_string());
    }
    // One line on stdout, for people and for scripts that started us with port 0.
    println!(
        "trellis listening on http://{local_addr} grpc://{grpc_addr} (data dir {})",
        data_dir.display()
    );
    tracing::info!(message = "Trellis started.", http = %local_addr, grpc = %grpc_addr, data_dir = %data_dir.display(), storage = %settings.storage.describe(), meta = %settings.meta.describe(), node_id = %settings.runtime.cluster.node_id.as_deref().unwrap_or_default());

    let shutdown = CancellationToken::new();
    let event_store = Arc::clone(&store);
    let mut serving = Box::pin(trellis_runtime::serve_with_grpc(
        listener,
        Some(grpc_listener),
        store,
        meta,
        settings.runtime,
        shutdown.clone(),
    ));
    let mut signals = signals;
    let first = tokio::select! {
        served = &mut serving => return served.context(STOPPED_WITH_ERROR).map(|()| Stopped::Drained),
        first = signals.next() => first,
    };
    tracing::info!(
        message = "Signal received: shutting down; a second signal stops at once.",
        signal = first
    );
    shutdown.cancel();
    let second = tokio::select! {
        served = &mut serving => return served.context(STOPPED_WITH_ERROR).map(|()| Stopped::Drained),
        second = signals.next() => second,
    };
    tracing::warn!(
        message =
            "Second signal: stopping now without finishing the drain; flushing the event log.",
        signal = second
    );
    // What was acknowledged is already durable under `always`; this writes what is queued and
    // fsyncs the rest, as a drained shutdown would.
    drop(serving);
    event_store
        .close()
        .await
        .context("flushing the event log failed")?;
    tracing::info!(message = "Stopped; the log is flushed.");
    Ok(Stopped::Cut)
}

/// The configured event store. An unreachable NATS is an error here, so that a misconfigured
/// node never starts serving; once connected, a lost connection only makes it unavailable.
async fn open_event_store(settings: &Settings) -> anyhow::Result<Arc<dyn EventStore>> {
    match &settings.storage {
        StorageBackend::Embedded => {
            // Deduplicates on the digest of each event's (source, id), read back from the stored
            // events after a restart.
            let log_dir = settings.data_dir.join("log");
            let mut options = EmbeddedOptions::new(&log_dir);
            options.default_settings = settings.runtime.default_topic.to_storage();
            options.writer_threads = settings.log_resources.writer_threads;
            options.max_open_files = settings.log_resources.max_open_files;
            options.dedup_window = settings.runtime.dedup_window;
            options.dedup_max_entries = settings.runtime.dedup_max_entries;
            options.key_of = Some(trellis_runtime::stored_event_key_of());
            let store = trellis_storage::EmbeddedStore::open(options)
                .with_context(|| format!("cannot open the event log in {}", log_dir.display()))?;
            Ok(Arc::new(store))
        }
        StorageBackend::Nats {
            urls,
            credentials,
            tls_ca,
            replicas,
        } => {
            let mut options = JetStreamOptions::new(urls.clone());
            options.credentials_file = credentials.clone();
            options.tls_ca_file = tls_ca.clone();
            options.replicas = *replicas;
            options.dedup_window = settings.runtime.dedup_window;
            let cannot_use = |error| {
                anyhow::anyhow!(
                    "cannot use NATS JetStream at {}: {error}",
                    settings.storage.describe()
                )
            };
            let store = JetStreamStore::connect(options).await.map_err(cannot_use)?;
            // Connecting is not enough: a server without JetStream enabled accepts the
            // connection and fails every call.
            store.list_topics().await.map_err(cannot_use)?;
            Ok(Arc::new(store))
        }
    }
}

/// The etcd metadata store, when configured (`None`: the embedded one). An unreachable etcd is
/// an error here, like an unreachable NATS: a replica that cannot coordinate with the others
/// never starts serving.
async fn connect_etcd(settings: &Settings) -> anyhow::Result<Option<Arc<dyn MetadataStore>>> {
    match &settings.meta {
        MetaBackend::Embedded => Ok(None),
        MetaBackend::Etcd(etcd) => match EtcdStore::connect(etcd.options()).await {
            Ok(store) => Ok(Some(Arc::new(store))),
            Err(error) => {
                let verb = match error {
                    MetaError::Unavailable(_) => "cannot reach",
                    _ => "cannot use",
                };
                anyhow::bail!(
                    "{verb} the etcd metadata store at {}: {}",
                    etcd.describe(),
                    error_chain(&error)
                )
            }
        },
    }
}

/// What went wrong with etcd, on one line: the causes under the store's error, each said once
/// (a gRPC status by its message alone, as its display repeats its source in debug form).
fn error_chain(error: &MetaError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = std::error::Error::source(error);
    while let Some(cause) = next {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) if !status.message().is_empty() => status.message().to_owned(),
            _ => cause.to_string(),
        };
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

const STOPPED_WITH_ERROR: &str = "the runtime stopped with an error";

/// Holds an exclusive lock on the data dir for the life of the process, so two runtimes never
/// write the same log.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            anyhow::bail!(
                "data dir {} is in use by another trellis process",
                data_dir.display()
            )
        }
        Err(TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock data dir {}", data_dir.display()))
        }
    }
}

/// SIGTERM and SIGINT, registered up front.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
