//! Running a unit of work (a subscription, a connector, a consumer group) only while this
//! replica owns it, and committing its progress only through its owner's fence.
//!
//! Single-node mode runs the same code: its one replica owns everything, through leases in the
//! embedded metadata store.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use trellis_cluster::{Fence, FenceError, Unit};
use trellis_delivery::engine::AttemptGate;
use trellis_meta::MetadataStore;

/// How one term of owned work ended.
pub(crate) enum TermEnd {
    /// Stopped: by its stop token (the claim was revoked, or the work is going away).
    Stopped,
    /// Failed in a way the work cannot go on from: why.
    Failed(String),
}

/// Runs `work` once for each term in which this replica owns `unit`, until `stop` is
/// cancelled or a term fails (its reason is returned).
///
/// Each term gets its claim's fence and a token that is cancelled when the claim is revoked
/// (a handoff, or a lease that can no longer be proven) or `stop` is. The claim is released
/// only once the term has ended, so by then its last commit went through the fence (or was
/// refused), and the next owner starts from it.
pub(crate) async fn while_owned<W, F>(
    mut unit: Unit,
    stop: CancellationToken,
    mut work: W,
) -> Option<String>
where
    W: FnMut(Fence, CancellationToken) -> F,
    F: Future<Output = TermEnd>,
{
    loop {
        let claim = tokio::select! {
            () = stop.cancelled() => return None,
            claim = unit.acquire() => claim,
        };
        tracing::info!(message = "Owning a unit of work.", unit = unit.name());
        let term_stop = stop.child_token();
        let revoked = claim.revoked();
        let term = work(claim.fence(), term_stop.clone());
        tokio::pin!(term);
        let ended = tokio::select! {
            ended = &mut term => ended,
            () = revoked.cancelled() => {
                tracing::info!(message = "Giving up a unit of work.", unit = unit.name(), reason = ?claim.reason());
                term_stop.cancel();
                term.await
            }
        };
        claim.release().await;
        match ended {
            TermEnd::Failed(reason) => return Some(reason),
            TermEnd::Stopped if stop.is_cancelled() => return None,
            TermEnd::Stopped => {}
        }
    }
}

/// Stores `value` at `key` only if this replica still owns the work `fence` guards.
/// `Ok(false)`: ownership is lost, nothing was written and the caller must stop committing.
pub(crate) async fn fenced_put(
    fence: &Fence,
    meta: &dyn MetadataStore,
    key: &str,
    value: Bytes,
) -> Result<bool, trellis_meta::MetaError> {
    match fence.put(meta, key, value).await {
        Ok(_) => Ok(true),
        Err(FenceError::Lost) => Ok(false),
        Err(FenceError::Store(error)) => Err(error),
        // `FenceError` is non-exhaustive: anything new is a failure to write, not a loss.
        Err(error) => Err(trellis_meta::MetaError::Storage(Box::new(error))),
    }
}

/// Opens a delivery engine's attempts only while the fence holds, so a replica that can no
/// longer prove it owns the subscription sends nothing more, not even a retry due from before.
pub(crate) struct FenceGate(pub(crate) Fence);

impl AttemptGate for FenceGate {
    fn is_open(&self) -> bool {
        self.0.holds()
    }
}

impl FenceGate {
    pub(crate) fn of(fence: &Fence) -> Arc<dyn AttemptGate> {
        Arc::new(FenceGate(fence.clone()))
    }
}
