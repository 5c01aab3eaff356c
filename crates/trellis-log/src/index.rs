//! The sparse offset index: one entry per ~4 KiB of segment bytes, kept in memory for every
//! segment and persisted in the segment's `.idx` file.
//!
//! A read finds its segment by base offset, then the last entry at or before the wanted offset,
//! then scans forward at most one index interval. The `.idx` file is a sequence of 20-byte
//! entries:
//!
//! ```text
//! offset u64 | position u64 | crc32c u32      (little-endian; the CRC covers the first 16 bytes)
//! ```
//!
//! The file is a cache of the `.log`: recovery rebuilds it whenever it is missing, torn or
//! inconsistent, so writing it never needs its own fsync on the hot path.
//!
//! **Invariant:** an entry reaches the `.idx` file only after the segment bytes up to the end of
//! its group commit have been fsynced. Recovery may therefore trust every byte before the last
//! entry it can verify, and only needs to scan the tail after it.

use crate::frame::HEADER_BYTES;

/// Segment bytes between two index entries. Also the most a read scans past an entry.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 4096;
pub(crate) const ENTRY_BYTES: usize = 20;

/// The frame of record `offset` starts at byte `position` of its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) offset: u64,
    pub(crate) position: u64,
}

/// Whether the frame starting at `position` gets an index entry, given the segment's last one.
/// The first frame of a segment always does.
pub(crate) fn wants_entry(last: Option<&IndexEntry>, position: u64) -> bool {
    last.is_none_or(|last| position >= last.position + INDEX_INTERVAL_BYTES)
}

/// The last entry at or before `offset`.
pub(crate) fn floor(entries: &[IndexEntry], offset: u64) -> Option<IndexEntry> {
    let n_at_or_before = entries.partition_point(|entry| entry.offset <= offset);
    n_at_or_before
        .checked_sub(1)
        .and_then(|idx| entries.get(idx).copied())
}

pub(crate) fn encode(entries: &[IndexEntry], out: &mut Vec<u8>) {
    out.reserve(entries.len() * ENTRY_BYTES);
    for entry in entries {
        let start = out.len();
        out.extend_from_slice(&entry.offset.to_le_bytes());
        out.extend_from_slice(&entry.position.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// The longest consistent prefix of an `.idx` file's bytes: every entry has a good checksum, the
/// first is `(base_offset, 0)`, offsets strictly increase with positions at least one header
/// apart per record, and every position lies inside a segment of `segment_len` bytes. Anything
/// after the first bad entry (a torn append, garbage) is ignored.
pub(crate) fn parse(bytes: &[u8], base_offset: u64, segment_len: u64) -> Vec<IndexEntry> {
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    for raw in bytes.chunks_exact(ENTRY_BYTES) {
        let Some(entry) = decode_entry(raw) else {
            break;
        };
        let consistent = match entries.last() {
            None => {
                entry
                    == IndexEntry {
                        offset: base_offset,
                        position: 0,
                    }
            }
            Some(prev) => {
                // Every frame is at least a header long.
                entry.offset > prev.offset
                    && entry.position > prev.position
                    && entry.position - prev.position
                        >= (entry.offset - prev.offset).saturating_mul(HEADER_BYTES as u64)
            }
        };
        if !consistent || entry.position >= segment_len {
            break;
        }
        entries.push(entry);
    }
    entries
}

fn decode_entry(raw: &[u8]) -> Option<IndexEntry> {
    let offset = u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?);
    let position = u64::from_le_bytes(raw.get(8..16)?.try_into().ok()?);
    let stored_crc = u32::from_le_bytes(raw.get(16..20)?.try_into().ok()?);
    if crc32c::crc32c(raw.get(0..16)?) != stored_crc {
        return None;
    }
    Some(IndexEntry { offset, position })
}

#[cfg(test)]
mod tests;
