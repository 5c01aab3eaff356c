//! The embedded store's on-disk layout: two redb tables and the byte format of a stored key.
//!
//! - `kvs` (`&str` → `&[u8]`): one row per live key. The row is a fixed 24-byte header
//!   (`create_revision`, `mod_revision`, `version`, each a big-endian `u64`) followed by the
//!   value bytes. A deleted key has no row.
//! - `meta` (`&str` → `u64`): `revision`, the store revision (1 for an empty store, as in etcd),
//!   `format`, the layout version ([`FORMAT_VERSION`]), and `last_lease`, the last lease id
//!   granted (ids are never reused, even across reopens).
//! - `leases` (`u64` → `u64`): one row per live lease, id → TTL in seconds. Deadlines are not
//!   stored: a reopen ends every lease it finds (their holder was a process that is gone).
//! - `lease_keys` (`&str` → `u64`): key → the lease it was put under, for keys under a lease.
//!   Older files have neither lease table; they are created on open, so the format is unchanged.
//!
//! History is deliberately not on disk: watch history lives in memory (see `feed.rs`).
//! Decoding never trusts the file: a short or inconsistent row is an error, never a panic.

use bytes::Bytes;
use redb::TableDefinition;

use super::EmbeddedError;
use crate::KeyValue;

pub(super) const KVS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("kvs");
pub(super) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
pub(super) const LEASES: TableDefinition<'static, u64, u64> = TableDefinition::new("leases");
pub(super) const LEASE_KEYS: TableDefinition<'static, &str, u64> =
    TableDefinition::new("lease_keys");
pub(super) const REVISION_KEY: &str = "revision";
pub(super) const LAST_LEASE_KEY: &str = "last_lease";
pub(super) const FORMAT_KEY: &str = "format";
/// Bump when the layout above changes; `open` refuses files with another format.
pub(super) const FORMAT_VERSION: u64 = 1;
/// etcd's store revision for an empty store. The first write gets revision 2.
pub(super) const EMPTY_STORE_REVISION: u64 = 1;

const HEADER_LEN: usize = 24;

pub(super) fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + kv.value.len());
    record.extend_from_slice(&kv.create_revision.to_be_bytes());
    record.extend_from_slice(&kv.mod_revision.to_be_bytes());
    record.extend_from_slice(&kv.version.to_be_bytes());
    record.extend_from_slice(&kv.value);
    record
}

pub(super) fn decode(key: &str, record: &[u8]) -> Result<KeyValue, EmbeddedError> {
    let corrupt = |reason: &'static str| EmbeddedError::CorruptRecord {
        key: key.to_owned(),
        reason,
    };
    let Some((create_revision, rest)) = take_u64(record) else {
        return Err(corrupt("shorter than its 24-byte header"));
    };
    let Some((mod_revision, rest)) = take_u64(rest) else {
        return Err(corrupt("shorter than its 24-byte header"));
    };
    let Some((version, value)) = take_u64(rest) else {
        return Err(corrupt("shorter than its 24-byte header"));
    };
    if version == 0 {
        return Err(corrupt("version is 0"));
    }
    if create_revision > mod_revision {
        return Err(corrupt("create revision is after mod revision"));
    }
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        create_revision,
        mod_revision,
        version,
    })
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}
