//! Conformance checks for [`MetadataStore`] implementations: etcd's semantics, tested through
//! the trait only, so the embedded store and the etcd store answer to the same suite.
//!
//! Each check is an async fn that panics on failure, like a test body. Each one writes under its
//! own `conformance/<check>/` prefix, so the store may hold other keys and the checks may share
//! one store, but the store must hold no `conformance/` keys to begin with, and nothing else may
//! write to it while a check runs: the checks assert exact revision arithmetic. Two lease checks
//! wait for a lease to expire or outlive its TTL, so they take a few seconds each. Watch-from-the-past checks need the store to retain a few hundred
//! revisions of history. What cannot be tested through the trait (compaction, reopening,
//! lagging watchers) is left to each implementation's own tests.
//!
//! ```no_run
//! # async fn demo(store: &dyn trellis_meta::MetadataStore) {
//! trellis_meta::conformance::run_all(store).await;
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{
    CasOutcome, Expect, GuardedOutcome, GuardedPut, KeyValue, MetaError, MetadataStore, WatchEvent,
    WatchStream,
};

/// How long a watch check waits for an event it expects before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch check waits to be sure no further event arrives.
const QUIET_PERIOD: Duration = Duration::from_millis(200);

/// Runs every check, one after another, on one store.
pub async fn run_all(store: &dyn MetadataStore) {
    get_put_delete(store).await;
    revisions_and_versions(store).await;
    delete_of_missing_key_uses_no_revision(store).await;
    range_by_prefix_is_sorted(store).await;
    range_of_empty_prefix_returns_everything(store).await;
    cas_absent(store).await;
    cas_mod_revision(store).await;
    compare_and_delete(store).await;
    concurrent_cas_has_one_winner_per_round(store).await;
    watch_from_now(store).await;
    watch_filters_by_prefix_and_sees_deletes(store).await;
    watch_from_past_revision_replays_then_follows(store).await;
    watch_after_range_has_no_gap(store).await;
    watch_racing_writes_has_no_gap_or_duplicate(store).await;
    lease_revoke_deletes_its_keys(store).await;
    lease_expires_without_keep_alive(store).await;
    lease_keep_alive_holds_its_keys(store).await;
    guarded_put_fences_on_another_key(store).await;
    guarded_put_takes_ownership_under_a_lease(store).await;
}

pub async fn get_put_delete(store: &dyn MetadataStore) {
    let key = "conformance/get_put_delete/key";
    assert_eq!(get(store, key).await, None, "a fresh key is absent");

    let revision = put(store, key, "one").await;
    let kv = get(store, key).await.expect("a put key is present");
    assert_eq!(kv.key, key);
    assert_eq!(kv.value, Bytes::from("one"));
    assert_eq!(kv.mod_revision, revision);

    put(store, key, "two").await;
    let kv = get(store, key)
        .await
        .expect("an overwritten key is present");
    assert_eq!(kv.value, Bytes::from("two"), "a put overwrites");

    assert!(
        store.delete(key).await.expect("delete"),
        "deleting a present key reports true"
    );
    assert_eq!(get(store, key).await, None, "a deleted key is absent");
    assert!(
        !store.delete(key).await.expect("delete"),
        "deleting an absent key reports false"
    );
}

pub async fn revisions_and_versions(store: &dyn MetadataStore) {
    let key = "conformance/revisions_and_versions/key";
    let before = current_revision(store).await;

    let first = put(store, key, "v1").await;
    assert_eq!(first, before + 1, "a put bumps the store revision by one");
    check_kv(store, key, "v1", first, first, 1).await;

    let second = put(store, key, "v2").await;
    assert_eq!(second, first + 1);
    check_kv(store, key, "v2", first, second, 2).await;

    let third = put(store, key, "v3").await;
    check_kv(store, key, "v3", first, third, 3).await;

    assert!(store.delete(key).await.expect("delete"));
    let deleted_at = current_revision(store).await;
    assert_eq!(
        deleted_at,
        third + 1,
        "a delete bumps the store revision by one"
    );

    let recreated = put(store, key, "again").await;
    assert_eq!(recreated, deleted_at + 1);
    check_kv(store, key, "again", recreated, recreated, 1).await;
}

pub async fn delete_of_missing_key_uses_no_revision(store: &dyn MetadataStore) {
    let key = "conformance/delete_of_missing_key/key";
    let before = current_revision(store).await;
    assert!(!store.delete(key).await.expect("delete"));
    assert_eq!(
        current_revision(store).await,
        before,
        "a delete of nothing uses no revision"
    );
}

pub async fn range_by_prefix_is_sorted(store: &dyn MetadataStore) {
    let prefix = "conformance/range_by_prefix/";
    // Written out of order, with neighbours just outside the prefix on both sides.
    for key in ["b", "a/2", "c", "a", "a/10", "a/1"] {
        put(store, &format!("{prefix}{key}"), key).await;
    }
    put(store, "conformance/range_by_prefix", "just before").await;
    put(store, "conformance/range_by_prefix0", "just after").await;
    let last_revision = put(store, &format!("{prefix}ab"), "ab").await;

    let range = store.range(prefix).await.expect("range");
    assert_eq!(
        range.revision, last_revision,
        "a range reports the revision it read at"
    );
    let keys: Vec<&str> = range
        .kvs
        .iter()
        .map(|kv| kv.key.strip_prefix(prefix).unwrap_or(&kv.key))
        .collect();
    assert_eq!(
        keys,
        ["a", "a/1", "a/10", "a/2", "ab", "b", "c"],
        "keys sorted bytewise, prefix only"
    );
    for kv in &range.kvs {
        assert_eq!(
            Some(kv),
            get(store, &kv.key).await.as_ref(),
            "range and get agree"
        );
    }

    let narrower = store.range(&format!("{prefix}a/")).await.expect("range");
    let keys: Vec<&str> = narrower
        .kvs
        .iter()
        .map(|kv| kv.value.as_ref())
        .map(as_str)
        .collect();
    assert_eq!(keys, ["a/1", "a/10", "a/2"]);

    let none = store.range(&format!("{prefix}zzz")).await.expect("range");
    assert!(none.kvs.is_empty());
    assert_eq!(none.revision, last_revision);
}

pub async fn range_of_empty_prefix_returns_everything(store: &dyn MetadataStore) {
    let prefix = "conformance/range_everything/";
    put(store, &format!("{prefix}one"), "1").await;
    let last_revision = put(store, &format!("{prefix}two"), "2").await;

    let everything = store.range("").await.expect("range");
    assert_eq!(everything.revision, last_revision);
    let keys: Vec<&str> = everything.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert!(keys.is_sorted(), "range(\"\") is sorted: {keys:?}");
    assert!(keys.contains(&"conformance/range_everything/one"));
    assert!(keys.contains(&"conformance/range_everything/two"));
}

pub async fn cas_absent(store: &dyn MetadataStore) {
    let key = "conformance/cas_absent/key";
    let before = current_revision(store).await;

    let outcome = cas(store, key, Expect::Absent, "first").await;
    assert_eq!(
        outcome,
        CasOutcome::Written {
            revision: before + 1
        }
    );
    check_kv(store, key, "first", before + 1, before + 1, 1).await;

    let current = get(store, key).await;
    let outcome = cas(store, key, Expect::Absent, "second").await;
    assert_eq!(
        outcome,
        CasOutcome::Conflict { current },
        "Absent conflicts with a present key"
    );
    check_kv(store, key, "first", before + 1, before + 1, 1).await;
    assert_eq!(
        current_revision(store).await,
        before + 1,
        "a conflict writes nothing"
    );

    assert!(store.delete(key).await.expect("delete"));
    let outcome = cas(store, key, Expect::Absent, "third").await;
    assert!(
        matches!(outcome, CasOutcome::Written { .. }),
        "Absent holds again after a delete"
    );
}

pub async fn cas_mod_revision(store: &dyn MetadataStore) {
    let key = "conformance/cas_mod_revision/key";
    let created = put(store, key, "v1").await;

    let outcome = cas(store, key, Expect::ModRevision(created), "v2").await;
    let CasOutcome::Written { revision: second } = outcome else {
        panic!("a matching mod revision writes; got {outcome:?}");
    };
    assert_eq!(second, created + 1);
    check_kv(store, key, "v2", created, second, 2).await;

    let current = get(store, key).await;
    let outcome = cas(store, key, Expect::ModRevision(created), "stale").await;
    assert_eq!(
        outcome,
        CasOutcome::Conflict { current },
        "a stale mod revision conflicts"
    );
    assert_eq!(
        current_revision(store).await,
        second,
        "a conflict writes nothing"
    );

    let outcome = cas(store, key, Expect::ModRevision(second + 100), "future").await;
    assert!(
        matches!(outcome, CasOutcome::Conflict { .. }),
        "a future mod revision conflicts"
    );

    let missing = "conformance/cas_mod_revision/missing";
    let outcome = cas(store, missing, Expect::ModRevision(created), "x").await;
    assert_eq!(
        outcome,
        CasOutcome::Conflict { current: None },
        "ModRevision conflicts with an absent key"
    );
    assert_eq!(get(store, missing).await, None);
}

pub async fn compare_and_delete(store: &dyn MetadataStore) {
    let key = "conformance/compare_and_delete/key";
    let created = put(store, key, "v1").await;
    let updated = put(store, key, "v2").await;

    let current = get(store, key).await;
    let outcome = store
        .compare_and_delete(key, created)
        .await
        .expect("compare_and_delete");
    assert_eq!(
        outcome,
        CasOutcome::Conflict { current },
        "a stale mod revision conflicts"
    );
    assert!(
        get(store, key).await.is_some(),
        "a conflict deletes nothing"
    );

    let outcome = store
        .compare_and_delete(key, updated)
        .await
        .expect("compare_and_delete");
    assert_eq!(
        outcome,
        CasOutcome::Written {
            revision: updated + 1
        }
    );
    assert_eq!(get(store, key).await, None);

    let outcome = store
        .compare_and_delete(key, updated)
        .await
        .expect("compare_and_delete");
    assert_eq!(
        outcome,
        CasOutcome::Conflict { current: None },
        "an absent key conflicts"
    );
    assert_eq!(current_revision(store).await, updated + 1);
}

/// Many compare-and-sets race on one key, all expecting the same state: exactly one wins each
/// round, and every loser sees the winner's write.
pub async fn concurrent_cas_has_one_winner_per_round(store: &dyn MetadataStore) {
    const N_ROUNDS: usize = 10;
    const N_CONTENDERS: usize = 8;
    let key = "conformance/concurrent_cas/key";
    let mut expect = Expect::Absent;
    for round in 0..N_ROUNDS {
        let attempts = (0..N_CONTENDERS).map(|contender| {
            store.compare_and_set(key, expect, Bytes::from(format!("{round}/{contender}")))
        });
        let outcomes = futures::future::join_all(attempts).await;
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for outcome in outcomes {
            match outcome.expect("compare_and_set") {
                CasOutcome::Written { revision } => winners.push(revision),
                CasOutcome::Conflict { current } => losers.push(current),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner, got {winners:?}"
        );
        let winner = winners[0];
        for current in losers {
            let current = current.expect("a loser sees the winner's write");
            assert_eq!(
                current.mod_revision, winner,
                "round {round}: a loser sees the winner's write"
            );
        }
        expect = Expect::ModRevision(winner);
    }
    let kv = get(store, key).await.expect("the key exists");
    assert_eq!(kv.version, N_ROUNDS as u64, "one write per round");
}

pub async fn watch_from_now(store: &dyn MetadataStore) {
    let prefix = "conformance/watch_from_now/";
    put(store, &format!("{prefix}before"), "old").await;
    let mut stream = store.watch(prefix, None).await.expect("watch");

    let revision = put(store, &format!("{prefix}after"), "new").await;
    let event = next_event(&mut stream).await;
    let WatchEvent::Put(kv) = &event else {
        panic!("expected a put, got {event:?}");
    };
    assert_eq!(kv.key, format!("{prefix}after"));
    assert_eq!(kv.value, Bytes::from("new"));
    assert_eq!(kv.mod_revision, revision);
    assert_eq!(kv.create_revision, revision);
    assert_eq!(kv.version, 1);
    assert_quiet(&mut stream).await;
}

pub async fn watch_filters_by_prefix_and_sees_deletes(store: &dyn MetadataStore) {
    let prefix = "conformance/watch_filters/in/";
    let mut stream = store.watch(prefix, None).await.expect("watch");

    let put_revision = put(store, &format!("{prefix}key"), "v").await;
    put(store, "conformance/watch_filters/out/key", "v").await;
    put(store, "conformance/watch_filters/in", "no trailing slash").await;
    assert!(store.delete(&format!("{prefix}key")).await.expect("delete"));
    let delete_revision = current_revision(store).await;
    assert!(
        !store
            .delete(&format!("{prefix}never"))
            .await
            .expect("delete")
    );

    let event = next_event(&mut stream).await;
    assert!(
        matches!(&event, WatchEvent::Put(kv) if kv.mod_revision == put_revision),
        "got {event:?}"
    );
    let event = next_event(&mut stream).await;
    assert_eq!(
        event,
        WatchEvent::Delete {
            key: format!("{prefix}key"),
            mod_revision: delete_revision
        }
    );
    assert_quiet(&mut stream).await;
}

pub async fn watch_from_past_revision_replays_then_follows(store: &dyn MetadataStore) {
    let prefix = "conformance/watch_past/";
    let mut revisions = Vec::new();
    for idx in 0..5 {
        revisions.push(put(store, &format!("{prefix}{idx}"), "past").await);
        put(store, "conformance/watch_past_elsewhere", "noise").await;
    }
    // Start in the middle of history.
    let mut stream = store
        .watch(prefix, Some(revisions[2]))
        .await
        .expect("watch");
    for _ in 0..3 {
        revisions.push(put(store, &format!("{prefix}live"), "live").await);
    }
    let seen = next_events(&mut stream, 6).await;
    let seen_revisions: Vec<u64> = seen.iter().map(WatchEvent::mod_revision).collect();
    assert_eq!(
        seen_revisions,
        revisions[2..],
        "replay then live, in order, no gap, no duplicate"
    );
    assert_quiet(&mut stream).await;
}

/// The documented way to follow a prefix: range it, then watch from the next revision.
pub async fn watch_after_range_has_no_gap(store: &dyn MetadataStore) {
    let prefix = "conformance/watch_after_range/";
    put(store, &format!("{prefix}a"), "1").await;
    let range = store.range(prefix).await.expect("range");
    let revision = put(store, &format!("{prefix}b"), "2").await;
    let mut stream = store
        .watch(prefix, Some(range.revision + 1))
        .await
        .expect("watch");
    let event = next_event(&mut stream).await;
    assert_eq!(
        event.mod_revision(),
        revision,
        "the write between range and watch is seen"
    );
    assert_quiet(&mut stream).await;
}

/// Watches start from a past revision while writes are landing, to catch a gap or duplicate at
/// the seam between replayed history and live events.
pub async fn watch_racing_writes_has_no_gap_or_duplicate(store: &dyn MetadataStore) {
    const N_WRITES: u64 = 40;
    for attempt in 0..5 {
        let prefix = format!("conformance/watch_race/{attempt}/");
        let start = put(store, &format!("{prefix}start"), "0").await;
        let writer = async {
            let mut last = start;
            for idx in 0..N_WRITES {
                last = put(store, &format!("{prefix}{}", idx % 3), "x").await;
            }
            last
        };
        let watcher = async {
            // Subscribe at a different point of the write burst on each attempt.
            for _ in 0..attempt * 3 {
                tokio::task::yield_now().await;
            }
            store.watch(&prefix, Some(start)).await.expect("watch")
        };
        let (last, mut stream) = futures::join!(writer, watcher);
        assert_eq!(
            last,
            start + N_WRITES,
            "nothing else writes during the check"
        );
        let seen = next_events(&mut stream, N_WRITES as usize + 1).await;
        let seen_revisions: Vec<u64> = seen.iter().map(WatchEvent::mod_revision).collect();
        let expected: Vec<u64> = (start..=last).collect();
        assert_eq!(
            seen_revisions, expected,
            "attempt {attempt}: every revision exactly once, in order"
        );
        assert_quiet(&mut stream).await;
    }
}

/// A key under a lease goes when the lease is revoked, and a watch sees it go; a key put again
/// without the lease stays.
pub async fn lease_revoke_deletes_its_keys(store: &dyn MetadataStore) {
    let prefix = "conformance/lease_revoke/";
    let leased = format!("{prefix}leased");
    let detached = format!("{prefix}detached");
    let before_grant = std::time::Instant::now();
    let lease = store
        .lease_grant(Duration::from_secs(30))
        .await
        .expect("lease_grant");
    assert_eq!(lease.ttl, Duration::from_secs(30));
    assert!(
        lease.held_until >= before_grant + lease.ttl,
        "held_until counts from when the grant was sent"
    );
    guarded(store, GuardedPut::new(leased.as_str(), "v").lease(lease.id)).await;
    guarded(
        store,
        GuardedPut::new(detached.as_str(), "v").lease(lease.id),
    )
    .await;
    let replaced = put(store, &detached, "no lease").await;
    let mut stream = store.watch(prefix, None).await.expect("watch");

    assert!(
        store.lease_revoke(lease.id).await.expect("lease_revoke"),
        "revoking a live lease reports true"
    );
    let event = next_event(&mut stream).await;
    assert!(
        matches!(&event, WatchEvent::Delete { key, .. } if *key == leased),
        "the watch sees the leased key deleted; got {event:?}"
    );
    assert_quiet(&mut stream).await;
    assert_eq!(get(store, &leased).await, None, "the leased key is gone");
    let kv = get(store, &detached).await.expect("the re-put key stays");
    assert_eq!(kv.mod_revision, replaced);

    assert!(
        !store.lease_revoke(lease.id).await.expect("lease_revoke"),
        "revoking it again reports false"
    );
    assert_eq!(
        store
            .lease_keep_alive(lease.id)
            .await
            .expect("lease_keep_alive"),
        None,
        "a revoked lease cannot be kept alive"
    );
    let before = current_revision(store).await;
    let error = store
        .guarded_put(GuardedPut::new(leased.as_str(), "again").lease(lease.id))
        .await
        .expect_err("a put under a revoked lease fails");
    assert!(
        matches!(error, MetaError::LeaseNotFound { lease: id } if id == lease.id),
        "got {error:?}"
    );
    assert_eq!(current_revision(store).await, before, "and writes nothing");
}

/// A lease nobody keeps alive expires by itself, taking its keys with it.
pub async fn lease_expires_without_keep_alive(store: &dyn MetadataStore) {
    let prefix = "conformance/lease_expires/";
    let key = format!("{prefix}owner");
    let lease = store
        .lease_grant(Duration::from_millis(300))
        .await
        .expect("lease_grant");
    assert!(
        lease.ttl >= Duration::from_secs(1) && lease.ttl.subsec_nanos() == 0,
        "TTLs round up to whole seconds (a store may grant more); got {:?}",
        lease.ttl
    );
    let written = guarded(store, GuardedPut::new(key.as_str(), "me").lease(lease.id)).await;
    let mut stream = store.watch(prefix, Some(written)).await.expect("watch");
    let event = next_event(&mut stream).await;
    assert!(matches!(&event, WatchEvent::Put(kv) if kv.key == key));
    let event = next_event(&mut stream).await;
    assert!(
        matches!(&event, WatchEvent::Delete { key: deleted, .. } if *deleted == key),
        "the key is deleted when the lease expires; got {event:?}"
    );
    assert_eq!(get(store, &key).await, None);
    assert_eq!(
        store
            .lease_keep_alive(lease.id)
            .await
            .expect("lease_keep_alive"),
        None,
        "an expired lease cannot be kept alive"
    );
}

/// Keep-alives well within the TTL keep a lease, and its keys, for several TTLs.
pub async fn lease_keep_alive_holds_its_keys(store: &dyn MetadataStore) {
    let key = "conformance/lease_keep_alive/owner";
    // Two seconds, refreshed every quarter second for three: a margin for a loaded machine.
    let lease = store
        .lease_grant(Duration::from_secs(2))
        .await
        .expect("lease_grant");
    let written = guarded(store, GuardedPut::new(key, "me").lease(lease.id)).await;
    let mut held_until = lease.held_until;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sent_at = std::time::Instant::now();
        let refreshed = store
            .lease_keep_alive(lease.id)
            .await
            .expect("lease_keep_alive")
            .expect("a kept lease is alive");
        assert_eq!(refreshed.id, lease.id);
        assert_eq!(refreshed.ttl, lease.ttl);
        assert!(
            refreshed.held_until >= sent_at + lease.ttl,
            "held_until counts from the keep-alive's sending"
        );
        assert!(
            refreshed.held_until > held_until,
            "each keep-alive extends it"
        );
        held_until = refreshed.held_until;
    }
    let kv = get(store, key).await.expect("the key outlives its TTL");
    assert_eq!(kv.mod_revision, written);
    assert!(store.lease_revoke(lease.id).await.expect("lease_revoke"));
}

/// The fenced write: an offset key written only while an ownership key keeps its mod revision.
pub async fn guarded_put_fences_on_another_key(store: &dyn MetadataStore) {
    let owner = "conformance/guarded_fence/owner";
    let offset = "conformance/guarded_fence/offset";
    let other = "conformance/guarded_fence/other";
    let owned_at = put(store, owner, "replica-a").await;

    let fenced = |value: &'static str, at: u64| {
        GuardedPut::new(offset, value).guard(owner, Expect::ModRevision(at))
    };
    let committed = guarded(store, fenced("10", owned_at)).await;
    assert_eq!(committed, owned_at + 1);
    check_kv(store, offset, "10", committed, committed, 1).await;

    // Another replica takes over: the old owner's revision no longer holds.
    let taken_at = put(store, owner, "replica-b").await;
    let current = get(store, owner).await;
    let outcome = store
        .guarded_put(fenced("20", owned_at))
        .await
        .expect("guarded_put");
    assert_eq!(
        outcome,
        GuardedOutcome::Conflict { guard: 0, current },
        "a stale owner's commit is refused"
    );
    check_kv(store, offset, "10", committed, committed, 1).await;
    assert_eq!(
        current_revision(store).await,
        taken_at,
        "and writes nothing"
    );

    let outcome = store
        .guarded_put(fenced("20", taken_at))
        .await
        .expect("guarded_put");
    assert!(matches!(outcome, GuardedOutcome::Written { revision } if revision == taken_at + 1));

    // Guards are all checked; the first that fails is named.
    let outcome = store
        .guarded_put(
            GuardedPut::new(offset, "30")
                .guard(owner, Expect::ModRevision(taken_at))
                .guard(other, Expect::ModRevision(taken_at)),
        )
        .await
        .expect("guarded_put");
    assert_eq!(
        outcome,
        GuardedOutcome::Conflict {
            guard: 1,
            current: None
        }
    );
    assert!(store.delete(owner).await.expect("delete"));
    let outcome = store
        .guarded_put(fenced("40", taken_at))
        .await
        .expect("guarded_put");
    assert_eq!(
        outcome,
        GuardedOutcome::Conflict {
            guard: 0,
            current: None
        },
        "a deleted owner key fences too"
    );
}

/// Taking ownership: create the key only if absent, under the taker's lease; it frees up when
/// the lease goes.
pub async fn guarded_put_takes_ownership_under_a_lease(store: &dyn MetadataStore) {
    let owner = "conformance/guarded_ownership/owner";
    let first = store
        .lease_grant(Duration::from_secs(30))
        .await
        .expect("lease_grant");
    let second = store
        .lease_grant(Duration::from_secs(30))
        .await
        .expect("lease_grant");
    assert_ne!(first.id, second.id, "leases have distinct ids");
    let take = |who: &'static str, lease| {
        GuardedPut::new(owner, who)
            .guard(owner, Expect::Absent)
            .lease(lease)
    };
    let taken_at = guarded(store, take("a", first.id)).await;
    let outcome = store
        .guarded_put(take("b", second.id))
        .await
        .expect("guarded_put");
    let GuardedOutcome::Conflict {
        guard: 0,
        current: Some(current),
    } = outcome
    else {
        panic!("a second taker is refused; got {outcome:?}");
    };
    assert_eq!(current.mod_revision, taken_at);
    assert_eq!(current.value, Bytes::from("a"));

    assert!(store.lease_revoke(first.id).await.expect("lease_revoke"));
    let retaken_at = guarded(store, take("b", second.id)).await;
    check_kv(store, owner, "b", retaken_at, retaken_at, 1).await;
    assert!(store.lease_revoke(second.id).await.expect("lease_revoke"));
    assert_eq!(get(store, owner).await, None);
}

/// A guarded put that must write; returns its revision.
async fn guarded(store: &dyn MetadataStore, put: GuardedPut) -> u64 {
    match store.guarded_put(put).await.expect("guarded_put") {
        GuardedOutcome::Written { revision } => revision,
        outcome => panic!("expected the guarded put to write, got {outcome:?}"),
    }
}

async fn get(store: &dyn MetadataStore, key: &str) -> Option<KeyValue> {
    store.get(key).await.expect("get")
}

async fn put(store: &dyn MetadataStore, key: &str, value: &'static str) -> u64 {
    store.put(key, Bytes::from(value)).await.expect("put")
}

async fn cas(
    store: &dyn MetadataStore,
    key: &str,
    expect: Expect,
    value: &'static str,
) -> CasOutcome {
    store
        .compare_and_set(key, expect, Bytes::from(value))
        .await
        .expect("compare_and_set")
}

async fn current_revision(store: &dyn MetadataStore) -> u64 {
    // A range of a prefix nothing uses reads only the revision.
    store
        .range("conformance/\u{7f}nothing")
        .await
        .expect("range")
        .revision
}

async fn check_kv(
    store: &dyn MetadataStore,
    key: &str,
    value: &str,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
) {
    let kv = get(store, key)
        .await
        .unwrap_or_else(|| panic!("{key} is present"));
    assert_eq!(kv.value, Bytes::from(value.to_owned()), "value of {key}");
    assert_eq!(
        kv.create_revision, create_revision,
        "create_revision of {key}"
    );
    assert_eq!(kv.mod_revision, mod_revision, "mod_revision of {key}");
    assert_eq!(kv.version, version, "version of {key}");
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("the watch failed: {error}"),
        Ok(None) => panic!("the watch ended early"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

async fn next_events(stream: &mut WatchStream, n_events: usize) -> Vec<WatchEvent> {
    let mut res = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        res.push(next_event(stream).await);
    }
    res
}

async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
        panic!("expected no further watch event, got {item:?}");
    }
}

fn as_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("<not utf-8>")
}
