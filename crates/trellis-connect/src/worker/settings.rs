//! The settings every connector shares (the common keys of its config), parsed once for the
//! worker and for validation, and listed for the plugin catalog.

use std::time::Duration;

use crate::cloudevents::EventDefaults;
use crate::config::{ConfigError, ConfigKey, ConnectorConfig};
use crate::offsets::DEFAULT_FLUSH_TIMEOUT;

/// The default of `offsets.commit.interval.ms`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(10);
/// The default of `errors.retry.timeout.ms`: five minutes.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(300);
/// The default bound on records polled and not yet ended.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// The first wait between retries is drawn from zero to this.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between retries.
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The longest retry budget and commit interval accepted: a day.
const MAX_MS: u64 = 86_400_000;

/// Keys every connector takes.
const COMMON_KEYS: [ConfigKey; 5] = [
    ConfigKey::required(
        "connector.class",
        "The plugin: file-source, file-sink, http-source, http-sink, topic-source or topic-sink.",
    ),
    ConfigKey::required(
        "topic",
        "The topic a source publishes into, or a sink reads.",
    ),
    ConfigKey::optional(
        "errors.tolerance",
        Some("none"),
        "none: a record that fails for good stops the connector (FAILED, offsets committed up \
         to it); all: it is dead-lettered (sinks) or skipped with a warning (sources).",
    ),
    ConfigKey::optional(
        "errors.retry.timeout.ms",
        Some("300000"),
        "How long a record that failed in a way that may pass is retried, with backoff, before \
         it counts as failed for good; 0: never retried.",
    ),
    ConfigKey::optional(
        "offsets.commit.interval.ms",
        Some("10000"),
        "How often offsets are committed (and always on stop). A sink connector inside trellis serve commits every 500 ms unless this is set, as a subscription does.",
    ),
];

/// Keys only sources take.
const SOURCE_KEYS: [ConfigKey; 2] = [
    ConfigKey::optional(
        "event.source",
        None,
        "The CloudEvents source of records that do not set one; default /connectors/<name>.",
    ),
    ConfigKey::optional(
        "event.type",
        None,
        "The CloudEvents type of records that do not set one; default trellis.connector.<class>.",
    ),
];

/// Keys only sinks take.
const SINK_KEYS: [ConfigKey; 2] = [
    ConfigKey::optional(
        "dead_letter_topic",
        None,
        "Where records that fail for good go under errors.tolerance all; default <name>.dlq.",
    ),
    ConfigKey::optional(
        "start",
        Some("earliest"),
        "Where a new sink starts reading its topic: earliest or latest.",
    ),
];

/// The keys every connector takes, for the plugin catalog.
pub fn common_config_keys() -> &'static [ConfigKey] {
    &COMMON_KEYS
}

/// The keys only source connectors take (besides the common ones).
pub fn source_config_keys() -> &'static [ConfigKey] {
    &SOURCE_KEYS
}

/// The keys only sink connectors take (besides the common ones).
pub fn sink_config_keys() -> &'static [ConfigKey] {
    &SINK_KEYS
}

/// What happens to a record that failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tolerance {
    /// The worker stops in `Failed`, with the record uncommitted.
    #[default]
    None,
    /// The record is dead-lettered (when the worker has a dead-letter destination) or skipped
    /// with a warning, and the worker goes on.
    All,
}

/// The error policy: `errors.tolerance` and `errors.retry.timeout.ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    pub tolerance: Tolerance,
    /// How long a record that failed in a way that may pass is retried, from its first
    /// failure; zero: never.
    pub retry_timeout: Duration,
}

impl Default for ErrorPolicy {
    fn default() -> ErrorPolicy {
        ErrorPolicy {
            tolerance: Tolerance::None,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// How often acknowledged offsets are committed; they are always committed on stop.
    pub commit_interval: Duration,
    /// How long an offset flush may take before it is cancelled (and retried next interval),
    /// and how long a stop waits for records in flight.
    pub flush_timeout: Duration,
    pub errors: ErrorPolicy,
    /// Records polled and not yet ended: the worker does not poll beyond it.
    pub max_in_flight: usize,
    /// The waits between retries: full jitter under a ceiling that starts at `retry_backoff`
    /// and doubles up to `retry_backoff_max`. Not config keys: the defaults (100 ms, 5 s) suit
    /// every target; tests shorten them.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

impl Default for WorkerSettings {
    fn default() -> WorkerSettings {
        WorkerSettings {
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            errors: ErrorPolicy::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            retry_backoff_max: DEFAULT_RETRY_BACKOFF_MAX,
        }
    }
}

impl WorkerSettings {
    /// The settings from the common keys of `config`, each checked: `connector.class` and
    /// `topic` present, the error policy, the commit interval, and the types of the source-
    /// and sink-only keys (whether they apply is the plugin catalog's check).
    pub fn from_config(config: &ConnectorConfig) -> Result<WorkerSettings, ConfigError> {
        let class = config.get_str("connector.class")?;
        if class.is_empty() {
            return Err(ConfigError::new("connector.class", "a plugin class").found("nothing"));
        }
        topic(config)?;
        let tolerance = match config.get_opt_str("errors.tolerance")? {
            None | Some("none") => Tolerance::None,
            Some("all") => Tolerance::All,
            Some(_) => {
                return Err(
                    ConfigError::new("errors.tolerance", "`none` or `all`").found("another string")
                );
            }
        };
        let retry_ms = config.get_u64_in(
            "errors.retry.timeout.ms",
            0,
            MAX_MS,
            millis(DEFAULT_RETRY_TIMEOUT),
        )?;
        let commit_ms = config.get_u64_in(
            "offsets.commit.interval.ms",
            1,
            MAX_MS,
            millis(DEFAULT_COMMIT_INTERVAL),
        )?;
        for key in ["event.source", "event.type", "dead_letter_topic"] {
            if config.get_opt_str(key)? == Some("") {
                return Err(ConfigError::new(key, "a non-empty string").found("an empty string"));
            }
        }
        start(config)?;
        Ok(WorkerSettings {
            commit_interval: Duration::from_millis(commit_ms),
            errors: ErrorPolicy {
                tolerance,
                retry_timeout: Duration::from_millis(retry_ms),
            },
            ..WorkerSettings::default()
        })
    }
}

/// The `topic` key: non-empty and safe in a URL path (the runtime judges the rest of the
/// name).
pub fn topic(config: &ConnectorConfig) -> Result<&str, ConfigError> {
    let topic = config.get_str("topic")?;
    if topic.is_empty() || topic.contains(['/', '?', '#', '%', ' ']) {
        return Err(ConfigError::new("topic", "a topic name").found("an invalid name"));
    }
    Ok(topic)
}

/// The CloudEvents `source` and `type` a source connector's records get when they do not set
/// their own: `event.source` (default `/connectors/<name>`) and `event.type` (default
/// `trellis.connector.<class>`).
pub fn event_defaults(name: &str, config: &ConnectorConfig) -> Result<EventDefaults, ConfigError> {
    let class = config.get_opt_str("connector.class")?.unwrap_or("source");
    Ok(EventDefaults {
        source: config
            .get_opt_str("event.source")?
            .map_or_else(|| format!("/connectors/{name}"), str::to_owned),
        ty: config
            .get_opt_str("event.type")?
            .map_or_else(|| format!("trellis.connector.{class}"), str::to_owned),
    })
}

/// Where a sink without a committed offset starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// At the oldest event the topic holds.
    #[default]
    Earliest,
    /// At the topic's end: only events published from now on.
    Latest,
}

/// The `start` key of a sink.
pub fn start(config: &ConnectorConfig) -> Result<Start, ConfigError> {
    match config.get_opt_str("start")? {
        None | Some("earliest") => Ok(Start::Earliest),
        Some("latest") => Ok(Start::Latest),
        Some(_) => Err(ConfigError::new("start", "`earliest` or `latest`").found("another string")),
    }
}

/// The `dead_letter_topic` of a sink: default `<name>.dlq`.
pub fn dead_letter_topic(name: &str, config: &ConnectorConfig) -> Result<String, ConfigError> {
    Ok(config
        .get_opt_str("dead_letter_topic")?
        .map_or_else(|| format!("{name}.dlq"), str::to_owned))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(extra: serde_json::Value) -> ConnectorConfig {
        let mut base = json!({"connector.class": "file-source", "topic": "lines"});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        ConnectorConfig::from_value(base).expect("an object")
    }

    #[test]
    fn defaults_follow_the_contract() {
        let settings = WorkerSettings::from_config(&config(json!({}))).expect("valid");
        assert_eq!(settings, WorkerSettings::default());
        assert_eq!(settings.commit_interval, Duration::from_secs(10));
        assert_eq!(settings.errors.retry_timeout, Duration::from_secs(300));
        assert_eq!(settings.errors.tolerance, Tolerance::None);
    }

    #[test]
    fn the_common_keys_are_read() {
        let settings = WorkerSettings::from_config(&config(json!({
            "errors.tolerance": "all",
            "errors.retry.timeout.ms": 0,
            "offsets.commit.interval.ms": 250,
        })))
        .expect("valid");
        assert_eq!(settings.errors.tolerance, Tolerance::All);
        assert_eq!(settings.errors.retry_timeout, Duration::ZERO);
        assert_eq!(settings.commit_interval, Duration::from_millis(250));
    }

    #[test]
    fn each_bad_key_is_named() {
        let cases = [
            (json!({"errors.tolerance": "some"}), "errors.tolerance"),
            (
                json!({"errors.retry.timeout.ms": -1}),
                "errors.retry.timeout.ms",
            ),
            (
                json!({"offsets.commit.interval.ms": 0}),
                "offsets.commit.interval.ms",
            ),
            (json!({"start": "middle"}), "start"),
            (json!({"event.type": 3}), "event.type"),
            (json!({"topic": "a/b"}), "topic"),
            (json!({"connector.class": null}), "connector.class"),
        ];
        for (extra, key) in cases {
            let error = WorkerSettings::from_config(&config(extra)).expect_err(key);
            assert_eq!(error.key, key, "{error}");
        }
        let error = WorkerSettings::from_config(&ConnectorConfig::new().with("topic", "t"))
            .expect_err("no class");
        assert_eq!(error.key, "connector.class");
    }

    #[test]
    fn event_defaults_derive_from_name_and_class() {
        let defaults = event_defaults("orders", &config(json!({}))).expect("valid");
        assert_eq!(defaults.source, "/connectors/orders");
        assert_eq!(defaults.ty, "trellis.connector.file-source");
        let defaults = event_defaults(
            "orders",
            &config(json!({"event.source": "/erp", "event.type": "com.example.order"})),
        )
        .expect("valid");
        assert_eq!(defaults.source, "/erp");
        assert_eq!(defaults.ty, "com.example.order");
        assert_eq!(
            dead_letter_topic("orders", &config(json!({}))).expect("valid"),
            "orders.dlq"
        );
    }
}
