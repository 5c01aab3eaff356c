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
//! - `embedded`: [`EmbeddedStore`], the redb implementation, with its change feed and file layout.
//! - `conformance` (feature `test-util`): checks of etcd semantics through the trait only, run
//!   against every implementation.

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod embedded;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use embedded::{
    DEFAULT_HISTORY_CAPACITY, DEFAULT_WATCH_BUFFER, EmbeddedError, EmbeddedOptions, EmbeddedStore,
};

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
}
