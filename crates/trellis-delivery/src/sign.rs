//! Request signing: with a subscription `secret`, every delivery carries an HMAC-SHA256 signature
//! over its timestamp and body, so a receiver can check that the request came from Trellis,
//! was not altered, and is not a replay of an old one.
//!
//! # Scheme
//!
//! The scheme follows Stripe's and Standard Webhooks' shape, so receivers that already verify
//! those need little new code:
//!
//! ```text
//! Trellis-Signature: t=<unix seconds>,v1=<lowercase hex of HMAC-SHA256(secret, "<t>." + body)>
//! ```
//!
//! - `t` is the time of signing, in decimal seconds since the Unix epoch. It is covered by the
//!   MAC, so an attacker cannot refresh an old request's timestamp.
//! - The MAC input is the ASCII decimal `t`, a full stop, then the raw body bytes exactly as
//!   sent (before any JSON parsing or re-encoding on the receiver's side).
//! - A header may carry several `v1=` entries (during a secret rotation, one per secret); a
//!   receiver accepts the request if any of them matches. Unknown keys are ignored, so a later
//!   `v2=` scheme can be added next to `v1=` without breaking old receivers.
//!
//! # Verifying, as a receiver
//!
//! 1. Split the header value on `,` and each part on the first `=`; take `t` and every `v1`.
//! 2. Reject the request if `|now - t|` exceeds your tolerance (five minutes is usual).
//! 3. Compute HMAC-SHA256 with the shared secret over `t`, `.`, and the raw body; hex-encode it.
//! 4. Compare it with each `v1` in constant time, and accept if one matches.
//!
//! In Rust, [`verify`] does all of this:
//!
//! ```
//! use trellis_delivery::sign::{SIGNATURE_HEADER, signature, verify};
//!
//! let secret = b"whsec_shared_with_the_receiver";
//! let body = br#"{"specversion":"1.0","id":"1","source":"/orders","type":"created"}"#;
//!
//! // What Trellis sends, here signed at 1_700_000_000:
//! let header_value = signature(secret, 1_700_000_000, body);
//! assert!(header_value.starts_with("t=1700000000,v1="));
//! assert_eq!(SIGNATURE_HEADER, "trellis-signature");
//!
//! // What the receiver does, with its clock at 1_700_000_042 and a five-minute tolerance:
//! assert!(verify(secret, &header_value, body, 1_700_000_042, 300).is_ok());
//!
//! // A changed body, a different secret or a replay an hour later are all refused.
//! assert!(verify(secret, &header_value, b"{}", 1_700_000_042, 300).is_err());
//! assert!(verify(b"guess", &header_value, body, 1_700_000_042, 300).is_err());
//! assert!(verify(secret, &header_value, body, 1_700_003_600, 300).is_err());
//!
//! // The scheme with nothing but hmac and sha2, as a receiver in any language would write it.
//! use hmac::{Hmac, KeyInit, Mac};
//! let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
//! mac.update(b"1700000000.");
//! mac.update(body);
//! let expected = format!("t=1700000000,v1={}", hex::encode(mac.finalize().into_bytes()));
//! assert_eq!(header_value, expected);
//! ```
//!
//! This module only computes and checks values; the engine decides when to add the header, and
//! `redact` keeps it out of logs.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header that carries the signature. Lowercase, as `http::HeaderName` stores names.
pub const SIGNATURE_HEADER: &str = "trellis-signature";

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header has no usable `t=`: missing, repeated, or not a decimal integer.
    #[error("signature header has no valid timestamp (expected t=<unix seconds>)")]
    MissingTimestamp,
    /// The header has no `v1=` entry.
    #[error("signature header has no v1 signature")]
    MissingSignature,
    /// The timestamp is further from `now` than the tolerance, in either direction.
    #[error(
        "signature timestamp {timestamp} is outside the tolerance of {tolerance_s} s around {now}"
    )]
    OutsideTolerance {
        /// The `t=` from the header.
        timestamp: i64,
        /// The receiver's clock.
        now: i64,
        /// The allowed distance, in seconds.
        tolerance_s: i64,
    },
    /// No `v1=` entry matches the body under this secret.
    #[error("signature does not match")]
    Mismatch,
}

/// The `Trellis-Signature` header value for `body` signed at `timestamp_s` (Unix seconds).
pub fn signature(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let tag = signed_mac(secret, timestamp_s, body)
        .finalize()
        .into_bytes();
    format!("t={timestamp_s},v1={}", hex::encode(tag))
}

/// Checks a `Trellis-Signature` header value against `body`, for receivers and tests.
///
/// Accepts when `|now_s - t| <= tolerance_s` and any `v1=` entry matches; the comparison is
/// constant-time (hmac's `verify_slice`), so response timing does not reveal how much of a forged
/// signature was right. A negative tolerance is treated as zero.
pub fn verify(
    secret: &[u8],
    header_value: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let parsed = parse_header(header_value)?;
    let tolerance = tolerance_s.max(0);
    // abs_diff cannot overflow, unlike `now_s - timestamp` with far-off values.
    if now_s.abs_diff(parsed.timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance {
            timestamp: parsed.timestamp,
            now: now_s,
            tolerance_s: tolerance,
        });
    }
    let mac = signed_mac(secret, parsed.timestamp, body);
    let matched = parsed.signatures.iter().any(|candidate| {
        // A candidate that is not hex cannot match; it is not worth its own error.
        hex::decode(candidate).is_ok_and(|tag| mac.clone().verify_slice(&tag).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// A MAC keyed with `secret` that has absorbed `"<timestamp>." + body`.
fn signed_mac(secret: &[u8], timestamp_s: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first, RFC 2104 §2), and hmac's own
    // `KeyInit::new` relies on the same fact, so this cannot fail at run time.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

struct ParsedHeader<'a> {
    timestamp: i64,
    signatures: Vec<&'a str>,
}

fn parse_header(header_value: &str) -> Result<ParsedHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut repeated_timestamp = false;
    let mut signatures = Vec::new();
    for part in header_value.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => {
                repeated_timestamp |= timestamp.is_some();
                timestamp = Some(value.trim());
            }
            "v1" => signatures.push(value.trim()),
            _ => {}
        }
    }
    // Two timestamps make it ambiguous which one was signed.
    if repeated_timestamp {
        return Err(SignatureError::MissingTimestamp);
    }
    let timestamp = timestamp
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or(SignatureError::MissingTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::MissingSignature);
    }
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

#[cfg(test)]
mod tests;
