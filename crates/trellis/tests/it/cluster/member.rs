//! A gRPC consumer-group member as a user runs one: the SDK's `Consumer` with an endpoint list
//! it fails over along, recording every delivery and acking it, except those the test tells it
//! to hold unacked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trellis_client::{Consumer, ConsumerConfig, RetryPolicy, StartPosition};

/// One delivery a member got.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) at: Instant,
    pub(crate) id: String,
    pub(crate) offset: u64,
    /// 1 on first delivery, more when the event comes again.
    pub(crate) attempt: u32,
    /// Whether the member acked it.
    pub(crate) acked: bool,
}

pub(crate) struct Member {
    got: Arc<Mutex<Vec<Got>>>,
    holding: Arc<AtomicBool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Member {
    /// Joins clustering group `group` on `topic` from its earliest event through `endpoints`
    /// (tried in order), acking each delivery at once.
    pub(crate) fn join(endpoints: Vec<String>, topic: &str, group: &str) -> Member {
        Member::join_with(endpoints, topic, group, Habits::default())
    }

    /// Like [`Member::join`], with the member's habits.
    pub(crate) fn join_with(
        endpoints: Vec<String>,
        topic: &str,
        group: &str,
        habits: Habits,
    ) -> Member {
        let Habits {
            hold_first,
            max_unacked,
            work,
        } = habits;
        let config = ConsumerConfig::new(topic, group)
            .endpoints(endpoints)
            .start(StartPosition::Earliest)
            .max_unacked(max_unacked)
            .connect_timeout(Duration::from_secs(2))
            .retry(RetryPolicy {
                max_backoff: Duration::from_millis(500),
                ..RetryPolicy::default()
            });
        let mut consumer = Consumer::new(config).expect("a valid consumer config");
        let got: Arc<Mutex<Vec<Got>>> = Arc::new(Mutex::new(Vec::new()));
        let holding = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let task = {
            let (got, holding, stop) = (Arc::clone(&got), Arc::clone(&holding), stop.clone());
            tokio::spawn(async move {
                loop {
                    let delivery = tokio::select! {
                        () = stop.cancelled() => break,
                        delivery = consumer.recv() => delivery,
                    };
                    let Ok(delivery) = delivery else {
                        // Transient failures are the SDK's to recover from; a closed consumer
                        // ends the member.
                        break;
                    };
                    let held_so_far = lock(&got).iter().filter(|got| !got.acked).count();
                    let held = holding.load(Ordering::SeqCst) && held_so_far < hold_first;
                    if !work.is_zero() {
                        tokio::time::sleep(work).await;
                    }
                    if !held {
                        let _ = consumer.ack(delivery.offset);
                    }
                    lock(&got).push(Got {
                        at: Instant::now(),
                        id: delivery.event.id.clone(),
                        offset: delivery.offset,
                        attempt: delivery.attempt,
                        acked: !held,
                    });
                }
                consumer.close().await;
            })
        };
        Member {
            got,
            holding,
            stop,
            task,
        }
    }

    /// Acks every delivery from now on (the held ones come again to be acked).
    pub(crate) fn release(&self) {
        self.holding.store(false, Ordering::SeqCst);
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        lock(&self.got).clone()
    }

    /// Leaves the group, its acks sent.
    pub(crate) async fn leave(self) -> Vec<Got> {
        self.stop.cancel();
        let _ = self.task.await;
        lock(&self.got).clone()
    }
}

/// How a member treats its deliveries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Habits {
    /// Until released, its first this many deliveries are left unacked.
    pub(crate) hold_first: usize,
    /// Its window: deliveries it may have unacked at once.
    pub(crate) max_unacked: u32,
    /// How long it works on each delivery before acking it.
    pub(crate) work: Duration,
}

impl Default for Habits {
    fn default() -> Habits {
        Habits {
            hold_first: 0,
            max_unacked: 1000,
            work: Duration::ZERO,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
