//! Feeds arbitrary text to the parser of a JetStream stream's description. It may not panic, and
//! whatever it accepts must describe itself again unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(description) = std::str::from_utf8(data) {
        trellis_storage::fuzz_stream_description(description);
    }
});
