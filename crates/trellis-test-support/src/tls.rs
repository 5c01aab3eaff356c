//! A certificate authority no system trusts and a server certificate it signed, for HTTPS
//! receivers on loopback: the one TLS set-up the delivery engine's tests and the binary's tests
//! share, so both test the same untrusted (or explicitly trusted) receiver.

use std::sync::Arc;

/// The CA's PEM (to trust it, e.g. through `webhook_ca_file`) and a rustls server config whose
/// certificate, for `hosts`, that CA signed.
pub struct TestTls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
    /// The server certificate and its key in PEM, for servers that read files (nats-server).
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestTls {
    /// Panics on failure: this is test set-up, and a failure here is a broken test machine.
    #[allow(clippy::expect_used)]
    pub fn for_hosts(hosts: &[&str]) -> TestTls {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let names = hosts
            .iter()
            .map(|host| (*host).to_owned())
            .collect::<Vec<_>>();
        let certificate = rcgen::CertificateParams::new(names)
            .expect("server certificate parameters")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS settings");
        TestTls {
            ca_pem: ca.pem(),
            server: Arc::new(server),
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
