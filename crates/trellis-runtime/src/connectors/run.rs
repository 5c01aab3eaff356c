//! One run of one connector: from its start to a stop (pause, restart, delete, shutdown) or a
//! failure under `errors.tolerance: none`. A source runs as `trellis-connect`'s source worker
//! publishing through the publish core; a sink runs on the subscription dispatcher, through the
//! delivery engine (`http-sink`) or a sink task (the other plugins).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use trellis_cloudevents::EventLimits;
use trellis_cluster::{Cluster, Fence, Placement};
use trellis_connect::worker::{SourceWorker, Tolerance, WorkerSettings, WorkerStatus, settings};
use trellis_connect::{OffsetGuard, OffsetStore, SinkContext};
use trellis_connectors::plugins::{self, Kind};
use trellis_delivery::config::BatchSpec;
use trellis_delivery::engine::Engine;
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::tls::WebhookTls;
use trellis_meta::MetadataStore;

use super::publish_sink::PublishSink;
use super::sink_deliver::{SinkCounters, SinkDeliver, SinkTask};
use super::spec::ConnectorSpec;
use crate::error::error_chain;
use crate::ownership::{FenceGate, TermEnd, while_owned};
use crate::publisher::Publisher;
use crate::subscriptions::{
    DeadLetterTarget, DispatcherStats, Lifecycle, OnFailure, Start, Supervisor, ToDispatcher,
};
use crate::topics::TopicRegistry;

/// Records a sink connector may have read and not ended; reading waits beyond it.
const SINK_MAX_IN_FLIGHT: usize = 1024;
/// A sink's committed topic offset is stored this often (and at every stop) unless
/// `offsets.commit.interval.ms` says otherwise, as a subscription's is, so a crash repeats at
/// most this much delivered work. A source's default is longer: its re-read records are
/// duplicates the publish core drops, a sink's are deliveries made twice.
const SINK_COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Batches queued for a sink task beyond the one it is putting.
const SINK_QUEUE: usize = 2;
/// How a sink connector's dispatcher groups records for one `put`.
const SINK_BATCH: BatchSpec = BatchSpec {
    max_events: 500,
    max_wait_ms: 20,
};

/// What a run needs from the runtime.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) meta: Arc<dyn MetadataStore>,
    pub(crate) topics: TopicRegistry,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) guard: Arc<AddressGuard>,
    pub(crate) tls: WebhookTls,
    pub(crate) limits: EventLimits,
    pub(crate) max_event_bytes: usize,
    pub(crate) cluster: Cluster,
}

/// What the status shows of a term of a run while it lasts.
#[derive(Clone)]
pub(crate) enum Progress {
    Source(Arc<WorkerStatus>),
    Sink {
        stats: Arc<DispatcherStats>,
        lifecycle: Arc<Lifecycle>,
        counters: Arc<SinkCounters>,
        /// The `http-sink`'s engine, whose figures stand for the counters.
        engine: Option<Engine>,
        last_error: Arc<std::sync::Mutex<Option<String>>>,
    },
}

/// A connector that is not paused: every replica has a run of it, and the one that owns it
/// runs terms of it (a source worker or a sink dispatcher) while it owns it.
pub(crate) struct Run {
    pub(crate) stop: CancellationToken,
    pub(crate) done: tokio::task::JoinHandle<()>,
    /// The current term's progress here; `None` while no term runs on this replica.
    progress: Arc<std::sync::Mutex<Option<Progress>>>,
    /// The replica that owns the connector now, if any.
    pub(crate) owner: watch::Receiver<Option<String>>,
}

impl Run {
    pub(crate) fn progress(&self) -> Option<Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A run that ended by itself, told to the registry so it pauses the connector.
pub(crate) struct Failed {
    pub(crate) name: String,
    pub(crate) generation: u64,
    pub(crate) reason: String,
}

/// Where and as what a run reports its failure: the registry pauses the connector with the
/// reason stored, which is all the status shows of it.
#[derive(Clone)]
pub(crate) struct Report {
    pub(crate) failures: mpsc::UnboundedSender<Failed>,
    pub(crate) name: String,
    pub(crate) generation: u64,
}

impl Report {
    pub(crate) fn failed(&self, reason: String) {
        tracing::error!(message = "The connector failed; it is paused until it is resumed or restarted.", connector = %self.name, reason = %reason);
        let _ = self.failures.send(Failed {
            name: self.name.clone(),
            generation: self.generation,
            reason,
        });
    }
}

/// The connector's name among the cluster's units of work.
pub(crate) fn unit_name(name: &str) -> String {
    format!("connector/{name}")
}

/// The metadata key of a sink connector's committed topic offset.
pub(crate) fn topic_offset_key(name: &str) -> String {
    format!("/connectors/{name}/topic-offset")
}

/// Starts a run; a failure that ends it goes to `ended`.
pub(crate) fn start(
    env: &Env,
    spec: &ConnectorSpec,
    ended: &Report,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Run, String> {
    // Checked here, so a bad config fails at once on every replica, owner or not.
    let settings = WorkerSettings::from_config(&spec.config).map_err(|error| error.to_string())?;
    let stop = CancellationToken::new();
    let unit = env
        .cluster
        .unit(&unit_name(&spec.name), Placement::Balanced);
    let owner = unit.owner();
    let progress = Arc::new(std::sync::Mutex::new(None));
    let slot = Arc::clone(&progress);
    let (env, spec, ended) = (env.clone(), spec.clone(), ended.clone());
    let terms = while_owned(unit, stop.clone(), move |fence, stop| {
        let (env, spec, settings, slot) = (env.clone(), spec.clone(), settings, Arc::clone(&slot));
        async move {
            let term = match spec.plugin.kind {
                Kind::Source => start_source(&env, &spec, settings, fence, stop),
                Kind::Sink => start_sink(&env, &spec, &settings, fence, stop),
            };
            let (progress, done) = match term {
                Ok(term) => term,
                Err(reason) => return TermEnd::Failed(reason),
            };
            set(&slot, Some(progress));
            let failed = done.await.unwrap_or_else(|error| {
                Some(format!("the connector's task ended abnormally: {error}"))
            });
            set(&slot, None);
            match failed {
                Some(reason) => TermEnd::Failed(reason),
                None => TermEnd::Stopped,
            }
        }
    });
    let done = tasks.spawn(async move {
        if let Some(reason) = terms.await {
            ended.failed(reason);
        }
    });
    Ok(Run {
        stop,
        done,
        progress,
        owner,
    })
}

fn set(slot: &std::sync::Mutex<Option<Progress>>, progress: Option<Progress>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = progress;
}

/// One term's work and how it ended (`Some` with why, if it failed).
type Term = (Progress, tokio::task::JoinHandle<Option<String>>);

/// A connector's offsets are written only through its owner's fence.
struct FencedOffsets(Fence);

impl OffsetGuard for FencedOffsets {
    fn holds(&self) -> bool {
        self.0.holds()
    }

    fn guard(&self, put: trellis_meta::GuardedPut) -> trellis_meta::GuardedPut {
        self.0.guard(put)
    }
}

fn start_source(
    env: &Env,
    spec: &ConnectorSpec,
    settings: WorkerSettings,
    fence: Fence,
    stop: CancellationToken,
) -> Result<Term, String> {
    let source = plugins::new_source(spec.plugin.class)
        .ok_or_else(|| format!("plugin {:?} is not a source", spec.plugin.class))?;
    let defaults =
        settings::event_defaults(&spec.name, &spec.config).map_err(|error| error.to_string())?;
    let destination = PublishSink::new(
        Arc::clone(&env.publisher),
        spec.topic().to_owned(),
        defaults,
        env.limits,
        env.max_event_bytes,
    );
    let worker = SourceWorker::new(
        spec.name.clone(),
        spec.config.clone(),
        source,
        Box::new(destination),
        OffsetStore::new(Arc::clone(&env.meta), spec.name.clone())
            .guarded(Arc::new(FencedOffsets(fence))),
        settings,
    );
    let status = worker.status();
    let done =
        tokio::spawn(async move { worker.run(stop).await.err().map(|failed| failed.reason) });
    Ok((Progress::Source(status), done))
}

fn start_sink(
    env: &Env,
    spec: &ConnectorSpec,
    settings: &WorkerSettings,
    fence: Fence,
    stop: CancellationToken,
) -> Result<Term, String> {
    // Names of subscriptions cannot hold ':', so no connector's dead letters, logs or
    // series can be taken for a subscription's.
    let label = format!("connector:{}", spec.name);
    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let counters = Arc::new(SinkCounters::default());
    let last_error = Arc::new(std::sync::Mutex::new(None));
    let stats = Arc::new(DispatcherStats {
        commit_metrics: Some(super::metrics::commit_metrics(&spec.name)),
        ..DispatcherStats::default()
    });
    let lifecycle = Arc::new(Lifecycle::new(&label));
    let on_failure = match settings.errors.tolerance {
        Tolerance::None => OnFailure::Stop,
        Tolerance::All => OnFailure::DeadLetter,
    };
    let (target, batch, engine, sink_task): (Arc<dyn crate::subscriptions::Deliver>, _, _, _) =
        match &spec.http {
            Some(http) => {
                let engine = Engine::new(
                    &label,
                    &http.sink,
                    &http.delivery,
                    Arc::clone(&env.guard),
                    env.tls.clone(),
                    Arc::new(super::metrics::Counted::new(
                        &spec.name,
                        Arc::new(ToDispatcher(outcomes_tx)),
                    )),
                )
                .map_err(|error| error.to_string())?;
                engine.set_gate(FenceGate::of(&fence));
                (
                    Arc::new(engine.clone()),
                    http.delivery.batch.clone(),
                    Some(engine),
                    None,
                )
            }
            None => {
                let sink = plugins::new_sink(spec.plugin.class)
                    .ok_or_else(|| format!("plugin {:?} is not a sink", spec.plugin.class))?;
                let (batches_tx, batches) = mpsc::channel(SINK_QUEUE);
                let task = SinkTask {
                    label: label.clone(),
                    connector: spec.name.clone(),
                    sink,
                    batches,
                    outcomes: outcomes_tx,
                    retry_timeout: settings.errors.retry_timeout,
                    counters: Arc::clone(&counters),
                    last_error: Arc::clone(&last_error),
                    gate: FenceGate::of(&fence),
                };
                (
                    Arc::new(SinkDeliver {
                        batches: batches_tx,
                    }),
                    Some(SINK_BATCH),
                    None,
                    Some(task),
                )
            }
        };
    let start = match settings::start(&spec.config).map_err(|error| error.to_string())? {
        settings::Start::Earliest => Start::Earliest,
        settings::Start::Latest => Start::Latest,
    };
    let dead_letter_topic =
        settings::dead_letter_topic(&spec.name, &spec.config).map_err(|error| error.to_string())?;
    let (paused_tx, paused) = watch::channel(false);
    let (_batch_tx, batch) = watch::channel(batch);
    let mut supervisor = Supervisor {
        name: label,
        topic_name: spec.topic().to_owned(),
        start,
        topics: env.topics.clone(),
        dead_letter: DeadLetterTarget {
            topic_name: dead_letter_topic,
            topics: env.topics.clone(),
        },
        meta: Arc::clone(&env.meta),
        offset_key: topic_offset_key(&spec.name),
        target,
        on_failure,
        outcomes: Some(outcomes),
        max_in_flight: SINK_MAX_IN_FLIGHT,
        commit_interval: if spec.config.get("offsets.commit.interval.ms").is_some() {
            settings.commit_interval
        } else {
            SINK_COMMIT_INTERVAL
        },
        paused,
        batch,
        stats: Arc::clone(&stats),
        lifecycle: Arc::clone(&lifecycle),
    };
    let name = spec.name.clone();
    let config = spec.config.clone();
    let done = tokio::spawn(async move {
        // Kept alive for the run: a dropped sender reads as a resume.
        let _paused = paused_tx;
        let sink_stop = CancellationToken::new();
        let sink_done = match sink_task {
            Some(mut task) => {
                if let Err(error) = task
                    .sink
                    .start(SinkContext::new(name.clone(), config))
                    .await
                {
                    return Some(format!("the sink did not start: {}", error_chain(&error)));
                }
                Some(tokio::spawn(task.run(sink_stop.clone())))
            }
            None => None,
        };
        let failed = supervisor.run(fence, stop).await;
        sink_stop.cancel();
        if let Some(sink_done) = sink_done {
            let _ = sink_done.await;
        }
        failed
    });
    Ok((
        Progress::Sink {
            stats,
            lifecycle,
            counters,
            engine,
            last_error,
        },
        done,
    ))
}
