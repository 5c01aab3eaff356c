//! Unit tests for the embedded store's internals: the record codec and how it treats bad bytes
//! on disk. Behaviour through the public API is tested in `tests/it`.

use bytes::Bytes;
use redb::Database;

use super::record::{KVS, decode, encode};
use super::{EmbeddedError, EmbeddedStore};
use crate::{KeyValue, MetaError, MetadataStore};

fn kv(value: &'static [u8]) -> KeyValue {
    KeyValue {
        key: "k".to_owned(),
        value: Bytes::from_static(value),
        create_revision: 2,
        mod_revision: 7,
        version: 3,
    }
}

#[track_caller]
fn check_roundtrip(kv: KeyValue) {
    let record = encode(&kv);
    assert_eq!(
        record.len(),
        24 + kv.value.len(),
        "a record is a 24-byte header plus the value"
    );
    assert_eq!(decode(&kv.key, &record).expect("decodes"), kv);
}

#[track_caller]
fn check_corrupt(record: &[u8], expected_reason: &str) {
    match decode("k", record) {
        Err(EmbeddedError::CorruptRecord { key, reason }) => {
            assert_eq!(key, "k");
            assert_eq!(reason, expected_reason);
        }
        other => panic!("expected a corrupt record error, got {other:?}"),
    }
}

#[test]
fn roundtrips_empty_value() {
    check_roundtrip(kv(b""))
}

#[test]
fn roundtrips_binary_value() {
    check_roundtrip(kv(b"\x00\xff payload \x01"))
}

#[test]
fn rejects_empty_record() {
    check_corrupt(b"", "shorter than its 24-byte header")
}

#[test]
fn rejects_truncated_header() {
    check_corrupt(&encode(&kv(b""))[..23], "shorter than its 24-byte header")
}

#[test]
fn rejects_version_zero() {
    let mut record = encode(&kv(b"v"));
    record[16..24].copy_from_slice(&0u64.to_be_bytes());
    check_corrupt(&record, "version is 0")
}

#[test]
fn rejects_create_after_mod() {
    let mut record = encode(&kv(b"v"));
    record[0..8].copy_from_slice(&100u64.to_be_bytes());
    check_corrupt(&record, "create revision is after mod revision")
}

#[tokio::test]
async fn corrupt_row_on_disk_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.redb");
    drop(EmbeddedStore::open(&path).expect("open"));
    {
        let db = Database::create(&path).expect("raw open");
        let txn = db.begin_write().expect("begin_write");
        txn.open_table(KVS)
            .expect("open_table")
            .insert("bad", &b"short"[..])
            .expect("insert");
        txn.commit().expect("commit");
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    for res in [
        store.get("bad").await.map(|_| ()),
        store.range("").await.map(|_| ()),
        store.put("bad", "x".into()).await.map(|_| ()),
    ] {
        let Err(MetaError::Storage(source)) = res else {
            panic!("expected a storage error, got {res:?}");
        };
        assert!(
            source.to_string().contains("\"bad\" is corrupt"),
            "got {source}"
        );
    }
}
