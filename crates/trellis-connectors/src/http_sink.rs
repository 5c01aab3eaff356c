//! The HTTP sink on the delivery engine, as a [`Sink`]: for a standalone `http-sink`. Inside
//! `trellis serve` the runtime runs `http-sink` on its own dispatcher and engine instead.
//!
//! Config keys: `sink` and `delivery`, objects with exactly the shape of a subscription's (so
//! URLs, strategy, mode, headers, signing secret, retries, backoff, circuit breaker and
//! concurrency all work as for a webhook subscription). Each record becomes the CloudEvent it
//! was read as (its position extensions left out) and is delivered by the engine, which retries
//! by the `delivery` settings; the record ends from the engine's callback: success once
//! delivered, [`SendError::Delivery`] (final) when the engine gave up, [`SendError::Cancelled`]
//! when the sink stopped first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::task::TaskTracker;
use trellis_connect::cloudevents::{
    EventDefaults, OFFSET_EXTENSION, PARTITION_EXTENSION, to_cloud_event,
};
use trellis_connect::worker::event_defaults;
use trellis_connect::{
    Completion, ConfigError, ConnectRecord, ConnectorConfig, ConnectorError, SendError, Sink,
    SinkContext,
};
use trellis_delivery::config::{DeliverySpec, SinkSpec, SpecError};
use trellis_delivery::engine::{Engine, Record};
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::report::{DeliveryCallbacks, DeliveryFailure, DeliveryReport, FailureClass};
use trellis_delivery::tls::WebhookTls;

/// How long `stop` lets deliveries in flight finish before cancelling them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// See the module docs.
pub struct HttpSink {
    guard: Arc<AddressGuard>,
    tls: WebhookTls,
    state: Option<Started>,
}

struct Started {
    engine: Engine,
    pending: Arc<Pending>,
    tasks: TaskTracker,
    running: Vec<tokio::task::AbortHandle>,
    topic: String,
    defaults: EventDefaults,
    next: u64,
}

/// The completions of records in delivery, by the key each was handed to the engine under.
#[derive(Default)]
struct Pending(Mutex<HashMap<u64, Completion>>);

impl Pending {
    fn take(&self, key: u64) -> Option<Completion> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
    }
}

impl DeliveryCallbacks for Pending {
    fn on_success(&self, report: DeliveryReport) {
        if let Some(completion) = self.take(report.context.offset) {
            completion.succeed(Some(report.context.topic));
        }
    }

    fn on_exception(&self, failure: DeliveryFailure) {
        if let Some(completion) = self.take(failure.context.offset) {
            let cause = match failure.class {
                FailureClass::Cancelled => SendError::Cancelled,
                class => SendError::Delivery(format!("{}: {}", class.as_str(), failure.reason)),
            };
            completion.fail(Some(failure.context.topic), cause);
        }
    }
}

impl HttpSink {
    /// A sink that refuses the addresses `guard` denies and trusts the roots of `tls`.
    pub fn new(guard: Arc<AddressGuard>, tls: WebhookTls) -> HttpSink {
        HttpSink {
            guard,
            tls,
            state: None,
        }
    }
}

/// The `sink` and `delivery` objects, parsed and checked as a subscription's.
pub fn specs(config: &ConnectorConfig) -> Result<(SinkSpec, DeliverySpec), ConfigError> {
    let spec_error = |key: &str, error: SpecError| {
        ConfigError::new(key, format!("valid: {}: {}", error.field, error.message))
    };
    let sink = config
        .get("sink")
        .filter(|value| !value.is_null())
        .ok_or_else(|| ConfigError::new("sink", "a sink object").found("nothing"))?;
    let sink = SinkSpec::from_json(sink, "sink").map_err(|e| spec_error("sink", e))?;
    let delivery = match config.get("delivery").filter(|value| !value.is_null()) {
        Some(value) => {
            DeliverySpec::from_json(value, "delivery").map_err(|e| spec_error("delivery", e))?
        }
        None => DeliverySpec::default(),
    };
    Ok((sink, delivery))
}

#[async_trait]
impl Sink for HttpSink {
    async fn start(&mut self, context: SinkContext) -> Result<(), ConnectorError> {
        let config = &context.config;
        let (sink, delivery) = specs(config)?;
        let topic = trellis_connect::worker::topic(config)?.to_owned();
        let pending = Arc::new(Pending::default());
        let engine = Engine::new(
            &context.name,
            &sink,
            &delivery,
            self.guard.clone(),
            self.tls.clone(),
            pending.clone(),
        )
        .map_err(|e| ConnectorError::from(ConfigError::new("sink", format!("valid: {e}"))))?;
        self.state = Some(Started {
            engine,
            pending,
            tasks: TaskTracker::new(),
            running: Vec::new(),
            topic,
            defaults: event_defaults(&context.name, config)?,
            next: 0,
        });
        Ok(())
    }

    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
        let Some(state) = self.state.as_mut() else {
            return Err(ConnectorError::failed("put before start"));
        };
        state.running.retain(|task| !task.is_finished());
        for record in records {
            let (content, completion) = record.into_parts();
            let mut event = match to_cloud_event(&content, &state.defaults) {
                Ok(event) => event,
                Err(e) => {
                    completion.fail(
                        Some(state.topic.clone()),
                        SendError::Rejected(e.to_string()),
                    );
                    continue;
                }
            };
            // Where the record was read is the worker's business, not the receiver's.
            event.extensions.remove(PARTITION_EXTENSION);
            event.extensions.remove(OFFSET_EXTENSION);
            let key = state.next;
            state.next += 1;
            state
                .pending
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, completion);
            let engine = state.engine.clone();
            let record = Record {
                topic: state.topic.clone(),
                offset: key,
                event,
            };
            let task = state
                .tasks
                .spawn(async move { engine.deliver(record).await });
            state.running.push(task.abort_handle());
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        let Some(state) = self.state.take() else {
            return Ok(());
        };
        state.tasks.close();
        if tokio::time::timeout(STOP_GRACE, state.tasks.wait())
            .await
            .is_err()
        {
            // A delivery dropped mid-way reports itself cancelled.
            for task in &state.running {
                task.abort();
            }
            state.tasks.wait().await;
        }
        // Anything still pending reports `Dropped` as its completion goes.
        drop(state);
        Ok(())
    }
}
