//! Fuzzes the stored-record readers with arbitrary bytes (what a damaged or foreign log could
//! hold). Beyond not panicking: a record that reads back as an event must render to JSON that
//! parses to that same event, and storing the event again must read back the same event.
//!
//! Rendering copies the stored attributes as they are, so for a record Trellis did not write
//! (members in another order, say) the bytes may differ from `to_structured_json`; the event
//! they describe may not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_cloudevents::{CloudEvent, parse_structured, stored_to_structured_json};

fuzz_target!(|record: &[u8]| {
    let rendered = stored_to_structured_json(record);
    if let Ok(event) = CloudEvent::from_stored(record) {
        let rendered = rendered.expect("a readable record renders");
        assert_eq!(parse_structured(&rendered).as_ref(), Ok(&event));
        assert_eq!(CloudEvent::from_stored(&event.to_stored()).as_ref(), Ok(&event));
    }
});
