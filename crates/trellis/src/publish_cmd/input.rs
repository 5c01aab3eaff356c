//! What `trellis publish` sends: the event a line of stdin stands for, or the next generated
//! event of `--count`. Pure functions, so every rule of the input format is unit-tested.

use std::collections::BTreeMap;
use std::fmt;

use trellis_cloudevents::{CloudEvent, Data};
use uuid::Uuid;

/// Where an event came from; failures on stderr name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A line of stdin, counted from 1 as editors do.
    Line(u64),
    /// The Nth generated event, from 0 like its id suffix.
    Generated(u64),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(n) => write!(f, "line {n}"),
            Origin::Generated(n) => write!(f, "event {n}"),
        }
    }
}

/// The attributes of the events this command builds itself (data lines and `--count`).
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub(super) source: String,
    pub(super) ty: String,
}

impl Template {
    /// Checks `--source` and `--type` once, up front: otherwise every built event would fail
    /// the same way at the server.
    pub(super) fn validate(&self) -> Result<(), String> {
        self.text_event("0".to_owned(), Some(String::new()))
            .validate()
            .map_err(|error| match error.attribute.as_deref() {
                Some("source") => format!("--source: {error}"),
                Some("type") => format!("--type: {error}"),
                _ => error.to_string(),
            })
    }

    fn text_event(&self, id: String, text: Option<String>) -> CloudEvent {
        CloudEvent {
            id,
            source: self.source.clone(),
            specversion: "1.0".to_owned(),
            ty: self.ty.clone(),
            // Without a content type the data would have to be JSON (the JSON event format's
            // rule), and a line of text usually is not.
            datacontenttype: text.is_some().then(|| "text/plain".to_owned()),
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: text.map(Data::Text),
        }
    }
}

/// The event one line of stdin stands for: `None` for a blank line, an error message for a
/// line that fails on its own.
pub(super) fn event_from_line(
    line: &[u8],
    template: &Template,
) -> Option<Result<CloudEvent, String>> {
    let line = strip_line_ending(line);
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return None;
    }
    // Only a line that could be an event pays for a JSON parse.
    if trimmed.starts_with(b"{") && contains(trimmed, b"\"specversion\"") {
        match CloudEvent::from_structured_json(trimmed) {
            Ok(event) => return Some(Ok(event)),
            Err(event_error) => match serde_json::from_slice::<serde_json::Value>(trimmed) {
                // "specversion" was only inside a member: a JSON object that is not an event,
                // so data like any other line.
                Ok(serde_json::Value::Object(object)) if !object.contains_key("specversion") => {}
                Ok(_) => return Some(Err(format!("invalid CloudEvent: {event_error}"))),
                // Sending a broken event as text would store something nobody meant to.
                Err(json_error) => {
                    return Some(Err(format!("invalid CloudEvent JSON: {json_error}")));
                }
            },
        }
    }
    let text = match std::str::from_utf8(line) {
        Ok(text) => text.to_owned(),
        Err(error) => return Some(Err(format!("not UTF-8 text: {error}"))),
    };
    Some(Ok(
        template.text_event(Uuid::now_v7().to_string(), Some(text))
    ))
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The events of `--count`: ids unique to this run, the same data in each.
#[derive(Debug)]
pub(super) struct Generator {
    template: Template,
    run_id: Uuid,
    data: Option<String>,
}

impl Generator {
    pub(super) fn new(template: Template, size: usize) -> Generator {
        // Letters rather than one repeated byte, so that compression (if any on the way) does
        // not make the load look cheaper than real data.
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
        let data = (size > 0).then(|| {
            LETTERS
                .iter()
                .cycle()
                .take(size)
                .map(|&byte| char::from(byte))
                .collect()
        });
        Generator {
            template,
            // A UUIDv7 prefix keeps ids unique across runs, so the server's deduplication does
            // not turn a second run into duplicates.
            run_id: Uuid::now_v7(),
            data,
        }
    }

    pub(super) fn event(&self, n: u64) -> CloudEvent {
        self.template
            .text_event(format!("{}-{n}", self.run_id), self.data.clone())
    }
}

#[cfg(test)]
mod tests;
