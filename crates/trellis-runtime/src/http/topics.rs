//! Topic administration and reads: `PUT/GET/DELETE /v1/topics/{topic}`, `GET /v1/topics` and
//! `GET /v1/topics/{topic}/events`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use trellis_storage::{DamagedRange, StorageError, TopicInfo};

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::body::AdminBody;
use crate::topics::{
    Incarnation, PutOutcome, TopicSettings, TopicSettingsPatch, info_of, settings_of,
};

/// A reads page holds at most this many events, whatever `limit` asks for.
const MAX_READ_LIMIT: usize = 1000;
const DEFAULT_READ_LIMIT: usize = 100;
/// A reads page stops growing once it holds this much event data.
const MAX_READ_BYTES: usize = 8 * 1024 * 1024;

#[derive(Serialize)]
pub(crate) struct TopicView {
    name: String,
    first_offset: u64,
    next_offset: u64,
    size_bytes: u64,
    segments: usize,
    settings: TopicSettings,
    /// Made when the topic was created; a topic deleted and created again has a new one. Empty
    /// for a topic created before incarnations existed.
    incarnation: String,
    /// Records found damaged on disk (at start-up or by a read), which reads skip.
    damaged: Vec<DamagedView>,
}

#[derive(Serialize)]
struct DamagedView {
    first_offset: u64,
    last_offset: u64,
    next_offset: u64,
    segment: u64,
    reason: String,
}

impl TopicView {
    fn of(info: TopicInfo, incarnation: &Incarnation) -> TopicView {
        TopicView {
            incarnation: incarnation.as_str().to_owned(),
            name: info.name,
            first_offset: info.first_offset,
            next_offset: info.next_offset,
            size_bytes: info.size_bytes,
            segments: info.segments,
            settings: settings_of(&info.settings),
            damaged: info
                .damaged
                .into_iter()
                .map(|range| DamagedView {
                    first_offset: range.first_offset,
                    last_offset: range.next_offset.saturating_sub(1),
                    next_offset: range.next_offset,
                    segment: range.segment,
                    reason: range.reason,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct TopicList {
    topics: Vec<TopicView>,
}

pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<TopicList>, ApiError> {
    ApiError::check_available(state.topics.store().as_ref())?;
    let topics = state
        .topics
        .list()
        .await?
        .into_iter()
        .map(|(info, incarnation)| TopicView::of(info, &incarnation))
        .collect();
    Ok(Json(TopicList { topics }))
}

/// The view of a topic with its current incarnation.
async fn view(
    state: &AppState,
    topic: &dyn trellis_storage::TopicStore,
) -> Result<TopicView, ApiError> {
    let info = info_of(topic).await?;
    let incarnation = state
        .topics
        .current(topic.name())
        .map_or_else(Incarnation::legacy, |(_, incarnation)| incarnation);
    Ok(TopicView::of(info, &incarnation))
}

pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    let topic = state.topics.get(&name).await?;
    ApiError::check_available(state.topics.store().as_ref())?;
    Ok(Json(view(&state, topic.as_ref()).await?))
}

pub(crate) async fn put(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    AdminBody(body): AdminBody,
) -> Result<Response, ApiError> {
    // An empty body means "create with the defaults" (or "change nothing").
    let patch: TopicSettingsPatch = if body.iter().all(u8::is_ascii_whitespace) {
        TopicSettingsPatch::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::bad_request(
                "invalid_settings",
                format!("topic settings must be a JSON object: {error}"),
            )
        })?
    };
    ApiError::check_available(state.topics.store().as_ref())?;
    let (outcome, topic) = state.topics.put(&name, &patch).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated => StatusCode::OK,
    };
    Ok((status, Json(view(&state, topic.as_ref()).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// Refused with 409 while subscriptions, sink connectors or consumer groups use the topic, unless `?force=true`.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "the only parameter is force=true or force=false: {}",
                rejection.body_text()
            ),
        )
    })?;
    ApiError::check_available(state.topics.store().as_ref())?;
    state
        .subscriptions
        .delete_topic(&name, query.force, async {
            let groups = state.groups.using_topic(&name).await;
            let mut users: Vec<String> = groups
                .iter()
                .map(|group| format!("consumer group {group:?}"))
                .collect();
            users.extend(state.connectors.readers_of(&name).await);
            users
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

/// Events as a JSON array of structured events, each with its `offset` added.
pub(crate) async fn read_events(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "expected ?from=OFFSET&limit=N with non-negative integers: {}",
                rejection.body_text()
            ),
        )
    })?;
    let topic = state.topics.get(&name).await?;
    ApiError::check_available(state.topics.store().as_ref())?;
    let limit = query.limit.unwrap_or(DEFAULT_READ_LIMIT);
    if limit == 0 || limit > MAX_READ_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_READ_LIMIT}; got {limit}"),
        ));
    }
    let from = match query.from {
        Some(from) => from,
        None => info_of(topic.as_ref()).await?.first_offset,
    };
    let page = topic
        .read(from, limit, MAX_READ_BYTES)
        .await
        .map_err(|error| match error {
            StorageError::OffsetTruncated { offset, first_offset } => ApiError::new(
                StatusCode::GONE,
                "offset_truncated",
                format!("offset {offset} was removed by retention; the oldest stored offset is {first_offset}"),
            ),
            StorageError::NoSuchTopic(name) => ApiError::not_found("topic_not_found", format!("topic {name:?} does not exist")),
            other => ApiError::storage("reading events", &other),
        })?;
    let records = page.records;
    let damage_headers = page.damaged.as_ref().map(damage_headers);
    if let Some(range) = &page.damaged
        && records.is_empty()
    {
        return Ok(damaged_answer(topic.name(), range));
    }
    // Each stored event renders to the JSON event format (a JSON object); the offset is spliced
    // in as its first member.
    let mut body = Vec::with_capacity(
        records
            .iter()
            .map(|record| record.payload.len() * 4 / 3 + 32)
            .sum::<usize>()
            + 2,
    );
    body.push(b'[');
    for (idx, record) in records.iter().enumerate() {
        if idx > 0 {
            body.push(b',');
        }
        let json =
            trellis_cloudevents::stored_to_structured_json(&record.payload).map_err(|error| {
                ApiError::internal(
                    &format!("reading the event at offset {}", record.offset),
                    &error,
                )
            })?;
        // `json` is an object with at least the required attributes, so it is never `{}`.
        body.extend_from_slice(format!("{{\"offset\":{},", record.offset).as_bytes());
        body.extend_from_slice(json.get(1..).unwrap_or_default());
    }
    body.push(b']');
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(headers) = damage_headers {
        response.headers_mut().extend(headers);
    }
    Ok(response)
}

/// Names damaged records a page stops short at: `Trellis-Damaged-Offsets: FIRST-LAST`
/// (inclusive) and `Trellis-Next-Offset`, where reading can go on.
fn damage_headers(range: &DamagedRange) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let last = range.next_offset.saturating_sub(1);
    for (name, value) in [
        (DAMAGED_OFFSETS, format!("{}-{last}", range.first_offset)),
        (NEXT_OFFSET, range.next_offset.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers
}

const DAMAGED_OFFSETS: HeaderName = HeaderName::from_static("trellis-damaged-offsets");
const NEXT_OFFSET: HeaderName = HeaderName::from_static("trellis-next-offset");

/// A read that starts at damaged records: `410` like an offset retention removed, with the
/// damaged range and the offset to go on from, in the body and the headers.
fn damaged_answer(topic: &str, range: &DamagedRange) -> Response {
    let last = range.next_offset.saturating_sub(1);
    let body = serde_json::json!({
        "error": "records_damaged",
        "message": format!(
            "offsets {}..={last} of topic {topic:?} are damaged on disk ({}) and cannot be read; reading can go on at offset {}",
            range.first_offset, range.reason, range.next_offset
        ),
        "first_offset": range.first_offset,
        "last_offset": last,
        "next_offset": range.next_offset,
    });
    let mut response = (StatusCode::GONE, Json(body)).into_response();
    response.headers_mut().extend(damage_headers(range));
    response
}
