//! Offsets the runtime keeps in the metadata store (a subscription's committed offset, a
//! redrive's end, a consumer group's committed offset), all in one encoding, and each with the
//! incarnation of the topic it counts in (see `topics.rs`): an offset read back is used only
//! for that incarnation, never for a topic deleted and created again under the same name.
//!
//! The encoding is `{"offset":N,"incarnation":"ID"}`. Bare decimal text, as data dirs older
//! than incarnations hold, is an offset of the legacy incarnation.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use trellis_meta::{MetaError, MetadataStore};

use crate::topics::Incarnation;

#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    offset: u64,
    #[serde(borrow)]
    incarnation: &'a str,
}

/// An offset as stored, with the incarnation it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredOffset {
    pub(crate) offset: u64,
    pub(crate) incarnation: Incarnation,
}

impl StoredOffset {
    /// The offset, if it counts in `incarnation`.
    pub(crate) fn in_incarnation(&self, incarnation: &Incarnation) -> Option<u64> {
        (self.incarnation == *incarnation).then_some(self.offset)
    }
}

pub(crate) fn encode(offset: u64, incarnation: &Incarnation) -> Bytes {
    let stored = Stored {
        offset,
        incarnation: incarnation.as_str(),
    };
    // Serialising a number and a string cannot fail; the fallback is the legacy form.
    serde_json::to_vec(&stored).map_or_else(|_| Bytes::from(offset.to_string()), Bytes::from)
}

pub(crate) fn decode(value: &[u8]) -> Option<StoredOffset> {
    if let Ok(stored) = serde_json::from_slice::<Stored<'_>>(value) {
        return Some(StoredOffset {
            offset: stored.offset,
            incarnation: Incarnation::from_stored(stored.incarnation),
        });
    }
    let offset = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(StoredOffset {
        offset,
        incarnation: Incarnation::legacy(),
    })
}

/// What is stored under `key`, if anything; a value that is not an offset reads as none.
pub(crate) async fn load_any(
    meta: &dyn MetadataStore,
    key: &str,
) -> Result<Option<StoredOffset>, MetaError> {
    let kv = meta.get(key).await?;
    Ok(kv.and_then(|kv| decode(&kv.value)))
}

/// The offset under `key` if one is stored for `incarnation`; one of another incarnation reads
/// as none.
pub(crate) async fn load(
    meta: &dyn MetadataStore,
    key: &str,
    incarnation: &Incarnation,
) -> Result<Option<u64>, MetaError> {
    Ok(load_any(meta, key)
        .await?
        .and_then(|stored| stored.in_incarnation(incarnation)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_comes_back_only_for_its_incarnation() {
        let first = Incarnation::from_stored("a1");
        let second = Incarnation::from_stored("b2");
        let stored = decode(&encode(42, &first)).expect("decodes");
        assert_eq!(stored.in_incarnation(&first), Some(42));
        assert_eq!(stored.in_incarnation(&second), None);
        assert_eq!(stored.in_incarnation(&Incarnation::legacy()), None);
    }

    #[test]
    fn bare_decimal_is_the_legacy_incarnation() {
        let stored = decode(b"17").expect("decodes");
        assert_eq!(stored.in_incarnation(&Incarnation::legacy()), Some(17));
        assert_eq!(stored.in_incarnation(&Incarnation::from_stored("a1")), None);
        assert_eq!(decode(b"not an offset"), None);
    }
}
