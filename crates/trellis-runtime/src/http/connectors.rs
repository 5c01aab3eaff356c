//! `/v1/connectors` and `/v1/connector-plugins`, in Kafka Connect's shape: create, list, read,
//! configure, pause, resume, restart and delete connectors, and read or reset their offsets.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::body::{AdminBody, json_body};
use crate::http::respond;

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    AdminBody(body): AdminBody,
) -> Response {
    let res = async {
        let body = json_body(&body)?;
        state.connectors.create(&body).await
    }
    .await;
    respond(res, StatusCode::CREATED)
}

/// `["a","b"]`, or with `?expand=status` and/or `?expand=info` an object by name.
pub(crate) async fn list(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Response {
    let res = async {
        let expand = expand_of(&uri)?;
        if expand.is_empty() {
            return Ok(Value::from(state.connectors.names().await));
        }
        let status = expand.iter().any(|word| word == "status");
        let info = expand.iter().any(|word| word == "info");
        Ok(state.connectors.expanded(status, info).await)
    }
    .await;
    respond(res, StatusCode::OK)
}

/// The words of every `expand` parameter (`status`, `info`, or both: `status,info` or the
/// parameter twice); any other parameter or word is refused.
fn expand_of(uri: &axum::http::Uri) -> Result<Vec<String>, ApiError> {
    let Query(pairs): Query<Vec<(String, String)>> =
        Query::try_from_uri(uri).map_err(|_| invalid_query())?;
    let mut words = Vec::new();
    for (key, value) in pairs {
        if key != "expand" {
            return Err(invalid_query());
        }
        words.extend(value.split(',').map(str::to_owned));
    }
    if words.iter().any(|word| word != "status" && word != "info") {
        return Err(invalid_query());
    }
    Ok(words)
}

fn invalid_query() -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        "the only parameter is expand=status, expand=info or both",
    )
}

pub(crate) async fn info(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    respond(state.connectors.info(&name).await, StatusCode::OK)
}

pub(crate) async fn config(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.config(&name).await, StatusCode::OK)
}

/// Creates (`201`) or reconfigures (`200`) the connector; either way it (re)starts.
pub(crate) async fn put_config(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    AdminBody(body): AdminBody,
) -> Response {
    let res = async {
        let body = json_body(&body)?;
        state.connectors.put_config(&name, &body).await
    }
    .await;
    match res {
        Ok((true, info)) => (StatusCode::CREATED, Json(info)).into_response(),
        Ok((false, info)) => (StatusCode::OK, Json(info)).into_response(),
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.status(&name).await, StatusCode::OK)
}

pub(crate) async fn pause(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.pause(&name).await, StatusCode::ACCEPTED)
}

pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.resume(&name).await, StatusCode::ACCEPTED)
}

pub(crate) async fn restart(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.restart(&name).await, StatusCode::ACCEPTED)
}

pub(crate) async fn offsets(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.offsets(&name).await, StatusCode::OK)
}

pub(crate) async fn delete_offsets(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(state.connectors.delete_offsets(&name).await, StatusCode::OK)
}

pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    match state.connectors.delete(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn plugins() -> Response {
    (StatusCode::OK, Json(crate::connectors::plugins_json())).into_response()
}
