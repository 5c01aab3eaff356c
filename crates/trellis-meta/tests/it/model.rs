//! A property test: random puts, deletes and compare-and-sets against a `BTreeMap` model of
//! etcd's bookkeeping, checking every result, the revision and the whole key space after each
//! operation and again after a reopen.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use trellis_meta::{CasOutcome, EmbeddedStore, Expect, KeyValue, MetadataStore};

use crate::store_path;

// Overlapping prefixes, so ranges by prefix have something to get wrong.
const KEYS: [&str; 4] = ["a", "ab", "b", "b/c"];
const PREFIXES: [&str; 4] = ["", "a", "b/", "zz"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        key_idx: usize,
        value: u8,
    },
    Delete {
        key_idx: usize,
    },
    CasAbsent {
        key_idx: usize,
        value: u8,
    },
    /// Expects the key's current mod revision, or a wrong one when `stale`.
    CasModRevision {
        key_idx: usize,
        value: u8,
        stale: bool,
    },
    CompareAndDelete {
        key_idx: usize,
        stale: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key_idx = 0..KEYS.len();
    prop_oneof![
        3 => (key_idx.clone(), any::<u8>()).prop_map(|(key_idx, value)| Op::Put { key_idx, value }),
        1 => key_idx.clone().prop_map(|key_idx| Op::Delete { key_idx }),
        1 => (key_idx.clone(), any::<u8>()).prop_map(|(key_idx, value)| Op::CasAbsent { key_idx, value }),
        2 => (key_idx.clone(), any::<u8>(), any::<bool>())
            .prop_map(|(key_idx, value, stale)| Op::CasModRevision { key_idx, value, stale }),
        1 => (key_idx, any::<bool>()).prop_map(|(key_idx, stale)| Op::CompareAndDelete { key_idx, stale }),
    ]
}

struct Model {
    revision: u64,
    kvs: BTreeMap<String, KeyValue>,
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            kvs: BTreeMap::new(),
        }
    }

    fn put(&mut self, key: &str, value: Bytes) -> u64 {
        self.revision += 1;
        let previous = self.kvs.get(key);
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: previous.map_or(self.revision, |kv| kv.create_revision),
            mod_revision: self.revision,
            version: previous.map_or(1, |kv| kv.version + 1),
        };
        self.kvs.insert(key.to_owned(), kv);
        self.revision
    }

    fn delete(&mut self, key: &str) -> bool {
        let existed = self.kvs.remove(key).is_some();
        if existed {
            self.revision += 1;
        }
        existed
    }

    /// A mod revision that `key` does not have.
    fn wrong_mod_revision(&self, key: &str) -> u64 {
        self.kvs
            .get(key)
            .map_or(self.revision, |kv| kv.mod_revision + 1)
    }
}

async fn apply(store: &EmbeddedStore, model: &mut Model, op: &Op) {
    match *op {
        Op::Put { key_idx, value } => {
            let key = KEYS[key_idx];
            let revision = store.put(key, Bytes::from(vec![value])).await.expect("put");
            assert_eq!(revision, model.put(key, Bytes::from(vec![value])), "{op:?}");
        }
        Op::Delete { key_idx } => {
            let key = KEYS[key_idx];
            assert_eq!(
                store.delete(key).await.expect("delete"),
                model.delete(key),
                "{op:?}"
            );
        }
        Op::CasAbsent { key_idx, value } => {
            let key = KEYS[key_idx];
            let outcome = store
                .compare_and_set(key, Expect::Absent, Bytes::from(vec![value]))
                .await
                .expect("cas");
            let expected = match model.kvs.get(key) {
                Some(current) => CasOutcome::Conflict {
                    current: Some(current.clone()),
                },
                None => CasOutcome::Written {
                    revision: model.put(key, Bytes::from(vec![value])),
                },
            };
            assert_eq!(outcome, expected, "{op:?}");
        }
        Op::CasModRevision {
            key_idx,
            value,
            stale,
        } => {
            let key = KEYS[key_idx];
            let current = model.kvs.get(key).cloned();
            let mod_revision = match &current {
                Some(kv) if !stale => kv.mod_revision,
                _ => model.wrong_mod_revision(key),
            };
            let outcome = store
                .compare_and_set(
                    key,
                    Expect::ModRevision(mod_revision),
                    Bytes::from(vec![value]),
                )
                .await
                .expect("cas");
            let expected = match current {
                Some(kv) if kv.mod_revision == mod_revision => CasOutcome::Written {
                    revision: model.put(key, Bytes::from(vec![value])),
                },
                current => CasOutcome::Conflict { current },
            };
            assert_eq!(outcome, expected, "{op:?}");
        }
        Op::CompareAndDelete { key_idx, stale } => {
            let key = KEYS[key_idx];
            let current = model.kvs.get(key).cloned();
            let mod_revision = match &current {
                Some(kv) if !stale => kv.mod_revision,
                _ => model.wrong_mod_revision(key),
            };
            let outcome = store
                .compare_and_delete(key, mod_revision)
                .await
                .expect("compare_and_delete");
            let expected = match current {
                Some(kv) if kv.mod_revision == mod_revision => {
                    model.delete(key);
                    CasOutcome::Written {
                        revision: model.revision,
                    }
                }
                current => CasOutcome::Conflict { current },
            };
            assert_eq!(outcome, expected, "{op:?}");
        }
    }
}

async fn check_matches(store: &EmbeddedStore, model: &Model) {
    for prefix in PREFIXES {
        let range = store.range(prefix).await.expect("range");
        let expected: Vec<KeyValue> = model
            .kvs
            .values()
            .filter(|kv| kv.key.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(range.kvs, expected, "range({prefix:?})");
        assert_eq!(range.revision, model.revision, "range({prefix:?}).revision");
    }
    for key in KEYS {
        assert_eq!(
            store.get(key).await.expect("get").as_ref(),
            model.kvs.get(key),
            "get({key:?})"
        );
    }
}

async fn check_against_model(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    let mut model = Model::new();
    {
        let store = EmbeddedStore::open(&path).expect("open");
        let mut last_revision = model.revision;
        for op in &ops {
            apply(&store, &mut model, op).await;
            assert!(model.revision >= last_revision, "revisions never go back");
            last_revision = model.revision;
            check_matches(&store, &model).await;
        }
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    check_matches(&store, &model).await;
    let revision = store
        .put("after-reopen", Bytes::from("x"))
        .await
        .expect("put");
    assert_eq!(
        revision,
        model.revision + 1,
        "the revision continues after a reopen"
    );
}

proptest! {
    // Each case fsyncs every write; a few dozen short histories cover the bookkeeping.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn embedded_store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(check_against_model(ops));
    }
}
