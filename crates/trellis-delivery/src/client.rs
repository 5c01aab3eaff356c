//! The HTTP/1.1 client every attempt goes through: keep-alive connections per URL, a connect
//! timeout, and name resolution that refuses denied addresses at connect time.
//!
//! An exchange drives its connection's I/O itself, in the task that awaits the answer. A pooled
//! client such as hyper-util's runs each connection in a task of its own and hands it requests
//! over a channel, so every answer wakes two tasks; here it wakes one, and nothing crosses a
//! channel. That is most of what a delivery costs on top of the system calls.
//!
//! The price: nobody polls an idle connection. One the server closed meanwhile is found closed
//! when it is next taken (or once it has idled for [`IDLE_TIMEOUT`]) and dropped then, and until
//! then it holds its socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::task::noop_waker_ref;
use http::header::{HOST, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::guard::{AddressGuard, GuardedResolver};
use crate::tls::WebhookTls;

/// How long an idle keep-alive connection is kept. Shorter than the 60 s or more most servers
/// allow, so Trellis closes first and rarely sends on a connection the server just dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Opens connections: resolution through the address guard, TCP with a timeout, then TLS for
/// `https` URLs.
#[derive(Clone)]
pub(crate) struct Connector {
    https: HttpsConnector<HttpConnector<GuardedResolver>>,
}

impl Connector {
    pub(crate) fn new(
        connect_timeout: Duration,
        guard: Arc<AddressGuard>,
        tls: &WebhookTls,
    ) -> Connector {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(guard));
        http.set_connect_timeout(Some(connect_timeout));
        // One small request at a time per connection: Nagle would hold each one back.
        http.set_nodelay(true);
        // The TLS layer above takes https URLs; this one only opens their TCP connection.
        http.enforce_http(false);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls.client_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Connector { https }
    }
}

/// One target URL: its request line and `Host`, and its idle connections.
pub(crate) struct Endpoint {
    /// Absolute, for the connector.
    uri: Uri,
    /// What the request line carries: path and query only.
    origin_form: Uri,
    host: HeaderValue,
    /// Most recently used last. No cap is needed: a connection is only opened when none is
    /// idle, so the pool never holds more than the most exchanges ever in flight at once, which
    /// the concurrency limit bounds.
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    /// Counts connections opened: with keep-alive working, far fewer than requests.
    opened: metrics::Counter,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// Boxed wherever it is kept or passed: hyper's connection state is nearly 2 KiB, and each
/// exchange would otherwise copy it in and out of the pool.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: Connection<Io, Full<Bytes>>,
}

/// An answer whose body was read (up to the cap) or left unread past it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

/// Why an exchange got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("the URL has no host")]
    NoHost,
    #[error("cannot connect")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The receiver's TLS certificate was not accepted: not signed by a trusted CA, not for the
    /// URL's host, expired... Said apart from other connection errors because the fix is on
    /// the receiver's side (or in `webhook_ca_file`), not in waiting.
    #[error("the receiver's TLS certificate is not accepted: {reason}")]
    Certificate {
        reason: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS handshake failed for another reason (no common protocol version or cipher, a
    /// receiver that does not speak TLS on that port).
    #[error("the TLS handshake failed: {reason}")]
    Tls {
        reason: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the HTTP/1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("the request failed")]
    Request(#[source] hyper::Error),
    /// The connection closed before the request left: sending it elsewhere is safe.
    #[error("the connection closed before the request was sent")]
    ClosedBeforeSending,
    #[error("the connection closed before the answer came")]
    ClosedBeforeAnswer,
    /// The connection ended with an error while the request was out: its cause says more than
    /// the request's own "connection closed".
    #[error("the connection failed")]
    Connection(#[source] hyper::Error),
    #[error("the connection broke while the {status} answer was being read")]
    Body {
        status: StatusCode,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Endpoint {
    pub(crate) fn new(uri: &Uri, opened: metrics::Counter) -> Result<Endpoint, ExchangeError> {
        let host = uri.host().ok_or(ExchangeError::NoHost)?;
        let default_port = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => 443,
            _ => 80,
        };
        let host = match uri.port_u16() {
            Some(port) if port != default_port => format!("{host}:{port}"),
            _ => host.to_owned(),
        };
        let host = HeaderValue::from_str(&host).map_err(|_| ExchangeError::NoHost)?;
        let origin_form = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Endpoint {
            uri: uri.clone(),
            origin_form: Uri::from(origin_form),
            host,
            idle: Mutex::new(Vec::new()),
            idle_timeout: IDLE_TIMEOUT,
            opened,
        })
    }

    /// The URI a request to this endpoint carries; the exchange adds `Host`.
    pub(crate) fn request_uri(&self) -> &Uri {
        &self.origin_form
    }

    /// Sends the request `build` makes on an idle connection, or a new one, and reads at most
    /// `max_body_bytes` of the answer's body. The connection goes back to the pool only when
    /// the answer was read to its end. Dropping the future drops the connection with it.
    ///
    /// `build` is called again, for a new connection, when an idle one turns out to have been
    /// closed before the request left (the server's keep-alive timeout can fire at any time).
    pub(crate) async fn exchange(
        &self,
        connector: impl FnOnce() -> Connector,
        build: impl Fn() -> Request<Full<Bytes>>,
        max_body_bytes: usize,
    ) -> Result<Answer, ExchangeError> {
        if let Some(conn) = self.take_idle() {
            match self.exchange_on(conn, build(), max_body_bytes).await {
                Err(ExchangeError::ClosedBeforeSending) => {}
                answered => return answered,
            }
        }
        let conn = self.connect(connector()).await?;
        self.exchange_on(conn, build(), max_body_bytes).await
    }

    async fn exchange_on(
        &self,
        mut conn: Box<Conn>,
        mut request: Request<Full<Bytes>>,
        max_body_bytes: usize,
    ) -> Result<Answer, ExchangeError> {
        request
            .headers_mut()
            .entry(HOST)
            .or_insert_with(|| self.host.clone());
        let (answer, reusable) = drive(&mut conn, request, max_body_bytes).await?;
        if reusable {
            self.put_idle(conn);
        }
        Ok(answer)
    }

    async fn connect(&self, mut connector: Connector) -> Result<Box<Conn>, ExchangeError> {
        let io = connector
            .https
            .call(self.uri.clone())
            .await
            .map_err(connect_error)?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(ExchangeError::Handshake)?;
        self.opened.increment(1);
        Ok(Box::new(Conn { sender, connection }))
    }

    /// The most recently used idle connection still open, dropping any found closed or idle
    /// too long.
    fn take_idle(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        loop {
            let Idle { mut conn, since } = self.lock_idle().pop()?;
            if now.duration_since(since) < self.idle_timeout && conn.is_open() {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, conn: Box<Conn>) {
        let now = Instant::now();
        let mut idle = self.lock_idle();
        drop_expired(&mut idle, now, self.idle_timeout);
        idle.push(Idle { conn, since: now });
    }

    /// Closes the connections idle for longer than [`IDLE_TIMEOUT`]. Without a call now and
    /// then, a URL that stops getting records would keep its last connections open for good,
    /// even after the server closed its end.
    pub(crate) fn close_expired(&self) {
        drop_expired(&mut self.lock_idle(), Instant::now(), self.idle_timeout);
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connector's error, with TLS failures told apart from other ones.
fn connect_error(error: Box<dyn std::error::Error + Send + Sync>) -> ExchangeError {
    let Some(tls) = rustls_error(&*error) else {
        return ExchangeError::Connect(error);
    };
    let reason = tls.to_string();
    match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType => ExchangeError::Certificate {
            reason,
            source: error,
        },
        _ => ExchangeError::Tls {
            reason,
            source: error,
        },
    }
}

/// The rustls error somewhere in `error`'s chain. rustls reports through an `io::Error`, which
/// hyper-rustls wraps in another; an `io::Error`'s `source` skips the error it wraps, so the
/// walk steps into what it wraps instead.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    None
}

fn drop_expired(idle: &mut Vec<Idle>, now: Instant, idle_timeout: Duration) {
    // The oldest come first; they expire first too.
    let expired = idle
        .iter()
        .take_while(|entry| now.duration_since(entry.since) >= idle_timeout)
        .count();
    idle.drain(..expired);
}

impl Conn {
    /// Whether the connection can take a request: polled once without a waker to see whether
    /// the server closed it (or sent something unasked) while it was idle.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(noop_waker_ref());
        if Pin::new(&mut self.connection).poll(&mut cx).is_ready() {
            return false;
        }
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// One request and its answer on `conn`, polling the connection's I/O alongside; the answer,
/// and whether the connection may be used again.
async fn drive(
    conn: &mut Conn,
    request: Request<Full<Bytes>>,
    max_body_bytes: usize,
) -> Result<(Answer, bool), ExchangeError> {
    let Conn { sender, connection } = conn;
    // Read in this task only; atomic because the future must be `Send`.
    let sent = AtomicBool::new(false);
    let exchange = async {
        sender.ready().await.map_err(ExchangeError::Request)?;
        // Queued for the connection as this returns, before it is awaited.
        let response = sender.send_request(request);
        sent.store(true, Ordering::Relaxed);
        let response = response.await.map_err(ExchangeError::Request)?;
        let (parts, body) = response.into_parts();
        let read_to_end = match Limited::new(body, max_body_bytes).collect().await {
            Ok(_) => true,
            Err(error) if error.is::<http_body_util::LengthLimitError>() => false,
            Err(source) => {
                return Err(ExchangeError::Body {
                    status: parts.status,
                    source,
                });
            }
        };
        Ok((
            Answer {
                status: parts.status,
                headers: parts.headers,
            },
            read_to_end,
        ))
    };
    tokio::pin!(exchange);
    let ended = tokio::select! {
        biased;
        // First, so that an answer it reads completes `exchange` in the same poll.
        ended = &mut *connection => ended,
        result = &mut exchange => return result,
    };
    // Nothing drives the exchange now: it ends in this poll or never.
    match ((&mut exchange).now_or_never(), ended) {
        (Some(Ok((answer, _))), _) => Ok((answer, false)),
        (Some(Err(ExchangeError::Request(_))) | None, _) if !sent.load(Ordering::Relaxed) => {
            Err(ExchangeError::ClosedBeforeSending)
        }
        // The connection's own error names the cause ("connection reset"); the request's
        // only says that the connection went away.
        (Some(Err(ExchangeError::Request(_))) | None, Err(cause)) => {
            Err(ExchangeError::Connection(cause))
        }
        (Some(Err(error)), _) => Err(error),
        (None, Ok(())) => Err(ExchangeError::ClosedBeforeAnswer),
    }
}

#[cfg(test)]
mod tests;
