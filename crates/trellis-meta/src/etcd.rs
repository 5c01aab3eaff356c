//! The etcd [`MetadataStore`]: the same boundary, kept in an etcd cluster (v3 API, etcd 3.4+),
//! so that several Trellis replicas share metadata, leases and fenced writes. It speaks etcd's
//! gRPC API through the tonic clients of `trellis-etcd-proto`.
//!
//! Every operation is one etcd request (compare-and-set and guarded puts are one transaction),
//! so the trait's atomicity is etcd's. Requests that cannot reach a quorum within the request
//! timeout fail with [`MetaError::Unavailable`]; nothing here panics on etcd's answers. The
//! watch, which must survive reconnects, lives in `watch.rs`.

mod watch;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use trellis_etcd_proto::etcdserverpb::{
    AuthenticateRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse, auth_client::AuthClient, compare, kv_client::KvClient,
    lease_client::LeaseClient, request_op, response_op, watch_client::WatchClient,
};
use trellis_etcd_proto::mvccpb;

use crate::{
    CasOutcome, Expect, GuardedOutcome, GuardedPut, KeyValue, Lease, LeaseId, MetaError,
    MetadataStore, Range, WatchStream, expect_holds, ttl_seconds,
};

/// How long one request may take before it fails as unavailable, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to an endpoint may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection to etcd is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before sending a request again that found its endpoint unreachable, so a list of dead
/// endpoints is not retried in a busy loop.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Where and how to reach etcd, for [`EtcdStore::connect`].
///
/// ```no_run
/// # async fn demo() -> Result<(), trellis_meta::MetaError> {
/// use trellis_meta::{EtcdOptions, EtcdStore};
///
/// let options = EtcdOptions::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .user("trellis", "secret");
/// let store = EtcdStore::connect(options).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    endpoints: Vec<String>,
    ca_pem: Option<Vec<u8>>,
    user: Option<(String, String)>,
    request_timeout: Duration,
    connect_timeout: Duration,
}

/// What went wrong talking to etcd. It reaches callers as the source of
/// [`MetaError::Unavailable`] or [`MetaError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    #[error("no etcd endpoint was given")]
    NoEndpoints,
    #[error("etcd request failed")]
    Status(#[source] tonic::Status),
    #[error("cannot set up the connection to etcd")]
    Transport(#[source] tonic::transport::Error),
    #[error("etcd did not answer in time")]
    TimedOut,
    #[error("etcd answered with {what}")]
    Malformed { what: &'static str },
}

/// The [`MetadataStore`] kept in etcd.
///
/// Keys are UTF-8 strings; a key etcd holds that is not UTF-8 (written by something else) is
/// reported as [`MetaError::Storage`]. Leases are etcd leases: their TTL counts on the etcd
/// leader, and `Lease::held_until` is computed from when the request was sent.
#[derive(Clone)]
pub struct EtcdStore {
    channel: Channel,
    clients: Clients,
}

/// Every request carries these headers.
#[derive(Clone)]
struct Headers {
    /// etcd's auth token, when connecting as a user. A new one replaces it when etcd forgets it
    /// (a simple token expires when unused for a while, and with a restart).
    token: Option<Arc<RwLock<AsciiMetadataValue>>>,
}

impl Interceptor for Headers {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        // Requests fail fast rather than queue when this member has lost its leader.
        metadata.insert("hasleader", AsciiMetadataValue::from_static("true"));
        if let Some(token) = &self.token {
            let token = token.read().unwrap_or_else(PoisonError::into_inner).clone();
            metadata.insert("token", token);
        }
        Ok(request)
    }
}

type Service = InterceptedService<Channel, Headers>;

/// The user a store authenticates as, and where its current token is.
struct Credentials {
    channel: Channel,
    several_endpoints: bool,
    name: String,
    password: String,
    token: Arc<RwLock<AsciiMetadataValue>>,
    /// Held while authenticating again.
    renewing: tokio::sync::Mutex<()>,
}

impl Credentials {
    fn current(&self) -> AsciiMetadataValue {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the token `refused`, unless another request already did: requests that fail
    /// together authenticate once.
    async fn renew(
        &self,
        refused: &AsciiMetadataValue,
        request_timeout: Duration,
    ) -> Result<(), MetaError> {
        let _renewing = self.renewing.lock().await;
        if self.current() != *refused {
            return Ok(());
        }
        tracing::info!(
            message = "etcd no longer knows the metadata store's auth token; authenticating again.",
        );
        let token = authenticate(
            &self.channel,
            self.several_endpoints,
            &self.name,
            &self.password,
            request_timeout,
        )
        .await?;
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token;
        Ok(())
    }
}

/// The gRPC clients, which are cheap to clone, and how long a request may take.
#[derive(Clone)]
struct Clients {
    kv: KvClient<Service>,
    watch: WatchClient<Service>,
    lease: LeaseClient<Service>,
    credentials: Option<Arc<Credentials>>,
    several_endpoints: bool,
    request_timeout: Duration,
}

impl Clients {
    fn new(
        channel: Channel,
        several_endpoints: bool,
        credentials: Option<Credentials>,
        request_timeout: Duration,
    ) -> Clients {
        let headers = Headers {
            token: credentials
                .as_ref()
                .map(|credentials| credentials.token.clone()),
        };
        let service = InterceptedService::new(channel, headers);
        Clients {
            kv: KvClient::new(service.clone()),
            watch: WatchClient::new(service.clone()),
            lease: LeaseClient::new(service),
            credentials: credentials.map(Arc::new),
            several_endpoints,
            request_timeout,
        }
    }

    /// Makes a call and waits for its answer, at most the request timeout: a balanced channel
    /// with no reachable endpoint would otherwise wait for one indefinitely.
    async fn call<T, F, Fut>(&self, make: F) -> Result<T, MetaError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.request_timeout, self.call_renewing(make)).await {
            Ok(answer) => answer,
            Err(_) => Err(MetaError::Unavailable(Box::new(EtcdError::TimedOut))),
        }
    }

    /// Makes a call; if etcd no longer knows the auth token, authenticates again and makes the
    /// call once more.
    async fn call_renewing<T, F, Fut>(&self, mut make: F) -> Result<T, MetaError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let sent_with = self
            .credentials
            .as_ref()
            .map(|credentials| credentials.current());
        let status = match send(self.several_endpoints, &mut make).await {
            Ok(answer) => return Ok(answer),
            Err(status) => status,
        };
        match (&self.credentials, sent_with) {
            (Some(credentials), Some(sent_with)) if is_invalid_token(&status) => {
                credentials.renew(&sent_with, self.request_timeout).await?;
                send(self.several_endpoints, &mut make)
                    .await
                    .map_err(status_error)
            }
            _ => Err(status_error(status)),
        }
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, MetaError> {
        self.call(|| {
            let mut kv = self.kv.clone();
            let request = request.clone();
            async move { kv.range(request).await }
        })
        .await
    }

    async fn put(&self, request: PutRequest) -> Result<PutResponse, MetaError> {
        self.call(|| {
            let mut kv = self.kv.clone();
            let request = request.clone();
            async move { kv.put(request).await }
        })
        .await
    }

    async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MetaError> {
        self.call(|| {
            let mut kv = self.kv.clone();
            let request = request.clone();
            async move { kv.delete_range(request).await }
        })
        .await
    }

    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, MetaError> {
        self.call(|| {
            let mut kv = self.kv.clone();
            let request = request.clone();
            async move { kv.txn(request).await }
        })
        .await
    }

    async fn lease_grant(
        &self,
        request: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, MetaError> {
        self.call(|| {
            let mut lease = self.lease.clone();
            async move { lease.lease_grant(request).await }
        })
        .await
    }

    async fn lease_revoke(
        &self,
        request: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, MetaError> {
        self.call(|| {
            let mut lease = self.lease.clone();
            async move { lease.lease_revoke(request).await }
        })
        .await
    }

    /// One refresh on a keep-alive stream of its own: etcd's answer, or `None` if the stream
    /// ended without one.
    async fn lease_keep_alive(
        &self,
        request: LeaseKeepAliveRequest,
    ) -> Result<Option<LeaseKeepAliveResponse>, MetaError> {
        self.call(|| {
            let mut lease = self.lease.clone();
            async move {
                // The sender stays open until the answer is read, so etcd does not see the
                // stream end before it has answered.
                let (requests, receiver) = tokio::sync::mpsc::channel(1);
                if requests.send(request).await.is_err() {
                    return Err(tonic::Status::internal("keep-alive request not sent"));
                }
                let mut answers = lease
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                let answer = answers.message().await?;
                drop(requests);
                Ok(tonic::Response::new(answer))
            }
        })
        .await
    }
}

/// Sends a request. With several endpoints, the channel may pick one it cannot connect to; the
/// request then never left, so it is sent again (to a randomly picked endpoint) until one
/// connects or the caller's timeout ends the wait.
async fn send<T, F, Fut>(several_endpoints: bool, make: &mut F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    loop {
        match make().await {
            Err(status) if several_endpoints && is_connect_error(&status) => {
                tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
            }
            answer => return answer.map(tonic::Response::into_inner),
        }
    }
}

/// Whether a request failed because no connection could be made for it, so it was not sent.
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether etcd refused a request for an auth token it does not know (or no longer).
fn is_invalid_token(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated && status.message().contains("invalid auth token")
}

impl EtcdOptions {
    /// Endpoints as `host:port` (plain, or TLS once [`EtcdOptions::ca_pem`] is set) or full
    /// `http://` / `https://` URLs.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_pem: None,
            user: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Speaks TLS, trusting this CA certificate (PEM).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> EtcdOptions {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Authenticates as this etcd user.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> EtcdOptions {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// How long one request may take. Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> EtcdOptions {
        self.request_timeout = timeout;
        self
    }

    /// How long connecting may take. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> EtcdOptions {
        self.connect_timeout = timeout;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.ca_pem.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers (one read), so a wrong address or credentials fail
    /// here, as [`MetaError::Unavailable`] or [`MetaError::Storage`], rather than at first use.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore, MetaError> {
        if options.endpoints.is_empty() {
            return Err(MetaError::Storage(Box::new(EtcdError::NoEndpoints)));
        }
        // tonic is built with ring as its only TLS provider (the one the rest of the workspace
        // uses), and takes it when no process-wide provider is installed.
        let tls = options
            .ca_pem
            .as_ref()
            .map(|pem| ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
        let mut endpoints = Vec::with_capacity(options.endpoints.len());
        for address in &options.endpoints {
            let uri = if address.contains("://") {
                address.clone()
            } else if tls.is_some() {
                format!("https://{address}")
            } else {
                format!("http://{address}")
            };
            let mut endpoint = Endpoint::from_shared(uri)
                .map_err(transport_error)?
                .connect_timeout(options.connect_timeout)
                .timeout(options.request_timeout)
                // A watch only reads: without pings, a member that vanished without closing the
                // connection (a partition, a frozen host) would leave it waiting forever. With
                // them the connection fails within about 10 s and the watch reopens elsewhere.
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(transport_error)?;
            }
            endpoints.push(endpoint);
        }
        // Channels connect on first use and reconnect after a failure by themselves.
        let several_endpoints = endpoints.len() > 1;
        let channel = match endpoints.as_slice() {
            [one] => one.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        let mut credentials = None;
        if let Some((name, password)) = &options.user {
            let token = authenticate(
                &channel,
                several_endpoints,
                name,
                password,
                options.request_timeout,
            )
            .await?;
            credentials = Some(Credentials {
                channel: channel.clone(),
                name: name.clone(),
                password: password.clone(),
                several_endpoints,
                token: Arc::new(RwLock::new(token)),
                renewing: tokio::sync::Mutex::new(()),
            });
        }
        let store = EtcdStore {
            clients: Clients::new(
                channel.clone(),
                several_endpoints,
                credentials,
                options.request_timeout,
            ),
            channel,
        };
        // Any key will do: the point is a round trip to a member with a leader.
        store.get("\u{0}trellis-connect-check").await?;
        Ok(store)
    }

    /// The gRPC channel to etcd, for what the trait does not cover (tests compact and enable
    /// authentication through it). Requests on it carry no auth token.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// Trades a user and password for the token etcd then expects in each request's metadata.
async fn authenticate(
    channel: &Channel,
    several_endpoints: bool,
    name: &str,
    password: &str,
    request_timeout: Duration,
) -> Result<AsciiMetadataValue, MetaError> {
    let request = AuthenticateRequest {
        name: name.to_owned(),
        password: password.to_owned(),
    };
    let mut make = || {
        let mut auth = AuthClient::new(channel.clone());
        let request = request.clone();
        async move { auth.authenticate(request).await }
    };
    let response =
        match tokio::time::timeout(request_timeout, send(several_endpoints, &mut make)).await {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => return Err(status_error(status)),
            Err(_) => return Err(MetaError::Unavailable(Box::new(EtcdError::TimedOut))),
        };
    AsciiMetadataValue::try_from(response.token)
        .map_err(|_| malformed("an auth token that cannot be sent as a gRPC header"))
}

#[async_trait::async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        let response = self
            .clients
            .range(RangeRequest {
                key: key_bytes(key),
                ..RangeRequest::default()
            })
            .await?;
        response.kvs.first().map(convert_kv).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range, MetaError> {
        let (key, range_end) = prefix_range(prefix);
        // etcd returns a range sorted by key, bytewise, as the trait asks.
        let response = self
            .clients
            .range(RangeRequest {
                key,
                range_end,
                ..RangeRequest::default()
            })
            .await?;
        let kvs = response
            .kvs
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Range {
            kvs,
            revision: header_revision(response.header.as_ref())?,
        })
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, MetaError> {
        let request = PutRequest {
            key: key_bytes(key),
            value,
            ..PutRequest::default()
        };
        let response = self.clients.put(request).await?;
        header_revision(response.header.as_ref())
    }

    async fn delete(&self, key: &str) -> Result<bool, MetaError> {
        let request = DeleteRangeRequest {
            key: key_bytes(key),
            ..DeleteRangeRequest::default()
        };
        let response = self.clients.delete_range(request).await?;
        Ok(response.deleted > 0)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Bytes,
    ) -> Result<CasOutcome, MetaError> {
        let response = self
            .clients
            .txn(TxnRequest {
                compare: compares(key, expect),
                success: vec![put_op(key, value, None)],
                failure: vec![get_op(key)],
            })
            .await?;
        if response.succeeded {
            return Ok(CasOutcome::Written {
                revision: header_revision(response.header.as_ref())?,
            });
        }
        let current = else_gets(&response)?.into_iter().next().flatten();
        Ok(CasOutcome::Conflict { current })
    }

    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: u64,
    ) -> Result<CasOutcome, MetaError> {
        let delete = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key_bytes(key),
                    ..DeleteRangeRequest::default()
                },
            )),
        };
        let response = self
            .clients
            .txn(TxnRequest {
                compare: compares(key, Expect::ModRevision(mod_revision)),
                success: vec![delete],
                failure: vec![get_op(key)],
            })
            .await?;
        if response.succeeded {
            return Ok(CasOutcome::Written {
                revision: header_revision(response.header.as_ref())?,
            });
        }
        let current = else_gets(&response)?.into_iter().next().flatten();
        Ok(CasOutcome::Conflict { current })
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<u64>,
    ) -> Result<WatchStream, MetaError> {
        watch::watch(self.clients.clone(), prefix.to_owned(), start_revision).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let sent_at = Instant::now();
        let requested = i64::try_from(ttl_seconds(ttl)).unwrap_or(i64::MAX);
        let request = LeaseGrantRequest {
            ttl: requested,
            id: 0,
        };
        let response = self.clients.lease_grant(request).await?;
        if !response.error.is_empty() {
            return Err(MetaError::Storage(
                format!("etcd did not grant a lease: {}", response.error).into(),
            ));
        }
        let granted = granted_ttl(response.ttl)?;
        Ok(Lease {
            id: response.id,
            ttl: granted,
            held_until: sent_at + granted,
        })
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Lease>, MetaError> {
        let sent_at = Instant::now();
        let response = self
            .clients
            .lease_keep_alive(LeaseKeepAliveRequest { id: lease })
            .await?;
        let Some(response) = response else {
            return Err(MetaError::Unavailable(Box::new(EtcdError::Malformed {
                what: "an ended keep-alive stream",
            })));
        };
        if response.ttl <= 0 {
            return Ok(None);
        }
        let ttl = granted_ttl(response.ttl)?;
        Ok(Some(Lease {
            id: lease,
            ttl,
            held_until: sent_at + ttl,
        }))
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<bool, MetaError> {
        let request = LeaseRevokeRequest { id: lease };
        match self.clients.lease_revoke(request).await {
            Ok(_) => Ok(true),
            Err(MetaError::Storage(source)) if is_not_found(source.as_ref()) => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn guarded_put(&self, put: GuardedPut) -> Result<GuardedOutcome, MetaError> {
        let compare: Vec<Compare> = put
            .guards
            .iter()
            .flat_map(|(key, expect)| compares(key, *expect))
            .collect();
        let failure: Vec<RequestOp> = put.guards.iter().map(|(key, _)| get_op(key)).collect();
        let request = TxnRequest {
            compare,
            success: vec![put_op(&put.key, put.value.clone(), put.lease)],
            failure,
        };
        let response = match self.clients.txn(request).await {
            Err(MetaError::Storage(source)) if is_lease_not_found(source.as_ref()) => {
                return Err(MetaError::LeaseNotFound {
                    lease: put.lease.unwrap_or_default(),
                });
            }
            other => other?,
        };
        if response.succeeded {
            return Ok(GuardedOutcome::Written {
                revision: header_revision(response.header.as_ref())?,
            });
        }
        // The reads ran in the same transaction, so they show the state the guards failed on.
        let currents = else_gets(&response)?;
        for (idx, ((_, expect), current)) in put.guards.iter().zip(currents).enumerate() {
            if !expect_holds(*expect, current.as_ref()) {
                return Ok(GuardedOutcome::Conflict {
                    guard: idx,
                    current,
                });
            }
        }
        Err(MetaError::Storage(Box::new(EtcdError::Malformed {
            what: "a failed transaction whose guards all hold",
        })))
    }
}

fn key_bytes(key: &str) -> Bytes {
    Bytes::copy_from_slice(key.as_bytes())
}

/// The key and range end etcd reads as "every key starting with `prefix`": the range end is the
/// prefix with its last byte below 0xff incremented (and what follows dropped); `\0` as both
/// means every key.
fn prefix_range(prefix: &str) -> (Bytes, Bytes) {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (key_bytes(prefix), Bytes::from(end));
        }
    }
    let all = Bytes::from_static(b"\0");
    let key = if prefix.is_empty() {
        all.clone()
    } else {
        key_bytes(prefix)
    };
    (key, all)
}

fn put_op(key: &str, value: Bytes, lease: Option<LeaseId>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key_bytes(key),
            value,
            lease: lease.unwrap_or_default(),
            ..PutRequest::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key_bytes(key),
            ..RangeRequest::default()
        })),
    }
}

fn compare(key: &str, result: compare::CompareResult, target: compare::TargetUnion) -> Compare {
    let target_kind = match target {
        compare::TargetUnion::Version(_) => compare::CompareTarget::Version,
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => compare::CompareTarget::Mod,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        compare::TargetUnion::Lease(_) => compare::CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target_kind as i32,
        key: key_bytes(key),
        target_union: Some(target),
        ..Compare::default()
    }
}

/// The etcd compares that together mean `expect`. A mod revision compare alone would also
/// match an absent key when asked for revision 0; the version compare rules that out.
fn compares(key: &str, expect: Expect) -> Vec<Compare> {
    use compare::{CompareResult, TargetUnion};
    match expect {
        Expect::Absent => vec![compare(key, CompareResult::Equal, TargetUnion::Version(0))],
        Expect::ModRevision(revision) => vec![
            compare(
                key,
                CompareResult::Equal,
                TargetUnion::ModRevision(i64::try_from(revision).unwrap_or(-1)),
            ),
            compare(key, CompareResult::Greater, TargetUnion::Version(0)),
        ],
    }
}

/// The single-key reads of a failed transaction's else branch, in order.
fn else_gets(response: &TxnResponse) -> Result<Vec<Option<KeyValue>>, MetaError> {
    response
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(response_op::Response::ResponseRange(get)) => {
                get.kvs.first().map(convert_kv).transpose()
            }
            _ => Err(MetaError::Storage(Box::new(EtcdError::Malformed {
                what: "a transaction answer without the reads asked for",
            }))),
        })
        .collect()
}

fn key_string(key: &[u8]) -> Result<String, MetaError> {
    std::str::from_utf8(key)
        .map(str::to_owned)
        .map_err(|_| malformed("a key that is not UTF-8"))
}

fn convert_kv(kv: &mvccpb::KeyValue) -> Result<KeyValue, MetaError> {
    Ok(KeyValue {
        key: key_string(&kv.key)?,
        value: kv.value.clone(),
        create_revision: revision(kv.create_revision)?,
        mod_revision: revision(kv.mod_revision)?,
        version: revision(kv.version)?,
    })
}

fn header_revision(header: Option<&ResponseHeader>) -> Result<u64, MetaError> {
    match header {
        Some(header) => revision(header.revision),
        None => Err(malformed("a response without a header")),
    }
}

fn revision(value: i64) -> Result<u64, MetaError> {
    u64::try_from(value).map_err(|_| malformed("a negative revision"))
}

fn granted_ttl(seconds: i64) -> Result<Duration, MetaError> {
    match u64::try_from(seconds) {
        Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
        _ => Err(malformed("a lease without a TTL")),
    }
}

fn malformed(what: &'static str) -> MetaError {
    MetaError::Storage(Box::new(EtcdError::Malformed { what }))
}

fn transport_error(error: tonic::transport::Error) -> MetaError {
    MetaError::Storage(Box::new(EtcdError::Transport(error)))
}

/// Sorts gRPC statuses into the trait's errors: what a retry later could cure is `Unavailable`.
/// tonic reports a connection that failed as `Unavailable` or `Unknown`.
fn status_error(status: tonic::Status) -> MetaError {
    let unavailable = matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    );
    let error = Box::new(EtcdError::Status(status));
    if unavailable {
        MetaError::Unavailable(error)
    } else {
        MetaError::Storage(error)
    }
}

fn is_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<EtcdError>(),
        Some(EtcdError::Status(status)) if status.code() == tonic::Code::NotFound
    )
}

fn is_lease_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<EtcdError>(),
        Some(EtcdError::Status(status))
            if status.code() == tonic::Code::NotFound
                && status.message().contains("lease not found")
    )
}
