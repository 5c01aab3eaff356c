//! A fault injector around the real embedded store: puts fail or wait on command. Everything
//! else is the real `EmbeddedStore` on a real redb file.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tempfile::TempDir;
use tokio::sync::watch;
use trellis_meta::{
    CasOutcome, EmbeddedStore, Expect, KeyValue, MetaError, MetadataStore, Range, WatchStream,
};

#[derive(Debug, thiserror::Error)]
#[error("injected put failure")]
pub(crate) struct Injected;

pub(crate) struct FaultyStore {
    inner: EmbeddedStore,
    fail_puts: AtomicBool,
    /// `true` while puts may proceed; `false` holds every put until it turns `true` again.
    open: watch::Sender<bool>,
    /// When set, only puts whose value contains these bytes are held.
    held_only: std::sync::Mutex<Option<Vec<u8>>>,
    puts_started: AtomicU64,
    puts_finished: AtomicU64,
    _dir: TempDir,
}

impl FaultyStore {
    pub(crate) fn new() -> Arc<FaultyStore> {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = EmbeddedStore::open(&dir.path().join("meta.redb")).expect("open store");
        Arc::new(FaultyStore {
            inner,
            fail_puts: AtomicBool::new(false),
            open: watch::Sender::new(true),
            held_only: std::sync::Mutex::new(None),
            puts_started: AtomicU64::new(0),
            puts_finished: AtomicU64::new(0),
            _dir: dir,
        })
    }

    pub(crate) fn fail_puts(&self, fail: bool) {
        self.fail_puts.store(fail, Ordering::SeqCst);
    }

    /// Makes every put from now on wait until `release`.
    pub(crate) fn hold(&self) {
        *self.held_only.lock().expect("held_only") = None;
        self.open.send_replace(false);
    }

    /// Makes only the puts whose value contains `needle` wait until `release`.
    pub(crate) fn hold_values_containing(&self, needle: &str) {
        *self.held_only.lock().expect("held_only") = Some(needle.as_bytes().to_vec());
        self.open.send_replace(false);
    }

    pub(crate) fn release(&self) {
        self.open.send_replace(true);
    }

    /// How many puts have ended (written or failed in the real store).
    pub(crate) fn puts_finished(&self) -> u64 {
        self.puts_finished.load(Ordering::SeqCst)
    }

    /// How many puts have reached the store wrapper (held ones included).
    pub(crate) fn puts_started(&self) -> u64 {
        self.puts_started.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl MetadataStore for FaultyStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, MetaError> {
        self.inner.range(prefix).await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, MetaError> {
        self.puts_started.fetch_add(1, Ordering::SeqCst);
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(MetaError::Unavailable(Box::new(Injected)));
        }
        let held = match &*self.held_only.lock().expect("held_only") {
            Some(needle) => value.windows(needle.len()).any(|w| w == needle.as_slice()),
            None => true,
        };
        if held {
            let mut open = self.open.subscribe();
            // The sender lives as long as the store, so this only ends when the gate opens.
            let _ = open.wait_for(|open| *open).await;
        }
        let written = self.inner.put(key, value).await;
        self.puts_finished.fetch_add(1, Ordering::SeqCst);
        written
    }

    async fn delete(&self, key: &str) -> Result<bool, MetaError> {
        self.inner.delete(key).await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Bytes,
    ) -> Result<CasOutcome, MetaError> {
        self.inner.compare_and_set(key, expect, value).await
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<u64>,
    ) -> Result<WatchStream, MetaError> {
        self.inner.watch(prefix, start_revision).await
    }

    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: u64,
    ) -> Result<CasOutcome, MetaError> {
        self.inner.compare_and_delete(key, mod_revision).await
    }
}
