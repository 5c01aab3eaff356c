use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::{DedupIndex, DedupKey, Reservation, Ticket};

const WINDOW: Duration = Duration::from_millis(1_000);

fn index(max_entries: usize) -> DedupIndex<u32> {
    DedupIndex::new(WINDOW, max_entries)
}

fn reserve(index: &mut DedupIndex<u32>, topic: &str, key: &DedupKey, now: i64) -> Option<Ticket> {
    match index.reserve(topic, key, now, || 7) {
        (Reservation::Reserved, ticket) => ticket,
        (other, _) => panic!("expected a reservation, got {other:?}"),
    }
}

#[test]
fn keys_do_not_collide_across_the_source_id_split() {
    assert_ne!(DedupKey::new("/a", "bc"), DedupKey::new("/ab", "c"));
    assert_ne!(DedupKey::new("1:", "x"), DedupKey::new("", "1:x"));
    assert_eq!(DedupKey::new("/a", "b"), DedupKey::new("/a", "b"));
}

#[test]
fn a_stored_key_is_a_duplicate_within_the_window_only() {
    let mut index = index(10);
    let key = DedupKey::new("/s", "1");
    let ticket = reserve(&mut index, "t", &key, 0).expect("enabled");
    index.store("t", &key, ticket, 42, 0);
    assert_eq!(index.len(), 1);
    assert!(matches!(
        index.reserve("t", &key, 999, || 0).0,
        Reservation::Stored(42)
    ));
    // Another topic does not share the key.
    assert!(reserve(&mut index, "other", &key, 999).is_some());
    // At the window's end the key is new again.
    assert!(reserve(&mut index, "t", &key, 1_000).is_some());
}

#[test]
fn a_reserved_key_makes_others_wait_until_stored_or_abandoned() {
    let mut index = index(10);
    let key = DedupKey::new("/s", "1");
    let ticket = reserve(&mut index, "t", &key, 0).expect("enabled");
    assert!(matches!(
        index.reserve("t", &key, 0, || 0).0,
        Reservation::Pending(7)
    ));
    index.abandon("t", &key, ticket);
    let again = reserve(&mut index, "t", &key, 0).expect("free again");
    // A stale ticket changes nothing.
    index.abandon("t", &key, ticket);
    index.store("t", &key, ticket, 1, 0);
    assert!(matches!(
        index.reserve("t", &key, 0, || 0).0,
        Reservation::Pending(_)
    ));
    index.store("t", &key, again, 5, 0);
    assert!(matches!(
        index.reserve("t", &key, 0, || 0).0,
        Reservation::Stored(5)
    ));
    assert_eq!(index.len(), 1);
}

#[test]
fn the_oldest_keys_go_first_beyond_max_entries() {
    let mut index = index(3);
    for n in 0..5u64 {
        let key = DedupKey::new("/s", &n.to_string());
        let now = i64::try_from(n).expect("small");
        let ticket =
            reserve(&mut index, if n % 2 == 0 { "a" } else { "b" }, &key, now).expect("enabled");
        index.store(if n % 2 == 0 { "a" } else { "b" }, &key, ticket, n, now);
    }
    assert_eq!(index.len(), 3);
    assert!(reserve(&mut index, "a", &DedupKey::new("/s", "0"), 5).is_some());
    assert!(reserve(&mut index, "b", &DedupKey::new("/s", "1"), 5).is_some());
    assert!(matches!(
        index.reserve("a", &DedupKey::new("/s", "2"), 5, || 0).0,
        Reservation::Stored(2)
    ));
}

#[test]
fn remembering_keeps_the_first_offset_and_skips_expired_records() {
    let mut index = index(10);
    let key = DedupKey::new("/s", "1");
    index.remember("t", key, 3, 500, 1_000);
    index.remember("t", key, 9, 600, 1_000);
    index.remember("t", DedupKey::new("/s", "old"), 1, 0, 1_000);
    assert_eq!(index.len(), 1);
    assert!(matches!(
        index.reserve("t", &key, 1_000, || 0).0,
        Reservation::Stored(3)
    ));
}

#[test]
fn forgetting_a_topic_drops_its_keys() {
    let mut index = index(10);
    let key = DedupKey::new("/s", "1");
    index.remember("t", key, 3, 500, 500);
    index.remember("u", key, 4, 500, 500);
    index.forget_topic("t");
    assert_eq!(index.len(), 1);
    assert!(reserve(&mut index, "t", &key, 600).is_some());
}

#[test]
fn a_zero_window_disables_everything() {
    let mut index: DedupIndex<u32> = DedupIndex::new(Duration::ZERO, 10);
    let key = DedupKey::new("/s", "1");
    assert!(!index.enabled());
    assert!(matches!(
        index.reserve("t", &key, 0, || 0),
        (Reservation::Reserved, None)
    ));
    index.remember("t", key, 1, 0, 0);
    assert_eq!(index.len(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    /// Reserve a key and store it at the next offset, `advance` ms later than the last op.
    Publish { key: u8, advance: u16 },
    /// Reserve a key and abandon it.
    Fail { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, 0u16..400).prop_map(|(key, advance)| Op::Publish { key, advance }),
        1 => (0u8..12).prop_map(|key| Op::Fail { key }),
    ]
}

proptest! {
    /// Against a model that remembers every store forever: a key the index calls a duplicate
    /// was stored within the window at exactly that offset (never a wrong answer), the index
    /// never holds more than `max_entries`, and with room to spare it forgets nothing inside
    /// the window.
    #[test]
    fn agrees_with_a_model(ops in proptest::collection::vec(op(), 1..200), max_entries in 1usize..16) {
        let mut index = index(max_entries);
        // key -> (first offset of the current window, stored at)
        let mut model: HashMap<u8, (u64, i64)> = HashMap::new();
        let mut now = 0i64;
        let mut next_offset = 0u64;
        for op in ops {
            match op {
                Op::Publish { key, advance } => {
                    now += i64::from(advance);
                    let dedup_key = DedupKey::new("/s", &key.to_string());
                    let expected = model
                        .get(&key)
                        .filter(|(_, at)| *at > now - 1_000)
                        .map(|(offset, _)| *offset);
                    match index.reserve("t", &dedup_key, now, || 0) {
                        (Reservation::Stored(offset), _) => {
                            prop_assert_eq!(Some(offset), expected);
                        }
                        (Reservation::Reserved, Some(ticket)) => {
                            if max_entries >= 12 {
                                prop_assert_eq!(expected, None);
                            }
                            index.store("t", &dedup_key, ticket, next_offset, now);
                            model.insert(key, (next_offset, now));
                            next_offset += 1;
                        }
                        (other, _) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Fail { key } => {
                    let dedup_key = DedupKey::new("/s", &key.to_string());
                    if let (Reservation::Reserved, Some(ticket)) =
                        index.reserve("t", &dedup_key, now, || 0)
                    {
                        index.abandon("t", &dedup_key, ticket);
                    }
                }
            }
            prop_assert!(index.len() <= max_entries);
        }
    }
}

/// An entry holds a fixed-size digest, never the id: 1000 entries cost the same whether their
/// ids are 8 bytes or 10 KiB (10 MB of ids in all), and well under 256 bytes each.
#[test]
fn an_entry_costs_the_same_memory_whatever_the_size_of_its_id() {
    assert_eq!(std::mem::size_of::<DedupKey>(), 16);
    let fill = |id_len: usize| {
        let mut index = index(10_000);
        for n in 0..1000u64 {
            let key = DedupKey::new("/s", &format!("{n:0>id_len$}"));
            let ticket = reserve(&mut index, "t", &key, 0).expect("enabled");
            index.store("t", &key, ticket, n, 0);
        }
        assert_eq!(index.len(), 1000);
        index.memory_bytes()
    };
    let short_ids = fill(8);
    let long_ids = fill(10 * 1024);
    assert_eq!(short_ids, long_ids);
    assert!(long_ids < 1000 * 256, "{long_ids} bytes for 1000 entries");
}
