//! The API's error type and its one JSON shape: `{"error": "<code>", "message": "<sentence>"}`,
//! plus `attribute` and `index` when an event in a request was at fault.
//!
//! Messages echo input (a name, a value) between quotes or backticks. However a message is
//! built, each echo is cut to [`MAX_ECHO_CHARS`] characters and the whole message to
//! [`MAX_MESSAGE_CHARS`]: a hostile request cannot inflate its answer, nor a gRPC status, whose
//! message travels in a header that clients limit (16 KiB in hyper's HTTP/2 client).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Input echoed between quotes or backticks in a message is cut to this many characters.
pub(crate) const MAX_ECHO_CHARS: usize = 128;
/// No message is longer than this many characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 1024;
/// The `Retry-After` of every `503`: long enough that a client does not hammer a node whose
/// event store is away, short enough that publishing resumes soon after it is back.
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

/// An error answered to an API client. `code` is a stable machine-readable word; `message` tells a
/// person what was wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub attribute: Option<String>,
    pub index: Option<usize>,
    /// The request field at fault, as a dotted path (`delivery.backoff.multiplier`).
    pub field: Option<String>,
    /// Seconds for the `Retry-After` header: set on every `503`, a state that passes.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attribute: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: bounded(message.into()),
            attribute: None,
            index: None,
            field: None,
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECS),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The API's answer to a storage call that failed: `503` with `Retry-After` while the
    /// event store is unavailable or closing, an internal error otherwise. Callers map the
    /// errors that mean something to the request (no such topic, a truncated offset) first.
    pub(crate) fn storage(context: &str, error: &trellis_storage::StorageError) -> ApiError {
        use trellis_storage::StorageError;
        match error {
            StorageError::Unavailable(reason) => ApiError::unavailable(format!(
                "the event store is unavailable ({reason}); {context} did not complete, try again shortly"
            )),
            StorageError::Closed => ApiError::unavailable(
                "Trellis is shutting down; retry against another node or later",
            ),
            other => ApiError::internal(context, other),
        }
    }

    /// `503` at once while the event store is known to be unreachable, so that a request does
    /// not wait out a storage timeout to learn it.
    pub(crate) fn check_available(store: &dyn trellis_storage::EventStore) -> Result<(), ApiError> {
        if store.available() {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "the event store is unavailable (not connected); nothing was sent to it, try again shortly",
            ))
        }
    }

    /// A failure inside Trellis. The cause is logged in full; the client gets a short sentence.
    pub(crate) fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> ApiError {
        // The metadata store out of reach (etcd down) is a `503` to retry, not a fault here.
        if let Some(trellis_meta::MetaError::Unavailable(reason)) =
            error.downcast_ref::<trellis_meta::MetaError>()
        {
            return ApiError::unavailable(format!(
                "the metadata store is unavailable ({reason}); {context} did not complete, try again shortly"
            ));
        }
        let chain = error_chain(error);
        tracing::error!(message = "Request failed inside Trellis.", context, error = %chain);
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}: {chain}"),
        )
    }

    pub(crate) fn with_attribute(mut self, attribute: Option<String>) -> ApiError {
        self.attribute = attribute;
        self
    }

    pub(crate) fn with_field(mut self, field: String) -> ApiError {
        self.field = Some(field);
        self
    }

    pub(crate) fn with_index(mut self, index: Option<usize>) -> ApiError {
        self.index = index;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let attribute = self.attribute.as_deref().map(trellis_cloudevents::shown);
        let field = self.field.as_deref().map(trellis_cloudevents::shown);
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            attribute: attribute.as_deref(),
            index: self.index,
            field: field.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// `message` with every span between double quotes (as `{:?}` writes input) or backticks, and
/// every unquoted word, cut to [`MAX_ECHO_CHARS`] characters and `...`; the whole cut to
/// [`MAX_MESSAGE_CHARS`].
pub(crate) fn bounded(message: String) -> String {
    // No span can be too long in a message shorter than the limit: the common case.
    if message.len() <= MAX_ECHO_CHARS {
        return message;
    }
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS + 64));
    let mut rest = message.as_str();
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest.as_bytes().get(open).copied().unwrap_or(b'"');
        push_words(&mut out, &rest[..open]);
        out.push(char::from(quote));
        rest = &rest[open + 1..];
        let close = span_end(rest, quote);
        out.push_str(&trellis_cloudevents::shown(&rest[..close]));
        // The closing quote, if there is one, goes out with the text after it.
        rest = &rest[close..];
        if let Some(after) = rest.strip_prefix(char::from(quote)) {
            out.push(char::from(quote));
            rest = after;
        }
    }
    push_words(&mut out, rest);
    match out.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => out,
        Some((cut, _)) => {
            out.truncate(cut);
            out.push_str("...");
            out
        }
    }
}

/// Appends unquoted `text`, cutting any word (a run without whitespace) longer than
/// [`MAX_ECHO_CHARS`]: no word of ours is that long, so it is input echoed without quotes.
fn push_words(out: &mut String, text: &str) {
    if text.len() <= MAX_ECHO_CHARS {
        out.push_str(text);
        return;
    }
    let mut word_start = 0;
    for (at, c) in text.char_indices().chain([(text.len(), ' ')]) {
        if c.is_whitespace() {
            out.push_str(&trellis_cloudevents::shown(&text[word_start..at]));
            if at < text.len() {
                out.push(c);
            }
            word_start = at + c.len_utf8();
        }
    }
}

/// Where the span that starts `text` ends: at the closing `quote`, past `\`-escapes inside
/// double quotes, or at the end of `text` when nothing closes it.
fn span_end(text: &str, quote: u8) -> usize {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == quote {
            return at;
        }
        at += if byte == b'\\' && quote == b'"' { 2 } else { 1 };
    }
    text.len()
}

/// "outer: inner: root" for an error and its sources.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{ApiError, MAX_ECHO_CHARS, MAX_MESSAGE_CHARS, RETRY_AFTER_SECS, bounded};
    use axum::response::IntoResponse;
    use trellis_storage::StorageError;

    #[test]
    fn an_unreachable_metadata_store_is_a_503_and_its_other_failures_are_500() {
        let unreachable = trellis_meta::MetaError::Unavailable("connection refused".into());
        let answer = ApiError::internal("storing a subscription", &unreachable).into_response();
        assert_eq!(answer.status(), 503);
        assert!(answer.headers().contains_key("retry-after"));
        let failed = trellis_meta::MetaError::Storage("disk full".into());
        let answer = ApiError::internal("storing a subscription", &failed).into_response();
        assert_eq!(answer.status(), 500);
    }

    #[test]
    fn an_unavailable_store_is_a_503_with_retry_after_and_other_failures_are_not() {
        let unavailable = ApiError::storage(
            "listing topics",
            &StorageError::Unavailable("timed out".to_owned()),
        )
        .into_response();
        assert_eq!(unavailable.status(), 503);
        assert_eq!(
            unavailable
                .headers()
                .get("retry-after")
                .map(|v| v.as_bytes()),
            Some(RETRY_AFTER_SECS.to_string().as_bytes())
        );
        let failed =
            ApiError::storage("listing topics", &StorageError::EmptyAppend).into_response();
        assert_eq!(failed.status(), 500);
        assert!(failed.headers().get("retry-after").is_none());
        let refused = ApiError::bad_request("invalid_event", "no").into_response();
        assert!(refused.headers().get("retry-after").is_none());
    }

    #[test]
    fn short_messages_and_short_echoes_are_kept_whole() {
        let message = format!(
            "no subscription named {:?}; got `{}`",
            "a".repeat(100),
            "b".repeat(100)
        );
        assert_eq!(bounded(message.clone()), message);
    }

    #[test]
    fn long_echoes_are_cut_and_the_text_around_them_kept() {
        let name = "\u{e9}\"x".repeat(5_000);
        let message = bounded(format!(
            "invalid topic name {name:?}: use [A-Za-z0-9._-]; field `{}` unknown",
            "f".repeat(10_000)
        ));
        assert!(message.starts_with("invalid topic name \""), "{message}");
        assert!(
            message.contains("\": use [A-Za-z0-9._-]; field `"),
            "{message}"
        );
        assert!(message.ends_with("...` unknown"), "{message}");
        assert!(
            message.chars().count() < 2 * MAX_ECHO_CHARS + 120,
            "{message}"
        );
    }

    #[test]
    fn long_unquoted_words_are_cut() {
        let message = bounded(format!("bad query: {}: unknown field", "q".repeat(10_000)));
        assert!(message.starts_with("bad query: qqq"), "{message}");
        assert!(message.ends_with("... unknown field"), "{message}");
        assert!(message.chars().count() < MAX_ECHO_CHARS + 40, "{message}");
    }

    #[test]
    fn an_unclosed_quote_and_a_long_message_are_bounded() {
        let message = bounded(format!("got \"{}", "z".repeat(10_000)));
        assert!(message.chars().count() < MAX_ECHO_CHARS + 20, "{message}");
        let message = bounded("word ".repeat(1_000));
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 3);
    }
}
