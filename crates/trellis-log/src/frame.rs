//! Record framing: how one record is laid out on disk, and how untrusted bytes are decoded.
//!
//! ```text
//! len u32 | crc32c u32 | offset u64 | timestamp_ms i64 | flags u8 | payload
//! ```
//!
//! Integers are little-endian. `len` counts the bytes after the CRC field (17 + payload), and
//! the CRC-32C covers exactly those bytes. Every frame stores its own offset so that recovery can
//! prove offsets are dense. Flag bit 0 marks the last frame of an append batch: recovery drops a
//! trailing batch without it, which makes an append all-or-nothing across crashes.
//!
//! Disk bytes are untrusted input: `decode` never panics and checks a length before using it.
//! This module does no I/O and knows nothing of segments.

use crate::MAX_RECORD_BYTES;

/// Bytes before the payload: len, crc, offset, timestamp, flags.
pub(crate) const HEADER_BYTES: usize = 25;

/// What a frame says about its record, besides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameMeta {
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: i64,
    /// This is the last record of its append batch.
    pub(crate) end_of_batch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole frame with a good checksum. It is `frame_bytes` long and its payload is
    /// `HEADER_BYTES..frame_bytes`.
    Frame {
        meta: FrameMeta,
        frame_bytes: usize,
    },
    /// The bytes are the start of a frame that needs `frame_bytes` bytes in all.
    Incomplete {
        frame_bytes: usize,
    },
    Corrupt(Damage),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The length field is smaller than a header or larger than the biggest allowed record.
    BadLength(u32),
    BadChecksum,
    UnknownFlags(u8),
}

/// Bytes covered by `len` besides the payload: offset, timestamp, flags.
const CHECKED_HEADER_BYTES: usize = 17;
/// Bytes before the part the CRC covers: len, crc.
const UNCHECKED_BYTES: usize = 8;
const FLAG_END_OF_BATCH: u8 = 0b1;
const KNOWN_FLAGS: u8 = FLAG_END_OF_BATCH;

/// The size of the frame for a payload of `payload_len` bytes.
pub(crate) const fn frame_bytes(payload_len: usize) -> usize {
    HEADER_BYTES + payload_len
}

/// Appends the frame for one record to `out`. The caller guarantees `payload.len() <= MAX_RECORD_BYTES`.
pub(crate) fn encode(out: &mut Vec<u8>, meta: FrameMeta, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_RECORD_BYTES);
    let start = out.len();
    // Cannot truncate: MAX_RECORD_BYTES + 17 fits in a u32.
    let len = (CHECKED_HEADER_BYTES + payload.len()) as u32;
    out.reserve(frame_bytes(payload.len()));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&meta.offset.to_le_bytes());
    out.extend_from_slice(&meta.timestamp_ms.to_le_bytes());
    out.push(if meta.end_of_batch {
        FLAG_END_OF_BATCH
    } else {
        0
    });
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + UNCHECKED_BYTES..]);
    out[start + 4..start + UNCHECKED_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at the start of `bytes`.
pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    let Some(len) = le_u32(bytes, 0) else {
        return Decoded::Incomplete {
            frame_bytes: HEADER_BYTES,
        };
    };
    let checked_bytes = len as usize;
    if !(CHECKED_HEADER_BYTES..=CHECKED_HEADER_BYTES + MAX_RECORD_BYTES).contains(&checked_bytes) {
        return Decoded::Corrupt(Damage::BadLength(len));
    }
    let frame_bytes = UNCHECKED_BYTES + checked_bytes;
    let Some(frame) = bytes.get(..frame_bytes) else {
        return Decoded::Incomplete { frame_bytes };
    };
    let (Some(stored_crc), Some(offset), Some(timestamp_ms), Some(&flags)) = (
        le_u32(frame, 4),
        le_u64(frame, 8),
        le_u64(frame, 16),
        frame.get(24),
    ) else {
        // Unreachable: the length check guarantees a whole header.
        return Decoded::Corrupt(Damage::BadLength(len));
    };
    if crc32c::crc32c(&frame[UNCHECKED_BYTES..]) != stored_crc {
        return Decoded::Corrupt(Damage::BadChecksum);
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Decoded::Corrupt(Damage::UnknownFlags(flags));
    }
    let meta = FrameMeta {
        offset,
        timestamp_ms: timestamp_ms as i64,
        end_of_batch: flags & FLAG_END_OF_BATCH != 0,
    };
    Decoded::Frame { meta, frame_bytes }
}

/// What the header at the start of `bytes` claims, checked only for a possible length and known
/// flags; the checksum is not verified. Cheap enough to try at every byte of a damaged stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) frame_bytes: usize,
    pub(crate) offset: u64,
}

pub(crate) fn peek_header(bytes: &[u8]) -> Option<Header> {
    let checked_bytes = le_u32(bytes, 0)? as usize;
    if !(CHECKED_HEADER_BYTES..=CHECKED_HEADER_BYTES + MAX_RECORD_BYTES).contains(&checked_bytes) {
        return None;
    }
    let flags = *bytes.get(24)?;
    if flags & !KNOWN_FLAGS != 0 {
        return None;
    }
    Some(Header {
        frame_bytes: UNCHECKED_BYTES + checked_bytes,
        offset: le_u64(bytes, 8)?,
    })
}

impl Damage {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Damage::BadLength(_) => "bad frame length",
            Damage::BadChecksum => "bad checksum",
            Damage::UnknownFlags(_) => "unknown frame flags",
        }
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let field = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

#[cfg(test)]
mod tests;
