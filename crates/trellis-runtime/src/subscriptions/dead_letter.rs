//! What a dead letter says: the original CloudEvent, unchanged, plus extension attributes that
//! tell an operator which subscription gave up on it, why, and after how many attempts.
//!
//! | extension | value |
//! |---|---|
//! | `trellissubscription` | the subscription's name |
//! | `trellistopic` | the topic the event came from |
//! | `trellisoffset` | its offset there (a string: offsets outgrow CloudEvents integers) |
//! | `trellisfailure` | the failure class: `retries_exhausted`, `non_retriable`, `deadline_passed`, `rejected`, `gone` |
//! | `trellisstatus` | the last HTTP status, when there was one |
//! | `trellisattempts` | how many attempts were made |
//! | `trellisreason` | one line saying why, with URLs redacted |

use trellis_cloudevents::{CloudEvent, ExtensionValue};
use trellis_delivery::report::DeliveryFailure;

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
