//! Integration tests for trellis-meta, through the public API only: the conformance suite run
//! against the embedded store and a real etcd, each store's own behaviour (reopen, locking,
//! history, lagging watchers; restarts, compaction, an unreachable etcd), and a model-based
//! property test.

mod conformance;
mod embedded;
mod etcd;
mod keeper;
mod model;

use std::path::PathBuf;

use tempfile::TempDir;
use trellis_meta::{EmbeddedOptions, EmbeddedStore};

/// A store in a fresh temporary directory; keep the directory alive as long as the store.
fn fresh_store() -> (TempDir, EmbeddedStore) {
    fresh_store_with(EmbeddedOptions::new())
}

fn fresh_store_with(options: EmbeddedOptions) -> (TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open_with(&store_path(&dir), options).expect("open");
    (dir, store)
}

fn store_path(dir: &TempDir) -> PathBuf {
    dir.path().join("meta.redb")
}
