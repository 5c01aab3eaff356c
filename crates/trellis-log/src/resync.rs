//! Resynchronisation: where intact frames resume after a frame that does not decode.
//!
//! A frame carries its own offset and a CRC-32C over offset, timestamp, flags and payload, so
//! the next intact frame can be found by trying every byte after the damage. A position is taken
//! only when all of these hold:
//!
//! - a frame decodes there with a good checksum and known flags;
//! - its offset is above the damaged record's and no higher than the bytes skipped allow (every
//!   record takes at least a header), so the records in between fit where the damage is;
//! - the chain of frames that follows (dense offsets) contradicts nothing known: it never meets a
//!   frame with an offset already passed, and where it reaches the bound it lands exactly on the
//!   verified index entry there, or at the end with the offset the next segment starts at. A
//!   chain may also end in more damage, which the caller resynchronises from in turn.
//!
//! The damaged frame's own length is tried first: a flipped payload or header byte leaves it
//! intact, and then the next frame is exactly there, whatever the damaged payload contains.
//!
//! Why a payload that embeds a valid-looking frame cannot steal the place of real records: random
//! bytes pass the checksum and the offset window with a chance of about 2^-32 times the window
//! over 2^64, so only a forged frame matters. A forgery lies inside some record's payload. The
//! byte scan starts inside the damaged record, and intact records after it begin before their
//! own payloads, so the scan meets each intact record's start before any forgery it carries.
//! A forgery inside the damaged record itself needs offsets above the damaged one; if its chain
//! ran on into the real next record, that record's offset (one above the damaged) would
//! contradict the chain and the candidate is refused; at an index entry or the end of a sealed
//! segment the offsets must also match. A forged chain that ends in bytes that do not decode
//! (inside the payload carrying it) needs the damage to have hit the length field of that very
//! record (a flipped payload byte keeps the length, and the length is tried first); it is then
//! refused because the genuine records after the payload repeat the offsets it claims, which is
//! looked for up to `REPEAT_WINDOW_BYTES` after its end. What remains is a forgery in a payload
//! larger than that window (events are at most 1 MiB by default). Even then no offset is reused:
//! every offset taken is above the damaged one and offsets only grow.

use std::io;

use crate::frame::{self, HEADER_BYTES};
use crate::index::IndexEntry;
use crate::segment::{FrameCursor, ReadAt, Step};

/// What bounds a resynchronisation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// Scan no further than this position: a verified index entry, or the end of the data.
    pub(crate) end: u64,
    /// The verified index entry at `end`, if the bound is one.
    pub(crate) anchor: Option<IndexEntry>,
    /// Without an anchor: the offset the record after the segment's last must have, when known
    /// (a sealed segment ends where the next one starts).
    pub(crate) end_offset: Option<u64>,
}

/// How much of the damaged stretch is read at once while trying every byte.
const WINDOW_BYTES: usize = 256 * 1024;
/// How much a chain check reads at once.
const CHAIN_CHUNK_BYTES: usize = 64 * 1024;

/// Where intact frames resume after the bad frame at `damaged_at`, whose record should have had
/// offset `expected`: the first position that passes the checks above, else the anchor, else
/// `None` (nothing intact follows before the bound).
pub(crate) fn find<S: ReadAt + ?Sized>(
    source: &S,
    damaged_at: u64,
    expected: u64,
    bound: &Bound,
) -> io::Result<Option<IndexEntry>> {
    if damaged_at >= bound.end {
        return Ok(bound.anchor);
    }
    // The damaged frame's own length, when its header still reads as one.
    let mut head = [0u8; HEADER_BYTES];
    let n_head = (bound.end - damaged_at).min(HEADER_BYTES as u64) as usize;
    source.read_exact_at(&mut head[..n_head], damaged_at)?;
    if let Some(header) = frame::peek_header(&head[..n_head]) {
        let position = damaged_at + header.frame_bytes as u64;
        if position < bound.end
            && let Some(found) = candidate(source, damaged_at, expected, position, bound)?
        {
            return Ok(Some(found));
        }
    }
    // Every byte after the damage.
    first_at(source, damaged_at + 1, bound.end, |position, bytes| {
        candidate_at(source, damaged_at, expected, position, bytes, bound)
    })
    .map(|found| found.or(bound.anchor))
}

/// The first position in `from..end` (with a header's worth of bytes left) for which `check`
/// finds something, reading the bytes in windows.
fn first_at<S: ReadAt + ?Sized, T>(
    source: &S,
    from: u64,
    end: u64,
    mut check: impl FnMut(u64, &[u8]) -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let mut window = Vec::new();
    let mut window_start = from;
    let mut position = from;
    while position + HEADER_BYTES as u64 <= end {
        let at = (position - window_start) as usize;
        if at + HEADER_BYTES > window.len() {
            let n_bytes = (end - position).min(WINDOW_BYTES as u64) as usize;
            window.resize(n_bytes, 0);
            source.read_exact_at(&mut window, position)?;
            window_start = position;
            continue;
        }
        if let Some(found) = check(position, &window[at..])? {
            return Ok(Some(found));
        }
        position += 1;
    }
    Ok(None)
}

/// Checks the position whose bytes start `bytes`; the cheap header checks first.
fn candidate_at<S: ReadAt + ?Sized>(
    source: &S,
    damaged_at: u64,
    expected: u64,
    position: u64,
    bytes: &[u8],
    bound: &Bound,
) -> io::Result<Option<IndexEntry>> {
    let Some(header) = frame::peek_header(bytes) else {
        return Ok(None);
    };
    if !fits(damaged_at, expected, position, header.offset)
        || position + header.frame_bytes as u64 > bound.end
    {
        return Ok(None);
    }
    candidate(source, damaged_at, expected, position, bound)
}

/// Whether a record with `offset` can start at `position`, given that `expected` started at
/// `damaged_at`: above it, and with room for a header for each record in between.
fn fits(damaged_at: u64, expected: u64, position: u64, offset: u64) -> bool {
    let room = (position - damaged_at) / HEADER_BYTES as u64;
    offset > expected && offset - expected <= room
}

/// The frame at `position`, if it decodes, fits and its chain contradicts nothing.
fn candidate<S: ReadAt + ?Sized>(
    source: &S,
    damaged_at: u64,
    expected: u64,
    position: u64,
    bound: &Bound,
) -> io::Result<Option<IndexEntry>> {
    let mut cursor = FrameCursor::new(source, position, bound.end, CHAIN_CHUNK_BYTES);
    let first = match cursor.next_step()? {
        Step::Frame { meta, .. } if fits(damaged_at, expected, position, meta.offset) => {
            meta.offset
        }
        Step::Frame { .. } | Step::Torn { .. } | Step::Corrupt { .. } | Step::End => {
            return Ok(None);
        }
    };
    let mut next = first + 1;
    loop {
        match cursor.next_step()? {
            Step::Frame { meta, .. } if meta.offset == next => next += 1,
            // An offset the chain has passed: either this frame or the chain is not real.
            Step::Frame { meta, .. } if meta.offset < next => return Ok(None),
            // More damage: the caller resynchronises from there, unless a frame after it
            // repeats an offset this chain claims.
            Step::Frame { position: at, .. }
            | Step::Torn { position: at }
            | Step::Corrupt { position: at, .. } => {
                if repeats_an_offset(source, at, first..next, bound.end)? {
                    return Ok(None);
                }
                break;
            }
            Step::End => {
                let expected_end = bound
                    .anchor
                    .map(|anchor| anchor.offset)
                    .or(bound.end_offset);
                if expected_end.is_some_and(|end_offset| end_offset != next) {
                    return Ok(None);
                }
                break;
            }
        }
    }
    Ok(Some(IndexEntry {
        offset: first,
        position,
    }))
}

/// How far after a chain's end a frame repeating one of its offsets is looked for: the default
/// limit on an event's size, with room for its frame.
const REPEAT_WINDOW_BYTES: u64 = 1024 * 1024 + 4096;

/// Whether a frame that decodes in `from..` (up to `REPEAT_WINDOW_BYTES`, and `end`) has one of
/// `offsets`. Only a forged chain can meet one: the genuine record with that offset comes after
/// the payload that carries the forgery, within that payload's length.
fn repeats_an_offset<S: ReadAt + ?Sized>(
    source: &S,
    from: u64,
    offsets: std::ops::Range<u64>,
    end: u64,
) -> io::Result<bool> {
    let end = end.min(from.saturating_add(REPEAT_WINDOW_BYTES));
    let found = first_at(source, from + 1, end, |position, bytes| {
        let Some(header) = frame::peek_header(bytes) else {
            return Ok(None);
        };
        if !offsets.contains(&header.offset) || position + header.frame_bytes as u64 > end {
            return Ok(None);
        }
        let mut cursor = FrameCursor::new(source, position, end, CHAIN_CHUNK_BYTES);
        Ok(match cursor.next_step()? {
            Step::Frame { meta, .. } if offsets.contains(&meta.offset) => Some(()),
            Step::Frame { .. } | Step::Torn { .. } | Step::Corrupt { .. } | Step::End => None,
        })
    })?;
    Ok(found.is_some())
}
