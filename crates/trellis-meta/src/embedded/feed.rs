//! The embedded store's change feed: an in-memory history ring and the live watchers.
//!
//! The feed's mutex is also the lock that orders writes. A writer holds it from `begin_write`
//! through `commit` and then publishes its event before letting go, so the ring and every
//! watcher see commits in revision order. A new watcher snapshots the ring and registers its
//! live channel under the same lock, so replay and live events meet with no gap and no
//! duplicate.
//!
//! History is not persisted: after a reopen, only revisions after the reopened revision can be
//! watched. Older ones report `MetaError::Compacted`, as an etcd member does after compaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::mpsc;

use super::{EmbeddedError, EmbeddedOptions, blocking};
use crate::{MetaError, WatchEvent, WatchStream};

pub(super) struct Feed {
    // A std Mutex, not a tokio one: it is only taken inside blocking tasks and never held across
    // an `.await`. Writers hold it across their redb commit (including the fsync) on purpose.
    state: Mutex<FeedState>,
    watch_buffer: usize,
}

pub(super) struct FeedState {
    /// The store revision of the last committed write.
    revision: u64,
    /// The last `history_capacity` events, oldest first. Revisions are contiguous, because
    /// every revision after the empty store's is exactly one event.
    history: VecDeque<WatchEvent>,
    history_capacity: usize,
    /// Every event with a revision at or above this one is in `history` (or not yet written).
    retained_from: u64,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    start_revision: u64,
    sender: mpsc::Sender<WatchEvent>,
    /// Set, before `sender` is dropped, when the buffer was full. The stream then resumes from
    /// history instead of ending.
    lagged: Arc<AtomicBool>,
}

struct Subscription {
    replay: std::vec::IntoIter<WatchEvent>,
    receiver: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
    /// The revision the next yielded event must have at least.
    next_revision: u64,
}

impl Feed {
    pub(super) fn new(revision: u64, options: &EmbeddedOptions) -> Feed {
        Feed {
            state: Mutex::new(FeedState {
                revision,
                history: VecDeque::new(),
                history_capacity: options.history_capacity,
                retained_from: revision + 1,
                watchers: Vec::new(),
            }),
            watch_buffer: options.watch_buffer,
        }
    }

    /// Takes the lock that orders writes. Blocking: call it from a blocking task only.
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, FeedState>, EmbeddedError> {
        // A writer that panicked under the lock may have committed without publishing; serving
        // on would hand watchers a gap, so the store refuses instead.
        self.state.lock().map_err(|_| EmbeddedError::Poisoned)
    }

    fn subscribe(
        &self,
        prefix: &str,
        start_revision: Option<u64>,
    ) -> Result<Subscription, MetaError> {
        let mut state = self.lock()?;
        let next_revision = match start_revision {
            None => state.revision + 1,
            Some(requested) => {
                // Revision 1 is the empty store and carries no event, so asking for 0 or 1 is
                // asking for everything from the first write on.
                let first = requested.max(super::record::EMPTY_STORE_REVISION + 1);
                if first < state.retained_from {
                    return Err(MetaError::Compacted {
                        requested,
                        oldest: state.retained_from,
                    });
                }
                first
            }
        };
        let replay: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|event| {
                event.mod_revision() >= next_revision && event.key().starts_with(prefix)
            })
            .cloned()
            .collect();
        let (sender, receiver) = mpsc::channel(self.watch_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        state.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            start_revision: next_revision,
            sender,
            lagged: lagged.clone(),
        });
        Ok(Subscription {
            replay: replay.into_iter(),
            receiver,
            lagged,
            next_revision,
        })
    }
}

impl FeedState {
    /// Records a committed write. Call with the lock held since before the commit.
    pub(super) fn publish(&mut self, event: WatchEvent) {
        self.revision = event.mod_revision();
        self.history.push_back(event.clone());
        while self.history.len() > self.history_capacity {
            if let Some(evicted) = self.history.pop_front() {
                self.retained_from = evicted.mod_revision() + 1;
            }
        }
        self.watchers.retain(|watcher| watcher.offer(&event));
    }
}

impl Watcher {
    /// Hands the event to the watcher if it wants it. Returns false when the watcher is to be
    /// dropped: its stream is gone, or its buffer is full (then `lagged` is set first).
    fn offer(&self, event: &WatchEvent) -> bool {
        if self.sender.is_closed() {
            return false;
        }
        if event.mod_revision() < self.start_revision || !event.key().starts_with(&self.prefix) {
            return true;
        }
        match self.sender.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Opens a watch stream. The stream holds the feed weakly, so it ends once the store is dropped.
pub(super) async fn watch(
    feed: Arc<Feed>,
    prefix: String,
    start_revision: Option<u64>,
) -> Result<WatchStream, MetaError> {
    let weak_feed = Arc::downgrade(&feed);
    let subscription = subscribe(feed, prefix.clone(), start_revision).await?;
    let state = StreamState {
        feed: weak_feed,
        prefix,
        subscription,
        finished: false,
    };
    Ok(Box::pin(futures::stream::unfold(state, next_item)))
}

struct StreamState {
    feed: Weak<Feed>,
    prefix: String,
    subscription: Subscription,
    finished: bool,
}

async fn subscribe(
    feed: Arc<Feed>,
    prefix: String,
    start_revision: Option<u64>,
) -> Result<Subscription, MetaError> {
    // Subscribing takes the write lock, which a writer may hold through an fsync.
    blocking(move || feed.subscribe(&prefix, start_revision)).await
}

async fn next_item(mut state: StreamState) -> Option<(Result<WatchEvent, MetaError>, StreamState)> {
    if state.finished {
        return None;
    }
    loop {
        let subscription = &mut state.subscription;
        let event = match subscription.replay.next() {
            Some(event) => Some(event),
            None => subscription.receiver.recv().await,
        };
        if let Some(event) = event {
            subscription.next_revision = event.mod_revision() + 1;
            return Some((Ok(event), state));
        }
        // The sender is gone: either the store closed, or this watcher filled its buffer.
        if !subscription.lagged.load(Ordering::Acquire) {
            return None;
        }
        let feed = state.feed.upgrade()?;
        let next_revision = subscription.next_revision;
        tracing::warn!(
            message = "Metadata watcher fell behind its buffer; resuming from history.",
            prefix = %state.prefix,
            next_revision,
        );
        match subscribe(feed, state.prefix.clone(), Some(next_revision)).await {
            Ok(resumed) => state.subscription = resumed,
            Err(error) => {
                state.finished = true;
                return Some((Err(error), state));
            }
        }
    }
}
