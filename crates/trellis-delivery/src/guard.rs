//! The target address guard: webhook URLs are user input, so Trellis refuses to send to address
//! ranges on a deny list. By default that is where cloud metadata servers live (link-local
//! 169.254.0.0/16 and fe80::/10), plus addresses that are never a single webhook receiver
//! (0.0.0.0/8, ::, broadcast, multicast).
//!
//! Loopback and private ranges are allowed by default, because webhook receivers on the same host
//! or the same VPC are the common case for an event mesh; operators who expose Trellis to
//! untrusted tenants add them to the deny list.
//!
//! The check runs twice: [`AddressGuard::check_url`] when a subscription is configured (literal IP
//! hosts, scheme), and [`GuardedResolver`] at every connect, after DNS. The second is the one that
//! matters for names: a name can resolve to 169.254.169.254 the next time it is looked up (DNS
//! rebinding), and checking only at configuration time would miss that. Redirects are never
//! followed (see `classify`), so no other address is ever connected to.
//!
//! Both checks read a host the same way, by the WHATWG URL host rules ([`literal_address`], the
//! `url` crate's parser): `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` and `127.0.0.1.` are
//! all 127.0.0.1, and `0` is 0.0.0.0. The system resolver reads such spellings much the same way
//! (`inet_aton`), so a check that took them for names would let the configuration through and
//! refuse only at delivery; worse, an address that reached the resolver unparsed would depend on
//! whatever that resolver makes of it. Such a host is therefore never looked up: the resolver
//! connects to the address the rules give, the one the configuration check saw.
//!
//! IPv6 addresses that carry an IPv4 address are also checked as that address, because that is
//! where their packets end up: IPv4-mapped and IPv4-compatible ones (`::ffff:a.b.c.d`,
//! `::a.b.c.d`), NAT64 (`64:ff9b::/96`, RFC 6052, and the local-use `64:ff9b:1::/48`, RFC 8215,
//! read with the /96 layout: the IPv4 address in the last 32 bits) and 6to4 (`2002::/16`, RFC
//! 3056: the IPv4 address in bits 16 to 47).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A deny list of address ranges for webhook targets.
#[derive(Debug, Clone)]
pub struct AddressGuard {
    deny: Vec<IpNet>,
}

/// An address that falls in a denied range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {address} is in the denied range {range}")]
pub struct DeniedAddress {
    /// The address as given (an IPv4-mapped IPv6 address stays in its IPv6 form here).
    pub address: IpAddr,
    /// The deny-list entry it matched.
    pub range: IpNet,
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The URL has no scheme, e.g. `example.com/hook`.
    #[error("url must start with http:// or https://, e.g. \"https://example.com/hook\"")]
    MissingScheme,
    /// The scheme is neither `http` nor `https`.
    #[error("url scheme must be http or https, e.g. \"https://example.com/hook\"; got {scheme:?}")]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
    /// The URL has no host, e.g. `/hook`.
    #[error("url must include a host, e.g. \"https://example.com/hook\"")]
    MissingHost,
    /// The host is neither a valid name nor an IP address by the WHATWG URL rules, e.g.
    /// `1.2.3.256` or `example.123` (a name ending in a number is read as an IPv4 address).
    #[error("url host {host:?} is neither a valid host name nor an IP address")]
    InvalidHost {
        /// The host as given.
        host: String,
    },
    /// The host is a literal IP address in a denied range.
    #[error(transparent)]
    Denied(#[from] DeniedAddress),
}

impl Default for AddressGuard {
    fn default() -> Self {
        Self::new(Self::default_deny_list())
    }
}

impl AddressGuard {
    /// A guard refusing every address in `deny`. An empty list allows everything.
    pub fn new(deny: Vec<IpNet>) -> Self {
        Self { deny }
    }

    /// The default deny list:
    ///
    /// | range              | why                                                        |
    /// |--------------------|------------------------------------------------------------|
    /// | 169.254.0.0/16     | IPv4 link-local: AWS, GCP, Azure, OpenStack metadata at 169.254.169.254 |
    /// | fe80::/10          | IPv6 link-local                                            |
    /// | 0.0.0.0/8          | "this network"; connecting to 0.0.0.0 reaches the local host on Linux |
    /// | 224.0.0.0/4        | IPv4 multicast                                             |
    /// | 255.255.255.255/32 | limited broadcast                                          |
    /// | ff00::/8           | IPv6 multicast                                             |
    /// | ::/128             | IPv6 unspecified; like 0.0.0.0                             |
    pub fn default_deny_list() -> Vec<IpNet> {
        DEFAULT_DENY_LIST.to_vec()
    }

    /// The ranges this guard refuses.
    pub fn deny_list(&self) -> &[IpNet] {
        &self.deny
    }

    /// Refuses `ip` if it is in a denied range.
    ///
    /// An IPv6 address that carries an IPv4 address is also checked as that IPv4 address, since
    /// that is where its packets end up: IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible
    /// (`::a.b.c.d`) ones, which the kernel connects to the IPv4 address, and NAT64
    /// (`64:ff9b::/96`, `64:ff9b:1::/48`) and 6to4 (`2002::/16`) ones, which a translator or
    /// relay forwards to it: `::ffff:169.254.169.254` and `64:ff9b::a9fe:a9fe` are the metadata
    /// server. `::1` and `::` are the IPv6 loopback and unspecified addresses, not
    /// IPv4-compatible ones, and are checked as themselves only.
    pub fn check(&self, ip: IpAddr) -> Result<(), DeniedAddress> {
        let embedded_v4 = match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
        };
        let denied_by = |candidate: IpAddr| self.deny.iter().find(|net| net.contains(&candidate));
        match denied_by(ip).or_else(|| embedded_v4.and_then(denied_by)) {
            Some(range) => Err(DeniedAddress {
                address: ip,
                range: *range,
            }),
            None => Ok(()),
        }
    }

    /// Checks a webhook URL when it is configured: the scheme must be `http` or `https`, there must
    /// be a host, the host must be valid by the WHATWG URL rules, and a host that is an IP address
    /// by those rules (see [`literal_address`]) must not be denied. Names are not resolved here:
    /// their addresses can change, so [`GuardedResolver`] checks them at every connect.
    pub fn check_url(&self, url: &http::Uri) -> Result<(), GuardError> {
        let scheme = url.scheme_str().ok_or(GuardError::MissingScheme)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(GuardError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        }
        let host = url.host().filter(|host| !host.is_empty());
        let host = host.ok_or(GuardError::MissingHost)?;
        if let Some(ip) = literal_address(host)? {
            self.check(ip)?;
        }
        Ok(())
    }
}

/// The IP address a URL host stands for, by the WHATWG URL host rules (the `url` crate's host
/// parser); `None` for a name, which only resolution can turn into addresses.
///
/// An IPv4 address may be written as one to four parts, each decimal, hex (`0x`) or octal (a
/// leading `0`), with at most one trailing dot: `2130706433`, `0x7f000001`, `0177.0.0.1`,
/// `127.1` and `127.0.0.1.` are all 127.0.0.1. A host whose last label is a number but which
/// is no valid IPv4 address (`1.2.3.256`, `example.123`) is invalid, as is anything else the
/// rules refuse. An IPv6 address may come with or without its brackets.
pub fn literal_address(host: &str) -> Result<Option<IpAddr>, GuardError> {
    let invalid = || GuardError::InvalidHost {
        host: host.to_owned(),
    };
    // A resolver is handed IPv6 addresses without their brackets; the URL parser wants them.
    let parsed = if host.contains(':') && !host.starts_with('[') {
        url::Host::parse(&format!("[{host}]"))
    } else {
        url::Host::parse(host)
    };
    match parsed.map_err(|_| invalid())? {
        url::Host::Ipv4(v4) => Ok(Some(IpAddr::V4(v4))),
        url::Host::Ipv6(v6) => Ok(Some(IpAddr::V6(v6))),
        url::Host::Domain(_) => Ok(None),
    }
}

// A constant so that `new_assert` runs at compile time: a bad prefix is a build error, not a panic.
const DEFAULT_DENY_LIST: [IpNet; 7] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
    )),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 8)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
    )),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::BROADCAST, 32)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128)),
];

/// NAT64's well-known prefix (RFC 6052).
const NAT64_WELL_KNOWN: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
/// NAT64's local-use prefix (RFC 8215).
const NAT64_LOCAL_USE: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48);
/// 6to4 (RFC 3056).
const SIX_TO_FOUR: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);

/// The IPv4 address an IPv6 address carries, if any: IPv4-mapped, IPv4-compatible, NAT64 or
/// 6to4.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    let octets = v6.octets();
    // RFC 6052's /96 layout: the IPv4 address is the last 32 bits. A NAT64 translator with a
    // shorter prefix inside 64:ff9b:1::/48 lays it out otherwise; operators running one deny
    // that prefix whole (see the README).
    if NAT64_WELL_KNOWN.contains(&v6) || NAT64_LOCAL_USE.contains(&v6) {
        return Some(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    if SIX_TO_FOUR.contains(&v6) {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    if v6.is_loopback() || v6.is_unspecified() {
        return None;
    }
    // `to_ipv4` also accepts ::ffff:0:0/96, handled above, and ::/96 (IPv4-compatible).
    v6.to_ipv4()
}

/// Every address of a host was denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to connect to {host}: {}", DeniedList(.denied))]
pub struct DeniedHost {
    /// The name that was resolved.
    pub host: String,
    /// Each address it resolved to, with the range that denied it.
    pub denied: Vec<DeniedAddress>,
}

struct DeniedList<'a>(&'a [DeniedAddress]);

impl fmt::Display for DeniedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, denied) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            fmt::Display::fmt(denied, f)?;
        }
        Ok(())
    }
}

/// A DNS resolver for hyper-util's `HttpConnector` (`HttpConnector::new_with_resolver`) that
/// checks every resolved address against an [`AddressGuard`].
///
/// Denied addresses are dropped; when none is left the lookup fails with an `io::Error` of kind
/// `PermissionDenied` whose inner error is a [`DeniedHost`] naming the host and each address, so
/// callers can tell a refusal from a DNS failure with `get_ref()` and `downcast_ref`. Because the
/// check happens on each connect, a name that later resolves to 169.254.169.254 (DNS rebinding)
/// is refused then. Literal IP hosts never reach a resolver; `check_url` covers those.
///
/// Resolution uses tokio's `lookup_host` (the system resolver on the blocking pool).
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("deny", &self.guard.deny)
            .finish()
    }
}

impl GuardedResolver {
    /// A resolver refusing what `guard` denies.
    pub fn new(guard: Arc<AddressGuard>) -> Self {
        Self { guard }
    }

    /// Resolves `host` and keeps the allowed addresses (with port 0, which the connector
    /// replaces with the URL's port).
    ///
    /// A host that is an IP address by the WHATWG URL rules (`2130706433`, `127.1`), which the
    /// connector does not recognise as one, is not looked up: it stands for that address, the
    /// one [`AddressGuard::check_url`] saw when the subscription was configured.
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        // A host the rules refuse is left to the system resolver, as before they applied: a
        // subscription stored earlier may have one, and what it resolves to is checked below.
        let resolved: Vec<SocketAddr> = match literal_address(host) {
            Ok(Some(ip)) => vec![SocketAddr::new(ip, 0)],
            Ok(None) | Err(_) => tokio::net::lookup_host((host, 0)).await?.collect(),
        };
        let mut allowed = Vec::new();
        let mut denied = Vec::new();
        for address in resolved {
            match self.guard.check(address.ip()) {
                Ok(()) => allowed.push(address),
                Err(denial) => denied.push(denial),
            }
        }
        if allowed.is_empty() {
            if denied.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} resolved to no addresses"),
                ));
            }
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                DeniedHost {
                    host: host.to_owned(),
                    denied,
                },
            ));
        }
        if !denied.is_empty() {
            // Not an error: the allowed addresses are enough. Worth a warning all the same, since
            // a public name with a metadata address among its records is suspicious.
            tracing::warn!(
                message = "Dropped denied addresses of a webhook host.",
                host,
                denied = %DeniedList(&denied),
            );
        }
        Ok(allowed)
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Stateless: every lookup is its own task.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move {
            let allowed = resolver.resolve(name.as_str()).await?;
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests;
