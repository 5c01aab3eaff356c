//! A minimal client of the Trellis HTTP API for the admin commands: one HTTP/1.1 request per
//! call on a fresh connection, bounded by timeouts, answering the status and the JSON body.
//!
//! It speaks plain `http://` only: the binary carries no TLS stack. It does not retry; a command
//! run by a person fails fast with one line that says what to check.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// A client bound to one server, e.g. `http://127.0.0.1:10105`.
#[derive(Debug)]
pub(crate) struct ApiClient {
    /// The server as the user gave it, for messages.
    server: String,
    host: String,
    port: u16,
    /// The `Host` header: host and port as written in the URL.
    authority: String,
    /// A path prefix from the server URL (a proxy mount point), without the trailing `/`.
    base_path: String,
}

/// An answer of the API: its status and, unless the body was empty, its JSON.
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Option<Value>,
}

// Admin requests are small and the API answers them from memory; a server that takes longer than
// this is stuck or is not trellis, and a person is waiting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger answers are refused rather than buffered: a list of thousands of subscriptions is a
/// few MiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

impl ApiClient {
    /// Checks `server` (`http://HOST[:PORT][/PREFIX]`); connects only when a request is sent.
    pub(crate) fn new(server: &str) -> anyhow::Result<ApiClient> {
        let example = "e.g. http://127.0.0.1:10105";
        let uri: Uri = server
            .parse()
            .map_err(|_| anyhow::anyhow!("--server must be a URL, {example}; got {server:?}"))?;
        if uri.scheme_str() != Some("http") {
            anyhow::bail!(
                "--server must be an http:// URL (the CLI does not speak TLS), {example}; got {server:?}"
            );
        }
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            anyhow::bail!("--server must name a host, {example}; got {server:?}");
        };
        if uri.query().is_some() {
            anyhow::bail!("--server must not have a query, {example}; got {server:?}");
        }
        Ok(ApiClient {
            server: server.trim_end_matches('/').to_owned(),
            // `Uri::host` keeps the brackets of an IPv6 literal; a socket address must not.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<ApiResponse> {
        self.send(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<ApiResponse> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `POST` without a body (`restart`).
    pub(crate) async fn post_empty(&self, path: &str) -> anyhow::Result<ApiResponse> {
        self.send(Method::POST, path, None).await
    }

    /// `PUT` with a JSON body, or with none (`pause`, `resume`).
    pub(crate) async fn put(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<ApiResponse> {
        self.send(Method::PUT, path, body).await
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<ApiResponse> {
        self.send(Method::DELETE, path, None).await
    }

    /// Sends one request to `path` (which starts with `/v1/`) and reads the whole answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<ApiResponse> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(res) => res,
            Err(_elapsed) => anyhow::bail!(
                "{} did not answer within {} s",
                self.server,
                REQUEST_TIMEOUT.as_secs()
            ),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<ApiResponse> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => anyhow::bail!("cannot reach {}: {}", self.server, io_reason(&error)),
            Err(_elapsed) => anyhow::bail!(
                "cannot reach {}: no connection within {} s",
                self.server,
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let failed = || format!("request to {} failed", self.server);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(failed)?;
        // The connection's own error, if any, also fails `send_request`, which reports it.
        tokio::spawn(connection);

        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(HOST, &self.authority)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("trellis/", env!("CARGO_PKG_VERSION")));
        let payload = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body).context("cannot encode the request body")?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .with_context(|| format!("cannot build a request for {}{path}", self.server))?;
        let response = sender.send_request(request).await.with_context(failed)?;

        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| anyhow::anyhow!("{}: {error}", failed()))?
            .to_bytes();
        let body = if bytes.is_empty() {
            None
        } else {
            let json = serde_json::from_slice(&bytes).map_err(|_| {
                anyhow::anyhow!(
                    "{} answered {status} with a body that is not JSON; is it the trellis HTTP API?",
                    self.server
                )
            })?;
            Some(json)
        };
        Ok(ApiResponse { status, body })
    }
}

impl ApiResponse {
    /// The JSON of a successful answer; any other answer becomes the API's error as one line.
    pub(crate) fn into_json(self) -> anyhow::Result<Value> {
        match self.into_success()? {
            Some(body) => Ok(body),
            None => anyhow::bail!("the server answered with an empty body where JSON was expected"),
        }
    }

    /// The body of a 2xx answer, if any; any other answer becomes the API's error as one line.
    pub(crate) fn into_success(self) -> anyhow::Result<Option<Value>> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        Err(anyhow::anyhow!(error_line(self.status, self.body.as_ref())))
    }
}

/// The API's error `{"error","message"[,"field"|"attribute"]}` as `code: [field: ]message`.
/// The field is left out when the message already starts with it, as the subscriptions API's
/// messages do, or names its key in backticks, as the connectors API's config errors do.
pub(crate) fn error_line(status: StatusCode, body: Option<&Value>) -> String {
    let text = |key: &str| body.and_then(|body| body.get(key)).and_then(Value::as_str);
    match (text("error"), text("message")) {
        (Some(code), Some(message)) => {
            // The line goes to a terminal: keep it one line whatever the server wrote.
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            match text("field").or_else(|| text("attribute")) {
                Some(field) if !message.starts_with(field) && !names_key(&message, field) => {
                    format!("{code}: {field}: {message}")
                }
                _ => format!("{code}: {message}"),
            }
        }
        _ => format!("the server answered {status}"),
    }
}

/// Whether `message` names the config key of `field` (`config.<key>`, or the key alone) in
/// backticks, as the connectors API's config errors do.
fn names_key(message: &str, field: &str) -> bool {
    let key = field.strip_prefix("config.").unwrap_or(field);
    message.contains(&format!("`{key}`"))
}

/// `name` as one path segment: everything but unreserved characters percent-encoded, and `.`
/// or `..` encoded too, so no name can walk the path.
pub(crate) fn path_segment(name: &str) -> String {
    let only_dots = name.bytes().all(|byte| byte == b'.');
    let mut segment = String::with_capacity(name.len());
    for byte in name.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~');
        if unreserved || (byte == b'.' && !only_dots) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

/// What went wrong with a connection attempt, in the words a person expects.
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is trellis serve running?)".to_owned()
        }
        std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests;
