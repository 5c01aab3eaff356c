//! [`ConnectRecord`]: one unit of data moving through a connector, with the callback that
//! hears how it ended.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::callback::{Completion, SendCallback, SendError};
use crate::position::Position;

/// A record read by a source or handed to a sink.
///
/// Equality compares the id, timestamp, data, position and extensions, never the callback.
///
/// **Cloning.** A clone is a copy of the record's content (same id, so a duplicate that the
/// runtime deduplicates) with *no* callback: the obligation to report stays with the original,
/// which still owes exactly one outcome. Clone a record to retry or inspect it; to divide the
/// obligation itself, use [`Completion::split`].
pub struct ConnectRecord {
    /// Unique within the connector and stable across a re-read of the same data (a file
    /// source derives it from the file and byte offset), so the runtime's deduplication drops
    /// a record published again after a restart.
    pub id: String,
    pub timestamp: DateTime<Utc>,
    pub data: Bytes,
    pub position: Position,
    /// Free key/value metadata, kept in key order. See the `cloudevents` module for how keys
    /// map to CloudEvents attributes.
    pub extensions: BTreeMap<String, String>,
    completion: Completion,
}

impl ConnectRecord {
    /// A record timestamped now, with no extensions and no callback.
    pub fn new(id: impl Into<String>, position: Position, data: impl Into<Bytes>) -> Self {
        ConnectRecord {
            id: id.into(),
            timestamp: Utc::now(),
            data: data.into(),
            position,
            extensions: BTreeMap::new(),
            completion: Completion::none(),
        }
    }

    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    pub fn with_extension(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(key.into(), value.into());
        self
    }

    pub fn extension(&self, key: &str) -> Option<&str> {
        self.extensions.get(key).map(String::as_str)
    }

    /// Attaches the callback that hears this record's outcome. The record's id and position
    /// are captured now: the callback reports those even if the fields change later. A
    /// callback attached before is replaced, and its handle reports [`SendError::Dropped`].
    pub fn set_callback(&mut self, callback: Arc<dyn SendCallback>) {
        self.completion = Completion::new(self.id.clone(), self.position.clone(), callback);
    }

    pub fn with_callback(mut self, callback: Arc<dyn SendCallback>) -> Self {
        self.set_callback(callback);
        self
    }

    /// Whether ending this record calls a callback.
    pub fn has_callback(&self) -> bool {
        self.completion.is_armed()
    }

    /// Reports that the record was published or delivered.
    pub fn succeed(mut self, topic: Option<String>) {
        self.take_completion().succeed(topic);
    }

    /// Reports that the record failed.
    pub fn fail(mut self, topic: Option<String>, cause: SendError) {
        self.take_completion().fail(topic, cause);
    }

    /// Takes the record's completion, leaving it none: for a sink that keeps the handle while
    /// the record's content goes on elsewhere (into a request, a buffer).
    pub fn take_completion(&mut self) -> Completion {
        std::mem::replace(&mut self.completion, Completion::none())
    }

    /// The record's content and its completion, apart.
    pub fn into_parts(mut self) -> (ConnectRecord, Completion) {
        let completion = self.take_completion();
        (self, completion)
    }
}

impl Clone for ConnectRecord {
    fn clone(&self) -> Self {
        ConnectRecord {
            id: self.id.clone(),
            timestamp: self.timestamp,
            data: self.data.clone(),
            position: self.position.clone(),
            extensions: self.extensions.clone(),
            completion: Completion::none(),
        }
    }
}

impl PartialEq for ConnectRecord {
    fn eq(&self, other: &ConnectRecord) -> bool {
        self.id == other.id
            && self.timestamp == other.timestamp
            && self.data == other.data
            && self.position == other.position
            && self.extensions == other.extensions
    }
}

impl Eq for ConnectRecord {}

/// Shows the data's length, not its bytes, which may be large or sensitive.
impl fmt::Debug for ConnectRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRecord")
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .field("data_len", &self.data.len())
            .field("position", &self.position)
            .field("extensions", &self.extensions)
            .field("completion", &self.completion)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::callback::{SendExceptionContext, SendResult};

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl SendCallback for Recorder {
        fn on_success(&self, result: SendResult) {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(format!("ok {}", result.record_id));
            }
        }
        fn on_exception(&self, context: SendExceptionContext) {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(format!("err {} {}", context.record_id, context.cause));
            }
        }
    }

    fn calls(recorder: &Recorder) -> Vec<String> {
        recorder.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    #[test]
    fn a_clone_carries_no_callback_and_the_original_still_reports_once() {
        let recorder = Arc::new(Recorder::default());
        let record =
            ConnectRecord::new("r1", Position::new("p", 1), "x").with_callback(recorder.clone());
        let copy = record.clone();
        assert_eq!(copy, record);
        assert!(!copy.has_callback());
        drop(copy);
        assert!(calls(&recorder).is_empty());
        record.succeed(Some("orders".to_owned()));
        assert_eq!(calls(&recorder), vec!["ok r1"]);
    }

    #[test]
    fn a_record_dropped_unreported_reports_dropped() {
        let recorder = Arc::new(Recorder::default());
        let batch = vec![
            ConnectRecord::new("a", Position::new("p", 1), "x").with_callback(recorder.clone()),
            ConnectRecord::new("b", Position::new("p", 2), "y").with_callback(recorder.clone()),
        ];
        drop(batch);
        assert_eq!(
            calls(&recorder),
            vec![
                "err a the record was dropped without a result",
                "err b the record was dropped without a result"
            ]
        );
    }

    #[test]
    fn replacing_a_callback_ends_the_old_one() {
        let first = Arc::new(Recorder::default());
        let second = Arc::new(Recorder::default());
        let mut record =
            ConnectRecord::new("r", Position::new("p", 1), "x").with_callback(first.clone());
        record.set_callback(second.clone());
        assert_eq!(
            calls(&first),
            vec!["err r the record was dropped without a result"]
        );
        record.fail(None, SendError::Delivery("503".to_owned()));
        assert_eq!(calls(&second), vec!["err r delivery failed: 503"]);
    }
}
