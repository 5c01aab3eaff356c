//! The `[meta]` and `[cluster]` settings: where metadata is kept (the embedded store, or etcd
//! shared by every replica) and who this replica is among the others. Resolved like the rest:
//! file, then environment, then flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use trellis_meta::EtcdOptions;
use trellis_runtime::RuntimeConfig;

use super::StorageBackend;
use crate::cli::ServeArgs;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMeta {
    /// `embedded`, or `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS).
    url: Option<String>,
    /// PEM CA certificates trusted for etcd's TLS certificates.
    ca_file: Option<PathBuf>,
    user: Option<String>,
    /// A file holding the etcd user's password.
    password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    node_id: Option<String>,
    advertise_http: Option<String>,
    advertise_grpc: Option<String>,
    lease_ttl_ms: Option<u64>,
}

/// Where metadata is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaBackend {
    /// `meta.redb` in the data dir.
    Embedded,
    /// An etcd cluster, shared by the replicas.
    Etcd(EtcdSettings),
}

/// How to reach etcd, with the CA and password already read from their files.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct EtcdSettings {
    /// `HOST:PORT` each.
    pub(crate) endpoints: Vec<String>,
    /// Set exactly when TLS is on: `etcds://` needs a CA, and a CA turns TLS on.
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) user: Option<String>,
    password: Option<String>,
}

pub(crate) const DEFAULT_LEASE_TTL_MS: u64 = 5_000;
/// Below a second the lease would be refreshed so often that one slow etcd answer ends it.
const MIN_LEASE_TTL_MS: u64 = 1_000;
const MAX_LEASE_TTL_MS: u64 = 3_600_000;
const MAX_NODE_ID_CHARS: usize = 128;

impl MetaBackend {
    /// Where metadata is kept, fit for a log line or an error: endpoints only, never a
    /// password.
    pub(crate) fn describe(&self) -> String {
        match self {
            MetaBackend::Embedded => "embedded".to_owned(),
            MetaBackend::Etcd(etcd) => etcd.describe(),
        }
    }

    pub(super) fn resolve(
        args: &ServeArgs,
        file: &FileMeta,
        storage: &StorageBackend,
    ) -> anyhow::Result<MetaBackend> {
        let url = args
            .meta
            .clone()
            .or_else(|| file.url.clone())
            .unwrap_or_else(|| "embedded".to_owned());
        let url = url.trim();
        let ca_file = args.meta_ca.clone().or_else(|| file.ca_file.clone());
        let user = args.meta_user.clone().or_else(|| file.user.clone());
        let password_file = args
            .meta_password_file
            .clone()
            .or_else(|| file.password_file.clone());
        if url == "embedded" {
            if ca_file.is_some() || user.is_some() || password_file.is_some() {
                bail!(
                    "etcd options (CA, user, password file) need etcd metadata: set --meta etcd://HOST:PORT"
                );
            }
            return Ok(MetaBackend::Embedded);
        }
        let (tls, endpoints) = parse_etcd_url(url)?;
        if *storage == StorageBackend::Embedded {
            bail!(
                "etcd metadata needs NATS storage, so that the replicas share events too: add --storage nats://HOST:PORT"
            );
        }
        let ca_pem = match &ca_file {
            Some(path) => Some(read_ca(path)?),
            None if tls => bail!(
                "etcds:// needs --meta-ca FILE (meta.ca_file): the PEM CA that signed etcd's certificates"
            ),
            None => None,
        };
        let password = match (&user, &password_file) {
            (None, None) => None,
            (Some(_), None) => bail!(
                "an etcd user needs its password in a file: set --meta-password-file FILE (meta.password_file)"
            ),
            (None, Some(_)) => {
                bail!("an etcd password file needs its user: set --meta-user USER (meta.user)")
            }
            (Some(user), Some(_)) if user.trim().is_empty() => {
                bail!("the etcd user (--meta-user, meta.user) is empty")
            }
            (Some(_), Some(path)) => Some(read_password(path)?),
        };
        Ok(MetaBackend::Etcd(EtcdSettings {
            endpoints,
            ca_pem,
            user: user.map(|user| user.trim().to_owned()),
            password,
        }))
    }
}

impl EtcdSettings {
    /// `etcd://HOST:PORT,HOST:PORT`, or `etcds://...` with TLS.
    pub(crate) fn describe(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "etcds"
        } else {
            "etcd"
        };
        format!("{scheme}://{}", self.endpoints.join(","))
    }

    /// What `EtcdStore::connect` takes.
    pub(crate) fn options(&self) -> EtcdOptions {
        let mut options = EtcdOptions::new(self.endpoints.iter().cloned());
        if let Some(pem) = &self.ca_pem {
            options = options.ca_pem(pem.clone());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user(user.clone(), password.clone());
        }
        options
    }
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: settings reach logs and panics.
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.ca_pem.is_some())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `etcd://A:1,B:2` (the scheme may be repeated on each endpoint) as whether TLS is asked for
/// and the `HOST:PORT` endpoints.
fn parse_etcd_url(url: &str) -> anyhow::Result<(bool, Vec<String>)> {
    // Checked first, so that no message below repeats a password written into the URL.
    if url.contains('@') {
        bail!(
            "the etcd URL must not hold a user or password: set --meta-user and --meta-password-file"
        );
    }
    let shape = "meta must be \"embedded\" or etcd endpoints such as etcd://127.0.0.1:2379[,HOST:PORT...] (etcds:// for TLS)";
    let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("etcds://") {
        (true, rest)
    } else {
        bail!("{shape}; got {url:?}");
    };
    let scheme = if tls { "etcds://" } else { "etcd://" };
    let mut endpoints = Vec::new();
    for part in rest.split(',') {
        let part = part.trim();
        let endpoint = part.strip_prefix(scheme).unwrap_or(part);
        let endpoint = endpoint.strip_suffix('/').unwrap_or(endpoint);
        if !is_host_port(endpoint) {
            bail!("{shape}; {part:?} is not HOST:PORT in {url:?}");
        }
        endpoints.push(endpoint.to_owned());
    }
    Ok((tls, endpoints))
}

/// `host:port` or `[v6]:port`, with a port from 1 and nothing that belongs to a URL.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    host_ok && port.parse::<u16>().is_ok_and(|port| port > 0)
}

fn read_ca(path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the etcd CA file {}", path.display()))?;
    // tonic only parses it when connecting; a wrong file is better named here.
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|window| window == b"-----BEGIN CERTIFICATE-----")
    {
        bail!(
            "the etcd CA file {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(pem)
}

/// The file's text without its trailing line break (editors and `echo` add one).
fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the etcd password file {}", path.display()))?;
    let password = text.strip_suffix('\n').map_or(text.as_str(), |rest| {
        rest.strip_suffix('\r').unwrap_or(rest)
    });
    if password.is_empty() {
        bail!("the etcd password file {} is empty", path.display());
    }
    Ok(password.to_owned())
}

/// Fills `runtime.cluster` from the file, environment and flags; the node id is made up here
/// when none is given.
pub(super) fn resolve_cluster(
    args: &ServeArgs,
    file: &FileCluster,
    runtime: &mut RuntimeConfig,
) -> anyhow::Result<()> {
    let node_id = match args.node_id.clone().or_else(|| file.node_id.clone()) {
        Some(id) => {
            if !is_node_id(&id) {
                bail!(
                    "node id (--node-id, cluster.node_id) must be 1 to {MAX_NODE_ID_CHARS} of A-Z a-z 0-9 . _ -; got {id:?}"
                );
            }
            id
        }
        None => default_node_id(),
    };
    let advertise = |key: &str, value: Option<String>| -> anyhow::Result<Option<String>> {
        match value {
            Some(address) if !is_host_port(address.trim()) => {
                bail!("cluster.{key} must be HOST:PORT such as 10.0.0.5:10105; got {address:?}")
            }
            other => Ok(other.map(|address| address.trim().to_owned())),
        }
    };
    let advertise_http = advertise(
        "advertise_http",
        args.advertise_http
            .clone()
            .or_else(|| file.advertise_http.clone()),
    )?;
    let advertise_grpc = advertise(
        "advertise_grpc",
        args.advertise_grpc
            .clone()
            .or_else(|| file.advertise_grpc.clone()),
    )?;
    let lease_ttl_ms = args
        .lease_ttl_ms
        .or(file.lease_ttl_ms)
        .unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&lease_ttl_ms) {
        bail!(
            "cluster.lease_ttl_ms must be between {MIN_LEASE_TTL_MS} and {MAX_LEASE_TTL_MS}; got {lease_ttl_ms}"
        );
    }
    runtime.cluster.node_id = Some(node_id);
    runtime.cluster.advertise_http = advertise_http;
    runtime.cluster.advertise_grpc = advertise_grpc;
    runtime.cluster.lease_ttl = Duration::from_millis(lease_ttl_ms);
    Ok(())
}

fn is_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_CHARS).contains(&id.chars().count())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `HOSTNAME-1a2b3c`: readable in `trellis cluster status`, and unique per process even when
/// replicas share a host name (containers restarted under the same name).
fn default_node_id() -> String {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default();
    let mut host: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NODE_ID_CHARS - 7)
        .collect();
    if host.is_empty() {
        host = "trellis".to_owned();
    }
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &random[..6])
}

#[cfg(test)]
mod tests;
