//! Which source offsets may be committed: per partition, records are submitted in order and
//! acknowledged in any order, and only the contiguous prefix of acknowledged records counts.
//! A record still unacknowledged at the head of a partition holds back that partition only.
//!
//! Memory is O(records in flight): an acknowledgement that extends the prefix drops the
//! acknowledged head records at once and keeps just the offset they lead to.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::position::{Offset, Partition, Position};

/// The receipt for a submitted record, handed back to [`SubmittedRecords::ack`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubmittedRecord {
    partition: Partition,
    offset: Offset,
    seq: u64,
}

impl SubmittedRecord {
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// The offset that becomes committable once this record and every earlier one of its
    /// partition are acknowledged.
    pub fn offset(&self) -> Offset {
        self.offset
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    offset: Offset,
    acked: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Submitted records not yet dropped, per partition, in submission order (so `seq` grows).
    pending: HashMap<Partition, VecDeque<Entry>>,
    /// Offsets the acknowledged prefix has reached since the last `take_committable`.
    committable: BTreeMap<Partition, Offset>,
    next_seq: u64,
    unacked: usize,
}

/// Submitted-record tracking, shared by the task that submits and the callbacks that acknowledge.
#[derive(Debug, Default)]
pub struct SubmittedRecords {
    state: Mutex<State>,
    all_acked: Notify,
}

impl SubmittedRecords {
    pub fn new() -> SubmittedRecords {
        SubmittedRecords::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that can unwind, so a panic elsewhere
        // while holding the lock must not take offset tracking down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a record at `position` was handed on; call it in the order records are
    /// polled, before they can be acknowledged.
    pub fn submit(&self, position: Position) -> SubmittedRecord {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unacked += 1;
        state
            .pending
            .entry(position.partition.clone())
            .or_default()
            .push_back(Entry {
                seq,
                offset: position.offset,
                acked: false,
            });
        SubmittedRecord {
            partition: position.partition,
            offset: position.offset,
            seq,
        }
    }

    /// Marks a submitted record acknowledged (durably published, or given up on by policy).
    /// Returns `false`, changing nothing, for a record already acknowledged or never submitted
    /// here: a duplicate callback must not move the prefix.
    pub fn ack(&self, record: &SubmittedRecord) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(deque) = state.pending.get_mut(&record.partition) else {
            return false;
        };
        let Ok(index) = deque.binary_search_by_key(&record.seq, |entry| entry.seq) else {
            return false;
        };
        let Some(entry) = deque.get_mut(index) else {
            return false;
        };
        if entry.acked {
            return false;
        }
        entry.acked = true;
        state.unacked -= 1;
        let mut reached = None;
        while deque.front().is_some_and(|entry| entry.acked) {
            reached = deque.pop_front().map(|entry| entry.offset);
        }
        if deque.is_empty() {
            state.pending.remove(&record.partition);
        }
        if let Some(offset) = reached {
            state.committable.insert(record.partition.clone(), offset);
        }
        if state.unacked == 0 {
            self.all_acked.notify_waiters();
        }
        true
    }

    /// The offsets the acknowledged prefixes reached since the last call, per partition: what
    /// to hand the offset writer. A partition whose head is unacknowledged is absent unless
    /// earlier acknowledgements moved it.
    pub fn take_committable(&self) -> BTreeMap<Partition, Offset> {
        std::mem::take(&mut self.lock().committable)
    }

    /// How many submitted records are not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.lock().unacked
    }

    /// How many records are held in memory (unacknowledged ones and the acknowledged ones
    /// queued behind them).
    pub fn held(&self) -> usize {
        self.lock().pending.values().map(VecDeque::len).sum()
    }

    /// Waits until every submitted record is acknowledged, for a clean stop. Returns `false` if
    /// `timeout` ran out first.
    pub async fn await_all_acked(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.all_acked.notified();
                tokio::pin!(notified);
                // Registered before the check, so an ack between the check and the await
                // still wakes this waiter.
                notified.as_mut().enable();
                if self.unacked() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: &str, offset: u64) -> Position {
        Position::new(partition, offset)
    }

    #[test]
    fn only_the_acknowledged_prefix_is_committable_and_a_head_blocks_its_partition_only() {
        let submitted = SubmittedRecords::new();
        let a1 = submitted.submit(pos("a", 10));
        let a2 = submitted.submit(pos("a", 20));
        let b1 = submitted.submit(pos("b", 5));
        assert!(submitted.ack(&a2));
        assert!(submitted.ack(&b1));
        let committable = submitted.take_committable();
        assert_eq!(committable.get(&Partition::new("a")), None);
        assert_eq!(committable.get(&Partition::new("b")), Some(&Offset(5)));
        assert!(submitted.ack(&a1));
        assert_eq!(
            submitted.take_committable().get(&Partition::new("a")),
            Some(&Offset(20))
        );
        assert_eq!(submitted.held(), 0);
        assert!(
            !submitted.ack(&a1),
            "a second ack of the same record is refused"
        );
    }

    #[tokio::test]
    async fn waiting_for_all_acks_ends_when_the_last_one_arrives_or_times_out() {
        let submitted = std::sync::Arc::new(SubmittedRecords::new());
        assert!(submitted.await_all_acked(Duration::from_millis(1)).await);
        let record = submitted.submit(pos("a", 1));
        assert!(!submitted.await_all_acked(Duration::from_millis(20)).await);
        let acker = {
            let submitted = submitted.clone();
            tokio::spawn(async move { submitted.ack(&record) })
        };
        assert!(submitted.await_all_acked(Duration::from_secs(30)).await);
        assert!(matches!(acker.await, Ok(true)));
    }
}
