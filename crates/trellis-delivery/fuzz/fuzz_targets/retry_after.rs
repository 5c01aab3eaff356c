//! Fuzzes `Retry-After` parsing: any header value a receiver sends must parse or be ignored,
//! never panic or overflow.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use trellis_delivery::backoff::parse_retry_after;

fuzz_target!(|input: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(input) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = parse_retry_after(&value, now);
});
