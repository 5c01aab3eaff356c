//! The catalog: the set of topics in one log directory. Opening the directory, creating,
//! deleting and closing topics, and running retention over all of them.
//!
//! The catalog's map is the authority on which topics exist. Deleting a topic renames its
//! directory to a tombstone before anything else, so a topic of the same name can be created
//! at once while the old files are still being removed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fd_cache;
use crate::files::{self, io_error, lock, read};
use crate::topic::{Status, TopicInner};
use crate::writer::StopReason;
use crate::writer_pool::WriterPool;
use crate::{
    LogError, LogOptions, LogResources, TopicConfig, recovery, retention, validate_topic_name,
};

pub(crate) struct Catalog {
    dir: PathBuf,
    // std Mutex: held across short blocking file-system calls (mkdir, rename) so that creating
    // and deleting a topic are atomic with respect to each other, but never across an await.
    topics: Mutex<BTreeMap<String, Arc<TopicInner>>>,
    closed: AtomicBool,
    n_tombstones: AtomicU64,
    /// The writer threads every topic of this log shares.
    pool: Arc<WriterPool>,
}

/// What `create` does when the topic already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfExists {
    Fail,
    Return,
}

impl Catalog {
    pub(crate) fn open(options: LogOptions, resources: &LogResources) -> Result<Catalog, LogError> {
        fd_cache::set_max_open_files(resources.max_open_files);
        let pool = Arc::new(WriterPool::new(resources.writer_threads));
        let dir = options.dir;
        fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        files::sync_dir(&dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|source| io_error(&dir, source))? {
            let entry = entry.map_err(|source| io_error(&dir, source))?;
            let path = entry.path();
            let is_dir = entry
                .file_type()
                .map_err(|source| io_error(&path, source))?
                .is_dir();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(message = "Skipping a log directory entry whose name is not UTF-8.", path = %path.display());
                continue;
            };
            if !is_dir {
                continue;
            }
            if files::is_tombstone(&name) {
                // A delete that was cut short: finish it.
                fs::remove_dir_all(&path).map_err(|source| io_error(&path, source))?;
                continue;
            }
            if let Err(error) = validate_topic_name(&name) {
                tracing::warn!(message = "Skipping a directory that is not a topic.", %error, path = %path.display());
                continue;
            }
            found.push((path, name));
        }
        let mut topics = BTreeMap::new();
        for (name, topic) in recover_all(found, &options.default_topic)? {
            topics.insert(name, Arc::new(topic.with_pool(&pool)));
        }
        Ok(Catalog {
            dir,
            topics: Mutex::new(topics),
            closed: AtomicBool::new(false),
            n_tombstones: AtomicU64::new(0),
            pool,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<TopicInner>> {
        lock(&self.topics).get(name).map(Arc::clone)
    }

    pub(crate) fn n_topics(&self) -> usize {
        lock(&self.topics).len()
    }

    pub(crate) fn topics(&self) -> Vec<Arc<TopicInner>> {
        lock(&self.topics).values().map(Arc::clone).collect()
    }

    pub(crate) fn create(
        &self,
        name: &str,
        config: TopicConfig,
        if_exists: IfExists,
    ) -> Result<Arc<TopicInner>, LogError> {
        validate_topic_name(name)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let mut topics = lock(&self.topics);
        if let Some(topic) = topics.get(name) {
            return match if_exists {
                IfExists::Return => Ok(Arc::clone(topic)),
                IfExists::Fail => Err(LogError::TopicExists(name.to_owned())),
            };
        }
        let topic =
            Arc::new(TopicInner::create(name, &self.dir.join(name), config)?.with_pool(&self.pool));
        topics.insert(name.to_owned(), Arc::clone(&topic));
        Ok(topic)
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<bool, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let (topic, tombstone) = {
            let mut topics = lock(&self.topics);
            let Some(topic) = topics.get(name).map(Arc::clone) else {
                return Ok(false);
            };
            let tombstone = self.dir.join(files::tombstone_name(&self.unique_suffix()));
            // Readers that already hold a segment keep reading it after the rename moves
            // its path away: its file stays open until they let go.
            for segment in read(&topic.shared.segments).iter() {
                segment.file.pin();
            }
            {
                // Under the dir lock, so the writer cannot be creating a segment file meanwhile.
                let mut dir = lock(&topic.shared.dir);
                fs::rename(&*dir, &tombstone).map_err(|source| io_error(&dir, source))?;
                dir.clone_from(&tombstone);
            }
            topics.remove(name);
            // Fails new appends and wakes every `wait_for` with `NoSuchTopic`.
            topic.shared.set_status(Status::Deleted);
            (topic, tombstone)
        };
        topic.stop(StopReason::Delete).await?;
        topic.shared.size_bytes.store(0, Ordering::Release);
        topic.shared.update_size_gauge();
        let root = self.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            fs::remove_dir_all(&tombstone).map_err(|source| io_error(&tombstone, source))?;
            files::sync_dir(&root)
        })
        .await;
        match removed {
            Ok(res) => res.map(|()| true),
            // The rename already made the delete take effect; the next open removes the rest.
            Err(_) => Ok(true),
        }
    }

    pub(crate) fn enforce_retention(&self) -> Result<(), LogError> {
        let mut first_error = None;
        for topic in self.topics() {
            if let Err(error) = retention::enforce(&topic.shared) {
                tracing::warn!(message = "Retention failed for a topic.", %error, topic = %topic.shared.name);
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    pub(crate) async fn close(&self) -> Result<(), LogError> {
        self.closed.store(true, Ordering::Release);
        let mut stopping = tokio::task::JoinSet::new();
        for topic in self.topics() {
            // Refuses new appends and wakes every `wait_for` with `Closed`; what is queued still
            // gets written.
            topic.shared.set_status(Status::Closed);
            stopping.spawn(async move { topic.stop(StopReason::Close).await });
        }
        let mut first_error = None;
        while let Some(joined) = stopping.join_next().await {
            let res = joined.unwrap_or(Err(LogError::Closed));
            if let Err(error) = res {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// A name for a tombstone that no earlier run can have left behind.
    fn unique_suffix(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = self.n_tombstones.fetch_add(1, Ordering::AcqRel);
        format!("{nanos}-{n}")
    }
}

/// Threads that recover topics at open. Recovery is mostly waiting on reads and an fsync per
/// topic, so a few threads overlap them (and let the file system share journal commits);
/// thousands of topics then open in seconds rather than minutes.
const RECOVERY_THREADS: usize = 8;

/// Recovers the topics in `found` (directory, name) on a few threads.
fn recover_all(
    found: Vec<(PathBuf, String)>,
    default_topic: &TopicConfig,
) -> Result<Vec<(String, TopicInner)>, LogError> {
    let n_threads = RECOVERY_THREADS.min(found.len());
    if n_threads <= 1 {
        return found
            .into_iter()
            .map(|(path, name)| {
                let topic = recovery::recover_topic(&path, &name, default_topic.clone())?;
                Ok((name, topic))
            })
            .collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Recovery's warnings go where the caller's would.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let recovered = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..n_threads)
            .map(|_| {
                let dispatch = dispatch.clone();
                let (next, failed, found) = (&next, &failed, &found);
                scope.spawn(move || {
                    let _dispatch = tracing::dispatcher::set_default(&dispatch);
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Acquire) {
                        let idx = next.fetch_add(1, Ordering::AcqRel);
                        let Some((path, name)) = found.get(idx) else {
                            break;
                        };
                        match recovery::recover_topic(path, name, default_topic.clone()) {
                            Ok(topic) => done.push((name.clone(), topic)),
                            Err(error) => {
                                failed.store(true, Ordering::Release);
                                return Err(error);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or(Err(LogError::Closed)))
            .collect::<Vec<_>>()
    });
    let mut topics = Vec::with_capacity(found.len());
    for res in recovered {
        topics.extend(res?);
    }
    Ok(topics)
}
