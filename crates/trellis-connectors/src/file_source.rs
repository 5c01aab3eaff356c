//! [`FileSource`]: tails a file line by line.
//!
//! Config keys:
//!
//! | key | required | default | meaning |
//! |---|---|---|---|
//! | `path` | yes | | the file to tail; it need not exist yet |
//! | `max_batch` | no | 500 (1..=100000) | most lines returned by one poll |
//! | `max_line_bytes` | no | 1 MiB (1..=64 MiB) | longest line kept whole |
//!
//! Each record is one line without its `\n`. Its position is (partition = `path`, offset = the
//! byte offset right after the line's `\n`), so committing it means "resume after this line".
//! Its id is `file-<path hash>-<device>-<inode>-<offset>-<line hash>` (the hashes are 64-bit
//! rapidhash V3, a portable algorithm with fixed output, in 16 hex digits; device and inode in
//! hex, the offset in decimal): a re-read of the same line after a crash yields the same id and
//! the runtime drops the duplicate, while a line written at the same offset after a truncation
//! (other content) gets another id. (The same content at the same offset of the same file after
//! a truncation gets the same id, and is dropped as a duplicate if the runtime still remembers
//! the first one.)
//!
//! A `\r` before the `\n` stays in the data; the bytes need not be UTF-8.
//!
//! - **Partial lines.** Bytes after the last `\n` wait until their newline arrives.
//! - **Long lines.** A line longer than `max_line_bytes` is not dropped: its first
//!   `max_line_bytes` bytes are emitted with the extensions `truncated` = `true` and
//!   `originalbytes` = the full length, a warning is logged and
//!   `trellis_connector_file_lines_truncated_total` counts it. Memory stays bounded by
//!   `max_line_bytes` plus one read buffer.
//! - **Rotation by rename.** When the path names another file (device and inode differ), the
//!   old file is read to its end (a partial last line there is emitted, since nothing will
//!   complete it), then the new file is read from offset 0.
//! - **Truncation.** When the file is shorter than the position, reading starts again at 0
//!   with a warning. (A file truncated and then written past the position between two polls
//!   cannot be told from one that grew, as with `tail -F`.)
//! - **Resume.** `start` seeks to the committed offset of `path`. A committed offset past the
//!   end of the file, or one not right after a `\n`, means the file was replaced or truncated
//!   while the source was down: reading starts at 0 with a warning. (A file rotated while the
//!   source was down to one at least as long, with a `\n` at the same place, cannot be told
//!   apart and is read from the committed offset.)
//! - **Polling.** When nothing new is there, `poll` waits up to about half a second, checking
//!   every 100 ms, and returns an empty batch.

use std::io::SeekFrom;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use trellis_connect::{
    ConfigError, ConfigKey, ConnectRecord, ConnectorConfig, ConnectorError, Partition, Position,
    Source, SourceContext,
};

/// The default and limits of `max_batch`.
pub const DEFAULT_MAX_BATCH: u64 = 500;
const MAX_BATCH_LIMIT: u64 = 100_000;
/// The default and limits of `max_line_bytes`.
pub const DEFAULT_MAX_LINE_BYTES: u64 = 1024 * 1024;
const MAX_LINE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;

/// How much one read takes from the file.
const READ_CHUNK: usize = 64 * 1024;
/// How often an idle poll looks for growth, and how long it waits in all.
const IDLE_CHECK: Duration = Duration::from_millis(100);
const IDLE_CHECKS: u32 = 5;

/// The extension set on a line cut to `max_line_bytes`.
pub const TRUNCATED_EXTENSION: &str = "truncated";
/// The extension that gives a cut line's full length in bytes.
pub const ORIGINAL_BYTES_EXTENSION: &str = "originalbytes";

/// Tails one file. See the module docs for its config and behaviour.
#[derive(Debug, Default)]
pub struct FileSource {
    settings: Option<Settings>,
    open: Option<OpenFile>,
    /// The offset to start at when the file is first opened (the committed one).
    resume_at: u64,
}

#[derive(Debug)]
struct Settings {
    path: String,
    path_hash: u64,
    max_batch: usize,
    max_line_bytes: usize,
}

/// A file being read, and the bytes read from it that are not yet a whole line.
#[derive(Debug)]
struct OpenFile {
    file: File,
    identity: Identity,
    /// `file-<path hash>-<device>-<inode>-`, the part of every id that is the same for the file.
    id_prefix: String,
    /// The offset of the first byte of `pending` (the start of the current line).
    line_start: u64,
    /// Bytes of the current line read so far, at most `max_line_bytes`.
    pending: Vec<u8>,
    /// The full length of the current line so far, when it is longer than `pending`.
    line_len: u64,
    /// Bytes read but not yet scanned.
    unread: Vec<u8>,
    unread_at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
}

impl Identity {
    fn of(metadata: &std::fs::Metadata) -> Identity {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Identity {
                device: metadata.dev(),
                inode: metadata.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            Identity {
                device: 0,
                inode: 0,
            }
        }
    }
}

impl FileSource {
    pub fn new() -> FileSource {
        FileSource::default()
    }

    fn settings(&self) -> Result<&Settings, ConnectorError> {
        self.settings
            .as_ref()
            .ok_or_else(|| ConnectorError::failed("the file source was polled before start"))
    }

    /// Opens the file at `path` positioned at `offset`, or `None` when it does not exist.
    async fn open_at(
        path: &str,
        path_hash: u64,
        offset: u64,
    ) -> Result<Option<OpenFile>, ConnectorError> {
        let mut file = match File::open(path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let metadata = file.metadata().await?;
        let mut offset = offset;
        if offset > 0 {
            let sane = offset <= metadata.len() && {
                file.seek(SeekFrom::Start(offset - 1)).await?;
                let mut byte = [0u8; 1];
                file.read_exact(&mut byte).await.is_ok() && byte[0] == b'\n'
            };
            if !sane {
                tracing::warn!(
                    path,
                    offset,
                    len = metadata.len(),
                    "the committed offset is not at a line end of the file: it was replaced or \
                     truncated, reading it from the start"
                );
                offset = 0;
            }
        }
        file.seek(SeekFrom::Start(offset)).await?;
        let identity = Identity::of(&metadata);
        Ok(Some(OpenFile {
            file,
            id_prefix: format!(
                "file-{path_hash:016x}-{:x}-{:x}-",
                identity.device, identity.inode
            ),
            identity,
            line_start: offset,
            pending: Vec::new(),
            line_len: 0,
            unread: Vec::new(),
            unread_at: 0,
        }))
    }

    /// The complete lines available now, at most `max_batch`. At the end of the file, checks
    /// for truncation and rotation.
    async fn read_lines(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        let settings = self.settings()?;
        let (path, path_hash) = (settings.path.clone(), settings.path_hash);
        let (max_batch, max_line_bytes) = (settings.max_batch, settings.max_line_bytes);
        if self.open.is_none() {
            self.open = Self::open_at(&path, path_hash, self.resume_at).await?;
            if self.open.is_none() {
                return Ok(Vec::new());
            }
        }
        let mut records = Vec::new();
        let mut finishing_rotated = false;
        while records.len() < max_batch {
            let Some(open) = self.open.as_mut() else {
                break;
            };
            if let Some(record) = open.next_line(&path, max_line_bytes) {
                records.push(record);
                continue;
            }
            open.unread.clear();
            open.unread_at = 0;
            open.unread.resize(READ_CHUNK, 0);
            let read = open.file.read(&mut open.unread).await?;
            open.unread.truncate(read);
            if read > 0 {
                continue;
            }
            // At the end of the open file: has it been truncated or replaced?
            if finishing_rotated {
                // The old file is drained: a partial last line will never be completed.
                if let Some(record) = open.take_partial(&path) {
                    records.push(record);
                }
                self.open = None;
                self.resume_at = 0;
                // Open the new file at once; at worst it does not exist yet.
                self.open = Self::open_at(&path, path_hash, 0).await?;
                finishing_rotated = false;
                continue;
            }
            let position = open.line_start + open.line_len.max(open.pending.len() as u64);
            let len = open.file.metadata().await?.len();
            if len < position {
                tracing::warn!(
                    path,
                    position,
                    len,
                    "the file was truncated, reading it again from the start"
                );
                open.file.seek(SeekFrom::Start(0)).await?;
                open.line_start = 0;
                open.pending.clear();
                open.line_len = 0;
                continue;
            }
            match tokio::fs::metadata(&path).await {
                Ok(metadata) if Identity::of(&metadata) != open.identity => {
                    tracing::info!(path, "the file was rotated, finishing the old one");
                    // One more read of the old file catches what was written before the rename.
                    finishing_rotated = true;
                    continue;
                }
                // Renamed away and not yet replaced: keep reading the old one meanwhile.
                Ok(_) | Err(_) => break,
            }
        }
        Ok(records)
    }
}

impl OpenFile {
    /// The next complete line from what was read, if any.
    fn next_line(&mut self, path: &str, max_line_bytes: usize) -> Option<ConnectRecord> {
        let rest = self.unread.get(self.unread_at..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        let newline = memchr::memchr(b'\n', rest);
        let take = newline.unwrap_or(rest.len());
        let chunk = rest.get(..take).unwrap_or_default();
        let room = max_line_bytes.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        self.line_len += take as u64;
        match newline {
            None => {
                self.unread_at = self.unread.len();
                None
            }
            Some(at) => {
                self.unread_at += at + 1;
                Some(self.finish_line(path, 1))
            }
        }
    }

    /// The partial last line of a file that will not grow any more, if there is one.
    fn take_partial(&mut self, path: &str) -> Option<ConnectRecord> {
        (self.line_len > 0).then(|| self.finish_line(path, 0))
    }

    fn finish_line(&mut self, path: &str, newline: u64) -> ConnectRecord {
        let end = self.line_start + self.line_len + newline;
        let data = std::mem::take(&mut self.pending);
        let id = line_id(&self.id_prefix, end, &data);
        let truncated = self.line_len > data.len() as u64;
        // A line of text reads back as text, not base64; other bytes stay binary data.
        let text = std::str::from_utf8(&data).is_ok();
        let mut record = ConnectRecord::new(id, Position::new(path, end), Bytes::from(data));
        if text {
            record = record.with_extension("datacontenttype", "text/plain; charset=utf-8");
        }
        if truncated {
            tracing::warn!(
                path,
                offset = end,
                bytes = self.line_len,
                "a line is longer than max_line_bytes, emitting its start only"
            );
            metrics::counter!("trellis_connector_file_lines_truncated_total").increment(1);
            record = record
                .with_extension(TRUNCATED_EXTENSION, "true")
                .with_extension(ORIGINAL_BYTES_EXTENSION, self.line_len.to_string());
        }
        self.line_start = end;
        self.line_len = 0;
        record
    }
}

/// The hash behind ids: it must stay the same across builds, versions and platforms (a re-read
/// after an upgrade must still deduplicate), which std's hasher does not promise. rapidhash V3
/// is a fixed, portable algorithm that reads eight bytes at a time: the byte-wise FNV-1a it
/// replaced cost about a tenth of the connector's CPU per 1 KiB line.
fn id_hash(bytes: &[u8]) -> u64 {
    rapidhash::v3::rapidhash_v3(bytes)
}

/// `<prefix><end>-<line hash>`, written by hand: `format!` per line cost more than the rest of
/// the id.
fn line_id(prefix: &str, end: u64, line: &[u8]) -> String {
    let mut id = String::with_capacity(prefix.len() + 20 + 1 + 16);
    id.push_str(prefix);
    push_decimal(&mut id, end);
    id.push('-');
    push_hex16(&mut id, id_hash(line));
    id
}

fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

fn push_hex16(out: &mut String, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(char::from(HEX[((n >> (shift * 4)) & 0xf) as usize]));
    }
}

/// The keys this connector takes besides the common ones.
pub const CONFIG_KEYS: [ConfigKey; 3] = [
    ConfigKey::required("path", "The file to tail; it need not exist yet."),
    ConfigKey::optional(
        "max_batch",
        Some("500"),
        "Most lines one poll returns (1 to 100000).",
    ),
    ConfigKey::optional(
        "max_line_bytes",
        Some("1048576"),
        "Longest line kept whole (1 to 64 MiB); a longer one is cut and marked `truncated`.",
    ),
];

/// Checks this connector's own keys without touching the file.
pub fn check_config(config: &ConnectorConfig) -> Result<(), ConfigError> {
    settings(config).map(drop)
}

fn settings(config: &ConnectorConfig) -> Result<Settings, ConfigError> {
    let path = config.get_str("path")?.to_owned();
    if path.is_empty() {
        return Err(ConfigError::new("path", "a file path").found("an empty string"));
    }
    let max_batch = config.get_u64_in("max_batch", 1, MAX_BATCH_LIMIT, DEFAULT_MAX_BATCH)?;
    let max_line_bytes = config.get_u64_in(
        "max_line_bytes",
        1,
        MAX_LINE_BYTES_LIMIT,
        DEFAULT_MAX_LINE_BYTES,
    )?;
    Ok(Settings {
        path_hash: id_hash(path.as_bytes()),
        path,
        // Both are bounded by the limits above, far below usize::MAX.
        max_batch: usize::try_from(max_batch).unwrap_or(usize::MAX),
        max_line_bytes: usize::try_from(max_line_bytes).unwrap_or(usize::MAX),
    })
}

#[async_trait]
impl Source for FileSource {
    async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError> {
        let settings = settings(&context.config)?;
        self.resume_at = context
            .committed_offset(&Partition::new(settings.path.clone()))
            .map_or(0, |offset| offset.0);
        self.settings = Some(settings);
        self.open = None;
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        for check in 0..=IDLE_CHECKS {
            let records = self.read_lines().await?;
            if !records.is_empty() || check == IDLE_CHECKS {
                return Ok(records);
            }
            tokio::time::sleep(IDLE_CHECK).await;
        }
        Ok(Vec::new())
    }

    /// Offsets are the worker's business; the file has nothing to be told.
    fn wants_commit(&self) -> bool {
        false
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        self.open = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{id_hash, line_id};

    /// Ids persist across versions (a re-read after an upgrade must still deduplicate), so
    /// the hash is pinned: a dependency update that changed its output would fail here.
    #[test]
    fn the_id_hash_is_pinned() {
        assert_eq!(id_hash(b""), 0x0338_dc4b_e2ce_cdae);
        assert_eq!(id_hash(b"a"), 0x599f_47df_33a2_e1eb);
        assert_eq!(id_hash(&[b'x'; 1024]), 0x12ea_15bc_dbfd_d3af);
    }

    #[test]
    fn a_line_id_is_the_prefix_the_end_offset_and_the_line_hash() {
        assert_eq!(
            line_id("file-p-1-2-", 0, b""),
            format!("file-p-1-2-0-{:016x}", id_hash(b""))
        );
        assert_eq!(
            line_id("file-p-1-2-", u64::MAX, b"line"),
            format!("file-p-1-2-{}-{:016x}", u64::MAX, id_hash(b"line"))
        );
        assert_eq!(
            line_id("f-", 1025, b"abc"),
            format!("f-1025-{:016x}", id_hash(b"abc"))
        );
    }
}
