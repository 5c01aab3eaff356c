use proptest::prelude::*;

use super::*;

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Always),
        Just(Durability::Never),
        any::<u64>().prop_map(|ms| Durability::Interval(Duration::from_millis(ms))),
    ]
}

proptest! {
    #[test]
    fn settings_kept_in_a_description_read_back_as_written(
        topic in "[A-Za-z0-9._-]{1,40}",
        durability in durability(),
        segment_bytes in any::<u64>(),
        retention_age in proptest::option::of(any::<u64>().prop_map(Duration::from_nanos)),
    ) {
        let settings = TopicSettings { durability, segment_bytes, retention_age, ..TopicSettings::default() };
        prop_assert_eq!(
            parse_description(&describe(&topic, &settings)),
            Some(Described {
                durability,
                segment_bytes,
                // Only an age too short for the stream's max_age is kept in the description.
                retention_age: retention_age.filter(|age| *age < MIN_MAX_AGE),
            })
        );
    }

    #[test]
    fn any_description_parses_without_panicking(description in ".{0,200}") {
        fuzz_stream_description(&description);
        fuzz_stream_description(&format!("{DESCRIPTION_MARK} t; {description}"));
    }
}

#[test]
fn descriptions_not_made_by_trellis_are_not_topics() {
    for description in [
        "",
        "orders stream",
        "trellis topic t",
        "trellis topic t; durability=always",
        "trellis topic t; durability=sometimes; segment_bytes=1",
        "trellis topic t; durability=always; segment_bytes=-1",
        "trellis topic t; durability=interval:x; segment_bytes=1",
    ] {
        assert_eq!(parse_description(description), None, "{description:?}");
    }
}

/// A wait that outlives a lost connection could wait for ever on a consumer the server forgot
/// meanwhile: it ends as `Unavailable` instead, and the caller waits again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_as_unavailable_when_the_connection_is_lost() {
    let Some(mut nats) = trellis_test_support::NatsServer::start() else {
        return;
    };
    let store = JetStreamStore::connect(JetStreamOptions::new(nats.url()))
        .await
        .expect("connect");
    let topic = store
        .create_topic("t", TopicSettings::default())
        .await
        .expect("create");
    let waiting = tokio::spawn(async move { topic.wait_for(0).await });
    // Lost only once the wait is under way: its consumer exists.
    let mut consumers = 0;
    for _ in 0..1000 {
        let mut stream = store
            .shared
            .context
            .get_stream(stream_name("t"))
            .await
            .expect("stream");
        consumers = stream.info().await.expect("info").state.consumer_count;
        if consumers > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(consumers, 1, "the wait's consumer");
    tokio::task::block_in_place(|| nats.stop());
    let answer = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait ends")
        .expect("the task ends");
    assert!(
        matches!(answer, Err(StorageError::Unavailable(_))),
        "{answer:?}"
    );
    assert!(!store.available());
}

/// A wait for an offset past the next one resolves only once that offset is stored, not on
/// the next record (where the server starts a consumer asked to start past the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_beyond_the_next_offset_is_not_ended_by_the_next_record() {
    let Some(nats) = trellis_test_support::NatsServer::start() else {
        return;
    };
    let store = JetStreamStore::connect(JetStreamOptions::new(nats.url()))
        .await
        .expect("connect");
    let topic = store
        .create_topic("t", TopicSettings::default())
        .await
        .expect("create");
    let waiter = Arc::clone(&topic);
    let mut waiting = tokio::spawn(async move { waiter.wait_for(2).await });
    for n in 0..2u8 {
        topic
            .append(vec![AppendRecord::new(vec![n])])
            .await
            .expect("append");
        // Each record reaches the waiter (its consumer delivers it) well within this.
        let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
        assert!(early.is_err(), "the wait ended at offset {n}: {early:?}");
    }
    topic
        .append(vec![AppendRecord::new(vec![2])])
        .await
        .expect("append");
    let answer = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait ends")
        .expect("the task ends");
    assert!(answer.is_ok(), "{answer:?}");
}

#[test]
fn a_read_that_timed_out_or_found_no_responder_is_unavailability() {
    use jetstream::context::{RequestError, RequestErrorKind};
    for kind in [RequestErrorKind::TimedOut, RequestErrorKind::NoResponders] {
        let error = stream::RawMessageError::with_source(
            stream::RawMessageErrorKind::Other,
            RequestError::new(kind),
        );
        assert!(
            matches!(raw_message_error(error), StorageError::Unavailable(_)),
            "{kind:?}"
        );
    }
    let error = stream::RawMessageError::with_source(
        stream::RawMessageErrorKind::Other,
        RequestError::new(RequestErrorKind::Other),
    );
    assert!(matches!(raw_message_error(error), StorageError::Backend(_)));
    let error = stream::RawMessageError::new(stream::RawMessageErrorKind::InvalidSubject);
    assert!(matches!(raw_message_error(error), StorageError::Backend(_)));
}
