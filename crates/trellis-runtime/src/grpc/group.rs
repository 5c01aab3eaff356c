//! Consumer groups: one coordinator task per group reads the topic from the group's committed
//! offset and hands each event to one member with room in its `max_unacked` window.
//!
//! - An event unacked after the member's ack timeout, or still unacked when its member leaves,
//!   is delivered again (attempt + 1) to a member with room.
//! - The committed offset is the contiguous prefix of acked events (`OffsetTracker`), stored
//!   in the metadata store every 500 ms and at shutdown, and only over acked events.
//! - Broadcast members are groups of their own: each reads every event with its own cursor,
//!   stored under its member name when it has one (two streams with the same member name share
//!   that cursor, and split its events).
//! - Memory is bounded by the members' windows: reading pauses while no member has room, and an
//!   event waiting for redelivery is one a member held.
//! - An unavailable event store pauses reading, not the group: members stay joined, acks are
//!   taken and committed, and reading goes on by itself once the store is back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use trellis_cloudevents::CloudEvent;
use trellis_delivery::offsets::OffsetTracker;
use trellis_meta::MetadataStore;
use trellis_proto::v1::{self, SubscribeResponse, subscribe_response};
use trellis_storage::{EventStore, Record, StorageError};

use super::{group_offset_key, shutting_down, stored_offset};
use crate::error::error_chain;
use crate::event_store::{NOT_CONNECTED, StorageWait, TopicHandle};
use crate::topics::Incarnation;

/// How often a coordinator stores its committed offset.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Acks waiting for the coordinator, per group; a member that acks faster waits.
const ACK_QUEUE: usize = 1024;
/// Records read from the log at once.
const READ_RECORDS: usize = 256;

pub(crate) const GROUP_DELIVERED: &str = "trellis_group_delivered_total";
pub(crate) const GROUP_ACKED: &str = "trellis_group_acked_total";
pub(crate) const GROUP_REDELIVERED: &str = "trellis_group_redelivered_total";
pub(crate) const GROUP_MEMBERS: &str = "trellis_group_members";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        GROUP_DELIVERED,
        "Events sent to gRPC consumer-group members, redeliveries included, per topic and group."
    );
    metrics::describe_counter!(GROUP_ACKED, "Events acked by consumer-group members.");
    metrics::describe_counter!(
        GROUP_REDELIVERED,
        "Events delivered again after an ack timeout or their member leaving."
    );
    metrics::describe_gauge!(GROUP_MEMBERS, "Connected consumer-group members.");
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Latest,
    Earliest,
}

/// What a joining member asks for.
#[derive(Debug, Clone)]
pub(crate) struct JoinSpec {
    pub(crate) topic: TopicHandle,
    /// The store the topic lives in, asked whether it can be reached before a retry.
    pub(crate) store: Arc<dyn EventStore>,
    /// The topic's incarnation: the group's stored offset counts only in it.
    pub(crate) incarnation: Incarnation,
    pub(crate) group: String,
    pub(crate) broadcast: bool,
    /// Broadcast only: the name its cursor is stored under.
    pub(crate) member: Option<String>,
    pub(crate) start: Start,
    pub(crate) max_unacked: usize,
    pub(crate) ack_timeout: Duration,
}

type Deliveries = mpsc::Sender<Result<SubscribeResponse, Status>>;

enum Control {
    Join {
        id: u64,
        deliveries: Deliveries,
        max_unacked: usize,
        ack_timeout: Duration,
    },
    Leave {
        id: u64,
    },
}

struct Ack {
    offsets: Vec<u64>,
}

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
struct GroupKey {
    topic: String,
    group: String,
    broadcast: bool,
    member: Option<String>,
    /// An unnamed broadcast member's own coordinator: listed (so its topic's delete is refused
    /// while it reads), never joined by another member.
    private: Option<u64>,
}

struct Handle {
    generation: u64,
    control: mpsc::UnboundedSender<Control>,
    acks: mpsc::Sender<Ack>,
}

type GroupMap = Arc<Mutex<HashMap<GroupKey, Handle>>>;

/// The running groups.
pub(crate) struct GroupRegistry {
    meta: Arc<dyn MetadataStore>,
    shutdown: CancellationToken,
    groups: GroupMap,
    tasks: TaskTracker,
    next_id: std::sync::atomic::AtomicU64,
}

/// A member's place in its group; dropping it leaves the group, and the events it held go to
/// other members.
pub(crate) struct Membership {
    id: u64,
    control: mpsc::UnboundedSender<Control>,
    acks: mpsc::Sender<Ack>,
    /// To end the member's stream with a status of the member's own making.
    deliveries: Deliveries,
}

impl Membership {
    /// Ends the member's stream with `status` (the member leaves when this is dropped).
    pub(crate) fn refuse(&self, status: Status) {
        let _ = self.deliveries.try_send(Err(status));
    }

    /// Passes acked offsets on; waits while the coordinator is behind.
    pub(crate) async fn ack(&self, offsets: Vec<u64>) -> bool {
        if offsets.is_empty() {
            return true;
        }
        self.acks.send(Ack { offsets }).await.is_ok()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Leave { id: self.id });
    }
}

impl GroupRegistry {
    pub(crate) fn new(meta: Arc<dyn MetadataStore>, shutdown: CancellationToken) -> GroupRegistry {
        GroupRegistry {
            meta,
            shutdown,
            groups: Arc::default(),
            tasks: TaskTracker::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The groups (with the member name of a named broadcast member) that read `topic` now,
    /// for refusing its delete.
    pub(crate) async fn using_topic(&self, topic: &str) -> Vec<String> {
        let groups = self.groups.lock().await;
        let mut names: Vec<String> = groups
            .iter()
            .filter(|(key, handle)| key.topic == topic && !handle.control.is_closed())
            .map(|(key, _)| match &key.member {
                Some(member) => format!("{}/{member}", key.group),
                None => key.group.clone(),
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Waits for every coordinator to store its committed offset and stop. Call after the
    /// shutdown token is cancelled, before the log closes.
    pub(crate) async fn shutdown(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Adds a member to its group, starting the group's coordinator if it is not running. The
    /// receiver yields `Subscribed` first, then deliveries.
    pub(crate) async fn join(
        &self,
        spec: JoinSpec,
    ) -> Result<
        (
            Membership,
            mpsc::Receiver<Result<SubscribeResponse, Status>>,
        ),
        Status,
    > {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Room for every delivery of a full window, `Subscribed` and a closing status.
        let (deliveries, receiver) = mpsc::channel(spec.max_unacked + 2);
        let shared = !spec.broadcast || spec.member.is_some();
        let key = GroupKey {
            topic: spec.topic.name().to_owned(),
            group: spec.group.clone(),
            broadcast: spec.broadcast,
            member: spec.member.clone(),
            private: (!shared).then_some(id),
        };
        let mut groups = self.groups.lock().await;
        let existing = if shared {
            groups
                .get(&key)
                .filter(|handle| !handle.control.is_closed())
                .map(|handle| (handle.control.clone(), handle.acks.clone()))
        } else {
            None
        };
        let (control, acks) = match existing {
            Some(channels) => channels,
            None => {
                let generation = id;
                let (coordinator, control, acks) =
                    Coordinator::start(&spec, Arc::clone(&self.meta), shared).await?;
                let registry = Some((Arc::clone(&self.groups), key.clone(), generation));
                let shutdown = self.shutdown.clone();
                self.tasks.spawn(coordinator.run(shutdown, registry));
                groups.insert(
                    key,
                    Handle {
                        generation,
                        control: control.clone(),
                        acks: acks.clone(),
                    },
                );
                (control, acks)
            }
        };
        drop(groups);
        control
            .send(Control::Join {
                id,
                deliveries: deliveries.clone(),
                max_unacked: spec.max_unacked,
                ack_timeout: spec.ack_timeout,
            })
            .map_err(|_| shutting_down())?;
        Ok((
            Membership {
                id,
                control,
                acks,
                deliveries,
            },
            receiver,
        ))
    }
}

struct Member {
    deliveries: Deliveries,
    max_unacked: usize,
    ack_timeout: Duration,
    unacked: HashSet<u64>,
}

impl Member {
    /// Events it may still be sent: its window, and the room in its stream's buffer (events
    /// that timed out unread still sit there), less a place kept for a closing status.
    fn room(&self) -> usize {
        self.max_unacked
            .saturating_sub(self.unacked.len())
            .min(self.deliveries.capacity().saturating_sub(1))
    }
}

struct InFlight {
    event: v1::CloudEvent,
    member: u64,
    attempt: u32,
    deadline: Instant,
}

/// An event to deliver (again); `attempt` is the number of deliveries so far.
struct Waiting {
    offset: u64,
    event: v1::CloudEvent,
    attempt: u32,
}

struct Coordinator {
    topic: TopicHandle,
    store: Arc<dyn EventStore>,
    storage: StorageWait,
    incarnation: Incarnation,
    meta: Arc<dyn MetadataStore>,
    /// `None`: progress is not kept (an unnamed broadcast member).
    offset_key: Option<String>,
    /// Shared groups outlive their members; a private one ends with its member.
    shared: bool,
    tracker: OffsetTracker,
    position: u64,
    committed: u64,
    members: BTreeMap<u64, Member>,
    in_flight: HashMap<u64, InFlight>,
    deadlines: BTreeSet<(Instant, u64)>,
    waiting: VecDeque<Waiting>,
    control: mpsc::UnboundedReceiver<Control>,
    acks: mpsc::Receiver<Ack>,
    delivered: metrics::Counter,
    acked: metrics::Counter,
    redelivered: metrics::Counter,
    members_gauge: metrics::Gauge,
}

impl Coordinator {
    async fn start(
        spec: &JoinSpec,
        meta: Arc<dyn MetadataStore>,
        shared: bool,
    ) -> Result<
        (
            Coordinator,
            mpsc::UnboundedSender<Control>,
            mpsc::Sender<Ack>,
        ),
        Status,
    > {
        let offset_key = match (&spec.member, spec.broadcast) {
            (_, false) => Some(group_offset_key(spec.topic.name(), &spec.group, None)),
            (Some(member), true) => Some(group_offset_key(
                spec.topic.name(),
                &spec.group,
                Some(member),
            )),
            (None, true) => None,
        };
        let stats = spec.topic.info().await.map_err(|error| {
            Status::unavailable(format!(
                "reading the topic's state failed: {}",
                error_chain(&error)
            ))
        })?;
        let stored = match &offset_key {
            Some(key) => stored_offset(meta.as_ref(), key).await?,
            None => None,
        };
        let start = match (stored, spec.start) {
            (Some(stored), _) => match stored.in_incarnation(&spec.incarnation) {
                Some(offset) => offset,
                // Stored for a topic of this name that was deleted since: this one is new to
                // the group, which reads it from its beginning.
                None => stats.first_offset,
            },
            (None, Start::Latest) => stats.next_offset,
            (None, Start::Earliest) => stats.first_offset,
        }
        // Retention may have removed where the group left off.
        .max(stats.first_offset);
        if let Some(key) = &offset_key {
            // Stored now, so a restart before the first commit does not move a new group's
            // start to a later end of the topic, nor leave an offset of another incarnation.
            meta.put(key, crate::stored_offset::encode(start, &spec.incarnation))
                .await
                .map_err(|error| {
                    Status::unavailable(format!(
                        "storing the group's offset failed: {}",
                        error_chain(&error)
                    ))
                })?;
        }
        let (control_tx, control) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::channel(ACK_QUEUE);
        let labels = [
            ("topic", spec.topic.name().to_owned()),
            ("group", spec.group.clone()),
        ];
        let coordinator = Coordinator {
            topic: spec.topic.clone(),
            store: Arc::clone(&spec.store),
            storage: StorageWait::new(format!(
                "consumer group {:?} of topic {:?}",
                spec.group,
                spec.topic.name()
            )),
            incarnation: spec.incarnation.clone(),
            meta,
            offset_key,
            shared,
            tracker: OffsetTracker::new(start),
            position: start,
            committed: start,
            members: BTreeMap::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeSet::new(),
            waiting: VecDeque::new(),
            control,
            acks,
            delivered: metrics::counter!(GROUP_DELIVERED, &labels),
            acked: metrics::counter!(GROUP_ACKED, &labels),
            redelivered: metrics::counter!(GROUP_REDELIVERED, &labels),
            members_gauge: metrics::gauge!(GROUP_MEMBERS, &labels),
        };
        Ok((coordinator, control_tx, acks_tx))
    }

    async fn run(
        mut self,
        shutdown: CancellationToken,
        registry: Option<(GroupMap, GroupKey, u64)>,
    ) {
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing: Option<Status> = None;
        // A read runs to its end even when other work wakes the loop meanwhile, so a busy
        // stream of acks cannot starve reading.
        let mut reading: Option<ReadFuture> = None;
        // Set while the event store is unavailable: no read starts before then.
        let mut storage_retry: Option<Instant> = None;
        loop {
            self.deliver_waiting();
            let room: usize = self.members.values().map(Member::room).sum();
            if reading.is_none() && storage_retry.is_none() && room > 0 && self.waiting.is_empty() {
                reading = Some(Box::pin(read_from(
                    self.topic.clone(),
                    self.position,
                    room.min(READ_RECORDS),
                )));
            }
            let next_deadline = self.deadlines.first().map(|(deadline, _)| *deadline);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    closing = Some(shutting_down());
                    break;
                }
                control = self.control.recv() => match control {
                    Some(Control::Join { id, deliveries, max_unacked, ack_timeout }) => {
                        self.join(id, deliveries, max_unacked, ack_timeout);
                    }
                    Some(Control::Leave { id }) => {
                        // A member's acks are queued before it leaves (its stream awaits each
                        // send), but this select prefers control messages: settle them first, or
                        // the events they ack would go to another member again.
                        self.take_queued_acks();
                        self.leave(id);
                        if !self.shared && self.members.is_empty() {
                            break;
                        }
                    }
                    None => break,
                },
                Some(ack) = self.acks.recv() => self.ack(&ack.offsets),
                () = sleep_until(next_deadline), if next_deadline.is_some() => self.expire(),
                _ = commit_tick.tick() => self.commit().await,
                () = sleep_until(storage_retry), if storage_retry.is_some() => {
                    // Tried again only once the store says it can be reached.
                    storage_retry = if self.store.available() {
                        None
                    } else {
                        Some(Instant::now() + self.storage.failed(NOT_CONNECTED))
                    };
                }
                read = poll_read(&mut reading), if reading.is_some() => {
                    reading = None;
                    if !matches!(read, Err(StorageError::Unavailable(_))) && self.storage.waiting() {
                        self.storage.succeeded();
                    }
                    match read {
                        Ok(records) => self.take(records),
                        Err(StorageError::Unavailable(reason)) => {
                            storage_retry = Some(Instant::now() + self.storage.failed(&reason));
                        }
                        Err(StorageError::OffsetTruncated { first_offset, .. }) => {
                            tracing::warn!(
                                message = "A consumer group fell behind retention; it skips the deleted events.",
                                topic = self.topic.name(),
                                from = self.position,
                                to = first_offset
                            );
                            self.position = first_offset;
                        }
                        Err(StorageError::Damaged { range, .. }) => self.skip_damaged(&range),
                        Err(StorageError::NoSuchTopic(_)) => {
                            closing = Some(Status::not_found(format!("topic {:?} was deleted", self.topic.name())));
                            break;
                        }
                        Err(StorageError::Closed) => {
                            closing = Some(shutting_down());
                            break;
                        }
                        Err(error) => {
                            tracing::error!(message = "A consumer group cannot read its topic.", topic = self.topic.name(), error = %error_chain(&error));
                            closing = Some(Status::internal(format!("reading the topic failed: {}", error_chain(&error))));
                            break;
                        }
                    }
                }
            }
        }
        self.take_queued_acks();
        self.commit().await;
        if let Some((groups, key, generation)) = registry {
            let mut groups = groups.lock().await;
            if groups
                .get(&key)
                .is_some_and(|handle| handle.generation == generation)
            {
                groups.remove(&key);
            }
        }
        for (_, member) in std::mem::take(&mut self.members) {
            if let Some(status) = &closing {
                let _ = member.deliveries.try_send(Err(status.clone()));
            }
            self.members_gauge.decrement(1.0);
        }
    }

    fn take_queued_acks(&mut self) {
        while let Ok(ack) = self.acks.try_recv() {
            self.ack(&ack.offsets);
        }
    }

    fn join(&mut self, id: u64, deliveries: Deliveries, max_unacked: usize, ack_timeout: Duration) {
        let subscribed = SubscribeResponse {
            response: Some(subscribe_response::Response::Subscribed(v1::Subscribed {
                from_offset: self.tracker.committable(),
            })),
        };
        if deliveries.try_send(Ok(subscribed)).is_err() {
            return;
        }
        self.members.insert(
            id,
            Member {
                deliveries,
                max_unacked,
                ack_timeout,
                unacked: HashSet::new(),
            },
        );
        self.members_gauge.increment(1.0);
    }

    fn leave(&mut self, id: u64) {
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        self.members_gauge.decrement(1.0);
        let mut held: Vec<u64> = member.unacked.into_iter().collect();
        held.sort_unstable();
        for offset in held {
            self.requeue(offset);
        }
    }

    /// Takes an event back from its member, to deliver it again.
    fn requeue(&mut self, offset: u64) {
        if let Some(flight) = self.in_flight.remove(&offset) {
            self.deadlines.remove(&(flight.deadline, offset));
            if let Some(member) = self.members.get_mut(&flight.member) {
                member.unacked.remove(&offset);
            }
            self.waiting.push_back(Waiting {
                offset,
                event: flight.event,
                attempt: flight.attempt,
            });
        }
    }

    fn ack(&mut self, offsets: &[u64]) {
        for &offset in offsets {
            let ended = if let Some(flight) = self.in_flight.remove(&offset) {
                self.deadlines.remove(&(flight.deadline, offset));
                if let Some(member) = self.members.get_mut(&flight.member) {
                    member.unacked.remove(&offset);
                }
                true
            } else if let Some(at) = self.waiting.iter().position(|w| w.offset == offset) {
                // Acked late by the member it timed out on: done all the same.
                self.waiting.remove(at);
                true
            } else {
                false
            };
            if ended {
                self.acked.increment(1);
                if let Err(error) = self.tracker.complete(offset) {
                    tracing::error!(message = "Offset bookkeeping failed.", %error);
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, offset)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.requeue(offset);
        }
    }

    /// Goes past records damaged on disk: no member could be sent them, and waiting for them
    /// would stall the group for good.
    fn skip_damaged(&mut self, range: &trellis_storage::DamagedRange) {
        tracing::warn!(
            message = "Damaged records cannot be delivered; the consumer group skips them.",
            topic = self.topic.name(),
            first_offset = range.first_offset,
            next_offset = range.next_offset,
            reason = %range.reason,
        );
        metrics::counter!("trellis_group_damaged_records_skipped_total")
            .increment(range.next_offset.saturating_sub(range.first_offset));
        let last = range.next_offset.saturating_sub(1);
        if self.tracker.track(last).is_ok() {
            let _ = self.tracker.complete(last);
        }
        self.position = self.position.max(range.next_offset);
    }

    /// New records from the log, delivered first time.
    fn take(&mut self, records: Vec<Record>) {
        for record in records {
            self.position = record.offset + 1;
            if let Err(error) = self.tracker.track(record.offset) {
                tracing::error!(message = "Offset bookkeeping failed.", %error);
                continue;
            }
            match CloudEvent::from_stored(&record.payload) {
                Ok(event) => self.waiting.push_back(Waiting {
                    offset: record.offset,
                    event: v1::CloudEvent::from(&event),
                    attempt: 0,
                }),
                Err(error) => {
                    // Nothing any member could do with it: skip it rather than stall the group.
                    tracing::warn!(
                        message = "Skipping an unreadable record.",
                        topic = self.topic.name(),
                        offset = record.offset,
                        error = %error
                    );
                    let _ = self.tracker.complete(record.offset);
                }
            }
        }
        self.deliver_waiting();
    }

    /// Hands waiting events, oldest first, to the members with the most room.
    fn deliver_waiting(&mut self) {
        while let Some(waiting) = self.waiting.pop_front() {
            let Some(id) = self
                .members
                .iter()
                .filter(|(_, member)| member.room() > 0)
                .max_by_key(|(id, member)| (member.room(), std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)
            else {
                self.waiting.push_front(waiting);
                return;
            };
            let Some(member) = self.members.get_mut(&id) else {
                self.waiting.push_front(waiting);
                return;
            };
            let attempt = waiting.attempt + 1;
            let delivery = SubscribeResponse {
                response: Some(subscribe_response::Response::Delivery(v1::Delivery {
                    offset: waiting.offset,
                    event: Some(waiting.event.clone()),
                    attempt,
                })),
            };
            match member.deliveries.try_send(Ok(delivery)) {
                Ok(()) => {
                    let deadline = Instant::now() + member.ack_timeout;
                    member.unacked.insert(waiting.offset);
                    self.deadlines.insert((deadline, waiting.offset));
                    self.in_flight.insert(
                        waiting.offset,
                        InFlight {
                            event: waiting.event,
                            member: id,
                            attempt,
                            deadline,
                        },
                    );
                    self.delivered.increment(1);
                    if attempt > 1 {
                        self.redelivered.increment(1);
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // `room` said otherwise; try again on the next wake-up.
                    self.waiting.push_front(waiting);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.waiting.push_front(waiting);
                    self.leave(id);
                }
            }
        }
    }

    async fn commit(&mut self) {
        let committable = self.tracker.committable();
        let Some(key) = &self.offset_key else {
            self.committed = committable;
            return;
        };
        if committable == self.committed {
            return;
        }
        match self
            .meta
            .put(
                key,
                crate::stored_offset::encode(committable, &self.incarnation),
            )
            .await
        {
            Ok(_) => self.committed = committable,
            Err(error) => tracing::warn!(
                message = "Storing a consumer group's offset failed; will retry.",
                key = key.as_str(),
                error = %error_chain(&error)
            ),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

type ReadFuture = Pin<Box<dyn Future<Output = Result<Vec<Record>, StorageError>> + Send>>;

async fn poll_read(reading: &mut Option<ReadFuture>) -> Result<Vec<Record>, StorageError> {
    match reading {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}

/// The next records from `from`, waiting for one if the group has read everything.
async fn read_from(
    topic: TopicHandle,
    from: u64,
    max_records: usize,
) -> Result<Vec<Record>, StorageError> {
    // Resolves at once when the record is stored already.
    topic.wait_for(from).await?;
    crate::event_store::read_records(topic.as_ref(), from, max_records.max(1)).await
}
