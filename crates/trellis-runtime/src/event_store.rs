//! What the runtime needs around the event storage boundary: the deduplication key of an event,
//! read and page helpers in the runtime's terms. The runtime sees storage only as
//! `Arc<dyn EventStore>`; nothing here knows which backend is below.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use trellis_storage::{DedupKey, EventStore, KeyOf, Record, StorageError, TopicStore};

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

/// The first wait after the event store was found unavailable; each further failure doubles
/// it, up to [`STORAGE_RETRY_MAX`].
const STORAGE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between tries: how late, at most, work goes on once the store is back.
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(2);
/// While the store stays unavailable, one warning per task this often, not one per try.
const STORAGE_WARN_EVERY: Duration = Duration::from_secs(30);

/// A background task's patience with an unavailable event store (a remote backend whose
/// connection is down): how long to wait before the next try, growing to a cap, and logging
/// that isn't one line per try: a warning when the wait starts, one every
/// [`STORAGE_WARN_EVERY`] while it lasts, and a line when the store is back.
#[derive(Debug)]
pub(crate) struct StorageWait {
    /// What waits, for the log lines: `subscription "orders-audit"`, say.
    who: String,
    delay: Duration,
    since: Option<tokio::time::Instant>,
    warned: Option<tokio::time::Instant>,
}

impl StorageWait {
    pub(crate) fn new(who: String) -> StorageWait {
        StorageWait {
            who,
            delay: STORAGE_RETRY_FIRST,
            since: None,
            warned: None,
        }
    }

    /// Whether the last try failed as unavailable and none has succeeded since.
    pub(crate) fn waiting(&self) -> bool {
        self.since.is_some()
    }

    /// Records a try that found the store unavailable (`reason`); returns how long to wait
    /// before the next.
    pub(crate) fn failed(&mut self, reason: &str) -> Duration {
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        if self
            .warned
            .is_none_or(|warned| now.duration_since(warned) >= STORAGE_WARN_EVERY)
        {
            self.warned = Some(now);
            tracing::warn!(
                message = "The event store is unavailable; waiting for it, and going on by itself once it is back.",
                who = %self.who,
                waited_s = now.duration_since(since).as_secs(),
                reason,
            );
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(STORAGE_RETRY_MAX);
        delay
    }

    /// Records a try that reached the store.
    pub(crate) fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                message = "The event store is available again; going on.",
                who = %self.who,
                waited_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            );
        }
        self.warned = None;
        self.delay = STORAGE_RETRY_FIRST;
    }
}

/// Runs `call` until it gets an answer other than `Unavailable`, waiting between tries as
/// `wait` says, and not calling at all while `store` knows it is unreachable (a call would
/// only wait out its timeout, and a remote store may still act on it later). `None` if `stop`
/// comes first. `show` is told why it waits, and `None` once it goes on.
pub(crate) async fn until_available<T, F>(
    store: &dyn EventStore,
    wait: &mut StorageWait,
    stop: &CancellationToken,
    show: &(dyn Fn(Option<String>) + Send + Sync),
    mut call: impl FnMut() -> F,
) -> Option<Result<T, StorageError>>
where
    F: Future<Output = Result<T, StorageError>>,
{
    loop {
        let reason = if store.available() {
            match call().await {
                Err(StorageError::Unavailable(reason)) => reason,
                answered => {
                    if wait.waiting() {
                        wait.succeeded();
                        show(None);
                    }
                    return Some(answered);
                }
            }
        } else {
            NOT_CONNECTED.to_owned()
        };
        let delay = wait.failed(&reason);
        show(Some(reason));
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Why a task waits without having asked the store: it knows it is unreachable.
pub(crate) const NOT_CONNECTED: &str = "not connected";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_storage_backs_off_to_a_cap_and_starts_over_once_it_is_back() {
        let mut wait = StorageWait::new("test".to_owned());
        assert!(!wait.waiting());
        let delays: Vec<Duration> = (0..8).map(|_| wait.failed("down")).collect();
        assert!(wait.waiting());
        assert_eq!(delays[0], STORAGE_RETRY_FIRST);
        assert!(
            delays.windows(2).all(|pair| pair[1] >= pair[0]),
            "{delays:?}"
        );
        assert_eq!(delays[7], STORAGE_RETRY_MAX);
        wait.succeeded();
        assert!(!wait.waiting());
        assert_eq!(wait.failed("down again"), STORAGE_RETRY_FIRST);
    }

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
