//! The CloudEvents webhook validation handshake ("abuse protection", CloudEvents Webhook spec
//! section 4), and the request rate it grants.
//!
//! Before a subscription with `validate: true` delivers anything, Trellis sends each URL
//! `OPTIONS` with `WebHook-Request-Origin`. The endpoint agrees by answering 2xx with
//! `WebHook-Allowed-Origin` set to that origin or `*`; it may add `WebHook-Allowed-Rate`, the
//! requests per minute it accepts (`*` or absent: no limit), which delivery then keeps to.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::Full;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::{Answer, Connector, Endpoint};
use crate::guard::AddressGuard;
use crate::redact::redact_url;
use crate::report::{error_messages, joined_chain};
use crate::tls::WebhookTls;

pub const REQUEST_ORIGIN_HEADER: &str = "webhook-request-origin";
pub const ALLOWED_ORIGIN_HEADER: &str = "webhook-allowed-origin";
pub const ALLOWED_RATE_HEADER: &str = "webhook-allowed-rate";

const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("{url} did not answer the validation request: {reason}")]
    Unreachable { url: String, reason: String },
    /// The address guard refused the URL, so no validation request was sent.
    #[error("{url} is refused: {reason}")]
    Denied { url: String, reason: String },
    #[error("{url} refused the validation request with status {status}")]
    Refused { url: String, status: u16 },
    #[error("{url} did not allow origin {origin:?} (WebHook-Allowed-Origin was {allowed:?})")]
    OriginNotAllowed {
        url: String,
        origin: String,
        allowed: Option<String>,
    },
    #[error("{url} answered an invalid WebHook-Allowed-Rate {value:?}")]
    BadRate { url: String, value: String },
}

/// Runs the handshake with one URL; on success, the granted rate in requests per minute
/// (`None`: no limit).
pub async fn handshake(
    url: &str,
    origin: &str,
    timeout: Duration,
    guard: Arc<AddressGuard>,
    tls: &WebhookTls,
) -> Result<Option<u32>, ValidationError> {
    let redacted = redact_url(url);
    let unreachable = |reason: String| ValidationError::Unreachable {
        url: redacted.clone(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|error: http::uri::InvalidUri| unreachable(error.to_string()))?;
    // The handshake runs before the subscription's engine exists, so before the engine's own
    // check: without this, a literal IP host (which never reaches the guarded resolver) in a
    // denied range would get its `OPTIONS` request.
    guard
        .check_url(&uri)
        .map_err(|error| ValidationError::Denied {
            url: redacted.clone(),
            reason: error.to_string(),
        })?;
    let endpoint = Endpoint::new(&uri, metrics::Counter::noop())
        .map_err(|error| unreachable(error.to_string()))?;
    let origin_value = http::HeaderValue::from_str(origin)
        .map_err(|_| unreachable(format!("the origin {origin:?} is not a valid header value")))?;
    let connector = Connector::new(timeout, guard, tls);
    let build = || {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::OPTIONS;
        *request.uri_mut() = endpoint.request_uri().clone();
        request
            .headers_mut()
            .insert(REQUEST_ORIGIN_HEADER, origin_value.clone());
        request
    };
    // The handshake's answer carries all it says in its headers; a body is read only so that
    // the exchange ends cleanly.
    let exchange = endpoint.exchange(|| connector, build, MAX_BODY_BYTES);
    let Answer { status, headers } = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|error| unreachable(joined_chain(&error_messages(&error))))?;
    if !status.is_success() {
        return Err(ValidationError::Refused {
            url: redacted,
            status: status.as_u16(),
        });
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim().to_owned())
    };
    let allowed = header(ALLOWED_ORIGIN_HEADER);
    if !matches!(allowed.as_deref(), Some(value) if value == "*" || value.eq_ignore_ascii_case(origin))
    {
        return Err(ValidationError::OriginNotAllowed {
            url: redacted,
            origin: origin.to_owned(),
            allowed,
        });
    }
    match header(ALLOWED_RATE_HEADER).as_deref() {
        None | Some("*") => Ok(None),
        Some(value) => match value.parse::<u32>() {
            Ok(rate) if rate > 0 => Ok(Some(rate)),
            _ => Err(ValidationError::BadRate {
                url: redacted,
                value: value.to_owned(),
            }),
        },
    }
}

/// Spaces requests to one URL so no more than the granted number start in any minute.
#[derive(Debug)]
pub(crate) struct RateGate {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl RateGate {
    pub(crate) fn per_minute(requests: u32) -> RateGate {
        RateGate {
            interval: Duration::from_secs(60) / requests.max(1),
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot. Slots are handed out in call order.
    pub(crate) async fn wait(&self) {
        let slot = {
            let mut next_slot = self.next_slot.lock().await;
            let slot = (*next_slot).max(Instant::now());
            *next_slot = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests;
