//! The producer's batch queue: records accumulate into batches by count, bytes and linger;
//! sealed batches wait in order; batches in flight keep their send order; and on a failure every
//! batch in flight goes back to the front, in its original order, before anything newer.
//!
//! Pure and generic over the record type, so the property tests can drive it with numbers and
//! check it against a model. It knows nothing of gRPC or of time beyond the instants it is given.

use std::collections::VecDeque;
use std::time::Instant;

/// When a batch is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// At most this many records per batch (at least 1).
    pub(crate) max_events: usize,
    /// A batch is sealed before a record would take it past this many bytes. A single record
    /// larger than this travels alone.
    pub(crate) max_bytes: usize,
}

/// One record of a batch with its encoded size.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) item: T,
    pub(crate) bytes: usize,
}

#[derive(Debug)]
struct Batch<T> {
    entries: Vec<Entry<T>>,
    bytes: usize,
    /// How many times this batch was sent and came back unanswered.
    resends: u32,
}

#[derive(Debug)]
struct InFlight<T> {
    id: u64,
    batch: Batch<T>,
    sent_at: Instant,
}

/// What [`BatchQueue::settle`] did with an answered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// No batch with that id is in flight: an answer from a stream that was given up, or a
    /// server bug. Nothing changed.
    Unknown,
    /// Every record of the batch is done; the batch is gone.
    Done,
    /// Some records must be sent again; they stay in flight, in place, until the caller calls
    /// [`BatchQueue::requeue_in_flight`].
    Retry,
}

#[derive(Debug)]
pub(crate) struct BatchQueue<T> {
    limits: BatchLimits,
    open: Vec<Entry<T>>,
    open_bytes: usize,
    open_since: Option<Instant>,
    /// Sealed batches, oldest (or resent) first.
    sealed: VecDeque<Batch<T>>,
    /// Sent batches not answered yet, in the order they were sent.
    in_flight: VecDeque<InFlight<T>>,
    next_id: u64,
}

impl<T> BatchQueue<T> {
    pub(crate) fn new(limits: BatchLimits) -> BatchQueue<T> {
        BatchQueue {
            limits: BatchLimits {
                max_events: limits.max_events.max(1),
                max_bytes: limits.max_bytes,
            },
            open: Vec::new(),
            open_bytes: 0,
            open_since: None,
            sealed: VecDeque::new(),
            in_flight: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Adds a record after every record pushed before it.
    pub(crate) fn push(&mut self, item: T, bytes: usize, now: Instant) {
        if !self.open.is_empty() && self.open_bytes.saturating_add(bytes) > self.limits.max_bytes {
            self.seal_open();
        }
        if self.open.is_empty() {
            self.open_since = Some(now);
        }
        self.open.push(Entry { item, bytes });
        self.open_bytes = self.open_bytes.saturating_add(bytes);
        if self.open.len() >= self.limits.max_events || self.open_bytes >= self.limits.max_bytes {
            self.seal_open();
        }
    }

    /// Seals the batch being filled, if any: its linger is over, or a flush wants it out.
    pub(crate) fn seal_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        self.sealed.push_back(Batch {
            entries: std::mem::take(&mut self.open),
            bytes: self.open_bytes,
            resends: 0,
        });
        self.open_bytes = 0;
        self.open_since = None;
    }

    /// When the first record of the batch being filled arrived.
    pub(crate) fn open_since(&self) -> Option<Instant> {
        self.open_since
    }

    /// Moves the next sealed batch in flight under a fresh id and returns it, or `None` when no
    /// batch is sealed.
    pub(crate) fn send_next(&mut self, now: Instant) -> Option<(u64, &[Entry<T>])> {
        let batch = self.sealed.pop_front()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.in_flight.push_back(InFlight {
            id,
            batch,
            sent_at: now,
        });
        self.in_flight
            .back()
            .map(|in_flight| (id, in_flight.batch.entries.as_slice()))
    }

    /// Settles the answered batch `id`: `outcome` gets each record in order and returns it back
    /// if the record must be sent again.
    pub(crate) fn settle(&mut self, id: u64, mut outcome: impl FnMut(T) -> Option<T>) -> Settled {
        let Some(position) = self.in_flight.iter().position(|batch| batch.id == id) else {
            return Settled::Unknown;
        };
        let in_flight = &mut self.in_flight[position];
        let mut retry = Vec::new();
        let mut retry_bytes = 0;
        for entry in std::mem::take(&mut in_flight.batch.entries) {
            if let Some(item) = outcome(entry.item) {
                retry_bytes += entry.bytes;
                retry.push(Entry {
                    item,
                    bytes: entry.bytes,
                });
            }
        }
        if retry.is_empty() {
            self.in_flight.remove(position);
            Settled::Done
        } else {
            in_flight.batch.entries = retry;
            in_flight.batch.bytes = retry_bytes;
            Settled::Retry
        }
    }

    /// Puts every batch in flight back at the front of the queue, in the order they were sent,
    /// to be sent again (under new ids) before any newer batch.
    pub(crate) fn requeue_in_flight(&mut self) -> usize {
        let n_batches = self.in_flight.len();
        while let Some(mut in_flight) = self.in_flight.pop_back() {
            in_flight.batch.resends = in_flight.batch.resends.saturating_add(1);
            self.sealed.push_front(in_flight.batch);
        }
        n_batches
    }

    /// Takes every batch in flight out of the queue for good, returning their records in send
    /// order: the stream they were on was refused permanently.
    pub(crate) fn drain_in_flight(&mut self) -> Vec<T> {
        self.in_flight
            .drain(..)
            .flat_map(|in_flight| in_flight.batch.entries)
            .map(|entry| entry.item)
            .collect()
    }

    /// Drops the records not sent yet for which `keep` is false (their callers already got an
    /// answer). Records in flight stay: the server may be storing them right now.
    pub(crate) fn retain_waiting(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for batch in &mut self.sealed {
            batch.entries.retain(|entry| keep(&entry.item));
            batch.bytes = batch.entries.iter().map(|entry| entry.bytes).sum();
        }
        self.sealed.retain(|batch| !batch.entries.is_empty());
        self.open.retain(|entry| keep(&entry.item));
        self.open_bytes = self.open.iter().map(|entry| entry.bytes).sum();
        if self.open.is_empty() {
            self.open_since = None;
        }
    }

    pub(crate) fn n_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub(crate) fn n_sealed(&self) -> usize {
        self.sealed.len()
    }

    /// When the oldest unanswered batch was sent.
    pub(crate) fn oldest_sent_at(&self) -> Option<Instant> {
        self.in_flight.iter().map(|batch| batch.sent_at).min()
    }

    /// Whether any batch that came back from a failed connection is still waiting or unanswered:
    /// recovery is over once none is.
    pub(crate) fn has_resent(&self) -> bool {
        self.sealed.iter().any(|batch| batch.resends > 0)
            || self.in_flight.iter().any(|batch| batch.batch.resends > 0)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty() && self.sealed.is_empty() && self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests;
