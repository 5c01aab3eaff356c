//! Checks every request passes before it reaches a handler, so that what axum's extractors or
//! the handlers would read ambiguously is refused with the API's JSON error instead.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub(crate) async fn check_request(request: Request, next: Next) -> Response {
    match check(&request) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

fn check(request: &Request) -> Result<(), ApiError> {
    // Which one a handler read would be a guess; publishing in binary mode takes it as the
    // data's type.
    if request
        .headers()
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ApiError::bad_request(
            "invalid_header",
            "the Content-Type header appears more than once; send it once",
        ));
    }
    // Topic and subscription names are UTF-8; axum's path extractor would refuse a segment
    // that is not in plain text.
    if percent_encoding::percent_decode_str(request.uri().path())
        .decode_utf8()
        .is_err()
    {
        return Err(ApiError::bad_request(
            "invalid_path",
            "the path is not UTF-8 once percent-decoded; percent-encode each byte of a name's UTF-8 form (topic and subscription names use only A-Z a-z 0-9 . _ -)",
        ));
    }
    Ok(())
}
