//! The etcd store's prefix watch, which outlives the gRPC stream it runs on.
//!
//! etcd watches die with their connection. The first one is opened in `watch` itself, so a
//! compacted start revision or an unreachable etcd is the caller's error at once. After that a
//! task forwards events; when the stream breaks, it opens a new one from the revision after the
//! last event it forwarded (retrying with backoff while etcd is down), so the caller sees every
//! revision once, in order, across reconnects. If etcd compacted that revision meanwhile, the
//! stream yields `MetaError::Compacted` and ends. It ends when the caller drops it.

use std::time::Duration;

use tokio::sync::mpsc;
use trellis_etcd_proto::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};
use trellis_etcd_proto::mvccpb;

use super::{
    Clients, EtcdError, convert_kv, header_revision, key_bytes, key_string, malformed, prefix_range,
};
use crate::{MetaError, WatchEvent, WatchStream};

/// Events a caller may leave unread before the forwarding task waits for it (and etcd buffers).
const BUFFER: usize = 1024;
/// Backoff between attempts to re-open a broken watch.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long to wait for etcd's cancel message of a watch known to start at a compacted revision.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// One gRPC watch stream: etcd's answers, and the request side, kept open while they are read
/// (etcd ends a watch stream whose client has finished sending).
struct Responses {
    answers: tonic::Streaming<WatchResponse>,
    _requests: mpsc::Sender<WatchRequest>,
}

pub(super) async fn watch(
    client: Clients,
    prefix: String,
    start_revision: Option<u64>,
) -> Result<WatchStream, MetaError> {
    // etcd's start revision 0 means "from now"; the trait's 0 and 1 mean "from the first write".
    let (responses, next_revision) = open(
        &client,
        &prefix,
        start_revision.map(|revision| revision.max(1)),
    )
    .await?;
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(forward(client, prefix, responses, next_revision, sender));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        receiver,
    )))
}

/// Opens an etcd watch and waits for etcd to confirm it. Returns the stream and the first
/// revision it will deliver.
async fn open(
    client: &Clients,
    prefix: &str,
    start_revision: Option<u64>,
) -> Result<(Responses, u64), MetaError> {
    let (key, range_end) = prefix_range(prefix);
    let create = WatchCreateRequest {
        key,
        range_end,
        start_revision: start_revision.map_or(0, |start| i64::try_from(start).unwrap_or(i64::MAX)),
        ..WatchCreateRequest::default()
    };
    let request = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    };
    // The stream and etcd's first answer, which confirms (or cancels) the watch.
    let opened = client
        .call(|| {
            let mut watch = client.watch.clone();
            let request = request.clone();
            async move {
                let (requests, receiver) = mpsc::channel(1);
                if requests.send(request).await.is_err() {
                    return Err(tonic::Status::internal("watch request not sent"));
                }
                let mut answers = watch
                    .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                let first = answers.message().await?;
                Ok(tonic::Response::new((
                    Responses {
                        answers,
                        _requests: requests,
                    },
                    first,
                )))
            }
        })
        .await?;
    let (mut responses, created) = match opened {
        (responses, Some(created)) => (responses, created),
        (_, None) => {
            return Err(MetaError::Unavailable(Box::new(EtcdError::Malformed {
                what: "a watch stream that ended before it started",
            })));
        }
    };
    if let Some(error) = cancelled(&created, start_revision) {
        return Err(error);
    }
    let current = header_revision(created.header.as_ref())?;
    let Some(start) = start_revision else {
        return Ok((responses, current + 1));
    };
    check_not_compacted(client, prefix, start, current, &mut responses).await?;
    Ok((responses, start))
}

/// etcd confirms a watch from a compacted revision as created and cancels it only in a later
/// message. To fail at `watch` as the trait says, read at the start revision: that fails exactly
/// when it is compacted, and then the cancel message, which names the oldest revision left, is
/// already on its way.
async fn check_not_compacted(
    client: &Clients,
    prefix: &str,
    start: u64,
    current: u64,
    responses: &mut Responses,
) -> Result<(), MetaError> {
    // Reading at a future revision is a different error, and nothing there is compacted.
    let at = i64::try_from(start.min(current)).unwrap_or(i64::MAX);
    let key = if prefix.is_empty() { "\u{0}" } else { prefix };
    let probe = RangeRequest {
        key: key_bytes(key),
        revision: at,
        limit: 1,
        keys_only: true,
        ..RangeRequest::default()
    };
    match client.range(probe).await {
        Ok(_) => Ok(()),
        Err(MetaError::Storage(source)) if is_compacted(source.as_ref()) => {
            let oldest =
                match tokio::time::timeout(CANCEL_TIMEOUT, responses.answers.message()).await {
                    Ok(Ok(Some(response))) if response.compact_revision > 0 => {
                        u64::try_from(response.compact_revision).unwrap_or(current)
                    }
                    // The current revision is certainly still there.
                    _ => current,
                };
            Err(MetaError::Compacted {
                requested: start,
                oldest,
            })
        }
        Err(error) => Err(error),
    }
}

/// Whether a read failed because its revision was compacted (etcd answers `OutOfRange`).
fn is_compacted(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<EtcdError>(),
        Some(EtcdError::Status(status)) if status.message().contains("compacted")
    )
}

/// The error a cancelled watch response stands for, if it is one.
fn cancelled(response: &WatchResponse, requested: Option<u64>) -> Option<MetaError> {
    if response.compact_revision > 0 {
        return Some(MetaError::Compacted {
            requested: requested.unwrap_or_default(),
            oldest: u64::try_from(response.compact_revision).unwrap_or_default(),
        });
    }
    if response.canceled {
        // Not compaction: e.g. the member lost its leader. Another try may well work.
        return Some(MetaError::Unavailable(
            format!("etcd cancelled the watch: {}", response.cancel_reason).into(),
        ));
    }
    None
}

async fn forward(
    client: Clients,
    prefix: String,
    mut responses: Responses,
    mut next_revision: u64,
    sender: mpsc::Sender<Result<WatchEvent, MetaError>>,
) {
    loop {
        // Pass events on until the stream breaks.
        let broken = loop {
            let response = tokio::select! {
                () = sender.closed() => return,
                response = responses.answers.message() => response,
            };
            let response = match response {
                Ok(Some(response)) => response,
                Err(status) => break super::status_error(status),
                Ok(None) => break MetaError::Unavailable("the etcd watch stream ended".into()),
            };
            match cancelled(&response, Some(next_revision)) {
                Some(error @ MetaError::Compacted { .. }) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                Some(error) => break error,
                None => {}
            }
            for event in &response.events {
                let item = convert_event(event);
                if let Ok(event) = &item {
                    next_revision = event.mod_revision() + 1;
                }
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
            }
        };
        tracing::warn!(
            message = "Metadata watch lost its etcd stream; reopening.",
            prefix = %prefix,
            next_revision,
            error = &broken as &dyn std::error::Error,
        );
        // Re-open from where the caller is, until etcd answers or the caller leaves.
        let mut delay = RETRY_MIN;
        responses = loop {
            let attempt = tokio::select! {
                () = sender.closed() => return,
                attempt = open(&client, &prefix, Some(next_revision)) => attempt,
            };
            match attempt {
                Ok((responses, _)) => break responses,
                Err(error @ MetaError::Compacted { .. }) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                Err(error) => {
                    tracing::debug!(
                        message = "Metadata watch could not reopen yet.",
                        prefix = %prefix,
                        error = &error as &dyn std::error::Error,
                    );
                    tokio::select! {
                        () = sender.closed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        };
        tracing::info!(
            message = "Metadata watch resumed.",
            prefix = %prefix,
            next_revision,
        );
    }
}

fn convert_event(event: &mvccpb::Event) -> Result<WatchEvent, MetaError> {
    let Some(kv) = &event.kv else {
        return Err(malformed("a watch event without its key"));
    };
    match mvccpb::event::EventType::try_from(event.r#type) {
        Ok(mvccpb::event::EventType::Put) => Ok(WatchEvent::Put(convert_kv(kv)?)),
        Ok(mvccpb::event::EventType::Delete) => Ok(WatchEvent::Delete {
            key: key_string(&kv.key)?,
            mod_revision: super::revision(kv.mod_revision)?,
        }),
        Err(_) => Err(malformed("a watch event of an unknown type")),
    }
}
