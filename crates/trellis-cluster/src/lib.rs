//! Cluster membership and fenced ownership on the metadata store.
//!
//! Every Trellis replica joins the cluster ([`Cluster::join`]): it registers a member key under
//! its own lease and follows the members and the ownership keys by prefix watches. The work a
//! replica could run is declared as named units ([`Cluster::unit`]); a unit is run by at most
//! one live member at a time, the one that created its ownership key under its lease. A holder
//! gets a [`Claim`] for its term and a [`Fence`] that refuses writes once the claim is lost or
//! the lease cannot be proven alive.
//!
//! Built only on [`trellis_meta::MetadataStore`], so a single node on the embedded store runs
//! the same code as a cluster on etcd.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn trellis_meta::MetadataStore>) -> Result<(), trellis_cluster::ClusterError> {
//! use trellis_cluster::{Cluster, ClusterSettings, DEFAULT_LEASE_TTL, Placement};
//!
//! let settings = ClusterSettings {
//!     member_id: "node-a".to_owned(),
//!     http: "10.0.0.1:8080".to_owned(),
//!     grpc: None,
//!     version: "0.1.0".to_owned(),
//!     lease_ttl: DEFAULT_LEASE_TTL,
//! };
//! let cluster = Cluster::join(store.clone(), settings).await?;
//! let mut unit = cluster.unit("subscription/orders", Placement::Balanced);
//! loop {
//!     let claim = unit.acquire().await;
//!     let fence = claim.fence();
//!     // Deliver while `fence.holds()`; commit offsets through the fence, which refuses
//!     // (writes nothing) once this term is over.
//!     let _ = fence.put(&*store, "/offsets/orders", "42".into()).await;
//!     claim.revoked().cancelled().await;
//!     claim.release().await;
//! }
//! # }
//! ```
//!
//! # Keys
//!
//! - `/cluster/members/<member-id>`: [`MemberInfo`] as JSON, under the member's lease.
//! - `/cluster/owners/<unit>`: `{"member": "<member-id>", "lease": <id>}`, under the owner's lease, created only
//!   if absent and never rewritten (fences rely on its mod revision); deleted by the owner at
//!   release (only if still its term) or by the store when the lease ends.
//!
//! # Layout
//!
//! - `cluster`: [`Cluster`], its shared state, the driver task (lease health, placement,
//!   taking and handing off units) and the watch tasks.
//! - `claim`: [`Unit`], [`Claim`] and [`Fence`].
//! - `placement`: [`balanced_assignment`], the pure function behind [`Placement::Balanced`].
//! - `metrics`: metric names and [`describe_metrics`].

mod claim;
mod cluster;
mod metrics;
mod placement;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use claim::{Claim, Fence, FenceError, Unit};
pub use cluster::Cluster;
pub use metrics::describe_metrics;
pub use placement::balanced_assignment;

/// The lease TTL when none is configured.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// Where members register.
pub const MEMBERS_PREFIX: &str = "/cluster/members/";
/// Where ownership keys live, one per owned unit.
pub const OWNERS_PREFIX: &str = "/cluster/owners/";

/// How a replica joins.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Unique per running process (a restart may reuse it: its old lease is gone or going).
    pub member_id: String,
    /// Advertised HTTP `HOST:PORT`.
    pub http: String,
    /// Advertised gRPC `HOST:PORT`.
    pub grpc: Option<String>,
    pub version: String,
    /// The lease TTL (rounded up to whole seconds by the store). A dead member's units are
    /// taken over about this long after it died.
    pub lease_ttl: Duration,
}

/// What a member publishes about itself in its member key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub id: String,
    pub http: String,
    pub grpc: Option<String>,
    pub version: String,
    pub started_at_ms: u64,
    pub load: Load,
}

/// A member's load, as it last reported it ([`Cluster::set_load`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Load {
    pub subscriptions: u32,
    pub connectors: u32,
    pub groups: u32,
    pub events_per_second: f64,
    pub lag: u64,
}

/// How a unit is placed among the members that declare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Spread evenly over live members: a deterministic function of (sorted live members,
    /// sorted declared Balanced units), [`balanced_assignment`], so every replica computes the
    /// same assignment and a join moves about 1/n of the units. Only the assigned member tries
    /// to take a free unit; an owner whose unit is assigned elsewhere is asked to hand it off.
    Balanced,
    /// Whoever declares it first and finds it free takes it (consumer groups: the replicas
    /// with members of the group). Never handed off for balance.
    FirstCome,
}

/// Why a claim was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revoked {
    /// Balance wants the unit elsewhere: stop, finish or cancel in-flight work, commit with
    /// the fence (it still holds), then [`Claim::release`].
    Handoff,
    /// The lease cannot be proven alive: stop at once; the fence no longer holds.
    LeaseUnproven,
    /// The ownership key is gone (deleted by someone else) or the cluster was left: stop at
    /// once; the fence no longer holds.
    Lost,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("the metadata store failed")]
    Store(#[from] trellis_meta::MetaError),
    #[error("invalid cluster settings: {0}")]
    Settings(&'static str),
    #[error("the new lease ended before this member could register")]
    LeaseEnded,
}

/// The key of a unit's ownership.
pub fn owner_key(unit: &str) -> String {
    format!("{OWNERS_PREFIX}{unit}")
}

/// The key of a member's registration.
pub fn member_key(member_id: &str) -> String {
    format!("{MEMBERS_PREFIX}{member_id}")
}

/// The value of an ownership key. `lease` (the owner's lease when it took the key) lets the
/// owner recognise a key it created but holds no term for (its lease was unproven for a
/// while, or the reply to its put was lost) and adopt it only if it is under its current
/// lease; readers that know only `member` ignore it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct OwnerValue {
    pub(crate) member: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lease: Option<trellis_meta::LeaseId>,
}
