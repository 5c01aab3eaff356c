//! Recovery: rebuilding a topic from its directory when the log opens.
//!
//! Sealed segments were fsynced before the next segment was created, so they are trusted when
//! their index is consistent and only the few bytes after its last entry are checked; otherwise
//! the index is rebuilt by scanning. The active (last) segment may end in a torn write, garbage,
//! or a batch whose last frame never made it; its tail is scanned from the last index entry that
//! checks out, cut back to the end of the last whole batch, and fsynced, with one warning.
//! A sealed segment is never truncated: its records were acknowledged as durable, so damage
//! there is reported and left for reads to fail on with `Corrupt`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::files::{self, SegmentFile, io_error};
use crate::frame::{self, Damage, Decoded, HEADER_BYTES};
use crate::index::{self, ENTRY_BYTES, IndexEntry};
use crate::resync;
use crate::segment::{FrameCursor, Hole, ReadAt, Segment, Step};
use crate::topic::TopicInner;
use crate::writer::ActiveState;
use crate::{LogError, TopicConfig};

/// Opens the topic in `dir`, recovering its segments.
pub(crate) fn recover_topic(
    dir: &Path,
    name: &str,
    config: TopicConfig,
) -> Result<TopicInner, LogError> {
    let bases = list_segments(dir)?;
    let (active_base, sealed_bases) = match bases.split_last() {
        Some((&active_base, sealed_bases)) => (active_base, sealed_bases),
        None => {
            // A topic directory without segments: its creation was cut short.
            files::create_segment(dir, 0)?;
            (0, &[][..])
        }
    };
    let mut sealed = Vec::with_capacity(sealed_bases.len());
    for (segment_idx, &base_offset) in sealed_bases.iter().enumerate() {
        let next_base = sealed_bases
            .get(segment_idx + 1)
            .copied()
            .unwrap_or(active_base);
        sealed.push(Arc::new(load_sealed(name, dir, base_offset, next_base)?));
    }
    let (active, mut state, truncation) = load_active(dir, active_base)?;
    let newest_sealed = sealed
        .iter()
        .filter_map(|segment| segment.newest_timestamp_ms())
        .max();
    state.last_timestamp_ms = state
        .last_timestamp_ms
        .max(newest_sealed.unwrap_or(i64::MIN));
    if let Some(truncation) = truncation {
        tracing::warn!(
            message = "Truncated a torn or corrupt tail: nothing intact follows it.",
            topic = name,
            segment = truncation.segment,
            from_offset = truncation.from_offset,
            dropped_bytes = truncation.dropped_bytes,
            dropped_records = truncation.dropped_records,
            reason = %truncation.reason,
        );
        metrics::counter!("trellis_log_recovered_truncated_bytes_total")
            .increment(truncation.dropped_bytes);
    }
    for segment in sealed.iter().chain(std::iter::once(&active)) {
        for hole in segment.holes() {
            report_hole(name, segment.base_offset, &hole);
        }
    }
    Ok(TopicInner::new(name, dir, config, sealed, active, state))
}

/// One warning and the metric for damaged records that are skipped rather than cut.
pub(crate) fn report_hole(topic: &str, segment: u64, hole: &Hole) {
    tracing::warn!(
        message = "Damaged records are skipped; the intact records around them are kept. Reads answer where the damage is.",
        topic,
        segment,
        first_offset = hole.first,
        next_offset = hole.next,
        damaged_records = hole.next - hole.first,
        position = hole.start,
        damaged_bytes = hole.end - hole.start,
        reason = %hole.reason,
    );
    metrics::counter!("trellis_log_damaged_records_total", "topic" => topic.to_owned())
        .increment(hole.next - hole.first);
}

/// What a scan of frames found.
pub(crate) struct Scan {
    /// Index entries for the intact frames scanned (the start entry itself excluded), including
    /// one at each place intact frames resume after a hole.
    entries: Vec<IndexEntry>,
    /// Damaged records with intact records after them, in offset order.
    holes: Vec<Hole>,
    /// Just after the last intact frame.
    intact: Mark,
    /// Just after the last intact frame that ends a batch: where a whole batch ends.
    batch_end: Mark,
    /// Intact frames after `batch_end`: an incomplete batch.
    n_frames_after_batch_end: u64,
    /// The damage nothing intact follows (a torn or corrupt tail), if the scan did not reach
    /// the end cleanly.
    stop: Option<Stop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    len: u64,
    next_offset: u64,
    newest_timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Torn {
        position: u64,
    },
    Corrupt {
        position: u64,
        damage: Damage,
    },
    WrongOffset {
        position: u64,
        expected: u64,
        found: u64,
    },
}

/// What else bounds a scan besides the end of the bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Known<'a> {
    /// Index entries read from the `.idx` file (checked before use as anchors).
    pub(crate) entries: &'a [IndexEntry],
    /// The offset after the segment's last record, when known (a sealed segment's next base).
    pub(crate) end_offset: Option<u64>,
}

/// A cut of the active segment's tail, reported in one warning per topic.
struct Truncation {
    segment: u64,
    /// The first offset cut.
    from_offset: u64,
    dropped_bytes: u64,
    /// Intact records of an incomplete batch at the end: an append that never finished.
    dropped_records: u64,
    reason: String,
}

/// How much a scan reads at once.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// Walks the frames from `start` (a frame boundary whose record has offset `start.offset`) up to
/// `end`. At a torn or corrupt frame or an unexpected offset it looks for where intact frames
/// resume (`resync`): if they do, the damaged records become a hole and the walk goes on; if
/// not, the scan stops there. `last_entry` is the index entry before `start`, if any, so new
/// entries keep their spacing.
pub(crate) fn scan<S: ReadAt + ?Sized>(
    source: &S,
    start: IndexEntry,
    end: u64,
    last_entry: Option<IndexEntry>,
    known: Known<'_>,
) -> io::Result<Scan> {
    let start_mark = Mark {
        len: start.position,
        next_offset: start.offset,
        newest_timestamp_ms: None,
    };
    let mut scan = Scan {
        entries: Vec::new(),
        holes: Vec::new(),
        intact: start_mark,
        batch_end: start_mark,
        n_frames_after_batch_end: 0,
        stop: None,
    };
    let mut last_entry = last_entry;
    let mut cursor = FrameCursor::new(source, start.position, end, SCAN_CHUNK_BYTES);
    loop {
        let expected = scan.intact.next_offset;
        let stop = match cursor.next_step()? {
            Step::Frame {
                position,
                meta,
                payload,
            } if meta.offset == expected => {
                if index::wants_entry(last_entry.as_ref(), position) {
                    let entry = IndexEntry {
                        offset: meta.offset,
                        position,
                    };
                    scan.entries.push(entry);
                    last_entry = Some(entry);
                }
                let newest = scan
                    .intact
                    .newest_timestamp_ms
                    .map_or(meta.timestamp_ms, |t| t.max(meta.timestamp_ms));
                scan.intact = Mark {
                    len: position + frame::frame_bytes(payload.len()) as u64,
                    next_offset: expected + 1,
                    newest_timestamp_ms: Some(newest),
                };
                if meta.end_of_batch {
                    scan.batch_end = scan.intact;
                    scan.n_frames_after_batch_end = 0;
                } else {
                    scan.n_frames_after_batch_end += 1;
                }
                continue;
            }
            Step::End => break,
            Step::Frame { position, meta, .. } => Stop::WrongOffset {
                position,
                expected,
                found: meta.offset,
            },
            Step::Torn { position } => Stop::Torn { position },
            Step::Corrupt { position, damage } => Stop::Corrupt { position, damage },
        };
        let damaged_at = stop.position();
        // The writer's preallocated zeros: nothing to resynchronise to, and cheap to see.
        if is_all_zero(source, damaged_at, end)? {
            scan.stop = Some(stop);
            break;
        }
        let anchor = first_verified_entry(source, known.entries, damaged_at, end)?;
        let bound = resync::Bound {
            end: anchor.map_or(end, |anchor| anchor.position),
            anchor,
            end_offset: known.end_offset,
        };
        // An index entry behind the damage could only name a lower offset if the `.idx` lied.
        let resumed = resync::find(source, damaged_at, expected, &bound)?
            .filter(|resumed| resumed.offset > expected);
        let Some(resumed) = resumed else {
            scan.stop = Some(stop);
            break;
        };
        scan.holes.push(Hole {
            first: expected,
            next: resumed.offset,
            start: damaged_at,
            end: resumed.position,
            reason: describe(Some(stop)),
        });
        // An entry where records resume, so reads after the hole never walk through it.
        scan.entries.push(resumed);
        last_entry = Some(resumed);
        scan.intact.next_offset = resumed.offset;
        cursor = FrameCursor::new(source, resumed.position, end, SCAN_CHUNK_BYTES);
    }
    // A frame with the resume entry's offset is read next; the entry is already in place.
    Ok(scan)
}

impl Stop {
    fn position(self) -> u64 {
        match self {
            Stop::Torn { position }
            | Stop::Corrupt { position, .. }
            | Stop::WrongOffset { position, .. } => position,
        }
    }
}

/// The first of `entries` after `position` (and before `end`) whose frame decodes with its offset.
fn first_verified_entry<S: ReadAt + ?Sized>(
    source: &S,
    entries: &[IndexEntry],
    position: u64,
    end: u64,
) -> io::Result<Option<IndexEntry>> {
    let after = entries.partition_point(|entry| entry.position <= position);
    for entry in entries.get(after..).unwrap_or_default() {
        if entry.position >= end {
            break;
        }
        if frame_at_is(source, *entry, end)? {
            return Ok(Some(*entry));
        }
    }
    Ok(None)
}

/// Whether the frame at `entry.position` decodes and has `entry.offset`.
pub(crate) fn frame_at_is<S: ReadAt + ?Sized>(
    source: &S,
    entry: IndexEntry,
    end: u64,
) -> io::Result<bool> {
    let mut cursor = FrameCursor::new(source, entry.position, end, 64 * 1024);
    Ok(matches!(cursor.next_step()?, Step::Frame { meta, .. } if meta.offset == entry.offset))
}

/// Runs the decoder and the recovery scan over arbitrary bytes and checks their invariants.
pub(crate) fn fuzz_frame_decode(data: &[u8]) {
    // Every frame the decoder accepts lies inside the input and re-encodes to the same bytes.
    let mut rest = data;
    let mut n_frames = 0u64;
    while let Decoded::Frame { meta, frame_bytes } = frame::decode(rest) {
        assert!(
            (HEADER_BYTES..=rest.len()).contains(&frame_bytes),
            "frame outside the input"
        );
        let mut reencoded = Vec::new();
        frame::encode(&mut reencoded, meta, &rest[HEADER_BYTES..frame_bytes]);
        assert_eq!(
            reencoded,
            rest[..frame_bytes],
            "frame does not re-encode to its own bytes"
        );
        rest = &rest[frame_bytes..];
        n_frames += 1;
    }
    // The scan, as if the bytes were an active segment based at the first frame's offset.
    let base_offset = match frame::decode(data) {
        Decoded::Frame { meta, .. } => meta.offset,
        Decoded::Incomplete { .. } | Decoded::Corrupt(_) => 0,
    };
    let end = data.len() as u64;
    let start = IndexEntry {
        offset: base_offset,
        position: 0,
    };
    let scan = match scan(data, start, end, None, Known::default()) {
        Ok(scan) => scan,
        Err(error) => panic!("scanning bytes in memory failed: {error}"),
    };
    assert!(scan.batch_end.len <= scan.intact.len && scan.intact.len <= end);
    assert!(scan.batch_end.next_offset <= scan.intact.next_offset);
    if scan.holes.is_empty() {
        assert!(
            scan.intact.next_offset - base_offset <= n_frames,
            "scan accepted frames the decoder did not"
        );
    }
    if scan.stop.is_none() {
        assert_eq!(scan.intact.len, end, "a clean scan must reach the end");
    }
    // Holes are in order, each fits its records (a header each at least) and is followed by
    // intact records.
    let mut covered = (base_offset, 0u64);
    for hole in &scan.holes {
        assert!(hole.first < hole.next, "an empty hole");
        assert!(
            hole.first >= covered.0 && hole.start >= covered.1,
            "holes out of order"
        );
        assert!(hole.end <= scan.intact.len);
        assert!((hole.next - hole.first) * HEADER_BYTES as u64 <= hole.end - hole.start);
        covered = (hole.next, hole.end);
    }
    let mut previous: Option<IndexEntry> = None;
    for entry in &scan.entries {
        assert!(entry.position < scan.intact.len);
        assert!(previous.is_none_or(
            |previous| previous.offset < entry.offset && previous.position < entry.position
        ));
        previous = Some(*entry);
    }
    // The same bytes as an `.idx` file.
    let entries = index::parse(data, base_offset, end);
    assert!(entries.len() * ENTRY_BYTES <= data.len());
}

/// The base offsets of the `.log` files in `dir`, ascending. Removes `.idx` files left without
/// their `.log` (retention removes the `.log` first).
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut logs = BTreeSet::new();
    let mut idxs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        let file_name = entry.file_name();
        match file_name.to_str().and_then(files::parse_segment_file_name) {
            Some(SegmentFile::Log(base_offset)) => {
                logs.insert(base_offset);
            }
            Some(SegmentFile::Idx(base_offset)) => idxs.push(base_offset),
            None => {}
        }
    }
    for base_offset in idxs
        .into_iter()
        .filter(|base_offset| !logs.contains(base_offset))
    {
        if let Err(error) = files::remove_if_exists(&files::idx_path(dir, base_offset)) {
            tracing::warn!(message = "Failed to remove an orphaned segment index.", %error);
        }
    }
    Ok(logs.into_iter().collect())
}

/// Opens a sealed segment that must hold exactly the records `base_offset..next_base`. Damage
/// never cuts it: damaged records become holes, up to `next_base` if nothing intact follows.
fn load_sealed(
    topic: &str,
    dir: &Path,
    base_offset: u64,
    next_base: u64,
) -> Result<Segment, LogError> {
    let path = files::log_path(dir, base_offset);
    let file = File::open(&path).map_err(|source| io_error(&path, source))?;
    let file_len = file
        .metadata()
        .map_err(|source| io_error(&path, source))?
        .len();
    let idx_path = files::idx_path(dir, base_offset);
    let idx_bytes = read_index_bytes(&idx_path);
    let is_whole = |scan: &Scan| {
        scan.stop.is_none()
            && scan.holes.is_empty()
            && scan.intact.len == file_len
            && scan.intact.next_offset == next_base
    };
    let known = Known {
        entries: &[],
        end_offset: Some(next_base),
    };

    let mut entries = index::parse(&idx_bytes, base_offset, file_len);
    let tail = match entries.last().copied() {
        Some(last) => Some(
            scan(&file, last, file_len, Some(last), known)
                .map_err(|source| io_error(&path, source))?,
        ),
        None => None,
    };
    let (scan, holes) = match tail {
        Some(tail) if is_whole(&tail) => {
            entries.extend_from_slice(&tail.entries);
            (tail, Vec::new())
        }
        _ => {
            let start = IndexEntry {
                offset: base_offset,
                position: 0,
            };
            let known = Known {
                entries: &entries,
                end_offset: Some(next_base),
            };
            let mut full = scan(&file, start, file_len, None, known)
                .map_err(|source| io_error(&path, source))?;
            let mut holes = std::mem::take(&mut full.holes);
            let end_offset = full.intact.next_offset;
            if end_offset < next_base {
                let (start, reason) = match full.stop {
                    Some(stop) => (stop.position(), describe(Some(stop))),
                    None => (
                        file_len,
                        "the records end before the next segment starts".to_owned(),
                    ),
                };
                holes.push(Hole {
                    first: end_offset,
                    next: next_base,
                    start,
                    end: file_len,
                    reason,
                });
            } else if end_offset > next_base || full.stop.is_some() {
                tracing::warn!(
                    message = "A sealed segment holds records past the next segment's base, or bytes after its last record; they are not read.",
                    topic,
                    segment = base_offset,
                    intact_next_offset = end_offset,
                    expected_next_offset = next_base,
                    reason = %describe(full.stop),
                );
            }
            entries = std::mem::take(&mut full.entries);
            (full, holes)
        }
    };
    starts_at_base(&mut entries, base_offset);
    if encoded(&entries) != idx_bytes
        && let Err(error) = rewrite_index(&idx_path, &entries)
    {
        tracing::warn!(message = "Failed to rewrite a segment index.", %error);
    }
    let segment = Segment::new(
        base_offset,
        path,
        file,
        file_len,
        entries,
        scan.intact.newest_timestamp_ms,
    );
    for hole in holes {
        segment.add_hole(hole);
    }
    Ok(segment)
}

/// A segment's index starts with its first record's place, even when that record is damaged:
/// an `.idx` file that does not is read as garbage.
fn starts_at_base(entries: &mut Vec<IndexEntry>, base_offset: u64) {
    let first = IndexEntry {
        offset: base_offset,
        position: 0,
    };
    if entries.first() != Some(&first) {
        entries.insert(0, first);
    }
}

/// Opens the active segment, cutting its tail back to the end of the last whole batch.
fn load_active(
    dir: &Path,
    base_offset: u64,
) -> Result<(Arc<Segment>, ActiveState, Option<Truncation>), LogError> {
    let path = files::log_path(dir, base_offset);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| io_error(&path, source))?;
    let file_len = file
        .metadata()
        .map_err(|source| io_error(&path, source))?
        .len();
    let idx_path = files::idx_path(dir, base_offset);
    let idx_bytes = read_index_bytes(&idx_path);

    // Entries reach the .idx only after the bytes before them were fsynced, so the last entry
    // whose frame checks out marks where the untrusted tail starts.
    let mut entries = index::parse(&idx_bytes, base_offset, file_len);
    while let Some(last) = entries.last().copied() {
        let mut cursor = FrameCursor::new(&file, last.position, file_len, SCAN_CHUNK_BYTES);
        let step = cursor
            .next_step()
            .map_err(|source| io_error(&path, source))?;
        if matches!(step, Step::Frame { meta, .. } if meta.offset == last.offset) {
            break;
        }
        entries.pop();
    }
    let start = entries.last().copied().unwrap_or(IndexEntry {
        offset: base_offset,
        position: 0,
    });
    let mut scan = scan(
        &file,
        start,
        file_len,
        entries.last().copied(),
        Known::default(),
    )
    .map_err(|source| io_error(&path, source))?;
    let keep = scan.batch_end;
    entries.extend(
        scan.entries
            .iter()
            .filter(|entry| entry.position < keep.len),
    );
    // Holes before the last whole batch stay holes; one after it is part of the cut tail.
    scan.holes.retain(|hole| hole.end <= keep.len);
    if keep.len > 0 {
        starts_at_base(&mut entries, base_offset);
    }

    // The writer keeps a zero-filled stretch ahead of its records (see `Writer::ensure_allocated`),
    // so after a crash a tail of zeros right after the last whole batch is no damage: nothing
    // was ever acknowledged there. Anything else after that point is reported.
    let zero_tail = keep.len < file_len
        && scan.intact.len == keep.len
        && is_all_zero(&file, keep.len, file_len).map_err(|source| io_error(&path, source))?;
    if zero_tail {
        tracing::debug!(
            message = "Trimmed the preallocated tail of the active segment.",
            segment = base_offset,
            bytes = file_len - keep.len
        );
        file.set_len(keep.len)
            .map_err(|source| io_error(&path, source))?;
    }
    let truncation = (keep.len < file_len && !zero_tail).then(|| Truncation {
        segment: base_offset,
        from_offset: keep.next_offset,
        dropped_bytes: file_len - keep.len,
        dropped_records: scan.n_frames_after_batch_end,
        reason: describe(scan.stop),
    });
    if truncation.is_some() {
        file.set_len(keep.len)
            .map_err(|source| io_error(&path, source))?;
    }
    // What was read may have come from the page cache of a crashed process. Make it durable
    // before index entries point at it and before new records are acknowledged after it.
    file.sync_data().map_err(|source| io_error(&path, source))?;

    let idx_file = if encoded(&entries) == idx_bytes && idx_path.exists() {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&idx_path)
            .map_err(|source| io_error(&idx_path, source))?
    } else {
        rewrite_index(&idx_path, &entries)?
    };
    let state = ActiveState {
        idx_path,
        idx_file,
        next_offset: keep.next_offset,
        synced_len: keep.len,
        n_index_persisted: entries.len(),
        last_timestamp_ms: keep.newest_timestamp_ms.unwrap_or(i64::MIN),
    };
    let segment = Segment::new(
        base_offset,
        path,
        file,
        keep.len,
        entries,
        keep.newest_timestamp_ms,
    );
    for hole in scan.holes {
        segment.add_hole(hole);
    }
    Ok((Arc::new(segment), state, truncation))
}

/// Whether the source holds nothing but zero bytes in `from..to`.
fn is_all_zero<S: ReadAt + ?Sized>(source: &S, from: u64, to: u64) -> io::Result<bool> {
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES.min(to.saturating_sub(from) as usize)];
    let mut position = from;
    while position < to {
        let n_bytes = chunk.len().min((to - position) as usize);
        source.read_exact_at(&mut chunk[..n_bytes], position)?;
        if chunk[..n_bytes].iter().any(|byte| *byte != 0) {
            return Ok(false);
        }
        position += n_bytes as u64;
    }
    Ok(true)
}

/// The bytes of an `.idx` file. Unreadable counts as missing: the index is only a cache.
fn read_index_bytes(idx_path: &Path) -> Vec<u8> {
    files::read_if_exists(idx_path).unwrap_or_else(|error| {
        tracing::warn!(message = "Failed to read a segment index; rebuilding it.", %error);
        Vec::new()
    })
}

/// Replaces an `.idx` file with `entries` and fsyncs it (and its directory, in case the file is new).
fn rewrite_index(idx_path: &Path, entries: &[IndexEntry]) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(idx_path)
        .map_err(|source| io_error(idx_path, source))?;
    let bytes = encoded(entries);
    let res = file.write_all_at(&bytes, 0).and_then(|()| file.sync_data());
    res.map_err(|source| io_error(idx_path, source))?;
    if let Some(dir) = idx_path.parent() {
        files::sync_dir(dir)?;
    }
    Ok(file)
}

fn encoded(entries: &[IndexEntry]) -> Vec<u8> {
    let mut bytes = Vec::new();
    index::encode(entries, &mut bytes);
    bytes
}

fn describe(stop: Option<Stop>) -> String {
    match stop {
        None => "incomplete batch at the end".to_owned(),
        Some(Stop::Torn { position }) => format!("torn frame at byte {position}"),
        Some(Stop::Corrupt { position, damage }) => {
            format!("{} at byte {position}", damage.describe())
        }
        Some(Stop::WrongOffset {
            position,
            expected,
            found,
        }) => {
            format!("offset {found} where {expected} was expected at byte {position}")
        }
    }
}
