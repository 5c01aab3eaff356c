//! One segment: a `.log` file of frames and its in-memory sparse index, shared by the writer
//! and every reader.
//!
//! Readers use positional reads (`read_at`) on the same open file handle the writer appends to,
//! so any number of them run alongside the writer without a lock on the data path. A segment's
//! `len` only ever counts bytes the writer has finished writing, and nobody reads past it.
//! `FrameCursor` is the one piece of code that walks frames; reads and recovery both use it.
//! This module does not decide what is readable (the topic's high watermark does) or durable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;

use crate::fd_cache::CachedFile;
use crate::files::{read, write};
use crate::frame::{self, Damage, Decoded, FrameMeta, HEADER_BYTES};
use crate::index::{self, IndexEntry};

pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    /// Where the `.log` file was when the segment was opened; for error messages.
    pub(crate) path: PathBuf,
    /// Open only while in the fd cache; reopened on use.
    pub(crate) file: CachedFile,
    /// Bytes the writer has finished writing. Stored before the topic's high watermark moves,
    /// so a reader that saw the watermark also sees the bytes behind it.
    len: AtomicU64,
    /// `NO_TIMESTAMP` until the segment holds a record.
    newest_timestamp_ms: AtomicI64,
    // std RwLock: held only to push or binary-search entries, never across I/O or an await.
    index: RwLock<Vec<IndexEntry>>,
    // std RwLock: held only to look up or insert holes, never across I/O or an await.
    holes: RwLock<Vec<Hole>>,
}

/// Damaged records: offsets `first..next` cannot be read, and their bytes `start..end` are
/// skipped. Found by recovery or by a read that met them; kept in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hole {
    pub(crate) first: u64,
    /// The first offset after the damage (an intact record's, or the next segment's base).
    pub(crate) next: u64,
    pub(crate) start: u64,
    /// Where the record `next` starts (or the end of the segment's data).
    pub(crate) end: u64,
    pub(crate) reason: String,
}

/// Anything frames can be read from by position: a segment file, or bytes in memory (fuzzing).
pub(crate) trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
}

/// Walks the frames of a segment from some position up to `end`, reading in chunks.
pub(crate) struct FrameCursor<'a, S: ReadAt + ?Sized> {
    source: &'a S,
    end: u64,
    /// Bytes `chunk_position..chunk_position + chunk.len()` of the source.
    chunk: Bytes,
    chunk_position: u64,
    /// Bytes of `chunk` already handed out as frames.
    consumed: usize,
    /// How much to read at once when the chunk runs out.
    chunk_bytes: usize,
}

#[derive(Debug)]
pub(crate) enum Step {
    Frame {
        position: u64,
        meta: FrameMeta,
        payload: Bytes,
    },
    /// The frame at `position` runs past the end: a torn write, or garbage whose length points
    /// past the end.
    Torn {
        position: u64,
    },
    Corrupt {
        position: u64,
        damage: Damage,
    },
    End,
}

const NO_TIMESTAMP: i64 = i64::MIN;

impl Segment {
    pub(crate) fn new(
        base_offset: u64,
        path: PathBuf,
        file: File,
        len: u64,
        index: Vec<IndexEntry>,
        newest_timestamp_ms: Option<i64>,
    ) -> Segment {
        Segment {
            base_offset,
            file: CachedFile::new(path.clone(), file),
            path,
            len: AtomicU64::new(len),
            newest_timestamp_ms: AtomicI64::new(newest_timestamp_ms.unwrap_or(NO_TIMESTAMP)),
            index: RwLock::new(index),
            holes: RwLock::new(Vec::new()),
        }
    }

    /// The known hole that holds `offset`, if any.
    pub(crate) fn hole_at(&self, offset: u64) -> Option<Hole> {
        read(&self.holes)
            .iter()
            .find(|hole| hole.first <= offset && offset < hole.next)
            .cloned()
    }

    /// The known hole whose damage starts at `position`, if any.
    pub(crate) fn hole_starting_at(&self, position: u64) -> Option<Hole> {
        read(&self.holes)
            .iter()
            .find(|hole| hole.start == position)
            .cloned()
    }

    /// Records a hole; `false` if it was already known.
    pub(crate) fn add_hole(&self, hole: Hole) -> bool {
        let mut holes = write(&self.holes);
        if holes.iter().any(|known| known.start == hole.start) {
            return false;
        }
        let at = holes.partition_point(|known| known.first < hole.first);
        holes.insert(at, hole);
        true
    }

    pub(crate) fn holes(&self) -> Vec<Hole> {
        read(&self.holes).clone()
    }

    /// Where a read of `offset` starts: the index entry at or before it, or the end of a hole
    /// before it if that is later (a hole found by a read has no index entry after it).
    pub(crate) fn resume_point(&self, offset: u64) -> IndexEntry {
        let floor = self.index_floor(offset);
        read(&self.holes)
            .iter()
            .filter(|hole| hole.next <= offset && hole.end > floor.position)
            .map(|hole| IndexEntry {
                offset: hole.next,
                position: hole.end,
            })
            .max_by_key(|entry| entry.position)
            .unwrap_or(floor)
    }

    /// The first index entry after `position`.
    pub(crate) fn index_entry_after(&self, position: u64) -> Option<IndexEntry> {
        let entries = read(&self.index);
        let at = entries.partition_point(|entry| entry.position <= position);
        entries.get(at).copied()
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn set_len(&self, len: u64) {
        self.len.store(len, Ordering::Release);
    }

    pub(crate) fn newest_timestamp_ms(&self) -> Option<i64> {
        let timestamp_ms = self.newest_timestamp_ms.load(Ordering::Acquire);
        (timestamp_ms != NO_TIMESTAMP).then_some(timestamp_ms)
    }

    pub(crate) fn note_timestamp(&self, timestamp_ms: i64) {
        self.newest_timestamp_ms
            .fetch_max(timestamp_ms, Ordering::AcqRel);
    }

    /// Where to start scanning for `offset`: the last index entry at or before it.
    pub(crate) fn index_floor(&self, offset: u64) -> IndexEntry {
        let start = IndexEntry {
            offset: self.base_offset,
            position: 0,
        };
        index::floor(&read(&self.index), offset).unwrap_or(start)
    }

    pub(crate) fn last_index_entry(&self) -> Option<IndexEntry> {
        read(&self.index).last().copied()
    }

    pub(crate) fn extend_index(&self, entries: &[IndexEntry]) {
        write(&self.index).extend_from_slice(entries);
    }

    /// Entries from the `from`-th on whose frames start before `position`.
    pub(crate) fn index_entries_before(&self, from: usize, position: u64) -> Vec<IndexEntry> {
        let entries = read(&self.index);
        let tail = entries.get(from..).unwrap_or_default();
        let n_before = tail.partition_point(|entry| entry.position < position);
        tail[..n_before].to_vec()
    }

    pub(crate) fn cursor(&self, position: u64, chunk_bytes: usize) -> FrameCursor<'_, CachedFile> {
        FrameCursor::new(&self.file, position, self.len(), chunk_bytes)
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, position)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        let bytes = usize::try_from(position)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?));
        match bytes {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
}

impl<'a, S: ReadAt + ?Sized> FrameCursor<'a, S> {
    pub(crate) fn new(source: &'a S, position: u64, end: u64, chunk_bytes: usize) -> Self {
        FrameCursor {
            source,
            end,
            chunk: Bytes::new(),
            chunk_position: position,
            consumed: 0,
            chunk_bytes,
        }
    }

    /// The position of the next frame.
    pub(crate) fn position(&self) -> u64 {
        self.chunk_position + self.consumed as u64
    }

    pub(crate) fn next_step(&mut self) -> io::Result<Step> {
        loop {
            let position = self.position();
            if position >= self.end {
                return Ok(Step::End);
            }
            let available = self.chunk.get(self.consumed..).unwrap_or_default();
            let frame_bytes = match frame::decode(available) {
                Decoded::Frame { meta, frame_bytes } => {
                    let payload = self
                        .chunk
                        .slice(self.consumed + HEADER_BYTES..self.consumed + frame_bytes);
                    self.consumed += frame_bytes;
                    return Ok(Step::Frame {
                        position,
                        meta,
                        payload,
                    });
                }
                Decoded::Corrupt(damage) => return Ok(Step::Corrupt { position, damage }),
                Decoded::Incomplete { frame_bytes } => frame_bytes,
            };
            let remaining = self.end - position;
            if frame_bytes as u64 > remaining || available.len() >= frame_bytes {
                return Ok(Step::Torn { position });
            }
            // `remaining` bounds the read, so a garbage length can never make it larger than the file.
            let read_bytes = remaining.min(frame_bytes.max(self.chunk_bytes) as u64) as usize;
            let mut buf = vec![0; read_bytes];
            self.source.read_exact_at(&mut buf, position)?;
            self.chunk = Bytes::from(buf);
            self.chunk_position = position;
            self.consumed = 0;
        }
    }
}
