//! Which servers an `https` webhook may be: the TLS client settings every connection uses.
//!
//! Trust comes from the system's certificate store (as `curl` and most clients see it), plus
//! any CA certificates the operator names, for receivers behind a private CA. The crypto
//! provider is chosen here, not taken from the process default, so another crate in the same
//! binary that installs a different provider cannot change or break it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// The TLS client settings for webhooks, shared by every engine that uses them.
#[derive(Clone)]
pub struct WebhookTls {
    config: Arc<ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read CA certificates from {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("the TLS settings cannot be built: {0}")]
    Config(#[from] rustls::Error),
}

impl WebhookTls {
    /// The system's trusted roots plus the PEM certificates in `extra_ca_file`, if given.
    pub fn new(extra_ca_file: Option<&Path>) -> Result<WebhookTls, TlsError> {
        let mut roots = system_roots().clone();
        if let Some(path) = extra_ca_file {
            let shown = path.display().to_string();
            let ca_error = |message: String| TlsError::CaFile {
                path: shown.clone(),
                message,
            };
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|error| ca_error(error.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| ca_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(TlsError::NoCertificate { path: shown });
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| ca_error(error.to_string()))?;
            }
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(WebhookTls {
            config: Arc::new(config),
        })
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }
}

impl std::fmt::Debug for WebhookTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTls").finish_non_exhaustive()
    }
}

/// The system store, read once: reading it parses every certificate on the machine.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(message = "Some system CA certificates could not be read.", error = %error);
        }
        let mut roots = RootCertStore::empty();
        let (_, n_ignored) = roots.add_parsable_certificates(loaded.certs);
        if n_ignored > 0 {
            tracing::warn!(
                message = "Some system CA certificates were not usable and are ignored.",
                n_ignored
            );
        }
        roots
    })
}

#[cfg(test)]
mod tests;
