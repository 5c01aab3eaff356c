//! [`Cluster`]: the shared state of one member, the driver task that keeps its lease, places
//! and takes units and asks for handoffs, and the tasks that follow the members and the
//! ownership keys by watch.
//!
//! Everything the tasks learn lands in one `State` under a mutex, which is never held across an
//! await: the driver plans under the lock, then talks to the store without it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use trellis_meta::{
    CasOutcome, GuardedOutcome, GuardedPut, KeyValue, LeaseId, LeaseKeeper, LeaseStatus, MetaError,
    MetadataStore, Range, WatchEvent,
};

use crate::claim::{Term, Unit};
use crate::{
    ClusterError, ClusterSettings, Load, MEMBERS_PREFIX, MemberInfo, OWNERS_PREFIX, OwnerValue,
    Placement, Revoked, balanced_assignment, member_key, metrics, owner_key,
};

/// How often the driver looks again without being woken (retries after store errors).
const TICK: Duration = Duration::from_millis(250);
/// How long a holder asked to hand a unit off may take to release it (finish in-flight work
/// and commit) before its term is ended for it.
const HANDOFF_GRACE: Duration = Duration::from_secs(60);
/// How many takes and releases one driver step runs at once.
const ACTIONS_AT_ONCE: usize = 16;
/// The least time between two writes of the member key for load.
const LOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Backoff of the watch tasks and of lease re-grants while the store is away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// One member of the cluster. Cheap to clone; the last clone dropped stops its tasks and its
/// lease refreshes *without* releasing anything (as if the process died): the lease then
/// expires and others take its units. [`Cluster::leave`] is the graceful way out.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    _life: Arc<Life>,
}

/// Dropped with the last `Cluster` clone.
struct Life {
    inner: Arc<Inner>,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
        if let Ok(mut state) = self.inner.state.lock() {
            state.lease = None;
        }
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn MetadataStore>,
    settings: ClusterSettings,
    started_at_ms: u64,
    state: Mutex<State>,
    /// Bumped on every change a waiting `acquire` may care about.
    pub(crate) changed: watch::Sender<u64>,
    /// Wakes the driver.
    wake: Notify,
    /// Wakes the health monitor (a new lease to follow).
    health_wake: Notify,
    health: watch::Sender<bool>,
    shutdown: CancellationToken,
}

/// The current lease and the keeper refreshing it.
struct LeaseHandle {
    id: LeaseId,
    ttl: Duration,
    keeper: LeaseKeeper,
}

#[derive(Debug, Clone)]
struct Owner {
    member: String,
    revision: u64,
    lease: Option<LeaseId>,
}

struct Declared {
    placement: Placement,
    handles: usize,
    owner: watch::Sender<Option<String>>,
}

/// A term this member holds.
struct Slot {
    term: Arc<Term>,
    /// Given to an `acquire` caller as a `Claim`.
    handed_out: bool,
    /// When the holder was asked to hand the unit off.
    handoff_asked: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct State {
    lease: Option<LeaseHandle>,
    /// Set when a put said our lease is gone, before the keeper noticed.
    lease_gone: bool,
    healthy: bool,
    leaving: bool,
    members: BTreeMap<String, MemberInfo>,
    owners: BTreeMap<String, Owner>,
    /// The owner of each unit before its key was last deleted (for the takeover count).
    last_owner: BTreeMap<String, String>,
    declared: BTreeMap<String, Declared>,
    terms: BTreeMap<String, Slot>,
    /// The store revision the owners map is current to (the last range or watch event).
    owners_revision: u64,
    /// Ownership keys we deleted at release, by the revision of the delete, until the watch
    /// reports it: an older event of the key must not bring it back (and get it adopted).
    deleted: BTreeMap<String, u64>,
    /// Terms whose `Claim` was dropped without `release`: the driver releases them.
    abandoned: Vec<Arc<Term>>,
    load: Load,
    load_dirty: bool,
    load_written_at: Option<Instant>,
    /// The last Balanced placement and its inputs, recomputed only when they change.
    placement: Option<CachedPlacement>,
}

/// A Balanced placement: (sorted live members, sorted Balanced units, unit -> member).
type CachedPlacement = (Vec<String>, Vec<String>, BTreeMap<String, String>);

/// What the driver does after planning under the lock.
enum Action {
    Take(String),
    Release(Arc<Term>),
}

impl Cluster {
    /// Grants the lease, registers the member key, reads the members and the ownership keys,
    /// and starts the keeper, the watches and the driver. Errors (store unreachable) are
    /// returned, not retried.
    pub async fn join(
        store: Arc<dyn MetadataStore>,
        settings: ClusterSettings,
    ) -> Result<Cluster, ClusterError> {
        if settings.member_id.is_empty() || settings.member_id.contains('/') {
            return Err(ClusterError::Settings(
                "the member id must be non-empty and contain no '/'",
            ));
        }
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (changed, _) = watch::channel(0);
        let (health, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            store: store.clone(),
            settings,
            started_at_ms,
            state: Mutex::new(State::default()),
            changed,
            wake: Notify::new(),
            health_wake: Notify::new(),
            health,
            shutdown: CancellationToken::new(),
        });
        let lease = inner.register().await?;
        let members = store.range(MEMBERS_PREFIX).await;
        let owners = store.range(OWNERS_PREFIX).await;
        let (members, owners) = match (members, owners) {
            (Ok(members), Ok(owners)) => (members, owners),
            (Err(error), _) | (_, Err(error)) => {
                let _ = store.lease_revoke(lease.id).await;
                return Err(error.into());
            }
        };
        {
            let mut state = inner.lock();
            state.lease = Some(lease);
            apply_members_snapshot(&mut state, &members);
            inner.apply_owners_snapshot(&mut state, &owners);
        }
        inner.check_health();
        tokio::spawn(follow(inner.clone(), Followed::Members, Some(members)));
        tokio::spawn(follow(inner.clone(), Followed::Owners, Some(owners)));
        tokio::spawn(drive(inner.clone()));
        tokio::spawn(monitor_health(inner.clone()));
        tracing::info!(
            message = "Joined the cluster.",
            member = %inner.settings.member_id,
        );
        Ok(Cluster {
            _life: Arc::new(Life {
                inner: inner.clone(),
            }),
            inner,
        })
    }

    pub fn member_id(&self) -> &str {
        &self.inner.settings.member_id
    }

    /// The lease TTL as granted (whole seconds), or as configured before the grant.
    pub fn lease_ttl(&self) -> Duration {
        let state = self.inner.lock();
        state
            .lease
            .as_ref()
            .map_or(self.inner.settings.lease_ttl, |lease| lease.ttl)
    }

    /// The current lease's id (`None` between a lost lease and its replacement).
    pub fn lease_id(&self) -> Option<LeaseId> {
        self.inner.lock().lease.as_ref().map(|lease| lease.id)
    }

    /// Live members, sorted by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.lock().members.values().cloned().collect()
    }

    /// Unit -> owning member id, for every ownership key.
    pub fn owners(&self) -> BTreeMap<String, String> {
        self.inner
            .lock()
            .owners
            .iter()
            .map(|(unit, owner)| (unit.clone(), owner.member.clone()))
            .collect()
    }

    /// Publishes this member's load in its member key (at most every 2 s; the latest wins).
    pub fn set_load(&self, load: Load) {
        {
            let mut state = self.inner.lock();
            if state.load == load {
                return;
            }
            state.load = load;
            state.load_dirty = true;
        }
        self.inner.wake.notify_one();
    }

    /// True while this replica's lease is provably alive with a safety margin
    /// (now + margin < held_until). False => not ready; no delivery; no commit.
    pub fn healthy(&self) -> bool {
        self.inner.lease_alive(None)
    }

    /// Follows [`Cluster::healthy`] as the driver sees it change.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.inner.health.subscribe()
    }

    /// Declares a unit this replica could run. Dropping the `Unit` withdraws it.
    pub fn unit(&self, name: &str, placement: Placement) -> Unit {
        let owner = {
            let mut state = self.inner.lock();
            let current = state.owners.get(name).map(|owner| owner.member.clone());
            let declared = state
                .declared
                .entry(name.to_owned())
                .or_insert_with(|| Declared {
                    placement,
                    handles: 0,
                    owner: watch::channel(current).0,
                });
            declared.handles += 1;
            declared.placement = placement;
            declared.owner.subscribe()
        };
        self.inner.wake.notify_one();
        Unit::new(self.inner.clone(), name.to_owned(), owner)
    }

    /// Stops taking units, revokes every claim ([`Revoked::Lost`]), releases the ownership keys
    /// and revokes the lease (which deletes the member key and any ownership key left).
    pub async fn leave(&self) {
        let (terms, lease) = {
            let mut state = self.inner.lock();
            state.leaving = true;
            let mut terms: Vec<Arc<Term>> = std::mem::take(&mut state.terms)
                .into_values()
                .map(|slot| slot.term)
                .collect();
            terms.append(&mut state.abandoned);
            (terms, state.lease.as_ref().map(|lease| lease.id))
        };
        for term in &terms {
            term.revoke(Revoked::Lost);
        }
        for term in &terms {
            self.inner.delete_owner_key(term).await;
        }
        if let Some(lease) = lease
            && let Err(error) = self.inner.store.lease_revoke(lease).await
        {
            tracing::warn!(
                message = "Failed to revoke the cluster lease at leave; it will expire.",
                error = &error as &dyn std::error::Error,
            );
        }
        self.inner.shutdown.cancel();
        self.inner.lock().lease = None;
        self.inner.check_health();
        self.inner.publish_owned();
        tracing::info!(message = "Left the cluster.", member = %self.inner.settings.member_id);
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("member_id", &self.inner.settings.member_id)
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn member_id(&self) -> &str {
        &self.settings.member_id
    }

    fn info(&self, load: Load) -> MemberInfo {
        MemberInfo {
            id: self.settings.member_id.clone(),
            http: self.settings.http.clone(),
            grpc: self.settings.grpc.clone(),
            version: self.settings.version.clone(),
            started_at_ms: self.started_at_ms,
            load,
        }
    }

    /// Grants a lease and puts the member key under it.
    async fn register(&self) -> Result<LeaseHandle, ClusterError> {
        let lease = self.store.lease_grant(self.settings.lease_ttl).await?;
        let load = self.lock().load.clone();
        let value = serde_json::to_vec(&self.info(load)).unwrap_or_default();
        let put = GuardedPut::new(member_key(self.member_id()), value).lease(lease.id);
        match self.store.guarded_put(put).await {
            Ok(GuardedOutcome::Written { .. }) => {}
            Ok(GuardedOutcome::Conflict { .. }) => return Err(ClusterError::LeaseEnded),
            Err(MetaError::LeaseNotFound { .. }) => return Err(ClusterError::LeaseEnded),
            Err(error) => {
                let _ = self.store.lease_revoke(lease.id).await;
                return Err(error.into());
            }
        }
        Ok(LeaseHandle {
            id: lease.id,
            ttl: lease.ttl,
            keeper: LeaseKeeper::spawn(self.store.clone(), lease),
        })
    }

    /// The margin kept below `held_until`: a fifth of the TTL, at least 500 ms, but at most a
    /// third of it: the keeper refreshes every third, and a larger margin would make health
    /// flap at a 1 s TTL on any refresh a little late.
    fn margin(ttl: Duration) -> Duration {
        (ttl / 5).max(Duration::from_millis(500)).min(ttl / 3)
    }

    /// Whether the current lease (and, if given, it is that lease) is provably alive now.
    pub(crate) fn lease_alive(&self, id: Option<LeaseId>) -> bool {
        let state = self.lock();
        let Some(lease) = state.lease.as_ref() else {
            return false;
        };
        if id.is_some_and(|id| id != lease.id) || state.lease_gone {
            return false;
        }
        lease
            .keeper
            .held_until()
            .is_some_and(|until| Instant::now() + Inner::margin(lease.ttl) < until)
    }

    /// Recomputes health; on a change, tells watchers and, when it turned false, revokes every
    /// claim (their keys may still be ours: if the lease is proven again, `plan` adopts them).
    fn check_health(&self) -> bool {
        let healthy = self.lease_alive(None) && !self.shutdown.is_cancelled();
        let revoked = {
            let mut state = self.lock();
            if state.healthy == healthy {
                return healthy;
            }
            state.healthy = healthy;
            if healthy {
                Vec::new()
            } else {
                std::mem::take(&mut state.terms)
                    .into_values()
                    .map(|slot| slot.term)
                    .collect::<Vec<_>>()
            }
        };
        for term in &revoked {
            term.revoke(Revoked::LeaseUnproven);
        }
        if healthy {
            tracing::info!(message = "Cluster lease is healthy.", member = %self.member_id());
        } else if !self.shutdown.is_cancelled() {
            tracing::warn!(
                message = "Cluster lease cannot be proven alive; every claim is revoked.",
                member = %self.member_id(),
                claims = revoked.len(),
            );
        }
        ::metrics::gauge!(metrics::LEASE_HEALTHY).set(if healthy { 1.0 } else { 0.0 });
        self.health.send_replace(healthy);
        self.bump();
        self.publish_owned();
        healthy
    }

    pub(crate) fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Hands out a held term not yet given to a caller.
    pub(crate) fn take_unhanded(&self, unit: &str) -> Option<Arc<Term>> {
        let mut state = self.lock();
        let slot = state.terms.get_mut(unit)?;
        if slot.handed_out || slot.term.is_lost() {
            return None;
        }
        slot.handed_out = true;
        Some(slot.term.clone())
    }

    /// A `Unit` handle went away.
    pub(crate) fn undeclare(&self, unit: &str) {
        {
            let mut state = self.lock();
            if let Some(declared) = state.declared.get_mut(unit) {
                declared.handles = declared.handles.saturating_sub(1);
                if declared.handles == 0 {
                    state.declared.remove(unit);
                }
            }
        }
        self.wake();
    }

    /// A `Claim` was dropped without `release`: the driver releases its key.
    pub(crate) fn abandon(&self, term: Arc<Term>) {
        self.lock().abandoned.push(term);
        self.wake();
    }

    /// Ends a term: deletes its key if the key is still this term's, then forgets the term.
    /// The term stays listed until the delete is done, so `plan` does not adopt the key
    /// meanwhile.
    pub(crate) async fn release(&self, term: &Arc<Term>) {
        term.mark_lost();
        // A later term on the same key (adopted after a lease scare) must keep it.
        let superseded = self.lock().terms.get(&term.unit).is_some_and(|slot| {
            !Arc::ptr_eq(&slot.term, term) && slot.term.revision == term.revision
        });
        let deleted_at = if superseded {
            None
        } else {
            self.delete_owner_key(term).await
        };
        {
            let mut state = self.lock();
            if let Some(deleted_at) = deleted_at {
                if state
                    .owners
                    .get(&term.unit)
                    .is_some_and(|owner| owner.revision == term.revision)
                    && let Some(previous) = state.owners.remove(&term.unit)
                {
                    state.last_owner.insert(term.unit.clone(), previous.member);
                    publish_owner(&mut state, &term.unit);
                }
                state.deleted.insert(term.unit.clone(), deleted_at);
            }
            if state
                .terms
                .get(&term.unit)
                .is_some_and(|slot| Arc::ptr_eq(&slot.term, term))
            {
                state.terms.remove(&term.unit);
            }
        }
        self.bump();
        self.publish_owned();
        self.wake();
    }

    /// Deletes the term's key if it is still the term's; returns the revision of the delete.
    async fn delete_owner_key(&self, term: &Term) -> Option<u64> {
        match self
            .store
            .compare_and_delete(&term.key, term.revision)
            .await
        {
            Ok(CasOutcome::Written { revision }) => {
                tracing::debug!(message = "Released a unit.", unit = %term.unit);
                Some(revision)
            }
            Ok(CasOutcome::Conflict { .. }) => None,
            Err(error) => {
                tracing::warn!(
                    message = "Failed to release a unit; its key goes with the lease.",
                    unit = %term.unit,
                    error = &error as &dyn std::error::Error,
                );
                None
            }
        }
    }

    fn publish_owned(&self) {
        let counts = {
            let state = self.lock();
            let mut counts = [0usize; 3];
            for unit in state.terms.keys() {
                let kind = unit.split('/').next().unwrap_or_default();
                if let Some(idx) = metrics::KINDS.iter().position(|k| *k == kind) {
                    counts[idx] += 1;
                }
            }
            counts
        };
        for (kind, count) in metrics::KINDS.iter().zip(counts) {
            ::metrics::gauge!(metrics::OWNED_UNITS, "kind" => *kind).set(count as f64);
        }
    }

    fn apply_owners_snapshot(&self, state: &mut State, range: &Range) {
        let mut owners = BTreeMap::new();
        for kv in &range.kvs {
            if let Some((unit, owner)) = parse_owner(kv) {
                owners.insert(unit, owner);
            }
        }
        // Our own writes newer than the snapshot stay; older terms missing from it are lost.
        let mut lost = Vec::new();
        for (unit, slot) in &state.terms {
            let present = owners
                .get(unit)
                .is_some_and(|owner| owner.revision == slot.term.revision);
            if present {
                continue;
            }
            if slot.term.revision > range.revision {
                owners.insert(
                    unit.clone(),
                    Owner {
                        member: self.member_id().to_owned(),
                        revision: slot.term.revision,
                        lease: Some(slot.term.lease),
                    },
                );
            } else {
                lost.push(unit.clone());
            }
        }
        for unit in lost {
            if let Some(slot) = state.terms.remove(&unit) {
                slot.term.revoke(Revoked::Lost);
            }
        }
        state.owners = owners;
        state
            .deleted
            .retain(|_, deleted_at| *deleted_at > range.revision);
        state.owners_revision = state.owners_revision.max(range.revision);
        let units: Vec<String> = state.declared.keys().cloned().collect();
        for unit in units {
            publish_owner(state, &unit);
        }
    }

    fn apply_owners_event(&self, state: &mut State, event: WatchEvent) {
        state.owners_revision = state.owners_revision.max(event.mod_revision());
        match event {
            WatchEvent::Put(kv) => {
                let Some((unit, owner)) = parse_owner(&kv) else {
                    return;
                };
                if state
                    .deleted
                    .get(&unit)
                    .is_some_and(|deleted_at| owner.revision < *deleted_at)
                {
                    return;
                }
                // An event older than what we know (our own take, reported before the watch
                // caught up) changes nothing.
                if state
                    .owners
                    .get(&unit)
                    .is_some_and(|known| known.revision > owner.revision)
                {
                    return;
                }
                if let Some(slot) = state.terms.get(&unit)
                    && slot.term.revision < owner.revision
                {
                    // Owner keys are never rewritten; a newer one means ours is gone.
                    if let Some(slot) = state.terms.remove(&unit) {
                        slot.term.revoke(Revoked::Lost);
                    }
                }
                state.owners.insert(unit.clone(), owner);
                publish_owner(state, &unit);
            }
            WatchEvent::Delete { key, mod_revision } => {
                let Some(unit) = key.strip_prefix(OWNERS_PREFIX) else {
                    return;
                };
                if state
                    .deleted
                    .get(unit)
                    .is_some_and(|deleted_at| *deleted_at <= mod_revision)
                {
                    state.deleted.remove(unit);
                }
                if state
                    .owners
                    .get(unit)
                    .is_some_and(|known| known.revision < mod_revision)
                    && let Some(previous) = state.owners.remove(unit)
                {
                    state.last_owner.insert(unit.to_owned(), previous.member);
                }
                if state
                    .terms
                    .get(unit)
                    .is_some_and(|slot| slot.term.revision < mod_revision)
                    && let Some(slot) = state.terms.remove(unit)
                    && !slot.term.is_lost()
                {
                    tracing::warn!(
                        message = "Lost a unit: its ownership key was deleted.",
                        unit
                    );
                    slot.term.revoke(Revoked::Lost);
                }
                publish_owner(state, unit);
            }
        }
    }

    /// One pass of the driver: lease, health, abandoned claims, load, placement.
    async fn step(&self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        if self.lease_lost() {
            self.renew_lease().await;
        }
        let healthy = self.check_health();
        let abandoned = std::mem::take(&mut self.lock().abandoned);
        for term in abandoned {
            self.release(&term).await;
        }
        self.write_load().await;
        if !healthy {
            return;
        }
        // A few at a time: a replica starting with many units takes them in a fraction of the
        // time one by one would need.
        futures::stream::iter(self.plan())
            .for_each_concurrent(ACTIONS_AT_ONCE, |action| async move {
                match action {
                    Action::Take(unit) => self.take(unit).await,
                    Action::Release(term) => self.release(&term).await,
                }
            })
            .await;
    }

    fn lease_lost(&self) -> bool {
        let state = self.lock();
        state.lease_gone
            || state
                .lease
                .as_ref()
                .is_none_or(|lease| lease.keeper.status() == LeaseStatus::Lost)
    }

    /// The lease is gone for good: revoke everything, grant a new one, register again.
    async fn renew_lease(&self) {
        {
            let mut state = self.lock();
            if state.lease.is_some() {
                ::metrics::counter!(metrics::LEASE_LOST).increment(1);
                tracing::warn!(
                    message = "Cluster lease lost; revoking every claim and joining again.",
                    member = %self.member_id(),
                );
            }
            state.lease = None;
            state.lease_gone = false;
            for (_, slot) in std::mem::take(&mut state.terms) {
                slot.term.revoke(Revoked::LeaseUnproven);
            }
        }
        self.check_health();
        match self.register().await {
            Ok(lease) => {
                if self.shutdown.is_cancelled() {
                    let _ = self.store.lease_revoke(lease.id).await;
                    return;
                }
                self.lock().lease = Some(lease);
                self.health_wake.notify_one();
                tracing::info!(message = "Registered again under a new lease.", member = %self.member_id());
            }
            Err(error) => tracing::warn!(
                message = "Failed to register under a new lease; retrying.",
                error = &error as &dyn std::error::Error,
            ),
        }
    }

    async fn write_load(&self) {
        let (load, lease) = {
            let mut state = self.lock();
            let due = state
                .load_written_at
                .is_none_or(|at| at.elapsed() >= LOAD_INTERVAL);
            let Some(lease) = state.lease.as_ref().map(|lease| lease.id) else {
                return;
            };
            if !state.load_dirty || !due {
                return;
            }
            state.load_dirty = false;
            state.load_written_at = Some(Instant::now());
            (state.load.clone(), lease)
        };
        let value = serde_json::to_vec(&self.info(load)).unwrap_or_default();
        let put = GuardedPut::new(member_key(self.member_id()), value).lease(lease);
        match self.store.guarded_put(put).await {
            Ok(_) => {}
            Err(MetaError::LeaseNotFound { .. }) => self.lock().lease_gone = true,
            Err(error) => {
                self.lock().load_dirty = true;
                tracing::debug!(
                    message = "Failed to publish load; retrying.",
                    error = &error as &dyn std::error::Error,
                );
            }
        }
    }

    /// Decides, under the lock, what to take, adopt, hand off and release.
    fn plan(&self) -> Vec<Action> {
        let me = self.member_id().to_owned();
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.leaving {
            return Vec::new();
        }
        let Some(lease) = state.lease.as_ref().map(|lease| lease.id) else {
            return Vec::new();
        };
        let mut members: Vec<String> = state.members.keys().cloned().collect();
        if !state.members.contains_key(&me) {
            members.push(me.clone());
            members.sort();
        }
        let balanced: Vec<String> = state
            .declared
            .iter()
            .filter(|(_, declared)| declared.placement == Placement::Balanced)
            .map(|(unit, _)| unit.clone())
            .collect();
        let assignment = match &state.placement {
            Some((m, u, assignment)) if *m == members && *u == balanced => assignment.clone(),
            _ => {
                let assignment = balanced_assignment(&members, &balanced);
                state.placement = Some((members, balanced, assignment.clone()));
                assignment
            }
        };
        let mut actions = Vec::new();
        let mut adopted = Vec::new();
        let mut handoffs = Vec::new();
        for (unit, declared) in &state.declared {
            let elsewhere = declared.placement == Placement::Balanced
                && assignment.get(unit).is_some_and(|member| *member != me);
            if let Some(slot) = state.terms.get_mut(unit) {
                if slot.term.is_lost() {
                    // Being released.
                    continue;
                }
                if elsewhere && !slot.handed_out {
                    // Lost at once, so no `acquire` hands it out while it is released.
                    slot.term.mark_lost();
                    actions.push(Action::Release(slot.term.clone()));
                } else if elsewhere {
                    match slot.handoff_asked {
                        None => {
                            slot.handoff_asked = Some(Instant::now());
                            handoffs.push(slot.term.clone());
                        }
                        // A holder that never releases would keep the unit from its new
                        // owner for ever; past the grace its term ends (its fence refuses).
                        Some(asked) if asked.elapsed() > HANDOFF_GRACE => {
                            tracing::warn!(
                                message = "A handed-off unit was not released in time; ending its term.",
                                unit = %unit,
                            );
                            slot.term.revoke(Revoked::Lost);
                            actions.push(Action::Release(slot.term.clone()));
                        }
                        Some(_) => {}
                    }
                }
                continue;
            }
            match state.owners.get(unit) {
                None => {
                    let mine = match declared.placement {
                        Placement::FirstCome => true,
                        Placement::Balanced => assignment.get(unit) == Some(&me),
                    };
                    if mine {
                        actions.push(Action::Take(unit.clone()));
                    }
                }
                // Ours under the current lease but no term: the lease was unproven for a
                // while, or the reply to our put was lost. Under another lease (a previous
                // process with our id), it goes when that lease ends.
                Some(owner) if owner.member == me && owner.lease == Some(lease) => {
                    adopted.push((unit.clone(), owner.revision));
                }
                Some(_) => {}
            }
        }
        // Terms of units no longer declared and not in a caller's hands.
        for slot in state.terms.values() {
            if !slot.handed_out
                && !slot.term.is_lost()
                && !state.declared.contains_key(&slot.term.unit)
            {
                slot.term.mark_lost();
                actions.push(Action::Release(slot.term.clone()));
            }
        }
        let any_adopted = !adopted.is_empty();
        for (unit, revision) in adopted {
            let term = Arc::new(Term::new(unit.clone(), revision, lease));
            tracing::info!(
                message = "Adopted a unit whose ownership key is still ours.",
                unit
            );
            state.terms.insert(
                unit,
                Slot {
                    term,
                    handed_out: false,
                    handoff_asked: None,
                },
            );
        }
        drop(guard);
        for term in handoffs {
            tracing::info!(message = "Handing off a unit for balance.", unit = %term.unit);
            ::metrics::counter!(metrics::HANDOFFS).increment(1);
            term.revoke(Revoked::Handoff);
        }
        if any_adopted {
            self.bump();
            self.publish_owned();
        }
        actions
    }

    /// Creates the unit's ownership key under our lease, if it is absent.
    async fn take(&self, unit: String) {
        let Some(lease) = self.lock().lease.as_ref().map(|lease| lease.id) else {
            return;
        };
        let key = owner_key(&unit);
        let value = serde_json::to_vec(&OwnerValue {
            member: self.member_id().to_owned(),
            lease: Some(lease),
        })
        .unwrap_or_default();
        let put = GuardedPut::new(key.clone(), value)
            .guard(key, trellis_meta::Expect::Absent)
            .lease(lease);
        match self.store.guarded_put(put).await {
            Ok(GuardedOutcome::Written { revision }) => {
                let takeover = {
                    let mut state = self.lock();
                    let seen = state.owners.get(&unit).map(|owner| owner.revision);
                    if revision <= state.owners_revision && seen != Some(revision) {
                        // The watch already saw our key come and go (the lease ended, or
                        // someone deleted it): there is no term to start.
                        tracing::debug!(message = "A unit taken was gone at once.", unit);
                        return;
                    }
                    let takeover = state.last_owner.get(&unit).is_some_and(|prev| {
                        *prev != self.settings.member_id && !state.members.contains_key(prev)
                    });
                    let term = Arc::new(Term::new(unit.clone(), revision, lease));
                    state.terms.insert(
                        unit.clone(),
                        Slot {
                            term,
                            handed_out: false,
                            handoff_asked: None,
                        },
                    );
                    if state
                        .owners
                        .get(&unit)
                        .is_none_or(|o| o.revision < revision)
                    {
                        state.owners.insert(
                            unit.clone(),
                            Owner {
                                member: self.member_id().to_owned(),
                                revision,
                                lease: Some(lease),
                            },
                        );
                        publish_owner(&mut state, &unit);
                    }
                    takeover
                };
                if takeover {
                    ::metrics::counter!(metrics::TAKEOVERS).increment(1);
                }
                tracing::info!(message = "Took a unit.", unit, revision, takeover);
                self.bump();
                self.publish_owned();
            }
            Ok(GuardedOutcome::Conflict { .. }) => {}
            Err(MetaError::LeaseNotFound { .. }) => {
                self.lock().lease_gone = true;
                self.wake();
            }
            Err(error) => tracing::debug!(
                message = "Failed to take a unit; retrying.",
                unit,
                error = &error as &dyn std::error::Error,
            ),
        }
    }
}

fn publish_owner(state: &mut State, unit: &str) {
    let owner = state.owners.get(unit).map(|owner| owner.member.clone());
    if let Some(declared) = state.declared.get(unit) {
        declared.owner.send_if_modified(|current| {
            if *current == owner {
                false
            } else {
                current.clone_from(&owner);
                true
            }
        });
    }
}

fn parse_owner(kv: &KeyValue) -> Option<(String, Owner)> {
    let unit = kv.key.strip_prefix(OWNERS_PREFIX)?;
    match serde_json::from_slice::<OwnerValue>(&kv.value) {
        Ok(value) => Some((
            unit.to_owned(),
            Owner {
                member: value.member,
                revision: kv.mod_revision,
                lease: value.lease,
            },
        )),
        Err(error) => {
            tracing::warn!(message = "Ignoring an unreadable ownership key.", key = %kv.key, error = %error);
            None
        }
    }
}

fn parse_member(kv: &KeyValue) -> Option<MemberInfo> {
    match serde_json::from_slice::<MemberInfo>(&kv.value) {
        Ok(info) => Some(info),
        Err(error) => {
            tracing::warn!(message = "Ignoring an unreadable member key.", key = %kv.key, error = %error);
            None
        }
    }
}

fn apply_members_snapshot(state: &mut State, range: &Range) {
    state.members = range
        .kvs
        .iter()
        .filter_map(parse_member)
        .map(|info| (info.id.clone(), info))
        .collect();
    ::metrics::gauge!(metrics::MEMBERS).set(state.members.len() as f64);
}

fn apply_members_event(state: &mut State, event: WatchEvent) {
    match event {
        WatchEvent::Put(kv) => {
            if let Some(info) = parse_member(&kv) {
                state.members.insert(info.id.clone(), info);
            }
        }
        WatchEvent::Delete { key, .. } => {
            if let Some(id) = key.strip_prefix(MEMBERS_PREFIX) {
                state.members.remove(id);
            }
        }
    }
    ::metrics::gauge!(metrics::MEMBERS).set(state.members.len() as f64);
}

#[derive(Debug, Clone, Copy)]
enum Followed {
    Members,
    Owners,
}

impl Followed {
    fn prefix(self) -> &'static str {
        match self {
            Followed::Members => MEMBERS_PREFIX,
            Followed::Owners => OWNERS_PREFIX,
        }
    }
}

/// Follows one prefix: range, then watch from the revision after it; when the watch fails or
/// ends (compaction, the store closing), range and watch again. Never stops until shutdown.
async fn follow(inner: Arc<Inner>, followed: Followed, mut first: Option<Range>) {
    let prefix = followed.prefix();
    let mut backoff = RETRY_MIN;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let range = match first.take() {
            Some(range) => range,
            None => match inner.store.range(prefix).await {
                Ok(range) => {
                    let mut state = inner.lock();
                    match followed {
                        Followed::Members => apply_members_snapshot(&mut state, &range),
                        Followed::Owners => inner.apply_owners_snapshot(&mut state, &range),
                    }
                    drop(state);
                    inner.changed_and_wake();
                    range
                }
                Err(error) => {
                    tracing::debug!(
                        message = "Failed to read cluster keys; retrying.",
                        prefix,
                        error = &error as &dyn std::error::Error
                    );
                    retry_sleep(&inner, &mut backoff).await;
                    continue;
                }
            },
        };
        let mut stream = match inner.store.watch(prefix, Some(range.revision + 1)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(
                    message = "Failed to watch cluster keys; reading them again.",
                    prefix,
                    error = &error as &dyn std::error::Error
                );
                retry_sleep(&inner, &mut backoff).await;
                continue;
            }
        };
        backoff = RETRY_MIN;
        loop {
            let item = tokio::select! {
                () = inner.shutdown.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(event)) => {
                    let mut state = inner.lock();
                    match followed {
                        Followed::Members => apply_members_event(&mut state, event),
                        Followed::Owners => inner.apply_owners_event(&mut state, event),
                    }
                    drop(state);
                    inner.changed_and_wake();
                }
                Some(Err(error)) => {
                    tracing::warn!(
                        message = "Cluster watch failed; reading the keys again.",
                        prefix,
                        error = &error as &dyn std::error::Error
                    );
                    break;
                }
                None => {
                    tracing::warn!(
                        message = "Cluster watch ended; reading the keys again.",
                        prefix
                    );
                    break;
                }
            }
        }
        retry_sleep(&inner, &mut backoff).await;
    }
}

impl Inner {
    fn changed_and_wake(&self) {
        self.bump();
        self.wake();
    }
}

async fn retry_sleep(inner: &Inner, backoff: &mut Duration) {
    tokio::select! {
        () = inner.shutdown.cancelled() => {}
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(RETRY_MAX);
}

/// The driver: one step whenever woken and on every tick. Its steps talk to the store and may
/// wait on it; health is watched apart (`monitor_health`) so claims are revoked in time even
/// then.
async fn drive(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        inner.step().await;
    }
}

/// Rechecks health when the lease status changes, at the instant it would run out, when a new
/// lease is in place, and on every tick; never waits on the store.
async fn monitor_health(inner: Arc<Inner>) {
    loop {
        let (status, deadline) = {
            let state = inner.lock();
            match state.lease.as_ref() {
                Some(lease) => (
                    Some(lease.keeper.subscribe()),
                    lease
                        .keeper
                        .held_until()
                        .map(|until| until.checked_sub(Inner::margin(lease.ttl)).unwrap_or(until)),
                ),
                None => (None, None),
            }
        };
        let now = Instant::now();
        let deadline = deadline
            .filter(|deadline| *deadline > now)
            .map_or(now + TICK, |deadline| deadline.min(now + TICK));
        let status_changed = async {
            match status {
                Some(mut status) => {
                    if status.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = inner.health_wake.notified() => {}
            () = status_changed => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        let was = inner.lock().healthy;
        if inner.check_health() && !was {
            inner.wake();
        }
    }
}
