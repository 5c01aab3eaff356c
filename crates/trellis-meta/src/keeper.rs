//! [`LeaseKeeper`]: keeps a lease alive in the background and tells its holder, at any moment,
//! until when it certainly holds it.
//!
//! Built on [`MetadataStore::lease_keep_alive`] only, so it works the same on every store.
//! It refreshes every third of the TTL; a refresh that fails (etcd unreachable) is retried
//! sooner, and meanwhile `held_until` stays where the last success put it, so it runs out on
//! its own if the store stays away. The keeper never revokes: dropping it stops the refreshes,
//! and the lease then expires unless its holder revokes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{Lease, MetadataStore};

/// How soon a failed refresh is retried (never later than the regular interval).
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(200);

/// Whether the holder still holds its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Certainly held until this instant (see [`Lease::held_until`]); after it, assume lost
    /// unless a later refresh moves it.
    HeldUntil(Instant),
    /// The store said the lease no longer exists: its keys are gone. Final.
    Lost,
}

/// Refreshes a lease until dropped.
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn trellis_meta::MetadataStore>) -> Result<(), trellis_meta::MetaError> {
/// use trellis_meta::LeaseKeeper;
///
/// let lease = store.lease_grant(std::time::Duration::from_secs(5)).await?;
/// let keeper = LeaseKeeper::spawn(store.clone(), lease);
/// if keeper.holds() {
///     // act as the owner, but only until keeper.held_until()
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LeaseKeeper {
    lease: Lease,
    status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts refreshing `lease` (as granted or last refreshed) on the current tokio runtime.
    pub fn spawn(store: Arc<dyn MetadataStore>, lease: Lease) -> LeaseKeeper {
        let (sender, status) = watch::channel(LeaseStatus::HeldUntil(lease.held_until));
        let task = tokio::spawn(refresh(store, lease, sender));
        LeaseKeeper {
            lease,
            status,
            task,
        }
    }

    pub fn lease(&self) -> Lease {
        self.lease
    }

    pub fn status(&self) -> LeaseStatus {
        *self.status.borrow()
    }

    /// Until when the lease is certainly held, or `None` once it is known lost.
    pub fn held_until(&self) -> Option<Instant> {
        match self.status() {
            LeaseStatus::HeldUntil(until) => Some(until),
            LeaseStatus::Lost => None,
        }
    }

    /// Whether the lease is certainly held right now.
    pub fn holds(&self) -> bool {
        self.held_until()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Stops refreshing and waits until the refresh task has ended (and let go of the store).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Follows the status as it changes, e.g. to stop work the moment the lease is lost.
    ///
    /// The receiver counts the status as of now as seen: its `changed()` waits for the next
    /// change. (A plain clone would inherit the keeper's own unseen version, and every
    /// `changed()` after the first refresh would return at once: a busy loop.)
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        let mut status = self.status.clone();
        status.mark_unchanged();
        status
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn refresh(store: Arc<dyn MetadataStore>, lease: Lease, status: watch::Sender<LeaseStatus>) {
    let interval = lease.ttl / 3;
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        match store.lease_keep_alive(lease.id).await {
            Ok(Some(refreshed)) => {
                status.send_replace(LeaseStatus::HeldUntil(refreshed.held_until));
                wait = interval;
            }
            Ok(None) => {
                tracing::warn!(message = "Metadata lease lost.", lease = lease.id);
                status.send_replace(LeaseStatus::Lost);
                return;
            }
            Err(error) => {
                tracing::warn!(
                    message = "Failed to refresh a metadata lease; retrying.",
                    lease = lease.id,
                    error = &error as &dyn std::error::Error,
                );
                wait = RETRY_AFTER_FAILURE.min(interval);
            }
        }
    }
}
