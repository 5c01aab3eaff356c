//! Producer and consumer settings: one builder each, with every default in one place and
//! validation that names the setting.

use std::time::Duration;

use rand::Rng;

use crate::error::ConfigError;

/// The gRPC address a local `trellis serve` listens on by default.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:10205";

/// Exponential backoff with full jitter between reconnection attempts.
///
/// The delay after the `n`th failure in a row is drawn uniformly from
/// `[0, min(max_backoff, initial_backoff * multiplier^(n-1))]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The cap after the first failure. Default 100 ms.
    pub initial_backoff: Duration,
    /// The largest cap. Default 10 s.
    pub max_backoff: Duration,
    /// Growth of the cap per failure, at least 1. Default 2.
    pub multiplier: f64,
    /// Producer only: how long one outage may last before the records waiting in the producer
    /// fail with [`ProducerError::RetriesExhausted`](crate::ProducerError::RetriesExhausted).
    /// The producer keeps reconnecting and accepting new records either way. Default `None`:
    /// only each record's delivery timeout applies.
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // A 100 ms start reconnects quickly through a restart of the runtime (which takes well
        // under a second); the 10 s cap keeps a long outage from costing more than 10 s of
        // extra latency once it ends. Full jitter spreads out clients that failed together.
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            max_elapsed: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after `failures` (>= 1) failures in a row.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        // f64 saturates to infinity rather than overflowing; min() turns that into the cap.
        let cap_secs = (self.initial_backoff.as_secs_f64() * multiplier.powi(exponent))
            .min(self.max_backoff.as_secs_f64());
        let cap = Duration::try_from_secs_f64(cap_secs).unwrap_or(self.max_backoff);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap_nanos))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_backoff > self.max_backoff {
            return Err(invalid(
                "retry.initial_backoff",
                format!(
                    "must not exceed retry.max_backoff ({:?}); got {:?}",
                    self.max_backoff, self.initial_backoff
                ),
            ));
        }
        if self.multiplier.is_nan() || self.multiplier < 1.0 {
            return Err(invalid(
                "retry.multiplier",
                format!("must be at least 1; got {}", self.multiplier),
            ));
        }
        if self.max_elapsed.is_some_and(|elapsed| elapsed.is_zero()) {
            return Err(invalid("retry.max_elapsed", "must not be zero".to_owned()));
        }
        Ok(())
    }
}

/// Settings of a [`Producer`](crate::Producer). Build with [`ProducerConfig::new`] and the
/// setters; each setter's doc gives its default.
///
/// ```
/// use std::time::Duration;
/// use trellis_client::ProducerConfig;
///
/// let config = ProducerConfig::new("orders")
///     .endpoints(["10.0.0.1:10205", "10.0.0.2:10205"])
///     .batch_max_events(1000)
///     .linger(Duration::from_millis(10));
/// assert!(config.validate().is_ok());
/// assert!(ProducerConfig::new("orders").max_in_flight(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerConfig {
    pub(crate) topic: String,
    pub(crate) endpoints: Vec<String>,
    pub(crate) batch_max_events: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) buffer_timeout: Duration,
    pub(crate) delivery_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) endpoint_quarantine: Duration,
    pub(crate) retry: RetryPolicy,
}

impl ProducerConfig {
    /// A producer for `topic`, with every other setting at its default.
    pub fn new(topic: impl Into<String>) -> ProducerConfig {
        ProducerConfig {
            topic: topic.into(),
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            batch_max_events: 500,
            batch_max_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 4,
            max_buffered_bytes: 64 * 1024 * 1024,
            buffer_timeout: Duration::from_secs(30),
            // Kafka's delivery.timeout.ms: long enough to ride out a restart or a failover.
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            endpoint_quarantine: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    /// The gRPC endpoints, `host:port` or `http://host:port`, tried in order; the producer stays
    /// on one while it works. Default [`DEFAULT_ENDPOINT`].
    pub fn endpoints<S: Into<String>>(mut self, endpoints: impl IntoIterator<Item = S>) -> Self {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Most events per batch. Default 500.
    pub fn batch_max_events(mut self, n_events: usize) -> Self {
        self.batch_max_events = n_events;
        self
    }

    /// Most encoded bytes per batch; an event larger than this travels alone. Default 1 MiB.
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.batch_max_bytes = bytes;
        self
    }

    /// How long a batch that is not full waits for more events. Default 5 ms.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Most batches sent and not answered yet on one connection. Default 4.
    ///
    /// The producer sends, and resends after a failure, in the order of `send`, and Trellis
    /// stores a stream's batches in the order they came: records land in the topic in the order
    /// of `send` whatever this is. More in flight rides out more latency.
    pub fn max_in_flight(mut self, n_batches: usize) -> Self {
        self.max_in_flight = n_batches;
        self
    }

    /// Most encoded bytes held by the producer (waiting, in flight or being retried); `send`
    /// waits for room beyond it. At most 4 GiB. Default 64 MiB.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// How long `send` waits for room in the buffer before it fails with
    /// [`ProducerError::BufferFull`](crate::ProducerError::BufferFull). Default 30 s.
    pub fn buffer_timeout(mut self, timeout: Duration) -> Self {
        self.buffer_timeout = timeout;
        self
    }

    /// How long a record may go unacknowledged, retries included, before it fails with
    /// [`ProducerError::DeliveryTimeout`](crate::ProducerError::DeliveryTimeout). Default 120 s.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// How long a batch in flight may go unanswered before the connection is deemed broken.
    /// Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long to wait for a TCP and HTTP/2 connection. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an endpoint that failed is skipped while another is available. Default 30 s.
    pub fn endpoint_quarantine(mut self, quarantine: Duration) -> Self {
        self.endpoint_quarantine = quarantine;
        self
    }

    /// Backoff between reconnection attempts. Default [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Checks every setting; [`Producer::new`](crate::Producer::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.topic.is_empty() {
            return Err(invalid("topic", "must not be empty".to_owned()));
        }
        validate_endpoints(&self.endpoints)?;
        at_least_one("batch_max_events", self.batch_max_events)?;
        at_least_one("batch_max_bytes", self.batch_max_bytes)?;
        at_least_one("max_in_flight", self.max_in_flight)?;
        at_least_one("max_buffered_bytes", self.max_buffered_bytes)?;
        if u32::try_from(self.max_buffered_bytes).is_err() {
            return Err(invalid(
                "max_buffered_bytes",
                format!("must be at most 4 GiB; got {}", self.max_buffered_bytes),
            ));
        }
        for (setting, duration) in [
            ("buffer_timeout", self.buffer_timeout),
            ("delivery_timeout", self.delivery_timeout),
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if duration.is_zero() {
                return Err(invalid(setting, "must not be zero".to_owned()));
            }
        }
        self.retry.validate()
    }

    /// `http://host:port` for each endpoint.
    pub(crate) fn endpoint_uris(&self) -> Vec<String> {
        endpoint_uris(&self.endpoints)
    }
}

/// How a consumer group shares a topic's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupMode {
    /// Each event goes to one member of the group.
    #[default]
    Clustering,
    /// Each member gets every event.
    Broadcast,
}

/// Where a group that has no stored progress starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// At the end of the topic: only events published from now on.
    #[default]
    Latest,
    /// At the first event still in the topic.
    Earliest,
}

/// Settings of a [`Consumer`](crate::Consumer).
///
/// ```
/// use trellis_client::{ConsumerConfig, StartPosition};
///
/// let config = ConsumerConfig::new("orders", "billing").start(StartPosition::Earliest);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerConfig {
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) endpoints: Vec<String>,
    pub(crate) mode: GroupMode,
    pub(crate) start: StartPosition,
    pub(crate) max_unacked: u32,
    pub(crate) ack_timeout: Duration,
    pub(crate) member: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) endpoint_quarantine: Duration,
    pub(crate) retry: RetryPolicy,
}

impl ConsumerConfig {
    /// A member of `group` on `topic`, with every other setting at its default.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            topic: topic.into(),
            group: group.into(),
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            mode: GroupMode::default(),
            start: StartPosition::default(),
            max_unacked: 1000,
            ack_timeout: Duration::from_secs(30),
            member: None,
            connect_timeout: Duration::from_secs(5),
            endpoint_quarantine: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    /// The gRPC endpoints, `host:port` or `http://host:port`. Default [`DEFAULT_ENDPOINT`].
    pub fn endpoints<S: Into<String>>(mut self, endpoints: impl IntoIterator<Item = S>) -> Self {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Clustering (default) or broadcast.
    pub fn mode(mut self, mode: GroupMode) -> Self {
        self.mode = mode;
        self
    }

    /// Where a new group starts. Default [`StartPosition::Latest`].
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Events delivered and not acked yet before delivery pauses. Default 1000.
    pub fn max_unacked(mut self, n_events: u32) -> Self {
        self.max_unacked = n_events;
        self
    }

    /// How long an event may stay unacked before it is delivered again. Default 30 s.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Broadcast only: a stable member name under which progress is kept.
    pub fn member(mut self, member: impl Into<String>) -> Self {
        self.member = Some(member.into());
        self
    }

    /// How long to wait for a connection. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an endpoint that failed is skipped while another is available. Default 30 s.
    pub fn endpoint_quarantine(mut self, quarantine: Duration) -> Self {
        self.endpoint_quarantine = quarantine;
        self
    }

    /// Backoff between reconnection attempts (`max_elapsed` does not apply: a consumer keeps
    /// trying). Default [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Checks every setting; [`Consumer::new`](crate::Consumer::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.topic.is_empty() {
            return Err(invalid("topic", "must not be empty".to_owned()));
        }
        if self.group.is_empty() {
            return Err(invalid("group", "must not be empty".to_owned()));
        }
        validate_endpoints(&self.endpoints)?;
        let ack_timeout_ms = self.ack_timeout.as_millis();
        if ack_timeout_ms == 0 || u32::try_from(ack_timeout_ms).is_err() {
            return Err(invalid(
                "ack_timeout",
                format!(
                    "must be between 1 ms and 49 days; got {:?}",
                    self.ack_timeout
                ),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must not be zero".to_owned()));
        }
        self.retry.validate()
    }

    pub(crate) fn endpoint_uris(&self) -> Vec<String> {
        endpoint_uris(&self.endpoints)
    }
}

fn validate_endpoints(endpoints: &[String]) -> Result<(), ConfigError> {
    if endpoints.is_empty() {
        return Err(invalid(
            "endpoints",
            format!("must name at least one endpoint, e.g. {DEFAULT_ENDPOINT}"),
        ));
    }
    for uri in endpoint_uris(endpoints) {
        if let Err(error) = tonic::transport::Endpoint::from_shared(uri.clone()) {
            return Err(invalid(
                "endpoints",
                format!("expected host:port or http://host:port; got {uri:?}: {error}"),
            ));
        }
    }
    Ok(())
}

fn endpoint_uris(endpoints: &[String]) -> Vec<String> {
    endpoints
        .iter()
        .map(|endpoint| {
            if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            }
        })
        .collect()
}

fn at_least_one(setting: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(setting, "must be at least 1".to_owned()));
    }
    Ok(())
}

fn invalid(setting: &'static str, message: String) -> ConfigError {
    ConfigError { setting, message }
}

#[cfg(test)]
mod tests;
