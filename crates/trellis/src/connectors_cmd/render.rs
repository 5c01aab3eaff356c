//! Human views of the connectors API's answers: the `list`, `offsets` and `plugins` tables and
//! the `get`/`create`/`status` key/value views. Pure functions from the API's JSON to text.
//!
//! They never fail on a field the API leaves out (it shows as `-`) or adds later (it is shown
//! after the known ones); only an answer of the wrong shape altogether is an error.

use serde_json::{Map, Value};

use crate::subscriptions_cmd::render::{inline, key_value_view, table};

/// `connectors list`: one row per connector under `NAME TYPE CLASS TOPIC STATE`, from the
/// `?expand=status&expand=info` map; a plain list of names (a server that does not expand)
/// shows the names alone.
pub(crate) fn connector_table(answer: &Value) -> anyhow::Result<String> {
    let rows: Vec<Vec<String>> = match answer {
        Value::Object(connectors) => {
            let mut names: Vec<&String> = connectors.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|name| {
                    let entry = connectors.get(name).unwrap_or(&Value::Null);
                    vec![
                        name.clone(),
                        cell(entry.pointer("/info/type")),
                        cell(entry.pointer("/info/config/connector.class")),
                        cell(entry.pointer("/info/config/topic")),
                        cell(entry.pointer("/status/connector/state")),
                    ]
                })
                .collect()
        }
        Value::Array(names) => names
            .iter()
            .map(|name| {
                let mut row = vec![inline(name)];
                row.extend(std::iter::repeat_n("-".to_owned(), 4));
                row
            })
            .collect(),
        _ => anyhow::bail!("the server's answer is not a list of connectors; is it trellis?"),
    };
    Ok(table(&["NAME", "TYPE", "CLASS", "TOPIC", "STATE"], &rows))
}

/// `connectors get` and `create`: name, type, the config as a section (`connector.class` and
/// `topic` first) and, when the answer carries one, the status as a section.
pub(crate) fn connector_details(connector: &Value) -> String {
    let Value::Object(object) = connector else {
        return format!("{}\n", inline(connector));
    };
    let mut object = object.clone();
    if let Some(status) = object.get_mut("status") {
        *status = Value::Object(flat_status(status, &["name", "type", "plugin"]));
    }
    key_value_view(&object, DETAILS_ORDER, details_sections)
}

/// `connectors status`: the state and its trace first, then the record and offset counters as
/// sections.
pub(crate) fn status_details(status: &Value) -> String {
    key_value_view(&flat_status(status, &[]), STATUS_ORDER, status_sections)
}

/// `connectors offsets`: one row per source partition, or the sink's topic offset.
pub(crate) fn offsets_table(answer: &Value) -> anyhow::Result<String> {
    let Some(offsets) = answer.get("offsets").and_then(Value::as_array) else {
        anyhow::bail!("the server's answer has no `offsets` list; is it trellis?");
    };
    let rows: Vec<Vec<String>> = offsets
        .iter()
        .map(|offset| vec![cell(offset.get("partition")), cell(offset.get("offset"))])
        .collect();
    Ok(table(&["PARTITION", "OFFSET"], &rows))
}

/// `connectors plugins`: class, type and the config keys, required ones marked `*`.
pub(crate) fn plugins_table(answer: &Value) -> anyhow::Result<String> {
    let Some(plugins) = answer.as_array() else {
        anyhow::bail!("the server's answer is not a list of plugins; is it trellis?");
    };
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|plugin| {
            vec![
                cell(plugin.get("class")),
                cell(plugin.get("type")),
                keys_cell(plugin.get("config")),
            ]
        })
        .collect();
    Ok(table(&["CLASS", "TYPE", "KEYS (* required)"], &rows))
}

const DETAILS_ORDER: &[&str] = &["name", "type", "config", "status"];
// The two keys every connector has, then the plugin's own in the API's (sorted) order.
const CONFIG_ORDER: &[&str] = &["connector.class", "topic"];
const STATUS_ORDER: &[&str] = &[
    "name", "type", "plugin", "state", "trace", "paused", "records", "offsets",
];
const RECORDS_ORDER: &[&str] = &[
    "polled",
    "published",
    "put",
    "retried",
    "skipped",
    "failed",
    "dead_lettered",
    "committed_offset",
    "offset_commits",
    "offset_commit_failures",
    "begin_flush_refused",
];
const OFFSETS_ORDER: &[&str] = &["commits", "commit_failures", "begin_flush_refused"];

fn details_sections(key: &str) -> &'static [&'static str] {
    match key {
        "config" => CONFIG_ORDER,
        "status" => STATUS_ORDER,
        _ => &[],
    }
}

fn status_sections(key: &str) -> &'static [&'static str] {
    match key {
        "records" => RECORDS_ORDER,
        "offsets" => OFFSETS_ORDER,
        _ => &[],
    }
}

/// The status answer with `connector.state` and `connector.trace` lifted to `state` and `trace`
/// (a trace kept on one line), without the keys in `drop`.
fn flat_status(status: &Value, drop: &[&str]) -> Map<String, Value> {
    let Value::Object(status) = status else {
        let mut only = Map::new();
        only.insert("state".to_owned(), status.clone());
        return only;
    };
    let mut flat = Map::new();
    for (key, value) in status {
        if drop.contains(&key.as_str()) {
            continue;
        }
        match (key.as_str(), value) {
            ("connector", Value::Object(connector)) => {
                for (key, value) in connector {
                    let value = match value {
                        Value::String(text) => Value::from(one_line(text)),
                        other => other.clone(),
                    };
                    flat.insert(key.clone(), value);
                }
            }
            _ => {
                flat.insert(key.clone(), value.clone());
            }
        }
    }
    flat
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: strings bare, `-` for a missing value.
fn cell(value: Option<&Value>) -> String {
    value.map_or_else(|| "-".to_owned(), inline)
}

/// A plugin's config keys, `*` after the required ones.
fn keys_cell(config: Option<&Value>) -> String {
    let Some(keys) = config.and_then(Value::as_array) else {
        return "-".to_owned();
    };
    let names: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            let name = key.get("name")?.as_str()?;
            let required = key.get("required").and_then(Value::as_bool) == Some(true);
            Some(if required {
                format!("{name}*")
            } else {
                name.to_owned()
            })
        })
        .collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(" ")
    }
}

#[cfg(test)]
mod tests;
