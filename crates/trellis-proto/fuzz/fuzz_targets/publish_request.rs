//! Fuzzes what the runtime does with a `PublishRequest` off the wire: protobuf decoding, then
//! `event_from_proto` on each event. Beyond not panicking, every event it accepts must survive
//! the way back: converting it to protobuf and again to a `CloudEvent` gives the same event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trellis_proto::convert::event_from_proto;
use trellis_proto::v1::{self, PublishRequest};

fuzz_target!(|body: &[u8]| {
    let Ok(request) = PublishRequest::decode(body) else {
        return;
    };
    for event in request.events {
        if let Ok(event) = event_from_proto(event) {
            let again = event_from_proto(v1::CloudEvent::from(&event));
            assert_eq!(again.as_ref(), Ok(&event));
        }
    }
});
