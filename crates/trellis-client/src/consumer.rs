//! The consumer: a member of a consumer group on one topic, over a `Subscribe` stream that a
//! background task keeps open: after a transient failure it backs off, reconnects (possibly to
//! another endpoint) and subscribes again, through the same Ready -> Backoff -> Recovering ->
//! Ready cycle as the producer. Events not acked when a stream breaks are delivered again by the
//! server, so nothing is lost across a reconnection.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use trellis_cloudevents::CloudEvent;
use trellis_proto::v1;
use trellis_proto::v1::trellis_client::TrellisClient;

use crate::config::{ConsumerConfig, GroupMode, StartPosition};
use crate::endpoints::Endpoints;
use crate::error::{ConfigError, ConsumerError, is_transient_code};
use crate::metrics::Metrics;
use crate::observed::{DrivenState, StateView, observed};
use crate::state::{ConnectionState, Event};

const ROLE: &str = "consumer";
/// Acks taken per wake-up and sent in one message.
const MAX_ACKS_PER_MESSAGE: usize = 1024;
/// How long a closing consumer waits for the server to settle its last acks and end the stream.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One event delivered to this member.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event's offset in the topic; what [`Consumer::ack`] takes.
    pub offset: u64,
    pub event: CloudEvent,
    /// 1 on first delivery, more when the event comes again (not acked in time, or a
    /// reconnection).
    pub attempt: u32,
}

/// A consumer-group member. Receive with [`Consumer::recv`], ack with [`Consumer::ack`].
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use trellis_client::{Consumer, ConsumerConfig, StartPosition};
///
/// let mut consumer = Consumer::new(
///     ConsumerConfig::new("orders", "billing").start(StartPosition::Earliest),
/// )?;
/// loop {
///     let delivery = consumer.recv().await?;
///     println!("{} at {}", delivery.event.id, delivery.offset);
///     consumer.ack(delivery.offset)?;
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    deliveries: mpsc::UnboundedReceiver<Result<Delivery, ConsumerError>>,
    acks: mpsc::UnboundedSender<u64>,
    task: tokio::task::JoinHandle<()>,
    state: StateView,
}

impl Consumer {
    /// Validates `config` and starts the background task, which connects and subscribes.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn new(config: ConsumerConfig) -> Result<Consumer, ConfigError> {
        config.validate()?;
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new(ROLE, &config.topic);
        let (machine, state) = observed(&metrics, "Consumer");
        let task = Task {
            endpoints: Endpoints::new(config.endpoint_uris(), config.endpoint_quarantine),
            config,
            deliveries: deliveries_tx,
            acks: acks_rx,
            machine,
            metrics,
        };
        let task = tokio::spawn(task.run());
        Ok(Consumer {
            deliveries,
            acks,
            task,
            state,
        })
    }

    /// The next delivery. Fails with [`ConsumerError::Rejected`] if the server refused the
    /// subscription for good, then with [`ConsumerError::Closed`].
    pub async fn recv(&mut self) -> Result<Delivery, ConsumerError> {
        self.deliveries
            .recv()
            .await
            .unwrap_or(Err(ConsumerError::Closed))
    }

    /// Acks the delivery at `offset`. An ack for a delivery made on a stream that has since
    /// broken is dropped: the server delivers that event again.
    pub fn ack(&self, offset: u64) -> Result<(), ConsumerError> {
        self.acks.send(offset).map_err(|_| ConsumerError::Closed)
    }

    /// Leaves the group: the acks made so far reach the server before the stream ends, so
    /// their events are not delivered again. Dropping the consumer leaves too, but without
    /// waiting for that.
    pub async fn close(self) {
        let Consumer {
            deliveries,
            acks,
            task,
            ..
        } = self;
        drop(acks);
        drop(deliveries);
        let _ = task.await;
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        self.state.now()
    }

    /// A watch of the state (a slow reader may skip intermediate states).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.state.changes()
    }

    /// Every state the consumer enters from now on, in order.
    pub fn transitions(&self) -> broadcast::Receiver<ConnectionState> {
        self.state.transitions()
    }
}

struct Stream {
    endpoint: usize,
    requests: mpsc::UnboundedSender<v1::SubscribeRequest>,
    responses: tonic::Streaming<v1::SubscribeResponse>,
    /// Offsets delivered on this stream and not acked yet: only these acks mean anything to it.
    unacked: HashSet<u64>,
}

enum Outcome {
    /// The stream broke in a way worth retrying.
    Broken(String),
    /// The subscription is refused for good; the consumer stops.
    Refused(tonic::Status),
    /// The application dropped the consumer.
    Closed,
}

struct Task {
    config: ConsumerConfig,
    endpoints: Endpoints,
    deliveries: mpsc::UnboundedSender<Result<Delivery, ConsumerError>>,
    acks: mpsc::UnboundedReceiver<u64>,
    machine: DrivenState,
    metrics: Metrics,
}

impl Task {
    async fn run(mut self) {
        loop {
            let outcome = match self.machine.state() {
                ConnectionState::Backoff => {
                    let delay = self
                        .config
                        .retry
                        .delay(self.machine.failures(), &mut rand::rng());
                    tokio::select! {
                        () = tokio::time::sleep_until(Instant::now() + delay) => {}
                        () = self.deliveries.closed() => return,
                    }
                    self.transition(Event::BackoffElapsed);
                    continue;
                }
                ConnectionState::Ready | ConnectionState::Recovering => {
                    match self.subscribe().await {
                        Ok(mut stream) => {
                            if self.machine.state() == ConnectionState::Recovering {
                                self.metrics.reconnects.increment(1);
                                self.transition(Event::Recovered);
                            }
                            self.endpoints.succeeded(stream.endpoint);
                            let outcome = self.consume(&mut stream).await;
                            if matches!(outcome, Outcome::Broken(_)) {
                                self.endpoints
                                    .failed(stream.endpoint, std::time::Instant::now());
                            }
                            outcome
                        }
                        Err((endpoint, outcome)) => {
                            if matches!(outcome, Outcome::Broken(_)) {
                                self.endpoints.failed(endpoint, std::time::Instant::now());
                            }
                            outcome
                        }
                    }
                }
            };
            match outcome {
                Outcome::Broken(why) => {
                    tracing::warn!(error = %why, "Consumer stream failed; will resubscribe.");
                    self.transition(Event::Failed);
                }
                Outcome::Refused(status) => {
                    tracing::error!(code = ?status.code(), message = status.message(), "Subscription refused.");
                    let _ = self.deliveries.send(Err(ConsumerError::Rejected {
                        code: status.code(),
                        message: status.message().to_owned(),
                    }));
                    return;
                }
                Outcome::Closed => return,
            }
        }
    }

    /// Connects, sends the subscription and waits for `Subscribed`.
    async fn subscribe(&mut self) -> Result<Stream, (usize, Outcome)> {
        let (index, uri) = self.endpoints.pick(std::time::Instant::now());
        let uri = uri.to_owned();
        let connect_timeout = self.config.connect_timeout;
        let broken = |message: String| (index, Outcome::Broken(format!("{uri}: {message}")));
        let channel = crate::channel::open(&uri, connect_timeout)
            .await
            .map_err(|message| (index, Outcome::Broken(message)))?;
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let subscription = v1::Subscription {
            topic: self.config.topic.clone(),
            group: self.config.group.clone(),
            mode: match self.config.mode {
                GroupMode::Clustering => v1::GroupMode::Clustering,
                GroupMode::Broadcast => v1::GroupMode::Broadcast,
            }
            .into(),
            start: match self.config.start {
                StartPosition::Latest => v1::StartPosition::Latest,
                StartPosition::Earliest => v1::StartPosition::Earliest,
            }
            .into(),
            max_unacked: self.config.max_unacked,
            // The config keeps it within u32.
            ack_timeout_ms: u32::try_from(self.config.ack_timeout.as_millis()).unwrap_or(u32::MAX),
            member: self.config.member.clone().unwrap_or_default(),
        };
        let _ = requests.send(v1::SubscribeRequest {
            request: Some(v1::subscribe_request::Request::Subscription(subscription)),
        });
        let mut client = TrellisClient::new(channel);
        let first = async {
            let mut responses = client
                .subscribe(UnboundedReceiverStream::new(requests_rx))
                .await?
                .into_inner();
            let first = responses.message().await?;
            Ok::<_, tonic::Status>((responses, first))
        };
        let (responses, first) = match tokio::time::timeout(connect_timeout, first).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(status)) if is_transient_code(status.code()) => {
                return Err(broken(status.to_string()));
            }
            Ok(Err(status)) => return Err((index, Outcome::Refused(status))),
            Err(_) => return Err(broken("no answer to the subscription".to_owned())),
        };
        match first.and_then(|response| response.response) {
            Some(v1::subscribe_response::Response::Subscribed(subscribed)) => {
                tracing::info!(endpoint = %uri, from_offset = subscribed.from_offset, "Consumer subscribed.");
            }
            Some(v1::subscribe_response::Response::Delivery(_)) => {
                return Err(broken(
                    "a delivery before the subscription was confirmed".to_owned(),
                ));
            }
            None => {
                return Err(broken(
                    "the stream ended before the subscription was confirmed".to_owned(),
                ));
            }
        }
        Ok(Stream {
            endpoint: index,
            requests,
            responses,
            unacked: HashSet::new(),
        })
    }

    /// Passes deliveries to the application and its acks to the server until the stream ends.
    async fn consume(&mut self, stream: &mut Stream) -> Outcome {
        loop {
            tokio::select! {
                response = stream.responses.message() => match response {
                    Ok(Some(response)) => {
                        if let Some(v1::subscribe_response::Response::Delivery(delivery)) = response.response
                            && !self.deliver(stream, delivery)
                        {
                            self.leave(stream).await;
                            return Outcome::Closed;
                        }
                    }
                    Ok(None) => return Outcome::Broken("the server ended the stream".to_owned()),
                    Err(status) if is_transient_code(status.code()) => {
                        return Outcome::Broken(status.to_string());
                    }
                    Err(status) => return Outcome::Refused(status),
                },
                ack = self.acks.recv() => {
                    let Some(offset) = ack else {
                        self.leave(stream).await;
                        return Outcome::Closed;
                    };
                    let mut offsets = Vec::new();
                    if stream.unacked.remove(&offset) {
                        offsets.push(offset);
                    }
                    while offsets.len() < MAX_ACKS_PER_MESSAGE {
                        match self.acks.try_recv() {
                            Ok(offset) => {
                                if stream.unacked.remove(&offset) {
                                    offsets.push(offset);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if !offsets.is_empty() {
                        let ack = v1::SubscribeRequest {
                            request: Some(v1::subscribe_request::Request::Ack(v1::Ack { offsets })),
                        };
                        if stream.requests.send(ack).is_err() {
                            return Outcome::Broken("the request stream closed".to_owned());
                        }
                    }
                }
            }
        }
    }

    /// Leaves the group cleanly once the application is done: sends the acks it made before it
    /// let go, ends the request stream and waits (briefly) for the server to end its side.
    /// Dropping the stream at once would cancel the call, and acks not yet on the wire with it:
    /// their events would be delivered again.
    async fn leave(&mut self, stream: &mut Stream) {
        let mut offsets = Vec::new();
        while let Ok(offset) = self.acks.try_recv() {
            if stream.unacked.remove(&offset) {
                offsets.push(offset);
            }
        }
        for offsets in offsets.chunks(MAX_ACKS_PER_MESSAGE) {
            let ack = v1::SubscribeRequest {
                request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
                    offsets: offsets.to_vec(),
                })),
            };
            if stream.requests.send(ack).is_err() {
                return;
            }
        }
        // Ends the request stream: the server settles the acks, then ends the call.
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut stream.requests, closed));
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            while let Ok(Some(_)) = stream.responses.message().await {}
        })
        .await;
    }

    /// Hands one delivery to the application; false once the application is gone.
    fn deliver(&mut self, stream: &mut Stream, delivery: v1::Delivery) -> bool {
        let offset = delivery.offset;
        let event = match delivery.event {
            Some(event) => trellis_proto::event_from_proto(event),
            None => Err(trellis_cloudevents::EventError {
                attribute: None,
                index: None,
                message: "the delivery carries no event".to_owned(),
            }),
        };
        let item = match event {
            Ok(event) => {
                stream.unacked.insert(offset);
                self.metrics.deliveries.increment(1);
                Ok(Delivery {
                    offset,
                    event,
                    attempt: delivery.attempt,
                })
            }
            Err(error) => Err(ConsumerError::InvalidEvent { offset, error }),
        };
        self.deliveries.send(item).is_ok()
    }

    fn transition(&mut self, event: Event) {
        self.machine.on(event, &self.metrics);
    }
}
