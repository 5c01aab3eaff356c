//! Where a record came from in its source system. Offsets are committed per partition, so a
//! restart resumes each partition right after its last committed record.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stream of records within a source that has its own order: a file, a topic, an HTTP
/// endpoint's sequence of requests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partition(pub String);

impl Partition {
    pub fn new(name: impl Into<String>) -> Partition {
        Partition(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A place in a partition, in the source's own unit (a byte offset in a file, an offset in a
/// topic). Committing offset `n` means: resume at `n`. Offsets grow within a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A record's place: its partition and the offset to resume at once the record is committed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub partition: Partition,
    pub offset: Offset,
}

impl Position {
    pub fn new(partition: impl Into<String>, offset: u64) -> Position {
        Position {
            partition: Partition::new(partition),
            offset: Offset(offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_through_json() {
        let position = Position::new("/var/log/app.log", 4096);
        let json = serde_json::to_string(&position).expect("serialize");
        assert_eq!(json, r#"{"partition":"/var/log/app.log","offset":4096}"#);
        let back: Position = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, position);
    }
}
