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
//!
//! Across replicas a shared group (clustering, or a named broadcast member's cursor) is run by
//! one replica only: the one holding its `FirstCome` unit (`group_unit`), which every replica
//! with members of the group declares. Each replica keeps one `Slot` per group it has members
//! of; the slot's task runs the coordinator for each term this replica owns the unit, commits
//! only through the term's fence, and hands out nothing once the fence no longer holds. Members
//! on the other replicas reach it through relays (`relay.rs`). An unnamed broadcast member
//! commits nothing and reads on its own: it is served where it connected, without a unit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use trellis_cloudevents::CloudEvent;
use trellis_cluster::{Cluster, Fence, Placement, Unit};
use trellis_delivery::offsets::OffsetTracker;
use trellis_meta::MetadataStore;
use trellis_proto::v1::{self, SubscribeResponse, subscribe_response};
use trellis_storage::{EventStore, Record, StorageError};

use super::relay::Upstreams;
use super::{group_offset_key, shutting_down, stored_offset};
use crate::error::error_chain;
use crate::event_store::{NOT_CONNECTED, StorageWait, TopicHandle};
use crate::ownership::{TermEnd, fenced_put, while_owned};
use crate::topics::Incarnation;

/// How often a coordinator stores its committed offset.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Acks waiting for the coordinator, per group; a member that acks faster waits.
const ACK_QUEUE: usize = 1024;
/// Records read from the log at once.
const READ_RECORDS: usize = 256;
/// How long a replica that owns a group but could not start its coordinator (the metadata or
/// event store is away) waits before it tries again.
const START_RETRY: Duration = Duration::from_secs(1);

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

impl GroupKey {
    /// The cluster unit of a shared group: named like its offset key, so a named broadcast
    /// member's cursor is a unit of its own.
    fn unit(&self) -> String {
        match &self.member {
            None => format!("group/{}/{}", self.topic, self.group),
            Some(member) => format!("group/{}/{}/members/{member}", self.topic, self.group),
        }
    }
}

/// A group this replica has members of (its own clients, or members relayed from other
/// replicas), and whether it runs the group's coordinator now.
pub(super) struct Slot {
    generation: u64,
    pub(super) state: watch::Sender<SlotState>,
    /// The owning replica's member id, as the cluster sees it (`None` while free; always
    /// `None` for an unnamed broadcast member's own coordinator).
    pub(super) owner: watch::Receiver<Option<String>>,
    /// Ends the slot: its last member left, or the registry shuts down.
    stop: CancellationToken,
}

#[derive(Clone)]
pub(super) enum SlotState {
    /// Another replica owns the group, or nobody yet.
    Elsewhere,
    /// This replica runs the group's coordinator.
    Running(Local),
    /// The group ended for good here (its topic was deleted): members get this status.
    Ended(Status),
}

/// The channels of a coordinator running on this replica, and its term's fence.
#[derive(Clone)]
pub(super) struct Local {
    control: mpsc::UnboundedSender<Control>,
    acks: mpsc::Sender<Ack>,
    fence: Option<Fence>,
}

struct Entry {
    slot: Arc<Slot>,
    /// Members holding an `Attachment` to the slot.
    interest: usize,
}

type GroupMap = Arc<std::sync::Mutex<HashMap<GroupKey, Entry>>>;

fn lock(groups: &GroupMap) -> std::sync::MutexGuard<'_, HashMap<GroupKey, Entry>> {
    // Plain data, never left half-changed: carry on after a panic elsewhere.
    groups
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running groups.
pub(crate) struct GroupRegistry {
    meta: Arc<dyn MetadataStore>,
    pub(super) cluster: Cluster,
    shutdown: CancellationToken,
    groups: GroupMap,
    tasks: TaskTracker,
    next_id: std::sync::atomic::AtomicU64,
    /// Channels to the other replicas, for relays.
    pub(super) upstreams: Upstreams,
}

/// A member's hold on its group's slot on this replica; the slot ends (its coordinator, if it
/// runs here, commits and the unit is released) when the last one is dropped.
pub(super) struct Attachment {
    pub(super) slot: Arc<Slot>,
    key: GroupKey,
    groups: GroupMap,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut groups = lock(&self.groups);
        if let Some(entry) = groups.get_mut(&self.key)
            && entry.slot.generation == self.slot.generation
        {
            entry.interest = entry.interest.saturating_sub(1);
            if entry.interest == 0 {
                groups.remove(&self.key);
                self.slot.stop.cancel();
            }
        }
    }
}

/// A member's place in its group; dropping it leaves the group, and the events it held go to
/// other members.
pub(crate) struct Membership {
    id: u64,
    control: mpsc::UnboundedSender<Control>,
    acks: mpsc::Sender<Ack>,
    /// To end the member's stream with a status of the member's own making.
    deliveries: Deliveries,
    fence: Option<Fence>,
}

impl Membership {
    /// Whether deliveries the coordinator queued for this member may still go out: false once
    /// the replica can no longer prove it owns the group (resumed after a freeze past its
    /// lease, say), so not even what was queued before goes.
    pub(super) fn may_deliver(&self) -> bool {
        self.fence.as_ref().is_none_or(Fence::holds)
    }

    /// [`Membership::may_deliver`], apart from the membership.
    pub(super) fn holder(&self) -> impl Fn() -> bool + Send + 'static {
        let fence = self.fence.clone();
        move || fence.as_ref().is_none_or(Fence::holds)
    }

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

/// A member's own end of its stream: `Subscribed` first, then deliveries, and a closing status.
pub(super) type MemberStream = mpsc::Receiver<Result<SubscribeResponse, Status>>;

impl Local {
    /// Joins member `id` to this coordinator.
    pub(super) fn join(
        &self,
        id: u64,
        max_unacked: usize,
        ack_timeout: Duration,
    ) -> Result<(Membership, MemberStream), Status> {
        // Room for every delivery of a full window, `Subscribed` and a closing status.
        let (deliveries, receiver) = mpsc::channel(max_unacked + 2);
        self.control
            .send(Control::Join {
                id,
                deliveries: deliveries.clone(),
                max_unacked,
                ack_timeout,
            })
            .map_err(|_| moved())?;
        Ok((
            Membership {
                id,
                control: self.control.clone(),
                acks: self.acks.clone(),
                deliveries,
                fence: self.fence.clone(),
            },
            receiver,
        ))
    }
}

/// The status of a member whose coordinator stopped on this replica while Trellis goes on (its
/// ownership ended): transient, the member subscribes again and reaches the new owner.
pub(super) fn moved() -> Status {
    Status::unavailable(
        "this replica no longer runs the consumer group (it moved to another replica); subscribe again",
    )
}

impl GroupRegistry {
    pub(crate) fn new(
        meta: Arc<dyn MetadataStore>,
        cluster: Cluster,
        shutdown: CancellationToken,
    ) -> GroupRegistry {
        GroupRegistry {
            meta,
            cluster,
            shutdown,
            groups: Arc::default(),
            tasks: TaskTracker::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            upstreams: Upstreams::default(),
        }
    }

    /// The groups (with the member name of a named broadcast member) that have members on this
    /// replica now, for refusing their topic's delete.
    pub(crate) async fn using_topic(&self, topic: &str) -> Vec<String> {
        let groups = lock(&self.groups);
        let mut names: Vec<String> = groups
            .keys()
            .filter(|key| key.topic == topic)
            .map(|key| match &key.member {
                Some(member) => format!("{}/{member}", key.group),
                None => key.group.clone(),
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Waits for every coordinator to store its committed offset and stop, and every claim to
    /// be released. Call after the shutdown token is cancelled, before the log closes.
    pub(crate) async fn shutdown(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs a member's task (a session, or the acks of a member joined here) among the tasks
    /// `shutdown` waits for: what it holds (the metadata store among it) is gone by then.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// A fresh member id, unique on this replica.
    pub(super) fn next_member_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// This replica's id in the cluster.
    pub(super) fn member_id(&self) -> &str {
        self.cluster.member_id()
    }

    /// Holds the slot of a shared group (clustering, or a named broadcast member) for a member
    /// of this replica, declaring the group's unit and starting the slot's task if it is new.
    pub(super) fn attach(&self, spec: &JoinSpec) -> Attachment {
        let key = GroupKey {
            topic: spec.topic.name().to_owned(),
            group: spec.group.clone(),
            broadcast: spec.broadcast,
            member: spec.member.clone(),
            private: None,
        };
        let mut groups = lock(&self.groups);
        if let Some(entry) = groups.get_mut(&key) {
            entry.interest += 1;
            return Attachment {
                slot: Arc::clone(&entry.slot),
                key,
                groups: Arc::clone(&self.groups),
            };
        }
        let unit = self.cluster.unit(&key.unit(), Placement::FirstCome);
        let slot = Arc::new(Slot {
            generation: self.next_member_id(),
            state: watch::channel(SlotState::Elsewhere).0,
            owner: unit.owner(),
            stop: self.shutdown.child_token(),
        });
        groups.insert(
            key.clone(),
            Entry {
                slot: Arc::clone(&slot),
                interest: 1,
            },
        );
        self.tasks.spawn(run_shared(
            Arc::clone(&slot),
            unit,
            spec.clone(),
            Arc::clone(&self.meta),
            self.shutdown.clone(),
            (Arc::clone(&self.groups), key.clone()),
        ));
        Attachment {
            slot,
            key,
            groups: Arc::clone(&self.groups),
        }
    }

    /// Joins a member relayed by another replica to the coordinator running here, or answers
    /// UNAVAILABLE if this replica does not run the group now (the relay looks for the owner
    /// again). Never declares the unit: only members of this replica's own clients do.
    pub(super) fn join_relayed(
        &self,
        spec: &JoinSpec,
    ) -> Result<(Attachment, Membership, MemberStream), Status> {
        let key = GroupKey {
            topic: spec.topic.name().to_owned(),
            group: spec.group.clone(),
            broadcast: spec.broadcast,
            member: spec.member.clone(),
            private: None,
        };
        let attachment = {
            let mut groups = lock(&self.groups);
            let Some(entry) = groups.get_mut(&key) else {
                return Err(moved());
            };
            if !matches!(*entry.slot.state.borrow(), SlotState::Running(_)) {
                return Err(moved());
            }
            entry.interest += 1;
            Attachment {
                slot: Arc::clone(&entry.slot),
                key,
                groups: Arc::clone(&self.groups),
            }
        };
        let local = match &*attachment.slot.state.borrow() {
            SlotState::Running(local) => local.clone(),
            _ => return Err(moved()),
        };
        let (membership, stream) =
            local.join(self.next_member_id(), spec.max_unacked, spec.ack_timeout)?;
        Ok((attachment, membership, stream))
    }

    /// Starts an unnamed broadcast member's own coordinator, here and without a unit: it
    /// commits nothing, so no other replica needs to know of it.
    pub(super) async fn join_private(
        &self,
        spec: JoinSpec,
    ) -> Result<(Attachment, Membership, MemberStream), Status> {
        let id = self.next_member_id();
        let key = GroupKey {
            topic: spec.topic.name().to_owned(),
            group: spec.group.clone(),
            broadcast: spec.broadcast,
            member: spec.member.clone(),
            private: Some(id),
        };
        let (coordinator, local) = Coordinator::start(&spec, Arc::clone(&self.meta), None).await?;
        let slot = Arc::new(Slot {
            generation: id,
            state: watch::channel(SlotState::Running(local.clone())).0,
            owner: watch::channel(None).1,
            stop: self.shutdown.child_token(),
        });
        lock(&self.groups).insert(
            key.clone(),
            Entry {
                slot: Arc::clone(&slot),
                interest: 1,
            },
        );
        let attachment = Attachment {
            slot: Arc::clone(&slot),
            key: key.clone(),
            groups: Arc::clone(&self.groups),
        };
        let groups = Arc::clone(&self.groups);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            coordinator.run(slot.stop.clone(), &shutdown).await;
            let mut groups = lock(&groups);
            if groups
                .get(&key)
                .is_some_and(|entry| entry.slot.generation == slot.generation)
            {
                groups.remove(&key);
            }
        });
        let (membership, stream) = local.join(id, spec.max_unacked, spec.ack_timeout)?;
        Ok((attachment, membership, stream))
    }
}

/// The task of a shared group's slot: runs the coordinator for each term this replica owns
/// the group's unit, until the slot's last member leaves, the registry shuts down or the topic
/// is deleted.
async fn run_shared(
    slot: Arc<Slot>,
    unit: Unit,
    spec: JoinSpec,
    meta: Arc<dyn MetadataStore>,
    shutdown: CancellationToken,
    (groups, key): (GroupMap, GroupKey),
) {
    let stop = slot.stop.clone();
    let failed = while_owned(unit, stop, |fence, term_stop| {
        let (slot, spec, meta, shutdown) = (
            Arc::clone(&slot),
            spec.clone(),
            Arc::clone(&meta),
            shutdown.clone(),
        );
        async move {
            let (coordinator, local) = match Coordinator::start(&spec, meta, Some(fence)).await {
                Ok(started) => started,
                Err(status) => {
                    tracing::warn!(
                        message = "A consumer group this replica owns cannot start; will retry.",
                        topic = spec.topic.name(),
                        group = spec.group.as_str(),
                        %status,
                    );
                    tokio::select! {
                        () = term_stop.cancelled() => {}
                        () = tokio::time::sleep(START_RETRY) => {}
                    }
                    return TermEnd::Stopped;
                }
            };
            slot.state.send_replace(SlotState::Running(local));
            let closing = coordinator.run(term_stop, &shutdown).await;
            match closing {
                Some(status) if status.code() == tonic::Code::NotFound => {
                    let reason = status.message().to_owned();
                    slot.state.send_replace(SlotState::Ended(status));
                    TermEnd::Failed(reason)
                }
                _ => {
                    slot.state.send_replace(SlotState::Elsewhere);
                    TermEnd::Stopped
                }
            }
        }
    })
    .await;
    if failed.is_some() {
        let mut groups = lock(&groups);
        if groups
            .get(&key)
            .is_some_and(|entry| entry.slot.generation == slot.generation)
        {
            groups.remove(&key);
        }
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
    /// The term of the replica's ownership (shared groups): commits go through it, and nothing
    /// is handed out once it no longer holds. `None`: a private group, which ends with its
    /// member.
    fence: Option<Fence>,
    /// Set once the fence refused: the term is over, the coordinator stops.
    fenced_out: bool,
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
        fence: Option<Fence>,
    ) -> Result<(Coordinator, Local), Status> {
        let term = fence.clone();
        let offset_key = match (&spec.member, spec.broadcast) {
            (_, false) => Some(group_offset_key(spec.topic.name(), &spec.group, None)),
            (Some(member), true) => Some(group_offset_key(
                spec.topic.name(),
                &spec.group,
                Some(member),
            )),
            (None, true) => None,
        };
        let stats = spec.topic.info().await.map_err(|error| match error {
            // Deleted since the member joined: the group ends, as a reading coordinator's would.
            StorageError::NoSuchTopic(_) => {
                Status::not_found(format!("topic {:?} was deleted", spec.topic.name()))
            }
            error => Status::unavailable(format!(
                "reading the topic's state failed: {}",
                error_chain(&error)
            )),
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
            let value = crate::stored_offset::encode(start, &spec.incarnation);
            let stored = match &fence {
                Some(fence) => fenced_put(fence, meta.as_ref(), key, value).await,
                None => meta.put(key, value).await.map(|_| true),
            };
            match stored {
                Ok(true) => {}
                Ok(false) => return Err(moved()),
                Err(error) => {
                    return Err(Status::unavailable(format!(
                        "storing the group's offset failed: {}",
                        error_chain(&error)
                    )));
                }
            }
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
            fence,
            fenced_out: false,
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
        Ok((
            coordinator,
            Local {
                control: control_tx,
                acks: acks_tx,
                fence: term,
            },
        ))
    }

    /// Runs until `stop` (the term ended, the last member left, or `shutdown`), the fence
    /// refuses, a private group's member leaves or the topic goes. Commits what was acked, then
    /// ends every member's stream with the closing status, which it returns.
    async fn run(
        mut self,
        stop: CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<Status> {
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
            if self.fenced_out {
                tracing::info!(
                    message =
                        "This replica no longer holds a consumer group; its coordinator stops.",
                    topic = self.topic.name()
                );
                closing = Some(moved());
                break;
            }
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
                () = stop.cancelled() => {
                    closing = Some(if shutdown.is_cancelled() { shutting_down() } else { moved() });
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
                        if self.fence.is_none() && self.members.is_empty() {
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
        for (_, member) in std::mem::take(&mut self.members) {
            if let Some(status) = &closing {
                let _ = member.deliveries.try_send(Err(status.clone()));
            }
            self.members_gauge.decrement(1.0);
        }
        closing
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

    /// Hands waiting events, oldest first, to the members with the most room; nothing once the
    /// fence no longer holds (a replica resumed after a freeze past its lease hands out
    /// nothing it lost).
    fn deliver_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        if self.fence.as_ref().is_some_and(|fence| !fence.holds()) {
            self.fenced_out = true;
            return;
        }
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
        let value = crate::stored_offset::encode(committable, &self.incarnation);
        let stored = match &self.fence {
            Some(fence) => fenced_put(fence, self.meta.as_ref(), key, value).await,
            None => self.meta.put(key, value).await.map(|_| true),
        };
        match stored {
            Ok(true) => self.committed = committable,
            Ok(false) => {
                // Another replica may run the group now: this one must not move its offset.
                tracing::info!(
                    message =
                        "A consumer group's commit was refused: this replica no longer owns it.",
                    key = key.as_str()
                );
                self.fenced_out = true;
            }
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
