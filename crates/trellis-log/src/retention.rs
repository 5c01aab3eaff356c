//! Retention: deleting whole sealed segments that are too old or that push a topic over its
//! size budget.
//!
//! Segments only ever go from the front, so the stored offsets stay one dense range. The active
//! segment is never deleted: a topic always keeps its newest records and its next offset.
//! Readers that already hold a deleted segment finish on its open file handle.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::LogError;
use crate::files::{self, lock, write};
use crate::segment::Segment;
use crate::topic::TopicShared;

/// Applies the topic's retention settings once.
pub(crate) fn enforce(shared: &TopicShared) -> Result<(), LogError> {
    let config = shared.config();
    if config.retention_age.is_none() && config.retention_bytes.is_none() {
        return Ok(());
    }
    let now_ms = now_ms();
    let removed: Vec<Arc<Segment>> = {
        let mut segments = write(&shared.segments);
        let mut size_bytes = shared.size_bytes.load(Ordering::Acquire);
        let mut n_removed = 0;
        // `+ 1`: the last segment is the active one.
        while let Some(segment) = segments
            .get(n_removed)
            .filter(|_| n_removed + 1 < segments.len())
        {
            let too_old = config.retention_age.is_some_and(|age| {
                let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                // A sealed segment without an intact record has nothing worth keeping.
                segment
                    .newest_timestamp_ms()
                    .is_none_or(|newest| now_ms.saturating_sub(newest) > age_ms)
            });
            let too_big = config
                .retention_bytes
                .is_some_and(|max_bytes| size_bytes > max_bytes);
            if !too_old && !too_big {
                break;
            }
            size_bytes = size_bytes.saturating_sub(segment.len());
            n_removed += 1;
        }
        segments.drain(..n_removed).collect()
    };
    if removed.is_empty() {
        return Ok(());
    }
    let n_removed_bytes: u64 = removed.iter().map(|segment| segment.len()).sum();
    shared
        .size_bytes
        .fetch_sub(n_removed_bytes, Ordering::AcqRel);
    shared.update_size_gauge();

    let dir = lock(&shared.dir);
    let mut first_error = None;
    for segment in &removed {
        // A reader that picked this segment before it left the list finishes on its file.
        segment.file.pin();
        // The .log goes first: an .idx without its .log is cleaned up at the next open, while a
        // .log without its .idx would just be a segment whose index gets rebuilt.
        let res = files::remove_if_exists(&files::log_path(&dir, segment.base_offset))
            .and_then(|()| files::remove_if_exists(&files::idx_path(&dir, segment.base_offset)));
        if let Err(error) = res {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
