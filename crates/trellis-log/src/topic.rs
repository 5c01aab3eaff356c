//! A topic's shared state and its read side: the segment list, the high watermark, reads
//! through the sparse index, `wait_for`, and the handle that feeds the topic's writer.
//!
//! `TopicShared` is what the writer and every reader share. `TopicInner` adds the sending side
//! of the writer's queue, served by the log's writer pool; it is what `Topic` handles and the
//! catalog hold, so dropping the last of them closes the queue and lets the writer finish.
//! Nothing here writes segment bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

#[cfg(test)]
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::files::{self, io_error, lock, read};
use crate::frame::HEADER_BYTES;
use crate::index::INDEX_INTERVAL_BYTES;
use crate::segment::{Hole, Segment, Step};
use crate::writer::{ActiveState, AppendRequest, Command, Queue, StopReason, Writer};
use crate::writer_pool::{TopicWriter, WriterPool};
use crate::{
    AppendAck, DamagedRange, LogError, MAX_RECORD_BYTES, ReadPage, Record, TopicConfig, TopicStats,
    recovery, resync,
};

pub(crate) struct TopicShared {
    pub(crate) name: String,
    // std Mutex: held only around path-based file-system calls (create, rename, remove), never
    // across an await. Deleting a topic renames its directory, and this is where the new path goes.
    pub(crate) dir: Mutex<PathBuf>,
    // std Mutex: held only to clone or replace the config.
    config: Mutex<TopicConfig>,
    // std RwLock: readers hold it only to pick a segment; the writer pushes on roll and retention
    // removes from the front. Never held across I/O on segment data or an await.
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    /// What readers may see. Moved only by the writer, after the ack point of the policy.
    pub(crate) watermark: watch::Sender<Watermark>,
    /// Total bytes of every segment.
    pub(crate) size_bytes: AtomicU64,
    /// Data-file fsyncs so far; lets tests check that appends share fsyncs.
    pub(crate) n_data_syncs: AtomicU64,
    /// Makes the next segment write fail after writing, to test error handling.
    #[cfg(test)]
    pub(crate) fail_next_write: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermark {
    /// Every record below this offset is readable.
    pub(crate) next_offset: u64,
    pub(crate) status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Open,
    Closed,
    Deleted,
}

pub(crate) struct TopicInner {
    pub(crate) shared: Arc<TopicShared>,
    // std Mutex: never held across an await; `commands` clones the sender out before sending.
    writer: Mutex<WriterSlot>,
    /// The threads that write; `None` only between recovery and `with_pool`.
    pool: Option<Arc<WriterPool>>,
}

enum WriterSlot {
    /// Not started yet: the writer joins the pool on the first append, so that a topic nobody
    /// appends to costs no queue and no thread wake-ups.
    Idle(Box<Writer>),
    Running {
        commands: mpsc::Sender<Command>,
        writer: Arc<TopicWriter>,
    },
    Stopped,
}

/// The most a read takes from a segment file at once (see `TopicShared::read`).
const MAX_READ_CHUNK_BYTES: usize = 64 * 1024;

/// How many appends may queue for one topic's writer before `append` waits. A full group
/// commit drains at most 4 MiB anyway, so a deeper queue would only add latency.
const COMMAND_CHANNEL_CAPACITY: usize = 1024;

impl TopicShared {
    pub(crate) fn config(&self) -> TopicConfig {
        lock(&self.config).clone()
    }

    pub(crate) fn set_config(&self, config: TopicConfig) {
        *lock(&self.config) = config;
    }

    pub(crate) fn set_status(&self, status: Status) {
        self.watermark
            .send_modify(|watermark| watermark.status = status);
    }

    /// The error for an operation on a topic that is no longer open.
    pub(crate) fn gone_error(&self) -> LogError {
        match self.watermark.borrow().status {
            Status::Deleted => LogError::NoSuchTopic(self.name.clone()),
            Status::Open | Status::Closed => LogError::Closed,
        }
    }

    pub(crate) fn update_size_gauge(&self) {
        let size_bytes = self.size_bytes.load(Ordering::Acquire);
        self.size_gauge().set(size_bytes as f64);
    }

    pub(crate) fn size_gauge(&self) -> metrics::Gauge {
        metrics::gauge!("trellis_log_size_bytes", "topic" => self.name.clone())
    }

    pub(crate) fn stats(&self) -> TopicStats {
        let next_offset = self.watermark.borrow().next_offset;
        let segments = read(&self.segments);
        let first_offset = segments
            .first()
            .map_or(next_offset, |segment| segment.base_offset);
        let damaged = segments
            .iter()
            .flat_map(|segment| {
                segment
                    .holes()
                    .into_iter()
                    .map(|hole| damaged_range(segment, &hole, hole.first))
            })
            .collect();
        TopicStats {
            damaged,
            first_offset: first_offset.min(next_offset),
            next_offset,
            size_bytes: self.size_bytes.load(Ordering::Acquire),
            n_segments: segments.len(),
        }
    }

    pub(crate) async fn wait_for(&self, offset: u64) -> Result<(), LogError> {
        let mut watermarks = self.watermark.subscribe();
        let res = watermarks
            .wait_for(|watermark| {
                watermark.next_offset > offset || watermark.status != Status::Open
            })
            .await
            .map(|watermark| *watermark);
        match res {
            Ok(watermark) if watermark.next_offset > offset => Ok(()),
            // The sender lives as long as `self`, so an error cannot happen; treat it as gone.
            Ok(_) | Err(_) => Err(self.gone_error()),
        }
    }

    /// Records from `from` on, stopping short at damaged records and saying where they are.
    pub(crate) fn read_page(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadPage, LogError> {
        let watermark = *self.watermark.borrow();
        if watermark.status == Status::Deleted {
            return Err(LogError::NoSuchTopic(self.name.clone()));
        }
        let high_watermark = watermark.next_offset;
        let mut page = ReadPage::default();
        if max_records == 0 || from >= high_watermark {
            return Ok(page);
        }
        // Payloads are slices of these chunks (no copy), so a record kept alive keeps its whole
        // chunk: a reader holding a few records of many reads (a subscription's deliveries in
        // flight) would pin a chunk each. Small chunks bound that, and a larger read just takes
        // more of them; a frame bigger than a chunk gets a chunk of its own size.
        let chunk_bytes = max_bytes
            .saturating_add(INDEX_INTERVAL_BYTES as usize + HEADER_BYTES)
            .clamp(16 * 1024, MAX_READ_CHUNK_BYTES);
        let records = &mut page.records;
        let mut n_payload_bytes = 0usize;
        let mut next = from;
        let mut segment = self.segment_for(from)?;
        'segments: loop {
            if let Some(hole) = segment.hole_at(next) {
                page.damaged = Some(damaged_range(&segment, &hole, next));
                break;
            }
            let start = segment.resume_point(next);
            let mut expected = start.offset;
            let mut cursor = segment.cursor(start.position, chunk_bytes);
            loop {
                let step = cursor
                    .next_step()
                    .map_err(|source| io_error(&segment.path, source))?;
                let damaged_at = match step {
                    Step::Frame { meta, payload, .. } if meta.offset == expected => {
                        expected += 1;
                        if meta.offset < next {
                            continue;
                        }
                        if next >= high_watermark {
                            break 'segments;
                        }
                        if !records.is_empty()
                            && n_payload_bytes.saturating_add(payload.len()) > max_bytes
                        {
                            break 'segments;
                        }
                        n_payload_bytes = n_payload_bytes.saturating_add(payload.len());
                        records.push(Record {
                            offset: meta.offset,
                            timestamp_ms: meta.timestamp_ms,
                            payload,
                        });
                        next += 1;
                        if records.len() >= max_records {
                            break 'segments;
                        }
                        continue;
                    }
                    Step::End => break,
                    Step::Frame { position, .. }
                    | Step::Torn { position }
                    | Step::Corrupt { position, .. } => position,
                };
                // Record `expected` (at most `next`) should start at `damaged_at` and does not.
                let hole = self.hole_after(&segment, damaged_at, expected, high_watermark)?;
                if next < hole.next {
                    page.damaged = Some(damaged_range(&segment, &hole, next));
                    break 'segments;
                }
                expected = hole.next;
                cursor = segment.cursor(hole.end, chunk_bytes);
            }
            if next >= high_watermark {
                break;
            }
            // Records cut from a sealed segment's end are a hole that starts where its bytes end.
            if let Some(hole) = segment.hole_at(next) {
                page.damaged = Some(damaged_range(&segment, &hole, next));
                break;
            }
            // The segment ended below the high watermark: the rest is in the next segment.
            match self.segment_for(next) {
                Ok(next_segment) if next_segment.base_offset > segment.base_offset => {
                    segment = next_segment
                }
                // No later segment holds `next` although it is below the watermark: a hole.
                Ok(_) => return Err(self.corrupt(&segment, segment.len())),
                Err(error) if records.is_empty() => return Err(error),
                Err(_) => break,
            }
        }
        Ok(page)
    }

    /// The hole that starts at `damaged_at`, where record `expected` should be: known already,
    /// or found now by resynchronising up to the next index entry that checks out (or the end of
    /// the segment's data) and remembered. Damage at the end of the active segment, with nothing
    /// intact after it yet, is answered up to the high watermark but not remembered: records
    /// appended later are found after it by the next read.
    fn hole_after(
        &self,
        segment: &Segment,
        damaged_at: u64,
        expected: u64,
        high_watermark: u64,
    ) -> Result<Hole, LogError> {
        if let Some(hole) = segment.hole_starting_at(damaged_at) {
            return Ok(hole);
        }
        let io = |source| io_error(&segment.path, source);
        let end = segment.len();
        let mut after = damaged_at;
        let anchor = loop {
            match segment.index_entry_after(after) {
                Some(entry) if entry.position < end => {
                    if recovery::frame_at_is(&segment.file, entry, end).map_err(io)? {
                        break Some(entry);
                    }
                    after = entry.position;
                }
                Some(_) | None => break None,
            }
        };
        let end_offset = self.base_after(segment);
        let bound = resync::Bound {
            end: anchor.map_or(end, |anchor| anchor.position),
            anchor,
            end_offset,
        };
        let reason = describe_damage(&segment.file, damaged_at, end).map_err(io)?;
        let resumed = resync::find(&segment.file, damaged_at, expected, &bound).map_err(io)?;
        let (next, hole_end, remember) = match (resumed, end_offset) {
            (Some(resumed), _) => (resumed.offset, resumed.position, true),
            (None, Some(next_base)) => (next_base, end, true),
            (None, None) => (high_watermark.max(expected + 1), end, false),
        };
        let hole = Hole {
            first: expected,
            next: next.max(expected + 1),
            start: damaged_at,
            end: hole_end,
            reason,
        };
        if remember && segment.add_hole(hole.clone()) {
            recovery::report_hole(&self.name, segment.base_offset, &hole);
        }
        Ok(hole)
    }

    /// The base offset of the segment after `segment`, if it is sealed.
    fn base_after(&self, segment: &Segment) -> Option<u64> {
        let segments = read(&self.segments);
        let at = segments.partition_point(|other| other.base_offset <= segment.base_offset);
        segments.get(at).map(|other| other.base_offset)
    }

    /// The segment that holds `offset`, or `OffsetTruncated` if retention removed it.
    fn segment_for(&self, offset: u64) -> Result<Arc<Segment>, LogError> {
        let segments = read(&self.segments);
        let n_at_or_before = segments.partition_point(|segment| segment.base_offset <= offset);
        match n_at_or_before
            .checked_sub(1)
            .and_then(|idx| segments.get(idx))
        {
            Some(segment) => Ok(Arc::clone(segment)),
            None => {
                let first_offset = segments
                    .first()
                    .map_or(offset, |segment| segment.base_offset);
                Err(LogError::OffsetTruncated {
                    offset,
                    first_offset,
                })
            }
        }
    }

    fn corrupt(&self, segment: &Segment, position: u64) -> LogError {
        LogError::Corrupt {
            topic: self.name.clone(),
            segment: segment.base_offset,
            position,
        }
    }
}

/// What a reader is told about a hole, from `from` (inside it) on.
fn damaged_range(segment: &Segment, hole: &Hole, from: u64) -> DamagedRange {
    DamagedRange {
        segment: segment.base_offset,
        first_offset: from.max(hole.first),
        next_offset: hole.next,
        reason: hole.reason.clone(),
    }
}

/// Why the bytes at `position` are not the frame a reader expected, in words.
fn describe_damage<S: crate::segment::ReadAt + ?Sized>(
    file: &S,
    position: u64,
    end: u64,
) -> std::io::Result<String> {
    let mut cursor = crate::segment::FrameCursor::new(file, position, end, 64 * 1024);
    Ok(match cursor.next_step()? {
        Step::Corrupt { damage, .. } => format!("{} at byte {position}", damage.describe()),
        Step::Torn { .. } => format!("torn frame at byte {position}"),
        Step::Frame { meta, .. } => {
            format!("unexpected offset {} at byte {position}", meta.offset)
        }
        Step::End => format!("missing records at byte {position}"),
    })
}

impl TopicInner {
    /// Assembles a topic from its recovered (or freshly created) segments: the sealed ones in
    /// offset order, then the active one, which `state` describes.
    pub(crate) fn new(
        name: &str,
        dir: &Path,
        config: TopicConfig,
        sealed: Vec<Arc<Segment>>,
        active: Arc<Segment>,
        state: ActiveState,
    ) -> TopicInner {
        let mut segments = sealed;
        segments.push(Arc::clone(&active));
        let size_bytes = segments.iter().map(|segment| segment.len()).sum();
        let watermark = Watermark {
            next_offset: state.next_offset,
            status: Status::Open,
        };
        let shared = Arc::new(TopicShared {
            name: name.to_owned(),
            dir: Mutex::new(dir.to_owned()),
            config: Mutex::new(config),
            segments: RwLock::new(segments),
            watermark: watch::Sender::new(watermark),
            size_bytes: AtomicU64::new(size_bytes),
            n_data_syncs: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
        });
        shared.update_size_gauge();
        let writer = Writer::new(Arc::clone(&shared), active, state);
        TopicInner {
            shared,
            writer: Mutex::new(WriterSlot::Idle(Box::new(writer))),
            pool: None,
        }
    }

    /// The writer threads that serve this topic's appends.
    pub(crate) fn with_pool(mut self, pool: &Arc<WriterPool>) -> TopicInner {
        self.pool = Some(Arc::clone(pool));
        self
    }

    /// Creates the directory and first segment of a new, empty topic.
    pub(crate) fn create(
        name: &str,
        dir: &Path,
        config: TopicConfig,
    ) -> Result<TopicInner, LogError> {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LogError::TopicExists(name.to_owned()));
            }
            Err(source) => return Err(io_error(dir, source)),
        }
        // No directory fsync here: the writer's first fsync syncs the directories too, before
        // any append is acknowledged. A topic that never got an append may be lost in a power
        // cut, with nothing in it; its settings, if any, bring it back at the next start.
        let res = files::create_segment_files(dir, 0);
        let new_files = match res {
            Ok(new_files) => new_files,
            Err(error) => {
                // Best effort: leave no half-made topic behind to be recovered at the next open.
                let _ = fs::remove_dir_all(dir);
                return Err(error);
            }
        };
        let segment = Arc::new(Segment::new(
            0,
            new_files.log_path,
            new_files.log_file,
            0,
            Vec::new(),
            None,
        ));
        let state = ActiveState::empty(new_files.idx_path, new_files.idx_file);
        let topic = TopicInner::new(name, dir, config, Vec::new(), segment, state);
        if let WriterSlot::Idle(writer) = &mut *lock(&topic.writer) {
            writer.dirs_unsynced = true;
        }
        Ok(topic)
    }

    pub(crate) async fn append(&self, records: Vec<Bytes>) -> Result<AppendAck, LogError> {
        self.submit(records).await?.await
    }

    /// Queues `records` for the writer and returns once they have their place in the queue
    /// (so a later `submit` is stored after them); the returned future resolves when they are
    /// durable.
    pub(crate) async fn submit(&self, records: Vec<Bytes>) -> Result<PendingAppend, LogError> {
        if records.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        if let Some(record) = records
            .iter()
            .find(|record| record.len() > MAX_RECORD_BYTES)
        {
            return Err(LogError::RecordTooLarge {
                size: record.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        if self.shared.watermark.borrow().status != Status::Open {
            return Err(self.shared.gone_error());
        }
        let (commands, writer, pool) = self.commands()?;
        let (ack, acked) = oneshot::channel();
        if commands
            .send(Command::Append(AppendRequest { records, ack }))
            .await
            .is_err()
        {
            return Err(self.shared.gone_error());
        }
        pool.notify(&writer);
        Ok(PendingAppend {
            acked,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Stops the writer: for `Close` after it has written and fsynced everything queued, for
    /// `Delete` failing whatever is still queued with `NoSuchTopic`.
    pub(crate) async fn stop(&self, reason: StopReason) -> Result<(), LogError> {
        let slot = std::mem::replace(&mut *lock(&self.writer), WriterSlot::Stopped);
        let (WriterSlot::Running { commands, writer }, Some(pool)) = (slot, &self.pool) else {
            // An idle writer never wrote anything, and recovery already fsynced what is on disk.
            return Ok(());
        };
        let (done, stopped) = oneshot::channel();
        if commands.send(Command::Stop { reason, done }).await.is_err() {
            return Ok(());
        }
        pool.notify(&writer);
        stopped.await.unwrap_or(Ok(()))
    }

    /// The writer's queue and the pool that serves it, joining the pool on the first append.
    #[allow(clippy::type_complexity)]
    fn commands(
        &self,
    ) -> Result<(mpsc::Sender<Command>, Arc<TopicWriter>, &Arc<WriterPool>), LogError> {
        let Some(pool) = &self.pool else {
            return Err(LogError::Closed);
        };
        let mut slot = lock(&self.writer);
        match &*slot {
            WriterSlot::Running { commands, writer } => {
                return Ok((commands.clone(), Arc::clone(writer), pool));
            }
            WriterSlot::Stopped => return Err(self.shared.gone_error()),
            WriterSlot::Idle(_) => {}
        }
        pool.ensure_started().map_err(|source| LogError::Io {
            path: lock(&self.shared.dir).clone(),
            source,
        })?;
        let WriterSlot::Idle(idle) = std::mem::replace(&mut *slot, WriterSlot::Stopped) else {
            return Err(self.shared.gone_error());
        };
        let (commands, queued) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let writer = pool.register(Queue::new(*idle, queued));
        *slot = WriterSlot::Running {
            commands: commands.clone(),
            writer: Arc::clone(&writer),
        };
        Ok((commands, writer, pool))
    }
}

impl Drop for TopicInner {
    fn drop(&mut self) {
        let slot = std::mem::replace(&mut *lock(&self.writer), WriterSlot::Stopped);
        if let (WriterSlot::Running { commands, writer }, Some(pool)) = (slot, &self.pool) {
            // The queue closes with its last sender; the writer's last turn then syncs what
            // the policy left unsynced.
            drop(commands);
            pool.notify(&writer);
        }
    }
}

/// An append the writer has queued: resolves once its records are durable (or failed).
pub struct PendingAppend {
    acked: oneshot::Receiver<Result<AppendAck, LogError>>,
    shared: Arc<TopicShared>,
}

impl std::future::Future for PendingAppend {
    type Output = Result<AppendAck, LogError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.acked)
            .poll(cx)
            .map(|answer| match answer {
                Ok(res) => res,
                Err(_) => Err(self.shared.gone_error()),
            })
    }
}
