//! Webhook URLs that spell a denied address in a way a naive check misses.

/// Hosts that numeric-host parsing, a trailing dot, or an IPv6 translator (NAT64, 6to4) turn
/// into 127.0.0.1, 169.254.169.254 or 0.0.0.0. Where loopback is denied as well as the default
/// ranges, every one must be refused; the delivery engine and the API check the same list.
pub const DENIED_ADDRESS_SPELLINGS: &[&str] = &[
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://169.254.169.254./",
    "http://0:8080/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
];
