use super::*;
use hyper_util::client::legacy::connect::HttpConnector;
use std::str::FromStr;
use tower_service::Service;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid IP address")
}

fn net(text: &str) -> IpNet {
    text.parse().expect("valid network")
}

fn uri(text: &str) -> http::Uri {
    text.parse().expect("valid URI")
}

/// The error for `address` caught by the deny entry `range`.
fn denied(address: &str, range: &str) -> GuardError {
    GuardError::Denied(DeniedAddress {
        address: ip(address),
        range: net(range),
    })
}

/// Asserts that `guard` denies each address by the range given with it.
#[track_caller]
fn assert_denied_by(guard: &AddressGuard, table: &[(&str, &str)]) {
    for &(address, range) in table {
        assert_eq!(
            guard.check(ip(address)),
            Err(DeniedAddress {
                address: ip(address),
                range: net(range),
            }),
            "{address}"
        );
    }
}

#[test]
fn default_list_is_as_documented() {
    let expected: Vec<IpNet> = [
        "169.254.0.0/16",
        "fe80::/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "ff00::/8",
        "255.255.255.255/32",
        "::/128",
    ]
    .into_iter()
    .map(net)
    .collect();
    assert_eq!(AddressGuard::default_deny_list(), expected);
    assert_eq!(AddressGuard::default().deny_list(), expected.as_slice());
}

#[test]
fn default_allows_loopback_and_private_ranges() {
    let guard = AddressGuard::default();
    for address in [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.10",
        "100.64.0.1",
        "8.8.8.8",
        "169.253.255.255",
        "169.255.0.0",
        "223.255.255.255",
        "1.0.0.0",
        "::1",
        "fd00::1",
        "2001:db8::1",
        "fec0::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
    ] {
        assert_eq!(guard.check(ip(address)), Ok(()), "{address}");
    }
}

#[test]
fn default_denies_metadata_link_local_and_oddities() {
    let guard = AddressGuard::default();
    let table = [
        ("169.254.169.254", "169.254.0.0/16"),
        ("169.254.0.1", "169.254.0.0/16"),
        ("fe80::1", "fe80::/10"),
        ("febf::1", "fe80::/10"),
        ("0.0.0.0", "0.0.0.0/8"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("224.0.0.1", "224.0.0.0/4"),
        ("239.255.255.250", "224.0.0.0/4"),
        ("255.255.255.255", "255.255.255.255/32"),
        ("ff02::1", "ff00::/8"),
        ("::", "::/128"),
        ("::ffff:169.254.169.254", "169.254.0.0/16"),
        ("::ffff:0.0.0.0", "0.0.0.0/8"),
        ("::ffff:224.0.0.1", "224.0.0.0/4"),
        // IPv4-compatible (deprecated) form.
        ("::169.254.169.254", "169.254.0.0/16"),
    ];
    assert_denied_by(&guard, &table);
}

#[test]
fn custom_lists_replace_the_default() {
    let guard = AddressGuard::new(vec![net("10.0.0.0/8"), net("::1/128")]);
    assert!(guard.check(ip("10.9.8.7")).is_err());
    assert!(guard.check(ip("::ffff:10.9.8.7")).is_err());
    assert!(guard.check(ip("::1")).is_err());
    assert_eq!(guard.check(ip("169.254.169.254")), Ok(()));
    assert_eq!(AddressGuard::new(Vec::new()).check(ip("0.0.0.0")), Ok(()));
    // A deny entry written in IPv6 catches the mapped form directly too.
    let mapped = AddressGuard::new(vec![net("::ffff:0:0/96")]);
    assert!(mapped.check(ip("::ffff:8.8.8.8")).is_err());
}

#[test]
fn check_url_cases() {
    let guard = AddressGuard::default();
    for allowed in [
        "http://example.com/hook",
        "https://example.com:8443/hook?x=1",
        "HTTPS://EXAMPLE.COM/",
        "http://127.0.0.1:8080/",
        "http://10.0.0.5/",
        "http://[::1]:9000/",
        "http://user:pw@example.com/",
        // Names are checked at connect time, not here.
        "http://metadata.google.internal/",
    ] {
        assert_eq!(guard.check_url(&uri(allowed)), Ok(()), "{allowed}");
    }

    let table = [
        (
            "http://169.254.169.254/latest/meta-data/",
            denied("169.254.169.254", "169.254.0.0/16"),
        ),
        ("https://[fe80::1]:443/", denied("fe80::1", "fe80::/10")),
        (
            "http://[::ffff:169.254.169.254]/",
            denied("::ffff:169.254.169.254", "169.254.0.0/16"),
        ),
        ("http://0.0.0.0:80/", denied("0.0.0.0", "0.0.0.0/8")),
        ("http://[::]/", denied("::", "::/128")),
        ("http://224.0.0.1/", denied("224.0.0.1", "224.0.0.0/4")),
        (
            "ftp://example.com/",
            GuardError::UnsupportedScheme {
                scheme: "ftp".to_owned(),
            },
        ),
        (
            "file://localhost/etc/passwd",
            GuardError::UnsupportedScheme {
                scheme: "file".to_owned(),
            },
        ),
        (
            "gopher://127.0.0.1:6379/",
            GuardError::UnsupportedScheme {
                scheme: "gopher".to_owned(),
            },
        ),
        ("mailto:ops@example.com", GuardError::MissingScheme),
        ("/hook", GuardError::MissingScheme),
        ("example.com", GuardError::MissingScheme),
    ];
    for (url, error) in table {
        assert_eq!(guard.check_url(&uri(url)), Err(error), "{url}");
    }
}

#[test]
fn check_url_rejects_a_missing_host() {
    // `http::Uri` refuses "http://" and "http:///x" outright; build one with parts instead.
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/hook"));
    // If `http` refuses this too, nothing can reach check_url without a host.
    if let Ok(url) = http::Uri::from_parts(parts) {
        assert_eq!(
            AddressGuard::default().check_url(&url),
            Err(GuardError::MissingHost)
        );
    }
}

#[test]
fn error_messages_name_the_address_and_range() {
    let error = AddressGuard::default()
        .check_url(&uri("http://169.254.169.254/"))
        .expect_err("denied");
    assert_eq!(
        error.to_string(),
        "address 169.254.169.254 is in the denied range 169.254.0.0/16"
    );
}

fn loopback_guard() -> Arc<AddressGuard> {
    Arc::new(AddressGuard::new(vec![net("127.0.0.0/8"), net("::1/128")]))
}

#[tokio::test]
async fn resolver_resolves_localhost_with_the_default_guard() {
    let mut resolver = GuardedResolver::new(Arc::new(AddressGuard::default()));
    let name = Name::from_str("localhost").expect("valid name");
    let addresses: Vec<SocketAddr> = resolver.call(name).await.expect("resolves").collect();
    assert!(!addresses.is_empty());
    assert!(addresses.iter().all(|address| address.ip().is_loopback()));
}

#[tokio::test]
async fn resolver_refuses_a_host_whose_every_address_is_denied() {
    let mut resolver = GuardedResolver::new(loopback_guard());
    let name = Name::from_str("localhost").expect("valid name");
    let error = resolver.call(name).await.expect_err("refused");
    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
    let message = error.to_string();
    assert!(
        message.starts_with("refusing to connect to localhost: address "),
        "{message}"
    );
    let denied_host = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<DeniedHost>())
        .expect("a DeniedHost inside");
    assert_eq!(denied_host.host, "localhost");
    assert!(!denied_host.denied.is_empty());
}

#[tokio::test]
async fn resolver_checks_numeric_hosts_that_are_not_canonical_ips() {
    // hyper-util hands anything that is not a canonical IP literal to the resolver, and the
    // system resolver reads "2852039166" as 169.254.169.254 (inet_aton). The guard must see
    // the address, not the spelling.
    let resolver = GuardedResolver::new(Arc::new(AddressGuard::default()));
    match resolver.resolve("2852039166").await {
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}"),
        Ok(addresses) => {
            // A resolver that does not take this spelling must at least not return the
            // denied address.
            assert!(
                addresses
                    .iter()
                    .all(|address| { AddressGuard::default().check(address.ip()).is_ok() })
            );
        }
    }
}

#[tokio::test]
async fn connector_refuses_a_denied_name_and_connects_an_allowed_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let target = uri(&format!("http://localhost:{port}/"));

    let mut allowed =
        HttpConnector::new_with_resolver(GuardedResolver::new(Arc::new(AddressGuard::default())));
    let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    allowed.call(target.clone()).await.expect("connects");
    accept.await.expect("accept task").expect("accepted");

    let mut refused = HttpConnector::new_with_resolver(GuardedResolver::new(loopback_guard()));
    let error = refused.call(target).await.expect_err("refused");
    // hyper-util wraps the resolver's error; the chain still carries the DeniedHost.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut found = false;
    while let Some(current) = source {
        found |= current
            .to_string()
            .contains("refusing to connect to localhost");
        source = current.source();
    }
    assert!(found, "{error:?}");
}

/// A guard that also denies loopback, as operators exposing Trellis to tenants configure it.
fn loopback_too() -> AddressGuard {
    let mut deny = AddressGuard::default_deny_list();
    deny.extend([net("127.0.0.0/8"), net("::1/128")]);
    AddressGuard::new(deny)
}

#[test]
fn ipv4_hosts_are_read_by_the_whatwg_rules() {
    let table = [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("169.254.169.254.", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("00", "0.0.0.0"),
        ("10.0.0.5", "10.0.0.5"),
        ("%31%32%37.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),
    ];
    for (host, address) in table {
        assert_eq!(literal_address(host), Ok(Some(ip(address))), "{host}");
    }
    for name in [
        "example.com",
        "example.com.",
        "localhost",
        "metadata.google.internal",
        "my_host.internal",
        "xn--bcher-kva.example",
        "0x7f.example",
        "1.2.3.4.example",
        "a-b.c",
        // Two trailing dots: the last label is empty, so by the rules this is a (bad) name,
        // left to the resolver, whose answer is checked.
        "127.0.0.1..",
    ] {
        assert_eq!(literal_address(name), Ok(None), "{name}");
    }
    for invalid in [
        "1.2.3.256",
        "256.0.0.1",
        "1.2.3.4.5",
        "4294967296",
        "0x100000000",
        "example.123",
        "09.0.0.1",
        "[fe80::1%25eth0]",
        "[::1",
        "a b",
    ] {
        assert_eq!(
            literal_address(invalid),
            Err(GuardError::InvalidHost {
                host: invalid.to_owned()
            }),
            "{invalid}"
        );
    }
}

#[test]
fn check_url_refuses_every_spelling_of_a_denied_ipv4_address() {
    // The spellings the delivery-time check always refused, by the default list.
    let default = AddressGuard::default();
    for (url, address, range) in [
        (
            "http://169.254.169.254./",
            "169.254.169.254",
            "169.254.0.0/16",
        ),
        ("http://2852039166/", "169.254.169.254", "169.254.0.0/16"),
        (
            "http://0xa9fea9fe/latest",
            "169.254.169.254",
            "169.254.0.0/16",
        ),
        (
            "http://0251.0376.0251.0376/",
            "169.254.169.254",
            "169.254.0.0/16",
        ),
        ("http://169.254.43518/", "169.254.169.254", "169.254.0.0/16"),
        ("http://0:8080/", "0.0.0.0", "0.0.0.0/8"),
        ("https://0x0/", "0.0.0.0", "0.0.0.0/8"),
        ("http://0xe0000001/", "224.0.0.1", "224.0.0.0/4"),
        (
            "http://4294967295/",
            "255.255.255.255",
            "255.255.255.255/32",
        ),
    ] {
        assert_eq!(
            default.check_url(&uri(url)),
            Err(denied(address, range)),
            "{url}"
        );
    }
    // And loopback, where the operator denies it.
    let strict = loopback_too();
    for url in [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let expected = if url.contains("::ffff") {
            Err(denied("::ffff:127.0.0.1", "127.0.0.0/8"))
        } else {
            Err(denied("127.0.0.1", "127.0.0.0/8"))
        };
        assert_eq!(strict.check_url(&uri(url)), expected, "{url}");
    }
    // The same spellings of an allowed address stay allowed.
    for url in [
        "http://2130706433/",
        "http://127.1:8080/",
        "http://0x0a000005/",
    ] {
        assert_eq!(default.check_url(&uri(url)), Ok(()), "{url}");
    }
}

#[test]
fn check_url_refuses_hosts_that_are_neither_names_nor_addresses() {
    for (url, host) in [
        ("http://1.2.3.256/", "1.2.3.256"),
        ("http://example.123/", "example.123"),
        ("http://4294967296/", "4294967296"),
    ] {
        assert_eq!(
            AddressGuard::default().check_url(&uri(url)),
            Err(GuardError::InvalidHost {
                host: host.to_owned()
            }),
            "{url}"
        );
    }
}

#[test]
fn nat64_and_6to4_addresses_are_checked_as_the_ipv4_address_they_carry() {
    let guard = AddressGuard::default();
    let table = [
        ("64:ff9b::a9fe:a9fe", "169.254.0.0/16"),
        ("64:ff9b::169.254.169.254", "169.254.0.0/16"),
        ("64:ff9b::0:0", "0.0.0.0/8"),
        ("64:ff9b::e000:1", "224.0.0.0/4"),
        ("64:ff9b:1::a9fe:a9fe", "169.254.0.0/16"),
        ("64:ff9b:1:ffff::a9fe:1", "169.254.0.0/16"),
        ("2002:a9fe:a9fe::", "169.254.0.0/16"),
        ("2002:a9fe:a9fe:1234::1", "169.254.0.0/16"),
        ("2002::1", "0.0.0.0/8"),
        ("2002:e000:1::", "224.0.0.0/4"),
    ];
    assert_denied_by(&guard, &table);
    assert_eq!(
        guard.check_url(&uri("http://[64:ff9b::a9fe:a9fe]/")),
        Err(denied("64:ff9b::a9fe:a9fe", "169.254.0.0/16"))
    );
    // Carrying an allowed address, or outside the prefixes, they pass.
    for address in [
        "64:ff9b::808:808",
        "64:ff9b:1::808:808",
        "2002:808:808::1",
        "64:ff9c::a9fe:a9fe",
        "64:ff9b:2::a9fe:a9fe",
        "2003:a9fe:a9fe::",
        "2001:db8::a9fe:a9fe",
    ] {
        assert_eq!(guard.check(ip(address)), Ok(()), "{address}");
    }
    // Where loopback is denied, so is loopback behind a translator or relay.
    let strict = loopback_too();
    for address in ["64:ff9b::7f00:1", "2002:7f00:1::"] {
        assert!(strict.check(ip(address)).is_err(), "{address}");
    }
}

#[test]
fn legitimate_hosts_are_still_accepted() {
    let guard = AddressGuard::default();
    for url in [
        "https://hooks.example.com/in",
        "https://hooks.example.com./in",
        "http://my_service.internal:8080/",
        "http://10.1.2.3/",
        "http://192.168.0.10:9000/hook",
        "http://[2001:db8::1]/",
        "http://[fd00::5]:8443/",
        "http://8.8.8.8/",
        "https://1.1.1.1/dns",
        "http://[64:ff9b::808:808]/",
        "https://xn--bcher-kva.example/",
        "http://localhost:3000/",
    ] {
        assert_eq!(guard.check_url(&uri(url)), Ok(()), "{url}");
    }
}

#[tokio::test]
async fn the_resolver_connects_a_numeric_host_to_the_address_the_rules_give() {
    let resolver = GuardedResolver::new(Arc::new(AddressGuard::default()));
    // Not looked up: the address the configuration check saw.
    for (host, address) in [("2130706433", "127.0.0.1"), ("127.1", "127.0.0.1")] {
        let resolved = resolver.resolve(host).await.expect("allowed");
        assert_eq!(resolved, vec![SocketAddr::new(ip(address), 0)], "{host}");
    }
    for host in ["169.254.169.254.", "0", "0x7f000001"] {
        let strict = GuardedResolver::new(Arc::new(loopback_too()));
        let error = strict.resolve(host).await.expect_err("denied");
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{host}");
    }
}
