//! Integration tests for `trellis-cloudevents`, through the public API only.
//!
//! One module per concern: `validation` holds one test per rule of the spec, the mode modules
//! (`structured`, `batch`, `binary`, `mode`) test what is particular to each wire shape,
//! `roundtrip` is the property test for the stored encoding, and `conformance` runs the
//! CloudEvents project's Gherkin scenarios from `tests/data/` through the small reader in
//! `gherkin`.

mod batch;
mod binary;
mod conformance;
mod gherkin;
mod limits;
mod mode;
mod roundtrip;
mod structured;
mod validation;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The members of a minimal valid structured event, as JSON text.
const BASE_EVENT: [(&str, &str); 4] = [
    ("specversion", "\"1.0\""),
    ("id", "\"1\""),
    ("source", "\"/mycontext\""),
    ("type", "\"com.example.created\""),
];

/// A minimal valid structured event with `changes` applied: `(name, Some(json))` sets or adds a
/// member, `(name, None)` removes it.
fn event_json(changes: &[(&str, Option<&str>)]) -> String {
    let mut members: Vec<(String, String)> = BASE_EVENT
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    for (name, value) in changes {
        members.retain(|(existing, _)| existing != name);
        if let Some(value) = value {
            members.push(((*name).to_owned(), (*value).to_owned()));
        }
    }
    let members: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("{name:?}:{value}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A header map from `(name, value)` pairs, in order; a repeated name appends.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name is valid");
        let value = HeaderValue::from_bytes(value.as_bytes()).expect("test header value is valid");
        headers.append(name, value);
    }
    headers
}

/// The `ce-*` headers of a minimal valid binary-mode event, followed by `extra`.
fn binary_headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut pairs = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/mycontext"),
        ("ce-type", "com.example.created"),
    ];
    pairs.extend_from_slice(extra);
    headers(&pairs)
}
