//! The committed positions a source starts from.

use std::collections::BTreeMap;

use crate::offsets::store::{OffsetStore, OffsetStoreError};
use crate::position::{Offset, Partition, Position};

/// Reads a connector's committed offsets, as a source's `start` is given them.
#[derive(Debug, Clone)]
pub struct OffsetReader {
    store: OffsetStore,
}

impl OffsetReader {
    pub fn new(store: OffsetStore) -> OffsetReader {
        OffsetReader { store }
    }

    /// The committed offset of every partition that has one.
    pub async fn offsets(&self) -> Result<BTreeMap<Partition, Offset>, OffsetStoreError> {
        self.store.read_all().await
    }

    /// The committed offsets as positions, sorted by partition.
    pub async fn positions(&self) -> Result<Vec<Position>, OffsetStoreError> {
        Ok(self
            .offsets()
            .await?
            .into_iter()
            .map(|(partition, offset)| Position { partition, offset })
            .collect())
    }

    /// One partition's committed offset; `None` means start the partition from its beginning.
    pub async fn offset(&self, partition: &Partition) -> Result<Option<Offset>, OffsetStoreError> {
        self.store.read(partition).await
    }
}
