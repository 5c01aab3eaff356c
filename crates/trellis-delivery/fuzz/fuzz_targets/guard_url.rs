//! Fuzzes the address guard's reading of webhook URLs from API clients: it never panics, a host
//! it reads as an IP address is judged as that address, and the canonical spelling of that
//! address reads back as the same address (so the connect-time check, which sees the host the
//! same way, cannot disagree with the configuration-time one).

#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_delivery::guard::{AddressGuard, GuardError, literal_address};

fuzz_target!(|input: &str| {
    let guard = AddressGuard::default();
    let literal = literal_address(input);
    if let Ok(Some(ip)) = literal {
        let canonical = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        assert_eq!(literal_address(&canonical), Ok(Some(ip)));
    }
    let Ok(url) = format!("http://{input}/hook").parse::<http::Uri>() else {
        return;
    };
    let verdict = guard.check_url(&url);
    // The URL's host may be a part of the input only (a port, a path); judge by what it is.
    let Some(host) = url.host() else {
        return;
    };
    match literal_address(host) {
        Ok(Some(ip)) => assert_eq!(verdict, guard.check(ip).map_err(GuardError::Denied)),
        Ok(None) => assert_eq!(verdict, Ok(())),
        Err(error) => assert_eq!(verdict, Err(error)),
    }
});
