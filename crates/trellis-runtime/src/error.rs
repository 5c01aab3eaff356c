//! The API's error type and its one JSON shape: `{"error": "<code>", "message": "<sentence>"}`,
//! plus `attribute` and `index` when an event in a request was at fault.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
            message: message.into(),
            attribute: None,
            index: None,
            field: None,
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

    /// A failure inside Trellis. The cause is logged in full; the client gets a short sentence.
    pub(crate) fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> ApiError {
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
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            attribute: self.attribute.as_deref(),
            index: self.index,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
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
