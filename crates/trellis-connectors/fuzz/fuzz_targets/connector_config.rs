//! A connector config as the REST API and `trellis connect run` receive it (JSON from the
//! network or a file), through the plugin catalog's check: never a panic, an accepted config
//! names a known class, and every refusal names a key (the bad one, or `connector.class`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_connect::ConnectorConfig;
use trellis_connectors::plugins;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(config) = ConnectorConfig::from_value(value) else {
        return;
    };
    match plugins::check(&config) {
        Ok(plugin) => {
            assert!(plugins::plugin(plugin.class).is_some());
            assert_eq!(config.get_str("connector.class"), Ok(plugin.class));
        }
        Err(error) => assert!(!error.key.is_empty()),
    }
    // What an API answer or a log line shows must never fail to render.
    let _ = config.to_string();
});
