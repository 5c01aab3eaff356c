//! Reading request bodies: the size limits and the encodings the API takes, every refusal a JSON
//! error. Publishing reads its body through [`read_body`]; the admin endpoints take
//! [`AdminBody`], which axum's own body extractors would refuse in plain text.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// The largest body of `PUT /v1/topics/{topic}`, `POST /v1/subscriptions` and `PATCH
/// /v1/subscriptions/{name}`: settings and subscriptions are small JSON objects.
pub(crate) const MAX_ADMIN_BODY_BYTES: usize = 1024 * 1024;

/// A whole admin request body, at most [`MAX_ADMIN_BODY_BYTES`].
pub(crate) struct AdminBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for AdminBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<AdminBody, ApiError> {
        let (parts, body) = request.into_parts();
        read_body(&parts.headers, body, MAX_ADMIN_BODY_BYTES)
            .await
            .map(AdminBody)
    }
}

/// Reads the whole body, refusing with 413 (before reading, when `Content-Length` says so) above
/// `limit`, and with 415 a body in any `Content-Encoding` but `identity`: Trellis would
/// otherwise store compressed bytes as if they were the data.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    check_encoding(headers)?;
    let too_large = || {
        ApiError::too_large(format!(
            "the request body exceeds the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::bad_request(
            "unreadable_body",
            format!("the request body could not be read: {error}"),
        )),
    }
}

fn check_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let encodings = value.to_str().unwrap_or("(not ASCII)");
        let identity = encodings
            .split(',')
            .map(str::trim)
            .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_encoding",
                format!(
                    "Content-Encoding {encodings:?} is not supported; send the body uncompressed (identity)"
                ),
            ));
        }
    }
    Ok(())
}

/// An admin request's body as JSON, or `400 invalid_json` saying why not.
pub(crate) fn json_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {error}"),
        )
    })
}
