//! The producer: a cheap handle over a background task that batches records, keeps up to
//! `max_in_flight` batches on one `PublishStream`, and recovers from failures by itself.
//!
//! The task owns everything mutable (queue, pending replies, endpoints, state machine), so
//! nothing here takes a lock. A record's life: `send` waits for room in the buffer (a byte
//! semaphore) and hands it to the task; the task numbers it, batches it, sends it, and resolves
//! its reply from the server's answer, a permanent refusal or its delivery timeout. A transient
//! failure puts every batch in flight back at the front of the queue, and the state machine
//! goes Ready -> Backoff -> Recovering -> Ready while the batches go out again with the same
//! event ids; the server's deduplication turns what was already stored into `duplicate` answers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use trellis_cloudevents::CloudEvent;
use trellis_proto::v1;
use trellis_proto::v1::trellis_client::TrellisClient;

use crate::config::ProducerConfig;
use crate::endpoints::Endpoints;
use crate::error::{ConfigError, ProducerError, is_transient_code};
use crate::metrics::Metrics;
use crate::observed::{DrivenState, StateView, observed};
use crate::queue::{BatchLimits, BatchQueue, Settled};
use crate::state::{ConnectionState, Event};

const ROLE: &str = "producer";
/// Commands taken from the channel per wake-up before batches go out: enough to fill batches
/// under load, few enough that answers are not kept waiting.
const MAX_COMMANDS_PER_WAKE: usize = 4096;

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// The record's offset in the topic.
    pub offset: u64,
    /// The server already had an event with this (source, id): `offset` is the first copy's
    /// and nothing new was stored. Normal after a resend; a success all the same.
    pub duplicate: bool,
}

/// Publishes CloudEvents to one topic. Cheap to clone; every clone feeds the same background
/// task, which keeps running (and resolving records) until the last clone is dropped and every
/// record has its answer.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use trellis_client::{Producer, ProducerConfig};
/// use trellis_cloudevents::CloudEvent;
///
/// let producer = Producer::new(ProducerConfig::new("orders").endpoints(["127.0.0.1:10205"]))?;
/// let event = CloudEvent::from_structured_json(
///     br#"{"specversion":"1.0","id":"1","source":"/shop","type":"order.created","data":{"total":12}}"#,
/// )?;
/// let stored = producer.send(event).await?.await?;
/// println!("stored at offset {}", stored.offset);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    commands: mpsc::UnboundedSender<Command>,
    buffer: Arc<Semaphore>,
    max_buffered_bytes: usize,
    buffer_timeout: Duration,
    state: StateView,
}

/// The answer to one record: resolves once the server stored it (or already had it), refused
/// it for good, or the delivery timeout passed.
#[derive(Debug)]
#[must_use = "a record's result says whether it was stored"]
pub struct DeliveryFuture {
    reply: oneshot::Receiver<Result<RecordMetadata, ProducerError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ProducerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(ProducerError::Closed)))
    }
}

impl Producer {
    /// Validates `config` and starts the background task. Does not connect: the first batch
    /// does, and a failure to connect is retried like any other.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn new(config: ProducerConfig) -> Result<Producer, ConfigError> {
        config.validate()?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let buffer = Arc::new(Semaphore::new(config.max_buffered_bytes));
        let metrics = Metrics::new(ROLE, &config.topic);
        let (machine, state) = observed(&metrics, "Producer");
        let producer = Producer {
            commands,
            buffer: buffer.clone(),
            max_buffered_bytes: config.max_buffered_bytes,
            buffer_timeout: config.buffer_timeout,
            state,
        };
        let task = Task {
            queue: BatchQueue::new(BatchLimits {
                max_events: config.batch_max_events,
                max_bytes: config.batch_max_bytes,
            }),
            endpoints: Endpoints::new(config.endpoint_uris(), config.endpoint_quarantine),
            config,
            commands: commands_rx,
            commands_open: true,
            buffer,
            replies: BTreeMap::new(),
            flushes: Vec::new(),
            next_seq: 0,
            machine,
            outage_since: None,
            metrics,
        };
        tokio::spawn(task.run());
        Ok(producer)
    }

    /// Hands `event` to the producer and returns the future of its result.
    ///
    /// Waits while the buffer is full, and fails with [`ProducerError::BufferFull`] after the
    /// configured buffer timeout. Records are sent in the order `send` returned for them. The
    /// event is not validated here: the server is the authority, and refuses an invalid event
    /// with a permanent [`ProducerError::Rejected`] for that record alone.
    pub async fn send(&self, event: CloudEvent) -> Result<DeliveryFuture, ProducerError> {
        let event = v1::CloudEvent::from(&event);
        let bytes = event.encoded_len();
        if bytes > self.max_buffered_bytes {
            return Err(ProducerError::TooLarge {
                size: bytes,
                max_buffered_bytes: self.max_buffered_bytes,
            });
        }
        // The config keeps max_buffered_bytes within u32, and bytes is at most that.
        let n_permits = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        let permit = match tokio::time::timeout(
            self.buffer_timeout,
            self.buffer.clone().acquire_many_owned(n_permits),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(ProducerError::Closed),
            Err(_elapsed) => return Err(ProducerError::BufferFull(self.buffer_timeout)),
        };
        let (reply, reply_rx) = oneshot::channel();
        self.commands
            .send(Command::Send {
                event,
                bytes,
                permit,
                reply,
            })
            .map_err(|_| ProducerError::Closed)?;
        Ok(DeliveryFuture { reply: reply_rx })
    }

    /// Waits until every record handed to [`Producer::send`] before this call has its result,
    /// sending the batch being filled without waiting out its linger.
    pub async fn flush(&self) -> Result<(), ProducerError> {
        let (done, done_rx) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .map_err(|_| ProducerError::Closed)?;
        done_rx.await.map_err(|_| ProducerError::Closed)
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        self.state.now()
    }

    /// A watch of the state: its latest value, and a wake-up on each change (intermediate states
    /// may be skipped by a slow reader; see [`Producer::transitions`]).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.state.changes()
    }

    /// Every state the producer enters from now on, in order.
    pub fn transitions(&self) -> broadcast::Receiver<ConnectionState> {
        self.state.transitions()
    }
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every command is a Send; boxing it would cost an allocation per record"
)]
enum Command {
    Send {
        event: v1::CloudEvent,
        bytes: usize,
        permit: OwnedSemaphorePermit,
        reply: oneshot::Sender<Result<RecordMetadata, ProducerError>>,
    },
    Flush(oneshot::Sender<()>),
}

/// A record in the queue. Its buffer permit goes back when the record leaves the queue, so the
/// buffer counts a record until the server answered it, however long it takes.
#[derive(Debug)]
struct Record {
    seq: u64,
    event: v1::CloudEvent,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct Pending {
    reply: oneshot::Sender<Result<RecordMetadata, ProducerError>>,
    deadline: Instant,
}

struct Connection {
    endpoint: usize,
    requests: mpsc::Sender<v1::PublishRequest>,
    responses: tonic::Streaming<v1::PublishResponse>,
}

/// Why a connection is given up; only for the log.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("stream failed: {0}")]
    Status(tonic::Status),
    #[error("the server ended the stream")]
    Ended,
    #[error("a batch went unanswered for {0:?}")]
    Unanswered(Duration),
    #[error("the server refused records with a transient error: {0}")]
    RecordsRefused(String),
}

struct Task {
    config: ProducerConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    buffer: Arc<Semaphore>,
    queue: BatchQueue<Record>,
    /// Records without their result yet, by sequence number. Sequence numbers grow with `send`
    /// and every record has the same delivery timeout, so the first entry has the earliest
    /// deadline.
    replies: BTreeMap<u64, Pending>,
    /// Flushes waiting for every record numbered below theirs to be answered.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    next_seq: u64,
    machine: DrivenState,
    endpoints: Endpoints,
    /// When the current run of failures began; `None` while Ready.
    outage_since: Option<Instant>,
    metrics: Metrics,
}

impl Task {
    async fn run(mut self) {
        let mut connection: Option<Connection> = None;
        while self.commands_open || !self.replies.is_empty() {
            match self.machine.state() {
                ConnectionState::Backoff => {
                    let delay = self
                        .config
                        .retry
                        .delay(self.machine.failures(), &mut rand::rng());
                    tracing::debug!(delay = ?delay, "Producer backing off.");
                    let until = Instant::now() + delay;
                    while Instant::now() < until && (self.commands_open || !self.replies.is_empty())
                    {
                        self.wait(None, Some(until)).await;
                    }
                    self.transition(Event::BackoffElapsed);
                }
                ConnectionState::Ready | ConnectionState::Recovering => {
                    let recovering = self.machine.state() == ConnectionState::Recovering;
                    if connection.is_none() && (recovering || !self.queue.is_empty()) {
                        match self.connect().await {
                            Ok(opened) => connection = Some(opened),
                            Err((endpoint, broken)) => {
                                self.endpoints.failed(endpoint, std::time::Instant::now());
                                self.fail(&mut connection, &broken);
                                continue;
                            }
                        }
                    }
                    if recovering && connection.is_some() && !self.queue.has_resent() {
                        self.transition(Event::Recovered);
                        self.outage_since = None;
                    }
                    if let Err(broken) = self.step(&mut connection).await {
                        self.fail(&mut connection, &broken);
                    }
                }
            }
        }
        tracing::debug!("Producer stopped: no handle and no record left.");
    }

    /// One wake-up while connected (or idle): take commands and answers, then send what can go.
    async fn step(&mut self, connection: &mut Option<Connection>) -> Result<(), Broken> {
        // Batches may have been sealed while there was no connection (lingers and flushes
        // during a backoff): they go out before waiting for anything.
        if let Some(connection) = connection {
            self.pump(connection);
        }
        let answer = self.wait(connection.as_mut(), self.next_deadline()).await;
        let now = Instant::now();
        if let Some(answer) = answer {
            match answer {
                Ok(Some(response)) => self.on_response(response)?,
                Ok(None) => return Err(Broken::Ended),
                Err(status) if is_transient_code(status.code()) => {
                    return Err(Broken::Status(status));
                }
                Err(status) => {
                    // The stream as a whole was refused for good (unauthorized, no such topic):
                    // the records on it fail, and the next batches try a fresh stream.
                    self.reject_in_flight(&status);
                    *connection = None;
                }
            }
        }
        if let Some(oldest) = self.queue.oldest_sent_at()
            && now.duration_since(oldest.into()) >= self.config.request_timeout
        {
            return Err(Broken::Unanswered(self.config.request_timeout));
        }
        if let Some(connection) = connection {
            self.pump(connection);
        }
        Ok(())
    }

    /// Waits for the next thing to do: a command, an answer on `connection`, or `deadline`.
    /// Handles commands, lingers and expiries itself; returns an answer for the caller.
    async fn wait(
        &mut self,
        connection: Option<&mut Connection>,
        deadline: Option<Instant>,
    ) -> Option<Result<Option<v1::PublishResponse>, tonic::Status>> {
        // Answers handled since the last wait may have completed a flush.
        self.settle_flushes();
        let deadline = match (deadline, self.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let answers = async {
            match connection {
                Some(connection) => connection.responses.message().await,
                None => std::future::pending().await,
            }
        };
        let mut answer = None;
        tokio::select! {
            command = self.commands.recv(), if self.commands_open => match command {
                Some(command) => {
                    self.on_command(command);
                    for _ in 1..MAX_COMMANDS_PER_WAKE {
                        match self.commands.try_recv() {
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    self.commands_open = false;
                    self.queue.seal_open();
                }
            },
            received = answers => answer = Some(received),
            () = sleep => {}
        }
        let now = Instant::now();
        if self
            .queue
            .open_since()
            .is_some_and(|since| Instant::from_std(since) + self.config.linger <= now)
        {
            self.queue.seal_open();
        }
        self.expire(now);
        self.settle_flushes();
        self.metrics.set_buffered_bytes(
            self.config
                .max_buffered_bytes
                .saturating_sub(self.buffer.available_permits()),
        );
        answer
    }

    /// The earliest of: the open batch's linger, the first record's delivery deadline, the
    /// oldest batch's request timeout, the end of the outage budget.
    fn next_deadline(&self) -> Option<Instant> {
        let linger = self
            .queue
            .open_since()
            .map(|since| Instant::from_std(since) + self.config.linger);
        let delivery = self
            .replies
            .first_key_value()
            .map(|(_, pending)| pending.deadline);
        let request = self
            .queue
            .oldest_sent_at()
            .map(|sent| Instant::from_std(sent) + self.config.request_timeout);
        let outage = self
            .outage_since
            .zip(self.config.retry.max_elapsed)
            .map(|(since, max)| since + max);
        [linger, delivery, request, outage]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Send {
                event,
                bytes,
                permit,
                reply,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let now = Instant::now();
                self.replies.insert(
                    seq,
                    Pending {
                        reply,
                        deadline: now + self.config.delivery_timeout,
                    },
                );
                self.queue.push(
                    Record {
                        seq,
                        event,
                        _permit: permit,
                    },
                    bytes,
                    now.into_std(),
                );
                self.metrics.records_sent.increment(1);
            }
            Command::Flush(done) => {
                self.queue.seal_open();
                self.flushes.push((self.next_seq, done));
            }
        }
    }

    fn settle_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let first_unanswered = self
            .replies
            .first_key_value()
            .map_or(u64::MAX, |(seq, _)| *seq);
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(bound, _)| *bound <= first_unanswered);
        self.flushes = waiting;
        for (_, done) in done {
            let _ = done.send(());
        }
    }

    /// Fails the records past their delivery deadline, and every waiting record once an outage
    /// outlasts the retry policy's `max_elapsed`.
    fn expire(&mut self, now: Instant) {
        let mut n_failed = 0;
        while let Some(entry) = self.replies.first_entry() {
            if entry.get().deadline > now {
                break;
            }
            let _ = entry
                .remove()
                .reply
                .send(Err(ProducerError::DeliveryTimeout(
                    self.config.delivery_timeout,
                )));
            n_failed += 1;
        }
        if let (Some(since), Some(max_elapsed)) = (self.outage_since, self.config.retry.max_elapsed)
            && now.duration_since(since) >= max_elapsed
        {
            for (_, pending) in std::mem::take(&mut self.replies) {
                let _ = pending
                    .reply
                    .send(Err(ProducerError::RetriesExhausted(max_elapsed)));
                n_failed += 1;
            }
            // Newer records get a budget of their own, from the next failure on.
            self.outage_since = None;
        }
        if n_failed > 0 {
            tracing::warn!(records = n_failed, "Records failed after waiting too long.");
            self.metrics.records_failed.increment(n_failed);
            let replies = &self.replies;
            self.queue
                .retain_waiting(|record| replies.contains_key(&record.seq));
        }
    }

    fn on_response(&mut self, response: v1::PublishResponse) -> Result<(), Broken> {
        let mut results = response.results.into_iter();
        let replies = &mut self.replies;
        let (mut n_acked, mut n_failed) = (0, 0);
        let mut transient = None;
        let settled = self.queue.settle(response.batch_id, |record| {
            let outcome = match results.next().and_then(|result| result.result) {
                Some(v1::event_result::Result::Stored(stored)) => Ok(RecordMetadata {
                    offset: stored.offset,
                    duplicate: stored.duplicate,
                }),
                Some(v1::event_result::Result::Error(error))
                    if !is_transient_code(Code::from(error.code)) =>
                {
                    Err(ProducerError::Rejected {
                        code: Code::from(error.code),
                        message: error.message,
                        attribute: (!error.attribute.is_empty()).then_some(error.attribute),
                    })
                }
                Some(v1::event_result::Result::Error(error)) => {
                    transient = Some(error.message);
                    return Some(record);
                }
                None => {
                    transient = Some("an answer without a result for a record".to_owned());
                    return Some(record);
                }
            };
            if outcome.is_ok() {
                n_acked += 1;
            } else {
                n_failed += 1;
            }
            // A record that already timed out has no reply left; its answer is dropped.
            if let Some(pending) = replies.remove(&record.seq) {
                let _ = pending.reply.send(outcome);
            }
            None
        });
        self.metrics.records_acked.increment(n_acked);
        if n_failed > 0 {
            self.metrics.records_failed.increment(n_failed);
        }
        match settled {
            Settled::Done => Ok(()),
            Settled::Unknown => {
                tracing::warn!(
                    batch_id = response.batch_id,
                    "Answer for a batch not in flight; ignored."
                );
                Ok(())
            }
            // The refused records must go out again before anything after them, so the whole
            // in-flight window goes back, as for a broken connection.
            Settled::Retry => Err(Broken::RecordsRefused(transient.unwrap_or_default())),
        }
    }

    /// Fails every record in flight with the stream's permanent status.
    fn reject_in_flight(&mut self, status: &tonic::Status) {
        tracing::warn!(code = ?status.code(), message = status.message(), "The server refused the publish stream.");
        let mut n_failed = 0;
        for record in self.queue.drain_in_flight() {
            if let Some(pending) = self.replies.remove(&record.seq) {
                let _ = pending.reply.send(Err(ProducerError::Rejected {
                    code: status.code(),
                    message: status.message().to_owned(),
                    attribute: None,
                }));
                n_failed += 1;
            }
        }
        self.metrics.records_failed.increment(n_failed);
    }

    /// Sends sealed batches while the in-flight window has room.
    fn pump(&mut self, connection: &mut Connection) {
        while self.queue.n_in_flight() < self.config.max_in_flight
            && self.queue.n_sealed() > 0
            && connection.requests.capacity() > 0
        {
            let Some((batch_id, entries)) = self.queue.send_next(std::time::Instant::now()) else {
                break;
            };
            let request = v1::PublishRequest {
                batch_id,
                topic: self.config.topic.clone(),
                events: entries
                    .iter()
                    .map(|entry| entry.item.event.clone())
                    .collect(),
            };
            // Capacity was checked above and only this task sends, so this cannot be full; if
            // the stream is gone, its error arrives on the answers side.
            let _ = connection.requests.try_send(request);
        }
    }

    async fn connect(&mut self) -> Result<Connection, (usize, Broken)> {
        let (index, uri) = self.endpoints.pick(std::time::Instant::now());
        let uri = uri.to_owned();
        let connect_timeout = self.config.connect_timeout;
        let failed = |message: String| (index, Broken::Connect(message));
        let channel = crate::channel::open(&uri, connect_timeout)
            .await
            .map_err(failed)?;
        let (requests, requests_rx) = mpsc::channel(self.config.max_in_flight);
        let mut client = TrellisClient::new(channel);
        let call = client.publish_stream(ReceiverStream::new(requests_rx));
        let responses = match tokio::time::timeout(connect_timeout, call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(failed(format!("{uri}: {status}"))),
            Err(_) => return Err(failed(format!("{uri}: no answer to the stream"))),
        };
        if self.machine.state() == ConnectionState::Recovering {
            self.metrics.reconnects.increment(1);
        }
        tracing::info!(endpoint = %uri, "Producer connected.");
        Ok(Connection {
            endpoint: index,
            requests,
            responses,
        })
    }

    /// Gives up the connection: what was in flight goes back to the front, and the state
    /// machine goes to Backoff.
    fn fail(&mut self, connection: &mut Option<Connection>, broken: &Broken) {
        if let Some(connection) = connection.take() {
            self.endpoints
                .failed(connection.endpoint, std::time::Instant::now());
        }
        let n_batches = self.queue.requeue_in_flight();
        if n_batches > 0 {
            self.metrics.retries.increment(n_batches as u64);
        }
        tracing::warn!(error = %broken, batches = n_batches, "Producer connection failed; will retry.");
        self.outage_since.get_or_insert_with(Instant::now);
        self.transition(Event::Failed);
    }

    fn transition(&mut self, event: Event) {
        self.machine.on(event, &self.metrics);
    }
}
