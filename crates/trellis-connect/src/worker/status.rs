//! A worker's status, shared with whoever shows it (the REST API, the standalone command)
//! and readable while the worker runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::offsets::{OffsetWriter, OffsetWriterStats};

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Reading its offsets and starting its source and destination.
    Starting,
    Running,
    /// Records are waiting to be retried: the destination failed in a way that may pass (it is
    /// unreachable, unavailable, overloaded). The worker polls nothing new meanwhile.
    Waiting(String),
    /// Stopped by its error policy or a failed start; the reason. Offsets are committed up to
    /// the acknowledged prefix, so a new worker resumes at the failed record.
    Failed(String),
    Stopped,
}

/// The record counts of a worker since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub polled: u64,
    /// Ended with success at the destination: published (a source) or put (a sink).
    pub published: u64,
    /// Failed for good: skipped, dead-lettered or stopping the worker.
    pub failed: u64,
    /// Failed for good and skipped under `errors.tolerance = all` (without a dead-letter
    /// destination).
    pub skipped: u64,
    /// Failed for good and written to the dead-letter destination.
    pub dead_lettered: u64,
    /// Times a record was handed to the destination again after a failure that may pass.
    pub retried: u64,
}

/// See the module docs. Made by the worker; get it with `SourceWorker::status`.
#[derive(Debug)]
pub struct WorkerStatus {
    state: Mutex<WorkerState>,
    last_error: Mutex<Option<String>>,
    polled: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
    writer: OffsetWriter,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one assignment, so a poisoned value is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WorkerStatus {
    pub(crate) fn new(writer: OffsetWriter) -> WorkerStatus {
        WorkerStatus {
            state: Mutex::new(WorkerState::Starting),
            last_error: Mutex::new(None),
            polled: AtomicU64::new(0),
            published: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            writer,
        }
    }

    pub fn state(&self) -> WorkerState {
        lock(&self.state).clone()
    }

    /// The last error the worker met (a failed put, a record that failed, a failed start),
    /// kept after the worker recovered from it.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    pub fn counters(&self) -> WorkerCounters {
        WorkerCounters {
            polled: self.polled.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }

    /// Offset commits, failed commits and refused `begin_flush` calls.
    pub fn offsets(&self) -> OffsetWriterStats {
        self.writer.stats()
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        *lock(&self.state) = state;
    }

    pub(crate) fn set_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub(crate) fn add_polled(&self, n: u64) {
        self.polled.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_retried(&self, n: u64) {
        self.retried.fetch_add(n, Ordering::Relaxed);
    }
}
