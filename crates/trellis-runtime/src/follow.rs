//! Following a prefix of the metadata store, so that what another replica changes (a
//! subscription, a connector, a topic) reaches this one's registries within moments.
//!
//! A registry loads its prefix at start with `range` and then follows it from the revision after
//! that read, so it misses nothing in between. When the watch cannot go on (its revision was
//! compacted away, or the store failed), the follower reads the whole prefix again and hands it
//! over as a [`Change::Snapshot`] to reconcile against, then watches from after that read: a
//! replica that was cut off catches up the same way it started.

use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use trellis_meta::{KeyValue, MetaError, MetadataStore, WatchEvent};

use crate::error::error_chain;

/// One change under the followed prefix.
#[derive(Debug)]
pub(crate) enum Change {
    Put(KeyValue),
    Delete(String),
    /// Everything under the prefix now: keys not in it are gone.
    Snapshot(Vec<KeyValue>),
}

/// The names among `known` that a snapshot of `prefix` no longer holds: gone meanwhile.
pub(crate) fn gone_from<'a>(
    snapshot: &[KeyValue],
    prefix: &str,
    known: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let kept: std::collections::HashSet<&str> = snapshot
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(prefix))
        .collect();
    known
        .into_iter()
        .filter(|name| !kept.contains(name.as_str()))
        .cloned()
        .collect()
}

/// How long to wait before reading the prefix again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// Hands every change under `prefix` after revision `after` to `apply`, in order, until `stop`.
pub(crate) async fn follow<F>(
    meta: &dyn MetadataStore,
    prefix: &str,
    after: u64,
    stop: &CancellationToken,
    mut apply: F,
) where
    F: FnMut(Change) -> BoxFuture<'static, ()>,
{
    let mut from = after + 1;
    loop {
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = watch_from(meta, prefix, from, &mut apply) => ended,
        };
        match ended {
            Ok(()) => tracing::warn!(
                message = "The metadata store's watch ended; reading it again.",
                prefix
            ),
            Err(error) => tracing::warn!(
                message = "Following the metadata store failed; reading it again.",
                prefix,
                error = %error_chain(&error)
            ),
        }
        // Read the whole prefix again, retrying until the store answers.
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
            match meta.range(prefix).await {
                Ok(range) => {
                    apply(Change::Snapshot(range.kvs)).await;
                    from = range.revision + 1;
                    break;
                }
                Err(error) => tracing::warn!(
                    message = "Reading the metadata store failed; trying again.",
                    prefix,
                    error = %error_chain(&error)
                ),
            }
        }
    }
}

/// Applies changes from revision `from` on; returns when the watch ends or fails.
async fn watch_from<F>(
    meta: &dyn MetadataStore,
    prefix: &str,
    from: u64,
    apply: &mut F,
) -> Result<(), MetaError>
where
    F: FnMut(Change) -> BoxFuture<'static, ()>,
{
    let mut events = meta.watch(prefix, Some(from)).await?;
    while let Some(event) = events.next().await {
        match event? {
            WatchEvent::Put(kv) => apply(Change::Put(kv)).await,
            WatchEvent::Delete { key, .. } => apply(Change::Delete(key)).await,
        }
    }
    Ok(())
}
