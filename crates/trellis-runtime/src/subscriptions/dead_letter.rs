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
use trellis_storage::{AppendRecord, DedupKey, StorageError};

use crate::error::error_chain;
use crate::event_store::{NOT_CONNECTED, StorageWait};
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
    /// then stays uncommitted and is delivered again after a restart). While the event store
    /// is unavailable it waits for it, telling `show` why (and `None` once it is back).
    pub(crate) async fn append(
        &self,
        subscription: &str,
        event: &CloudEvent,
        stop: &CancellationToken,
        show: &(dyn Fn(Option<String>) + Send + Sync),
    ) -> bool {
        self.append_all(subscription, std::slice::from_ref(event), stop, show)
            .await
    }

    /// `append` for several events in one append.
    pub(crate) async fn append_all(
        &self,
        subscription: &str,
        events: &[CloudEvent],
        stop: &CancellationToken,
        show: &(dyn Fn(Option<String>) + Send + Sync),
    ) -> bool {
        // Not the dedup key of the original's (source, id), which every failure of the event
        // repeats and each is worth keeping: a random key of its own, kept across the retries
        // below, so that a retry of an append that failed as unavailable but was stored anyway
        // (a remote store can store what it was sent after it stopped answering) is answered as
        // a duplicate instead of being stored twice.
        let base = uuid::Uuid::new_v4().as_u128();
        let records: Vec<AppendRecord> = events
            .iter()
            .zip(0u128..)
            .map(|(event, n)| {
                AppendRecord::with_key(event.to_stored(), DedupKey(base.wrapping_add(n)))
            })
            .collect();
        let mut storage =
            StorageWait::new(format!("dead letters of subscription {subscription:?}"));
        loop {
            let unavailable = if self.topics.store().available() {
                let appended = match self.topics.for_subscription(&self.topic_name).await {
                    Ok((topic, _)) => {
                        topic
                            .append(records.clone())
                            .await
                            .map_err(|error| match error {
                                StorageError::Unavailable(reason) => (true, reason),
                                other => (false, error_chain(&other)),
                            })
                    }
                    Err(error) => Err((
                        error.status == http::StatusCode::SERVICE_UNAVAILABLE,
                        error.message,
                    )),
                };
                match appended {
                    Ok(_) => {
                        if storage.waiting() {
                            storage.succeeded();
                            show(None);
                        }
                        return true;
                    }
                    Err((true, reason)) => Some(reason),
                    Err((false, message)) => {
                        tracing::error!(
                            message = "Writing a dead letter failed; retrying.",
                            subscription,
                            topic = %self.topic_name,
                            error = %message
                        );
                        None
                    }
                }
            } else {
                Some(NOT_CONNECTED.to_owned())
            };
            let delay = match unavailable {
                Some(reason) => {
                    let delay = storage.failed(&reason);
                    show(Some(reason));
                    delay
                }
                None => RETRY,
            };
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
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
