use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use proptest::prelude::*;

use super::*;

const LIMITS: BatchLimits = BatchLimits {
    max_events: 4,
    max_bytes: 100,
};
const MAX_IN_FLIGHT: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// The application sends a record of this many bytes.
    Push(usize),
    /// Linger over, or a flush.
    Seal,
    /// The producer sends the next batch if a slot is free.
    Send,
    /// The server handles the oldest batch it received on this connection; with `refuse`, the
    /// records whose bit is set are refused with a transient error and not stored.
    Process { refuse: u8 },
    /// One of the answers the server produced reaches the producer (answers may come out of order).
    Deliver(usize),
    /// The connection breaks: batches and answers on the wire are lost.
    Fail,
}

fn op(transient_events: bool) -> impl Strategy<Value = Op> {
    let refuse = if transient_events {
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()].boxed()
    } else {
        Just(0u8).boxed()
    };
    prop_oneof![
        6 => (1usize..60).prop_map(Op::Push),
        1 => Just(Op::Seal),
        4 => Just(Op::Send),
        3 => refuse.prop_map(|refuse| Op::Process { refuse }),
        3 => (0usize..8).prop_map(Op::Deliver),
        1 => Just(Op::Fail),
    ]
}

/// The server side of the model: what it stored (deduplicated by record number, as Trellis
/// deduplicates by event id) and the connection's wire.
#[derive(Default)]
struct Server {
    log: Vec<u64>,
    stored: HashSet<u64>,
    /// Batches received on the current connection and not processed yet.
    inbox: Vec<(u64, Vec<u64>)>,
    /// Answers produced and not delivered yet: batch id and, per record, whether it was refused.
    answers: Vec<(u64, Vec<bool>)>,
}

impl Server {
    fn process(&mut self, refuse: u8) {
        if self.inbox.is_empty() {
            return;
        }
        let (id, records) = self.inbox.remove(0);
        let mut refused = Vec::new();
        for (index, record) in records.into_iter().enumerate() {
            let refuse_this = refuse & (1 << (index % 8)) != 0;
            if !refuse_this && self.stored.insert(record) {
                self.log.push(record);
            }
            refused.push(refuse_this);
        }
        self.answers.push((id, refused));
    }
}

struct Client {
    queue: BatchQueue<u64>,
    next_record: u64,
    resolved: Vec<u64>,
}

impl Client {
    fn deliver(&mut self, server: &mut Server, index: usize) {
        if server.answers.is_empty() {
            return;
        }
        let (id, refused) = server.answers.remove(index % server.answers.len());
        let mut refused = refused.into_iter();
        let resolved = &mut self.resolved;
        let settled = self.queue.settle(id, |record| {
            if refused.next().unwrap_or(true) {
                Some(record)
            } else {
                resolved.push(record);
                None
            }
        });
        assert_ne!(
            settled,
            Settled::Unknown,
            "answers on the wire belong to batches in flight"
        );
        if settled == Settled::Retry {
            // What the producer does on a transient per-record error: give up the connection.
            self.fail(server);
        }
    }

    fn send(&mut self, server: &mut Server, now: Instant) {
        if self.queue.n_in_flight() >= MAX_IN_FLIGHT {
            return;
        }
        if let Some((id, entries)) = self.queue.send_next(now) {
            assert!(entries.len() <= LIMITS.max_events);
            let bytes: usize = entries.iter().map(|entry| entry.bytes).sum();
            assert!(
                bytes <= LIMITS.max_bytes || entries.len() == 1,
                "{bytes} bytes"
            );
            server
                .inbox
                .push((id, entries.iter().map(|entry| entry.item).collect()));
        }
    }

    fn fail(&mut self, server: &mut Server) {
        server.inbox.clear();
        server.answers.clear();
        self.queue.requeue_in_flight();
    }
}

fn run(ops: Vec<Op>) -> (Server, Client) {
    let now = Instant::now();
    let mut server = Server::default();
    let mut client = Client {
        queue: BatchQueue::new(LIMITS),
        next_record: 0,
        resolved: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Push(bytes) => {
                client.queue.push(client.next_record, bytes, now);
                client.next_record += 1;
            }
            Op::Seal => client.queue.seal_open(),
            Op::Send => client.send(&mut server, now),
            Op::Process { refuse } => server.process(refuse),
            Op::Deliver(index) => client.deliver(&mut server, index),
            Op::Fail => client.fail(&mut server),
        }
    }
    // Then the network heals and the producer drains its queue.
    client.queue.seal_open();
    let mut rounds = 0;
    while !client.queue.is_empty() {
        rounds += 1;
        assert!(rounds < 100_000, "the queue does not drain");
        client.send(&mut server, now);
        server.process(0);
        client.deliver(&mut server, 0);
    }
    (server, client)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Connections that break at random never reorder, drop or duplicate what the server stores,
    /// and every record is answered exactly once.
    #[test]
    fn failures_never_reorder_drop_or_duplicate(ops in proptest::collection::vec(op(false), 0..200)) {
        let (server, client) = run(ops);
        let all: Vec<u64> = (0..client.next_record).collect();
        prop_assert_eq!(&server.log, &all);
        let mut resolved = client.resolved.clone();
        resolved.sort_unstable();
        prop_assert_eq!(resolved, all);
    }

    /// Records refused one by one with a transient error are sent again: none is lost or stored
    /// twice. (Their order in the log is the order the server accepted them in.)
    #[test]
    fn refused_records_are_retried_until_stored(ops in proptest::collection::vec(op(true), 0..200)) {
        let (server, client) = run(ops);
        let stored: BTreeSet<u64> = server.log.iter().copied().collect();
        prop_assert_eq!(stored.len(), server.log.len());
        prop_assert_eq!(stored, (0..client.next_record).collect::<BTreeSet<u64>>());
        prop_assert_eq!(client.resolved.len() as u64, client.next_record);
    }
}

#[test]
fn a_batch_is_sealed_at_the_event_count() {
    let now = Instant::now();
    let mut queue = BatchQueue::new(LIMITS);
    for record in 0..5u64 {
        queue.push(record, 1, now);
    }
    let (_, first) = queue.send_next(now).expect("a full batch is sealed");
    assert_eq!(first.len(), 4);
    assert!(queue.send_next(now).is_none(), "the fifth record lingers");
    assert_eq!(queue.open_since(), Some(now));
}

#[test]
fn a_record_too_big_for_any_batch_travels_alone() {
    let now = Instant::now();
    let mut queue = BatchQueue::new(LIMITS);
    queue.push(0u64, 10, now);
    queue.push(1, 500, now);
    queue.push(2, 10, now);
    queue.seal_open();
    let sizes: Vec<usize> =
        std::iter::from_fn(|| queue.send_next(now).map(|(_, b)| b.len())).collect();
    assert_eq!(sizes, [1, 1, 1]);
}

#[test]
fn failed_batches_go_back_before_newer_ones_with_new_ids() {
    let now = Instant::now();
    let mut queue = BatchQueue::new(BatchLimits {
        max_events: 1,
        max_bytes: 100,
    });
    for record in 0..4u64 {
        queue.push(record, 1, now);
    }
    let first = queue.send_next(now).map(|(id, _)| id).expect("sealed");
    let second = queue.send_next(now).map(|(id, _)| id).expect("sealed");
    assert_eq!(queue.settle(second, |_| None), Settled::Done);
    assert_eq!(queue.requeue_in_flight(), 1);
    assert!(queue.has_resent());
    let (id, entries) = queue.send_next(now).expect("the failed batch first");
    assert!(id != first && id != second);
    assert_eq!(entries[0].item, 0);
    assert_eq!(queue.settle(id, |_| None), Settled::Done);
    assert!(!queue.has_resent());
    assert_eq!(queue.send_next(now).map(|(_, b)| b[0].item), Some(2));
}

#[test]
fn records_that_timed_out_leave_only_while_waiting() {
    let now = Instant::now();
    let mut queue = BatchQueue::new(BatchLimits {
        max_events: 2,
        max_bytes: 100,
    });
    for record in 0..5u64 {
        queue.push(record, 1, now);
    }
    queue.send_next(now).expect("sealed");
    queue.retain_waiting(|record| *record % 2 == 1);
    let id = queue.send_next(now).map(|(id, b)| {
        assert_eq!(b.iter().map(|e| e.item).collect::<Vec<_>>(), [3]);
        id
    });
    assert!(id.is_some());
    assert_eq!(queue.open_since(), None, "record 4 timed out too");
    assert_eq!(queue.n_in_flight(), 2, "records 0 and 1 stay in flight");
}
