//! The conformance suite against the embedded backend.

use std::sync::Arc;

use trellis_storage::{EmbeddedOptions, EmbeddedStore, EventStore, conformance};

fn open(dir: &std::path::Path) -> Arc<dyn EventStore> {
    let mut options = EmbeddedOptions::new(dir);
    options.key_of = Some(Arc::new(conformance::key_of));
    Arc::new(EmbeddedStore::open(options).expect("open the embedded store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    conformance::run_all(&*store).await;
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_records_and_duplicates_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    conformance::restart_persistence(open(dir.path()), || async move { open(&path) }).await;
}
