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
    ) {
        let settings = TopicSettings { durability, segment_bytes, ..TopicSettings::default() };
        prop_assert_eq!(
            parse_description(&describe(&topic, &settings)),
            Some((durability, segment_bytes))
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
