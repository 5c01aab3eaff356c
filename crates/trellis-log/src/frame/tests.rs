use super::*;

fn encoded(offset: u64, end_of_batch: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let meta = FrameMeta {
        offset,
        timestamp_ms: 1_700_000_000_000,
        end_of_batch,
    };
    encode(&mut out, meta, payload);
    out
}

#[track_caller]
fn check(bytes: &[u8], expected: Decoded) {
    assert_eq!(decode(bytes), expected);
}

#[test]
fn roundtrips_a_frame() {
    let bytes = encoded(42, true, b"hello");
    assert_eq!(bytes.len(), frame_bytes(5));
    let meta = FrameMeta {
        offset: 42,
        timestamp_ms: 1_700_000_000_000,
        end_of_batch: true,
    };
    check(
        &bytes,
        Decoded::Frame {
            meta,
            frame_bytes: bytes.len(),
        },
    );
    assert_eq!(&bytes[HEADER_BYTES..], b"hello");
}

#[test]
fn roundtrips_an_empty_payload_without_end_of_batch() {
    let bytes = encoded(0, false, b"");
    let meta = FrameMeta {
        offset: 0,
        timestamp_ms: 1_700_000_000_000,
        end_of_batch: false,
    };
    check(
        &bytes,
        Decoded::Frame {
            meta,
            frame_bytes: HEADER_BYTES,
        },
    );
}

#[test]
fn decodes_only_the_first_frame() {
    let mut bytes = encoded(7, false, b"first");
    bytes.extend(encoded(8, true, b"second"));
    let meta = FrameMeta {
        offset: 7,
        timestamp_ms: 1_700_000_000_000,
        end_of_batch: false,
    };
    check(
        &bytes,
        Decoded::Frame {
            meta,
            frame_bytes: frame_bytes(5),
        },
    );
}

#[test]
fn reports_a_short_frame_as_incomplete() {
    let bytes = encoded(1, true, b"payload");
    check(
        &bytes[..2],
        Decoded::Incomplete {
            frame_bytes: HEADER_BYTES,
        },
    );
    check(
        &bytes[..HEADER_BYTES],
        Decoded::Incomplete {
            frame_bytes: bytes.len(),
        },
    );
    check(
        &bytes[..bytes.len() - 1],
        Decoded::Incomplete {
            frame_bytes: bytes.len(),
        },
    );
}

#[test]
fn rejects_a_flipped_payload_byte() {
    let mut bytes = encoded(1, true, b"payload");
    bytes[HEADER_BYTES + 3] ^= 0x40;
    check(&bytes, Decoded::Corrupt(Damage::BadChecksum));
}

#[test]
fn rejects_a_flipped_offset_byte() {
    let mut bytes = encoded(1, true, b"payload");
    bytes[9] ^= 0x01;
    check(&bytes, Decoded::Corrupt(Damage::BadChecksum));
}

#[test]
fn rejects_lengths_outside_the_allowed_range() {
    check(
        &[0, 0, 0, 0, 1, 2, 3],
        Decoded::Corrupt(Damage::BadLength(0)),
    );
    check(
        &16u32.to_le_bytes(),
        Decoded::Corrupt(Damage::BadLength(16)),
    );
    check(
        &u32::MAX.to_le_bytes(),
        Decoded::Corrupt(Damage::BadLength(u32::MAX)),
    );
}

#[test]
fn rejects_unknown_flags() {
    let mut bytes = encoded(1, true, b"x");
    bytes[24] = 0b10;
    let crc = crc32c::crc32c(&bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    check(&bytes, Decoded::Corrupt(Damage::UnknownFlags(0b10)));
}

#[test]
fn all_zero_bytes_are_not_a_frame() {
    check(&[0; 64], Decoded::Corrupt(Damage::BadLength(0)));
}
