//! `POST /v1/topics/{topic}/events`: the CloudEvents HTTP binding in binary, structured and
//! batched mode. A 202 is sent only after the log says the events are as durable as the topic's
//! policy requires; a batch is appended as one all-or-nothing unit. An event already stored
//! within the deduplication window is answered with its first offset and `"duplicate": true`
//! (`publisher.rs`).

use std::sync::Arc;

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trellis_cloudevents::{ContentMode, EventError};

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::body::read_body;
use crate::metrics::PublishOutcome;
use crate::publisher::{Outgoing, Unpublishable};

#[derive(Serialize)]
struct PublishedBatch<'a> {
    events: Vec<PublishedEvent<'a>>,
}

/// `duplicate` appears only when true: the event was stored before, at `offset`.
#[derive(Serialize)]
struct PublishedEvent<'a> {
    id: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

pub(crate) async fn publish(
    State(state): State<Arc<AppState>>,
    Path(topic_name): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    // Taking the request whole (rather than a `HeaderMap` extractor) avoids cloning every header.
    let (parts, body) = request.into_parts();
    let res = publish_inner(&state, &topic_name, &parts.headers, body).await;
    let outcome = match &res {
        Ok(_) => PublishOutcome::Accepted,
        Err(error) if error.status.is_client_error() => PublishOutcome::Rejected,
        Err(_) => PublishOutcome::Failed,
    };
    state
        .publish_metrics
        .record_request(outcome, started.elapsed().as_secs_f64());
    match res {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn publish_inner(
    state: &AppState,
    topic_name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = &state.config;
    let mode = trellis_cloudevents::content_mode(headers).map_err(|error| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            error.message,
        )
    })?;
    // The name is checked before the body is read so a bad name costs no body transfer.
    state.topics.check_publish(topic_name)?;

    let body_limit = match mode {
        ContentMode::Batch => limits.max_batch_bytes,
        // A single event's encoded form has some overhead over its body; the exact check on the
        // encoded size comes below.
        ContentMode::Binary | ContentMode::Structured => {
            limits.max_batch_bytes.min(limits.max_event_bytes * 2)
        }
    };
    let body = read_body(headers, body, body_limit).await?;

    let events = match mode {
        ContentMode::Binary => {
            vec![trellis_cloudevents::parse_binary(headers, body).map_err(invalid_event)?]
        }
        ContentMode::Structured => {
            vec![trellis_cloudevents::parse_structured(&body).map_err(invalid_event)?]
        }
        ContentMode::Batch => trellis_cloudevents::parse_batch(&body).map_err(invalid_event)?,
    };
    if events.len() > limits.max_batch_events {
        return Err(ApiError::too_large(format!(
            "a batch may hold at most {} events; got {}",
            limits.max_batch_events,
            events.len()
        )));
    }
    let batch_index = |idx: usize| (mode == ContentMode::Batch).then_some(idx);

    let event_limits = limits.event_limits();
    let mut outgoing = Vec::with_capacity(events.len());
    for (idx, event) in events.iter().enumerate() {
        let prepared =
            Outgoing::prepare(event, &event_limits, limits.max_event_bytes).map_err(|error| {
                let subject = batch_index(idx).map_or_else(
                    || "the event".to_owned(),
                    |idx| format!("batch event at index {idx}"),
                );
                let message = error.message(&subject);
                match error {
                    Unpublishable::Reserved(_) | Unpublishable::OverLimit(_) => {
                        ApiError::bad_request("invalid_event", message)
                            .with_attribute(error.attribute())
                    }
                    Unpublishable::TooLarge { .. } => ApiError::too_large(message),
                }
                .with_index(batch_index(idx))
            })?;
        outgoing.push(prepared);
    }

    let published = state.publisher.publish(topic_name, outgoing).await?;
    let published = PublishedBatch {
        events: events
            .iter()
            .zip(published)
            .map(|(event, published)| PublishedEvent {
                id: &event.id,
                offset: published.offset,
                duplicate: published.duplicate,
            })
            .collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(published)).into_response())
}

fn invalid_event(error: EventError) -> ApiError {
    ApiError::bad_request("invalid_event", error.message)
        .with_attribute(error.attribute)
        .with_index(error.index)
}
