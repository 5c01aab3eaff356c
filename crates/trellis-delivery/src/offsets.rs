//! Which offset may be committed when records end out of order: only the contiguous prefix of
//! records that ended (delivered or dead-lettered). After a crash, the records that were in
//! flight are delivered again, and nothing after the committed offset is skipped. The connector
//! runtime uses the same rule for its source offsets, as Kafka Connect's `SubmittedRecords` does.
//!
//! The tracker remembers only the offsets still in flight, so its memory is O(in flight)
//! however far ahead of a slow record the others have ended: an offset below the tracking
//! frontier that is not in flight has ended, by construction.
//!
//! This module does no I/O and knows nothing of time: committing the position, and how often,
//! is the caller's business.

use std::collections::BTreeSet;

/// The committable position of one partition's (or one source's) stream of records.
///
/// Offsets are handed out in increasing order with [`OffsetTracker::track`] and end in any
/// order with [`OffsetTracker::complete`]; [`OffsetTracker::committable`] is the first offset
/// that has not ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetTracker {
    /// Tracked offsets that have not ended. Ordered, so the smallest is the committable position.
    in_flight: BTreeSet<u64>,
    /// The smallest offset `track` accepts: one past the last tracked offset, or the resume
    /// position. Everything below it that is not in `in_flight` has ended.
    frontier: u64,
}

/// A call that breaks the tracker's contract; each one is a bug in the caller, and the tracker
/// is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetError {
    /// `track` was given an offset that is not above every offset tracked before, or is below
    /// the resume position.
    #[error(
        "offset {offset} tracked out of order; the next offset must be at least {expected_at_least}"
    )]
    OutOfOrder { offset: u64, expected_at_least: u64 },
    /// `track` was given `u64::MAX`: the position after it cannot be represented.
    #[error("offset {offset} cannot be tracked: it is the largest possible offset")]
    Exhausted { offset: u64 },
    /// `complete` was given an offset that was never handed out.
    #[error("offset {offset} completed but never tracked")]
    NotTracked { offset: u64 },
    /// `complete` was given an offset that has already ended: completed before, skipped over as
    /// a gap, or below the resume position.
    #[error("offset {offset} completed but it has already ended")]
    AlreadyEnded { offset: u64 },
}

impl OffsetTracker {
    /// A tracker resuming at `next`: the first offset that has not ended, i.e. the committed
    /// position a restart resumes from. Every offset below it counts as ended.
    pub fn new(next: u64) -> Self {
        OffsetTracker {
            in_flight: BTreeSet::new(),
            frontier: next,
        }
    }

    /// Records that `offset` was handed out for delivery. Each offset must be larger than every
    /// offset tracked before and at least the resume position.
    ///
    /// Offsets skipped between two tracked ones count as ended: retention or compaction removed
    /// them from the log, so no record will ever be handed out for them, and waiting for them
    /// would pin the committed offset forever. Tracking past a gap therefore moves
    /// [`OffsetTracker::committable`] over it when nothing earlier is in flight.
    pub fn track(&mut self, offset: u64) -> Result<(), OffsetError> {
        if offset < self.frontier {
            return Err(OffsetError::OutOfOrder {
                offset,
                expected_at_least: self.frontier,
            });
        }
        let Some(frontier) = offset.checked_add(1) else {
            return Err(OffsetError::Exhausted { offset });
        };
        self.frontier = frontier;
        self.in_flight.insert(offset);
        Ok(())
    }

    /// Marks a tracked offset as ended (delivered or dead-lettered). Returns the new
    /// committable position if this moved it, `None` if an earlier offset is still in flight.
    pub fn complete(&mut self, offset: u64) -> Result<Option<u64>, OffsetError> {
        if offset >= self.frontier {
            return Err(OffsetError::NotTracked { offset });
        }
        let before = self.committable();
        if !self.in_flight.remove(&offset) {
            return Err(OffsetError::AlreadyEnded { offset });
        }
        let after = self.committable();
        Ok((after != before).then_some(after))
    }

    /// The first offset that has not ended: every offset below it has, and a restart resumes
    /// here. Never decreases.
    pub fn committable(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.frontier)
    }

    /// How many tracked offsets have not ended yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests;
