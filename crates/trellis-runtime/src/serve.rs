//! Running the runtime: serve HTTP (and gRPC) over the event store it is handed until the
//! shutdown signal, then drain in-flight requests, stop background work and close the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_meta::MetadataStore;
use trellis_storage::{EventStore, StorageError};

use crate::config::RuntimeConfig;
use crate::connectors::ConnectorRegistry;
use crate::error::error_chain;
use crate::grpc::{GroupRegistry, GrpcService};
use crate::http::{AppState, router};
use crate::net::{Listener, ListenerHandle};
use crate::publisher::Publisher;
use crate::subscriptions::SubscriptionRegistry;
use crate::topics::TopicRegistry;
use trellis_delivery::guard::AddressGuard;
use trellis_delivery::tls::WebhookTls;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("loading topic settings failed: {0}")]
    Topics(String),
    #[error("starting subscriptions failed: {0}")]
    Subscriptions(String),
    #[error("setting up TLS for webhooks failed")]
    Tls(#[from] trellis_delivery::tls::TlsError),
    #[error("the gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    #[error("closing the event store at shutdown failed")]
    Flush(#[source] StorageError),
    #[error("joining the cluster failed")]
    Cluster(#[source] trellis_cluster::ClusterError),
}

/// Serves the HTTP API on `listener` until `shutdown` is cancelled. On shutdown it stops
/// accepting, lets in-flight requests finish, stops background tasks and closes the event store
/// (which makes what it acknowledged durable).
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn EventStore>,
    meta: Arc<dyn MetadataStore>,
    config: RuntimeConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    serve_with_grpc(listener, None, store, meta, config, shutdown).await
}

/// [`serve`], and the gRPC API on `grpc` when given. Both stop on the same `shutdown`: gRPC
/// streams end with UNAVAILABLE, consumer groups store their committed offsets, then the store
/// closes.
pub async fn serve_with_grpc(
    listener: TcpListener,
    grpc: Option<TcpListener>,
    store: Arc<dyn EventStore>,
    meta: Arc<dyn MetadataStore>,
    config: RuntimeConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let cluster = join_cluster(&meta, &config, &listener, grpc.as_ref()).await?;
    let topics = TopicRegistry::open(
        Arc::clone(&store),
        Arc::clone(&meta),
        config.default_topic.clone(),
        config.auto_create_topics,
        config.max_topics,
    )
    .await
    .map_err(|error| ServeError::Topics(error.message))?;
    let subscriptions = Arc::new(
        SubscriptionRegistry::open(
            Arc::clone(&meta),
            cluster.clone(),
            topics.clone(),
            Arc::new(AddressGuard::new(config.webhook_deny.clone())),
            match &config.webhook_tls {
                Some(tls) => tls.clone(),
                None => WebhookTls::new(None)?,
            },
            config.webhook_origin.clone(),
        )
        .await
        .map_err(|error| ServeError::Subscriptions(error.message))?,
    );
    let metrics = crate::metrics::handle();
    // Each module describes its own metrics, so that `metrics` depends on none of them.
    crate::grpc::describe_metrics();
    crate::net::describe_metrics();
    crate::subscriptions::describe_metrics();
    crate::connectors::describe_metrics();
    trellis_cluster::describe_metrics();
    let shutting_down = Arc::new(AtomicBool::new(false));
    let publish_metrics = crate::metrics::PublishMetrics::new();
    let publisher = Arc::new(Publisher::new(topics.clone(), publish_metrics.clone()));
    let connectors = Arc::new(
        ConnectorRegistry::open(crate::connectors::Env {
            meta: Arc::clone(&meta),
            topics: topics.clone(),
            publisher: Arc::clone(&publisher),
            guard: Arc::new(AddressGuard::new(config.webhook_deny.clone())),
            tls: match &config.webhook_tls {
                Some(tls) => tls.clone(),
                None => WebhookTls::new(None)?,
            },
            limits: config.event_limits(),
            max_event_bytes: config.max_event_bytes,
            cluster: cluster.clone(),
        })
        .await
        .map_err(|error| ServeError::Subscriptions(error.message))?,
    );
    let groups = Arc::new(GroupRegistry::new(
        Arc::clone(&meta),
        cluster.clone(),
        shutdown.child_token(),
    ));
    let grpc_service = Arc::new(GrpcService {
        config: Arc::new(config.clone()),
        publisher: Arc::clone(&publisher),
        topics: topics.clone(),
        groups: Arc::clone(&groups),
        publish_metrics: publish_metrics.clone(),
        shutting_down: shutting_down.clone(),
        shutdown: shutdown.child_token(),
    });
    let state = AppState {
        config: Arc::new(config.clone()),
        topics,
        metrics: metrics.clone(),
        shutting_down: shutting_down.clone(),
        publish_metrics,
        subscriptions: Arc::clone(&subscriptions),
        publisher: Arc::clone(&publisher),
        groups: Arc::clone(&groups),
        connectors: Arc::clone(&connectors),
        cluster: cluster.clone(),
    };

    let tasks = TaskTracker::new();
    tasks.spawn(retention_loop(
        Arc::clone(&store),
        config.retention_check_interval,
        shutdown.child_token(),
    ));
    tasks.spawn(metrics_upkeep(metrics, shutdown.child_token()));
    tasks.spawn(crate::cluster_load::report(
        cluster.clone(),
        Arc::clone(&subscriptions),
        state.publish_metrics.clone(),
        shutdown.child_token(),
    ));
    // What other replicas change reaches this one's registries (and this one's own changes
    // come back, finding nothing to do). Stopped with `shutdown`, before the registries stop.
    let topics = state.topics.clone();
    follow_in(
        &tasks,
        &meta,
        &shutdown,
        TopicRegistry::PREFIX,
        topics.loaded_at(),
        move |change| {
            let topics = topics.clone();
            Box::pin(async move { topics.apply(change).await })
        },
    );
    let registry = Arc::clone(&subscriptions);
    follow_in(
        &tasks,
        &meta,
        &shutdown,
        SubscriptionRegistry::PREFIX,
        registry.loaded_at(),
        move |change| {
            let registry = Arc::clone(&registry);
            Box::pin(async move { registry.apply(change).await })
        },
    );
    let registry = Arc::clone(&connectors);
    follow_in(
        &tasks,
        &meta,
        &shutdown,
        ConnectorRegistry::PREFIX,
        registry.loaded_at(),
        move |change| {
            let registry = Arc::clone(&registry);
            Box::pin(async move { registry.apply(change).await })
        },
    );

    let app = router(state);
    let http_listener = Listener::new(listener, "http", config.http_connections.clone(), true);
    let grpc_listener = grpc
        .map(|listener| Listener::new(listener, "grpc", config.grpc_connections.clone(), false));
    let listeners: Vec<ListenerHandle> = std::iter::once(http_listener.handle())
        .chain(grpc_listener.as_ref().map(Listener::handle))
        .collect();
    let http = async {
        tokio::join!(
            crate::net::http_server::serve(http_listener, app, shutdown.clone()),
            async {
                shutdown.cancelled().await;
                shutting_down.store(true, Ordering::Relaxed);
                tracing::info!(message = "Shutting down: finishing in-flight requests.");
            }
        );
    };
    let grpc = async {
        match grpc_listener {
            Some(listener) => crate::grpc::serve(listener, grpc_service, shutdown.clone())
                .await
                .map_err(ServeError::Grpc),
            None => Ok(()),
        }
    };
    let drained = crate::net::drain::bounded(
        async { tokio::join!(http, grpc) },
        &shutdown,
        config.shutdown_timeout,
        &listeners,
        || subscriptions.running() + connectors.running(),
    )
    .await;
    shutdown.cancel();
    // Groups store their committed offsets before the log closes. Dispatchers store theirs and
    // may still write dead letters: stop them before the log closes. Both are bounded by what
    // is left of the shutdown timeout (at least a second), so a stuck one cannot keep the log
    // from being flushed.
    let stopping = async {
        groups.shutdown().await;
        // Source connectors publish until they stop: before the dispatchers and the store.
        connectors.shutdown().await;
        subscriptions.shutdown().await;
        tasks.close();
        tasks.wait().await;
    };
    let left = drained
        .deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1));
    if tokio::time::timeout(left, stopping).await.is_err() {
        tracing::warn!(
            message = "Subscriptions and consumer groups did not stop in time; flushing the log without them."
        );
    }
    // Every term has ended and released its unit: now the lease goes, and with it this
    // replica's member key, so the others take what is left at once instead of after the TTL.
    cluster.leave().await;
    let closed = store.close().await;
    if let Some(((), served_grpc)) = drained.output {
        served_grpc?;
    }
    closed.map_err(ServeError::Flush)?;
    tracing::info!(message = "Stopped; the log is flushed.");
    Ok(())
}

/// Follows `prefix` from after revision `from` in a task of `tasks`, handing each change to
/// `apply`, until `shutdown`.
fn follow_in<F>(
    tasks: &TaskTracker,
    meta: &Arc<dyn MetadataStore>,
    shutdown: &CancellationToken,
    prefix: &'static str,
    from: u64,
    apply: F,
) where
    F: FnMut(crate::follow::Change) -> futures::future::BoxFuture<'static, ()> + Send + 'static,
{
    let (meta, stop) = (Arc::clone(meta), shutdown.child_token());
    tasks.spawn(
        async move { crate::follow::follow(meta.as_ref(), prefix, from, &stop, apply).await },
    );
}

/// Joins the cluster of replicas sharing `meta` (a single node is a cluster of one), as the
/// member `config.cluster` names, advertising the addresses it gives or the bound ones.
async fn join_cluster(
    meta: &Arc<dyn MetadataStore>,
    config: &RuntimeConfig,
    http: &TcpListener,
    grpc: Option<&TcpListener>,
) -> Result<trellis_cluster::Cluster, ServeError> {
    let bound = |listener: &TcpListener| {
        listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_default()
    };
    let settings = trellis_cluster::ClusterSettings {
        member_id: config.cluster.node_id.clone().unwrap_or_else(|| {
            format!(
                "trellis-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        }),
        http: config
            .cluster
            .advertise_http
            .clone()
            .unwrap_or_else(|| bound(http)),
        grpc: config
            .cluster
            .advertise_grpc
            .clone()
            .or_else(|| grpc.map(bound)),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        lease_ttl: config.cluster.lease_ttl,
    };
    trellis_cluster::Cluster::join(Arc::clone(meta), settings)
        .await
        .map_err(ServeError::Cluster)
}

async fn retention_loop(store: Arc<dyn EventStore>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = store.enforce_retention().await {
            tracing::warn!(message = "Retention pass failed.", error = %error_chain(&error));
        }
    }
}

/// Histograms in the Prometheus recorder need periodic upkeep to age out old samples.
async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => handle.run_upkeep(),
        }
    }
}
