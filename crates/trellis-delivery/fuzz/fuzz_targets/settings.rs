//! Fuzzes the subscription settings a client sends (`sink`, `delivery`, and a PATCH over
//! `delivery`). Accepted settings must validate, survive the store round trip, and never show a
//! secret in their API form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_delivery::config::{DeliverySpec, SinkSpec};

fuzz_target!(|input: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) else {
        return;
    };
    if let Ok(sink) = SinkSpec::from_json(&value, "sink") {
        assert_eq!(sink.validate("sink"), Ok(()));
        let stored = sink.to_stored_json();
        assert_eq!(SinkSpec::from_json(&stored, "sink").as_ref(), Ok(&sink));
        if let Some(secret) = &sink.secret {
            let shown = serde_json::to_string(&sink).expect("a sink serialises");
            assert!(!shown.contains(secret.as_str()));
        }
    }
    if let Ok(delivery) = DeliverySpec::from_json(&value, "delivery") {
        assert_eq!(delivery.validate("delivery"), Ok(()));
        let _ = DeliverySpec::default().patched(&value, "delivery");
        let _ = delivery.patched(&serde_json::json!({"batch": null}), "delivery");
    }
});
