//! The plugin catalog: every built-in connector class, its kind, what it does and the keys it
//! takes; making a connector by class; and checking a config without side effects (nothing is
//! bound, opened or contacted), so an API can refuse a bad config before storing it.
//!
//! A connector's accepted keys are the common ones ([`common_config_keys`]), those of its kind
//! ([`source_config_keys`] or [`sink_config_keys`]) and its plugin's own ([`Plugin::keys`]); any
//! other key is refused, naming it and listing the accepted ones.
//!
//! `http-sink` runs on the delivery engine inside the runtime, which builds it and checks its
//! `sink` and `delivery` objects itself; this crate only lists it and checks its other keys.

use serde::Serialize;
use trellis_connect::config::check_known_keys;
use trellis_connect::worker::{common_config_keys, sink_config_keys, source_config_keys};
use trellis_connect::{ConfigError, ConfigKey, ConnectorConfig, Sink, Source, WorkerSettings};

use crate::{file_sink, file_source, http_source, topic_sink, topic_source};

/// Whether a connector brings data into Trellis or takes it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Reads another system and publishes into its `topic`.
    Source,
    /// Reads its `topic` and writes into another system.
    Sink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Sink => "sink",
        }
    }
}

/// One connector class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plugin {
    pub class: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    /// The plugin's own keys, besides the common ones and those of its kind.
    pub keys: &'static [ConfigKey],
}

impl Plugin {
    /// Every key the plugin takes: the common ones, its kind's, then its own.
    pub fn config_keys(&self) -> Vec<&'static ConfigKey> {
        let kind = match self.kind {
            Kind::Source => source_config_keys(),
            Kind::Sink => sink_config_keys(),
        };
        common_config_keys()
            .iter()
            .chain(kind)
            .chain(self.keys)
            .collect()
    }
}

/// The class of the HTTP sink, which the runtime builds on its delivery engine.
pub const HTTP_SINK: &str = "http-sink";

const HTTP_SINK_KEYS: [ConfigKey; 2] = [
    ConfigKey::required(
        "sink",
        "Where to deliver: an object with exactly the shape of a subscription's sink.",
    ),
    ConfigKey::optional(
        "delivery",
        None,
        "How to deliver: an object with exactly the shape of a subscription's delivery.",
    ),
];

const PLUGINS: [Plugin; 6] = [
    Plugin {
        class: "file-source",
        kind: Kind::Source,
        description: "Tails a file line by line; resumes after the last committed line and \
                      follows rotation and truncation.",
        keys: &file_source::CONFIG_KEYS,
    },
    Plugin {
        class: "file-sink",
        kind: Kind::Sink,
        description: "Appends one JSON CloudEvent per line to a file, with an fsync policy.",
        keys: &file_sink::CONFIG_KEYS,
    },
    Plugin {
        class: "http-source",
        kind: Kind::Source,
        description: "A webhook receiver (JSON, CloudEvents, GitHub) that answers 200 only once \
                      each record is durably published.",
        keys: &http_source::CONFIG_KEYS,
    },
    Plugin {
        class: HTTP_SINK,
        kind: Kind::Sink,
        description: "Delivers events over HTTP on the delivery engine, like a webhook \
                      subscription.",
        keys: &HTTP_SINK_KEYS,
    },
    Plugin {
        class: "topic-source",
        kind: Kind::Source,
        description: "Reads a topic of another Trellis over HTTP, keeping event ids.",
        keys: &topic_source::CONFIG_KEYS,
    },
    Plugin {
        class: "topic-sink",
        kind: Kind::Sink,
        description: "Publishes into a topic of another Trellis over HTTP, keeping event ids.",
        keys: &topic_sink::CONFIG_KEYS,
    },
];

/// Every built-in plugin.
pub fn plugins() -> &'static [Plugin] {
    &PLUGINS
}

/// The plugin of `class`, if there is one.
pub fn plugin(class: &str) -> Option<&'static Plugin> {
    PLUGINS.iter().find(|plugin| plugin.class == class)
}

/// A new, unstarted source of `class`; `None` for a sink class or an unknown one.
pub fn new_source(class: &str) -> Option<Box<dyn Source>> {
    match class {
        "file-source" => Some(Box::new(file_source::FileSource::new())),
        "http-source" => Some(Box::new(http_source::HttpSource::new())),
        "topic-source" => Some(Box::new(topic_source::TopicSource::new())),
        _ => None,
    }
}

/// A new, unstarted sink of `class`; `None` for a source class, an unknown one, and
/// `http-sink` (the runtime builds it).
pub fn new_sink(class: &str) -> Option<Box<dyn Sink>> {
    match class {
        "file-sink" => Some(Box::new(file_sink::FileSink::new())),
        "topic-sink" => Some(Box::new(topic_sink::TopicSink::new())),
        _ => None,
    }
}

/// Checks a config for `class` without side effects: the class, the common keys, the plugin's
/// own keys, and no key that the plugin does not take. The error names the key.
pub fn check_config(class: &str, config: &ConnectorConfig) -> Result<(), ConfigError> {
    let Some(plugin) = plugin(class) else {
        return Err(unknown_class());
    };
    if let Some(named) = config.get_opt_str("connector.class")?
        && named != class
    {
        return Err(
            ConfigError::new("connector.class", format!("`{class}`")).found(format!("`{named}`"))
        );
    }
    WorkerSettings::from_config(config)?;
    check_known_keys(config, plugin.config_keys())?;
    match class {
        "file-source" => file_source::check_config(config),
        "file-sink" => file_sink::check_config(config),
        "http-source" => http_source::check_config(config),
        "topic-source" => topic_source::check_config(config),
        "topic-sink" => topic_sink::check_config(config),
        // The runtime checks `sink` and `delivery` against its delivery types.
        _ => Ok(()),
    }
}

/// Checks a config by its own `connector.class`.
pub fn check(config: &ConnectorConfig) -> Result<&'static Plugin, ConfigError> {
    let class = config.get_str("connector.class")?;
    let plugin = plugin(class).ok_or_else(unknown_class)?;
    check_config(class, config)?;
    Ok(plugin)
}

fn unknown_class() -> ConfigError {
    let classes: Vec<&str> = PLUGINS.iter().map(|plugin| plugin.class).collect();
    ConfigError::new("connector.class", format!("one of {}", classes.join(", ")))
        .found("an unknown class")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(value: serde_json::Value) -> ConnectorConfig {
        ConnectorConfig::from_value(value).expect("an object")
    }

    #[test]
    fn the_catalog_holds_the_six_classes_each_makeable_but_the_http_sink() {
        let classes: Vec<&str> = plugins().iter().map(|p| p.class).collect();
        assert_eq!(
            classes,
            [
                "file-source",
                "file-sink",
                "http-source",
                "http-sink",
                "topic-source",
                "topic-sink"
            ]
        );
        for plugin in plugins() {
            let made = match plugin.kind {
                Kind::Source => new_source(plugin.class).is_some(),
                Kind::Sink => new_sink(plugin.class).is_some(),
            };
            assert_eq!(made, plugin.class != HTTP_SINK, "{}", plugin.class);
            let keys: Vec<&str> = plugin.config_keys().iter().map(|k| k.name).collect();
            assert!(keys.starts_with(&["connector.class", "topic"]), "{keys:?}");
        }
        assert!(new_source("file-sink").is_none());
        assert!(new_sink("nope").is_none());
        let http_sink = plugin(HTTP_SINK).expect("listed");
        let keys: Vec<&str> = http_sink.config_keys().iter().map(|k| k.name).collect();
        for key in ["sink", "delivery", "dead_letter_topic", "start"] {
            assert!(keys.contains(&key), "{keys:?}");
        }
        let secret: Vec<&str> = plugin("http-source")
            .expect("listed")
            .keys
            .iter()
            .filter(|k| k.secret)
            .map(|k| k.name)
            .collect();
        assert_eq!(secret, ["secret"]);
    }

    #[test]
    fn a_valid_config_passes_without_touching_anything() {
        let ok = [
            json!({"connector.class": "file-source", "topic": "t", "path": "/nonexistent/dir/app.log"}),
            json!({"connector.class": "file-sink", "topic": "t", "path": "/nonexistent/out", "fsync": "always", "start": "latest"}),
            // A port in use elsewhere would fail a bind: nothing is bound.
            json!({"connector.class": "http-source", "topic": "t", "listen": "127.0.0.1:1", "format": "github", "secret": "s"}),
            json!({"connector.class": "topic-source", "topic": "t", "url": "http://127.0.0.1:1", "remote_topic": "far"}),
            json!({"connector.class": "topic-sink", "topic": "t", "url": "http://127.0.0.1:1", "errors.tolerance": "all"}),
            json!({"connector.class": "http-sink", "topic": "t", "sink": {"url": "http://example.com"}, "delivery": {}}),
        ];
        for value in ok {
            let config = config(value);
            let class = config.get_str("connector.class").expect("class").to_owned();
            check_config(&class, &config).unwrap_or_else(|e| panic!("{class}: {e}"));
            assert_eq!(check(&config).map(|p| p.class), Ok(class.as_str()));
        }
    }

    #[test]
    fn each_error_names_its_key() {
        let cases = [
            (
                json!({"connector.class": "ftp-source", "topic": "t"}),
                "connector.class",
            ),
            (json!({"topic": "t", "path": "/x"}), "connector.class"),
            (
                json!({"connector.class": "file-source", "path": "/x"}),
                "topic",
            ),
            (
                json!({"connector.class": "file-source", "topic": "t"}),
                "path",
            ),
            (
                json!({"connector.class": "file-source", "topic": "t", "path": "/x", "max_batch": 0}),
                "max_batch",
            ),
            (
                json!({"connector.class": "file-sink", "topic": "t", "path": "/x", "fsync": "sometimes"}),
                "fsync",
            ),
            (
                json!({"connector.class": "http-source", "topic": "t", "listen": "nowhere"}),
                "listen",
            ),
            (
                json!({"connector.class": "http-source", "topic": "t", "listen": "127.0.0.1:0", "format": "github"}),
                "secret",
            ),
            (
                json!({"connector.class": "topic-sink", "topic": "t", "url": "ftp://x"}),
                "url",
            ),
            (
                json!({"connector.class": "topic-source", "topic": "t", "url": "http://x", "start": "now"}),
                "start",
            ),
            (
                json!({"connector.class": "file-source", "topic": "t", "path": "/x", "errors.tolerance": "most"}),
                "errors.tolerance",
            ),
            // A sink's key on a source, and a source's key on a sink, are unknown there.
            (
                json!({"connector.class": "file-source", "topic": "t", "path": "/x", "dead_letter_topic": "d"}),
                "dead_letter_topic",
            ),
            (
                json!({"connector.class": "file-sink", "topic": "t", "path": "/x", "event.type": "e"}),
                "event.type",
            ),
            (
                json!({"connector.class": "http-sink", "topic": "t", "sink": {}, "url": "http://x"}),
                "url",
            ),
        ];
        for (value, key) in cases {
            let config = config(value.clone());
            let error = check(&config).expect_err(&value.to_string());
            assert_eq!(error.key, key, "{value}: {error}");
        }
    }

    #[test]
    fn an_unknown_key_lists_the_accepted_ones() {
        let config = config(
            json!({"connector.class": "file-source", "topic": "t", "path": "/x", "paht": "/y"}),
        );
        let error = check_config("file-source", &config).expect_err("a typo");
        assert_eq!(error.key, "paht");
        let message = error.to_string();
        for key in [
            "connector.class",
            "topic",
            "errors.tolerance",
            "event.source",
            "path",
            "max_line_bytes",
        ] {
            assert!(message.contains(key), "{message}");
        }
        let error = check_config("file-sink", &config).expect_err("another class named");
        assert_eq!(error.key, "connector.class");
    }
}
