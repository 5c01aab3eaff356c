//! The source worker: a pump from a [`Source`] into a destination [`Sink`], with offsets.
//!
//! The same pump runs every connector. Inside the runtime a source connector's destination is
//! a sink that publishes through the publish core; standalone, it is a sink publishing into a
//! runtime over HTTP; and a standalone *sink* connector is the pump with a source reading a
//! runtime's topic and the user's sink as destination ([`Role::Sink`] only changes which
//! metric counts its successes).
//!
//! The loop:
//! 1. read the committed offsets ([`OffsetReader`]), start the source with them and start the
//!    destination (with [`SourceWorker::with_destination_config`] or the connector's config);
//! 2. poll a batch (only while fewer than `max_in_flight` records are in flight and no record
//!    waits for a retry), submit each record to [`SubmittedRecords`] in poll order, attach the
//!    worker's callback and put the batch into the destination;
//! 3. as each record ends: on success, acknowledge it, end the source's own completion (the
//!    HTTP source answers its request from there) and tell the source (`Source::commit`); on
//!    a failure that may pass ([`SendError::is_final`] is false, or `put` returned an error so
//!    the records were dropped), hand the records not yet ended to the destination again, in
//!    order, with backoff (100 ms doubling to 5 s, full jitter) until the record's retry budget
//!    (`errors.retry.timeout.ms`, from its first failure) is spent; a record that fails for
//!    good, or past its budget, goes to the error policy;
//! 4. every `commit_interval`, stage the acknowledged prefix and start a flush without waiting
//!    for it: a slow flush never holds up the pump, and a `begin_flush` refused because one is
//!    still running is a warning and a counter (seed 002), its offsets going with the next one.
//!
//! The error policy: under [`Tolerance::All`] the record is written to the dead-letter
//! destination when the worker has one ([`SourceWorker::with_dead_letters`]), otherwise skipped
//! with a warning; either way it is acknowledged, so the offset moves past it. Under
//! [`Tolerance::None`] the worker stops: it commits the acknowledged prefix, which ends before
//! the failed record, and returns [`WorkerFailed`] with the state `Failed`; a new worker
//! retries the record. A failing record never panics the worker.
//!
//! Stop (the token is cancelled): no more polls; in-flight records get up to `flush_timeout`
//! to end; the destination is stopped (ending the rest); records still unended are cancelled
//! (not acknowledged, so read again after a restart); the offsets are committed, waiting for a
//! flush in progress; the source is stopped.
//!
//! **Invariants:** every record's own completion (a source's callback) ends exactly once,
//! with the record's final outcome: success once the destination took it, or its failure when
//! it is skipped, dead-lettered, stops the worker or is cancelled at stop; the worker never
//! replaces it. Offsets are committed only from the acknowledged prefix, so a committed offset
//! never passes a record that did not end with success, a skip or a dead letter.
//!
//! Metrics, labelled `connector`: `trellis_connector_records_polled_total`,
//! `trellis_connector_records_published_total` (role source) or
//! `trellis_connector_records_put_total` (role sink), `trellis_connector_records_failed_total`
//! and `trellis_connector_records_dead_lettered_total`.

pub(crate) mod metrics;
pub mod settings;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use settings::{
    ErrorPolicy, Start, Tolerance, WorkerSettings, common_config_keys, dead_letter_topic,
    event_defaults, sink_config_keys, source_config_keys, start, topic,
};
pub use status::{WorkerCounters, WorkerState, WorkerStatus};

use crate::callback::{Completion, SendCallback, SendError, SendExceptionContext, SendResult};
use crate::config::ConnectorConfig;
use crate::offsets::{
    ErrorChain, FlushOutcome, OffsetReader, OffsetStore, OffsetWriter, SubmittedRecord,
    SubmittedRecords,
};
use crate::record::ConnectRecord;
use crate::sink::{Sink, SinkContext};
use crate::source::{Source, SourceContext};

/// How often a stop checks whether the last offset flush has ended.
const FLUSH_POLL: Duration = Duration::from_millis(20);

/// Describes the worker's record metrics to the installed recorder.
pub fn describe_metrics() {
    metrics::describe();
}

/// Which metric counts the records the destination took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// A source connector: successes are `..._records_published_total`.
    #[default]
    Source,
    /// A sink connector (its source reads a topic): successes are `..._records_put_total`.
    Sink,
}

/// Why a worker stopped on its own: a failed start, or a record that failed for good under
/// `errors.tolerance = none`. The reason is worded for the connector's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct WorkerFailed {
    pub reason: String,
}

/// See the module docs.
pub struct SourceWorker {
    name: String,
    config: ConnectorConfig,
    source: Box<dyn Source>,
    destination: Box<dyn Sink>,
    destination_config: Option<ConnectorConfig>,
    dead_letters: Option<(Box<dyn Sink>, ConnectorConfig)>,
    offsets: OffsetStore,
    settings: WorkerSettings,
    role: Role,
    writer: OffsetWriter,
    status: Arc<WorkerStatus>,
}

impl SourceWorker {
    /// A worker for the connector `name`. `config` is what the source starts with; the
    /// destination starts with the same config unless [`SourceWorker::with_destination_config`]
    /// gives it its own. Neither is started before [`SourceWorker::run`].
    pub fn new(
        name: String,
        config: ConnectorConfig,
        source: Box<dyn Source>,
        destination: Box<dyn Sink>,
        offsets: OffsetStore,
        settings: WorkerSettings,
    ) -> SourceWorker {
        let writer = OffsetWriter::new(offsets.clone(), settings.flush_timeout);
        let status = Arc::new(WorkerStatus::new(writer.clone()));
        SourceWorker {
            name,
            config,
            source,
            destination,
            destination_config: None,
            dead_letters: None,
            offsets,
            settings,
            role: Role::Source,
            writer,
            status,
        }
    }

    /// The config the destination's `start` gets, when it is not the connector's own (a sink
    /// publishing into a runtime takes that runtime's URL and topic).
    pub fn with_destination_config(mut self, config: ConnectorConfig) -> SourceWorker {
        self.destination_config = Some(config);
        self
    }

    /// Where records that fail for good go under `errors.tolerance = all`, started with
    /// `config`. A dead letter is the record with the extensions `trellisconnector`,
    /// `trellisfailure` (`non_retriable` or `retries_exhausted`) and `trellisreason`.
    pub fn with_dead_letters(
        mut self,
        sink: Box<dyn Sink>,
        config: ConnectorConfig,
    ) -> SourceWorker {
        self.dead_letters = Some((sink, config));
        self
    }

    pub fn with_role(mut self, role: Role) -> SourceWorker {
        self.role = role;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's status, readable while it runs and after.
    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
    }

    /// Runs until `stop` is cancelled (then stops cleanly, see the module docs) or the error
    /// policy fails it. The status ends `Stopped` or `Failed`.
    pub async fn run(self, stop: CancellationToken) -> Result<(), WorkerFailed> {
        let status = self.status.clone();
        let name = self.name.clone();
        let outcome = self.run_inner(&stop).await;
        match &outcome {
            Ok(()) => {
                tracing::info!(connector = %name, "connector stopped");
                status.set_state(WorkerState::Stopped);
            }
            Err(failed) => {
                tracing::error!(connector = %name, reason = %failed.reason, "connector failed");
                status.set_error(failed.reason.clone());
                status.set_state(WorkerState::Failed(failed.reason.clone()));
            }
        }
        outcome
    }

    async fn run_inner(mut self, stop: &CancellationToken) -> Result<(), WorkerFailed> {
        let name = self.name.clone();
        tracing::info!(connector = %name, config = %self.config, "connector starting");
        let committed = OffsetReader::new(self.offsets.clone())
            .offsets()
            .await
            .map_err(|e| {
                fail(format!(
                    "reading the committed offsets failed: {}",
                    ErrorChain(&e)
                ))
            })?;
        self.source
            .start(SourceContext::new(&name, self.config.clone(), committed))
            .await
            .map_err(|e| fail(format!("the source did not start: {}", ErrorChain(&e))))?;
        let destination_config = self
            .destination_config
            .take()
            .unwrap_or_else(|| self.config.clone());
        if let Err(e) = self
            .destination
            .start(SinkContext::new(&name, destination_config))
            .await
        {
            stop_quietly(&name, "source", self.source.stop().await);
            return Err(fail(format!(
                "the destination did not start: {}",
                ErrorChain(&e)
            )));
        }
        let mut dead_letters = None;
        if let Some((mut sink, config)) = self.dead_letters.take() {
            if let Err(e) = sink.start(SinkContext::new(&name, config)).await {
                stop_quietly(&name, "destination", self.destination.stop().await);
                stop_quietly(&name, "source", self.source.stop().await);
                return Err(fail(format!(
                    "the dead-letter destination did not start: {}",
                    ErrorChain(&e)
                )));
            }
            dead_letters = Some(sink);
        }
        self.status.set_state(WorkerState::Running);
        let (outcomes, received) = mpsc::unbounded_channel();
        let counters = metrics::Counters::new(
            &name,
            match self.role {
                Role::Source => metrics::PUBLISHED,
                Role::Sink => metrics::PUT,
            },
        );
        let source_commits = self.source.wants_commit();
        let mut pump = Pump {
            counters,
            source_commits,
            name,
            settings: self.settings,
            source: self.source,
            destination: self.destination,
            dead_letters,
            writer: self.writer,
            status: self.status,
            submitted: SubmittedRecords::new(),
            in_flight: BTreeMap::new(),
            retry: BTreeSet::new(),
            retry_at: None,
            backoff_step: 0,
            next_key: 0,
            outcomes,
            received,
            stopping: false,
            failure: None,
            stop: stop.clone(),
        };
        pump.pump().await;
        pump.finish().await;
        match pump.failure {
            Some(reason) => Err(fail(reason)),
            None => Ok(()),
        }
    }
}

fn fail(reason: String) -> WorkerFailed {
    WorkerFailed { reason }
}

fn stop_quietly(connector: &str, what: &str, result: Result<(), crate::ConnectorError>) {
    if let Err(e) = result {
        tracing::warn!(connector, error = %ErrorChain(&e), "stopping the {what} failed");
    }
}

/// One record's outcome at the destination: its key, the attempt it ends, and the result.
type Outcome = (u64, u32, Result<(), SendError>);

/// The source's own completion of a record, shared by every attempt so that the first final
/// outcome ends it; `None` when the source attached no callback (a file source's records), which
/// spares a shared cell per record.
type Upstream = Option<Arc<Mutex<Option<Completion>>>>;

fn upstream_of(completion: Completion) -> Upstream {
    completion
        .is_armed()
        .then(|| Arc::new(Mutex::new(Some(completion))))
}

fn take_upstream(upstream: &Upstream) -> Option<Completion> {
    upstream
        .as_ref()?
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

/// The worker's callback on one attempt of one record.
struct Report {
    key: u64,
    attempt: u32,
    upstream: Upstream,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

impl SendCallback for Report {
    fn on_success(&self, result: SendResult) {
        // Ended here rather than in the loop: the HTTP source answers its request from this,
        // and the loop may be busy in a poll for up to a second.
        if let Some(upstream) = take_upstream(&self.upstream) {
            upstream.succeed(result.topic);
        }
        // A closed channel means the worker is gone: the record is simply not acknowledged.
        let _ = self.outcomes.send((self.key, self.attempt, Ok(())));
    }

    fn on_exception(&self, context: SendExceptionContext) {
        let _ = self
            .outcomes
            .send((self.key, self.attempt, Err(context.cause)));
    }
}

/// A record the destination has not ended for good yet.
struct InFlight {
    /// The content, without a callback: what a retry sends and `Source::commit` is told.
    record: ConnectRecord,
    receipt: SubmittedRecord,
    upstream: Upstream,
    attempt: u32,
    /// When it first failed in a way that may pass: its retry budget counts from there.
    first_failure: Option<Instant>,
}

/// The running loop's state.
struct Pump {
    name: String,
    settings: WorkerSettings,
    counters: metrics::Counters,
    /// Whether `Source::commit` does anything (see `Source::wants_commit`).
    source_commits: bool,
    source: Box<dyn Source>,
    destination: Box<dyn Sink>,
    dead_letters: Option<Box<dyn Sink>>,
    writer: OffsetWriter,
    status: Arc<WorkerStatus>,
    submitted: SubmittedRecords,
    in_flight: BTreeMap<u64, InFlight>,
    /// Keys of records that failed in a way that may pass and wait for their retry.
    retry: BTreeSet<u64>,
    retry_at: Option<Instant>,
    backoff_step: u32,
    next_key: u64,
    outcomes: mpsc::UnboundedSender<Outcome>,
    received: mpsc::UnboundedReceiver<Outcome>,
    stopping: bool,
    /// Set when the error policy stops the worker.
    failure: Option<String>,
    stop: CancellationToken,
}

impl Pump {
    async fn pump(&mut self) {
        let mut next_commit = Instant::now() + self.settings.commit_interval;
        let mut poll_failing_since: Option<Instant> = None;
        loop {
            self.drain_outcomes().await;
            if self.failure.is_some() || self.stop.is_cancelled() {
                return;
            }
            let now = Instant::now();
            if now >= next_commit {
                self.commit_in_background();
                next_commit = now + self.settings.commit_interval;
            }
            if self.retry_at.is_some_and(|at| at <= now) {
                self.retry().await;
                continue;
            }
            if self.retry.is_empty() && self.in_flight.len() < self.settings.max_in_flight {
                // Never raced against anything: a poll cancelled half-way could lose records
                // the source already took. A source returns within about a second.
                match self.source.poll().await {
                    Ok(batch) => {
                        poll_failing_since = None;
                        self.send_batch(batch).await;
                    }
                    Err(e) => {
                        let since = *poll_failing_since.get_or_insert_with(Instant::now);
                        let reason = format!("polling the source failed: {}", ErrorChain(&e));
                        self.status.set_error(reason.clone());
                        if since.elapsed() >= self.settings.errors.retry_timeout {
                            self.failure = Some(reason);
                            return;
                        }
                        tracing::warn!(connector = %self.name, %reason, "polling again after a pause");
                        let pause = backoff(&self.settings, self.backoff_step);
                        self.backoff_step = self.backoff_step.saturating_add(1);
                        tokio::select! {
                            () = self.stop.cancelled() => {}
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
                continue;
            }
            let wake = self.retry_at.map_or(next_commit, |at| at.min(next_commit));
            tokio::select! {
                () = self.stop.cancelled() => {}
                outcome = self.received.recv() => {
                    if let Some(outcome) = outcome {
                        self.handle(outcome).await;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn send_batch(&mut self, batch: Vec<ConnectRecord>) {
        if batch.is_empty() {
            return;
        }
        let polled = batch.len() as u64;
        self.status.add_polled(polled);
        self.counters.polled.increment(polled);
        let mut out = Vec::with_capacity(batch.len());
        for mut record in batch {
            let key = self.next_key;
            self.next_key += 1;
            let receipt = self.submitted.submit(record.position.clone());
            let upstream = upstream_of(record.take_completion());
            let content = record.clone();
            record.set_callback(Arc::new(Report {
                key,
                attempt: 0,
                upstream: upstream.clone(),
                outcomes: self.outcomes.clone(),
            }));
            self.in_flight.insert(
                key,
                InFlight {
                    record: content,
                    receipt,
                    upstream,
                    attempt: 0,
                    first_failure: None,
                },
            );
            out.push(record);
        }
        self.put(out).await;
    }

    /// Hands records to the destination. A failed `put` drops the records it did not end,
    /// which reports them `Dropped`, so they come back through the retry path.
    async fn put(&mut self, records: Vec<ConnectRecord>) {
        if let Err(e) = self.destination.put(records).await {
            let reason = format!("the destination failed: {}", ErrorChain(&e));
            tracing::warn!(connector = %self.name, %reason, "put failed; its records are retried");
            self.status.set_error(reason);
        }
    }

    async fn drain_outcomes(&mut self) {
        while let Ok(outcome) = self.received.try_recv() {
            self.handle(outcome).await;
        }
    }

    async fn handle(&mut self, (key, attempt, result): Outcome) {
        // A stale attempt (it ended after a later one was sent) changes nothing.
        if self
            .in_flight
            .get(&key)
            .is_none_or(|entry| entry.attempt != attempt)
        {
            return;
        }
        match result {
            Ok(()) => {
                let Some(entry) = self.in_flight.remove(&key) else {
                    return;
                };
                self.submitted.ack(&entry.receipt);
                self.status.add_published();
                self.counters.succeeded.increment(1);
                if self.source_commits
                    && let Err(e) = self.source.commit(&entry.record).await
                {
                    tracing::warn!(connector = %self.name, error = %ErrorChain(&e), "the source's commit failed");
                }
                if self.retry.is_empty() {
                    self.backoff_step = 0;
                    if matches!(self.status.state(), WorkerState::Waiting(_)) {
                        self.status.set_state(WorkerState::Running);
                    }
                }
            }
            Err(cause) => {
                let retry_timeout = self.settings.errors.retry_timeout;
                let Some(entry) = self.in_flight.get_mut(&key) else {
                    return;
                };
                let first = *entry.first_failure.get_or_insert_with(Instant::now);
                if !cause.is_final() && (self.stopping || first.elapsed() < retry_timeout) {
                    // While stopping nothing is retried: the record stays unacknowledged and
                    // is cancelled with the rest.
                    self.retry.insert(key);
                    if !self.stopping && self.retry_at.is_none() {
                        self.retry_at =
                            Some(Instant::now() + backoff(&self.settings, self.backoff_step));
                        self.backoff_step = self.backoff_step.saturating_add(1);
                        self.status
                            .set_state(WorkerState::Waiting(format!("retrying records: {cause}")));
                    }
                    return;
                }
                let exhausted = !cause.is_final();
                self.fail_for_good(key, cause, exhausted).await;
            }
        }
    }

    async fn retry(&mut self) {
        self.retry_at = None;
        let keys = std::mem::take(&mut self.retry);
        let mut batch = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(entry) = self.in_flight.get_mut(&key) else {
                continue;
            };
            entry.attempt += 1;
            let record = entry.record.clone().with_callback(Arc::new(Report {
                key,
                attempt: entry.attempt,
                upstream: entry.upstream.clone(),
                outcomes: self.outcomes.clone(),
            }));
            batch.push(record);
        }
        if batch.is_empty() {
            return;
        }
        self.status.add_retried(batch.len() as u64);
        tracing::debug!(connector = %self.name, records = batch.len(), "retrying records");
        self.put(batch).await;
    }

    /// Applies the error policy to a record that failed for good.
    async fn fail_for_good(&mut self, key: u64, cause: SendError, exhausted: bool) {
        let Some(entry) = self.in_flight.remove(&key) else {
            return;
        };
        let id = entry.record.id.clone();
        let why = if exhausted {
            format!(
                "{cause} (retried for {} ms)",
                millis(self.settings.errors.retry_timeout)
            )
        } else {
            cause.to_string()
        };
        self.status.add_failed();
        self.counters.failed.increment(1);
        self.status.set_error(format!(
            "record {id} at {:?} failed: {why}",
            entry.record.position
        ));
        match self.settings.errors.tolerance {
            Tolerance::None => {
                // Not acknowledged: the committed offset stays before it, so a new worker
                // sends it again.
                self.failure = Some(format!(
                    "record {id} (partition {}, offset {}) failed for good: {why}",
                    entry.record.position.partition, entry.record.position.offset
                ));
                if let Some(upstream) = take_upstream(&entry.upstream) {
                    upstream.fail(None, cause);
                }
            }
            Tolerance::All => {
                if self.dead_letters.is_some() {
                    match self.dead_letter(&entry.record, &why, exhausted).await {
                        Ok(()) => {
                            self.status.add_dead_lettered();
                            self.counters.dead_lettered.increment(1);
                        }
                        Err(problem) => {
                            // Left unacknowledged: sent again after a restart.
                            if let Some(upstream) = take_upstream(&entry.upstream) {
                                upstream.fail(None, cause);
                            }
                            if let Some(reason) = problem {
                                self.failure = Some(reason);
                            }
                            return;
                        }
                    }
                } else {
                    tracing::warn!(
                        connector = %self.name,
                        record = %id,
                        partition = %entry.record.position.partition,
                        offset = entry.record.position.offset.0,
                        reason = %why,
                        "skipping a record that failed for good (errors.tolerance = all)"
                    );
                    self.status.add_skipped();
                }
                self.submitted.ack(&entry.receipt);
                if let Some(upstream) = take_upstream(&entry.upstream) {
                    upstream.fail(None, cause);
                }
                if self.retry.is_empty() && matches!(self.status.state(), WorkerState::Waiting(_)) {
                    self.status.set_state(WorkerState::Running);
                }
            }
        }
    }

    /// Writes `record` to the dead-letter destination, trying again with backoff until it is
    /// taken. `Err(None)`: the worker is stopping; `Err(Some(reason))`: the destination
    /// refused it for good, which stops the worker rather than lose the record.
    async fn dead_letter(
        &mut self,
        record: &ConnectRecord,
        why: &str,
        exhausted: bool,
    ) -> Result<(), Option<String>> {
        let letter = record
            .clone()
            .with_extension("trellisconnector", self.name.clone())
            .with_extension(
                "trellisfailure",
                if exhausted {
                    "retries_exhausted"
                } else {
                    "non_retriable"
                },
            )
            .with_extension("trellisreason", why.chars().take(1024).collect::<String>());
        let mut step = 0;
        loop {
            let Some(sink) = self.dead_letters.as_mut() else {
                return Err(None);
            };
            let (tell, told) = oneshot::channel();
            let reply = Arc::new(OneShot(Mutex::new(Some(tell))));
            let put = sink.put(vec![letter.clone().with_callback(reply)]).await;
            let result = tokio::select! {
                () = self.stop.cancelled() => return Err(None),
                result = told => result.unwrap_or(Err(SendError::Dropped)),
            };
            match (put, result) {
                (_, Ok(())) => return Ok(()),
                (_, Err(cause)) if cause.is_final() => {
                    return Err(Some(format!(
                        "the dead-letter destination refused record {}: {cause}",
                        record.id
                    )));
                }
                (put, Err(cause)) => {
                    let problem = put
                        .err()
                        .map_or(cause.to_string(), |e| ErrorChain(&e).to_string());
                    tracing::warn!(connector = %self.name, record = %record.id, %problem, "writing a dead letter failed; trying again");
                }
            }
            let pause = backoff(&self.settings, step);
            step = step.saturating_add(1);
            tokio::select! {
                () = self.stop.cancelled() => return Err(None),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Stages the acknowledged prefix and starts a flush without waiting for it. A flush still
    /// running is refused by the writer with a warning, and these offsets go with the next.
    fn commit_in_background(&self) {
        self.writer.write_offsets(self.submitted.take_committable());
        if self.writer.begin_flush()
            && let Some(pending) = self.writer.do_flush()
        {
            // Awaited apart, so a slow flush never holds up the pump; the writer warns of a
            // failure itself.
            let name = self.name.clone();
            tokio::spawn(async move {
                let outcome = pending.await;
                tracing::debug!(connector = %name, ?outcome, "offset flush ended");
            });
        }
    }

    async fn finish(&mut self) {
        self.stopping = true;
        self.retry_at = None;
        let deadline = Instant::now() + self.settings.flush_timeout;
        while self.in_flight.len() > self.retry.len() {
            tokio::select! {
                outcome = self.received.recv() => match outcome {
                    Some(outcome) => self.handle(outcome).await,
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        stop_quietly(&self.name, "destination", self.destination.stop().await);
        self.drain_outcomes().await;
        let cancelled = self.in_flight.len();
        for (_, entry) in std::mem::take(&mut self.in_flight) {
            if let Some(upstream) = take_upstream(&entry.upstream) {
                upstream.fail(None, SendError::Cancelled);
            }
        }
        if cancelled > 0 {
            tracing::info!(
                connector = %self.name,
                cancelled,
                "records still in flight at stop are not committed and will be sent again"
            );
        }
        self.final_commit().await;
        if let Some(mut sink) = self.dead_letters.take() {
            stop_quietly(&self.name, "dead-letter destination", sink.stop().await);
        }
        stop_quietly(&self.name, "source", self.source.stop().await);
    }

    /// Commits what is acknowledged, waiting for a flush still in progress first.
    async fn final_commit(&mut self) {
        self.writer.write_offsets(self.submitted.take_committable());
        let deadline = Instant::now() + self.settings.flush_timeout * 2;
        loop {
            while self.writer.is_flushing() && Instant::now() < deadline {
                tokio::time::sleep(FLUSH_POLL).await;
            }
            match self.writer.commit().await {
                FlushOutcome::Committed { .. } | FlushOutcome::NothingStaged => return,
                outcome => {
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            connector = %self.name,
                            ?outcome,
                            "offsets could not be committed at stop; records after the last commit will be sent again"
                        );
                        return;
                    }
                    tokio::time::sleep(FLUSH_POLL).await;
                }
            }
        }
    }
}

/// The callback of one dead letter.
struct OneShot(Mutex<Option<oneshot::Sender<Result<(), SendError>>>>);

impl OneShot {
    fn tell(&self, result: Result<(), SendError>) {
        if let Some(tell) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = tell.send(result);
        }
    }
}

impl SendCallback for OneShot {
    fn on_success(&self, _result: SendResult) {
        self.tell(Ok(()));
    }
    fn on_exception(&self, context: SendExceptionContext) {
        self.tell(Err(context.cause));
    }
}

/// Full jitter: a wait drawn from zero to `base` doubled `step` times, at most `cap`.
fn backoff(settings: &WorkerSettings, step: u32) -> Duration {
    let ceiling = settings
        .retry_backoff
        .saturating_mul(1u32 << step.min(16))
        .min(settings.retry_backoff_max);
    let ceiling_ms = millis(ceiling);
    Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_doubling_ceiling_and_the_cap() {
        let settings = WorkerSettings::default();
        for step in 0..40 {
            let ceiling = (100u64 << step.min(16)).min(5000);
            for _ in 0..20 {
                assert!(millis(backoff(&settings, step)) <= ceiling);
            }
        }
    }
}
