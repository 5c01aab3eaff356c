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

use tokio::sync::watch;

use crate::DedupKey;

/// A key within one topic incarnation.
pub(super) type Slot = (u64, DedupKey);

#[derive(Debug)]
pub(super) enum Entry {
    /// An append holds the key; its channel closes when the append is stored or failed.
    Pending(watch::Receiver<()>),
    Stored {
        offset: u64,
        at_ms: i64,
    },
}

/// What a look-up found.
#[derive(Debug)]
pub(super) enum Lookup {
    Absent,
    Stored(u64),
    Pending(watch::Receiver<()>),
}

#[derive(Debug)]
pub(super) struct DedupIndex {
    window_ms: i64,
    max_entries: usize,
    entries: HashMap<Slot, Entry>,
    /// Stored keys in the order they were stored, which is also (up to clock steps) their age
    /// order: `(at_ms, slot, offset)`.
    by_age: AgeQueue,
}

impl DedupIndex {
    pub(super) fn new(window: Duration, max_entries: usize) -> DedupIndex {
        DedupIndex {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max_entries,
            entries: HashMap::new(),
            by_age: AgeQueue::default(),
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

    /// About how many bytes of heap the index holds: hash-map slots (entry and control byte,
    /// counted by capacity) and the age queue's slots (by capacity too). Every entry has the same
    /// size whatever its event, since a key is a digest.
    pub(super) fn memory_bytes(&self) -> usize {
        self.entries.capacity() * (size_of::<(Slot, Entry)>() + 1)
            + self.by_age.capacity() * size_of::<Aged>()
    }

    pub(super) fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub(super) fn lookup(&mut self, key: &Slot, now_ms: i64) -> Lookup {
        self.expire(now_ms);
        let horizon = now_ms.saturating_sub(self.window_ms);
        match self.entries.get(key) {
            Some(Entry::Stored { offset, at_ms }) if *at_ms > horizon => Lookup::Stored(*offset),
            Some(Entry::Pending(waiter)) => Lookup::Pending(waiter.clone()),
            Some(Entry::Stored { .. }) | None => Lookup::Absent,
        }
    }

    pub(super) fn reserve(&mut self, key: Slot, waiter: watch::Receiver<()>) {
        self.entries.insert(key, Entry::Pending(waiter));
    }

    /// Drops the reservation of `key` if `waiter`'s append still holds it.
    pub(super) fn abandon(&mut self, key: &Slot, waiter: &watch::Receiver<()>) {
        if matches!(self.entries.get(key), Some(Entry::Pending(held)) if held.same_channel(waiter))
        {
            self.entries.remove(key);
        }
    }

    /// The reserved key was stored at `offset`.
    pub(super) fn store(&mut self, key: Slot, offset: u64, at_ms: i64) {
        self.entries.insert(key, Entry::Stored { offset, at_ms });
        self.by_age.push_back((at_ms, key, offset));
        self.expire(at_ms);
    }

    /// A key read back from the log when the index is rebuilt; the first copy wins.
    pub(super) fn remember(&mut self, key: Slot, offset: u64, at_ms: i64) {
        if self.entries.contains_key(&key) {
            return;
        }
        self.store(key, offset, at_ms);
    }

    fn expire(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        while let Some(&(at_ms, key, offset)) = self.by_age.front() {
            if at_ms > horizon && self.by_age.len() <= self.max_entries {
                break;
            }
            self.by_age.pop_front();
            if matches!(self.entries.get(&key), Some(Entry::Stored { offset: held, .. }) if *held == offset)
            {
                self.entries.remove(&key);
            }
        }
    }
}

/// A stored key in the age queue: `(at_ms, slot, offset)`.
type Aged = (i64, Slot, u64);

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
        let key = |n: u64| (n as i64, (0, crate::DedupKey(u128::from(n))), n);
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
}
