//! The embedded [`MetadataStore`]: one redb file, for a single-node Trellis with no etcd.
//!
//! Every write runs in one redb transaction that also bumps the store revision, so the data and
//! its revision are committed (and fsynced) together before the call returns. redb calls block,
//! so every one runs on tokio's blocking pool, never on the async executor. The change feed
//! behind `watch` lives in `feed.rs`; lease deadlines and the thread that expires them in
//! `lease.rs`; the byte layout of the file in `record.rs`.
//!
//! This is not a replicated store: one process owns the file, and a second open fails.

mod feed;
mod lease;
mod record;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use self::feed::Feed;
use self::lease::Leases;
use self::record::{
    EMPTY_STORE_REVISION, FORMAT_KEY, FORMAT_VERSION, KVS, LAST_LEASE_KEY, LEASE_KEYS, LEASES,
    META, REVISION_KEY, decode, encode,
};
use crate::{
    CasOutcome, Expect, GuardedOutcome, GuardedPut, KeyValue, Lease, LeaseId, MetaError,
    MetadataStore, Range, WatchEvent, WatchStream, expect_holds, ttl_seconds,
};

/// How many past events the store keeps in memory for watches that resume from a revision.
pub const DEFAULT_HISTORY_CAPACITY: usize = 10_000;
/// How many events a live watcher may have waiting before it counts as lagging.
// Large enough that a watcher briefly busy with a burst of subscription changes keeps up;
// small enough that a stuck one costs little memory before it is cut loose.
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

/// The [`MetadataStore`] kept in a local redb file.
///
/// Semantics are etcd's: an empty store is at revision 1, and every put, successful
/// compare-and-set and successful delete bumps the revision by one. The revision is persisted,
/// so it continues across reopens.
///
/// Leases expire by a timer thread in this process. Every lease found at `open` is ended there,
/// with its keys: the file is locked by one process, so a lease left in it belonged to a
/// process that is gone, and a restarted single node must not wait a TTL to own its work again
/// (etcd keeps leases across its own restarts because their holders live elsewhere). Lease ids
/// are still not reused. Revoking or expiring a lease deletes its keys one revision each (etcd
/// uses one revision for all of them), in one transaction.
///
/// Watches replay from an in-memory ring of the last [`EmbeddedOptions::history_capacity`]
/// events, which starts empty at `open`: a watch from a revision at or before the one the store
/// was opened at, or older than the ring, fails with [`MetaError::Compacted`]. A live watcher
/// whose buffer ([`EmbeddedOptions::watch_buffer`]) fills up is cut from the live feed and
/// resumes from the ring where it left off; if the ring has moved past that revision, its
/// stream yields `Compacted` and ends. Every watch stream ends when the store is dropped.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), trellis_meta::MetaError> {
/// use std::sync::Arc;
/// use trellis_meta::{EmbeddedStore, MetadataStore};
///
/// let store: Arc<dyn MetadataStore> =
///     Arc::new(EmbeddedStore::open(std::path::Path::new("/var/lib/trellis/meta.redb"))?);
/// let revision = store.put("topics/orders", "{}".into()).await?;
/// # Ok(())
/// # }
/// ```
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// Tuning for [`EmbeddedStore::open_with`].
///
/// ```no_run
/// # fn demo() -> Result<(), trellis_meta::MetaError> {
/// use trellis_meta::{EmbeddedOptions, EmbeddedStore};
///
/// let options = EmbeddedOptions::new().history_capacity(50_000).watch_buffer(4096);
/// let store = EmbeddedStore::open_with(std::path::Path::new("meta.redb"), options)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    history_capacity: usize,
    watch_buffer: usize,
}

/// What went wrong inside the embedded store. It reaches callers as the source of
/// [`MetaError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    #[error(
        "metadata store {} is already open, in this process or another; only one handle may use it at a time",
        .path.display()
    )]
    AlreadyOpen {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("failed to open metadata store {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error(
        "metadata store {} has on-disk format {found}; this build reads format {expected}",
        .path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the stored record for key {key:?} is corrupt: {reason}")]
    CorruptRecord { key: String, reason: &'static str },
    #[error("the metadata store has no revision record; the file is corrupt")]
    MissingRevision,
    #[error("failed to read the metadata store")]
    Read(#[source] redb::Error),
    #[error("failed to write the metadata store")]
    Write(#[source] redb::Error),
    #[error("a writer panicked while holding the write lock; the store refuses further use")]
    Poisoned,
    #[error("a blocking metadata store task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("failed to start the metadata store's lease timer")]
    Timer(#[source] std::io::Error),
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` with default options.
    ///
    /// This blocks on file I/O: call it at startup or from a blocking task.
    ///
    /// # Errors
    ///
    /// [`MetaError::Storage`] if the file cannot be opened, is not a metadata store, or is
    /// already open (the source is then [`EmbeddedError::AlreadyOpen`], naming the path).
    pub fn open(path: &Path) -> Result<EmbeddedStore, MetaError> {
        EmbeddedStore::open_with(path, EmbeddedOptions::new())
    }

    /// Opens (or creates) the store at `path`. Blocks like [`EmbeddedStore::open`].
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, MetaError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(source @ redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(EmbeddedError::AlreadyOpen {
                    path: path.to_owned(),
                    source,
                }
                .into());
            }
            Err(source) => {
                return Err(EmbeddedError::Open {
                    path: path.to_owned(),
                    source: source.into(),
                }
                .into());
            }
        };
        let revision = initialise(&db, path)?;
        tracing::info!(message = "Opened metadata store.", path = %path.display(), revision);
        let feed = Arc::new(Feed::new(revision, &options));
        let leases = Arc::new(Leases::new());
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            db,
            feed,
            leases: leases.clone(),
        });
        lease::start_timer(leases, Arc::downgrade(&inner))?;
        Ok(EmbeddedStore { inner })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl EmbeddedOptions {
    pub fn new() -> EmbeddedOptions {
        EmbeddedOptions {
            history_capacity: DEFAULT_HISTORY_CAPACITY,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }

    /// How many past events to keep for watches that start at a past revision. Older revisions
    /// report [`MetaError::Compacted`]. Default is [`DEFAULT_HISTORY_CAPACITY`].
    pub fn history_capacity(mut self, n_events: usize) -> EmbeddedOptions {
        self.history_capacity = n_events;
        self
    }

    /// How many events a live watcher may leave unread before it is cut from the live feed and
    /// made to catch up from history. Values below 1 count as 1. Default is
    /// [`DEFAULT_WATCH_BUFFER`].
    pub fn watch_buffer(mut self, n_events: usize) -> EmbeddedOptions {
        self.watch_buffer = n_events.max(1);
        self
    }
}

impl Default for EmbeddedOptions {
    fn default() -> EmbeddedOptions {
        EmbeddedOptions::new()
    }
}

impl From<EmbeddedError> for MetaError {
    fn from(error: EmbeddedError) -> MetaError {
        MetaError::Storage(Box::new(error))
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl MetadataStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.get(&key)).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, MetaError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        blocking(move || inner.range(&prefix)).await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, MetaError> {
        match self.write(key, Change::Put(value, None), None).await? {
            Written::Revision(revision) => Ok(revision),
            // An unconditional put has nothing to conflict with and always writes.
            Written::Conflict(_) | Written::Nothing => Err(MetaError::Storage(
                "an unconditional put did not write".into(),
            )),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, MetaError> {
        match self.write(key, Change::Delete, None).await? {
            Written::Revision(_) => Ok(true),
            Written::Conflict(_) | Written::Nothing => Ok(false),
        }
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Bytes,
    ) -> Result<CasOutcome, MetaError> {
        match self
            .write(key, Change::Put(value, None), Some(expect))
            .await?
        {
            Written::Revision(revision) => Ok(CasOutcome::Written { revision }),
            Written::Conflict(current) => Ok(CasOutcome::Conflict { current }),
            Written::Nothing => Ok(CasOutcome::Conflict { current: None }),
        }
    }

    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: u64,
    ) -> Result<CasOutcome, MetaError> {
        match self
            .write(key, Change::Delete, Some(Expect::ModRevision(mod_revision)))
            .await?
        {
            Written::Revision(revision) => Ok(CasOutcome::Written { revision }),
            Written::Conflict(current) => Ok(CasOutcome::Conflict { current }),
            Written::Nothing => Ok(CasOutcome::Conflict { current: None }),
        }
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<u64>,
    ) -> Result<WatchStream, MetaError> {
        feed::watch(self.inner.feed.clone(), prefix.to_owned(), start_revision).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let sent_at = Instant::now();
        let ttl = Duration::from_secs(ttl_seconds(ttl));
        let inner = self.inner.clone();
        let id = blocking(move || inner.lease_grant(ttl)).await?;
        Ok(Lease {
            id,
            ttl,
            held_until: sent_at + ttl,
        })
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Lease>, MetaError> {
        let sent_at = Instant::now();
        let refreshed = self.inner.leases.lock()?.refresh(lease);
        Ok(refreshed.map(|ttl| Lease {
            id: lease,
            ttl,
            held_until: sent_at + ttl,
        }))
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<bool, MetaError> {
        let inner = self.inner.clone();
        blocking(move || inner.end_leases(&[lease], false)).await
    }

    async fn guarded_put(&self, put: GuardedPut) -> Result<GuardedOutcome, MetaError> {
        let inner = self.inner.clone();
        blocking(move || inner.guarded_put(put)).await
    }
}

impl EmbeddedStore {
    async fn write(
        &self,
        key: &str,
        change: Change,
        expect: Option<Expect>,
    ) -> Result<Written, MetaError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.write(&key, change, expect)).await
    }
}

struct Inner {
    path: PathBuf,
    db: Database,
    feed: Arc<Feed>,
    leases: Arc<Leases>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.leases.close();
    }
}

enum Change {
    /// The value, and the lease to put it under (`None` detaches it from any lease).
    Put(Bytes, Option<LeaseId>),
    Delete,
}

enum Written {
    Revision(u64),
    Conflict(Option<KeyValue>),
    /// A delete of a key that does not exist: no revision is used.
    Nothing,
}

enum Plan {
    Commit(WatchEvent),
    Conflict(Option<KeyValue>),
    Nothing,
}

impl Inner {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let kvs = txn.open_table(KVS).map_err(read_error)?;
        let Some(record) = kvs.get(key).map_err(read_error)? else {
            return Ok(None);
        };
        Ok(Some(decode(key, record.value())?))
    }

    fn range(&self, prefix: &str) -> Result<Range, MetaError> {
        // One read transaction: the keys and the revision come from the same snapshot.
        let txn = self.db.begin_read().map_err(read_error)?;
        let meta = txn.open_table(META).map_err(read_error)?;
        let Some(revision) = meta.get(REVISION_KEY).map_err(read_error)? else {
            return Err(EmbeddedError::MissingRevision.into());
        };
        let revision = revision.value();
        let kvs = txn.open_table(KVS).map_err(read_error)?;
        let mut res = Vec::new();
        for entry in kvs.range(prefix..).map_err(read_error)? {
            let (key, record) = entry.map_err(read_error)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            res.push(decode(key, record.value())?);
        }
        Ok(Range { kvs: res, revision })
    }

    fn write(
        &self,
        key: &str,
        change: Change,
        expect: Option<Expect>,
    ) -> Result<Written, MetaError> {
        // Held from begin_write until the event is published: this is what orders commits and
        // what lets a new watcher snapshot history without a gap (see feed.rs).
        let mut feed = self.feed.lock()?;
        let txn = self.db.begin_write().map_err(write_error)?;
        match plan(&txn, key, change, expect)? {
            Plan::Commit(event) => {
                txn.commit().map_err(write_error)?;
                let revision = event.mod_revision();
                feed.publish(event);
                Ok(Written::Revision(revision))
            }
            Plan::Conflict(current) => {
                txn.abort().map_err(write_error)?;
                Ok(Written::Conflict(current))
            }
            Plan::Nothing => {
                txn.abort().map_err(write_error)?;
                Ok(Written::Nothing)
            }
        }
    }

    fn guarded_put(&self, put: GuardedPut) -> Result<GuardedOutcome, MetaError> {
        // The write lock also keeps lease expiry out until the put is committed, so the lease
        // checked live below cannot have its keys deleted in between.
        let mut feed = self.feed.lock()?;
        let txn = self.db.begin_write().map_err(write_error)?;
        {
            let kvs = txn.open_table(KVS).map_err(write_error)?;
            for (idx, (key, expect)) in put.guards.iter().enumerate() {
                let current = match kvs.get(key.as_str()).map_err(write_error)? {
                    Some(record) => Some(decode(key, record.value())?),
                    None => None,
                };
                if !expect_holds(*expect, current.as_ref()) {
                    drop(kvs);
                    txn.abort().map_err(write_error)?;
                    return Ok(GuardedOutcome::Conflict {
                        guard: idx,
                        current,
                    });
                }
            }
        }
        if let Some(lease) = put.lease
            && !self.leases.lock()?.is_live(lease, Instant::now())
        {
            txn.abort().map_err(write_error)?;
            return Err(MetaError::LeaseNotFound { lease });
        }
        match plan(&txn, &put.key, Change::Put(put.value, put.lease), None)? {
            Plan::Commit(event) => {
                txn.commit().map_err(write_error)?;
                let revision = event.mod_revision();
                feed.publish(event);
                Ok(GuardedOutcome::Written { revision })
            }
            // An unguarded put always commits.
            Plan::Conflict(_) | Plan::Nothing => {
                Err(MetaError::Storage("a guarded put did not write".into()))
            }
        }
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let _feed = self.feed.lock()?;
        let txn = self.db.begin_write().map_err(write_error)?;
        let id = {
            let mut meta = txn.open_table(META).map_err(write_error)?;
            let mut leases = txn.open_table(LEASES).map_err(write_error)?;
            let last = meta
                .get(LAST_LEASE_KEY)
                .map_err(write_error)?
                .map_or(0, |last| last.value());
            let id = last + 1;
            meta.insert(LAST_LEASE_KEY, id).map_err(write_error)?;
            leases.insert(id, ttl.as_secs()).map_err(write_error)?;
            id
        };
        txn.commit().map_err(write_error)?;
        let id = LeaseId::try_from(id)
            .map_err(|_| MetaError::Storage("the lease ids are exhausted".into()))?;
        self.leases.lock()?.insert(id, ttl);
        self.leases.notify();
        Ok(id)
    }

    /// Expires every lease whose deadline has passed. Called by the timer thread.
    fn expire_due(&self) -> Result<(), MetaError> {
        let due = self.leases.lock()?.due(Instant::now());
        if due.is_empty() {
            return Ok(());
        }
        self.end_leases(&due, true)?;
        Ok(())
    }

    /// Ends leases (revoked, or expired when `only_due`) and deletes their keys, each delete at
    /// its own revision, in one transaction. Returns whether any of them still existed.
    fn end_leases(&self, ids: &[LeaseId], only_due: bool) -> Result<bool, MetaError> {
        let mut feed = self.feed.lock()?;
        // Re-checked under the write lock: a keep-alive may have saved a lease meanwhile.
        let ending: Vec<LeaseId> = {
            let leases = self.leases.lock()?;
            let due = leases.due(Instant::now());
            ids.iter()
                .copied()
                .filter(|id| {
                    if only_due {
                        due.contains(id)
                    } else {
                        leases.contains(*id)
                    }
                })
                .collect()
        };
        if ending.is_empty() {
            return Ok(false);
        }
        let txn = self.db.begin_write().map_err(write_error)?;
        let events = delete_lease_keys(&txn, &ending)?;
        txn.commit().map_err(write_error)?;
        {
            let mut leases = self.leases.lock()?;
            for id in &ending {
                leases.remove(*id);
            }
        }
        for event in events {
            feed.publish(event);
        }
        if only_due {
            tracing::debug!(message = "Metadata leases expired.", leases = ?ending);
        }
        Ok(true)
    }
}

/// Deletes the lease rows of `ids` and every key under them inside `txn`, bumping the revision
/// once per deleted key. Returns the delete events in revision order.
fn delete_lease_keys(
    txn: &WriteTransaction,
    ids: &[LeaseId],
) -> Result<Vec<WatchEvent>, MetaError> {
    let mut meta = txn.open_table(META).map_err(write_error)?;
    let mut kvs = txn.open_table(KVS).map_err(write_error)?;
    let mut lease_keys = txn.open_table(LEASE_KEYS).map_err(write_error)?;
    let mut leases = txn.open_table(LEASES).map_err(write_error)?;
    let mut revision = match meta.get(REVISION_KEY).map_err(write_error)? {
        Some(revision) => revision.value(),
        None => return Err(EmbeddedError::MissingRevision.into()),
    };
    let ids: Vec<u64> = ids
        .iter()
        .filter_map(|id| u64::try_from(*id).ok())
        .collect();
    // A scan: keys under leases are few (ownership and membership keys), and a reverse index
    // would be one more table to keep consistent.
    let mut doomed = Vec::new();
    for entry in lease_keys.iter().map_err(write_error)? {
        let (key, lease) = entry.map_err(write_error)?;
        if ids.contains(&lease.value()) {
            doomed.push(key.value().to_owned());
        }
    }
    let mut events = Vec::with_capacity(doomed.len());
    for key in doomed {
        lease_keys.remove(key.as_str()).map_err(write_error)?;
        if kvs.remove(key.as_str()).map_err(write_error)?.is_some() {
            revision += 1;
            events.push(WatchEvent::Delete {
                key,
                mod_revision: revision,
            });
        }
    }
    for id in ids {
        leases.remove(id).map_err(write_error)?;
    }
    meta.insert(REVISION_KEY, revision).map_err(write_error)?;
    Ok(events)
}

/// Applies one change inside `txn` without committing it. The caller commits only on
/// `Plan::Commit`.
fn plan(
    txn: &WriteTransaction,
    key: &str,
    change: Change,
    expect: Option<Expect>,
) -> Result<Plan, MetaError> {
    let mut meta = txn.open_table(META).map_err(write_error)?;
    let mut kvs = txn.open_table(KVS).map_err(write_error)?;
    let mut lease_keys = txn.open_table(LEASE_KEYS).map_err(write_error)?;
    let revision = match meta.get(REVISION_KEY).map_err(write_error)? {
        Some(revision) => revision.value(),
        None => return Err(EmbeddedError::MissingRevision.into()),
    };
    let current = match kvs.get(key).map_err(write_error)? {
        Some(record) => Some(decode(key, record.value())?),
        None => None,
    };
    let holds = expect.is_none_or(|expect| expect_holds(expect, current.as_ref()));
    if !holds {
        return Ok(Plan::Conflict(current));
    }
    let new_revision = revision + 1;
    let event = match change {
        Change::Put(value, lease) => {
            let kv = KeyValue {
                key: key.to_owned(),
                value,
                create_revision: current
                    .as_ref()
                    .map_or(new_revision, |kv| kv.create_revision),
                mod_revision: new_revision,
                version: current.as_ref().map_or(1, |kv| kv.version + 1),
            };
            kvs.insert(key, encode(&kv).as_slice())
                .map_err(write_error)?;
            match lease.and_then(|lease| u64::try_from(lease).ok()) {
                Some(lease) => lease_keys.insert(key, lease).map_err(write_error)?,
                None => lease_keys.remove(key).map_err(write_error)?,
            };
            WatchEvent::Put(kv)
        }
        Change::Delete => {
            if current.is_none() {
                return Ok(Plan::Nothing);
            }
            kvs.remove(key).map_err(write_error)?;
            lease_keys.remove(key).map_err(write_error)?;
            WatchEvent::Delete {
                key: key.to_owned(),
                mod_revision: new_revision,
            }
        }
    };
    meta.insert(REVISION_KEY, new_revision)
        .map_err(write_error)?;
    Ok(Plan::Commit(event))
}

/// Creates the tables of a new store, checks the format of an existing one, ends the leases a
/// previous process left (deleting their keys), and returns the revision after that.
fn initialise(db: &Database, path: &Path) -> Result<u64, MetaError> {
    let open_error = |source: redb::Error| EmbeddedError::Open {
        path: path.to_owned(),
        source,
    };
    let txn = db.begin_write().map_err(|e| open_error(e.into()))?;
    let revision = {
        let mut meta = txn.open_table(META).map_err(|e| open_error(e.into()))?;
        // Creating the tables now means readers never see them missing.
        txn.open_table(KVS).map_err(|e| open_error(e.into()))?;
        txn.open_table(LEASE_KEYS)
            .map_err(|e| open_error(e.into()))?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(|e| open_error(e.into()))?
            .map(|format| format.value());
        match format {
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(EmbeddedError::UnsupportedFormat {
                    path: path.to_owned(),
                    found,
                    expected: FORMAT_VERSION,
                }
                .into());
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| open_error(e.into()))?;
            }
        }
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| open_error(e.into()))?
            .map(|revision| revision.value());
        match revision {
            Some(revision) => revision,
            None => {
                meta.insert(REVISION_KEY, EMPTY_STORE_REVISION)
                    .map_err(|e| open_error(e.into()))?;
                EMPTY_STORE_REVISION
            }
        }
    };
    let stale = {
        let table = txn.open_table(LEASES).map_err(|e| open_error(e.into()))?;
        let mut stale = Vec::new();
        for entry in table.iter().map_err(|e| open_error(e.into()))? {
            let (id, _ttl) = entry.map_err(|e| open_error(e.into()))?;
            if let Ok(id) = LeaseId::try_from(id.value()) {
                stale.push(id);
            }
        }
        stale
    };
    // No watcher can exist before `open` returns, so the delete events need not be published;
    // the revisions they used are before the feed's start.
    let revision = if stale.is_empty() {
        revision
    } else {
        let ended = delete_lease_keys(&txn, &stale)?;
        tracing::info!(
            message = "Ended the metadata leases of a previous process.",
            leases = stale.len(),
            keys = ended.len(),
        );
        ended.last().map_or(revision, WatchEvent::mod_revision)
    };
    txn.commit().map_err(|e| open_error(e.into()))?;
    Ok(revision)
}

/// Runs blocking redb work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, MetaError>
where
    F: FnOnce() -> Result<T, MetaError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(res) => res,
        Err(join_error) => Err(EmbeddedError::Task(join_error).into()),
    }
}

fn read_error(error: impl Into<redb::Error>) -> MetaError {
    EmbeddedError::Read(error.into()).into()
}

fn write_error(error: impl Into<redb::Error>) -> MetaError {
    EmbeddedError::Write(error.into()).into()
}
