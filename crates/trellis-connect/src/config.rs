//! A connector's configuration: string keys to JSON values, as users write them in YAML or
//! JSON, with typed getters whose errors name the key and what it should be, and redaction of
//! secret values for anything shown.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What replaces a secret value wherever a config is shown.
pub const REDACTED: &str = "***";

/// A connector's settings. Serializes as the plain JSON object, secrets included: use
/// [`ConnectorConfig::redacted`] for an API answer or a log line. `Debug` is redacted.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectorConfig(BTreeMap<String, Value>);

/// A setting that is missing or not what the connector needs. The value itself is never
/// echoed, only its JSON kind, since it may be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}` must be {expected}{}", found.as_deref().map(|found| format!(", got {found}")).unwrap_or_default())]
pub struct ConfigError {
    pub key: String,
    /// What the key should hold, worded to follow "must be": "a string", "an integer from 1
    /// to 65535".
    pub expected: String,
    /// What was there instead ("nothing", "a number"), when that helps.
    pub found: Option<String>,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            expected: expected.into(),
            found: None,
        }
    }

    pub fn found(mut self, found: impl Into<String>) -> ConfigError {
        self.found = Some(found.into());
        self
    }
}

impl ConnectorConfig {
    pub fn new() -> ConnectorConfig {
        ConnectorConfig::default()
    }

    /// A config from a JSON value, which must be an object.
    pub fn from_value(value: Value) -> Result<ConnectorConfig, ConfigError> {
        match value {
            Value::Object(map) => Ok(ConnectorConfig(map.into_iter().collect())),
            other => Err(ConfigError::new("(config)", "an object of settings")
                .found(kind(&other).to_owned())),
        }
    }

    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> ConnectorConfig {
        self.insert(key, value);
        self
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn as_map(&self) -> &BTreeMap<String, Value> {
        &self.0
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, ConfigError> {
        self.get_opt_str(key)?
            .ok_or_else(|| missing(key, "a string"))
    }

    /// An optional string; `null` counts as absent.
    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(other) => Err(wrong(key, "a string", other)),
        }
    }

    /// A required non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64, ConfigError> {
        self.get_opt_u64(key)?
            .ok_or_else(|| missing(key, "a non-negative integer"))
    }

    pub fn get_opt_u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.present(key) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong(key, "a non-negative integer", value)),
        }
    }

    /// An optional integer within `min..=max`, or `default` when absent.
    pub fn get_u64_in(
        &self,
        key: &str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Result<u64, ConfigError> {
        let expected = || format!("an integer from {min} to {max}");
        match self.present(key) {
            None => Ok(default),
            Some(value) => match value.as_u64() {
                Some(number) if (min..=max).contains(&number) => Ok(number),
                Some(number) => Err(ConfigError::new(key, expected()).found(number.to_string())),
                None => Err(wrong(key, &expected(), value)),
            },
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, ConfigError> {
        self.get_opt_bool(key)?
            .ok_or_else(|| missing(key, "true or false"))
    }

    pub fn get_opt_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(other) => Err(wrong(key, "true or false", other)),
        }
    }

    /// Any type serde can read, for nested settings. `expected` words the error.
    pub fn get_as<T: DeserializeOwned>(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        match self.present(key) {
            None => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|_| wrong(key, expected, value)),
        }
    }

    /// The config with every secret value replaced by [`REDACTED`], at any depth: what an API
    /// answer or a log line shows.
    pub fn redacted(&self) -> ConnectorConfig {
        ConnectorConfig(
            self.0
                .iter()
                .map(|(key, value)| (key.clone(), redact_value(key, value)))
                .collect(),
        )
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|value| !value.is_null())
    }
}

/// The redacted JSON object, for log lines.
impl fmt::Display for ConnectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.redacted()) {
            Ok(json) => f.write_str(&json),
            Err(_) => f.write_str("{}"),
        }
    }
}

impl fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted().0.iter()).finish()
    }
}

/// Whether a key names a secret. The last dotted segment is compared, lower-cased and without
/// `-` and `_`, so `http.auth.Bearer-Token` and `signing_secret` both count.
pub fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    let name: String = last
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const SECRET_WORDS: [&str; 9] = [
        "secret",
        "accesskey",
        "password",
        "passwd",
        "token",
        "apikey",
        "privatekey",
        "signingkey",
        "credentials",
    ];
    SECRET_WORDS.iter().any(|word| name.contains(word)) || name == "authorization"
}

/// One key a connector takes, as the plugin catalog (`GET /v1/connector-plugins`) lists it.
/// Serializes as `{"name","required","default","description","secret"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConfigKey {
    pub name: &'static str,
    pub required: bool,
    /// The default, as the user would write it; `None` when required or when the default is
    /// derived (from the connector's name, say) and the description tells how.
    pub default: Option<&'static str>,
    pub description: &'static str,
    /// Whether the value is redacted wherever a config is shown.
    pub secret: bool,
}

impl ConfigKey {
    /// An optional key with a default.
    pub const fn optional(
        name: &'static str,
        default: Option<&'static str>,
        description: &'static str,
    ) -> ConfigKey {
        ConfigKey {
            name,
            required: false,
            default,
            description,
            secret: false,
        }
    }

    /// A required key.
    pub const fn required(name: &'static str, description: &'static str) -> ConfigKey {
        ConfigKey {
            name,
            required: true,
            default: None,
            description,
            secret: false,
        }
    }

    /// The same key, marked secret.
    pub const fn secret(mut self) -> ConfigKey {
        self.secret = true;
        self
    }
}

/// Refuses the first key of `config` that none of `accepted` names: the error names the key
/// and lists the accepted ones, in the order given.
pub fn check_known_keys<'a>(
    config: &ConnectorConfig,
    accepted: impl IntoIterator<Item = &'a ConfigKey> + Clone,
) -> Result<(), ConfigError> {
    for key in config.keys() {
        if !accepted.clone().into_iter().any(|known| known.name == key) {
            let names: Vec<&str> = accepted.into_iter().map(|known| known.name).collect();
            return Err(ConfigError::new(
                key,
                format!("absent: this connector takes only {}", names.join(", ")),
            )
            .found("an unknown key"));
        }
    }
    Ok(())
}

fn redact_value(key: &str, value: &Value) -> Value {
    if is_secret_key(key) && !value.is_null() {
        return Value::String(REDACTED.to_owned());
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), redact_value(key, value)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| redact_value(key, item)).collect())
        }
        other => other.clone(),
    }
}

fn missing(key: &str, expected: &str) -> ConfigError {
    ConfigError::new(key, expected).found("nothing (the key is required)")
}

fn wrong(key: &str, expected: &str, value: &Value) -> ConfigError {
    ConfigError::new(key, expected).found(kind(value))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(number) if number.is_f64() => "a fractional number",
        Value::Number(number) if number.is_i64() && number.as_i64().is_some_and(|n| n < 0) => {
            "a negative number"
        }
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config() -> ConnectorConfig {
        ConnectorConfig::from_value(json!({
            "path": "/var/log/app.log",
            "batch.size": 100,
            "follow": true,
            "http.auth.Bearer-Token": "t0ps3cret",
            "nested": {"signing_secret": "k", "url": "https://example.com"},
            "count": -3,
            "none": null,
        }))
        .expect("an object")
    }

    #[test]
    fn getters_read_their_types() {
        let config = config();
        assert_eq!(config.get_str("path"), Ok("/var/log/app.log"));
        assert_eq!(config.get_u64("batch.size"), Ok(100));
        assert_eq!(config.get_bool("follow"), Ok(true));
        assert_eq!(config.get_opt_str("none"), Ok(None));
        assert_eq!(config.get_u64_in("missing", 1, 10, 5), Ok(5));
    }

    #[test]
    fn errors_name_the_key_and_what_is_expected_without_echoing_values() {
        let config = config();
        let error = config.get_u64("path").expect_err("a string is no integer");
        assert_eq!(error.key, "path");
        assert_eq!(
            error.to_string(),
            "config key `path` must be a non-negative integer, got a string"
        );
        assert_eq!(
            config.get_str("absent").expect_err("absent").to_string(),
            "config key `absent` must be a string, got nothing (the key is required)"
        );
        assert_eq!(
            config.get_u64("count").expect_err("negative").to_string(),
            "config key `count` must be a non-negative integer, got a negative number"
        );
        assert_eq!(
            config
                .get_u64_in("batch.size", 1, 10, 5)
                .expect_err("too big")
                .to_string(),
            "config key `batch.size` must be an integer from 1 to 10, got 100"
        );
        let secret = config
            .get_u64("http.auth.Bearer-Token")
            .expect_err("a string");
        assert!(!secret.to_string().contains("t0ps3cret"));
    }

    #[test]
    fn secrets_are_redacted_at_any_depth_for_display() {
        let config = config();
        let shown = serde_json::to_string(&config.redacted()).expect("serialize");
        assert!(!shown.contains("t0ps3cret"), "{shown}");
        assert!(shown.contains(r#""signing_secret":"***""#), "{shown}");
        assert!(shown.contains("https://example.com"), "{shown}");
        assert!(!format!("{config:?}").contains("t0ps3cret"));
        assert!(!config.to_string().contains("t0ps3cret"));
        assert!(config.to_string().contains(r#""path":"/var/log/app.log""#));
        // The config itself keeps the secret for the connector to use.
        assert_eq!(config.get_str("http.auth.Bearer-Token"), Ok("t0ps3cret"));
    }

    #[test]
    fn an_unknown_key_is_named_with_the_keys_that_are_taken() {
        const KEYS: [ConfigKey; 2] = [
            ConfigKey::required("path", "the file"),
            ConfigKey::optional("fsync", Some("interval"), "when to fsync"),
        ];
        let config = ConnectorConfig::new()
            .with("path", "/x")
            .with("pathh", "/y");
        let error = check_known_keys(&config, &KEYS).expect_err("a typo");
        assert_eq!(error.key, "pathh");
        assert_eq!(
            error.to_string(),
            "config key `pathh` must be absent: this connector takes only path, fsync, got an unknown key"
        );
        assert!(check_known_keys(&ConnectorConfig::new().with("fsync", "never"), &KEYS).is_ok());
    }

    #[test]
    fn a_config_must_be_an_object() {
        let error = ConnectorConfig::from_value(json!([1])).expect_err("a list");
        assert_eq!(
            error.to_string(),
            "config key `(config)` must be an object of settings, got a list"
        );
    }
}
