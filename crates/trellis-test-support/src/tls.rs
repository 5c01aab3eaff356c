//! A certificate authority no system trusts and a server certificate it signed, for HTTPS
//! receivers on loopback: the one TLS set-up the delivery engine's tests and the binary's tests
//! share, so both test the same untrusted (or explicitly trusted) receiver.

use std::sync::{Arc, Mutex};

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

/// An `https` receiver on loopback under a [`TestTls`] certificate (a CA no system trusts), for
/// delivery tests: it answers every request `200` and records its `Host` and `ce-id`.
pub struct HttpsReceiver {
    port: u16,
    /// The CA that signed the receiver's certificate, in PEM.
    pub ca_pem: String,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl HttpsReceiver {
    /// Listens on 127.0.0.1 with a certificate for `hosts`.
    #[allow(clippy::expect_used)]
    pub async fn start(hosts: &[&str]) -> HttpsReceiver {
        let tls = TestTls::for_hosts(hosts);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let accept_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|value| value.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            if let Ok(mut seen) = seen.lock() {
                                seen.push((header("host"), header("ce-id")));
                            }
                            async {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Empty::<bytes::Bytes>::new(),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsReceiver {
            port,
            ca_pem: tls.ca_pem,
            requests,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://HOST:PORT/hook`.
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/hook", self.port)
    }

    /// `(Host, ce-id)` of each request that got past the TLS handshake, in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests
            .lock()
            .map(|requests| requests.clone())
            .unwrap_or_default()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
