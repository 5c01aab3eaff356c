//! [`FileSink`]: appends one JSON CloudEvent per line to a file.
//!
//! Config keys:
//!
//! | key | required | default | meaning |
//! |---|---|---|---|
//! | `path` | yes | | the file to append to; created if missing |
//! | `fsync` | no | `interval` | `always`, `interval` or `never` |
//! | `fsync_interval_ms` | no | 1000 (1..=3600000) | with `interval`: how often written lines are fsynced |
//!
//! Each record becomes the event of [`to_cloud_event`] (source `/connectors/<name>`, type
//! `trellis.connector.record` unless the record says otherwise) in the JSON event format, one per
//! line. A batch is written with one `write`; each record's callback reports success only once its
//! line is written, and under `always` only once it is fsynced too. Under `interval` a background
//! task fsyncs lines written since the last fsync every interval (a write also fsyncs at once when
//! the last fsync is older than the interval), and `stop` fsyncs what is left; under `never` the
//! system decides (and a crash of the machine may lose lines already reported). A record that
//! cannot become an event fails as [`SendError::Rejected`]; an I/O error fails every record of its
//! batch as [`SendError::Delivery`] (some of their lines may be in the file: delivery is at least
//! once) and the next batch opens the file again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;
use trellis_connect::cloudevents::{EventDefaults, to_cloud_event};
use trellis_connect::{
    ConfigError, ConfigKey, ConnectRecord, ConnectorConfig, ConnectorError, SendError, Sink,
    SinkContext,
};

/// The default of `fsync_interval_ms`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;
const FSYNC_INTERVAL_LIMIT_MS: u64 = 3_600_000;
/// The event type of a record that has no `type` extension.
pub const DEFAULT_EVENT_TYPE: &str = "trellis.connector.record";

/// When written lines are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch, before its records succeed.
    Always,
    /// Within about this long after a write, by a background task.
    Interval(Duration),
    /// Never by the sink.
    Never,
}

/// Appends events to one file. See the module docs for its config and behaviour.
#[derive(Debug, Default)]
pub struct FileSink {
    settings: Option<Settings>,
    file: Option<File>,
    last_sync: Option<Instant>,
    /// Whether lines were written since the last fsync; shared with the syncer task.
    unsynced: Arc<AtomicBool>,
    syncer: Option<Syncer>,
}

/// The task that fsyncs an idle file under `interval`; stopped when dropped.
#[derive(Debug)]
struct Syncer(tokio::task::JoinHandle<()>);

impl Drop for Syncer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Syncer {
    fn spawn(path: String, interval: Duration, unsynced: Arc<AtomicBool>) -> Syncer {
        Syncer(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if !unsynced.swap(false, Ordering::AcqRel) {
                    continue;
                }
                // An fsync through any handle of the file flushes all its written data.
                let synced = match OpenOptions::new().append(true).open(&path).await {
                    Ok(file) => file.sync_data().await,
                    Err(error) => Err(error),
                };
                if let Err(error) = synced {
                    tracing::warn!(path, %error, "fsync of the file failed, trying again");
                    unsynced.store(true, Ordering::Release);
                }
            }
        }))
    }
}

#[derive(Debug)]
struct Settings {
    path: String,
    fsync: FsyncPolicy,
    defaults: EventDefaults,
}

impl FileSink {
    pub fn new() -> FileSink {
        FileSink::default()
    }

    /// The policy in force, once started.
    pub fn fsync_policy(&self) -> Option<FsyncPolicy> {
        self.settings.as_ref().map(|settings| settings.fsync)
    }

    async fn open(path: &str) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
    }

    /// Writes `bytes` and fsyncs as the policy says.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(settings) = self.settings.as_ref() else {
            return Err(std::io::Error::other("the file sink was used before start"));
        };
        let fsync = settings.fsync;
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => self.file.insert(Self::open(&settings.path).await?),
        };
        file.write_all(bytes).await?;
        file.flush().await?;
        self.unsynced.store(true, Ordering::Release);
        let due = match fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(interval) => self
                .last_sync
                .is_none_or(|last_sync| last_sync.elapsed() >= interval),
            FsyncPolicy::Never => false,
        };
        if due {
            self.sync().await?;
        }
        Ok(())
    }

    async fn sync(&mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.as_mut()
            && self.unsynced.swap(false, Ordering::AcqRel)
        {
            if let Err(error) = file.sync_data().await {
                self.unsynced.store(true, Ordering::Release);
                return Err(error);
            }
            self.last_sync = Some(Instant::now());
        }
        Ok(())
    }
}

/// The keys this connector takes besides the common ones.
pub const CONFIG_KEYS: [ConfigKey; 3] = [
    ConfigKey::required("path", "The file to append to; created if missing."),
    ConfigKey::optional("fsync", Some("interval"), "always, interval or never."),
    ConfigKey::optional(
        "fsync_interval_ms",
        Some("1000"),
        "With fsync interval: how often written lines are fsynced (1 to 3600000).",
    ),
];

/// Checks this connector's own keys without opening the file.
pub fn check_config(config: &ConnectorConfig) -> Result<(), ConfigError> {
    path(config)?;
    fsync_policy(config).map(drop)
}

fn path(config: &ConnectorConfig) -> Result<String, ConfigError> {
    let path = config.get_str("path")?;
    if path.is_empty() {
        return Err(ConfigError::new("path", "a file path").found("an empty string"));
    }
    Ok(path.to_owned())
}

fn fsync_policy(config: &ConnectorConfig) -> Result<FsyncPolicy, ConfigError> {
    let interval_ms = config.get_u64_in(
        "fsync_interval_ms",
        1,
        FSYNC_INTERVAL_LIMIT_MS,
        DEFAULT_FSYNC_INTERVAL_MS,
    )?;
    match config.get_opt_str("fsync")? {
        None | Some("interval") => Ok(FsyncPolicy::Interval(Duration::from_millis(interval_ms))),
        Some("always") => Ok(FsyncPolicy::Always),
        Some("never") => Ok(FsyncPolicy::Never),
        Some(other) => Err(
            ConfigError::new("fsync", "one of `always`, `interval`, `never`")
                .found(format!("`{other}`")),
        ),
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn start(&mut self, context: SinkContext) -> Result<(), ConnectorError> {
        let path = path(&context.config)?;
        let fsync = fsync_policy(&context.config)?;
        // Open now, so a path that cannot be written fails the start, not every record.
        self.file = Some(Self::open(&path).await?);
        self.syncer = match fsync {
            FsyncPolicy::Interval(interval) => {
                Some(Syncer::spawn(path.clone(), interval, self.unsynced.clone()))
            }
            FsyncPolicy::Always | FsyncPolicy::Never => None,
        };
        self.settings = Some(Settings {
            path,
            fsync,
            defaults: EventDefaults {
                source: format!("/connectors/{}", context.name),
                ty: DEFAULT_EVENT_TYPE.to_owned(),
            },
        });
        self.last_sync = Some(Instant::now());
        self.unsynced.store(false, Ordering::Release);
        Ok(())
    }

    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
        let Some(settings) = self.settings.as_ref() else {
            for record in records {
                record.fail(None, SendError::Cancelled);
            }
            return Err(ConnectorError::failed(
                "the file sink was used before start",
            ));
        };
        let mut bytes = Vec::new();
        let mut written = Vec::with_capacity(records.len());
        for record in records {
            match to_cloud_event(&record, &settings.defaults) {
                Ok(event) => {
                    bytes.extend_from_slice(&event.to_structured_json());
                    bytes.push(b'\n');
                    written.push(record);
                }
                Err(error) => record.fail(None, SendError::Rejected(error.to_string())),
            }
        }
        if written.is_empty() {
            return Ok(());
        }
        match self.write(&bytes).await {
            Ok(()) => {
                for record in written {
                    record.succeed(None);
                }
            }
            Err(error) => {
                let path = self
                    .settings
                    .as_ref()
                    .map(|s| s.path.as_str())
                    .unwrap_or("");
                tracing::warn!(path, %error, records = written.len(), "writing to the file failed");
                // Reopen on the next batch: the handle may be in any state now.
                self.file = None;
                let cause = format!("writing to the file failed: {error}");
                for record in written {
                    record.fail(None, SendError::Delivery(cause.clone()));
                }
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        let never = self.fsync_policy() == Some(FsyncPolicy::Never);
        self.syncer = None;
        if !never {
            self.sync().await?;
        }
        self.file = None;
        Ok(())
    }
}
