//! Feeds arbitrary bytes to the HTTP/1 head gate, whole and cut into pieces (the first byte
//! says how many cut lengths follow). It may not panic, and what it lets through may not depend
//! on how the bytes arrived.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (cuts, input) = rest.split_at(n);
    trellis_runtime::fuzz_head_gate(input, cuts);
});
