//! Offsets the runtime keeps in the metadata store (a subscription's committed offset, a
//! redrive's end, a consumer group's committed offset), all in one encoding: decimal text.

use bytes::Bytes;
use trellis_meta::{MetaError, MetadataStore};

pub(crate) fn encode(offset: u64) -> Bytes {
    Bytes::from(offset.to_string())
}

/// The offset under `key`, if one is stored; a value that is not an offset reads as none.
pub(crate) async fn load(meta: &dyn MetadataStore, key: &str) -> Result<Option<u64>, MetaError> {
    let kv = meta.get(key).await?;
    Ok(kv.and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()))
}
