//! Fuzzes `parse_structured` with arbitrary bytes. Beyond not panicking, every accepted event
//! must encode to exactly `encoded_len` bytes and decode back to itself: that is what the log
//! relies on when it stores `to_structured_json` and reads it back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_cloudevents::{CloudEvent, parse_structured};

fuzz_target!(|body: &[u8]| {
    if let Ok(event) = parse_structured(body) {
        check_round_trip(&event);
    }
});

fn check_round_trip(event: &CloudEvent) {
    let encoded = event.to_structured_json();
    assert_eq!(encoded.len(), event.encoded_len());
    assert_eq!(
        CloudEvent::from_structured_json(&encoded).as_ref(),
        Ok(event)
    );
}
