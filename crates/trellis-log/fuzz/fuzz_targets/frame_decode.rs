//! Feeds arbitrary bytes to the frame decoder and the recovery scan, as if they were a segment
//! file. Neither may panic, and `fuzz_frame_decode` asserts their invariants: every accepted
//! frame lies inside the input and re-encodes to its own bytes, the scan never reaches past the
//! end, and the holes it resynchronises over are in order and have room for their records.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trellis_log::fuzz_frame_decode(data);
});
