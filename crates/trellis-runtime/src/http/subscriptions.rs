//! `/v1/subscriptions`: create, list, read (with live status), change delivery settings, pause,
//! resume and delete subscriptions.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

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
        // A new subscription reads its topic's offsets: refused at once while that cannot be.
        ApiError::check_available(state.topics.store().as_ref())?;
        state.subscriptions.create(&body).await
    }
    .await;
    respond(res, StatusCode::CREATED)
}

pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Response {
    let res = state
        .subscriptions
        .list()
        .await
        .map(|subscriptions| serde_json::json!({ "subscriptions": subscriptions }));
    respond(res, StatusCode::OK)
}

pub(crate) async fn get(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    respond(state.subscriptions.get(&name).await, StatusCode::OK)
}

pub(crate) async fn patch(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    AdminBody(body): AdminBody,
) -> Response {
    let res = async {
        let body = json_body(&body)?;
        state.subscriptions.patch(&name, &body).await
    }
    .await;
    respond(res, StatusCode::OK)
}

pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    match state.subscriptions.delete(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn pause(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(
        state.subscriptions.set_paused(&name, true).await,
        StatusCode::OK,
    )
}

pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    respond(
        state.subscriptions.set_paused(&name, false).await,
        StatusCode::OK,
    )
}

pub(crate) async fn redrive(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    let res = match ApiError::check_available(state.topics.store().as_ref()) {
        Ok(()) => state.subscriptions.redrive(&name).await,
        Err(error) => Err(error),
    };
    respond(res, StatusCode::ACCEPTED)
}
