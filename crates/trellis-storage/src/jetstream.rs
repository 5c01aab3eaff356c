//! The backend over NATS JetStream (server 2.9 or later; no 2.10+ stream field is sent).
//!
//! **Names.** A topic is a stream. Topic names are `[A-Za-z0-9._-]` (see
//! `trellis_log::validate_topic_name`); stream names may not contain `.`. The stream of topic `t`
//! is `tr~` followed by `t` with every `.` replaced by `~`, a character no topic name contains, so
//! the mapping is injective and reversible (`orders.eu` ↔ `tr~orders~eu`), and the longest name
//! (3 + 249 characters) still fits in one file name of the server's store. The stream's one
//! subject is `trellis.<stream name>`, a single token after `trellis.`. Streams whose names do not
//! decode, or whose description does not mark them as Trellis topics, are not listed.
//!
//! **Offsets.** Offset = stream sequence - 1. Nothing but retention removes messages, so offsets
//! are dense.
//!
//! **Settings.** `retention_age` is the stream's `max_age`, `retention_bytes` its `max_bytes`
//! (discard old); storage is always file, replicas come from [`JetStreamOptions::replicas`].
//! The server's shortest `max_age` is 100 ms: a shorter age is given to it as 100 ms (retention
//! allows removing older records, it does not promise to) and kept in the description, so that
//! it reads back as set.
//! `durability` and `segment_bytes` have no JetStream counterpart: they are kept in the stream's
//! description so that they read back as set. **Durability on 2.9:** an acknowledged append
//! means the stream's leader (with R3, a quorum of its replicas) has written it to its store
//! files, that is to the operating system's page cache, which the server fsyncs on its own
//! schedule; there is no per-write fsync, whatever `durability` says. A lost power on an R1
//! server can lose acknowledged records.
//!
//! **Deduplication.** A record with a key is published with `Nats-Msg-Id` = the key in hex, and
//! the stream's duplicate window is the store's dedup window (capped at `max_age`, which the server
//! requires), so a retry is stored once whichever client sends it. A duplicate's PubAck carries
//! the first copy's sequence, which is the answer. Records without a key are never duplicates.
//! A zero window turns deduplication off: no record carries a `Nats-Msg-Id` (the server would
//! read a zero duplicate window as its default of two minutes). The server's smallest window is
//! 100 ms, so [`JetStreamStore::connect`] refuses a shorter one that is not zero.
//!
//! **Batches are not atomic** (JetStream 2.9 has no batch publish). A batch's records are
//! published in order on one connection, each acknowledged on its own; batches submitted through
//! one store do not interleave (a store-wide lock covers the publishing, not the wait for acks),
//! so a batch's fresh records get consecutive offsets unless another client writes to the same
//! stream. If a record fails (server gone, timeout), the batch fails, and the records before it
//! may be stored. Resending the whole batch then stores exactly the missing keyed records, the
//! others being answered as duplicates of their first copy; unkeyed records of a failed batch
//! may be stored twice. The order of a broken batch is not kept: records lost with the
//! connection are stored by the resend, after later records of the batch that the client still
//! held and sent once it had reconnected. Every record's answer is the offset it is stored at. Size limits are checked for the whole batch before anything is sent, so a
//! batch refused for size stores nothing. A record is limited by the server's `max_payload`
//! (1 MiB by default), not by the embedded log's limit.
//!
//! A topic is created only if its stream does not exist yet; two stores creating the same topic
//! at once with the same settings may both succeed (the server accepts an identical create). A
//! handle belongs to the stream it was made for, known by the stream's creation time: once that
//! stream is deleted, info, reads, waits and settings through the handle fail with `NoSuchTopic`,
//! also after a stream of the same name is created again. Appends are not checked (that would
//! cost a request per append): through a handle kept across a delete and a re-create they reach
//! the new stream.
//!
//! **Reads** get one message per request from the stream's sequence range (`STREAM.MSG.GET`,
//! which 2.9 serves without `allow_direct`), 16 requests in flight, holding at most one page
//! (plus those 16 messages) in memory.
//!
//! **Waiting** does not poll: [`TopicStore::wait_for`] subscribes to the stream-deleted advisory,
//! checks the stream's last sequence, and otherwise creates an ephemeral push consumer (no acks,
//! kept in memory) that starts at the awaited sequence; its first delivery means the record is
//! stored. The consumer is deleted afterwards, or by the server once its inbox loses interest.
//! The server starts a consumer asked to start past the stream's end at its next record, so a
//! wait for an offset beyond the next one takes headers only and asks the stream after each
//! delivery. A wait ends with `Unavailable` when the connection is lost (or is down when it
//! starts), since the server may forget its consumer meanwhile; the caller waits again once it
//! is back.
//!
//! **Retention** is the server's (`max_age`, `max_bytes`); `enforce_retention` does nothing.
//! A deleted topic is a deleted stream; a topic created again under its name is a new stream,
//! starting at offset 0 with an empty duplicate window. Errors reaching the server (refused
//! connection, timeouts) are `StorageError::Unavailable`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, header};
use futures::StreamExt;

use crate::{
    AppendOutcome, AppendRecord, Durability, EventStore, PendingAppend, ReadPage, Record,
    StorageError, TopicInfo, TopicSettings, TopicStore,
};

const STREAM_PREFIX: &str = "tr~";
const SUBJECT_PREFIX: &str = "trellis.";
const DESCRIPTION_MARK: &str = "trellis topic";
/// Message requests a read keeps in flight.
const READ_AHEAD: usize = 16;
/// Room for the headers of a record (`Nats-Msg-Id`, `Nats-Expected-Stream`) in `max_payload`.
const HEADER_ALLOWANCE: usize = 512;
/// How often a waiting reader asks whether its stream is still there and still short of the
/// offset. The server's deletion advisory and the consumer's deliveries normally wake it at
/// once, but an advisory is sent at most once and can be lost: a reader (a consumer group
/// waiting for its next record) missed one under load and waited for ever after its topic
/// was deleted.
const WAIT_RECHECK: Duration = Duration::from_secs(5);
/// The shortest duplicate window the server accepts.
const MIN_DEDUP_WINDOW: Duration = Duration::from_millis(100);
/// The shortest `max_age` the server accepts.
const MIN_MAX_AGE: Duration = Duration::from_millis(100);

/// How to reach JetStream and how to lay topics out on it.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// NATS server URLs, comma-separated, e.g. `nats://10.0.0.1:4222,nats://10.0.0.2:4222`;
    /// the client picks one and moves to another when it is lost. `tls://` requires TLS.
    pub url: String,
    /// A NATS credentials file (JWT and NKey seed), for servers that require one.
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates to trust for the server's TLS certificate, besides the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas of every stream created: 1 on a single server, 3 against a cluster.
    pub replicas: usize,
    /// The duplicate window of every stream (capped at the topic's retention age).
    pub dedup_window: Duration,
    /// How long a request or publish acknowledgement may take before the store is
    /// `Unavailable`.
    pub request_timeout: Duration,
}

impl JetStreamOptions {
    pub fn new(url: impl Into<String>) -> JetStreamOptions {
        JetStreamOptions {
            url: url.into(),
            credentials_file: None,
            tls_ca_file: None,
            replicas: 1,
            dedup_window: Duration::from_secs(10 * 60),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A user name or password as written in a URL, percent-decoded.
fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The server addresses of a comma-separated URL list.
fn parse_servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, StorageError> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|error| {
                StorageError::InvalidOptions(format!("{url:?} is not a NATS server URL: {error}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|servers| {
            if servers.is_empty() {
                Err(StorageError::InvalidOptions(
                    "no NATS server URL given".to_owned(),
                ))
            } else {
                Ok(servers)
            }
        })
}

/// The stream name of a topic (see the module doc).
pub fn stream_name(topic: &str) -> String {
    format!("{STREAM_PREFIX}{}", topic.replace('.', "~"))
}

/// The topic of a stream name, if it is one [`stream_name`] makes.
pub fn topic_name(stream: &str) -> Option<String> {
    if stream.contains('.') {
        return None;
    }
    let topic = stream.strip_prefix(STREAM_PREFIX)?.replace('~', ".");
    trellis_log::validate_topic_name(&topic).ok()?;
    Some(topic)
}

fn subject_of(stream: &str) -> String {
    format!("{SUBJECT_PREFIX}{stream}")
}

#[derive(Debug)]
struct Shared {
    client: async_nats::Client,
    context: jetstream::Context,
    options: JetStreamOptions,
    closed: AtomicBool,
    closed_tx: tokio::sync::watch::Sender<bool>,
    /// Counts the connection's losses, so that a waiter learns of one: what it waits on may
    /// have been lost with the connection (its consumer, its subscription's interest).
    disconnects: Arc<tokio::sync::watch::Sender<u64>>,
    /// Held while a batch is being published, so that batches keep their submission order.
    submit: tokio::sync::Mutex<()>,
}

impl Shared {
    fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StorageError::Closed)
        } else {
            Ok(())
        }
    }

    async fn stream(&self, topic: &str) -> Result<stream::Stream, StorageError> {
        self.check_open()?;
        self.context
            .get_stream(stream_name(topic))
            .await
            .map_err(|error| get_stream_error(topic, error))
    }

    fn config(&self, topic: &str, settings: &TopicSettings) -> stream::Config {
        let name = stream_name(topic);
        let max_age = match settings.retention_age {
            Some(age) if !age.is_zero() => age.max(MIN_MAX_AGE),
            _ => Duration::ZERO,
        };
        let duplicate_window = if max_age.is_zero() {
            self.options.dedup_window
        } else {
            self.options.dedup_window.min(max_age)
        };
        stream::Config {
            subjects: vec![subject_of(&name)],
            name,
            description: Some(describe(topic, settings)),
            max_age,
            max_bytes: settings
                .retention_bytes
                .map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
            max_messages: -1,
            max_messages_per_subject: -1,
            discard: stream::DiscardPolicy::Old,
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.options.replicas.max(1),
            duplicate_window,
            ..Default::default()
        }
    }

    /// A handle on the stream `info` describes.
    fn handle(self: &Arc<Self>, topic: &str, info: &stream::Info) -> Arc<dyn TopicStore> {
        let stream = stream_name(topic);
        Arc::new(JetStreamTopic {
            name: topic.to_owned(),
            subject: subject_of(&stream),
            stream,
            created: info.created.unix_timestamp_nanos(),
            shared: Arc::clone(self),
        })
    }
}

fn describe(topic: &str, settings: &TopicSettings) -> String {
    let durability = match settings.durability {
        Durability::Always => "always".to_owned(),
        Durability::Never => "never".to_owned(),
        Durability::Interval(every) => format!("interval:{}", every.as_millis()),
    };
    let mut description = format!(
        "{DESCRIPTION_MARK} {topic}; durability={durability}; segment_bytes={}",
        settings.segment_bytes
    );
    // Only an age the stream's max_age cannot hold; otherwise max_age is the one truth.
    if let Some(age) = settings.retention_age.filter(|age| *age < MIN_MAX_AGE) {
        description.push_str(&format!("; retention_age_ns={}", age.as_nanos()));
    }
    description
}

/// The settings of a stream made by [`Shared::config`]; `None` if it is not a Trellis topic.
fn settings_of(config: &stream::Config) -> Option<TopicSettings> {
    let described = parse_description(config.description.as_deref()?)?;
    Some(TopicSettings {
        durability: described.durability,
        segment_bytes: described.segment_bytes,
        retention_age: described
            .retention_age
            .or_else(|| (!config.max_age.is_zero()).then_some(config.max_age)),
        retention_bytes: u64::try_from(config.max_bytes).ok(),
    })
}

/// What [`describe`] keeps in a stream's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Described {
    durability: Durability,
    segment_bytes: u64,
    /// Only an age shorter than the stream's `max_age` can hold.
    retention_age: Option<Duration>,
}

/// Reads back what [`describe`] wrote. The description is whatever the server holds, which
/// anyone with access to the stream can change: it is untrusted input.
fn parse_description(description: &str) -> Option<Described> {
    let rest = description.strip_prefix(DESCRIPTION_MARK)?;
    let mut durability = None;
    let mut segment_bytes = None;
    let mut retention_age = None;
    for part in rest.split(';').skip(1) {
        let (key, value) = part.trim().split_once('=')?;
        match key {
            "durability" => {
                durability = Some(match value {
                    "always" => Durability::Always,
                    "never" => Durability::Never,
                    other => Durability::Interval(Duration::from_millis(
                        other.strip_prefix("interval:")?.parse().ok()?,
                    )),
                });
            }
            "segment_bytes" => segment_bytes = Some(value.parse().ok()?),
            "retention_age_ns" => retention_age = Some(Duration::from_nanos(value.parse().ok()?)),
            _ => {}
        }
    }
    Some(Described {
        durability: durability?,
        segment_bytes: segment_bytes?,
        retention_age,
    })
}

/// For the fuzz target: parses an arbitrary description, and checks that what parses describes
/// itself again unchanged (so settings read back are the settings written).
#[doc(hidden)]
pub fn fuzz_stream_description(description: &str) {
    if let Some(described) = parse_description(description) {
        let settings = TopicSettings {
            durability: described.durability,
            segment_bytes: described.segment_bytes,
            retention_age: described.retention_age,
            ..TopicSettings::default()
        };
        assert_eq!(
            parse_description(&describe("t", &settings)),
            Some(Described {
                // An age the stream's max_age holds is not written into the description.
                retention_age: described.retention_age.filter(|age| *age < MIN_MAX_AGE),
                ..described
            }),
            "a parsed description must round-trip"
        );
    }
}

fn topic_info(topic: &str, info: &stream::Info) -> TopicInfo {
    let state = &info.state;
    let next_offset = state.last_sequence;
    let first_offset = if state.messages == 0 {
        next_offset
    } else {
        state.first_sequence.saturating_sub(1)
    };
    TopicInfo {
        name: topic.to_owned(),
        first_offset,
        next_offset,
        size_bytes: state.bytes,
        // JetStream removes single records, never whole files.
        segments: 1,
        settings: settings_of(&info.config).unwrap_or_default(),
        damaged: Vec::new(),
    }
}

fn unavailable(error: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(error.to_string())
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::Backend(Box::new(error))
}

fn get_stream_error(topic: &str, error: jetstream::context::GetStreamError) -> StorageError {
    use jetstream::context::GetStreamErrorKind;
    match error.kind() {
        GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            StorageError::NoSuchTopic(topic.to_owned())
        }
        GetStreamErrorKind::Request => unavailable(error),
        _ => backend(error),
    }
}

fn create_stream_error(topic: &str, error: jetstream::context::CreateStreamError) -> StorageError {
    use jetstream::context::CreateStreamErrorKind;
    match error.kind() {
        CreateStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST =>
        {
            StorageError::TopicExists(topic.to_owned())
        }
        CreateStreamErrorKind::NotFound => StorageError::NoSuchTopic(topic.to_owned()),
        CreateStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            StorageError::NoSuchTopic(topic.to_owned())
        }
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
            unavailable(error)
        }
        _ => backend(error),
    }
}

/// A read of one message whose request timed out or found no responder is unavailability,
/// not a failure of the stream: JetStream answers so while it recovers its streams after a
/// server restart, or while a stream elects a leader, and a reader that gives up then stops for
/// good on what was a pause.
fn raw_message_error(error: stream::RawMessageError) -> StorageError {
    use jetstream::context::{RequestError, RequestErrorKind};
    use std::error::Error as _;
    let transient = matches!(error.kind(), stream::RawMessageErrorKind::Other)
        && error
            .source()
            .and_then(|source| source.downcast_ref::<RequestError>())
            .is_some_and(|request| {
                matches!(
                    request.kind(),
                    RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
                )
            });
    if transient {
        unavailable(error)
    } else {
        backend(error)
    }
}

fn publish_error(topic: &str, error: jetstream::context::PublishError) -> StorageError {
    use jetstream::context::PublishErrorKind;
    match error.kind() {
        PublishErrorKind::StreamNotFound => StorageError::NoSuchTopic(topic.to_owned()),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => unavailable(error),
        _ => backend(error),
    }
}

/// Event storage in NATS JetStream. See the module documentation for the mapping and semantics.
#[derive(Debug, Clone)]
pub struct JetStreamStore {
    shared: Arc<Shared>,
}

impl JetStreamStore {
    /// Connects; `Unavailable` if no server can be reached, `InvalidSettings` if the options
    /// themselves are wrong (a URL that does not parse, a credentials file that cannot be read).
    /// Once connected, the client reconnects by itself for as long as the store lives.
    pub async fn connect(options: JetStreamOptions) -> Result<JetStreamStore, StorageError> {
        let servers = parse_servers(&options.url)?;
        if !options.dedup_window.is_zero() && options.dedup_window < MIN_DEDUP_WINDOW {
            return Err(StorageError::InvalidOptions(format!(
                "a dedup window of {:?} is shorter than JetStream's shortest ({MIN_DEDUP_WINDOW:?}); \
                 set 0 to turn deduplication off, or at least {MIN_DEDUP_WINDOW:?}",
                options.dedup_window
            )));
        }
        let mut connect = async_nats::ConnectOptions::new()
            .connection_timeout(options.request_timeout)
            .request_timeout(Some(options.request_timeout))
            // Without a cap the client keeps reconnecting; with one it would give up for good
            // and leave Trellis unavailable until restarted.
            .max_reconnects(None);
        let disconnects = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let counter = Arc::clone(&disconnects);
        connect = connect.event_callback(move |event| {
            match event {
                async_nats::Event::Disconnected => {
                    // Said once per loss, here: the client's own lines are filtered to warn.
                    tracing::warn!(
                        message = "Lost the connection to NATS; storage calls fail as unavailable until it is back."
                    );
                    counter.send_modify(|losses| *losses = losses.wrapping_add(1));
                }
                async_nats::Event::Connected => {
                    tracing::info!(message = "Connected to NATS.");
                }
                _ => {}
            }
            std::future::ready(())
        });
        if let Some(path) = &options.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|error| {
                StorageError::InvalidOptions(format!(
                    "cannot read the NATS credentials file {}: {error}",
                    path.display()
                ))
            })?;
        }
        if let Some(path) = &options.tls_ca_file {
            if !path.is_file() {
                return Err(StorageError::InvalidOptions(format!(
                    "the NATS TLS CA file {} does not exist",
                    path.display()
                )));
            }
            connect = connect
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        // The client does not read a user and password from the URLs itself.
        if let Some(server) = servers.iter().find(|server| server.has_user_pass()) {
            let user = decoded(server.username().unwrap_or_default());
            connect = match server.password() {
                Some(password) => connect.user_and_password(user, decoded(password)),
                None => connect.token(user),
            };
        }
        let client = connect.connect(servers).await.map_err(unavailable)?;
        let context = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .ack_timeout(options.request_timeout)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let (closed_tx, _) = tokio::sync::watch::channel(false);
        Ok(JetStreamStore {
            shared: Arc::new(Shared {
                client,
                context,
                options,
                closed: AtomicBool::new(false),
                closed_tx,
                disconnects,
                submit: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

#[async_trait::async_trait]
impl EventStore for JetStreamStore {
    async fn create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<dyn TopicStore>, StorageError> {
        self.shared.check_open()?;
        trellis_log::validate_topic_name(name)?;
        // The server answers a create of an identical existing stream with success.
        match self.shared.stream(name).await {
            Ok(_) => return Err(StorageError::TopicExists(name.to_owned())),
            Err(StorageError::NoSuchTopic(_)) => {}
            Err(other) => return Err(other),
        }
        let stream = self
            .shared
            .context
            .create_stream(self.shared.config(name, &settings))
            .await
            .map_err(|error| create_stream_error(name, error))?;
        Ok(self.shared.handle(name, stream.cached_info()))
    }

    async fn get_or_create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<dyn TopicStore>, StorageError> {
        match self.create_topic(name, settings).await {
            Ok(topic) => Ok(topic),
            Err(StorageError::TopicExists(_)) => {
                let stream = self.shared.stream(name).await?;
                Ok(self.shared.handle(name, stream.cached_info()))
            }
            Err(other) => Err(other),
        }
    }

    async fn topic(&self, name: &str) -> Result<Option<Arc<dyn TopicStore>>, StorageError> {
        if trellis_log::validate_topic_name(name).is_err() {
            return Ok(None);
        }
        match self.shared.stream(name).await {
            Ok(stream) => Ok(Some(self.shared.handle(name, stream.cached_info()))),
            Err(StorageError::NoSuchTopic(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StorageError> {
        self.shared.check_open()?;
        let mut streams = self.shared.context.streams();
        let mut topics = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info.map_err(unavailable)?;
            let Some(topic) = topic_name(&info.config.name) else {
                continue;
            };
            if settings_of(&info.config).is_some() {
                topics.push(topic_info(&topic, &info));
            }
        }
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    async fn delete_topic(&self, name: &str) -> Result<bool, StorageError> {
        self.shared.check_open()?;
        if trellis_log::validate_topic_name(name).is_err() {
            return Ok(false);
        }
        match self.shared.context.delete_stream(stream_name(name)).await {
            Ok(_) => Ok(true),
            Err(error) => match get_stream_error(name, error) {
                StorageError::NoSuchTopic(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn enforce_retention(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn close(&self) -> Result<(), StorageError> {
        // Taking the lock waits for a batch being published, so it is sent before the flush.
        let _publishing = self.shared.submit.lock().await;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.closed_tx.send_replace(true);
        // A flush waits for the connection, for ever while the server is away; what it would
        // send then was never acknowledged, so shutdown does not wait for it.
        if !self.available() {
            return Err(StorageError::Unavailable(
                "not connected to NATS; what was not acknowledged is not sent".to_owned(),
            ));
        }
        let timeout = self.shared.options.request_timeout;
        match tokio::time::timeout(timeout, self.shared.client.flush()).await {
            Ok(flushed) => flushed.map_err(unavailable),
            Err(_) => Err(StorageError::Unavailable(format!(
                "the flush was not confirmed within {timeout:?}"
            ))),
        }
    }

    fn available(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }
}

#[derive(Debug)]
struct JetStreamTopic {
    name: String,
    stream: String,
    subject: String,
    /// When the handle's stream was created (ns since the epoch): a stream created again under
    /// the name is another topic.
    created: i128,
    shared: Arc<Shared>,
}

impl JetStreamTopic {
    /// The handle's stream; `NoSuchTopic` once it is deleted, even if another took its name.
    async fn own_stream(&self) -> Result<stream::Stream, StorageError> {
        let stream = self.shared.stream(&self.name).await?;
        if stream.cached_info().created.unix_timestamp_nanos() == self.created {
            Ok(stream)
        } else {
            Err(StorageError::NoSuchTopic(self.name.clone()))
        }
    }

    fn check_sizes(&self, records: &[AppendRecord]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        let max = self
            .shared
            .client
            .server_info()
            .max_payload
            .saturating_sub(HEADER_ALLOWANCE);
        match records.iter().find(|record| record.payload.len() > max) {
            Some(record) => Err(StorageError::RecordTooLarge {
                size: record.payload.len(),
                max,
            }),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl TopicStore for JetStreamTopic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn info(&self) -> Result<TopicInfo, StorageError> {
        let stream = self.own_stream().await?;
        Ok(topic_info(&self.name, stream.cached_info()))
    }

    async fn configure(&self, settings: TopicSettings) -> Result<(), StorageError> {
        self.shared.check_open()?;
        self.own_stream().await?;
        self.shared
            .context
            .update_stream(self.shared.config(&self.name, &settings))
            .await
            .map_err(|error| create_stream_error(&self.name, error))?;
        Ok(())
    }

    async fn append(&self, records: Vec<AppendRecord>) -> Result<Vec<AppendOutcome>, StorageError> {
        self.submit(records).await?.await
    }

    async fn submit(&self, records: Vec<AppendRecord>) -> Result<PendingAppend, StorageError> {
        self.check_sizes(&records)?;
        let publishing = self.shared.submit.lock().await;
        self.shared.check_open()?;
        // The client holds an in-flight permit per unanswered publish until its ack future is
        // awaited, so the acks are awaited by a task of their own from the first record on: a
        // batch larger than the permits, or many batches submitted before any is awaited, then
        // wait for permits instead of failing or stalling.
        let (acks, mut answered) = tokio::sync::mpsc::unbounded_channel::<PublishAckFuture>();
        let topic = self.name.clone();
        let collector = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while let Some(ack) = answered.recv().await {
                let ack = ack.await.map_err(|error| publish_error(&topic, error))?;
                let offset = ack.sequence.saturating_sub(1);
                outcomes.push(if ack.duplicate {
                    AppendOutcome::Duplicate(offset)
                } else {
                    AppendOutcome::Stored(offset)
                });
            }
            Ok::<_, StorageError>(outcomes)
        });
        let deduplicate = !self.shared.options.dedup_window.is_zero();
        for record in records {
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_EXPECTED_STREAM, self.stream.as_str());
            if let Some(key) = record.dedup_key.filter(|_| deduplicate) {
                headers.insert(header::NATS_MESSAGE_ID, format!("{:032x}", key.0).as_str());
            }
            let published = self
                .shared
                .context
                .publish_with_headers(self.subject.clone(), headers, record.payload)
                .await;
            match published {
                // A send fails only once the collector has stopped on an error, which it returns.
                Ok(ack) => {
                    let _ = acks.send(ack);
                }
                Err(error) => {
                    collector.abort();
                    return Err(publish_error(&self.name, error));
                }
            }
        }
        drop(acks);
        drop(publishing);
        Ok(PendingAppend::new(async move {
            collector.await.map_err(backend)?
        }))
    }

    async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadPage, StorageError> {
        let stream = self.own_stream().await?;
        let info = topic_info(&self.name, stream.cached_info());
        if from >= info.next_offset || max_records == 0 {
            return Ok(ReadPage::default());
        }
        if from < info.first_offset {
            return Err(StorageError::OffsetTruncated {
                offset: from,
                first_offset: info.first_offset,
            });
        }
        let mut records: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        let last = info
            .next_offset
            .min(from.saturating_add(u64::try_from(max_records).unwrap_or(u64::MAX)));
        // Requests are pipelined, READ_AHEAD at a time: a page costs about one round trip per
        // READ_AHEAD records, and memory stays within READ_AHEAD messages past the byte cap.
        let mut messages = futures::stream::iter(from..last)
            .map(|offset| {
                let stream = &stream;
                async move { (offset, stream.get_raw_message(offset + 1).await) }
            })
            .buffered(READ_AHEAD);
        while let Some((offset, answer)) = messages.next().await {
            let message = match answer {
                Ok(message) => message,
                Err(error) => {
                    // Retention may have removed it since the info; what is still there decides.
                    let now = self.info().await?;
                    if offset < now.first_offset {
                        if records.is_empty() {
                            return Err(StorageError::OffsetTruncated {
                                offset,
                                first_offset: now.first_offset,
                            });
                        }
                        break;
                    }
                    return Err(raw_message_error(error));
                }
            };
            let size = message.payload.len();
            if !records.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            records.push(Record {
                offset,
                timestamp_ms: i64::try_from(message.time.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(i64::MAX),
                payload: message.payload,
            });
        }
        Ok(ReadPage {
            records,
            damaged: None,
        })
    }

    async fn wait_for(&self, offset: u64) -> Result<(), StorageError> {
        self.shared.check_open()?;
        let mut closed = self.shared.closed_tx.subscribe();
        // Subscribed first, so a loss from here on is seen; a waiter that outlived one could
        // wait for ever on a consumer the server forgot meanwhile.
        let mut disconnects = self.shared.disconnects.subscribe();
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StorageError::Unavailable("not connected".to_owned()));
        }
        let client = &self.shared.client;
        // Subscribed before the stream is looked at, so a deletion in between is not missed.
        let mut deleted = client
            .subscribe(format!("$JS.EVENT.ADVISORY.STREAM.DELETED.{}", self.stream))
            .await
            .map_err(unavailable)?;
        let inbox = client.new_inbox();
        let mut delivered = client.subscribe(inbox.clone()).await.map_err(unavailable)?;
        let stream = self.own_stream().await?;
        let last_sequence = stream.cached_info().state.last_sequence;
        if last_sequence > offset {
            return Ok(());
        }
        // The server starts a consumer asked to start past the stream's end at its next record,
        // so for an offset beyond the next one a delivery proves nothing by itself: the stream is
        // asked each time, and the consumer sends headers only.
        let beyond_next = offset > last_sequence;
        let created = stream
            .create_consumer(consumer::push::Config {
                deliver_subject: inbox,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: offset.saturating_add(1),
                },
                ack_policy: consumer::AckPolicy::None,
                // It lives for one wait and keeps no state worth keeping; in the server's files
                // every wait would cost a disk write, which made waiting readers slow to start.
                memory_storage: true,
                inactive_threshold: Duration::from_secs(30),
                headers_only: beyond_next,
                ..Default::default()
            })
            .await;
        let consumer = match created {
            Ok(consumer) => consumer,
            // The stream may have been deleted or the store closed since it was looked at.
            Err(error) => {
                self.own_stream().await?;
                return Err(unavailable(error));
            }
        };
        let consumer_name = consumer.cached_info().name.clone();
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + WAIT_RECHECK, WAIT_RECHECK);
        let mut rechecking = false;
        let answer = loop {
            let woken = tokio::select! {
                message = delivered.next() => match message {
                    Some(_) => None,
                    None => Some(Err(StorageError::Unavailable("the connection closed".to_owned()))),
                },
                _ = deleted.next() => Some(Err(StorageError::NoSuchTopic(self.name.clone()))),
                _ = closed.wait_for(|closed| *closed) => Some(Err(StorageError::Closed)),
                _ = disconnects.changed() => Some(Err(StorageError::Unavailable(
                    "the connection was lost while waiting for a record".to_owned(),
                ))),
                _ = recheck.tick() => {
                    rechecking = true;
                    None
                }
            };
            if std::mem::take(&mut rechecking) {
                // Asked outside the select: its other futures hold guards that are not `Send`.
                match self.own_stream().await {
                    Ok(now) if now.cached_info().state.last_sequence > offset => break Ok(()),
                    Ok(_) => continue,
                    Err(error) => break Err(error),
                }
            }
            match woken {
                Some(answer) => break answer,
                None if !beyond_next => break Ok(()),
                None => match self.shared.stream(&self.name).await {
                    Ok(now) if now.cached_info().state.last_sequence > offset => break Ok(()),
                    Ok(_) => {}
                    Err(error) => break Err(error),
                },
            }
        };
        // Not after a lost connection either: the call would wait out its timeout first.
        if !matches!(
            answer,
            Err(StorageError::NoSuchTopic(_) | StorageError::Unavailable(_))
        ) {
            // Best effort: the server removes it anyway once the inbox has no interest.
            if let Err(error) = stream.delete_consumer(&consumer_name).await {
                tracing::debug!(%error, topic = %self.name, "deleting a wait_for consumer failed");
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests;
