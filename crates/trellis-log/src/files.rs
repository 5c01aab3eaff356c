//! How a topic lays out on disk: file names, creating a segment's files, and directory fsyncs.
//!
//! This is the only module that spells out file names. It knows nothing of frames or indexes,
//! only that a segment is a `.log` file plus a `.idx` file named by the segment's base offset.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::LogError;

/// The files of a freshly created, empty segment.
pub(crate) struct NewSegmentFiles {
    pub(crate) log_path: PathBuf,
    pub(crate) log_file: File,
    pub(crate) idx_path: PathBuf,
    pub(crate) idx_file: File,
}

/// Digits in a segment file name: enough for any `u64`.
const BASE_OFFSET_DIGITS: usize = 20;
const LOG_EXTENSION: &str = "log";
const IDX_EXTENSION: &str = "idx";
/// Deleted topics are renamed to `~deleted~<unique>` before their files are removed. `~` is not
/// allowed in topic names, so a tombstone can never collide with a live topic.
const TOMBSTONE_PREFIX: &str = "~deleted~";

pub(crate) fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!(
        "{base_offset:0BASE_OFFSET_DIGITS$}.{LOG_EXTENSION}"
    ))
}

pub(crate) fn idx_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!(
        "{base_offset:0BASE_OFFSET_DIGITS$}.{IDX_EXTENSION}"
    ))
}

/// What a file name in a topic directory means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentFile {
    Log(u64),
    Idx(u64),
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<SegmentFile> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != BASE_OFFSET_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base_offset = stem.parse::<u64>().ok()?;
    match extension {
        LOG_EXTENSION => Some(SegmentFile::Log(base_offset)),
        IDX_EXTENSION => Some(SegmentFile::Idx(base_offset)),
        _ => None,
    }
}

pub(crate) fn tombstone_name(unique: &str) -> String {
    format!("{TOMBSTONE_PREFIX}{unique}")
}

pub(crate) fn is_tombstone(name: &str) -> bool {
    name.starts_with(TOMBSTONE_PREFIX)
}

/// Creates the empty `.log` and `.idx` files of a new segment and fsyncs `dir`, so the new
/// segment survives a power cut.
///
/// A leftover empty `.log` (from a roll that failed half-way) is reused; a non-empty one is an
/// error, because it would mean two segments claim the same offsets.
pub(crate) fn create_segment(dir: &Path, base_offset: u64) -> Result<NewSegmentFiles, LogError> {
    let new_files = create_segment_files(dir, base_offset)?;
    sync_dir(dir)?;
    Ok(new_files)
}

/// `create_segment` without the directory fsync, for a caller that makes the entries durable
/// itself before anything depends on them.
pub(crate) fn create_segment_files(
    dir: &Path,
    base_offset: u64,
) -> Result<NewSegmentFiles, LogError> {
    let log_path = log_path(dir, base_offset);
    let log_file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&log_path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&log_path)
                .map_err(|source| io_error(&log_path, source))?;
            let len = file
                .metadata()
                .map_err(|source| io_error(&log_path, source))?
                .len();
            if len != 0 {
                let source = io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("segment file already holds {len} bytes"),
                );
                return Err(io_error(&log_path, source));
            }
            file
        }
        Err(source) => return Err(io_error(&log_path, source)),
    };
    let idx_path = idx_path(dir, base_offset);
    // The index is a cache of the .log, so replacing a leftover one is always safe.
    let idx_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&idx_path)
        .map_err(|source| io_error(&idx_path, source))?;
    Ok(NewSegmentFiles {
        log_path,
        log_file,
        idx_path,
        idx_file,
    })
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let res = File::open(dir).and_then(|handle| handle.sync_all());
    res.map_err(|source| io_error(dir, source))
}

/// Reads a whole file, treating a missing one as empty.
pub(crate) fn read_if_exists(path: &Path) -> Result<Vec<u8>, LogError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(io_error(path, source)),
    }
}

/// Removes a file, treating a missing one as removed.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(path, source)),
    }
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_owned(),
        source,
    }
}

// Lock helpers. A panic while holding one of these locks cannot leave the protected data half
// updated in a way that matters more than stopping the whole log would, so poisoning is ignored.

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(rw_lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rw_lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(rw_lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rw_lock.write().unwrap_or_else(PoisonError::into_inner)
}
