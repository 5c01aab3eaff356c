//! Fuzzes `json_depth`, the byte scan that bounds how deeply event data nests. On any input it
//! must not panic and must stop exactly one level past its limit; on valid JSON it must agree
//! with the depth of the tree serde_json parses (a bracket inside a string is not nesting).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trellis_cloudevents::json_depth;

fuzz_target!(|body: &[u8]| {
    let full = json_depth(body, usize::MAX);
    assert_eq!(json_depth(body, 8), full.min(9));
    // serde_json's own recursion limit (128) keeps this parse, and `tree_depth`, shallow.
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        assert_eq!(full, tree_depth(&value));
    }
});

fn tree_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(tree_depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(tree_depth).max().unwrap_or(0),
        _ => 0,
    }
}
