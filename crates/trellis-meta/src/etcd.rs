//! The etcd [`MetadataStore`]: the same boundary, kept in an etcd cluster (v3 API, etcd 3.4+),
//! so that several Trellis replicas share metadata, leases and fenced writes.
//!
//! Every operation is one etcd request (compare-and-set and guarded puts are one transaction),
//! so the trait's atomicity is etcd's. Requests that cannot reach a quorum within the request
//! timeout fail with [`MetaError::Unavailable`]; nothing here panics on etcd's answers. The
//! watch, which must survive reconnects, lives in `watch.rs`.

mod watch;

use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};

use crate::{
    CasOutcome, Expect, GuardedOutcome, GuardedPut, KeyValue, Lease, LeaseId, MetaError,
    MetadataStore, Range, WatchStream, expect_holds, ttl_seconds,
};

/// How long one request may take before it fails as unavailable, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to an endpoint may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
    Client(#[source] etcd_client::Error),
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
    client: Client,
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
        let mut connect = ConnectOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.connect_timeout)
            // Requests fail fast rather than queue when this member has lost its leader.
            .with_require_leader(true);
        if let Some(pem) = &options.ca_pem {
            connect =
                connect.with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem)));
        }
        if let Some((name, password)) = &options.user {
            connect = connect.with_user(name.clone(), password.clone());
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(client_error)?;
        let store = EtcdStore { client };
        // Any key will do: the point is a round trip to a member with a leader.
        store.get("\u{0}trellis-connect-check").await?;
        Ok(store)
    }

    /// The underlying client, for what the trait does not cover (tests compact through it).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, MetaError> {
        self.client.kv_client().txn(txn).await.map_err(client_error)
    }
}

#[async_trait::async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetaError> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(client_error)?;
        response.kvs().first().map(convert_kv).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range, MetaError> {
        let options = if prefix.is_empty() {
            GetOptions::new().with_all_keys()
        } else {
            GetOptions::new().with_prefix()
        };
        // etcd returns a range sorted by key, bytewise, as the trait asks.
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(options))
            .await
            .map_err(client_error)?;
        let kvs = response
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Range {
            kvs,
            revision: header_revision(response.header())?,
        })
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, MetaError> {
        let response = self
            .client
            .kv_client()
            .put(key, value.to_vec(), None)
            .await
            .map_err(client_error)?;
        header_revision(response.header())
    }

    async fn delete(&self, key: &str) -> Result<bool, MetaError> {
        let response = self
            .client
            .kv_client()
            .delete(key, None)
            .await
            .map_err(client_error)?;
        Ok(response.deleted() > 0)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Bytes,
    ) -> Result<CasOutcome, MetaError> {
        let txn = Txn::new()
            .when(compares(key, expect))
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(CasOutcome::Written {
                revision: header_revision(response.header())?,
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
        let txn = Txn::new()
            .when(compares(key, Expect::ModRevision(mod_revision)))
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(CasOutcome::Written {
                revision: header_revision(response.header())?,
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
        watch::watch(self.client.clone(), prefix.to_owned(), start_revision).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let sent_at = Instant::now();
        let requested = i64::try_from(ttl_seconds(ttl)).unwrap_or(i64::MAX);
        let response = self
            .client
            .lease_client()
            .grant(requested, None)
            .await
            .map_err(client_error)?;
        let granted = granted_ttl(response.ttl())?;
        Ok(Lease {
            id: response.id(),
            ttl: granted,
            held_until: sent_at + granted,
        })
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Lease>, MetaError> {
        // etcd-client's keep_alive sends a first refresh without telling the TTL; a second one on
        // the same stream does, and its send time is what `held_until` is counted from.
        let (mut keeper, mut responses) = match self.client.lease_client().keep_alive(lease).await {
            Ok(opened) => opened,
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(None),
            Err(error) => return Err(client_error(error)),
        };
        let sent_at = Instant::now();
        keeper.keep_alive().await.map_err(client_error)?;
        let Some(response) = responses.message().await.map_err(client_error)? else {
            return Err(MetaError::Unavailable(Box::new(EtcdError::Malformed {
                what: "an ended keep-alive stream",
            })));
        };
        if response.ttl() <= 0 {
            return Ok(None);
        }
        let ttl = granted_ttl(response.ttl())?;
        Ok(Some(Lease {
            id: lease,
            ttl,
            held_until: sent_at + ttl,
        }))
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<bool, MetaError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(false)
            }
            Err(error) => Err(client_error(error)),
        }
    }

    async fn guarded_put(&self, put: GuardedPut) -> Result<GuardedOutcome, MetaError> {
        let guard_compares: Vec<Compare> = put
            .guards
            .iter()
            .flat_map(|(key, expect)| compares(key, *expect))
            .collect();
        let reads: Vec<TxnOp> = put
            .guards
            .iter()
            .map(|(key, _)| TxnOp::get(key.as_str(), None))
            .collect();
        let options = put.lease.map(|lease| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when(guard_compares)
            .and_then([TxnOp::put(put.key.as_str(), put.value.to_vec(), options)])
            .or_else(reads);
        let response = match self.txn(txn).await {
            Err(MetaError::Storage(source)) if is_lease_not_found(source.as_ref()) => {
                return Err(MetaError::LeaseNotFound {
                    lease: put.lease.unwrap_or_default(),
                });
            }
            other => other?,
        };
        if response.succeeded() {
            return Ok(GuardedOutcome::Written {
                revision: header_revision(response.header())?,
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

/// The etcd compares that together mean `expect`. A mod revision compare alone would also
/// match an absent key when asked for revision 0; the version compare rules that out.
fn compares(key: &str, expect: Expect) -> Vec<Compare> {
    match expect {
        Expect::Absent => vec![Compare::version(key, CompareOp::Equal, 0)],
        Expect::ModRevision(revision) => vec![
            Compare::mod_revision(key, CompareOp::Equal, i64::try_from(revision).unwrap_or(-1)),
            Compare::version(key, CompareOp::Greater, 0),
        ],
    }
}

/// The single-key reads of a failed transaction's else branch, in order.
fn else_gets(response: &etcd_client::TxnResponse) -> Result<Vec<Option<KeyValue>>, MetaError> {
    response
        .op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(convert_kv).transpose(),
            _ => Err(MetaError::Storage(Box::new(EtcdError::Malformed {
                what: "a transaction answer without the reads asked for",
            }))),
        })
        .collect()
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, MetaError> {
    let key = kv
        .key_str()
        .map_err(|_| malformed("a key that is not UTF-8"))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: revision(kv.create_revision())?,
        mod_revision: revision(kv.mod_revision())?,
        version: revision(kv.version())?,
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<u64, MetaError> {
    match header {
        Some(header) => revision(header.revision()),
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

/// Sorts etcd-client errors into the trait's: what a retry later could cure is `Unavailable`.
fn client_error(error: etcd_client::Error) -> MetaError {
    let unavailable = match &error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
        ),
        _ => false,
    };
    let error = Box::new(EtcdError::Client(error));
    if unavailable {
        MetaError::Unavailable(error)
    } else {
        MetaError::Storage(error)
    }
}

fn is_lease_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<EtcdError>(),
        Some(EtcdError::Client(etcd_client::Error::GRpcStatus(status)))
            if status.code() == tonic::Code::NotFound
                && status.message().contains("lease not found")
    )
}
