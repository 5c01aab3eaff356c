//! Settings of `trellis serve`, merged from the config file, the environment and flags (each
//! overriding the one before), with defaults kept in one place: [`Settings::default`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use trellis_log::LogResources;
use trellis_runtime::{
    ConnectionLimits, DurabilityPolicy, RuntimeConfig, TopicSettings, WebhookTls,
};

use crate::cli::ServeArgs;

mod cluster;

pub(crate) use cluster::MetaBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

/// The config file. Every key is optional; unknown keys are an error so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<String>,
    grpc_addr: Option<String>,
    /// Milliseconds the drain after SIGTERM/SIGINT may take before open connections are closed.
    shutdown_timeout_ms: Option<u64>,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    storage: FileStorage,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    delivery: FileDelivery,
    #[serde(default)]
    dedup: FileDedup,
    #[serde(default)]
    grpc: FileGrpc,
    #[serde(default)]
    topics: FileTopics,
    #[serde(default)]
    meta: cluster::FileMeta,
    #[serde(default)]
    cluster: cluster::FileCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTopics {
    /// No topic is created once this many exist.
    max_topics: Option<usize>,
    /// Threads that write and fsync, shared by every topic.
    writer_threads: Option<usize>,
    /// Segment files kept open at once.
    max_open_files: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDedup {
    /// Milliseconds within which a repeated (source, id) is a duplicate; 0 turns it off.
    window_ms: Option<u64>,
    /// The most (source, id) pairs remembered over all topics.
    max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGrpc {
    /// Batches one PublishStream may have in flight before it is no longer read.
    max_batches_in_flight: Option<usize>,
    max_connections: Option<usize>,
    /// Milliseconds a connection without any call may stay open; 0 turns it off.
    idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDelivery {
    /// Address ranges (CIDR) webhook targets may not use; replaces the default list.
    webhook_deny: Option<Vec<String>>,
    /// `WebHook-Request-Origin` of validation handshakes.
    webhook_origin: Option<String>,
    /// PEM CA certificates trusted for `https` webhooks besides the system's.
    webhook_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    /// `embedded`, or NATS JetStream server URLs (`nats://host:port`, comma-separated).
    url: Option<String>,
    /// NATS credentials file.
    nats_credentials: Option<PathBuf>,
    /// PEM CA certificates trusted for the NATS servers' TLS certificates.
    nats_tls_ca: Option<PathBuf>,
    /// Replicas of each topic's stream: 1 on one NATS server, 3 on a cluster.
    nats_replicas: Option<usize>,
    fsync: Option<DurabilityPolicy>,
    fsync_interval_ms: Option<u64>,
    segment_bytes: Option<u64>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    max_event_bytes: Option<usize>,
    max_batch_bytes: Option<usize>,
    max_batch_events: Option<usize>,
    /// Deepest nesting of arrays and objects in an event's JSON data.
    max_json_depth: Option<usize>,
    auto_create_topics: Option<bool>,
    max_connections: Option<usize>,
    /// Milliseconds from a request head's first byte to its end; 0 turns it off.
    header_read_timeout_ms: Option<u64>,
    /// Milliseconds a keep-alive connection may wait for its next request; 0 turns it off.
    idle_timeout_ms: Option<u64>,
    /// Milliseconds a request body may go without sending bytes; 0 turns it off.
    body_read_timeout_ms: Option<u64>,
}

/// Everything `serve` needs, resolved and validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) data_dir: PathBuf,
    pub(crate) http_addr: SocketAddr,
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) log_level: String,
    pub(crate) log_format: LogFormat,
    pub(crate) runtime: RuntimeConfig,
    pub(crate) log_resources: LogResources,
    pub(crate) storage: StorageBackend,
    pub(crate) meta: MetaBackend,
}

/// Where events are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageBackend {
    /// The log in the data dir.
    Embedded,
    /// NATS JetStream.
    Nats {
        /// Comma-separated server URLs.
        urls: String,
        credentials: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        replicas: usize,
    },
}

impl StorageBackend {
    /// Where events are stored, fit for a log line or an error: user names and passwords in the
    /// URLs are shown as `***`.
    pub(crate) fn describe(&self) -> String {
        match self {
            StorageBackend::Embedded => "embedded".to_owned(),
            StorageBackend::Nats { urls, .. } => urls
                .split(',')
                .map(|url| redact_user_info(url.trim()))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn resolve(args: &ServeArgs, file: &FileStorage) -> anyhow::Result<StorageBackend> {
        let url = args
            .storage
            .clone()
            .or_else(|| file.url.clone())
            .unwrap_or_else(|| "embedded".to_owned());
        let url = url.trim();
        let credentials = args
            .nats_creds
            .clone()
            .or_else(|| file.nats_credentials.clone());
        let tls_ca = args
            .nats_tls_ca
            .clone()
            .or_else(|| file.nats_tls_ca.clone());
        if url == "embedded" {
            if credentials.is_some() || tls_ca.is_some() || file.nats_replicas.is_some() {
                bail!(
                    "NATS options (credentials, TLS CA, replicas) need NATS storage: set --storage nats://HOST:PORT"
                );
            }
            return Ok(StorageBackend::Embedded);
        }
        let nats_scheme = |part: &str| {
            let part = part.trim();
            ["nats://", "tls://"]
                .iter()
                .any(|scheme| part.len() > scheme.len() && part.starts_with(scheme))
        };
        if !url.split(',').all(nats_scheme) {
            bail!(
                "storage must be \"embedded\" or NATS server URLs such as nats://127.0.0.1:4222[,nats://HOST:PORT...]; got {url:?}"
            );
        }
        let replicas = file.nats_replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            bail!(
                "storage.nats_replicas must be between 1 and 5 (JetStream's limit); got {replicas}"
            );
        }
        Ok(StorageBackend::Nats {
            urls: url.to_owned(),
            credentials,
            tls_ca,
            replicas,
        })
    }
}

const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:10105";
const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:10205";

fn parse_ranges(ranges: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    ranges
        .iter()
        .map(|range| {
            range.parse::<ipnet::IpNet>().with_context(|| {
                format!("delivery.webhook_deny: {range:?} is not an address range such as \"169.254.0.0/16\"")
            })
        })
        .collect()
}

impl Settings {
    pub(crate) fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = RuntimeConfig::default();
        let default_topic = TopicSettings::default();
        let topic = TopicSettings {
            durability: args
                .fsync
                .or(file.storage.fsync)
                .unwrap_or(default_topic.durability),
            fsync_interval_ms: args
                .fsync_interval_ms
                .or(file.storage.fsync_interval_ms)
                .unwrap_or(default_topic.fsync_interval_ms),
            segment_bytes: file
                .storage
                .segment_bytes
                .unwrap_or(default_topic.segment_bytes),
            retention_ms: file
                .storage
                .retention_ms
                .unwrap_or(default_topic.retention_ms),
            retention_bytes: file
                .storage
                .retention_bytes
                .unwrap_or(default_topic.retention_bytes),
        };
        if let Err(message) = topic.validate() {
            bail!("invalid storage settings: {message}");
        }
        let mut runtime = RuntimeConfig {
            max_event_bytes: args
                .max_event_bytes
                .or(file.http.max_event_bytes)
                .unwrap_or(defaults.max_event_bytes),
            max_batch_bytes: file
                .http
                .max_batch_bytes
                .unwrap_or(defaults.max_batch_bytes),
            max_batch_events: file
                .http
                .max_batch_events
                .unwrap_or(defaults.max_batch_events),
            max_json_depth: file.http.max_json_depth.unwrap_or(defaults.max_json_depth),
            auto_create_topics: args
                .auto_create_topics
                .or(file.http.auto_create_topics)
                .unwrap_or(defaults.auto_create_topics),
            max_topics: file.topics.max_topics.unwrap_or(defaults.max_topics),
            default_topic: topic,
            retention_check_interval: defaults.retention_check_interval,
            webhook_deny: match &file.delivery.webhook_deny {
                None => defaults.webhook_deny,
                Some(ranges) => parse_ranges(ranges)?,
            },
            webhook_origin: file
                .delivery
                .webhook_origin
                .clone()
                .unwrap_or(defaults.webhook_origin),
            dedup_window: args
                .dedup_window_ms
                .or(file.dedup.window_ms)
                .map_or(defaults.dedup_window, Duration::from_millis),
            dedup_max_entries: file.dedup.max_entries.unwrap_or(defaults.dedup_max_entries),
            grpc_max_batches_in_flight: file
                .grpc
                .max_batches_in_flight
                .unwrap_or(defaults.grpc_max_batches_in_flight),
            http_connections: ConnectionLimits {
                max_connections: file
                    .http
                    .max_connections
                    .unwrap_or(defaults.http_connections.max_connections),
                header_read_timeout: timeout_setting(
                    file.http.header_read_timeout_ms,
                    defaults.http_connections.header_read_timeout,
                ),
                idle_timeout: timeout_setting(
                    file.http.idle_timeout_ms,
                    defaults.http_connections.idle_timeout,
                ),
                body_read_timeout: timeout_setting(
                    file.http.body_read_timeout_ms,
                    defaults.http_connections.body_read_timeout,
                ),
            },
            grpc_connections: ConnectionLimits {
                max_connections: file
                    .grpc
                    .max_connections
                    .unwrap_or(defaults.grpc_connections.max_connections),
                idle_timeout: timeout_setting(
                    file.grpc.idle_timeout_ms,
                    defaults.grpc_connections.idle_timeout,
                ),
                ..defaults.grpc_connections.clone()
            },
            shutdown_timeout: args
                .shutdown_timeout_ms
                .or(file.shutdown_timeout_ms)
                .map_or(defaults.shutdown_timeout, Duration::from_millis),
            webhook_tls: match &file.delivery.webhook_ca_file {
                None => None,
                Some(path) => Some(
                    WebhookTls::new(Some(path))
                        .context("delivery.webhook_ca_file is not usable")?,
                ),
            },
            cluster: defaults.cluster,
        };
        cluster::resolve_cluster(args, &file.cluster, &mut runtime)?;
        if runtime.max_event_bytes == 0 || runtime.max_batch_bytes < runtime.max_event_bytes {
            bail!(
                "http.max_event_bytes must be at least 1 and at most http.max_batch_bytes ({}); got {}",
                runtime.max_batch_bytes,
                runtime.max_event_bytes
            );
        }
        if runtime.grpc_max_batches_in_flight == 0 {
            bail!("grpc.max_batches_in_flight must be at least 1; got 0");
        }
        if runtime.http_connections.max_connections == 0 {
            bail!("http.max_connections must be at least 1; got 0");
        }
        if runtime.grpc_connections.max_connections == 0 {
            bail!("grpc.max_connections must be at least 1; got 0");
        }
        if runtime.max_batch_events == 0 {
            bail!("http.max_batch_events must be at least 1; got 0");
        }
        if runtime.max_json_depth == 0 {
            bail!("http.max_json_depth must be at least 1; got 0");
        }
        // 0 would remember nothing while the window says deduplication is on.
        if runtime.dedup_max_entries == 0 {
            bail!(
                "dedup.max_entries must be at least 1; got 0 (to turn deduplication off, set dedup.window_ms = 0)"
            );
        }
        if runtime.max_topics == 0 {
            bail!("topics.max_topics must be at least 1; got 0");
        }
        let log_resources = LogResources {
            writer_threads: file
                .topics
                .writer_threads
                .unwrap_or(trellis_log::DEFAULT_WRITER_THREADS),
            max_open_files: file
                .topics
                .max_open_files
                .unwrap_or(trellis_log::DEFAULT_MAX_OPEN_FILES),
        };
        if !(1..=64).contains(&log_resources.writer_threads) {
            bail!(
                "topics.writer_threads must be between 1 and 64; got {}",
                log_resources.writer_threads
            );
        }
        if log_resources.max_open_files < 16 {
            bail!(
                "topics.max_open_files must be at least 16; got {}",
                log_resources.max_open_files
            );
        }
        let http_addr = args
            .http_addr
            .clone()
            .or(file.http_addr)
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned());
        let grpc_addr = args
            .grpc_addr
            .clone()
            .or(file.grpc_addr)
            .unwrap_or_else(|| DEFAULT_GRPC_ADDR.to_owned());
        let storage = StorageBackend::resolve(args, &file.storage)?;
        let meta = MetaBackend::resolve(args, &file.meta, &storage)?;
        Ok(Settings {
            storage,
            meta,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./trellis-data")),
            http_addr: parse_addr("http_addr", &http_addr)?,
            grpc_addr: parse_addr("grpc_addr", &grpc_addr)?,
            log_level: args
                .log_level
                .clone()
                .or(file.log.level)
                .unwrap_or_else(|| "info".to_owned()),
            log_format: args
                .log_format
                .or(file.log.format)
                .unwrap_or(LogFormat::Pretty),
            runtime,
            log_resources,
        })
    }
}

/// `scheme://user:password@host` as `scheme://***@host`.
fn redact_user_info(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A timeout in milliseconds from the file, where 0 turns it off.
fn timeout_setting(ms: Option<u64>, default: Option<Duration>) -> Option<Duration> {
    match ms {
        None => default,
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    // toml's own message spans several lines (it draws the offending line); keep ours to one.
    toml::from_str(&text).map_err(|error| {
        let message = error.message().to_owned();
        match error.span().map(|span| line_of(&text, span.start)) {
            Some(line) => anyhow::anyhow!("config file {} line {line}: {message}", path.display()),
            None => anyhow::anyhow!("config file {}: {message}", path.display()),
        }
    })
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(byte)
        .filter(|byte| **byte == b'\n')
        .count()
        + 1
}

fn parse_addr(key: &str, text: &str) -> anyhow::Result<SocketAddr> {
    text.parse().with_context(|| {
        format!("{key} must be an IP address and port such as 127.0.0.1:10105; got {text:?}")
    })
}

#[cfg(test)]
mod tests;
