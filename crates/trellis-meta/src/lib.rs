//! The metadata store: a small, etcd-shaped key-value boundary for topic settings,
//! subscriptions and committed offsets.
//!
//! Everything above [`MetadataStore`] knows nothing of what is below it. The embedded
//! implementation ([`EmbeddedStore`]) keeps data in a redb file; an etcd implementation will
//! follow, so the trait keeps etcd's semantics: one store-wide revision that every write bumps,
//! per-key create/mod revisions and versions, compare-and-set on a key's mod revision, and
//! prefix watches that can resume from a revision.
//!
//! # Layout
//!
//! - `lib.rs`: the boundary: [`MetadataStore`] and the types it speaks.
//! - `embedded`: [`EmbeddedStore`], the redb implementation, with its change feed, lease timer and
//!   file layout.
//! - `etcd`: [`EtcdStore`], the etcd implementation, on tonic clients generated from etcd's protos
//!   (`trellis-etcd-proto`).
//! - `keeper`: [`LeaseKeeper`], which refreshes a lease in the background through the trait.
//! - `conformance` (feature `test-util`): checks of etcd semantics through the trait only, run
//!   against every implementation.

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod embedded;
mod etcd;
mod keeper;

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

pub use embedded::{
    DEFAULT_HISTORY_CAPACITY, DEFAULT_WATCH_BUFFER, EmbeddedError, EmbeddedOptions, EmbeddedStore,
};
pub use etcd::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, EtcdError, EtcdOptions, EtcdStore,
};
pub use keeper::{LeaseKeeper, LeaseStatus};

/// A stored key with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Store revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Store revision of the latest write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
}

/// The result of a prefix range: the matches sorted by key, and the store revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<KeyValue>,
    pub revision: u64,
}

/// What a compare-and-set expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this mod revision.
    ModRevision(u64),
}

/// The result of a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened at this store revision.
    Written { revision: u64 },
    /// The expectation did not hold; nothing was written. `current` is what is there now.
    Conflict { current: Option<KeyValue> },
}

/// A lease's id, as etcd numbers them (positive).
pub type LeaseId = i64;

/// A lease the caller holds, as of its grant or its latest keep-alive.
///
/// `held_until` is what ownership code relies on: the store cannot expire the lease before
/// then, because it is the instant the grant or keep-alive request was *sent* plus the TTL,
/// and the store starts the TTL only when the request arrives. Past `held_until`, the holder
/// must assume the lease (and every key under it) is gone. This assumes the holder's clock and
/// the store's run at about the same rate; ownership code keeps a margin below `held_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    /// The TTL the store granted: the requested one rounded up to whole seconds, or more if the
    /// store has a minimum (etcd's is 1.5 election timeouts, rounded up).
    pub ttl: Duration,
    pub held_until: Instant,
}

/// A put that happens only if every guard holds, in one atomic step (an etcd transaction).
///
/// This is the fenced write: "write offset key K only if ownership key O still has mod
/// revision R" is `GuardedPut::new(K, value).guard(O, Expect::ModRevision(R))`. Taking
/// ownership is `GuardedPut::new(O, me).guard(O, Expect::Absent).lease(lease_id)`. With no
/// guards it is a plain put, optionally under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedPut {
    pub key: String,
    pub value: Bytes,
    /// The key is deleted when this lease expires or is revoked. `None` detaches the key from
    /// any lease it had, as a plain put does.
    pub lease: Option<LeaseId>,
    /// Checked in order; all must hold.
    pub guards: Vec<(String, Expect)>,
}

impl GuardedPut {
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> GuardedPut {
        GuardedPut {
            key: key.into(),
            value: value.into(),
            lease: None,
            guards: Vec::new(),
        }
    }

    /// Adds a condition: `key` must be as `expect` says.
    pub fn guard(mut self, key: impl Into<String>, expect: Expect) -> GuardedPut {
        self.guards.push((key.into(), expect));
        self
    }

    /// Puts the key under `lease`.
    pub fn lease(mut self, lease: LeaseId) -> GuardedPut {
        self.lease = Some(lease);
        self
    }
}

/// The result of a [`GuardedPut`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardedOutcome {
    /// Every guard held; the put happened at this store revision.
    Written { revision: u64 },
    /// Guard number `guard` (an index into `GuardedPut::guards`, the first that failed) did not
    /// hold; nothing was written. `current` is what its key held at that moment.
    Conflict {
        guard: usize,
        current: Option<KeyValue>,
    },
}

/// Whether `expect` holds for `current`; shared by the implementations so they agree.
pub(crate) fn expect_holds(expect: Expect, current: Option<&KeyValue>) -> bool {
    match expect {
        Expect::Absent => current.is_none(),
        Expect::ModRevision(mod_revision) => {
            current.is_some_and(|kv| kv.mod_revision == mod_revision)
        }
    }
}

/// Rounds a requested TTL up to whole seconds (at least one), as etcd grants them.
pub(crate) fn ttl_seconds(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: u64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn mod_revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A stream of changes under a prefix, in revision order. It ends with an error item if the
/// watcher fell too far behind (`MetaError::Compacted`) and ends when the store closes.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, MetaError>> + Send>>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    #[error("revision {requested} is no longer available; the oldest available is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error("the metadata store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the metadata store failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A put named a lease that does not exist (it expired or was revoked). Nothing was written.
    #[error("lease {lease} does not exist (it expired or was revoked)")]
    LeaseNotFound { lease: LeaseId },
    /// This implementation does not offer the operation (see its docs for the alternative).
    #[error("the metadata store does not support {operation}")]
    Unsupported { operation: &'static str },
}

/// The metadata boundary. Implementations are shared as `Arc<dyn MetadataStore>`.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError>;
    /// Every key starting with `prefix` (all keys for ""), sorted by key.
    async fn range(&self, prefix: &str) -> Result<Range, MetaError>;
    /// Writes the key unconditionally; returns the new store revision.
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, MetaError>;
    /// Deletes the key; returns false if it did not exist (no revision is used then).
    async fn delete(&self, key: &str) -> Result<bool, MetaError>;
    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Bytes,
    ) -> Result<CasOutcome, MetaError>;
    /// Changes under `prefix` with mod revision >= `start_revision` (or from now on, for `None`).
    /// Use `range(..).revision + 1` to follow a range without a gap.
    ///
    /// A start revision no longer available fails here with [`MetaError::Compacted`]. A stream
    /// that loses its connection to the store reopens by itself from the revision after the last
    /// event it yielded, so no revision is skipped or repeated; if that revision is gone by
    /// then, the stream yields `Compacted` and ends.
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<u64>,
    ) -> Result<WatchStream, MetaError>;
    /// Deletes the key only if it exists with exactly this mod revision. `Written` carries the
    /// revision of the delete; on `Conflict` nothing was deleted.
    ///
    /// The default returns [`MetaError::Unsupported`]: it cannot be built atomically from the
    /// other methods, so every real implementation overrides it.
    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: u64,
    ) -> Result<CasOutcome, MetaError> {
        let _ = (key, mod_revision);
        Err(MetaError::Unsupported {
            operation: "compare_and_delete",
        })
    }

    /// Grants a lease of `ttl`, rounded up to whole seconds (at least one).
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let _ = ttl;
        Err(MetaError::Unsupported {
            operation: "lease_grant",
        })
    }

    /// Refreshes the lease once, to its full TTL. `Ok(None)` if it no longer exists (expired or
    /// revoked): its keys are gone. Call it well within the TTL (a third of it is usual).
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Lease>, MetaError> {
        let _ = lease;
        Err(MetaError::Unsupported {
            operation: "lease_keep_alive",
        })
    }

    /// Ends the lease now and deletes every key under it (a watch sees each delete). Returns
    /// false if it did not exist.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<bool, MetaError> {
        let _ = lease;
        Err(MetaError::Unsupported {
            operation: "lease_revoke",
        })
    }

    /// Puts `put.key` if every guard holds, atomically. A lease named in `put` that does not
    /// exist is [`MetaError::LeaseNotFound`] (checked only when the guards hold).
    async fn guarded_put(&self, put: GuardedPut) -> Result<GuardedOutcome, MetaError> {
        let _ = put;
        Err(MetaError::Unsupported {
            operation: "guarded_put",
        })
    }
}
