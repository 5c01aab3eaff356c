//! The writer threads, shared by every topic of a log.
//!
//! A topic with appends queued is *ready*. Ready topics wait in one FIFO queue; a pool thread
//! takes the first, gives it one turn (one group commit: everything the topic has queued, up to
//! the group limit, written at once and covered by one fsync, see `writer.rs`) and, if more
//! came meanwhile, puts it back at the end of the queue. So:
//! - a topic is on at most one thread at a time, and its appends are written in queue order;
//! - a busy topic gets one group per round and cannot starve trickle topics: an append waits
//!   at most for the groups of the topics ready before it, spread over the threads, while the
//!   busy topic's next group grows meanwhile (group commit adapts to the wait);
//! - an append still resolves only after the fsync of its own group, on its topic's file.
//!
//! The threads are plain OS threads, not Tokio workers: they block in `write` and `fsync`, and
//! on the shared runtime a writer had to wait for a free worker after every fsync before it
//! could ack the group and start the next (see ARCHITECTURE.md). Background fsyncs of
//! `Durability::Interval` are timers the threads wait on.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::Thread;
use std::time::Instant;

use crate::files::lock;
use crate::writer::Queue;

/// The default number of writer threads: a few, so one slow fsync does not hold up other
/// topics, while 10,000 topics still cost only these threads.
pub const DEFAULT_WRITER_THREADS: usize = 4;

/// Stack of a writer thread: its deepest path is encode + write + fsync, a few frames deep.
const WRITER_STACK_BYTES: usize = 256 * 1024;

pub(crate) struct WriterPool {
    shared: Arc<PoolShared>,
    n_threads: usize,
}

struct PoolShared {
    // std Mutex: held only to push or pop a ready topic, a timer or an idle thread, never
    // across I/O.
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Arc<TopicWriter>>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Threads parked for want of work, the most recently idle last. Work wakes that one: its
    /// caches are warm, and one busy topic keeps to one thread as it would on a thread of its
    /// own, instead of hopping to whichever thread has slept longest.
    idle: Vec<Thread>,
    n_started: usize,
    shutdown: bool,
}

/// A topic's writer as the pool sees it.
pub(crate) struct TopicWriter {
    /// In the ready queue or on a thread: nobody else may queue it.
    scheduled: AtomicBool,
    /// A background-fsync timer is pending for it.
    timer_armed: AtomicBool,
    // std Mutex: held by the one thread giving the topic its turn; `scheduled` keeps others away,
    // so it is never contended.
    queue: Mutex<Option<Queue>>,
}

struct Timer {
    deadline: Instant,
    topic: Weak<TopicWriter>,
}

impl WriterPool {
    pub(crate) fn new(n_threads: usize) -> WriterPool {
        WriterPool {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState::default()),
            }),
            n_threads: n_threads.max(1),
        }
    }

    /// Starts the threads if they are not running yet: on the first append, so that opening a
    /// log only to read it starts none.
    pub(crate) fn ensure_started(&self) -> std::io::Result<()> {
        let mut state = lock(&self.shared.state);
        while state.n_started < self.n_threads {
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name(format!("trellis-writer-{}", state.n_started))
                .stack_size(WRITER_STACK_BYTES)
                .spawn(move || shared.work())?;
            state.n_started += 1;
        }
        Ok(())
    }

    /// Hands a topic's queue to the pool.
    pub(crate) fn register(&self, queue: Queue) -> Arc<TopicWriter> {
        Arc::new(TopicWriter {
            scheduled: AtomicBool::new(false),
            timer_armed: AtomicBool::new(false),
            queue: Mutex::new(Some(queue)),
        })
    }

    /// Says that `topic` has something new in its queue (or that its handles are gone).
    pub(crate) fn notify(&self, topic: &Arc<TopicWriter>) {
        self.shared.schedule(topic);
    }
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        // Every topic handle is gone (each holds the pool); the threads finish what is ready,
        // the topics' last turns included, and exit.
        let mut state = lock(&self.shared.state);
        state.shutdown = true;
        for thread in state.idle.drain(..) {
            thread.unpark();
        }
    }
}

impl PoolShared {
    fn schedule(&self, topic: &Arc<TopicWriter>) {
        // SeqCst pairs with the thread's clear-then-recheck in `give_turn`: either it sees our
        // command, or we see `scheduled` cleared and queue the topic ourselves.
        if topic.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut state = lock(&self.state);
        state.ready.push_back(Arc::clone(topic));
        state.wake_one();
    }

    fn work(&self) {
        while let Some(topic) = self.next_ready() {
            while self.give_turn(&topic) {
                // More came meanwhile: to the back of the line if others wait, or straight on
                // here, without waking another thread to hand it over.
                let mut state = lock(&self.state);
                let timer_due = state
                    .timers
                    .peek()
                    .is_some_and(|Reverse(timer)| timer.deadline <= Instant::now());
                if !state.ready.is_empty() || timer_due {
                    state.ready.push_back(Arc::clone(&topic));
                    break;
                }
            }
        }
    }

    /// The next topic to serve, waiting for one (or for a timer) if none is ready. `None` once
    /// the pool is dropped and nothing is left.
    fn next_ready(&self) -> Option<Arc<TopicWriter>> {
        let mut state = lock(&self.state);
        loop {
            let now = Instant::now();
            while let Some(Reverse(timer)) = state.timers.peek()
                && timer.deadline <= now
            {
                let Some(Reverse(timer)) = state.timers.pop() else {
                    break;
                };
                if let Some(topic) = timer.topic.upgrade() {
                    topic.timer_armed.store(false, Ordering::SeqCst);
                    if !topic.scheduled.swap(true, Ordering::SeqCst) {
                        state.ready.push_back(topic);
                    }
                }
            }
            if let Some(topic) = state.ready.pop_front() {
                if !state.ready.is_empty() {
                    // More work than this thread: make sure another one is awake for it.
                    state.wake_one();
                }
                return Some(topic);
            }
            if state.shutdown {
                // No topic handle is left, so no timer matters: each topic's last turn
                // (queued when its handles went) syncs what it has.
                return None;
            }
            let timeout = state
                .timers
                .peek()
                .map(|Reverse(timer)| timer.deadline.saturating_duration_since(now));
            let me = std::thread::current();
            state.idle.push(me.clone());
            drop(state);
            // An unpark between the push and here is not lost: it makes `park` return at once.
            match timeout {
                Some(timeout) => std::thread::park_timeout(timeout),
                None => std::thread::park(),
            }
            state = lock(&self.state);
            // Still listed after a timeout or a spurious wake-up.
            state.idle.retain(|thread| thread.id() != me.id());
        }
    }

    /// One turn of `topic`: one group commit (or its stop). Returns true if it has more to do;
    /// it then stays scheduled, and the caller must give it another turn or queue it.
    fn give_turn(&self, topic: &Arc<TopicWriter>) -> bool {
        let mut slot = lock(&topic.queue);
        let Some(queue) = slot.as_mut() else {
            topic.scheduled.store(false, Ordering::SeqCst);
            return false;
        };
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| queue.turn()));
        let finished = match turn {
            Ok(finished) => finished,
            Err(_) => {
                tracing::error!(
                    message = "A topic writer panicked; the topic stops accepting appends."
                );
                true
            }
        };
        if finished {
            // Dropping the queue drops its receiver: later appends fail, queued ones learn
            // the topic is gone.
            *slot = None;
            topic.scheduled.store(false, Ordering::SeqCst);
            return false;
        }
        if queue.has_work() {
            return true;
        }
        queue.went_idle();
        let deadline = queue.sync_deadline();
        topic.scheduled.store(false, Ordering::SeqCst);
        // An append that came after the check above but saw `scheduled` still set did not
        // queue the topic: look again now that it is cleared, and take the topic back if so.
        let has_work = queue.has_work();
        drop(slot);
        if has_work {
            return !topic.scheduled.swap(true, Ordering::SeqCst);
        }
        if let Some(deadline) = deadline
            && !topic.timer_armed.swap(true, Ordering::SeqCst)
        {
            let mut state = lock(&self.state);
            state.timers.push(Reverse(Timer {
                deadline,
                topic: Arc::downgrade(topic),
            }));
            // A thread may be asleep with a later timeout.
            state.wake_one();
        }
        false
    }
}

impl PoolState {
    fn wake_one(&mut self) {
        if let Some(thread) = self.idle.pop() {
            thread.unpark();
        }
    }
}

impl PartialEq for Timer {
    fn eq(&self, other: &Timer) -> bool {
        self.deadline == other.deadline
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Timer) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Timer) -> std::cmp::Ordering {
        self.deadline.cmp(&other.deadline)
    }
}
