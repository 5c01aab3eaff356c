//! [`Unit`] (a declared unit), [`Claim`] (one term of owning it) and [`Fence`] (the check and
//! the guard that make a former owner's writes fail).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_meta::{Expect, GuardedOutcome, GuardedPut, LeaseId, MetaError, MetadataStore};

use crate::Revoked;
use crate::cluster::Inner;
use crate::owner_key;

/// One term of ownership: the ownership key as this member created it.
#[derive(Debug)]
pub(crate) struct Term {
    pub(crate) unit: String,
    pub(crate) key: String,
    /// The key's mod revision (== create revision: it is never rewritten).
    pub(crate) revision: u64,
    pub(crate) lease: LeaseId,
    token: CancellationToken,
    reason: Mutex<Option<Revoked>>,
    /// Set once the fence must refuse: revoked for any reason but a handoff, or released.
    lost: AtomicBool,
}

impl Term {
    pub(crate) fn new(unit: String, revision: u64, lease: LeaseId) -> Term {
        Term {
            key: owner_key(&unit),
            unit,
            revision,
            lease,
            token: CancellationToken::new(),
            reason: Mutex::new(None),
            lost: AtomicBool::new(false),
        }
    }

    /// Tells the holder to stop. The first reason sticks, except that a loss overrides a
    /// handoff (the fence then refuses too).
    pub(crate) fn revoke(&self, reason: Revoked) {
        {
            let mut current = self
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.is_none() || *current == Some(Revoked::Handoff) {
                *current = Some(reason);
            }
        }
        if reason != Revoked::Handoff {
            self.lost.store(true, Ordering::SeqCst);
        }
        self.token.cancel();
    }

    /// Ends the term for a release: the fence refuses from now on.
    pub(crate) fn mark_lost(&self) {
        {
            let mut current = self
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.is_none() {
                *current = Some(Revoked::Lost);
            }
        }
        self.lost.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    fn reason(&self) -> Option<Revoked> {
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A unit this replica could run, declared with [`crate::Cluster::unit`]. Dropping it
/// withdraws the declaration (a held claim stays until released or dropped).
pub struct Unit {
    inner: Arc<Inner>,
    name: String,
    owner: watch::Receiver<Option<String>>,
}

impl Unit {
    pub(crate) fn new(
        inner: Arc<Inner>,
        name: String,
        owner: watch::Receiver<Option<String>>,
    ) -> Unit {
        Unit { inner, name, owner }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until this replica owns the unit; each call starts a new term. Cancel-safe: the
    /// key is taken by the cluster's own task, and a term not yet handed out waits for the
    /// next call (or is released if the unit is withdrawn or placed elsewhere).
    pub async fn acquire(&mut self) -> Claim {
        let mut changed = self.inner.changed.subscribe();
        loop {
            if let Some(term) = self.inner.take_unhanded(&self.name) {
                return Claim {
                    inner: self.inner.clone(),
                    term,
                    released: false,
                };
            }
            self.inner.wake();
            if changed.changed().await.is_err() {
                // The sender lives in `Inner`, which `self` keeps alive.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The current owner's member id (`None` while free), updated from the watch.
    pub fn owner(&self) -> watch::Receiver<Option<String>> {
        self.owner.clone()
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        self.inner.undeclare(&self.name);
    }
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One term of owning a unit. Dropping it without [`Claim::release`] releases it in the
/// background, unless it was already lost.
pub struct Claim {
    inner: Arc<Inner>,
    term: Arc<Term>,
    released: bool,
}

impl Claim {
    pub fn unit(&self) -> &str {
        &self.term.unit
    }

    /// The ownership key's mod revision for this term.
    pub fn revision(&self) -> u64 {
        self.term.revision
    }

    pub fn fence(&self) -> Fence {
        Fence {
            inner: self.inner.clone(),
            term: self.term.clone(),
        }
    }

    /// Cancelled when the holder must stop: [`Revoked::Handoff`] (balance wants it elsewhere:
    /// stop, finish or cancel in-flight work, commit with the fence, then `release`),
    /// [`Revoked::LeaseUnproven`] (stop at once; commits would be refused anyway) or
    /// [`Revoked::Lost`] (the ownership key disappeared, or the cluster was left).
    pub fn revoked(&self) -> CancellationToken {
        self.term.token.clone()
    }

    pub fn reason(&self) -> Option<Revoked> {
        self.term.reason()
    }

    /// Deletes the ownership key if it is still this term's (compare-and-delete). Best effort:
    /// if the store is away, the key goes with the lease.
    pub async fn release(mut self) {
        self.released = true;
        self.inner.release(&self.term).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.released && !self.term.is_lost() {
            self.inner.abandon(self.term.clone());
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("unit", &self.term.unit)
            .field("revision", &self.term.revision)
            .field("reason", &self.term.reason())
            .finish_non_exhaustive()
    }
}

/// What makes a former owner's writes fail: the ownership key and the revision this term
/// created it at, checked against the lease's proven lifetime.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
    term: Arc<Term>,
}

/// Why a fenced put did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The claim is lost or the lease unproven; nothing was written.
    #[error("ownership of the unit is lost; nothing was written")]
    Lost,
    #[error("the metadata store failed")]
    Store(#[source] MetaError),
}

impl Fence {
    /// Lease provably alive (with margin) and the claim not lost. Check before every delivery
    /// attempt and every commit. Computed from the clock at the call, so a process resumed
    /// after a freeze past its TTL refuses at once.
    pub fn holds(&self) -> bool {
        !self.term.is_lost() && self.inner.lease_alive(Some(self.term.lease))
    }

    /// The ownership key this fence guards on.
    pub fn owner_key(&self) -> &str {
        &self.term.key
    }

    /// The ownership key's mod revision for this term.
    pub fn revision(&self) -> u64 {
        self.term.revision
    }

    /// Adds the guard `(owner key, Expect::ModRevision(rev))` to a put.
    pub fn guard(&self, put: GuardedPut) -> GuardedPut {
        put.guard(
            self.term.key.clone(),
            Expect::ModRevision(self.term.revision),
        )
    }

    /// `holds()` then a guarded put. `Err(FenceError::Lost)` when either fails: nothing was
    /// written. Returns the revision of the write.
    pub async fn put(
        &self,
        store: &dyn MetadataStore,
        key: &str,
        value: Bytes,
    ) -> Result<u64, FenceError> {
        if !self.holds() {
            return Err(FenceError::Lost);
        }
        match store
            .guarded_put(self.guard(GuardedPut::new(key, value)))
            .await
        {
            Ok(GuardedOutcome::Written { revision }) => Ok(revision),
            Ok(GuardedOutcome::Conflict { .. }) => Err(FenceError::Lost),
            Err(error) => Err(FenceError::Store(error)),
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("owner_key", &self.term.key)
            .field("revision", &self.term.revision)
            .finish_non_exhaustive()
    }
}
