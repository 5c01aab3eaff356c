use std::time::Duration;

use super::*;
use trellis_test_support::Receiver;

fn connector() -> Connector {
    Connector::new(
        Duration::from_secs(1),
        Arc::new(AddressGuard::default()),
        &WebhookTls::new(None).expect("system roots"),
    )
}

fn post() -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from_static(b"{}")));
    *request.method_mut() = http::Method::POST;
    request
}

async fn send(endpoint: &Endpoint) -> StatusCode {
    let build = || {
        let mut request = post();
        *request.uri_mut() = endpoint.request_uri().clone();
        request
    };
    endpoint
        .exchange(connector, build, 1024)
        .await
        .expect("an answer")
        .status
}

#[tokio::test]
async fn an_idle_connection_past_its_timeout_is_closed_and_a_new_one_opened() {
    let receiver = Receiver::answering(200).await.expect("receiver");
    let uri: Uri = receiver.url("/hook").parse().expect("a URL");
    let mut endpoint = Endpoint::new(&uri, metrics::Counter::noop()).expect("an endpoint");
    endpoint.idle_timeout = Duration::from_millis(50);

    assert_eq!(send(&endpoint).await, StatusCode::OK);
    endpoint.close_expired();
    assert_eq!(endpoint.lock_idle().len(), 1, "not yet expired: kept");
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close_expired();
    assert_eq!(endpoint.lock_idle().len(), 0, "expired: closed");

    assert_eq!(send(&endpoint).await, StatusCode::OK);
    assert_eq!(receiver.n_connections(), 2);
}

#[test]
fn the_host_header_leaves_out_the_default_port_and_the_request_line_the_authority() {
    let endpoint = Endpoint::new(
        &"https://hooks.example:443/in?x=1".parse().expect("a URL"),
        metrics::Counter::noop(),
    )
    .expect("ok");
    assert_eq!(endpoint.host, "hooks.example");
    assert_eq!(endpoint.request_uri(), "/in?x=1");
    let endpoint = Endpoint::new(
        &"http://[::1]:8080".parse().expect("a URL"),
        metrics::Counter::noop(),
    )
    .expect("ok");
    assert_eq!(endpoint.host, "[::1]:8080");
    assert_eq!(endpoint.request_uri(), "/");
}
