//! A connector as users write it (`{"name", "config"}`), as it is stored (the same with the
//! `paused` flag, secrets in clear) and as the API shows it (secrets redacted).

use serde_json::{Map, Value};
use trellis_connect::worker::settings;
use trellis_connect::{ConfigError, ConnectorConfig};
use trellis_connectors::plugins::{self, Kind, Plugin};
use trellis_delivery::config::{DeliverySpec, SinkSpec};

use crate::error::ApiError;

/// The key that names the plugin.
pub(crate) const CLASS_KEY: &str = "connector.class";

#[derive(Clone)]
pub(crate) struct ConnectorSpec {
    pub(crate) name: String,
    pub(crate) config: ConnectorConfig,
    pub(crate) paused: bool,
    /// Why the connector stopped itself (a record that failed for good under
    /// `errors.tolerance: none`, or a failed start): it is paused until a resume or restart.
    pub(crate) failed: Option<String>,
    /// Counts restarts asked for through the API, so a restart through any replica reaches the
    /// one that runs the connector (the stored spec changes, and every replica follows it).
    pub(crate) restarts: u64,
    pub(crate) plugin: &'static Plugin,
    /// The delivery engine's settings, for the `http-sink` plugin.
    pub(crate) http: Option<HttpSinkSpec>,
}

#[derive(Clone)]
pub(crate) struct HttpSinkSpec {
    pub(crate) sink: SinkSpec,
    pub(crate) delivery: DeliverySpec,
}

impl ConnectorSpec {
    /// `POST /v1/connectors`: `{"name", "config"}`.
    pub(crate) fn from_request(body: &Value) -> Result<ConnectorSpec, ApiError> {
        let object = body.as_object().ok_or_else(|| {
            ApiError::bad_request(
                "invalid_connector",
                "the body must be a JSON object: {\"name\": ..., \"config\": {...}}",
            )
        })?;
        if let Some(key) = object
            .keys()
            .find(|key| !["name", "config"].contains(&key.as_str()))
        {
            return Err(ApiError::bad_request(
                "invalid_connector",
                format!("unknown field {key:?}; a connector has only \"name\" and \"config\""),
            )
            .with_field(key.clone()));
        }
        let name = match object.get("name") {
            Some(Value::String(name)) => name.clone(),
            Some(_) => return Err(invalid_name("must be a string")),
            None => return Err(invalid_name("is required")),
        };
        let config = object.get("config").cloned().unwrap_or(Value::Null);
        ConnectorSpec::new(name, config, false)
    }

    /// `PUT /v1/connectors/{name}/config`: the config object alone.
    pub(crate) fn new(
        name: String,
        config: Value,
        paused: bool,
    ) -> Result<ConnectorSpec, ApiError> {
        check_name(&name)?;
        let config = ConnectorConfig::from_value(config).map_err(|error| {
            ApiError::bad_request(
                "invalid_connector",
                "config must be a JSON object of settings, such as {\"connector.class\": \"file-source\", ...}",
            )
            .with_field(format!("config{}", suffix(&error.key)))
        })?;
        let class = match config.get(CLASS_KEY) {
            Some(Value::String(class)) => class.clone(),
            _ => {
                return Err(unknown_plugin(format!(
                    "config.{CLASS_KEY} is required and names a plugin: one of {}",
                    classes()
                )));
            }
        };
        let plugin = plugins::plugin(&class).ok_or_else(|| {
            unknown_plugin(format!(
                "no connector plugin {class:?}; the plugins are {}",
                classes()
            ))
        })?;
        plugins::check_config(plugin.class, &config).map_err(invalid)?;
        check_topics(&name, plugin, &config)?;
        let http = if plugin.class == plugins::HTTP_SINK {
            Some(http_sink_spec(&config)?)
        } else {
            None
        };
        Ok(ConnectorSpec {
            name,
            config,
            paused,
            failed: None,
            restarts: 0,
            plugin,
            http,
        })
    }

    pub(crate) fn from_stored(value: &Value) -> Result<ConnectorSpec, String> {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or("no name")?
            .to_owned();
        let paused = value
            .get("paused")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let config = value.get("config").cloned().unwrap_or(Value::Null);
        let mut spec = ConnectorSpec::new(name, config, paused).map_err(|error| error.message)?;
        spec.restarts = value.get("restarts").and_then(Value::as_u64).unwrap_or(0);
        spec.failed = value
            .get("failed")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(spec)
    }

    pub(crate) fn to_stored(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "config": self.config,
            "paused": self.paused,
            "failed": self.failed,
            "restarts": self.restarts,
        })
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.plugin.kind.as_str()
    }

    /// The topic a source publishes into or a sink reads; `check_config` made sure it is there.
    pub(crate) fn topic(&self) -> &str {
        self.config
            .get("topic")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The config as the API shows it: secrets redacted, and an HTTP sink's `sink` as the
    /// delivery engine shows it (every header value and query value redacted, too).
    pub(crate) fn redacted_config(&self) -> Value {
        let mut config = serde_json::to_value(self.config.redacted()).unwrap_or(Value::Null);
        if let (Some(http), Value::Object(object)) = (&self.http, &mut config) {
            object.insert(
                "sink".to_owned(),
                serde_json::to_value(&http.sink).unwrap_or(Value::Null),
            );
        }
        config
    }

    /// `{"name","type","config"}`.
    pub(crate) fn info(&self) -> Value {
        let mut object = Map::new();
        object.insert("name".to_owned(), Value::from(self.name.as_str()));
        object.insert("type".to_owned(), Value::from(self.kind()));
        object.insert("config".to_owned(), self.redacted_config());
        Value::Object(object)
    }
}

/// The topic, and a sink's dead-letter topic, must be valid topic names, and apart: dead
/// letters written to the topic read would come back for ever.
fn check_topics(name: &str, plugin: &Plugin, config: &ConnectorConfig) -> Result<(), ApiError> {
    let topic = settings::topic(config).map_err(invalid)?;
    check_topic_name("topic", topic)?;
    if plugin.kind == Kind::Sink {
        let dead_letters = settings::dead_letter_topic(name, config).map_err(invalid)?;
        check_topic_name("dead_letter_topic", &dead_letters)?;
        if dead_letters == topic {
            return Err(invalid(
                ConfigError::new("dead_letter_topic", "another topic than `topic`")
                    .found("the same topic: dead letters would be delivered again"),
            ));
        }
    }
    Ok(())
}

fn check_topic_name(key: &str, name: &str) -> Result<(), ApiError> {
    topic_name_rules(name).map_err(|reason| {
        ApiError::bad_request("invalid_connector", format!("config key `{key}`: {reason}"))
            .with_field(format!("config.{key}"))
    })
}

/// What the topic-name rules say of `name`, which topics, connectors and their dead-letter
/// topics all follow.
fn topic_name_rules(name: &str) -> Result<(), String> {
    trellis_storage::validate_topic_name(name).map_err(|error| match error {
        trellis_storage::StorageError::InvalidTopicName { reason, .. } => reason.to_owned(),
        other => other.to_string(),
    })
}

fn http_sink_spec(config: &ConnectorConfig) -> Result<HttpSinkSpec, ApiError> {
    let sink = match config.get("sink") {
        Some(sink) => SinkSpec::from_json(sink, "config.sink"),
        None => {
            return Err(invalid(ConfigError::new(
                "sink",
                "an object like a subscription's sink, such as {\"url\": \"https://...\"}",
            )));
        }
    }
    .map_err(spec_error)?;
    let delivery = match config.get("delivery") {
        Some(delivery) => {
            DeliverySpec::from_json(delivery, "config.delivery").map_err(spec_error)?
        }
        None => DeliverySpec::default(),
    };
    Ok(HttpSinkSpec { sink, delivery })
}

fn spec_error(error: trellis_delivery::config::SpecError) -> ApiError {
    ApiError::bad_request("invalid_connector", error.to_string()).with_field(error.field)
}

/// Connector names follow the topic-name rules, so `<name>.dlq` is always a valid topic.
fn check_name(name: &str) -> Result<(), ApiError> {
    topic_name_rules(name).map_err(|reason| {
        ApiError::bad_request(
            "invalid_name",
            reason.replace("a topic name", "a connector name"),
        )
        .with_field("name".to_owned())
    })
}

fn invalid_name(what: &str) -> ApiError {
    ApiError::bad_request("invalid_name", format!("name {what}")).with_field("name".to_owned())
}

fn invalid(error: ConfigError) -> ApiError {
    ApiError::bad_request("invalid_connector", error.to_string())
        .with_field(format!("config{}", suffix(&error.key)))
}

fn suffix(key: &str) -> String {
    if key.is_empty() || key.starts_with('(') {
        String::new()
    } else {
        format!(".{key}")
    }
}

fn unknown_plugin(message: String) -> ApiError {
    ApiError::bad_request("unknown_plugin", message).with_field(format!("config.{CLASS_KEY}"))
}

fn classes() -> String {
    plugins::plugins()
        .iter()
        .map(|plugin| plugin.class)
        .collect::<Vec<_>>()
        .join(", ")
}
