//! The pooled HTTP/1.1 client every attempt goes through: keep-alive connections per host, a
//! connect timeout, and name resolution that refuses denied addresses at connect time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::guard::{AddressGuard, GuardedResolver};

pub(crate) type HttpClient = Client<HttpConnector<GuardedResolver>, Full<Bytes>>;

/// How long an idle keep-alive connection is kept. Shorter than the 60 s or more most servers
/// allow, so Trellis closes first and rarely sends on a connection the server just dropped.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn build(
    connect_timeout: Duration,
    max_idle_per_host: usize,
    guard: Arc<AddressGuard>,
) -> HttpClient {
    let mut connector = HttpConnector::new_with_resolver(GuardedResolver::new(guard));
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle_per_host)
        .build(connector)
}
