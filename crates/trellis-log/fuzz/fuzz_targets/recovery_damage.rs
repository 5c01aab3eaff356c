//! Writes records through a real log in a fresh directory, damages its files as the input says
//! (flipped bytes, garbage, zeros, cuts, garbage after the end, lost or garbled indexes), opens
//! it again and reads everything back. `check_recovery_after_damage` asserts the recovery
//! promise: every intact acknowledged record survives with its offset and payload, nothing is
//! read back that was not written at its offset, and no offset is given out twice.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    trellis_log::check_recovery_after_damage(dir.path(), data);
});
