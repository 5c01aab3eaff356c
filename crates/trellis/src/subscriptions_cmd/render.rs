//! Human views of the subscriptions API's answers: the `list` table and the `get`/`create`
//! key/value view. Pure functions from the API's JSON to text.
//!
//! They never fail: a field the API leaves out shows as `-`, and a field it adds later is shown
//! after the known ones, so the CLI does not have to change with every new setting.

use serde_json::{Map, Value};

/// `subscriptions list`: one row per subscription under `NAME TOPIC URLS PAUSED`.
pub(crate) fn subscription_table(subscriptions: &[Value]) -> String {
    let rows: Vec<Vec<String>> = subscriptions
        .iter()
        .map(|subscription| {
            vec![
                scalar(subscription.get("name")),
                scalar(subscription.get("topic")),
                urls_cell(subscription.pointer("/sink/urls")),
                scalar(subscription.get("paused")),
            ]
        })
        .collect();
    table(&["NAME", "TOPIC", "URLS", "PAUSED"], &rows)
}

/// `subscriptions get` and `create`: aligned `key: value` lines, with `sink`, `delivery` and
/// `status` as indented sections and one line per URL in `status.urls`.
pub(crate) fn subscription_details(subscription: &Value) -> String {
    let mut lines = Vec::new();
    match subscription {
        Value::Object(object) => {
            let mut object = object.clone();
            hide_header_values(&mut object);
            return key_value_view(&object, TOP_ORDER, section_order);
        }
        other => lines.push(Line::Text {
            depth: 0,
            text: inline(other),
        }),
    }
    render_lines(&lines)
}

/// The key/value view of any API object: `order`'s keys first, objects at the top as indented
/// sections ordered by `sections(key)`, deeper objects inline. Shared with `trellis connectors`.
pub(crate) fn key_value_view(
    object: &Map<String, Value>,
    order: &[&str],
    sections: fn(&str) -> &'static [&'static str],
) -> String {
    let mut lines = Vec::new();
    push_object(&mut lines, 0, object, order, sections);
    render_lines(&lines)
}

/// Columns padded to their widest cell and two spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|title| (*title).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

// Known keys first, in the order a reader looks for them; the rest follow in the API's order.
const TOP_ORDER: &[&str] = &[
    "name",
    "topic",
    "paused",
    "start",
    "dead_letter_topic",
    "sink",
    "delivery",
    "status",
];
const SINK_ORDER: &[&str] = &["urls", "strategy", "mode", "headers", "secret"];
const DELIVERY_ORDER: &[&str] = &[
    "max_attempts",
    "max_delivery_ms",
    "backoff",
    "retry_after_max_ms",
    "connect_timeout_ms",
    "request_timeout_ms",
    "concurrency",
    "breaker",
    "retry_on",
    "drop_on",
];
const STATUS_ORDER: &[&str] = &[
    "state",
    "reason",
    "paused",
    "delivered",
    "retried",
    "dead_lettered",
    "in_flight",
    "committed_offset",
    "lag",
    "urls",
];
const TARGET_ORDER: &[&str] = &["url", "circuit", "concurrency", "in_flight", "paused"];

/// One line of the key/value view before alignment.
enum Line {
    /// `key: value`; an empty key continues the value of the line above.
    Field {
        depth: usize,
        key: String,
        value: String,
    },
    /// A line of its own, such as one URL's status.
    Text { depth: usize, text: String },
}

fn push_object(
    lines: &mut Vec<Line>,
    depth: usize,
    object: &Map<String, Value>,
    order: &[&str],
    sections: fn(&str) -> &'static [&'static str],
) {
    for key in ordered_keys(object, order) {
        let Some(value) = object.get(key) else {
            continue;
        };
        let field = |value: String| Line::Field {
            depth,
            key: key.to_owned(),
            value,
        };
        match value {
            // Sections: only at the top, so the view stays two levels deep.
            Value::Object(section) if depth == 0 && !section.is_empty() => {
                lines.push(field(String::new()));
                push_object(lines, depth + 1, section, sections(key), sections);
            }
            // `status.urls`: one line per URL.
            Value::Array(items) if items.iter().any(Value::is_object) => {
                lines.push(field(String::new()));
                for item in items {
                    lines.push(Line::Text {
                        depth: depth + 1,
                        text: target_line(item),
                    });
                }
            }
            // `sink.urls`: one URL per line.
            Value::Array(items) if items.len() > 1 => {
                for (index, item) in items.iter().enumerate() {
                    lines.push(Line::Field {
                        depth,
                        key: if index == 0 {
                            key.to_owned()
                        } else {
                            String::new()
                        },
                        value: inline(item),
                    });
                }
            }
            other => lines.push(field(inline(other))),
        }
    }
}

/// Any `sink.headers` value may be a credential, and the API shows them all as `***`; a server
/// from before it did showed some in clear, so the view hides them itself.
fn hide_header_values(subscription: &mut Map<String, Value>) {
    if let Some(Value::Object(headers)) = subscription
        .get_mut("sink")
        .and_then(|sink| sink.get_mut("headers"))
    {
        for value in headers.values_mut() {
            *value = Value::from("***");
        }
    }
}

fn section_order(key: &str) -> &'static [&'static str] {
    match key {
        "sink" => SINK_ORDER,
        "delivery" => DELIVERY_ORDER,
        "status" => STATUS_ORDER,
        _ => &[],
    }
}

/// `order`'s keys that are present, then the others as they come.
fn ordered_keys<'a>(object: &'a Map<String, Value>, order: &[&'a str]) -> Vec<&'a str> {
    let known = order
        .iter()
        .copied()
        .filter(|key| object.contains_key(*key));
    let others = object
        .keys()
        .map(String::as_str)
        .filter(|key| !order.contains(key));
    known.chain(others).collect()
}

/// One URL's status: `URL  circuit=closed concurrency=1 in_flight=0 paused=-`.
fn target_line(target: &Value) -> String {
    let Value::Object(target) = target else {
        return inline(target);
    };
    let mut parts = Vec::new();
    for key in ordered_keys(target, TARGET_ORDER) {
        let Some(value) = target.get(key) else {
            continue;
        };
        if key == "url" {
            parts.insert(0, format!("{} ", inline(value)));
        } else {
            parts.push(format!("{key}={}", nested(value)));
        }
    }
    parts.join(" ")
}

/// A value on one line: strings bare, `-` for nothing, lists with `, `, objects as `k=v k=v`.
pub(crate) fn inline(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(inline).collect::<Vec<_>>().join(", "),
        Value::Object(object) if object.is_empty() => "-".to_owned(),
        Value::Object(object) => object
            .iter()
            .map(|(key, value)| format!("{key}={}", nested(value)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
    }
}

/// A value inside `k=v`: like [`inline`], but text with spaces is quoted and deeper objects stay
/// JSON, so the pairs remain readable apart.
fn nested(value: &Value) -> String {
    match value {
        Value::String(text) if text.is_empty() || text.contains(char::is_whitespace) => {
            value.to_string()
        }
        Value::Object(object) if !object.is_empty() => value.to_string(),
        other => inline(other),
    }
}

/// The table's cells: strings bare, `-` for a missing value.
fn scalar(value: Option<&Value>) -> String {
    value.map_or_else(|| "-".to_owned(), inline)
}

/// The first URL, and how many more there are.
fn urls_cell(urls: Option<&Value>) -> String {
    match urls.and_then(Value::as_array).map(Vec::as_slice) {
        None | Some([]) => "-".to_owned(),
        Some([only]) => inline(only),
        Some([first, rest @ ..]) => format!("{} (+{} more)", inline(first), rest.len()),
    }
}

/// Aligns every `key:` to one column; a section's keys are indented two spaces per level.
fn render_lines(lines: &[Line]) -> String {
    let width = lines
        .iter()
        .map(|line| match line {
            Line::Field { depth, key, .. } => depth * 2 + key.chars().count() + 1,
            Line::Text { .. } => 0,
        })
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for line in lines {
        let rendered = match line {
            Line::Field { depth, key, value } => {
                let label = if key.is_empty() {
                    String::new()
                } else {
                    format!("{}{key}:", "  ".repeat(*depth))
                };
                format!("{label:<width$} {value}")
            }
            Line::Text { depth, text } => format!("{}{text}", "  ".repeat(*depth)),
        };
        text.push_str(rendered.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests;
