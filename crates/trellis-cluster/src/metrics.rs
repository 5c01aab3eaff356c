//! The cluster's metrics: names and descriptions.

use metrics::{Unit, describe_counter, describe_gauge};

pub(crate) const MEMBERS: &str = "trellis_cluster_members";
pub(crate) const OWNED_UNITS: &str = "trellis_cluster_owned_units";
pub(crate) const HANDOFFS: &str = "trellis_cluster_handoffs_total";
pub(crate) const TAKEOVERS: &str = "trellis_cluster_takeovers_total";
pub(crate) const LEASE_LOST: &str = "trellis_cluster_lease_lost_total";
pub(crate) const LEASE_HEALTHY: &str = "trellis_cluster_lease_healthy";

/// The `kind` label values of [`OWNED_UNITS`], from the unit name's first segment.
pub(crate) const KINDS: [&str; 3] = ["subscription", "connector", "group"];

pub fn describe_metrics() {
    describe_gauge!(
        MEMBERS,
        Unit::Count,
        "Live cluster members, as this replica sees them."
    );
    describe_gauge!(
        OWNED_UNITS,
        Unit::Count,
        "Units this replica owns, by kind (subscription, connector, group)."
    );
    describe_counter!(
        HANDOFFS,
        Unit::Count,
        "Units this replica was asked to hand off to another member for balance."
    );
    describe_counter!(
        TAKEOVERS,
        Unit::Count,
        "Units this replica took after their previous owner's lease ended."
    );
    describe_counter!(
        LEASE_LOST,
        Unit::Count,
        "Times this replica's lease was lost for good and granted anew."
    );
    describe_gauge!(
        LEASE_HEALTHY,
        Unit::Count,
        "1 while this replica's lease is provably alive with a margin, else 0."
    );
}
