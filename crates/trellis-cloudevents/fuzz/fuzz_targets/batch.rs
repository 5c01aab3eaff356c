//! Fuzzes `parse_batch` with arbitrary bytes. Every accepted event must round-trip through the
//! stored encoding, and an error must point inside the batch when it names an index.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_cloudevents::{CloudEvent, parse_batch};

fuzz_target!(|body: &[u8]| {
    match parse_batch(body) {
        Ok(events) => {
            assert!(!events.is_empty());
            for event in &events {
                let encoded = event.to_structured_json();
                assert_eq!(encoded.len(), event.encoded_len());
                assert_eq!(
                    CloudEvent::from_structured_json(&encoded).as_ref(),
                    Ok(event)
                );
            }
        }
        Err(error) => {
            if let Some(index) = error.index {
                assert!(error.message.contains(&format!("index {index}")));
            }
        }
    }
});
