//! Fuzzes URL redaction with arbitrary text: it never panics, and a password placed in the
//! user-info of a well-formed URL never survives.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_delivery::redact::redact_url;

fuzz_target!(|input: &str| {
    let _ = redact_url(input);
    let password: String = input
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    if password.len() >= 8 {
        let url = format!("https://user:{password}@example.com/hook?token={password}");
        assert!(!redact_url(&url).contains(&password));
    }
});
