//! What the runtime needs around the event storage boundary: the deduplication key of an event,
//! read and page helpers in the runtime's terms. The runtime sees storage only as
//! `Arc<dyn EventStore>`; nothing here knows which backend is below.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use trellis_storage::{DedupKey, KeyOf, Record, StorageError, TopicStore};

/// A handle on one topic of the event store.
pub(crate) type TopicHandle = Arc<dyn TopicStore>;

/// How many records one read takes from the store at most, and how many payload bytes.
pub(crate) const READ_BATCH_RECORDS: usize = 256;
pub(crate) const READ_BATCH_BYTES: usize = 1024 * 1024;

/// The deduplication key of the event `(source, id)`: the first 128 bits of SHA-256 over the
/// length-prefixed pair, so that the split between source and id is unambiguous.
///
/// The digest is the same in every process, on purpose: every Trellis process that publishes to
/// one topic must compute the same key for one event (a store's index is rebuilt from its
/// records after a restart, and a distributed backend uses the key as its message id). Being
/// unseeded is safe here: source and id are bounded in size by the event limits, so nobody can
/// grow an input to search for collisions cheaply, and a deliberate collision of a 128-bit
/// truncation of SHA-256 takes about 2^64 work. For chance collisions, the birthday bound over
/// 1,000,000 remembered keys is n^2 / 2^129, about 1.5 * 10^-27.
pub fn event_dedup_key(source: &str, id: &str) -> DedupKey {
    let mut hasher = Sha256::new();
    hasher.update((source.len() as u64).to_le_bytes());
    hasher.update(source.as_bytes());
    hasher.update((id.len() as u64).to_le_bytes());
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    DedupKey(u128::from_le_bytes(first))
}

/// Reads a stored event's key back from its record, for a store that rebuilds its duplicate
/// index from the records it holds. A record that is not a stored event has no key.
pub fn stored_event_key_of() -> KeyOf {
    Arc::new(|record: &[u8]| {
        trellis_cloudevents::stored_source_and_id(record)
            .ok()
            .map(|(source, id)| event_dedup_key(&source, &id))
    })
}

/// Up to `max_records` records (at most [`READ_BATCH_RECORDS`]) from `from` on. A read that
/// stops short before damaged records returns those before them; one that starts at damaged
/// records fails with `Damaged`, which names the offset to go on from.
pub(crate) async fn read_records(
    topic: &dyn TopicStore,
    from: u64,
    max_records: usize,
) -> Result<Vec<Record>, StorageError> {
    let page = topic
        .read(from, max_records.min(READ_BATCH_RECORDS), READ_BATCH_BYTES)
        .await?;
    match page.damaged {
        Some(range) if page.records.is_empty() => Err(StorageError::Damaged {
            topic: topic.name().to_owned(),
            range,
        }),
        Some(_) | None => Ok(page.records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_same_in_every_process() {
        // A fixed value: a seeded or changed digest would break dedup across processes and
        // restarts, and the message ids a distributed backend derived from it.
        assert_eq!(
            event_dedup_key("/sensors/1", "a-1"),
            event_dedup_key("/sensors/1", "a-1")
        );
        let mut hasher = Sha256::new();
        hasher.update(10u64.to_le_bytes());
        hasher.update(b"/sensors/1");
        hasher.update(3u64.to_le_bytes());
        hasher.update(b"a-1");
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        assert_eq!(
            event_dedup_key("/sensors/1", "a-1"),
            DedupKey(u128::from_le_bytes(first))
        );
    }

    #[test]
    fn the_split_between_source_and_id_counts() {
        assert_ne!(event_dedup_key("ab", "c"), event_dedup_key("a", "bc"));
        assert_ne!(event_dedup_key("", "ab"), event_dedup_key("ab", ""));
    }

    #[test]
    fn a_stored_event_gives_back_the_key_it_was_published_with() {
        let event = trellis_cloudevents::CloudEvent::from_structured_json(
            br#"{"specversion":"1.0","id":"a-1","source":"/sensors/1","type":"t"}"#,
        )
        .expect("a valid event");
        let key_of = stored_event_key_of();
        assert_eq!(
            key_of(&event.to_stored()),
            Some(event_dedup_key("/sensors/1", "a-1"))
        );
        assert_eq!(key_of(b"not a stored event"), None);
    }
}
