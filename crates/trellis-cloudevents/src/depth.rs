//! How deeply JSON text nests arrays and objects, found by one pass over its bytes.
//!
//! Event data arrives as raw JSON text (`serde_json::value::RawValue`), which serde_json
//! checks for validity without a recursion limit. Whoever parses it later into a tree (a
//! webhook receiver, a consumer) may recurse once per level, so Trellis bounds the depth when
//! the event comes in. Counting brackets outside strings needs no second parse: the text is
//! already known to be valid JSON, and the only thing that can hide a bracket is a string.

/// The deepest nesting of arrays and objects in `json`: 0 for a scalar, 1 for `[1]` or
/// `{"a":1}`, 2 for `[[1]]`. Stops counting once the depth passes `stop_above`, so the answer
/// is exact up to `stop_above + 1`, which then means "deeper than `stop_above`".
///
/// Meant for valid JSON; any other input gets some answer, without panicking.
pub fn json_depth(json: &[u8], stop_above: usize) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > stop_above {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                at = string_end(json, at + 1);
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    deepest
}

/// The index just past the string whose contents start at `from`: past its closing quote, or
/// the end of the input if it has none.
fn string_end(json: &[u8], mut from: usize) -> usize {
    loop {
        let Some(rest) = json.get(from..) else {
            return json.len();
        };
        match memchr::memchr2(b'"', b'\\', rest) {
            None => return json.len(),
            Some(found) => {
                let at = from + found;
                if json.get(at) == Some(&b'"') {
                    return at + 1;
                }
                // A backslash escapes the byte after it; `\uXXXX` goes on with hex digits,
                // which are never quotes or backslashes.
                from = at + 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::json_depth;

    fn tree_depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(tree_depth).max().unwrap_or(0),
            Value::Object(members) => 1 + members.values().map(tree_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn counts_levels_and_ignores_brackets_in_strings() {
        assert_eq!(json_depth(b"1", 64), 0);
        assert_eq!(json_depth(br#""[[[{""#, 64), 0);
        assert_eq!(json_depth(b"[]", 64), 1);
        assert_eq!(json_depth(br#"{"a":[1,{"b":[]}]}"#, 64), 4);
        assert_eq!(json_depth(br#"["\"[[[", "\\", ["]"]]"#, 64), 2);
        assert_eq!(json_depth(br#"{"\u005b":"\\\"{"}"#, 64), 1);
    }

    #[test]
    fn stops_once_past_the_limit() {
        let deep = "[".repeat(1_000_000);
        assert_eq!(json_depth(deep.as_bytes(), 64), 65);
        assert_eq!(json_depth(deep.as_bytes(), usize::MAX), 1_000_000);
    }

    #[test]
    fn survives_input_that_is_not_json() {
        for input in [&b"]]]"[..], b"\"\\", b"\"", b"[\"\\\"", b"}{}{"] {
            let _ = json_depth(input, 64);
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        // Strings heavy in the characters that could fool a scanner.
        fn text() -> impl Strategy<Value = String> + Clone {
            "[\\[\\]{}\"\\\\a\u{e9}\n]{0,8}"
        }
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(12, 96, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(text(), inner, 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The byte scan agrees with the depth of the parsed tree, in compact and pretty form.
        #[test]
        fn agrees_with_the_parsed_tree(value in json_value()) {
            let expected = tree_depth(&value);
            let compact = serde_json::to_vec(&value).expect("serialise");
            let pretty = serde_json::to_vec_pretty(&value).expect("serialise");
            prop_assert_eq!(json_depth(&compact, usize::MAX), expected);
            prop_assert_eq!(json_depth(&pretty, usize::MAX), expected);
            prop_assert_eq!(json_depth(&compact, 2), expected.min(3));
        }
    }
}
