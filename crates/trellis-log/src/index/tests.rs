use super::*;

fn entries() -> Vec<IndexEntry> {
    vec![
        IndexEntry {
            offset: 100,
            position: 0,
        },
        IndexEntry {
            offset: 104,
            position: 4100,
        },
        IndexEntry {
            offset: 109,
            position: 8300,
        },
    ]
}

fn encoded(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(entries, &mut out);
    out
}

#[track_caller]
fn check(bytes: &[u8], segment_len: u64, expected: &[IndexEntry]) {
    assert_eq!(parse(bytes, 100, segment_len), expected);
}

#[test]
fn roundtrips_entries() {
    check(&encoded(&entries()), 10_000, &entries());
}

#[test]
fn ignores_a_torn_last_entry() {
    let bytes = encoded(&entries());
    check(&bytes[..bytes.len() - 3], 10_000, &entries()[..2]);
}

#[test]
fn stops_at_a_corrupt_entry() {
    let mut bytes = encoded(&entries());
    bytes[ENTRY_BYTES + 2] ^= 0xff;
    check(&bytes, 10_000, &entries()[..1]);
}

#[test]
fn drops_entries_past_the_end_of_the_segment() {
    check(&encoded(&entries()), 8300, &entries()[..2]);
}

#[test]
fn rejects_an_index_for_another_base_offset() {
    let other = [IndexEntry {
        offset: 7,
        position: 0,
    }];
    check(&encoded(&other), 10_000, &[]);
}

#[test]
fn rejects_entries_that_go_backwards() {
    let mut backwards = entries();
    backwards[2] = IndexEntry {
        offset: 103,
        position: 8300,
    };
    check(&encoded(&backwards), 10_000, &entries()[..2]);
}

#[test]
fn garbage_parses_to_nothing() {
    check(&[0xa5; 200], 10_000, &[]);
}

#[test]
fn floor_finds_the_last_entry_at_or_before() {
    let entries = entries();
    assert_eq!(floor(&entries, 99), None);
    assert_eq!(floor(&entries, 100), Some(entries[0]));
    assert_eq!(floor(&entries, 108), Some(entries[1]));
    assert_eq!(floor(&entries, 500), Some(entries[2]));
}

#[test]
fn wants_an_entry_every_interval() {
    assert!(wants_entry(None, 0));
    let last = IndexEntry {
        offset: 0,
        position: 0,
    };
    assert!(!wants_entry(Some(&last), INDEX_INTERVAL_BYTES - 1));
    assert!(wants_entry(Some(&last), INDEX_INTERVAL_BYTES));
}
