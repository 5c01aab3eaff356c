use std::io::Write;

use super::*;

#[test]
fn the_system_roots_alone_make_a_configuration() {
    WebhookTls::new(None).expect("system roots and the ring provider");
}

#[test]
fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_naming_it() {
    let missing = Path::new("/nonexistent/trellis-ca.pem");
    let error = WebhookTls::new(Some(missing)).expect_err("no such file");
    assert!(
        error.to_string().contains("/nonexistent/trellis-ca.pem"),
        "{error}"
    );

    let mut empty = tempfile::NamedTempFile::new().expect("temp file");
    empty
        .write_all(b"not a certificate\n")
        .expect("write temp file");
    let error = WebhookTls::new(Some(empty.path())).expect_err("no PEM certificate");
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
}
