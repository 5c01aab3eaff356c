//! The offset writer: stages offsets as records are acknowledged and flushes them to the store,
//! one flush at a time, without ever failing its caller.
//!
//! Lifecycle of a flush (Kafka Connect's `OffsetStorageWriter`, made non-fatal):
//! `write_offset` stages; `begin_flush` moves the staged offsets into a snapshot; `do_flush`
//! writes the snapshot in a task of its own and completes the flush, or cancels it on an error
//! or when it outlives the flush timeout. A cancel merges what was staged since over the
//! snapshot (newer offsets win), so the next flush retries everything not yet persisted.
//! Completions and cancels carry the flush id, so a late one for an older flush changes nothing.
//!
//! The store writes of successive flushes are chained: each waits for the previous one to
//! finish, even one that was cancelled by its timeout and is still running, so an older
//! snapshot can never land after a newer one and move a stored offset back.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::offsets::store::OffsetStore;
use crate::offsets::{ErrorChain, metrics as m};
use crate::position::{Offset, Partition};

/// How long a flush may take before it is cancelled and retried at the next commit.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Identifies one flush, from `begin_flush` to its completion or cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlushId(pub u64);

/// How a commit attempt ended. None of them is an error a worker must stop on: every offset
/// not persisted stays staged for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// The snapshot is in the store.
    Committed { partitions: usize },
    /// Nothing was staged; nothing to do.
    NothingStaged,
    /// Another flush is in progress; the staged offsets wait for the next attempt.
    Refused,
    /// The store failed; the snapshot was merged back into the staged offsets.
    Failed,
    /// The flush outlived its timeout; the snapshot was merged back into the staged offsets.
    TimedOut,
    /// The write ended after the flush had been cancelled; its offsets are staged again and
    /// written by the next flush.
    Superseded,
}

/// Counts of commit attempts since the writer was made, for a connector's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffsetWriterStats {
    pub commits: u64,
    pub failures: u64,
    pub begin_flush_refused: u64,
}

#[derive(Debug)]
struct Flushing {
    id: FlushId,
    snapshot: BTreeMap<Partition, Offset>,
    began: Instant,
    /// `do_flush` has handed the snapshot to a write; a second `do_flush` does nothing.
    writing: bool,
}

#[derive(Debug, Default)]
struct State {
    staged: BTreeMap<Partition, Offset>,
    flushing: Option<Flushing>,
    /// The id the next flush gets; bumped by every completion and cancel.
    next_id: u64,
    /// Resolves when the latest store write has ended (its sender is dropped then).
    last_write: Option<oneshot::Receiver<()>>,
}

enum Begin {
    Started,
    Refused,
    Empty,
}

#[derive(Debug)]
struct Inner {
    store: OffsetStore,
    flush_timeout: Duration,
    state: Mutex<State>,
    commits: AtomicU64,
    failures: AtomicU64,
    refused: AtomicU64,
}

/// Stages and flushes one connector's offsets. Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct OffsetWriter {
    inner: Arc<Inner>,
}

/// A flush handed to the store by [`OffsetWriter::do_flush`]. Awaiting it gives the outcome;
/// dropping it does not stop the flush, which completes or cancels itself either way.
#[derive(Debug)]
pub struct PendingFlush {
    id: FlushId,
    task: JoinHandle<FlushOutcome>,
}

impl PendingFlush {
    pub fn id(&self) -> FlushId {
        self.id
    }
}

impl Future for PendingFlush {
    type Output = FlushOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FlushOutcome> {
        // The task only ends without an outcome if the runtime is shutting down; the flush was
        // not confirmed then, and its offsets are still staged or in the store.
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|joined| joined.unwrap_or(FlushOutcome::Failed))
    }
}

impl OffsetWriter {
    pub fn new(store: OffsetStore, flush_timeout: Duration) -> OffsetWriter {
        OffsetWriter {
            inner: Arc::new(Inner {
                store,
                flush_timeout,
                state: Mutex::new(State::default()),
                commits: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    pub fn connector(&self) -> &str {
        self.inner.store.connector()
    }

    /// Stages an offset; a later offset for the same partition replaces an earlier one.
    pub fn write_offset(&self, partition: Partition, offset: Offset) {
        self.inner.lock().staged.insert(partition, offset);
    }

    /// Stages several offsets under one lock, so a flush sees all of them or none.
    pub fn write_offsets(&self, offsets: impl IntoIterator<Item = (Partition, Offset)>) {
        self.inner.lock().staged.extend(offsets);
    }

    /// Snapshots the staged offsets for a flush. Returns `false`, with a warning, when a flush
    /// is already in progress (the staged offsets wait for the next attempt), and `false` when
    /// nothing is staged. Never fails the caller.
    ///
    /// A flush older than the flush timeout that never finished (its caller never called
    /// `do_flush`, or its write is stuck) is cancelled here rather than blocking every later one.
    pub fn begin_flush(&self) -> bool {
        matches!(self.begin(), Begin::Started)
    }

    fn begin(&self) -> Begin {
        let mut state = self.inner.lock();
        if let Some(flushing) = &state.flushing {
            if flushing.began.elapsed() <= self.inner.flush_timeout {
                let id = flushing.id;
                drop(state);
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                m::begin_flush_refused(self.connector());
                tracing::warn!(
                    connector = self.connector(),
                    flush_id = id.0,
                    "offset flush already in progress; the staged offsets wait for the next commit"
                );
                return Begin::Refused;
            }
            let id = flushing.id;
            tracing::warn!(
                connector = self.connector(),
                flush_id = id.0,
                "an offset flush outlived its timeout without finishing; cancelling it"
            );
            Inner::cancel_locked(&mut state, id);
        }
        if state.staged.is_empty() {
            return Begin::Empty;
        }
        let snapshot = std::mem::take(&mut state.staged);
        let id = FlushId(state.next_id);
        state.flushing = Some(Flushing {
            id,
            snapshot,
            began: Instant::now(),
            writing: false,
        });
        Begin::Started
    }

    /// Writes the snapshot taken by `begin_flush` in a task of its own, on the current tokio
    /// runtime. Returns `None` when there is no flush to write (no `begin_flush`, or this flush
    /// is already being written) or no runtime to write it on (the flush is cancelled then).
    pub fn do_flush(&self) -> Option<PendingFlush> {
        let (id, snapshot, previous, done) = {
            let mut state = self.inner.lock();
            let flushing = state.flushing.as_mut()?;
            if flushing.writing {
                return None;
            }
            flushing.writing = true;
            let id = flushing.id;
            let snapshot = flushing.snapshot.clone();
            let (done, finished) = oneshot::channel::<()>();
            let previous = state.last_write.replace(finished);
            (id, snapshot, previous, done)
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                connector = self.connector(),
                flush_id = id.0,
                "no async runtime to flush offsets on; the offsets stay staged"
            );
            self.inner.cancel(id);
            return None;
        };
        let store = self.inner.store.clone();
        let write = runtime.spawn(async move {
            if let Some(previous) = previous {
                // Ok or closed: either way the previous write has ended.
                let _ = previous.await;
            }
            let written = store.put_all(&snapshot).await;
            drop(done);
            written.map(|()| snapshot.len())
        });
        let inner = self.inner.clone();
        let task = runtime.spawn(async move { inner.finish(id, write).await });
        Some(PendingFlush { id, task })
    }

    /// Cancels the flush in progress, if any: the snapshot goes back into the staged offsets,
    /// under anything staged since. Returns `false` if no flush was in progress.
    pub fn cancel_flush(&self) -> bool {
        let mut state = self.inner.lock();
        match state.flushing.as_ref().map(|flushing| flushing.id) {
            Some(id) => Inner::cancel_locked(&mut state, id),
            None => false,
        }
    }

    /// Cancels flush `id` if it is still the one in progress; a stale id is a no-op (`false`).
    pub fn cancel_flush_id(&self, id: FlushId) -> bool {
        self.inner.cancel(id)
    }

    /// The whole commit: `begin_flush`, then `do_flush`, then its outcome.
    pub async fn commit(&self) -> FlushOutcome {
        match self.begin() {
            Begin::Refused => return FlushOutcome::Refused,
            Begin::Empty => return FlushOutcome::NothingStaged,
            Begin::Started => {}
        }
        match self.do_flush() {
            Some(pending) => pending.await,
            None => FlushOutcome::Failed,
        }
    }

    pub fn is_flushing(&self) -> bool {
        self.inner.lock().flushing.is_some()
    }

    /// Every offset not yet known to be persisted: the snapshot in flight with the staged
    /// offsets over it.
    pub fn unflushed(&self) -> BTreeMap<Partition, Offset> {
        let state = self.inner.lock();
        let mut all = state
            .flushing
            .as_ref()
            .map(|flushing| flushing.snapshot.clone())
            .unwrap_or_default();
        all.extend(state.staged.iter().map(|(p, o)| (p.clone(), *o)));
        all
    }

    pub fn stats(&self) -> OffsetWriterStats {
        OffsetWriterStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            begin_flush_refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole, so a poisoned lock is still usable, and
        // offset tracking must not die with whichever thread panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connector(&self) -> &str {
        self.store.connector()
    }

    fn cancel(&self, id: FlushId) -> bool {
        Inner::cancel_locked(&mut self.lock(), id)
    }

    fn cancel_locked(state: &mut State, id: FlushId) -> bool {
        if state.flushing.as_ref().map(|flushing| flushing.id) != Some(id) {
            return false;
        }
        if let Some(flushing) = state.flushing.take() {
            let mut merged = flushing.snapshot;
            merged.append(&mut state.staged);
            state.staged = merged;
        }
        state.next_id += 1;
        true
    }

    fn complete(&self, id: FlushId) -> bool {
        let mut state = self.lock();
        if state.flushing.as_ref().map(|flushing| flushing.id) != Some(id) {
            return false;
        }
        state.flushing = None;
        state.next_id += 1;
        true
    }

    async fn finish(
        &self,
        id: FlushId,
        write: JoinHandle<Result<usize, crate::offsets::OffsetStoreError>>,
    ) -> FlushOutcome {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.flush_timeout, write).await {
            Ok(Ok(Ok(partitions))) => {
                if self.complete(id) {
                    FlushOutcome::Committed { partitions }
                } else {
                    FlushOutcome::Superseded
                }
            }
            Ok(Ok(Err(error))) => {
                tracing::warn!(
                    connector = self.connector(),
                    flush_id = id.0,
                    error = %ErrorChain(&error),
                    "offset flush failed; the offsets are retried at the next commit"
                );
                self.cancel(id);
                FlushOutcome::Failed
            }
            Ok(Err(join_error)) => {
                tracing::warn!(
                    connector = self.connector(),
                    flush_id = id.0,
                    error = %join_error,
                    "offset flush write ended abnormally; the offsets are retried at the next commit"
                );
                self.cancel(id);
                FlushOutcome::Failed
            }
            Err(_elapsed) => {
                tracing::warn!(
                    connector = self.connector(),
                    flush_id = id.0,
                    timeout_ms = u64::try_from(self.flush_timeout.as_millis()).unwrap_or(u64::MAX),
                    "offset flush timed out; the offsets are retried at the next commit"
                );
                self.cancel(id);
                FlushOutcome::TimedOut
            }
        };
        let elapsed = started.elapsed();
        match outcome {
            FlushOutcome::Committed { .. } => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                m::commit(self.connector(), elapsed);
            }
            FlushOutcome::Failed | FlushOutcome::TimedOut => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                m::commit_failure(self.connector(), elapsed);
            }
            FlushOutcome::Superseded | FlushOutcome::NothingStaged | FlushOutcome::Refused => {}
        }
        outcome
    }
}
