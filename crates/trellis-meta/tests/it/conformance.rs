//! The trait-level conformance suite, run against the embedded store: one test per check on a
//! fresh store, and the whole suite on one shared store.

use trellis_meta::conformance;

use crate::fresh_store;

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (_dir, store) = fresh_store();
            conformance::$check(&store).await;
        }
    )*};
}

conformance_tests!(
    get_put_delete,
    revisions_and_versions,
    delete_of_missing_key_uses_no_revision,
    range_by_prefix_is_sorted,
    range_of_empty_prefix_returns_everything,
    cas_absent,
    cas_mod_revision,
    compare_and_delete,
    concurrent_cas_has_one_winner_per_round,
    watch_from_now,
    watch_filters_by_prefix_and_sees_deletes,
    watch_from_past_revision_replays_then_follows,
    watch_after_range_has_no_gap,
    watch_racing_writes_has_no_gap_or_duplicate,
    lease_revoke_deletes_its_keys,
    lease_expires_without_keep_alive,
    lease_keep_alive_holds_its_keys,
    guarded_put_fences_on_another_key,
    guarded_put_takes_ownership_under_a_lease,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_one_shared_store() {
    let (_dir, store) = fresh_store();
    conformance::run_all(&store).await;
}
