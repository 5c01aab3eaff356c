//! Where committed offsets live: one key per partition in the metadata store, under a prefix
//! per connector, so any `MetadataStore` (the embedded one, etcd later) serves them unchanged.
//!
//! Keys are `/connectors/<connector>/offsets/<partition>`, both names percent-escaped so that a
//! partition named after a file path (`/var/log/app.log`) stays one key segment and one
//! connector's prefix never covers another's. The value is the [`Position`] as JSON, so reading
//! never has to decode a key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use trellis_meta::{GuardedOutcome, GuardedPut, MetaError, MetadataStore};

use crate::position::{Offset, Partition, Position};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetStoreError {
    #[error("the metadata store failed for connector offsets")]
    Meta(#[from] MetaError),
    /// The guard set with [`OffsetStore::guarded`] refused the write: the process no longer
    /// owns the connector, and nothing was written.
    #[error("offsets of connector {connector} not written: this process no longer owns it")]
    NotOwner { connector: String },
    #[error("the stored offset under {key} is not a position")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A connector's committed offsets in the metadata store. Cheap to clone.
#[derive(Clone)]
pub struct OffsetStore {
    store: Arc<dyn MetadataStore>,
    connector: String,
    prefix: String,
    guard: Option<Arc<dyn OffsetGuard>>,
}

/// Makes every offset write conditional on the writer still owning the connector (a cluster
/// replica's ownership fence), so one that lost it can never move an offset.
pub trait OffsetGuard: Send + Sync {
    /// Whether writing may be tried at all (for example, the owner's lease is provably alive).
    fn holds(&self) -> bool;
    /// Adds the conditions the store checks atomically with the write.
    fn guard(&self, put: GuardedPut) -> GuardedPut;
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("connector", &self.connector)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl OffsetStore {
    pub fn new(store: Arc<dyn MetadataStore>, connector: impl Into<String>) -> OffsetStore {
        let connector = connector.into();
        let prefix = format!("/connectors/{}/offsets/", escape(&connector));
        OffsetStore {
            store,
            connector,
            prefix,
            guard: None,
        }
    }

    /// The same store, writing only while `guard` holds and its conditions pass.
    pub fn guarded(mut self, guard: Arc<dyn OffsetGuard>) -> OffsetStore {
        self.guard = Some(guard);
        self
    }

    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// The key prefix every offset of this connector lives under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of one partition's committed offset.
    pub fn key(&self, partition: &Partition) -> String {
        format!("{}{}", self.prefix, escape(partition.as_str()))
    }

    /// Writes the offsets, one put per partition, in partition order. Not atomic across
    /// partitions: a failure part-way leaves some partitions updated, which is safe because each
    /// stored offset was committable when written; the caller retries the whole set.
    pub async fn put_all(
        &self,
        offsets: &BTreeMap<Partition, Offset>,
    ) -> Result<(), OffsetStoreError> {
        for (partition, offset) in offsets {
            let position = Position {
                partition: partition.clone(),
                offset: *offset,
            };
            let value =
                serde_json::to_vec(&position).map_err(|source| OffsetStoreError::Corrupt {
                    key: self.key(partition),
                    source,
                })?;
            let key = self.key(partition);
            match &self.guard {
                None => {
                    self.store.put(&key, Bytes::from(value)).await?;
                }
                Some(guard) => {
                    let not_owner = || OffsetStoreError::NotOwner {
                        connector: self.connector.clone(),
                    };
                    if !guard.holds() {
                        return Err(not_owner());
                    }
                    let put = guard.guard(GuardedPut::new(key, Bytes::from(value)));
                    if let GuardedOutcome::Conflict { .. } = self.store.guarded_put(put).await? {
                        return Err(not_owner());
                    }
                }
            }
        }
        Ok(())
    }

    /// Every committed offset of the connector.
    pub async fn read_all(&self) -> Result<BTreeMap<Partition, Offset>, OffsetStoreError> {
        let range = self.store.range(&self.prefix).await?;
        let mut offsets = BTreeMap::new();
        for kv in range.kvs {
            let position: Position =
                serde_json::from_slice(&kv.value).map_err(|source| OffsetStoreError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })?;
            offsets.insert(position.partition, position.offset);
        }
        Ok(offsets)
    }

    /// One partition's committed offset, if any.
    pub async fn read(&self, partition: &Partition) -> Result<Option<Offset>, OffsetStoreError> {
        let key = self.key(partition);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let position: Position = serde_json::from_slice(&kv.value)
            .map_err(|source| OffsetStoreError::Corrupt { key, source })?;
        Ok(Some(position.offset))
    }

    /// Deletes every committed offset of the connector (the REST API's `DELETE .../offsets`);
    /// returns how many partitions had one. The connector starts from scratch afterwards.
    pub async fn delete_all(&self) -> Result<usize, OffsetStoreError> {
        let range = self.store.range(&self.prefix).await?;
        let mut deleted = 0;
        for kv in range.kvs {
            if self.store.delete(&kv.key).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Percent-escapes everything but unreserved URL characters, so `/` (the key separator) and `%`
/// never appear raw in a name segment and distinct names give distinct keys.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_one_segment_per_name_and_distinct_names_distinct() {
        assert_eq!(escape("/var/log/app.log"), "%2Fvar%2Flog%2Fapp.log");
        assert_eq!(escape("a%2Fb"), "a%252Fb");
        assert_ne!(escape("a/b"), escape("a%2Fb"));
        assert_eq!(escape("héllo"), "h%C3%A9llo");
    }
}
