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
    /// An IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible (`::a.b.c.d`) IPv6 address is also
    /// checked as the IPv4 address it carries, since the kernel connects it to that IPv4 address:
    /// `::ffff:169.254.169.254` is the metadata server. `::1` and `::` are the IPv6 loopback and
    /// unspecified addresses, not IPv4-compatible ones, and are checked as themselves only.
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
    /// be a host, and a literal IP host must not be denied. Names are not resolved here: their
    /// addresses can change, so [`GuardedResolver`] checks them at every connect.
    pub fn check_url(&self, url: &http::Uri) -> Result<(), GuardError> {
        let scheme = url.scheme_str().ok_or(GuardError::MissingScheme)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(GuardError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        }
        let host = url.host().filter(|host| !host.is_empty());
        let host = host.ok_or(GuardError::MissingHost)?;
        // `Uri::host` keeps the brackets of an IPv6 literal.
        let bare = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check(ip)?;
        }
        Ok(())
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

/// The IPv4 address inside an IPv4-mapped or IPv4-compatible IPv6 address, if any.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
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
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        let resolved = tokio::net::lookup_host((host, 0)).await?;
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
