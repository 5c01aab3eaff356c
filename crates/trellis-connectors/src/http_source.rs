//! The HTTP source: a webhook receiver that answers each request only once its records are
//! durably published.
//!
//! A `POST` to `path` on `listen` becomes one record (a CloudEvents batch: one per event),
//! queued for [`Source::poll`]. The request waits on its records' callbacks:
//! - `200` once every record reports success (the worker published it durably);
//! - `503` with `Retry-After` when a record is cancelled or dropped (the connector stopped),
//!   `422` when it is rejected (bad data), `502` for any other failure;
//! - `503` with `Retry-After` at once when the queue is full, so the sender backs off;
//! - `413` for a body over `max_body_bytes`, `400` for a body that is not what `format` says,
//!   `401` for a GitHub delivery with a bad or missing signature.
//!
//! Every error is JSON, `{"error": "<code>", "message": "<sentence>"}`.
//!
//! **The worker must end the records it polls** (succeed or fail them, or take their
//! completion) rather than replace their callbacks: the callback is what answers the request.
//! Replacing it reports `Dropped` to the sender (503), who retries.
//!
//! Config keys ([`CONFIG_KEYS`]):
//! - `listen` (required): the address and port to bind, such as `0.0.0.0:8080`
//!   (`127.0.0.1:0` picks a free port; [`HttpSource::local_addr`] tells which).
//! - `path` (default `/`): the request path, starting with `/`.
//! - `format` (default `json`): `json` (any JSON body is the record's data), `cloudevents`
//!   (binary, structured or batched mode) or `github` (a GitHub webhook delivery).
//! - `secret` (required for `github`): the webhook secret; redacted wherever a config is shown.
//! - `queue_capacity` (default 1000): records waiting to be polled before requests get `503`.
//! - `max_body_bytes` (default 1 MiB): the largest request body.
//!
//! Records: `json` records get a fresh UUIDv7 id (an `Idempotency-Key` header, when sent, is
//! the id instead, so a retried request is deduplicated downstream) and
//! `datacontenttype` `application/json`. `github` records take their id from
//! `X-GitHub-Delivery` (a redelivery keeps it, so it is deduplicated downstream), their type
//! `com.github.<X-GitHub-Event>`, and the event name in the `githubevent` extension. A
//! `cloudevents` record is the event, mapped by [`from_cloud_event`].
//!
//! **Positions.** The partition is the configured `listen` and `path` (`0.0.0.0:8080/hooks`);
//! the offset is a sequence number of the source, continuing from the committed one. HTTP
//! offsets are not resumable: nothing can be read again from a sender. A request whose
//! records were not published got an error answer, and the sender retries it.

mod signature;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use trellis_connect::cloudevents::from_cloud_event;
use trellis_connect::{
    ConfigError, ConfigKey, ConnectRecord, ConnectorConfig, ConnectorError, Partition, Position,
    SendCallback, SendError, SendExceptionContext, SendResult, Source, SourceContext,
};

pub use signature::{GITHUB_SIGNATURE_HEADER, github_signature, verify_github_signature};

/// The keys this connector takes besides the common ones.
pub const CONFIG_KEYS: [ConfigKey; 6] = [
    ConfigKey::required(
        "listen",
        "The address and port to bind, such as 0.0.0.0:8080.",
    ),
    ConfigKey::optional("path", Some("/"), "The request path, starting with /."),
    ConfigKey::optional(
        "format",
        Some("json"),
        "json (any JSON body), cloudevents (any mode) or github (a GitHub webhook delivery).",
    ),
    ConfigKey::optional(
        "secret",
        None,
        "The GitHub webhook secret; required with format github.",
    )
    .secret(),
    ConfigKey::optional(
        "queue_capacity",
        Some("1000"),
        "Records waiting to be polled before requests get 503 (1 to 1000000).",
    ),
    ConfigKey::optional(
        "max_body_bytes",
        Some("1048576"),
        "The largest request body (1 to 64 MiB).",
    ),
];

/// Checks this connector's own keys without binding anything.
pub fn check_config(config: &ConnectorConfig) -> Result<(), ConfigError> {
    settings(config).map(drop)
}

/// Default `queue_capacity`.
pub const DEFAULT_QUEUE_CAPACITY: u64 = 1000;
/// Default `max_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// The `Retry-After` of every `503`: a full queue drains within about a poll.
pub const RETRY_AFTER_SECS: u32 = 1;
/// How long `poll` waits for a first record before returning an empty batch.
const POLL_WAIT: Duration = Duration::from_secs(1);
/// The most records one `poll` returns.
const MAX_POLL_BATCH: usize = 500;
/// How long `stop` lets requests in flight finish their answers before closing them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    CloudEvents,
    GitHub,
}

/// A webhook receiver, as a [`Source`]. See the module docs.
#[derive(Default)]
pub struct HttpSource {
    running: Option<Running>,
}

struct Running {
    local_addr: SocketAddr,
    receiver: mpsc::Receiver<ConnectRecord>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

/// What the request handlers share.
struct Shared {
    format: Format,
    secret: Vec<u8>,
    max_body_bytes: usize,
    partition: Partition,
    sender: mpsc::Sender<ConnectRecord>,
    /// The last offset given out. Assigning and queueing happen under this lock, so records
    /// reach the queue in offset order.
    last_offset: Mutex<u64>,
}

impl HttpSource {
    pub fn new() -> HttpSource {
        HttpSource::default()
    }

    /// The address the source listens on once started: the actual port when `listen` asked
    /// for port 0.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|running| running.local_addr)
    }
}

/// The settings, validated.
struct Settings {
    listen: SocketAddr,
    partition: Partition,
    path: String,
    format: Format,
    secret: Vec<u8>,
    queue_capacity: usize,
    max_body_bytes: usize,
}

fn settings(config: &ConnectorConfig) -> Result<Settings, ConfigError> {
    let listen_text = config.get_str("listen")?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new("listen", "an address and port such as 0.0.0.0:8080")
            .found("an unparsable address")
    })?;
    let path = config.get_opt_str("path")?.unwrap_or("/").to_owned();
    if !path.starts_with('/') || path.contains(['?', '#', '{', '}', '*']) {
        return Err(ConfigError::new(
            "path",
            "a request path starting with `/`, without `?`, `#`, `{`, `}` or `*`",
        ));
    }
    let format = match config.get_opt_str("format")?.unwrap_or("json") {
        "json" => Format::Json,
        "cloudevents" => Format::CloudEvents,
        "github" => Format::GitHub,
        _ => {
            return Err(
                ConfigError::new("format", "one of `json`, `cloudevents`, `github`")
                    .found("another string"),
            );
        }
    };
    let secret = config.get_opt_str("secret")?.unwrap_or("");
    if format == Format::GitHub && secret.is_empty() {
        return Err(ConfigError::new(
            "secret",
            "the webhook secret (a non-empty string) when `format` is `github`",
        )
        .found("nothing"));
    }
    let queue_capacity =
        config.get_u64_in("queue_capacity", 1, 1_000_000, DEFAULT_QUEUE_CAPACITY)?;
    let max_body_bytes = config.get_u64_in(
        "max_body_bytes",
        1,
        64 * 1024 * 1024,
        DEFAULT_MAX_BODY_BYTES,
    )?;
    Ok(Settings {
        listen,
        partition: Partition::new(format!("{listen_text}{path}")),
        path,
        format,
        secret: secret.as_bytes().to_vec(),
        // Both are bounded above, so they fit any usize of 32 bits or more.
        queue_capacity: usize::try_from(queue_capacity).unwrap_or(usize::MAX),
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
    })
}

#[async_trait]
impl Source for HttpSource {
    async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError> {
        if self.running.is_some() {
            return Err(ConnectorError::failed("the HTTP source is already started"));
        }
        let settings = settings(&context.config)?;
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let local_addr = listener.local_addr()?;
        let (sender, receiver) = mpsc::channel(settings.queue_capacity);
        let committed = context
            .committed_offset(&settings.partition)
            .map_or(0, |offset| offset.0);
        let shared = Arc::new(Shared {
            format: settings.format,
            secret: settings.secret,
            max_body_bytes: settings.max_body_bytes,
            partition: settings.partition,
            sender,
            last_offset: Mutex::new(committed),
        });
        let router = Router::new()
            .route(&settings.path, post(receive))
            .fallback(not_found)
            .with_state(shared);
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let name = context.name.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = shutdown_signal.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(connector = %name, %error, "the HTTP source's server failed");
            }
        });
        tracing::info!(connector = %context.name, %local_addr, "HTTP source listening");
        self.running = Some(Running {
            local_addr,
            receiver,
            shutdown: Some(shutdown),
            server,
        });
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
        let Some(running) = self.running.as_mut() else {
            return Err(ConnectorError::failed("the HTTP source is not started"));
        };
        let first = match tokio::time::timeout(POLL_WAIT, running.receiver.recv()).await {
            Ok(Some(record)) => record,
            Ok(None) | Err(_) => return Ok(Vec::new()),
        };
        let mut batch = vec![first];
        while batch.len() < MAX_POLL_BATCH {
            match running.receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        let Some(mut running) = self.running.take() else {
            return Ok(());
        };
        if let Some(shutdown) = running.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Closing first means no request queues a record after the drain below.
        running.receiver.close();
        let mut cancelled = 0usize;
        while let Ok(record) = running.receiver.try_recv() {
            record.fail(None, SendError::Cancelled);
            cancelled += 1;
        }
        if cancelled > 0 {
            tracing::info!(
                cancelled,
                "HTTP source stopped; queued requests answered 503"
            );
        }
        // Requests still waiting on records the worker holds get their answer when the worker
        // ends them; past the grace period their connections are closed unanswered.
        let abort = running.server.abort_handle();
        if tokio::time::timeout(STOP_GRACE, &mut running.server)
            .await
            .is_err()
        {
            abort.abort();
        }
        Ok(())
    }
}

/// Answers one request's record: the request handler awaits it.
struct Reply(Mutex<Option<oneshot::Sender<Result<(), SendError>>>>);

impl Reply {
    fn send(&self, outcome: Result<(), SendError>) {
        let sender = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            // The request may be gone (the sender hung up); its record ended all the same.
            let _ = sender.send(outcome);
        }
    }
}

impl SendCallback for Reply {
    fn on_success(&self, _result: SendResult) {
        self.send(Ok(()));
    }
    fn on_exception(&self, context: SendExceptionContext) {
        self.send(Err(context.cause));
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    match receive_records(&shared, &headers, body).await {
        Ok(ids) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "ids": ids })),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

async fn receive_records(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<String>, HttpError> {
    let body = read_body(headers, body, shared.max_body_bytes).await?;
    let records = match shared.format {
        Format::Json => vec![json_record(headers, body)?],
        Format::GitHub => vec![github_record(&shared.secret, headers, body)?],
        Format::CloudEvents => cloudevent_records(headers, body)?,
    };
    let ids: Vec<String> = records.iter().map(|record| record.id.clone()).collect();
    let replies = enqueue(shared, records)?;
    for reply in replies {
        match reply.await {
            Ok(Ok(())) => {}
            Ok(Err(cause)) => return Err(HttpError::from_send(&cause)),
            // The callback's sender cannot go unsent (a completion always reports), but if it
            // did, nothing is known of the record: the sender should retry.
            Err(_) => return Err(HttpError::from_send(&SendError::Dropped)),
        }
    }
    Ok(ids)
}

/// Queues the records all or none, giving each its offset and the callback its request waits
/// on.
fn enqueue(
    shared: &Shared,
    records: Vec<ConnectRecord>,
) -> Result<Vec<oneshot::Receiver<Result<(), SendError>>>, HttpError> {
    let permits = match shared.sender.try_reserve_many(records.len()) {
        Ok(permits) => permits,
        Err(mpsc::error::TrySendError::Full(()))
            if records.len() > shared.sender.max_capacity() =>
        {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "the batch has {} events, more than the queue holds ({})",
                    records.len(),
                    shared.sender.max_capacity()
                ),
            ));
        }
        Err(mpsc::error::TrySendError::Full(())) => {
            return Err(HttpError::unavailable(
                "queue_full",
                "the connector's queue is full; retry later",
            ));
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            return Err(HttpError::unavailable(
                "stopping",
                "the connector is stopping; retry later",
            ));
        }
    };
    let mut replies = Vec::with_capacity(records.len());
    let mut last_offset = shared
        .last_offset
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (mut record, permit) in records.into_iter().zip(permits) {
        *last_offset += 1;
        record.position = Position {
            partition: shared.partition.clone(),
            offset: trellis_connect::Offset(*last_offset),
        };
        let (sender, receiver) = oneshot::channel();
        record.set_callback(Arc::new(Reply(Mutex::new(Some(sender)))));
        permit.send(record);
        replies.push(receiver);
    }
    Ok(replies)
}

/// A position the record carries until it is queued.
fn unplaced() -> Position {
    Position::new("", 0)
}

fn json_record(headers: &HeaderMap, body: Bytes) -> Result<ConnectRecord, HttpError> {
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(HttpError::bad_request(
            "invalid_json",
            format!("the body is not JSON: {error}"),
        ));
    }
    let id = match header_text(headers, "idempotency-key") {
        Some(key) if !key.is_empty() => key.to_owned(),
        _ => uuid::Uuid::now_v7().to_string(),
    };
    Ok(ConnectRecord::new(id, unplaced(), body)
        .with_extension("datacontenttype", "application/json"))
}

fn github_record(
    secret: &[u8],
    headers: &HeaderMap,
    body: Bytes,
) -> Result<ConnectRecord, HttpError> {
    let Some(signature) = headers.get(GITHUB_SIGNATURE_HEADER) else {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "missing_signature",
            "the request has no X-Hub-Signature-256 header",
        ));
    };
    if !verify_github_signature(secret, signature.as_bytes(), &body) {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "X-Hub-Signature-256 does not match the body under the webhook secret",
        ));
    }
    let event = required_header(headers, "x-github-event")?;
    let delivery = required_header(headers, "x-github-delivery")?;
    let content_type = header_text(headers, "content-type").unwrap_or("application/json");
    Ok(ConnectRecord::new(delivery, unplaced(), body)
        .with_extension("type", format!("com.github.{event}"))
        .with_extension("githubevent", event)
        .with_extension("datacontenttype", content_type))
}

fn cloudevent_records(headers: &HeaderMap, body: Bytes) -> Result<Vec<ConnectRecord>, HttpError> {
    let mode = trellis_cloudevents::content_mode(headers).map_err(|error| {
        HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            error.message,
        )
    })?;
    let invalid = |error: trellis_cloudevents::EventError| {
        HttpError::bad_request("invalid_event", error.message)
    };
    let events = match mode {
        trellis_cloudevents::ContentMode::Binary => {
            vec![trellis_cloudevents::parse_binary(headers, body).map_err(invalid)?]
        }
        trellis_cloudevents::ContentMode::Structured => {
            vec![trellis_cloudevents::parse_structured(&body).map_err(invalid)?]
        }
        trellis_cloudevents::ContentMode::Batch => {
            trellis_cloudevents::parse_batch(&body).map_err(invalid)?
        }
    };
    Ok(events
        .iter()
        .map(|event| from_cloud_event(event, unplaced()))
        .collect())
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn required_header(headers: &HeaderMap, name: &'static str) -> Result<String, HttpError> {
    match header_text(headers, name) {
        Some(value) if !value.is_empty() => Ok(value.to_owned()),
        _ => Err(HttpError::bad_request(
            "missing_header",
            format!("the request has no {name} header"),
        )),
    }
}

/// The whole body, refused with 413 above `limit` (before reading when `Content-Length` says
/// so).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the limit of {limit} bytes (max_body_bytes)"),
        )
    };
    let declared =
        header_text(headers, "content-length").and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(HttpError::bad_request(
            "unreadable_body",
            format!("the request body could not be read: {error}"),
        )),
    }
}

async fn not_found() -> Response {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no webhook receiver at this path",
    )
    .into_response()
}

/// An error answer: `{"error": code, "message": message}`, with `Retry-After` on a 503.
struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// The answer for a record that ended without being published.
    fn from_send(cause: &SendError) -> HttpError {
        match cause {
            SendError::Dropped | SendError::Cancelled | SendError::Retriable(_) => {
                HttpError::unavailable("not_published", format!("{cause}; retry later"))
            }
            SendError::Rejected(_) => HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                cause.to_string(),
            ),
            _ => HttpError::new(StatusCode::BAD_GATEWAY, "publish_failed", cause.to_string()),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}
