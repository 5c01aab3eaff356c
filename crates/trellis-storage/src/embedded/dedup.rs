//! The embedded backend's memory of the keys its topics stored recently.
//!
//! A key is *pending* while an append that carries it is on its way to the log (a second append
//! of the key waits for it), then *stored* with its offset and time. A stored key is forgotten
//! once older than the window, or when the store remembers more than `max_entries` keys over all
//! topics, oldest first. Keys are filed under the topic's incarnation (a number given to each
//! topic opened or created), so a topic deleted and created again shares no key with its
//! predecessor, whose keys simply age out. The index lives in memory only; after a restart it is
//! rebuilt from the log's records with the store's `KeyOf`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::watch;

use crate::DedupKey;

/// A key within one topic incarnation.
pub(super) type Slot = (u64, DedupKey);

/// What a look-up found.
#[derive(Debug)]
pub(super) enum Lookup {
    Absent,
    Stored(u64),
    Pending(watch::Receiver<()>),
}

/// The index's memory is most of what deduplication costs (a million keys at the default
/// `max_entries`), so a stored key is kept once, in the age queue (40 bytes), and the hash
/// table holds only its sequence number there (8 bytes and a control byte per bucket). A map
/// from slot to entry, with a second copy of the slot in the age queue, took about 180 bytes
/// per key.
#[derive(Debug)]
pub(super) struct DedupIndex {
    window_ms: i64,
    max_entries: usize,
    /// Keys an append holds while it is on its way to the log; few at any time.
    pending: HashMap<Slot, watch::Receiver<()>>,
    /// Sequence numbers (in `by_age`) of the stored keys, found by the key's own bits: a key is
    /// a digest already, so it needs no hashing.
    stored: HashTable<u64>,
    /// Stored keys in the order they were stored, which is also (up to clock steps) their age
    /// order. The front's sequence number is `front_seq`.
    by_age: AgeQueue,
    front_seq: u64,
}

/// One stored key. The key is two words rather than a `u128`, whose 16-byte alignment would
/// pad the entry to 48 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Aged {
    at_ms: i64,
    incarnation: u64,
    key: [u64; 2],
    offset: u64,
}

impl Aged {
    fn slot(&self) -> Slot {
        (
            self.incarnation,
            DedupKey(u128::from(self.key[0]) | (u128::from(self.key[1]) << 64)),
        )
    }
}

/// The table's hash of a slot: the key's low bits, mixed with the incarnation so that one key
/// in two incarnations lands apart.
fn hash(slot: &Slot) -> u64 {
    (slot.1.0 as u64) ^ slot.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl DedupIndex {
    pub(super) fn new(window: Duration, max_entries: usize) -> DedupIndex {
        DedupIndex {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max_entries,
            pending: HashMap::new(),
            stored: HashTable::new(),
            by_age: AgeQueue::default(),
            front_seq: 0,
        }
    }

    /// A zero window or capacity turns deduplication off: every key is new.
    pub(super) fn enabled(&self) -> bool {
        self.window_ms > 0 && self.max_entries > 0
    }

    pub(super) fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Stored keys remembered, over all topics.
    pub(super) fn len(&self) -> usize {
        self.by_age.len()
    }

    /// About how many bytes of heap the index holds: the hash table's buckets (a sequence
    /// number and a control byte each, counted by capacity), the age queue's slots (by capacity
    /// too) and the pending keys. Every entry has the same size whatever its event, since a key
    /// is a digest.
    pub(super) fn memory_bytes(&self) -> usize {
        self.stored.capacity() * (size_of::<u64>() + 1)
            + self.by_age.capacity() * size_of::<Aged>()
            + self.pending.capacity() * (size_of::<(Slot, watch::Receiver<()>)>() + 1)
    }

    pub(super) fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub(super) fn lookup(&mut self, key: &Slot, now_ms: i64) -> Lookup {
        self.expire(now_ms);
        if let Some(waiter) = self.pending.get(key) {
            return Lookup::Pending(waiter.clone());
        }
        let horizon = now_ms.saturating_sub(self.window_ms);
        match self.find(key) {
            Some(aged) if aged.at_ms > horizon => Lookup::Stored(aged.offset),
            _ => Lookup::Absent,
        }
    }

    pub(super) fn reserve(&mut self, key: Slot, waiter: watch::Receiver<()>) {
        self.pending.insert(key, waiter);
    }

    /// Drops the reservation of `key` if `waiter`'s append still holds it.
    pub(super) fn abandon(&mut self, key: &Slot, waiter: &watch::Receiver<()>) {
        if self
            .pending
            .get(key)
            .is_some_and(|held| held.same_channel(waiter))
        {
            self.pending.remove(key);
        }
    }

    /// The reserved key was stored at `offset`.
    pub(super) fn store(&mut self, key: Slot, offset: u64, at_ms: i64) {
        self.pending.remove(&key);
        let seq = self.front_seq + self.by_age.len() as u64;
        let (lo, hi) = (key.1.0 as u64, (key.1.0 >> 64) as u64);
        self.by_age.push_back(Aged {
            at_ms,
            incarnation: key.0,
            key: [lo, hi],
            offset,
        });
        let (by_age, front_seq) = (&self.by_age, self.front_seq);
        let at = |seq: u64| by_age.get(seq - front_seq);
        // An older copy of the key (past the window, not yet expired) gives way to this one.
        match self.stored.find_mut(hash(&key), |held| {
            at(*held).is_some_and(|aged| aged.slot() == key)
        }) {
            Some(held) => *held = seq,
            None => {
                self.stored.insert_unique(hash(&key), seq, |held| {
                    at(*held).map_or(0, |aged| hash(&aged.slot()))
                });
            }
        }
        self.expire(at_ms);
    }

    /// A key read back from the log when the index is rebuilt; the first copy wins.
    pub(super) fn remember(&mut self, key: Slot, offset: u64, at_ms: i64) {
        if self.find(&key).is_some() {
            return;
        }
        self.store(key, offset, at_ms);
    }

    fn find(&self, key: &Slot) -> Option<&Aged> {
        let seq = self.stored.find(hash(key), |held| {
            self.by_age
                .get(*held - self.front_seq)
                .is_some_and(|aged| aged.slot() == *key)
        })?;
        self.by_age.get(*seq - self.front_seq)
    }

    fn expire(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        while let Some(&aged) = self.by_age.front() {
            if aged.at_ms > horizon && self.by_age.len() <= self.max_entries {
                break;
            }
            let seq = self.front_seq;
            // Its table entry goes with it, unless a newer copy of the key took the entry over.
            if let Ok(entry) = self
                .stored
                .find_entry(hash(&aged.slot()), |held| *held == seq)
            {
                entry.remove();
            }
            self.by_age.pop_front();
            self.front_seq += 1;
        }
    }
}

/// Keys stored in one chunk of the age queue.
const CHUNK: usize = 4096;

/// The stored keys in age order, in chunks of a fixed size. Growing it never moves more than one
/// chunk's header: a single `VecDeque` doubling under the index's lock would copy every entry
/// (tens of MB at a million keys) while every deduplicated append waits.
#[derive(Debug, Default)]
struct AgeQueue {
    chunks: VecDeque<VecDeque<Aged>>,
    len: usize,
}

impl AgeQueue {
    fn len(&self) -> usize {
        self.len
    }

    /// Entries the allocated chunks can hold.
    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    fn push_back(&mut self, aged: Aged) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push_back(aged),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(aged);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    fn front(&self) -> Option<&Aged> {
        self.chunks.front().and_then(VecDeque::front)
    }

    /// The entry `index` places from the front. Only the front chunk is ever popped from and
    /// only the back one pushed to, so every chunk between holds `CHUNK` entries.
    fn get(&self, index: u64) -> Option<&Aged> {
        let index = usize::try_from(index).ok()?;
        let first = self.chunks.front()?;
        if index < first.len() {
            return first.get(index);
        }
        let rest = index - first.len();
        self.chunks.get(1 + rest / CHUNK)?.get(rest % CHUNK)
    }

    fn pop_front(&mut self) -> Option<Aged> {
        let chunk = self.chunks.front_mut()?;
        let aged = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        if aged.is_some() {
            self.len -= 1;
        }
        aged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_queue_keeps_its_order_across_chunks() {
        let mut queue = AgeQueue::default();
        let key = |n: u64| Aged {
            at_ms: n as i64,
            incarnation: 0,
            key: [n, 0],
            offset: n,
        };
        for n in 0..(3 * CHUNK as u64 + 7) {
            queue.push_back(key(n));
        }
        assert_eq!(queue.len(), 3 * CHUNK + 7);
        for n in 0..(CHUNK as u64 + 3) {
            assert_eq!(queue.pop_front(), Some(key(n)));
        }
        // Pushing after pops from a chunk that is also the last one keeps the order.
        for n in (3 * CHUNK as u64 + 7)..(4 * CHUNK as u64) {
            queue.push_back(key(n));
        }
        let mut expected = CHUNK as u64 + 3;
        while let Some(aged) = queue.pop_front() {
            assert_eq!(aged, key(expected));
            expected += 1;
        }
        assert_eq!(expected, 4 * CHUNK as u64);
        assert_eq!((queue.len(), queue.capacity()), (0, 0));
        assert_eq!(queue.front(), None);
    }

    #[test]
    fn a_million_keys_take_under_64_bytes_each() {
        let mut index = DedupIndex::new(Duration::from_secs(600), 1_000_000);
        for n in 0..1_000_000u64 {
            let key = (
                1,
                crate::DedupKey(u128::from(n) * 0x9e37_79b9_7f4a_7c15_u128),
            );
            index.store(key, n, 1);
        }
        assert_eq!(index.len(), 1_000_000);
        let per_key = index.memory_bytes() / index.len();
        assert!(per_key < 64, "{per_key} bytes per key");
        let key = (1, crate::DedupKey(12_345 * 0x9e37_79b9_7f4a_7c15_u128));
        assert!(matches!(index.lookup(&key, 2), Lookup::Stored(12_345)));
    }

    /// What the index must answer, kept the plain way: every stored copy in order, the newest
    /// copy of a key winning.
    #[derive(Default)]
    struct Model {
        stored: Vec<(Slot, u64, i64)>,
        pending: std::collections::HashSet<Slot>,
    }

    impl Model {
        fn lookup(&self, key: &Slot, now_ms: i64, window_ms: i64, max: usize) -> Option<u64> {
            let horizon = now_ms.saturating_sub(window_ms);
            let live: Vec<&(Slot, u64, i64)> = self.stored.iter().collect();
            let kept = &live[live.len().saturating_sub(max)..];
            // Expiry goes in order and stops at the first live entry.
            let first_live = kept
                .iter()
                .position(|(_, _, at)| *at > horizon)
                .unwrap_or(kept.len());
            kept[first_live..]
                .iter()
                .rev()
                .find(|(slot, _, _)| slot == key)
                .filter(|(_, _, at)| *at > horizon)
                .map(|(_, offset, _)| *offset)
        }
    }

    proptest::proptest! {
        #[test]
        fn the_index_answers_as_the_plain_model(
            ops in proptest::collection::vec((0u8..4, 0u64..2, 0u128..12, 0i64..3), 1..300),
        ) {
            let (window_ms, max) = (20, 16);
            let mut index = DedupIndex::new(Duration::from_millis(20), max);
            let mut model = Model::default();
            let mut now = 0i64;
            let mut offset = 0u64;
            let (_tx, waiter) = watch::channel(());
            for (op, incarnation, key, step) in ops {
                now += step;
                let slot = (incarnation, crate::DedupKey(key << 70 | key));
                match op {
                    0 | 1 => {
                        let found = index.lookup(&slot, now);
                        if model.pending.contains(&slot) {
                            proptest::prop_assert!(matches!(found, Lookup::Pending(_)));
                        } else {
                            let expected = model.lookup(&slot, now, window_ms, max);
                            match found {
                                Lookup::Stored(at) => proptest::prop_assert_eq!(Some(at), expected),
                                Lookup::Absent => proptest::prop_assert_eq!(None, expected),
                                Lookup::Pending(_) => proptest::prop_assert!(false, "pending"),
                            }
                            if expected.is_none() {
                                index.reserve(slot, waiter.clone());
                                model.pending.insert(slot);
                            }
                        }
                    }
                    2 if model.pending.remove(&slot) => {
                        index.store(slot, offset, now);
                        model.stored.push((slot, offset, now));
                        offset += 1;
                    }
                    _ if model.pending.remove(&slot) => index.abandon(&slot, &waiter),
                    _ => {}
                }
                proptest::prop_assert!(index.len() <= max);
            }
        }
    }
}
