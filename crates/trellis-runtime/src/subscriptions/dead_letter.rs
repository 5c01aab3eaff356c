//! What a dead letter says: the original CloudEvent, unchanged, plus extension attributes that
//! tell an operator which subscription gave up on it, why, and after how many attempts.
//!
//! | extension | value |
//! |---|---|
//! | `trellissubscription` | the subscription's name |
//! | `trellistopic` | the topic the event came from |
//! | `trellisoffset` | its offset there (a string: offsets outgrow CloudEvents integers) |
//! | `trellisfailure` | the failure class: `retries_exhausted`, `non_retriable`, `deadline_passed`, `rejected`, `gone`, or `damaged` for a marker |
//! | `trellisstatus` | the last HTTP status, when there was one |
//! | `trellisattempts` | how many attempts were made |
//! | `trellisreason` | one line saying why, with URLs redacted |
//!
//! A record damaged on disk cannot be read, so in its place goes a marker: an event of type
//! `dev.trellis.record.damaged` from `/trellis/topics/<topic>`, without data, with
//! `trellisfailure: damaged`, the topic, the offset and the damage in `trellisreason`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_cloudevents::{CloudEvent, ExtensionValue};
use trellis_delivery::report::DeliveryFailure;
use trellis_storage::AppendRecord;

use crate::error::error_chain;
use crate::topics::TopicRegistry;

/// Where a subscription's dead letters go: a topic looked up (or created) when one is written,
/// so deleting it does not stop the subscription.
#[derive(Clone)]
pub(crate) struct DeadLetterTarget {
    pub(crate) topic_name: String,
    pub(crate) topics: TopicRegistry,
}

/// Waits between tries to append a dead letter that failed (the store is full, unavailable or shutting down).
const RETRY: Duration = Duration::from_millis(500);

impl DeadLetterTarget {
    /// Appends `event`, retrying until it is durable; `false` if `stop` came first (the record
    /// then stays uncommitted and is delivered again after a restart).
    pub(crate) async fn append(
        &self,
        subscription: &str,
        event: &CloudEvent,
        stop: &CancellationToken,
    ) -> bool {
        self.append_all(subscription, std::slice::from_ref(event), stop)
            .await
    }

    /// `append` for several events in one all-or-nothing append.
    pub(crate) async fn append_all(
        &self,
        subscription: &str,
        events: &[CloudEvent],
        stop: &CancellationToken,
    ) -> bool {
        // Without a dedup key: a dead letter repeats its original's (source, id), and every
        // failure of it is worth keeping.
        let records: Vec<AppendRecord> = events
            .iter()
            .map(|event| AppendRecord::new(event.to_stored()))
            .collect();
        loop {
            let appended = match self.topics.for_subscription(&self.topic_name).await {
                Ok((topic, _)) => topic
                    .append(records.clone())
                    .await
                    .map_err(|error| error_chain(&error)),
                Err(error) => Err(error.message),
            };
            match appended {
                Ok(_) => return true,
                Err(message) => tracing::error!(
                    message = "Writing a dead letter failed; retrying.",
                    subscription,
                    topic = %self.topic_name,
                    error = %message
                ),
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Every extension `annotate` sets; a redrive strips them before delivering again.
pub(crate) const EXTENSIONS: &[&str] = &[
    "trellissubscription",
    "trellistopic",
    "trellisoffset",
    "trellisfailure",
    "trellisstatus",
    "trellisattempts",
    "trellisreason",
];

/// The dead letter standing for a record of `topic` at `offset` that is damaged on disk.
pub(crate) fn damaged_marker(
    subscription: &str,
    topic: &str,
    offset: u64,
    reason: &str,
) -> CloudEvent {
    let text = |value: &str| ExtensionValue::String(value.to_owned());
    let mut event = CloudEvent {
        id: format!("trellis-damaged-{topic}-{offset}"),
        source: format!("/trellis/topics/{topic}"),
        specversion: "1.0".to_owned(),
        ty: "dev.trellis.record.damaged".to_owned(),
        datacontenttype: None,
        dataschema: None,
        subject: None,
        time: None,
        extensions: std::collections::BTreeMap::new(),
        data: None,
    };
    let extensions = &mut event.extensions;
    extensions.insert("trellissubscription".to_owned(), text(subscription));
    extensions.insert("trellistopic".to_owned(), text(topic));
    extensions.insert("trellisoffset".to_owned(), text(&offset.to_string()));
    extensions.insert("trellisfailure".to_owned(), text("damaged"));
    extensions.insert("trellisattempts".to_owned(), ExtensionValue::Integer(0));
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    extensions.insert(
        "trellisreason".to_owned(),
        text(&format!("the record is damaged on disk: {reason}")),
    );
    event
}

/// Whether `event` is a marker from `damaged_marker`.
pub(crate) fn is_damaged_marker(event: &CloudEvent) -> bool {
    matches!(event.extensions.get("trellisfailure"), Some(ExtensionValue::String(failure)) if failure == "damaged")
}

/// Long enough for a status line and a redacted URL; short enough to keep dead letters small.
const MAX_REASON_CHARS: usize = 512;

pub(crate) fn annotate(event: &mut CloudEvent, subscription: &str, failure: &DeliveryFailure) {
    let text = |value: &str| ExtensionValue::String(value.to_owned());
    let extensions = &mut event.extensions;
    extensions.insert("trellissubscription".to_owned(), text(subscription));
    extensions.insert("trellistopic".to_owned(), text(&failure.context.topic));
    extensions.insert(
        "trellisoffset".to_owned(),
        text(&failure.context.offset.to_string()),
    );
    extensions.insert("trellisfailure".to_owned(), text(failure.class.as_str()));
    if let Some(status) = failure.last_status {
        extensions.insert(
            "trellisstatus".to_owned(),
            ExtensionValue::Integer(i64::from(status)),
        );
    }
    extensions.insert(
        "trellisattempts".to_owned(),
        ExtensionValue::Integer(i64::try_from(failure.attempts.len()).unwrap_or(i64::MAX)),
    );
    let reason: String = failure.reason.chars().take(MAX_REASON_CHARS).collect();
    extensions.insert("trellisreason".to_owned(), text(&reason));
}
