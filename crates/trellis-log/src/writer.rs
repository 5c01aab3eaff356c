//! Group commit: appends from many producers share one write and one `fsync`.
//!
//! Each topic has one writer fed by a bounded channel, on an OS thread of its own. It takes one
//! request, drains whatever else is already queued (up to `MAX_GROUP_BYTES`), encodes the whole
//! group, writes it with one positional write per segment touched and, for `Durability::Always`,
//! fsyncs once. Only then does the task move the high watermark and
//! resolve every waiter, so an ack never resolves before the fsync covering its record returns.
//!
//! The writer is the only code that writes to the active segment, rolls to a new one or persists
//! index entries of the active segment. If a write or fsync fails, every append of that group
//! fails, the file is truncated back to its last good length, and the topic stays usable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use crate::fd_cache::CachedFile;
use crate::files::{self, io_error, lock, write};
use crate::frame::{self, FrameMeta};
use crate::index::{self, ENTRY_BYTES, IndexEntry};
use crate::segment::Segment;
use crate::topic::{Status, TopicShared};
use crate::{AppendAck, Durability, LogError};

pub(crate) enum Command {
    Append(AppendRequest),
    Stop {
        reason: StopReason,
        done: oneshot::Sender<Result<(), LogError>>,
    },
}

pub(crate) struct AppendRequest {
    pub(crate) records: Vec<Bytes>,
    pub(crate) ack: oneshot::Sender<Result<AppendAck, LogError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Write and fsync everything queued, then stop.
    Close,
    /// Fail everything queued with `NoSuchTopic`; the files are about to be removed.
    Delete,
}

/// Where the writer picks up on the active segment, as left by recovery or topic creation.
pub(crate) struct ActiveState {
    pub(crate) idx_path: PathBuf,
    pub(crate) idx_file: File,
    /// The offset the next record gets.
    pub(crate) next_offset: u64,
    /// Bytes of the active segment known to be on disk.
    pub(crate) synced_len: u64,
    /// Entries of the active segment's in-memory index already in its `.idx` file.
    pub(crate) n_index_persisted: usize,
    pub(crate) last_timestamp_ms: i64,
}

/// The writer's state. It moves into a blocking thread for every group and back.
pub(crate) struct Writer {
    shared: Arc<TopicShared>,
    active: Arc<Segment>,
    idx_path: PathBuf,
    idx_file: CachedFile,
    next_offset: u64,
    /// Timestamps never go backwards within a topic, so a segment's newest record is its last.
    last_timestamp_ms: i64,
    synced_len: u64,
    /// Length of the active segment's file: the records plus a zero-filled tail kept ahead of
    /// them (see `ensure_allocated`).
    file_len: u64,
    n_index_persisted: usize,
    /// Entries of the `.idx` file known to be on disk; it is fsynced only when behind.
    n_index_synced: usize,
    last_sync: Instant,
    /// The topic was just created and its directory entries are not known to be on disk yet:
    /// the first data fsync syncs them too (see `TopicInner::create`).
    pub(crate) dirs_unsynced: bool,
    /// Set when truncating after a failed write failed too; retried before the next write.
    truncate_pending: Option<u64>,
    /// Encoded frames of the group being written; kept to reuse its allocation.
    buf: Vec<u8>,
    /// Metric handles, registered once: building a keyed handle per group costs an allocation
    /// and a registry look-up on the hot path.
    fsync_seconds: metrics::Histogram,
    size_bytes_gauge: metrics::Gauge,
}

/// Frames encoded into `Writer::buf` but not yet written.
struct Pending {
    acks: Vec<AppendAck>,
    index: Vec<IndexEntry>,
    last_entry: Option<IndexEntry>,
    next_offset: u64,
}

/// A group stops draining the queue once it holds this many encoded bytes. One write of this
/// size costs a few ms; more would only delay the acks of the first appends in the group.
const MAX_GROUP_BYTES: usize = 4 * 1024 * 1024;

/// The most the active segment's file is zero-filled ahead of the records. One commit per this
/// many bytes pays for flushing the zeros and the inode; the ones in between flush data alone.
// Measured for tail latency at 15k publishes/s on the 2-core box (p99, two runs each): 64 KiB
// 3.9 and 7.1 ms (more commits pay the inode), 1 MiB 2.8 and 4.5 ms, 8 MiB 7.7 and 20.6 ms
// (each zero flush stalls the commit that carries it for longer).
const PREALLOC_BYTES: u64 = 1024 * 1024;

/// The least a segment is zero-filled ahead, when it is new: the stretch grows with what the
/// segment holds (see `ensure_allocated`), so a topic that gets a few records costs a few KiB of
/// disk, not a megabyte, and one that gets none costs nothing.
const MIN_PREALLOC_BYTES: u64 = 4 * 1024;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The most of its group buffer an idle topic keeps (see `Queue::went_idle`).
const IDLE_BUFFER_BYTES: usize = 4 * 1024;

/// A topic's writer and its queue of commands: what a pool thread works on (`writer_pool.rs`).
pub(crate) struct Queue {
    writer: Writer,
    commands: mpsc::Receiver<Command>,
    /// A command taken while draining a group that does not belong in it.
    deferred: Option<Command>,
}

impl Queue {
    pub(crate) fn new(writer: Writer, commands: mpsc::Receiver<Command>) -> Queue {
        Queue {
            writer,
            commands,
            deferred: None,
        }
    }

    /// Whether a turn now would find something to do.
    pub(crate) fn has_work(&self) -> bool {
        self.deferred.is_some() || !self.commands.is_empty() || self.commands.is_closed()
    }

    /// When the background fsync of `Durability::Interval` is due, if there is anything to sync.
    pub(crate) fn sync_deadline(&self) -> Option<Instant> {
        self.writer.sync_deadline()
    }

    /// The queue ran empty: give back the group buffer if it grew. Kept while the topic is busy
    /// (one allocation per group would be waste), but across thousands of idle topics each
    /// holding its largest group ever it would add up to gigabytes.
    pub(crate) fn went_idle(&mut self) {
        if self.writer.buf.capacity() > IDLE_BUFFER_BYTES {
            self.writer.buf = Vec::new();
        }
    }

    /// One group commit, or a due background fsync, or the stop. Blocks in `write` and `fsync`.
    /// Returns true once the writer is finished: stopped, or every `Topic` handle is gone.
    pub(crate) fn turn(&mut self) -> bool {
        // The due background fsync goes first, so a steady stream of appends cannot starve it.
        if self
            .writer
            .sync_deadline()
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            self.writer.background_sync();
        }
        let command = match self.deferred.take() {
            Some(command) => command,
            None => match self.commands.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => {
                    // Every handle is gone: flush what the policy left unsynced and stop.
                    if let Err(error) = self.writer.final_sync() {
                        tracing::error!(message = "Failed to fsync a topic on shutdown.", %error);
                    }
                    return true;
                }
            },
        };
        match command {
            Command::Append(first) => {
                self.append_group(first);
                false
            }
            Command::Stop { reason, done } => {
                self.commands.close();
                let res = match reason {
                    StopReason::Close => self.writer.close_sync(),
                    StopReason::Delete => Ok(()),
                };
                // Appends that raced with the stop are refused rather than written.
                while let Ok(command) = self.commands.try_recv() {
                    let error = match reason {
                        StopReason::Close => LogError::Closed,
                        StopReason::Delete => {
                            LogError::NoSuchTopic(self.writer.shared.name.clone())
                        }
                    };
                    fail_command(command, error);
                }
                let _ = done.send(res);
                true
            }
        }
    }

    /// Drains what is queued behind `first` (up to `MAX_GROUP_BYTES`), writes it as one group
    /// and answers every append in it.
    fn append_group(&mut self, first: AppendRequest) {
        let mut group = vec![first];
        let mut group_bytes = encoded_bytes(&group[0].records);
        while group_bytes < MAX_GROUP_BYTES {
            match self.commands.try_recv() {
                Ok(Command::Append(request)) => {
                    group_bytes += encoded_bytes(&request.records);
                    group.push(request);
                }
                Ok(other) => {
                    self.deferred = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if self.writer.shared.watermark.borrow().status == Status::Deleted {
            // Queued before the delete's stop command: pending, so it fails too.
            for request in group {
                let error = LogError::NoSuchTopic(self.writer.shared.name.clone());
                let _ = request.ack.send(Err(error));
            }
            return;
        }
        let batches: Vec<Vec<Bytes>> = group
            .iter_mut()
            .map(|request| std::mem::take(&mut request.records))
            .collect();
        let results = self.writer.write_group(&batches);
        // Publish before acking, so a producer can read its own record once acked.
        self.writer.publish();
        for (request, res) in group.into_iter().zip(results) {
            let _ = request.ack.send(res);
        }
    }
}

impl ActiveState {
    /// The state of a brand-new, empty segment at offset 0.
    pub(crate) fn empty(idx_path: PathBuf, idx_file: File) -> ActiveState {
        ActiveState {
            idx_path,
            idx_file,
            next_offset: 0,
            synced_len: 0,
            n_index_persisted: 0,
            last_timestamp_ms: i64::MIN,
        }
    }
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<TopicShared>,
        active: Arc<Segment>,
        active_state: ActiveState,
    ) -> Writer {
        let size_bytes_gauge = shared.size_gauge();
        Writer {
            shared,
            active: Arc::clone(&active),
            idx_file: CachedFile::new(active_state.idx_path.clone(), active_state.idx_file),
            idx_path: active_state.idx_path,
            next_offset: active_state.next_offset,
            last_timestamp_ms: active_state.last_timestamp_ms,
            synced_len: active_state.synced_len,
            // Recovery and segment creation leave the file exactly as long as its records.
            file_len: active.len(),
            n_index_persisted: active_state.n_index_persisted,
            n_index_synced: active_state.n_index_persisted,
            last_sync: Instant::now(),
            dirs_unsynced: false,
            truncate_pending: None,
            buf: Vec::new(),
            fsync_seconds: metrics::histogram!("trellis_log_fsync_seconds"),
            size_bytes_gauge,
        }
    }

    /// Writes a group of append batches; one result per batch, in order.
    fn write_group(&mut self, batches: &[Vec<Bytes>]) -> Vec<Result<AppendAck, LogError>> {
        let config = self.shared.config();
        let sync_group = config.durability == Durability::Always;
        let mut results = Vec::with_capacity(batches.len());
        if let Err(error) = self.finish_pending_truncate() {
            results.extend(batches.iter().map(|_| Err(error.duplicate())));
            return results;
        }
        let timestamp_ms = now_ms().max(self.last_timestamp_ms);
        let mut pending = self.start_pending();
        for (batch_idx, batch) in batches.iter().enumerate() {
            let batch_bytes: u64 = batch
                .iter()
                .map(|record| frame::frame_bytes(record.len()) as u64)
                .sum();
            let segment_len = self.active.len() + self.buf.len() as u64;
            if segment_len > 0 && segment_len + batch_bytes > config.segment_bytes {
                // The active segment is full. A batch never spans segments (recovery only checks
                // batch completeness in the active one), so make what it holds durable, seal it
                // and start the next before encoding this batch.
                let res = self
                    .commit(pending, timestamp_ms, true, &mut results)
                    .and_then(|()| {
                        let started = Instant::now();
                        let rolled = self.roll();
                        metrics::histogram!("trellis_log_roll_seconds")
                            .record(started.elapsed().as_secs_f64());
                        rolled
                    });
                if let Err(error) = res {
                    results.extend(batches[batch_idx..].iter().map(|_| Err(error.duplicate())));
                    return results;
                }
                pending = self.start_pending();
            }
            self.encode_batch(&mut pending, batch, timestamp_ms);
        }
        // The commit reports its error through `results`.
        let _ = self.commit(pending, timestamp_ms, sync_group, &mut results);
        results
    }

    fn start_pending(&self) -> Pending {
        Pending {
            acks: Vec::new(),
            index: Vec::new(),
            last_entry: self.active.last_index_entry(),
            next_offset: self.next_offset,
        }
    }

    fn encode_batch(&mut self, pending: &mut Pending, batch: &[Bytes], timestamp_ms: i64) {
        let first_offset = pending.next_offset;
        let mut position = self.active.len() + self.buf.len() as u64;
        for (record_idx, record) in batch.iter().enumerate() {
            if index::wants_entry(pending.last_entry.as_ref(), position) {
                let entry = IndexEntry {
                    offset: pending.next_offset,
                    position,
                };
                pending.index.push(entry);
                pending.last_entry = Some(entry);
            }
            let meta = FrameMeta {
                offset: pending.next_offset,
                timestamp_ms,
                end_of_batch: record_idx + 1 == batch.len(),
            };
            frame::encode(&mut self.buf, meta, record);
            position += frame::frame_bytes(record.len()) as u64;
            pending.next_offset += 1;
        }
        pending.acks.push(AppendAck {
            first_offset,
            n_records: batch.len() as u64,
        });
    }

    /// Writes the encoded frames to the active segment and, if `sync`, fsyncs it. On success the
    /// records become part of the segment; either way every batch of `pending` gets its result.
    fn commit(
        &mut self,
        pending: Pending,
        timestamp_ms: i64,
        sync: bool,
        results: &mut Vec<Result<AppendAck, LogError>>,
    ) -> Result<(), LogError> {
        let res = self.write_and_sync(sync);
        let n_written = self.buf.len() as u64;
        self.buf.clear();
        if let Err(error) = res {
            results.extend(pending.acks.iter().map(|_| Err(error.duplicate())));
            return Err(error);
        }
        let new_len = self.active.len() + n_written;
        self.active.extend_index(&pending.index);
        if !pending.acks.is_empty() {
            self.active.note_timestamp(timestamp_ms);
            self.last_timestamp_ms = timestamp_ms;
        }
        self.active.set_len(new_len);
        self.shared
            .size_bytes
            .fetch_add(n_written, Ordering::AcqRel);
        self.next_offset = pending.next_offset;
        if sync {
            self.synced_len = new_len;
            self.persist_index();
        }
        results.extend(pending.acks.into_iter().map(Ok));
        Ok(())
    }

    fn write_and_sync(&mut self, sync: bool) -> Result<(), LogError> {
        let position = self.active.len();
        if !self.buf.is_empty()
            && let Err(source) = self
                .ensure_allocated(position + self.buf.len() as u64)
                .and_then(|()| self.write_at(position))
        {
            self.truncate_to(position);
            return Err(io_error(&self.active.path, source));
        }
        let end = position + self.buf.len() as u64;
        if sync
            && end > self.synced_len
            && let Err(source) = self.sync_active()
        {
            self.truncate_to(position);
            return Err(io_error(&self.active.path, source));
        }
        Ok(())
    }

    /// Keeps a zero-filled stretch of the file ahead of the records.
    ///
    /// An fdatasync after an append that grows the file must also write the inode (its size), a
    /// second I/O that nearly doubled each group commit's latency. Overwriting bytes that are
    /// already allocated and on disk needs only the data I/O, so the file is grown in
    /// steps of zeros and only the commit that grows it pays for the inode. A step is as large
    /// as what the segment holds, between `MIN_PREALLOC_BYTES` and `PREALLOC_BYTES`: a busy
    /// topic reaches full steps after a megabyte, while thousands of quiet topics cost little
    /// disk. Recovery reads an all-zero tail as the end of the records, not as damage.
    fn ensure_allocated(&mut self, end: u64) -> std::io::Result<()> {
        if end <= self.file_len {
            return Ok(());
        }
        let new_len = end + end.clamp(MIN_PREALLOC_BYTES, PREALLOC_BYTES);
        let file = self.active.file.get()?;
        let mut position = self.file_len;
        while position < new_len {
            let n_bytes = ZEROS.len().min((new_len - position) as usize);
            file.write_all_at(&ZEROS[..n_bytes], position)?;
            position += n_bytes as u64;
        }
        self.file_len = new_len;
        Ok(())
    }

    /// Cuts the zero-filled tail off the active segment, so sealed segments and cleanly closed
    /// ones end exactly at their last record. With `sync`, makes the cut durable: a sealed
    /// segment must end at its records, while an active one whose cut is lost in a crash only
    /// gets its zero tail back, which recovery reads as preallocated space. Closing thousands
    /// of topics therefore costs no fsync for the cut.
    fn trim_active(&mut self, sync: bool) -> Result<(), LogError> {
        let len = self.active.len();
        if self.file_len == len {
            return Ok(());
        }
        self.active
            .file
            .get()
            .and_then(|file| {
                file.set_len(len)?;
                if sync { file.sync_data() } else { Ok(()) }
            })
            .map_err(|source| io_error(&self.active.path, source))?;
        self.file_len = len;
        Ok(())
    }

    fn write_at(&self, position: u64) -> std::io::Result<()> {
        self.active.file.get()?.write_all_at(&self.buf, position)?;
        #[cfg(test)]
        if self.shared.fail_next_write.swap(false, Ordering::AcqRel) {
            // Fail after the bytes are in the file, so the truncation is exercised too.
            return Err(std::io::Error::other("injected write failure"));
        }
        Ok(())
    }

    fn sync_active(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let res = self.active.file.get().and_then(|file| file.sync_data());
        self.fsync_seconds.record(started.elapsed().as_secs_f64());
        self.shared.n_data_syncs.fetch_add(1, Ordering::AcqRel);
        self.last_sync = Instant::now();
        res?;
        if self.dirs_unsynced {
            self.sync_dirs()?;
        }
        Ok(())
    }

    /// fsyncs the topic's directory and the log's, so the topic and its first segment survive
    /// a power cut. Done by the first commit rather than at creation: on the writer threads,
    /// where concurrent creations share journal commits, instead of one request at a time.
    fn sync_dirs(&mut self) -> std::io::Result<()> {
        let dir = lock(&self.shared.dir).clone();
        File::open(&dir)?.sync_all()?;
        if let Some(root) = dir.parent() {
            File::open(root)?.sync_all()?;
        }
        self.dirs_unsynced = false;
        Ok(())
    }

    /// Cuts the active segment back to `len` after a failed write or fsync, so no unacknowledged
    /// bytes stay in the file. If that fails too, every later write fails until it succeeds.
    fn truncate_to(&mut self, len: u64) {
        match self.active.file.get().and_then(|file| file.set_len(len)) {
            Ok(()) => self.file_len = len,
            Err(error) => {
                tracing::error!(
                    message = "Failed to truncate a segment after a failed write; appends fail until it succeeds.",
                    %error,
                    path = %self.active.path.display(),
                );
                self.truncate_pending = Some(len);
            }
        }
    }

    fn finish_pending_truncate(&mut self) -> Result<(), LogError> {
        let Some(len) = self.truncate_pending else {
            return Ok(());
        };
        self.active
            .file
            .get()
            .and_then(|file| file.set_len(len))
            .map_err(|source| io_error(&self.active.path, source))?;
        self.file_len = len;
        self.truncate_pending = None;
        Ok(())
    }

    /// Writes index entries of the active segment that the last fsync covers to its `.idx` file.
    /// Failures only cost recovery time, so they are logged and retried at the next fsync.
    fn persist_index(&mut self) {
        let entries = self
            .active
            .index_entries_before(self.n_index_persisted, self.synced_len);
        if entries.is_empty() {
            return;
        }
        let mut bytes = Vec::new();
        index::encode(&entries, &mut bytes);
        let position = (self.n_index_persisted * ENTRY_BYTES) as u64;
        match self
            .idx_file
            .get()
            .and_then(|file| file.write_all_at(&bytes, position))
        {
            Ok(()) => self.n_index_persisted += entries.len(),
            Err(error) => tracing::warn!(
                message = "Failed to write a segment index; recovery will rebuild it.",
                %error,
                path = %self.idx_path.display(),
            ),
        }
    }

    /// Seals the active segment (its data is already fsynced) and starts the next one.
    fn roll(&mut self) -> Result<(), LogError> {
        debug_assert_eq!(self.synced_len, self.active.len());
        self.trim_active(true)?;
        self.persist_index();
        if let Err(error) = self.sync_index() {
            tracing::warn!(
                message = "Failed to fsync a segment index; recovery will rebuild it.",
                %error,
                path = %self.idx_path.display(),
            );
        }
        let base_offset = self.next_offset;
        let dir = lock(&self.shared.dir);
        let new_files = files::create_segment(&dir, base_offset)?;
        let segment = Arc::new(Segment::new(
            base_offset,
            new_files.log_path,
            new_files.log_file,
            0,
            Vec::new(),
            None,
        ));
        write(&self.shared.segments).push(Arc::clone(&segment));
        drop(dir);
        self.active = segment;
        self.idx_path = new_files.idx_path;
        self.idx_file = CachedFile::new(self.idx_path.clone(), new_files.idx_file);
        self.synced_len = 0;
        self.file_len = 0;
        self.n_index_persisted = 0;
        self.n_index_synced = 0;
        Ok(())
    }

    /// When the background fsync of `Durability::Interval` is due, if there is anything to sync.
    pub(crate) fn sync_deadline(&self) -> Option<Instant> {
        match self.shared.config().durability {
            Durability::Interval(interval) if self.active.len() > self.synced_len => {
                Some(self.last_sync + interval)
            }
            Durability::Always | Durability::Interval(_) | Durability::Never => None,
        }
    }

    fn background_sync(&mut self) {
        let len = self.active.len();
        if len <= self.synced_len {
            return;
        }
        match self.sync_active() {
            Ok(()) => {
                self.synced_len = len;
                self.persist_index();
            }
            Err(error) => tracing::error!(
                message = "Background fsync failed; retrying at the next interval.",
                %error,
                path = %self.active.path.display(),
            ),
        }
    }

    /// `final_sync`, then trims the zero-filled tail: a cleanly closed log ends at its records.
    fn close_sync(&mut self) -> Result<(), LogError> {
        self.final_sync()?;
        self.trim_active(false)
    }

    /// Makes everything written durable, including the active segment's index. It leaves the
    /// zero-filled tail: when the handles were dropped without `close`, another `Log` may already
    /// be recovering this topic, and recovery reads a zero tail as the end of the records.
    fn final_sync(&mut self) -> Result<(), LogError> {
        let len = self.active.len();
        if len > self.synced_len {
            self.sync_active()
                .map_err(|source| io_error(&self.active.path, source))?;
            self.synced_len = len;
        }
        self.persist_index();
        self.sync_index()
            .map_err(|source| io_error(&self.idx_path, source))
    }

    /// fsyncs the `.idx` file if it holds entries written since its last fsync.
    fn sync_index(&mut self) -> std::io::Result<()> {
        if self.n_index_synced == self.n_index_persisted {
            return Ok(());
        }
        self.idx_file.get()?.sync_data()?;
        self.n_index_synced = self.n_index_persisted;
        Ok(())
    }

    /// Lets readers see everything written so far. Runs on the async side after the ack point.
    fn publish(&self) {
        let next_offset = self.next_offset;
        self.shared.watermark.send_if_modified(|watermark| {
            let moved = watermark.next_offset < next_offset;
            watermark.next_offset = watermark.next_offset.max(next_offset);
            moved
        });
        self.size_bytes_gauge
            .set(self.shared.size_bytes.load(Ordering::Acquire) as f64);
    }
}

fn fail_command(command: Command, error: LogError) {
    match command {
        Command::Append(request) => {
            let _ = request.ack.send(Err(error));
        }
        Command::Stop { done, .. } => {
            let _ = done.send(Ok(()));
        }
    }
}

fn encoded_bytes(records: &[Bytes]) -> usize {
    records
        .iter()
        .map(|record| frame::frame_bytes(record.len()))
        .sum()
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
