//! Which `(source, id)` pairs each topic stored recently: the bookkeeping behind duplicate
//! detection on publish. Pure data, no I/O and no clock: callers pass `now` in milliseconds since
//! the Unix epoch (the log's record timestamps use the same clock).
//!
//! A key is first *reserved* (a publish is about to append it), then *stored* with the offset it
//! got, or *abandoned* if the append failed. A reserved key carries a waiter handle `W` that a
//! second publisher of the same key clones and awaits, so two concurrent publishes of one event
//! store it once.
//!
//! Memory is bounded twice over: a stored key is forgotten once it is older than the window, and
//! when more than `max_entries` keys are stored (over all topics) the oldest are forgotten first.
//! Reserved keys are not counted: there are only as many as events in flight, which the request
//! limits bound. An entry's size does not depend on the event: a key is a 16-byte digest of
//! (`source`, `id`), not the strings themselves.
//!
//! Two different pairs with the same digest would make the second a false duplicate. The
//! digest is SHA-256, keyed with a secret drawn when the process starts and cut to 128 bits, so
//! nobody can pick pairs that collide; for random pairs the birthday bound over 1,000,000
//! remembered keys is n^2 / 2^129 = 10^12 / 6.8 * 10^38, about 1.5 * 10^-27. Digests are never
//! stored: after a restart the index is rebuilt from the log under the new process's key.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The secret that keys every digest of this process.
static DIGEST_KEY: LazyLock<[u8; 16]> = LazyLock::new(rand::random);

/// A digest of `(source, id)`: the same pair always gives the same key within a process, and
/// different pairs collide with negligible probability (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DedupKey(u128);

impl DedupKey {
    pub(crate) fn new(source: &str, id: &str) -> DedupKey {
        let mut hasher = Sha256::new();
        hasher.update(*DIGEST_KEY);
        // The source's length up front makes the split between source and id unambiguous.
        hasher.update((source.len() as u64).to_le_bytes());
        hasher.update(source.as_bytes());
        hasher.update(id.as_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        DedupKey(u128::from_le_bytes(first))
    }
}

/// What a reservation found.
#[derive(Debug)]
pub(crate) enum Reservation<W> {
    /// The key is now reserved for the caller, who must `store` or `abandon` it.
    Reserved,
    /// Stored within the window at this offset: a duplicate.
    Stored(u64),
    /// Another publish holds the key; await the handle, then reserve again.
    Pending(W),
}

#[derive(Debug)]
enum Entry<W> {
    Pending { ticket: u64, waiter: W },
    Stored { offset: u64, at_ms: i64, seq: u64 },
}

/// Where a stored key sits in the age order.
#[derive(Debug)]
struct Aged {
    topic: Arc<str>,
    key: DedupKey,
}

#[derive(Debug)]
pub(crate) struct DedupIndex<W> {
    window_ms: i64,
    max_entries: usize,
    topics: HashMap<Arc<str>, HashMap<DedupKey, Entry<W>>>,
    /// Stored keys oldest first; `seq` breaks ties between equal times and names one entry.
    by_age: BTreeMap<(i64, u64), Aged>,
    next_seq: u64,
    next_ticket: u64,
}

/// Proof of a reservation, to `store` or `abandon` it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl<W: Clone> DedupIndex<W> {
    /// A zero `window` (or `max_entries`) disables deduplication: every key is new.
    pub(crate) fn new(window: Duration, max_entries: usize) -> DedupIndex<W> {
        DedupIndex {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max_entries,
            topics: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            next_ticket: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.window_ms > 0 && self.max_entries > 0
    }

    /// Stored keys remembered, over all topics.
    pub(crate) fn len(&self) -> usize {
        self.by_age.len()
    }

    /// About how many bytes of heap the index holds. Every entry has the same size, whatever
    /// its event: hash-map buckets (a slot and a control byte each, counted by capacity) and
    /// the age order's B-tree entries, counted twice since its nodes fill in time order and so
    /// stay about half full.
    pub(crate) fn memory_bytes(&self) -> usize {
        let topic_slot = size_of::<(Arc<str>, HashMap<DedupKey, Entry<W>>)>() + 1;
        let key_slot = size_of::<(DedupKey, Entry<W>)>() + 1;
        let aged = size_of::<((i64, u64), Aged)>();
        let keys: usize = self
            .topics
            .iter()
            .map(|(name, entries)| name.len() + entries.capacity() * key_slot)
            .sum();
        self.topics.capacity() * topic_slot + keys + self.by_age.len() * aged * 2
    }

    /// Looks `key` up in `topic`; when it is neither stored within the window nor reserved,
    /// reserves it with the waiter `make_waiter` builds and returns its ticket.
    pub(crate) fn reserve(
        &mut self,
        topic: &str,
        key: &DedupKey,
        now_ms: i64,
        make_waiter: impl FnOnce() -> W,
    ) -> (Reservation<W>, Option<Ticket>) {
        if !self.enabled() {
            return (Reservation::Reserved, None);
        }
        self.expire(now_ms);
        let ticket = self.next_ticket;
        let horizon = now_ms.saturating_sub(self.window_ms);
        let entries = self.topic_entries(topic);
        match entries.get(key) {
            Some(Entry::Stored { offset, at_ms, .. }) if *at_ms > horizon => {
                return (Reservation::Stored(*offset), None);
            }
            Some(Entry::Pending { waiter, .. }) => {
                return (Reservation::Pending(waiter.clone()), None);
            }
            // Absent, or stored too long ago (a later clock step can leave such an entry
            // behind the age order's front): reserve it afresh.
            Some(Entry::Stored { .. }) | None => {}
        }
        let previous = entries.insert(
            *key,
            Entry::Pending {
                ticket,
                waiter: make_waiter(),
            },
        );
        if let Some(Entry::Stored { at_ms, seq, .. }) = previous {
            self.by_age.remove(&(at_ms, seq));
        }
        self.next_ticket += 1;
        (Reservation::Reserved, Some(Ticket(ticket)))
    }

    /// The reserved key was appended at `offset`.
    pub(crate) fn store(
        &mut self,
        topic: &str,
        key: &DedupKey,
        ticket: Ticket,
        offset: u64,
        now_ms: i64,
    ) {
        let Some(entries) = self.topics.get_mut(topic) else {
            return;
        };
        if !matches!(entries.get(key), Some(Entry::Pending { ticket: held, .. }) if *held == ticket.0)
        {
            return;
        }
        entries.remove(key);
        self.insert_stored(topic, *key, offset, now_ms);
    }

    /// The reserved key was not appended; the next publisher may have it.
    pub(crate) fn abandon(&mut self, topic: &str, key: &DedupKey, ticket: Ticket) {
        let Some(entries) = self.topics.get_mut(topic) else {
            return;
        };
        if matches!(entries.get(key), Some(Entry::Pending { ticket: held, .. }) if *held == ticket.0)
        {
            entries.remove(key);
            if entries.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Remembers a key read back from the log at start-up. A key already known keeps the
    /// earlier offset unless that one has expired, since the first stored copy is the original.
    pub(crate) fn remember(
        &mut self,
        topic: &str,
        key: DedupKey,
        offset: u64,
        at_ms: i64,
        now_ms: i64,
    ) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        if !self.enabled() || at_ms <= horizon {
            return;
        }
        let known = self
            .topic_entries(topic)
            .get(&key)
            .is_some_and(|entry| match entry {
                Entry::Pending { .. } => true,
                Entry::Stored {
                    offset: known,
                    at_ms: known_at,
                    ..
                } => *known <= offset && *known_at > horizon,
            });
        if known {
            return;
        }
        if let Some(Entry::Stored { at_ms, seq, .. }) = self
            .topics
            .get_mut(topic)
            .and_then(|entries| entries.remove(&key))
        {
            self.by_age.remove(&(at_ms, seq));
        }
        self.insert_stored(topic, key, offset, at_ms);
        self.expire(now_ms);
    }

    /// Forgets a deleted topic: a topic created again under its name starts at offset 0.
    pub(crate) fn forget_topic(&mut self, topic: &str) {
        if let Some(entries) = self.topics.remove(topic) {
            for entry in entries.into_values() {
                if let Entry::Stored { at_ms, seq, .. } = entry {
                    self.by_age.remove(&(at_ms, seq));
                }
            }
        }
    }

    /// Drops stored keys older than the window, then the oldest beyond `max_entries`.
    pub(crate) fn expire(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        loop {
            let over_cap = self.by_age.len() > self.max_entries;
            let Some(entry) = self.by_age.first_entry() else {
                break;
            };
            let (at_ms, _) = *entry.key();
            if at_ms > horizon && !over_cap {
                break;
            }
            let aged = entry.remove();
            if let Some(entries) = self.topics.get_mut(&aged.topic) {
                entries.remove(&aged.key);
                if entries.is_empty() {
                    self.topics.remove(&aged.topic);
                }
            }
        }
    }

    fn insert_stored(&mut self, topic: &str, key: DedupKey, offset: u64, at_ms: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let topic: Arc<str> = match self.topics.get_key_value(topic) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(topic),
        };
        self.by_age.insert(
            (at_ms, seq),
            Aged {
                topic: Arc::clone(&topic),
                key,
            },
        );
        self.topics
            .entry(topic)
            .or_default()
            .insert(key, Entry::Stored { offset, at_ms, seq });
        if self.by_age.len() > self.max_entries {
            self.expire(i64::MIN);
        }
    }

    fn topic_entries(&mut self, topic: &str) -> &mut HashMap<DedupKey, Entry<W>> {
        let name: Arc<str> = match self.topics.get_key_value(topic) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(topic),
        };
        self.topics.entry(name).or_default()
    }
}

#[cfg(test)]
mod tests;
