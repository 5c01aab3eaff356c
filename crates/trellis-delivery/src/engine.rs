//! The delivery loop of one subscription: picks a URL, waits for its circuit and a concurrency
//! slot, sends, classifies the answer, and retries or ends the record. Every record handed to
//! [`Engine::deliver`] ends in exactly one callback (see `report::Completion`).
//!
//! Time spent waiting for an open circuit or a URL paused by 410 Gone is not charged to a
//! record's attempts or to its delivery budget: those waits say nothing about the record, and
//! dead-lettering it for them would lose events during an outage the breaker already handles.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Uri};
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::watch;
use trellis_cloudevents::CloudEvent;

use crate::backoff::{BackoffSettings, honour_retry_after, parse_retry_after};
use crate::breaker::{Admission, BreakerSettings, CircuitBreaker, CircuitState};
use crate::classify::{StatusPolicy, Verdict, is_backpressure};
use crate::client::{Answer, Connector, Endpoint, ExchangeError};
use crate::concurrency::{ConcurrencyLimiter, ConcurrencySettings, Signal};
use crate::config::{ConcurrencySpec, DeliverySpec, Mode, SinkSpec, Strategy};
use crate::guard::{AddressGuard, DeniedHost};
use crate::redact::redact_url;
use crate::report::{
    AttemptRecord, Completion, DeliveryCallbacks, Failed, FailureClass, RecordContext,
    error_messages, joined_chain, millis,
};
use crate::request::{self, Attempt, PreparedEvent};
use crate::tls::WebhookTls;
use crate::validation::RateGate;

/// A record to deliver.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub offset: u64,
    pub event: CloudEvent,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A sink URL cannot be used; `index` is its position in `sink.urls`.
    #[error("sink.urls[{index}]: {message}")]
    Url { index: usize, message: String },
    #[error("sink.headers.{name}: {message}")]
    Header { name: String, message: String },
}

/// What the status API shows of the engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    pub delivered: u64,
    pub failed: u64,
    /// Attempts after the first, over all records.
    pub retries: u64,
    pub in_flight: u64,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// Redacted.
    pub url: String,
    pub circuit: CircuitState,
    pub concurrency: usize,
    pub in_flight: usize,
    /// Why delivery to this URL is paused (it answered 410 Gone), until the subscription is
    /// resumed.
    pub paused: Option<String>,
}

/// Delivers the records of one subscription. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    subscription: String,
    strategy: Strategy,
    mode: Mode,
    extra_headers: HeaderMap,
    secret: Option<Vec<u8>>,
    targets: Vec<Target>,
    settings: RwLock<Arc<Settings>>,
    connector: RwLock<Connector>,
    guard: Arc<AddressGuard>,
    tls: WebhookTls,
    callbacks: Arc<dyn DeliveryCallbacks>,
    next_target: AtomicUsize,
    /// Bumped by `resume`; records waiting on paused URLs watch it.
    resumed: watch::Sender<u64>,
    counters: Counters,
    metrics: EngineMetrics,
    /// Asked right before each request is sent; see [`Engine::set_gate`].
    gate: RwLock<Option<Arc<dyn AttemptGate>>>,
}

/// Says whether this process may still send attempts. A cluster replica that can no longer
/// prove it owns a subscription must not make another attempt, even one a retry timer set up
/// before it lost ownership (a process frozen past its lease wakes with such timers due).
pub trait AttemptGate: Send + Sync {
    fn is_open(&self) -> bool;
}

/// Counter handles built once: looking a labelled counter up per record costs an allocation
/// and a registry search on the hot path.
struct EngineMetrics {
    records: Vec<(&'static str, metrics::Counter)>,
    attempts: Vec<(&'static str, metrics::Counter)>,
}

const RECORD_RESULTS: &[&str] = &[
    "delivered",
    "retries_exhausted",
    "non_retriable",
    "deadline_passed",
    "rejected",
    "gone",
    "cancelled",
];
const ATTEMPT_VERDICTS: &[&str] = &[
    "delivered",
    "retriable_status",
    "transport_error",
    "permanent",
    "gone",
];

impl EngineMetrics {
    fn new(subscription: &str) -> EngineMetrics {
        let counter = |name: &'static str, label: &'static str, value: &'static str| {
            let labels = [
                ("subscription", subscription.to_owned()),
                (label, value.to_owned()),
            ];
            (value, metrics::counter!(name, &labels))
        };
        EngineMetrics {
            records: RECORD_RESULTS
                .iter()
                .map(|result| counter("trellis_delivery_records_total", "result", result))
                .collect(),
            attempts: ATTEMPT_VERDICTS
                .iter()
                .map(|verdict| counter("trellis_delivery_attempts_total", "verdict", verdict))
                .collect(),
        }
    }

    fn record(&self, result: &str) -> &metrics::Counter {
        find(&self.records, result)
    }

    fn attempt(&self, verdict: &str) -> &metrics::Counter {
        find(&self.attempts, verdict)
    }
}

fn find<'a>(handles: &'a [(&'static str, metrics::Counter)], key: &str) -> &'a metrics::Counter {
    static NOOP: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    handles.iter().find(|(label, _)| *label == key).map_or_else(
        || NOOP.get_or_init(metrics::Counter::noop),
        |(_, counter)| counter,
    )
}

struct Target {
    endpoint: Endpoint,
    redacted: String,
    breaker: CircuitBreaker,
    limiter: ConcurrencyLimiter,
    gone: Mutex<Option<String>>,
    /// The rate the URL granted in the validation handshake, if it set one.
    rate: Mutex<Option<Arc<RateGate>>>,
    circuit_gauge: metrics::Gauge,
    concurrency_gauge: metrics::Gauge,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    in_flight: AtomicU64,
}

/// The delivery settings in the engine's units.
#[derive(Debug, Clone)]
struct Settings {
    max_attempts: u32,
    max_delivery: Duration,
    backoff: BackoffSettings,
    retry_after_max: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    status: StatusPolicy,
    breaker: BreakerSettings,
    concurrency: ConcurrencySettings,
}

/// How much of an answer's body is read before the connection is given back to the pool.
/// Receivers' bodies are not used; reading a little lets a small body end cleanly so the
/// connection can be reused, and the cap keeps a chatty receiver from costing memory.
const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;

enum Choice {
    /// Round robin: start at this URL and move to the next one on each retry.
    RoundRobin { start: usize },
    /// Broadcast: this URL only.
    Only(usize),
}

impl Engine {
    pub fn new(
        subscription: &str,
        sink: &SinkSpec,
        delivery: &DeliverySpec,
        guard: Arc<AddressGuard>,
        tls: WebhookTls,
        callbacks: Arc<dyn DeliveryCallbacks>,
    ) -> Result<Engine, EngineError> {
        let settings = Settings::from_spec(delivery);
        let mut targets = Vec::with_capacity(sink.urls.len());
        for (index, url) in sink.urls.iter().enumerate() {
            let uri: Uri = url.parse().map_err(|error| EngineError::Url {
                index,
                message: format!("not a valid URL: {error}"),
            })?;
            guard.check_url(&uri).map_err(|error| EngineError::Url {
                index,
                message: error.to_string(),
            })?;
            let redacted = redact_url(url);
            let labels = [
                ("subscription", subscription.to_owned()),
                ("url", redacted.clone()),
            ];
            let opened = metrics::counter!("trellis_delivery_connections_opened_total", &labels);
            let endpoint = Endpoint::new(&uri, opened).map_err(|error| EngineError::Url {
                index,
                message: error.to_string(),
            })?;
            targets.push(Target {
                endpoint,
                breaker: CircuitBreaker::new(settings.breaker.clone()),
                limiter: ConcurrencyLimiter::new(settings.concurrency.clone()),
                gone: Mutex::new(None),
                rate: Mutex::new(None),
                circuit_gauge: metrics::gauge!("trellis_delivery_circuit_state", &labels),
                concurrency_gauge: metrics::gauge!("trellis_delivery_concurrency_limit", &labels),
                redacted,
            });
        }
        let mut extra_headers = HeaderMap::new();
        for (name, value) in &sink.headers {
            let header_error = |message: String| EngineError::Header {
                name: name.clone(),
                message,
            };
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|error| header_error(error.to_string()))?;
            let mut header_value =
                HeaderValue::from_str(value).map_err(|error| header_error(error.to_string()))?;
            // Any of them may be a credential (see `config`): marked so, a request's headers
            // print it as `Sensitive` and `redact::redacted_headers` hides it.
            header_value.set_sensitive(true);
            extra_headers.append(header_name, header_value);
        }
        let connector = Connector::new(settings.connect_timeout, Arc::clone(&guard), &tls);
        let (resumed, _) = watch::channel(0);
        Ok(Engine {
            inner: Arc::new(Inner {
                subscription: subscription.to_owned(),
                strategy: sink.strategy,
                mode: sink.mode,
                extra_headers,
                secret: sink
                    .secret
                    .as_ref()
                    .map(|secret| secret.as_bytes().to_vec()),
                targets,
                settings: RwLock::new(Arc::new(settings)),
                connector: RwLock::new(connector),
                guard,
                tls,
                callbacks,
                next_target: AtomicUsize::new(0),
                resumed,
                counters: Counters::default(),
                metrics: EngineMetrics::new(subscription),
                gate: RwLock::new(None),
            }),
        })
    }

    /// Delivers one record and returns once it has ended and its callback has been called.
    /// Dropping the future before then reports the record as cancelled.
    pub async fn deliver(&self, record: Record) {
        let prepared = PreparedEvent::new(&record.event, self.inner.mode);
        self.deliver_prepared(vec![record], prepared).await;
    }

    /// Delivers records together in one `application/cloudevents-batch+json` request; each
    /// still gets its own callback, and all share the request's fate (and its retries).
    pub async fn deliver_batch(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let events: Vec<&CloudEvent> = records.iter().map(|record| &record.event).collect();
        let prepared = Ok(PreparedEvent::batch(&events));
        self.deliver_prepared(records, prepared).await;
    }

    async fn deliver_prepared(
        &self,
        records: Vec<Record>,
        prepared: Result<PreparedEvent, trellis_cloudevents::EventError>,
    ) {
        let inner = &*self.inner;
        let completions: Vec<Completion> = records
            .iter()
            .map(|record| {
                let context = RecordContext {
                    subscription: inner.subscription.clone(),
                    topic: record.topic.clone(),
                    offset: record.offset,
                    event_id: record.event.id.clone(),
                    urls: inner.targets.iter().map(|t| t.redacted.clone()).collect(),
                };
                Completion::new(Arc::clone(&inner.callbacks), context)
            })
            .collect();
        let _in_flight = InFlight::enter(&inner.counters.in_flight, completions.len() as u64);
        let mut attempts = Vec::new();
        let outcome = match prepared {
            Ok(prepared) => self.attempt_everywhere(&prepared, &mut attempts).await,
            Err(error) => Err(Failed::new(
                FailureClass::Rejected,
                format!("the event cannot be sent in the subscription's content mode: {error}"),
            )),
        };
        let n_completions = completions.len();
        for (index, mut completion) in completions.into_iter().enumerate() {
            completion.attempts = if index + 1 == n_completions {
                std::mem::take(&mut attempts)
            } else {
                attempts.clone()
            };
            self.finish(completion, outcome.clone());
        }
    }

    /// Round robin: one URL at a time. Broadcast: every URL, and the outcome is the first
    /// failure, if any.
    async fn attempt_everywhere(
        &self,
        prepared: &PreparedEvent,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Result<(), Failed> {
        let inner = &*self.inner;
        match inner.strategy {
            Strategy::RoundRobin => {
                let start =
                    inner.next_target.fetch_add(1, Ordering::Relaxed) % inner.targets.len().max(1);
                self.attempt_until_ended(prepared, Choice::RoundRobin { start }, attempts)
                    .await
            }
            Strategy::Broadcast => {
                let per_target = (0..inner.targets.len()).map(|index| async move {
                    let mut attempts = Vec::new();
                    let outcome = self
                        .attempt_until_ended(prepared, Choice::Only(index), &mut attempts)
                        .await;
                    (outcome, attempts)
                });
                let mut first_failure = None;
                for (outcome, target_attempts) in futures::future::join_all(per_target).await {
                    attempts.extend(target_attempts);
                    if let Err(failed) = outcome {
                        first_failure.get_or_insert(failed);
                    }
                }
                first_failure.map_or(Ok(()), Err)
            }
        }
    }

    fn finish(&self, completion: Completion, outcome: Result<(), Failed>) {
        let counters = &self.inner.counters;
        let n_attempts = completion.attempts.len() as u64;
        counters
            .retries
            .fetch_add(n_attempts.saturating_sub(1), Ordering::Relaxed);
        let subscription = self.inner.subscription.as_str();
        let context = completion.context();
        let offset = context.map_or(0, |context| context.offset);
        let event_id = context.map_or("", |context| context.event_id.as_str());
        match outcome {
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                self.inner.metrics.record("delivered").increment(1);
                tracing::info!(
                    message = "Delivered.",
                    subscription,
                    offset,
                    event_id,
                    attempts = n_attempts
                );
                completion.succeed();
            }
            Err(failed) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .metrics
                    .record(failed.class.as_str())
                    .increment(1);
                tracing::info!(
                    message = "Delivery failed.",
                    subscription,
                    offset,
                    event_id,
                    attempts = n_attempts,
                    class = failed.class.as_str(),
                    reason = %failed.reason,
                );
                completion.fail(failed);
            }
        }
    }

    /// Attempts one record (at one URL, or round robin over all) until it is delivered or
    /// fails for good.
    async fn attempt_until_ended(
        &self,
        prepared: &PreparedEvent,
        choice: Choice,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Result<(), Failed> {
        let inner = &*self.inner;
        let started = Instant::now();
        let mut not_charged = Duration::ZERO;
        let mut failed_attempts = 0u32;
        let mut hop = 0usize;
        let mut last_status = None;
        loop {
            let settings = inner.settings();
            let mut resumed = inner.resumed.subscribe();
            let Some(index) = inner.pick(&choice, hop) else {
                // Every URL this record may use answered 410 Gone: wait for a resume.
                let waited = Instant::now();
                if resumed.changed().await.is_err() {
                    return Err(Failed::new(FailureClass::Cancelled, "the engine stopped"));
                }
                not_charged += waited.elapsed();
                continue;
            };
            let target = &inner.targets[index];
            match target.breaker.admit(Instant::now()) {
                Admission::Rejected { retry_in } => {
                    target.publish_state();
                    let waited = Instant::now();
                    tokio::time::sleep(retry_in.max(Duration::from_millis(1))).await;
                    not_charged += waited.elapsed();
                    continue;
                }
                Admission::Allowed | Admission::Probe => {}
            }
            let charged = started.elapsed().saturating_sub(not_charged);
            let Some(remaining) = settings
                .max_delivery
                .checked_sub(charged)
                .filter(|left| !left.is_zero())
            else {
                return Err(deadline_passed(&settings, last_status));
            };
            let gate = lock(&target.rate).clone();
            if let Some(gate) = gate {
                let waited = Instant::now();
                gate.wait().await;
                not_charged += waited.elapsed();
            }
            let permit = target.limiter.acquire().await;
            let number = failed_attempts + 1;
            let request_id = uuid::Uuid::now_v7().to_string();
            // The clock is read only for a signature, which is all that uses it.
            let now_unix_s = inner.secret.as_ref().map_or(0, |_| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| {
                        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
                    })
            });
            let attempt = Attempt {
                uri: target.endpoint.request_uri(),
                number,
                request_id: &request_id,
                extra_headers: &inner.extra_headers,
                secret: inner.secret.as_deref(),
                now_unix_s,
            };
            let request = || request::build(prepared, &attempt);
            let timeout = settings.request_timeout.min(remaining);
            if !inner.gate_open() {
                // Not final: the record stays uncommitted for whoever owns it now.
                return Err(Failed::new(
                    FailureClass::Cancelled,
                    "this process may no longer deliver for the subscription",
                ));
            }
            let sent_at = Instant::now();
            let answer =
                tokio::time::timeout(timeout, send(inner, &target.endpoint, request)).await;
            let rtt = sent_at.elapsed();
            let answer = match answer {
                Ok(answer) => answer,
                Err(_) => Err(SendError::transport(vec![format!(
                    "no answer within the request timeout of {} ms",
                    timeout.as_millis()
                )])),
            };
            let (verdict, status, retry_after, error_chain, denied) = match answer {
                Ok((status, retry_after)) => (
                    settings.status.classify(status),
                    Some(status),
                    retry_after,
                    Vec::new(),
                    false,
                ),
                Err(error) => (Verdict::Retriable, None, None, error.chain, error.denied),
            };
            let backpressure = status.is_none_or(is_backpressure);
            tracing::debug!(
                message = "Attempt ended.",
                subscription = %inner.subscription,
                request_id,
                url = %target.redacted,
                attempt = number,
                status = status.map(|status| status.as_u16()),
                error = error_chain.first().map(String::as_str),
                elapsed_ms = millis(rtt),
            );
            attempts.push(AttemptRecord {
                attempt: number,
                request_id,
                url: target.redacted.clone(),
                status: status.map(|status| status.as_u16()),
                error: error_chain.first().cloned(),
                elapsed_ms: millis(rtt),
            });
            if denied {
                // A configuration matter, not the target's health: no retry, no breaker count.
                return Err(Failed {
                    class: FailureClass::Rejected,
                    reason: format!(
                        "{} resolves only to denied addresses (see the webhook deny list)",
                        target.redacted
                    ),
                    last_status: None,
                    error_chain,
                });
            }
            inner
                .metrics
                .attempt(verdict_label(verdict, status.is_some()))
                .increment(1);
            if let Some(status) = status {
                last_status = Some(status.as_u16());
            }
            // Only answers that say the target is unwell count against its circuit: a 400 is
            // about the record, not the target.
            match verdict {
                Verdict::Retriable => target.breaker.record_failure(Instant::now()),
                Verdict::Delivered | Verdict::Permanent | Verdict::Gone => {
                    target.breaker.record_success(Instant::now());
                }
            }
            target.publish_state();
            permit.complete(
                rtt,
                if backpressure {
                    Signal::Backpressure
                } else {
                    Signal::Ok
                },
            );
            let described = || match status {
                Some(status) => format!("{} answered {status}", target.redacted),
                None if error_chain.is_empty() => format!("{}: no answer", target.redacted),
                // The whole chain: "cannot connect" alone does not say why.
                None => format!("{}: {}", target.redacted, joined_chain(&error_chain)),
            };
            match verdict {
                Verdict::Delivered => return Ok(()),
                Verdict::Permanent => {
                    return Err(Failed {
                        class: FailureClass::NonRetriable,
                        reason: format!("{}, which retrying cannot fix", described()),
                        last_status,
                        error_chain,
                    });
                }
                Verdict::Gone => {
                    let reason = format!(
                        "{} answered 410 Gone; delivery to it is paused until the subscription is resumed",
                        target.redacted
                    );
                    *lock(&target.gone) = Some(reason.clone());
                    return Err(Failed {
                        class: FailureClass::Gone,
                        reason,
                        last_status,
                        error_chain,
                    });
                }
                Verdict::Retriable => {}
            }
            failed_attempts += 1;
            if failed_attempts >= settings.max_attempts {
                return Err(Failed {
                    class: FailureClass::RetriesExhausted,
                    reason: format!(
                        "all {} attempts failed; the last: {}",
                        settings.max_attempts,
                        described()
                    ),
                    last_status,
                    error_chain,
                });
            }
            let backoff = settings.backoff.delay(failed_attempts, &mut rand::rng());
            let delay = honour_retry_after(backoff, retry_after, settings.retry_after_max);
            let charged = started.elapsed().saturating_sub(not_charged);
            if charged + delay >= settings.max_delivery {
                let left = settings.max_delivery.saturating_sub(charged);
                // Said apart from a budget that ran out: nothing is wrong with the budget when a
                // target asks for a longer wait than is left of it, and the fix differs.
                let reason = match retry_after {
                    Some(asked) if delay > backoff => format!(
                        "{} with Retry-After {} ms{}, which does not fit the {} ms left of the delivery budget of {} ms (max_delivery_ms)",
                        described(),
                        asked.as_millis(),
                        if asked > settings.retry_after_max {
                            format!(
                                " (capped at retry_after_max_ms, {} ms)",
                                settings.retry_after_max.as_millis()
                            )
                        } else {
                            String::new()
                        },
                        left.as_millis(),
                        settings.max_delivery.as_millis(),
                    ),
                    _ => format!(
                        "the next attempt, {} ms away, would fall after the delivery budget of {} ms (max_delivery_ms) runs out; the last: {}",
                        delay.as_millis(),
                        settings.max_delivery.as_millis(),
                        described(),
                    ),
                };
                return Err(Failed {
                    class: FailureClass::DeadlinePassed,
                    reason,
                    last_status,
                    error_chain,
                });
            }
            tokio::time::sleep(delay).await;
            hop += 1;
        }
    }

    /// Applies new delivery settings to records already in flight and to later ones.
    pub fn update_delivery(&self, delivery: &DeliverySpec) {
        let settings = Settings::from_spec(delivery);
        for target in &self.inner.targets {
            target.breaker.set_settings(settings.breaker.clone());
            target.limiter.set_settings(settings.concurrency.clone());
        }
        let old_connect_timeout = self.inner.settings().connect_timeout;
        if settings.connect_timeout != old_connect_timeout {
            let connector = Connector::new(
                settings.connect_timeout,
                Arc::clone(&self.inner.guard),
                &self.inner.tls,
            );
            *self
                .inner
                .connector
                .write()
                .unwrap_or_else(PoisonError::into_inner) = connector;
        }
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }

    /// Keeps requests to `sink.urls[url_index]` within `per_minute` (`None`: no limit), as the
    /// URL asked in the validation handshake.
    pub fn limit_rate(&self, url_index: usize, per_minute: Option<u32>) {
        if let Some(target) = self.inner.targets.get(url_index) {
            *lock(&target.rate) = per_minute.map(|rate| Arc::new(RateGate::per_minute(rate)));
        }
    }

    /// Closes keep-alive connections idle for too long. Call it now and then (the dispatcher
    /// does at each commit): nothing else watches idle connections.
    pub fn close_idle_connections(&self) {
        for target in &self.inner.targets {
            target.endpoint.close_expired();
        }
    }

    /// Every attempt from now on first asks `gate`; a closed gate ends the record as
    /// [`FailureClass::Cancelled`] (not final, so it stays uncommitted) with no request sent.
    pub fn set_gate(&self, gate: Arc<dyn AttemptGate>) {
        *self
            .inner
            .gate
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(gate);
    }

    /// Lifts the pause of every URL that answered 410 Gone.
    pub fn resume(&self) {
        for target in &self.inner.targets {
            *lock(&target.gone) = None;
        }
        self.inner
            .resumed
            .send_modify(|generation| *generation += 1);
    }

    pub fn status(&self) -> EngineStatus {
        let inner = &*self.inner;
        let now = Instant::now();
        EngineStatus {
            delivered: inner.counters.delivered.load(Ordering::Relaxed),
            failed: inner.counters.failed.load(Ordering::Relaxed),
            retries: inner.counters.retries.load(Ordering::Relaxed),
            in_flight: inner.counters.in_flight.load(Ordering::Relaxed),
            targets: inner
                .targets
                .iter()
                .map(|target| TargetStatus {
                    url: target.redacted.clone(),
                    circuit: target.breaker.state(now),
                    concurrency: target.limiter.limit(),
                    in_flight: target.limiter.in_flight(),
                    paused: lock(&target.gone).clone(),
                })
                .collect(),
        }
    }
}

impl Inner {
    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn gate_open(&self) -> bool {
        self.gate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(|gate| gate.is_open())
    }

    fn connector(&self) -> Connector {
        self.connector
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The URL for the next attempt, skipping URLs paused by 410 Gone; `None` when every URL
    /// the record may use is paused.
    fn pick(&self, choice: &Choice, hop: usize) -> Option<usize> {
        let is_open = |index: usize| lock(&self.targets[index].gone).is_none();
        match *choice {
            Choice::Only(index) => is_open(index).then_some(index),
            Choice::RoundRobin { start } => {
                let n = self.targets.len();
                (0..n)
                    .map(|step| (start + hop + step) % n)
                    .find(|index| is_open(*index))
            }
        }
    }
}

impl Target {
    fn publish_state(&self) {
        let state = match self.breaker.state(Instant::now()) {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        self.circuit_gauge.set(state);
        self.concurrency_gauge.set(self.limiter.limit() as f64);
    }
}

impl Settings {
    fn from_spec(spec: &DeliverySpec) -> Settings {
        let ms = Duration::from_millis;
        Settings {
            max_attempts: spec.max_attempts.max(1),
            max_delivery: ms(spec.max_delivery_ms),
            backoff: BackoffSettings {
                initial: ms(spec.backoff.initial_ms),
                max: ms(spec.backoff.max_ms),
                multiplier: spec.backoff.multiplier,
                jitter: spec.backoff.jitter,
            },
            retry_after_max: ms(spec.retry_after_max_ms),
            connect_timeout: ms(spec.connect_timeout_ms),
            request_timeout: ms(spec.request_timeout_ms),
            status: StatusPolicy {
                retry_on: spec.retry_on.clone(),
                drop_on: spec.drop_on.clone(),
            },
            breaker: BreakerSettings {
                failure_threshold: spec.breaker.failure_threshold,
                failure_ratio: spec.breaker.failure_ratio,
                min_requests: spec.breaker.min_requests,
                window: ms(spec.breaker.window_ms),
                cool_down: ms(spec.breaker.cool_down_ms),
            },
            concurrency: match spec.concurrency {
                ConcurrencySpec::Fixed(n) => ConcurrencySettings::fixed(n),
                ConcurrencySpec::Adaptive { min, max } => ConcurrencySettings {
                    min,
                    max,
                    initial: min,
                },
            },
        }
    }
}

/// Sends one request and reads (a bounded part of) the answer, so the connection can be reused.
async fn send(
    inner: &Inner,
    endpoint: &Endpoint,
    request: impl Fn() -> http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Option<Duration>), SendError> {
    // An answer cut short (a reset mid-body) is an error: the receiver may have failed while
    // answering, and a duplicate is safe where a loss is not. A body over the cap is only
    // left unread.
    // Boxed: the exchange holds a connection and hyper's state, kilobytes that every future
    // awaiting it would otherwise carry, and copy, whenever it moves.
    let Answer { status, headers } =
        Box::pin(endpoint.exchange(|| inner.connector(), request, MAX_RESPONSE_BODY_BYTES))
            .await
            .map_err(|error: ExchangeError| SendError {
                chain: error_messages(&error),
                denied: is_denied_address(&error),
            })?;
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    Ok((status, retry_after))
}

/// Why an attempt got no usable answer.
struct SendError {
    /// The error and its sources, outermost first.
    chain: Vec<String>,
    /// The address guard refused every address of the target's name: retrying cannot help.
    denied: bool,
}

impl SendError {
    fn transport(chain: Vec<String>) -> SendError {
        SendError {
            chain,
            denied: false,
        }
    }
}

fn is_denied_address(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        let denied = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| inner.is::<DeniedHost>())
            || cause.is::<DeniedHost>();
        if denied {
            return true;
        }
        source = cause.source();
    }
    false
}

fn deadline_passed(settings: &Settings, last_status: Option<u16>) -> Failed {
    Failed {
        class: FailureClass::DeadlinePassed,
        reason: format!(
            "the delivery budget of {} ms ran out before the record was delivered",
            settings.max_delivery.as_millis()
        ),
        last_status,
        error_chain: Vec::new(),
    }
}

fn verdict_label(verdict: Verdict, answered: bool) -> &'static str {
    match verdict {
        Verdict::Delivered => "delivered",
        Verdict::Retriable if answered => "retriable_status",
        Verdict::Retriable => "transport_error",
        Verdict::Permanent => "permanent",
        Verdict::Gone => "gone",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts records as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU64, u64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64, n_records: u64) -> Self {
        counter.fetch_add(n_records, Ordering::Relaxed);
        InFlight(counter, n_records)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}
