//! A bounded set of open segment files: with thousands of topics, keeping every `.log` and
//! `.idx` open would run the process out of file descriptors.
//!
//! A `CachedFile` is a path plus, while it is in the cache, an open handle. Every use takes the
//! handle (opening the file again if it was closed) and marks it recently used; once more files
//! are open than the cap allows, the least recently used ones are closed. A caller that took a
//! handle keeps it for as long as it holds it, so a read in progress never loses its file.
//!
//! The cap is process-wide, because the descriptor limit (`RLIMIT_NOFILE`) is. Files that are
//! about to disappear from their path (a retention pass removing a segment, a deleted topic's
//! directory being renamed) are pinned first if they are open: they then stay open, outside the
//! cap, until their last user drops them, so readers that already hold the segment keep
//! working.
//!
//! Reopening a file with unsynced writes is safe: `fsync` flushes the file's dirty pages
//! whichever descriptor wrote them, and Linux reports a write-back error to descriptors opened
//! after it as long as no one has seen it yet.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::files::lock;
use crate::segment::ReadAt;

/// The default cap on open segment files: well under the common soft limit of 1024 descriptors
/// once sockets and the metadata store are counted.
pub const DEFAULT_MAX_OPEN_FILES: usize = 512;

/// Segment files open through the cache, pinned ones included.
const OPEN_FILES_GAUGE: &str = "trellis_log_open_files";

/// The fewest files the cache keeps open, whatever the cap says: a writer touches two at once.
const MIN_OPEN_FILES: usize = 8;

pub(crate) struct CachedFile {
    entry: Arc<Entry>,
}

struct Entry {
    id: u64,
    path: PathBuf,
    // std Mutex: held to take, set or clear the handle, and across the `open` call that
    // reopens it; never across reads or writes, which work on a cloned `Arc<File>`.
    file: Mutex<Option<Arc<File>>>,
    /// The cache's clock at the last use; the smallest is closed first.
    last_used: AtomicU64,
    /// Never closed by the cache; the handle lives as long as the entry.
    pinned: AtomicBool,
}

struct Cache {
    max_open: AtomicUsize,
    clock: AtomicU64,
    next_id: AtomicU64,
    // std Mutex: held to add or remove an entry and during an eviction pass, which only
    // `try_lock`s entries, so it never waits on an entry's lock while holding this one.
    open: Mutex<HashMap<u64, Weak<Entry>>>,
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache {
        max_open: AtomicUsize::new(DEFAULT_MAX_OPEN_FILES),
        clock: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
    })
}

/// Sets the process-wide cap on open segment files (at least a few are always allowed).
pub(crate) fn set_max_open_files(max_open: usize) {
    cache()
        .max_open
        .store(max_open.max(MIN_OPEN_FILES), Ordering::Release);
    cache().evict_over_cap();
}

impl CachedFile {
    /// Takes over a handle that is already open on `path`.
    pub(crate) fn new(path: PathBuf, file: File) -> CachedFile {
        let cache = cache();
        let entry = Arc::new(Entry {
            id: cache.next_id.fetch_add(1, Ordering::Relaxed),
            path,
            file: Mutex::new(Some(Arc::new(file))),
            last_used: AtomicU64::new(cache.tick()),
            pinned: AtomicBool::new(false),
        });
        cache.admit(&entry);
        CachedFile { entry }
    }

    /// The open handle, reopening the file if the cache had closed it.
    pub(crate) fn get(&self) -> io::Result<Arc<File>> {
        let cache = cache();
        self.entry.last_used.store(cache.tick(), Ordering::Relaxed);
        let reopened = {
            let mut slot = lock(&self.entry.file);
            if let Some(file) = &*slot {
                return Ok(Arc::clone(file));
            }
            // Read-write whatever the segment's role: the active segment and the `.idx` files
            // are written, and opening a sealed one for writing costs nothing.
            let file = Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&self.entry.path)?,
            );
            *slot = Some(Arc::clone(&file));
            file
        };
        cache.admit(&self.entry);
        Ok(reopened)
    }

    /// Keeps the file open, outside the cap, until this handle is dropped, if it is open now:
    /// for a file about to be removed or moved while readers may still use it. A closed one is
    /// not opened again (a deleted topic of thousands of segments would take as many
    /// descriptors at once); a reader would have to lose it in the instant between taking the
    /// segment and reading it, and then gets the error of a file that is gone.
    pub(crate) fn pin(&self) {
        let slot = lock(&self.entry.file);
        if slot.is_some() {
            self.entry.pinned.store(true, Ordering::Release);
        }
    }
}

impl ReadAt for CachedFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        FileExt::read_exact_at(&*self.get()?, buf, position)
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        let n_open = {
            let mut open = lock(&cache().open);
            open.remove(&self.entry.id);
            open.len()
        };
        metrics::gauge!(OPEN_FILES_GAUGE).set(n_open as f64);
    }
}

impl Cache {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn admit(&self, entry: &Arc<Entry>) {
        let n_open = {
            let mut open = lock(&self.open);
            open.insert(entry.id, Arc::downgrade(entry));
            open.len()
        };
        metrics::gauge!(OPEN_FILES_GAUGE).set(n_open as f64);
        if n_open > self.max_open.load(Ordering::Acquire) {
            self.evict_over_cap();
        }
    }

    /// Closes the least recently used files until an eighth of the cap is free again, so the
    /// scan over every open file is paid once per many opens rather than on each.
    fn evict_over_cap(&self) {
        let max_open = self.max_open.load(Ordering::Acquire);
        let mut open = lock(&self.open);
        if open.len() <= max_open {
            return;
        }
        let target = max_open - max_open / 8;
        let mut candidates: Vec<(u64, u64)> = open
            .iter()
            .filter_map(|(id, weak)| {
                let entry = weak.upgrade()?;
                (!entry.pinned.load(Ordering::Acquire))
                    .then(|| (entry.last_used.load(Ordering::Relaxed), *id))
            })
            .collect();
        candidates.sort_unstable();
        let mut n_open = open.len();
        for (_, id) in candidates {
            if n_open <= target {
                break;
            }
            let Some(entry) = open.get(&id).and_then(Weak::upgrade) else {
                open.remove(&id);
                n_open -= 1;
                continue;
            };
            // Busy right now (being reopened or taken): it is in use, so not a good victim.
            let Ok(mut slot) = entry.file.try_lock() else {
                continue;
            };
            // Pinned since the candidates were listed.
            if entry.pinned.load(Ordering::Acquire) {
                continue;
            }
            *slot = None;
            open.remove(&id);
            n_open -= 1;
        }
        metrics::gauge!(OPEN_FILES_GAUGE).set(n_open as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_file_is_reopened_on_use_and_a_pinned_one_survives_its_removal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"hello").expect("write");
        let file = CachedFile::new(path.clone(), File::open(&path).expect("open"));
        // Closed as the cache would close it under pressure.
        *lock(&file.entry.file) = None;
        let mut buf = [0u8; 5];
        file.read_exact_at(&mut buf, 0).expect("reopened read");
        assert_eq!(&buf, b"hello");

        file.pin();
        std::fs::remove_file(&path).expect("remove");
        // What an eviction pass over a full cache would do to it: nothing.
        assert!(lock(&file.entry.file).is_some());
        let mut buf = [0u8; 5];
        file.read_exact_at(&mut buf, 0)
            .expect("a pinned file stays readable after its removal");
        assert_eq!(&buf, b"hello");
    }
}
