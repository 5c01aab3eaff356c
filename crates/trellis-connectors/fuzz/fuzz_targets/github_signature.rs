//! Feeds arbitrary bytes to the GitHub signature check as a secret, a header value and a body.
//! It may not panic, must accept the signature it computes itself, and must refuse that
//! signature for any other body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_connectors::http_source::{github_signature, verify_github_signature};

fuzz_target!(|data: &[u8]| {
    // The first two bytes give the lengths of the secret and of the header value.
    let [secret_len, header_len, rest @ ..] = data else {
        return;
    };
    let (secret, rest) = rest.split_at(usize::from(*secret_len).min(rest.len()));
    let (header, body) = rest.split_at(usize::from(*header_len).min(rest.len()));
    let _ = verify_github_signature(secret, header, body);
    let own = github_signature(secret, body);
    assert!(verify_github_signature(secret, own.as_bytes(), body));
    let mut other = body.to_vec();
    other.push(0);
    assert!(!verify_github_signature(secret, own.as_bytes(), &other));
});
